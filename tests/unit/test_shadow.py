"""Shadow traffic: ranking comparison, windows, bounded memory, work queue, canary gate."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Awaitable, Callable

import numpy as np
import pytest
from pydantic import ValidationError

from rayml.rollout.shadow import (
    Reservoir,
    ShadowConfig,
    ShadowQueue,
    ShadowReport,
    ShadowWindow,
    blocks_canary,
    compare_rankings,
)
from tests.clock import Clock as FakeClock

pytestmark = pytest.mark.unit



def ids(n: int) -> list[str]:
    return [f"item-{i}" for i in range(n)]


# --------------------------------------------------------------------------- compare_rankings


def test_identical_scores_full_overlap_and_tau_one() -> None:
    scores = np.linspace(0.0, 1.0, 50)
    result = compare_rankings(ids(50), scores, scores.copy(), k=10)
    assert result.overlap_at_k == 1.0
    assert result.kendall_tau == pytest.approx(1.0)
    assert result.k == 10
    assert np.all(result.deltas == 0.0)
    assert result.prod_topk == result.shadow_topk
    assert result.prod_topk[0] == "item-49"


def test_reversed_scores_tau_minus_one() -> None:
    prod = np.arange(20, dtype=float)
    result = compare_rankings(ids(20), prod, prod[::-1], k=5)
    assert result.kendall_tau == pytest.approx(-1.0)
    assert result.overlap_at_k == 0.0


def test_known_small_example() -> None:
    # prod ranks a > b > c > d > e ; shadow ranks b > a > e > c > d
    prod = [0.9, 0.8, 0.7, 0.6, 0.5]
    shadow = [0.85, 0.95, 0.4, 0.3, 0.6]
    result = compare_rankings(["a", "b", "c", "d", "e"], prod, shadow, k=3)
    # top3 prod {a,b,c}, top3 shadow {b,a,e} -> 2/3
    assert result.overlap_at_k == pytest.approx(2 / 3)
    assert result.prod_topk == ("a", "b", "c")
    assert result.shadow_topk == ("b", "a", "e")
    # pairs: 10; discordant: (a,b), (c,e), (d,e) -> 3; tau = (7 - 3) / 10
    assert result.kendall_tau == pytest.approx(0.4)
    np.testing.assert_allclose(result.deltas, [-0.05, 0.15, -0.3, -0.3, 0.1])


def test_k_capped_at_n_and_degenerate_tau() -> None:
    result = compare_rankings(["x", "y"], [1.0, 2.0], [2.0, 1.0], k=10)
    assert result.k == 2
    assert result.overlap_at_k == 1.0  # both rows are in both top-k
    single = compare_rankings(["x"], [1.0], [3.0], k=10)
    assert single.k == 1 and single.overlap_at_k == 1.0
    assert math.isnan(single.kendall_tau)
    constant = compare_rankings(ids(4), [1.0] * 4, [0.1, 0.2, 0.3, 0.4], k=2)
    assert math.isnan(constant.kendall_tau)
    empty = compare_rankings([], [], [], k=3)
    assert empty.k == 0 and math.isnan(empty.overlap_at_k)


def test_length_mismatch_and_bad_k_rejected() -> None:
    with pytest.raises(ValueError, match="same length"):
        compare_rankings(ids(3), [1.0, 2.0, 3.0], [1.0, 2.0], k=2)
    with pytest.raises(ValueError, match="k must be"):
        compare_rankings(ids(2), [1.0, 2.0], [1.0, 2.0], k=0)
    with pytest.raises(ValueError, match="one-dimensional"):
        compare_rankings(ids(2), [[1.0, 2.0]], [1.0, 2.0], k=1)


# --------------------------------------------------------------------------- windows


def test_delta_quantiles_and_abs_mean() -> None:
    clock = FakeClock()
    report = ShadowReport(ShadowConfig(fraction=1.0, k=5), clock=clock)
    prod = np.zeros(101)
    shadow = np.linspace(-1.0, 1.0, 101)  # deltas are exactly -1 .. 1 in steps of 0.02
    report.record(ids(101), prod, shadow, latency_ms=10.0)
    current = report.report()["current"]
    delta = current["score_delta"]
    assert delta["p50"] == pytest.approx(0.0, abs=1e-12)
    assert delta["p01"] == pytest.approx(-0.98)
    assert delta["p05"] == pytest.approx(-0.90)
    assert delta["p95"] == pytest.approx(0.90)
    assert delta["p99"] == pytest.approx(0.98)
    assert delta["abs_mean"] == pytest.approx(np.abs(shadow).mean())
    assert delta["count"] == 101
    assert current["latency_ms"]["p50"] == pytest.approx(10.0)


def test_window_rollover_with_injected_clock() -> None:
    clock = FakeClock(1000.0)
    config = ShadowConfig(fraction=0.5, k=3, window_s=60, min_requests=2)
    report = ShadowReport(config, clock=clock)
    same = np.arange(10, dtype=float)
    for _ in range(3):
        report.record(ids(10), same, same, latency_ms=5.0)
    report.record_error("boom")
    report.record_drop()
    clock.now += 59.9
    assert report.report()["completed"] == []

    clock.now = 1000.0 + 61.0  # second window
    report.record(ids(10), same, same[::-1], latency_ms=50.0)
    rep = report.report()
    assert len(rep["completed"]) == 1
    first = rep["completed"][0]
    assert first["start"] == 1000.0 and first["end"] == 1060.0
    assert first["requests"] == 3
    assert first["overlap_at_k_mean"] == 1.0
    assert first["kendall_tau_mean"] == pytest.approx(1.0)
    assert first["errors"] == 1 and first["last_error"] == "boom"
    assert first["dropped"] == 1
    cur = rep["current"]
    assert cur["start"] == 1060.0 and cur["requests"] == 1
    assert cur["kendall_tau_mean"] == pytest.approx(-1.0)
    assert cur["latency_ms"]["p99"] == pytest.approx(50.0)

    # the current window has 1 < min_requests: merge with the previous one (3+1 requests)
    assert report.agreement() == pytest.approx((3 * 1.0 + 0.0) / 4)
    report.record(ids(10), same, same[::-1])
    assert report.agreement() == pytest.approx(0.0)  # newest window alone qualifies now

    # a long gap leaves no empty windows; the next one is aligned on the origin
    clock.now = 1000.0 + 60 * 10 + 5
    report.record(ids(10), same, same)
    rep = report.report()
    assert [w["start"] for w in rep["completed"]] == [1000.0, 1060.0]
    assert rep["current"]["start"] == 1600.0
    json.dumps(rep, allow_nan=False)  # JSON safe


def test_agreement_none_until_min_requests() -> None:
    clock = FakeClock()
    report = ShadowReport(ShadowConfig(fraction=1.0, min_requests=5), clock=clock)
    assert report.agreement() is None
    for _ in range(4):
        report.record(ids(3), [1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    assert report.agreement() is None
    report.record(ids(3), [1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    assert report.agreement() == 1.0


def test_nan_becomes_none_in_report() -> None:
    clock = FakeClock()
    report = ShadowReport(ShadowConfig(fraction=1.0), clock=clock)
    report.record(["only"], [1.0], [float("nan")])  # tau undefined, delta non-finite
    report.record_error("x" * 500)
    cur = report.report()["current"]
    assert cur["kendall_tau_mean"] is None
    assert cur["score_delta"]["p50"] is None
    assert cur["score_delta"]["nonfinite"] == 1
    assert cur["latency_ms"]["p50"] is None
    assert len(cur["last_error"]) == 200
    json.dumps(report.report(), allow_nan=False)


def test_bounded_memory_100k_requests() -> None:
    clock = FakeClock()
    report = ShadowReport(
        ShadowConfig(fraction=1.0, k=5, window_s=1e9), clock=clock, max_deltas=10_000
    )
    rng = np.random.default_rng(7)
    n = 20
    prod = rng.normal(size=(50, n))
    comparisons = [compare_rankings(ids(n), p, p + rng.normal(0.0, 0.1, size=n), k=5) for p in prod]
    for i in range(100_000):
        report.record_comparison(comparisons[i % len(comparisons)], latency_ms=float(i % 100))
    (window,) = report.windows()
    assert window.requests == 100_000
    assert window.delta_count == 100_000 * n
    assert len(window.deltas) == 10_000
    assert window.deltas.seen == 100_000 * n
    assert len(window.latencies_ms) == 10_000
    assert window.latencies_ms.seen == 100_000
    out = window.to_dict()
    assert out["score_delta"]["p50"] == pytest.approx(0.0, abs=0.02)
    assert out["latency_ms"]["p50"] == pytest.approx(49.5, abs=3.0)


def test_only_last_windows_kept() -> None:
    clock = FakeClock(0.0)
    report = ShadowReport(ShadowConfig(fraction=1.0, window_s=1.0), clock=clock, max_windows=5)
    for t in range(20):
        clock.now = t + 0.5
        report.record(ids(2), [1.0, 2.0], [1.0, 2.0])
    rep = report.report()
    assert len(rep["completed"]) == 5
    assert [w["start"] for w in rep["completed"]] == [14.0, 15.0, 16.0, 17.0, 18.0]
    assert rep["current"]["start"] == 19.0


def test_reservoir_is_uniform_enough() -> None:
    reservoir = Reservoir(1000, np.random.default_rng(3))
    for chunk in np.array_split(np.arange(100_000, dtype=float), 37):
        reservoir.add(chunk)
    assert len(reservoir) == 1000 and reservoir.seen == 100_000
    assert reservoir.values.mean() == pytest.approx(50_000, rel=0.05)
    assert len(np.unique(reservoir.values)) == 1000


# --------------------------------------------------------------------------- canary gate


def _window_with(overlaps: list[float]) -> ShadowWindow:
    window = ShadowWindow(0.0, 60.0)
    window.overlap_sum = float(sum(overlaps))
    window.overlap_count = window.requests = len(overlaps)
    return window


def test_blocks_canary_thresholds() -> None:
    gate = ShadowConfig(fraction=0.1, k=10, min_agreement=0.8, min_requests=100)
    assert blocks_canary(_window_with([0.9] * 100), ShadowConfig(fraction=0.1)) is None
    assert blocks_canary(_window_with([0.1] * 500), ShadowConfig(fraction=0.1)) is None

    reason = blocks_canary(_window_with([0.41] * 1234), gate)
    assert reason == "shadow agreement overlap@10 0.41 < min_agreement 0.8 over 1,234 requests"
    few = blocks_canary(_window_with([1.0] * 99), gate)
    assert few is not None and few.startswith("shadow has fewer than min_requests comparisons")
    assert blocks_canary(_window_with([0.8] * 100), gate) is None  # equal is enough
    assert blocks_canary(_window_with([0.95] * 100), gate) is None


def test_blocks_canary_on_report_and_report_dict() -> None:
    clock = FakeClock()
    gate = ShadowConfig(fraction=1.0, k=2, min_agreement=0.9, min_requests=10)
    report = ShadowReport(gate, clock=clock)
    assert "fewer than min_requests" in (blocks_canary(report, gate) or "")
    assert "fewer than min_requests" in (blocks_canary(report.report(), gate) or "")
    for _ in range(10):
        report.record(ids(4), [4.0, 3.0, 2.0, 1.0], [4.0, 1.0, 3.0, 2.0])  # overlap@2 = 0.5
    reason = blocks_canary(report, gate)
    assert reason == "shadow agreement overlap@2 0.50 < min_agreement 0.9 over 10 requests"
    assert blocks_canary(json.loads(json.dumps(report.report())), gate) == reason
    ok = ShadowReport(gate, clock=clock)
    for _ in range(10):
        ok.record(ids(4), [4.0, 3.0, 2.0, 1.0], [4.0, 3.0, 1.0, 2.0])
    assert blocks_canary(ok, gate) is None


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"fraction": 1.5}, "fraction"),
        ({"fraction": -0.1}, "fraction"),
        ({"fraction": 0.1, "k": 0}, "k"),
        ({"fraction": 0.1, "queue_size": 0}, "queue_size"),
        ({"fraction": 0.1, "window_s": 0}, "window_s"),
        ({"fraction": 0.1, "min_agreement": 1.2}, "min_agreement"),
        ({"fraction": 0.1, "min_requests": 0}, "min_requests"),
        ({"fraction": 0.1, "bogus": 1}, "bogus"),
        ({}, "fraction"),
    ],
)
def test_config_validation_names_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        ShadowConfig(**kwargs)
    assert [err["loc"] for err in info.value.errors()] == [(field,)]


def test_config_defaults_and_frozen() -> None:
    config = ShadowConfig(fraction=0.25)
    assert (config.k, config.queue_size, config.window_s) == (10, 64, 60)
    assert (config.min_agreement, config.min_requests) == (None, 100)
    with pytest.raises(ValidationError):
        config.k = 3  # type: ignore[misc]


# --------------------------------------------------------------------------- queue


def test_queue_drops_when_full() -> None:
    async def scenario() -> ShadowQueue:
        gate = asyncio.Event()
        queue = ShadowQueue(maxsize=2)

        async def blocker() -> None:
            await gate.wait()

        async def noop() -> None:
            return None

        assert queue.offer(blocker)
        await asyncio.sleep(0)  # worker takes the blocker; queue empty again
        assert queue.offer(noop) and queue.offer(noop)
        assert not queue.offer(noop)  # full: 2 pending
        assert not queue.offer(noop)
        gate.set()
        await queue.join()
        queue.stop()
        return queue

    queue = asyncio.run(scenario())
    assert (queue.offered, queue.accepted, queue.dropped) == (5, 3, 2)
    assert queue.completed == 3 and queue.errors == 0


def test_queue_drops_when_busy_and_calls_on_drop() -> None:
    busy = {"value": True}
    drops: list[int] = []

    async def scenario() -> ShadowQueue:
        queue = ShadowQueue(maxsize=8, busy=lambda: busy["value"], on_drop=lambda: drops.append(1))

        async def noop() -> None:
            return None

        assert not queue.offer(noop)
        assert not queue.offer(noop)
        busy["value"] = False
        assert queue.offer(noop)
        await queue.join()
        queue.stop()
        return queue

    queue = asyncio.run(scenario())
    assert (queue.offered, queue.accepted, queue.dropped, queue.completed) == (3, 1, 2, 1)
    assert len(drops) == 2


def test_queue_busy_callable_raising_counts_as_busy() -> None:
    def broken() -> bool:
        raise RuntimeError("no load info")

    queue = ShadowQueue(maxsize=2, busy=broken)

    async def noop() -> None:
        return None

    assert not queue.offer(noop)
    assert queue.dropped == 1


def test_queue_job_exceptions_counted_never_raised() -> None:
    async def scenario() -> ShadowQueue:
        queue = ShadowQueue(maxsize=8)

        async def fails() -> None:
            raise ValueError("shadow model exploded " + "!" * 400)

        async def cancelled_inside() -> None:
            raise asyncio.CancelledError

        async def ok() -> None:
            return None

        for job in (fails, cancelled_inside, ok, fails):
            assert queue.offer(job)
        await queue.join()
        assert queue.running  # the worker survived every failure
        queue.stop()
        return queue

    queue = asyncio.run(scenario())
    assert queue.errors == 3 and queue.completed == 1
    assert queue.last_error is not None
    assert queue.last_error.startswith("ValueError: shadow model exploded")
    assert len(queue.last_error) == 200


def test_queue_runs_jobs_in_order_one_at_a_time() -> None:
    order: list[int] = []
    active = {"now": 0, "max": 0}

    def make(i: int) -> Callable[[], Awaitable[None]]:
        async def job() -> None:
            active["now"] += 1
            active["max"] = max(active["max"], active["now"])
            await asyncio.sleep(0.001)
            order.append(i)
            active["now"] -= 1

        return job

    async def scenario() -> None:
        queue = ShadowQueue(maxsize=20)
        for i in range(10):
            assert queue.offer(make(i))
        await queue.join()
        queue.stop()
        assert not queue.running

    asyncio.run(scenario())
    assert order == list(range(10))
    assert active["max"] == 1


def test_queue_offer_outside_loop_then_start() -> None:
    ran: list[str] = []
    queue = ShadowQueue(maxsize=4)

    async def job() -> None:
        ran.append("x")

    assert queue.offer(job)  # no running loop: queued, worker not started
    assert not queue.running and queue.pending == 1

    async def scenario() -> None:
        queue.start()
        await queue.join()
        queue.stop()

    asyncio.run(scenario())
    assert ran == ["x"] and queue.completed == 1


def test_queue_from_config_and_stats() -> None:
    queue = ShadowQueue.from_config(ShadowConfig(fraction=0.1, queue_size=3))
    assert queue.maxsize == 3
    assert queue.stats() == {
        "offered": 0,
        "accepted": 0,
        "dropped": 0,
        "completed": 0,
        "errors": 0,
        "pending": 0,
        "last_error": None,
    }
    with pytest.raises(ValueError, match="maxsize"):
        ShadowQueue(maxsize=0)
