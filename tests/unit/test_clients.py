"""The integration tests' client-thread helper: errors in a loop reach the test, and ``until`` ends it early."""

from __future__ import annotations

import threading
import time

import pytest

from tests.clients import run_clients

pytestmark = pytest.mark.unit


def test_an_assertion_in_a_loop_fails_the_caller_and_stops_the_others():
    turns = [0]

    def failing(stop: threading.Event) -> None:
        time.sleep(0.05)
        assert False, "status 503"  # noqa: B011 (what a client loop's check looks like)

    def steady(stop: threading.Event) -> None:
        while not stop.is_set():
            turns[0] += 1
            time.sleep(0.01)

    started = time.monotonic()
    with pytest.raises(AssertionError, match="status 503"):
        run_clients([failing, steady], seconds=30)
    assert time.monotonic() - started < 5 and turns[0] > 0  # stopped at the failure, not after 30 s


def test_until_ends_early_and_seconds_bounds_it():
    count = [0]

    def counting(stop: threading.Event) -> None:
        while not stop.is_set():
            count[0] += 1
            time.sleep(0.01)

    started = time.monotonic()
    run_clients([counting], seconds=30, until=lambda: count[0] >= 10)
    assert count[0] >= 10 and time.monotonic() - started < 5
    started = time.monotonic()
    run_clients([counting], seconds=0.5)
    assert 0.4 < time.monotonic() - started < 5
