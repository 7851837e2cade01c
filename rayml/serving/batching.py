"""Live tuning of a ``@serve.batch`` method from a deployment's ``user_config`` (no restart)."""

from __future__ import annotations

from typing import Any

MAX_BATCH = 64
BATCHING_KEYS = {"max_batch_size", "batch_wait_timeout_s"}


def apply_batching(batched: Any, config: dict, allowed: set[str]) -> None:
    """Set ``max_batch_size`` / ``batch_wait_timeout_s`` of ``batched`` (a ``@serve.batch`` bound method).

    Raises:
        ValueError: a key outside the batching keys and ``allowed``, or a value out of range, named.
    """
    unknown = set(config) - BATCHING_KEYS - allowed
    if unknown:
        raise ValueError(f"user_config: unknown keys {sorted(unknown)}; allowed: {sorted(BATCHING_KEYS | allowed)}")
    size, wait = config.get("max_batch_size"), config.get("batch_wait_timeout_s")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or not 1 <= size <= MAX_BATCH):
        raise ValueError(f"user_config.max_batch_size: {size!r} is not an int in 1..{MAX_BATCH}")
    if wait is not None and (not isinstance(wait, int | float) or isinstance(wait, bool) or not 0 <= wait <= 1):
        raise ValueError(f"user_config.batch_wait_timeout_s: {wait!r} is not a number in [0, 1]")
    if size is not None:  # set only once both are valid: a bad config changes nothing
        batched.set_max_batch_size(size)
    if wait is not None:
        batched.set_batch_wait_timeout_s(float(wait))


def batching_state(batched: Any) -> dict[str, float]:
    return {"max_batch_size": batched._get_max_batch_size(), "batch_wait_timeout_s": batched._get_batch_wait_timeout_s()}
