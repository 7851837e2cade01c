"""A clock that tests set by hand: injected where rayml takes ``clock: Callable[[], float]``."""

from __future__ import annotations


class Clock:
    """Returns ``now``, which only the test moves (seconds)."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now
