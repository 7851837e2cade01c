"""Live batching settings from a `user_config`: validated whole before anything changes."""

from __future__ import annotations

import pytest

from rayml.serving.batching import MAX_BATCH, apply_batching, batching_state

pytestmark = pytest.mark.unit


class Batched:
    """Stands in for the setters Serve attaches to a ``@serve.batch`` method (plain attributes, no Ray)."""

    def __init__(self) -> None:
        self.size, self.wait = 8, 0.0

    def set_max_batch_size(self, size: int) -> None:
        self.size = size

    def set_batch_wait_timeout_s(self, wait: float) -> None:
        self.wait = wait

    def _get_max_batch_size(self) -> int:
        return self.size

    def _get_batch_wait_timeout_s(self) -> float:
        return self.wait


def test_applies_both_settings():
    batched = Batched()
    apply_batching(batched, {"max_batch_size": 16, "batch_wait_timeout_s": 0.002, "ranker_alias": "x"},
                   allowed={"ranker_alias"})
    assert batching_state(batched) == {"max_batch_size": 16, "batch_wait_timeout_s": 0.002}


@pytest.mark.parametrize(("config", "names"), [
    ({"max_batch_size": 0}, "user_config.max_batch_size"),
    ({"max_batch_size": MAX_BATCH + 1}, "user_config.max_batch_size"),
    ({"max_batch_size": True}, "user_config.max_batch_size"),
    ({"max_batch_size": "8"}, "user_config.max_batch_size"),
    ({"batch_wait_timeout_s": -1}, "user_config.batch_wait_timeout_s"),
    ({"batch_wait_timeout_s": 2}, "user_config.batch_wait_timeout_s"),
    ({"max_batch_size": 16, "batch_wait_timeout_s": "soon"}, "user_config.batch_wait_timeout_s"),
    ({"max_batch": 16}, "unknown keys ['max_batch']"),
])
def test_bad_settings_are_named_and_change_nothing(config, names):
    batched = Batched()
    with pytest.raises(ValueError, match=names.replace("[", r"\[").replace("]", r"\]")):
        apply_batching(batched, config, allowed=set())
    assert batching_state(batched) == {"max_batch_size": 8, "batch_wait_timeout_s": 0.0}
