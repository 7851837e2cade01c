"""The latency-SLO autoscaling policy, driven through Ray's own AutoscalingContext by synthetic metric histories."""

from __future__ import annotations

import pytest
from ray.serve._private.common import DeploymentID
from ray.serve.config import AutoscalingContext

from rayml.serving.autoscaling import METRIC, LatencySLOPolicy, LatencyWindow

pytestmark = pytest.mark.unit


def context(current: int, p95_by_replica: dict[str, float], ongoing: float = 0.0, lo: int = 1, hi: int = 8,
            state: dict | None = None) -> AutoscalingContext:
    return AutoscalingContext(
        deployment_id=DeploymentID(name="Recommender", app_name="recommender"), deployment_name="Recommender",
        app_name="recommender", current_num_replicas=current, target_num_replicas=current,
        running_replicas=list(p95_by_replica), total_num_requests=ongoing, total_queued_requests=0.0,
        aggregated_metrics={METRIC: p95_by_replica}, raw_metrics={}, capacity_adjusted_min_replicas=lo,
        capacity_adjusted_max_replicas=hi, policy_state=state or {}, last_scale_up_time=None,
        last_scale_down_time=None, current_time=0.0, config=None,
    )


def run(policy: LatencySLOPolicy, history: list[float], start: int = 1, hi: int = 8) -> list[int]:
    """Replica counts over a latency history (p95 per tick, the same on every replica), following each decision."""
    replicas, trajectory = start, []
    for p95 in history:
        replicas, _ = policy(context(replicas, {f"r{i}": p95 for i in range(replicas)}, ongoing=1, hi=hi))
        trajectory.append(replicas)
    return trajectory


def test_scales_up_with_the_overshoot_and_back_down_when_latency_is_low():
    policy = LatencySLOPolicy(target_ms=50)
    #                       ok  ok  3x over  still over  ok  low  low  low
    assert run(policy, [30, 45, 150, 120, 40, 10, 10, 10]) == [1, 1, 2, 4, 4, 3, 2, 1]


def test_one_slow_replica_is_enough_to_scale_up():
    replicas, state = LatencySLOPolicy(target_ms=50)(context(3, {"a": 20, "b": 25, "c": 80}, ongoing=3))
    assert replicas == 5 and state["last_p95_ms"] == 80  # ceil(3 × 80/50)


def test_bounds_and_step_limit():
    policy = LatencySLOPolicy(target_ms=50, max_step=2)
    assert run(policy, [1000, 1000, 1000], hi=5) == [2, 4, 5]  # at most 2× a tick, never above max_replicas
    assert policy(context(1, {"a": 5}, ongoing=0, lo=1))[0] == 1  # never below min_replicas


def test_low_latency_but_busy_does_not_scale_down():
    assert LatencySLOPolicy(target_ms=50)(context(3, {"a": 5, "b": 5, "c": 5}, ongoing=9))[0] == 3


def test_without_latency_reports_the_queue_decides():
    policy = LatencySLOPolicy(target_ms=50, target_ongoing_requests=2)
    assert policy(context(2, {}, ongoing=10))[0] == 3
    assert policy(context(2, {}, ongoing=1))[0] == 2
    assert policy.desired(0, [], ongoing=1) == 1


def test_rejects_nonsense_parameters():
    with pytest.raises(ValueError, match="target_ms > 0"):
        LatencySLOPolicy(target_ms=0)
    with pytest.raises(ValueError, match=r"saturated_ongoing: 0 must be > 0, or null \(off\)"):
        LatencySLOPolicy(target_ms=50, saturated_ongoing=0)


def test_full_replicas_scale_up_although_their_latency_is_under_the_target():
    # What an overloaded replica on a fast node reports: p95 under the target (Serve lets only
    # max_ongoing_requests in; the rest queue or get 503), ongoing pinned at max_ongoing_requests (32).
    policy = LatencySLOPolicy(target_ms=50, saturated_ongoing=28)
    assert policy(context(1, {"a": 20}, ongoing=32))[0] == 2
    assert policy(context(2, {"a": 20, "b": 22}, ongoing=60))[0] == 3  # 30 a replica: still full
    assert policy(context(2, {"a": 20, "b": 22}, ongoing=40))[0] == 2  # 20 a replica: not full, not idle
    assert policy(context(2, {}, ongoing=60))[0] == 3  # before any latency report, too
    assert policy(context(1, {"a": 200}, ongoing=32))[0] == 2  # the latency rule's count when larger: ceil(1 × 2)
    assert policy(context(2, {"a": 300}, ongoing=60))[0] == 4
    # Without the setting (the default) the same full replica stays alone: the gap this closes.
    assert LatencySLOPolicy(target_ms=50)(context(1, {"a": 20}, ongoing=32))[0] == 1


def test_saturated_never_scales_down():
    policy = LatencySLOPolicy(target_ms=50, saturated_ongoing=28, target_ongoing_requests=2)
    # Low latency would scale 3 → 2 if the replicas were idle; full, they grow instead.
    assert policy(context(3, {"a": 5, "b": 5, "c": 5}, ongoing=3 * 30))[0] == 4
    assert policy(context(3, {"a": 5, "b": 5, "c": 5}, ongoing=1))[0] == 2


def test_latency_window_reports_p95_of_recent_requests_only():
    window = LatencyWindow(window_s=10)
    for i in range(100):
        window.add(0.001 * (i + 1), now=100.0)  # 1 … 100 ms
    window.add(5.0, now=50.0)  # old: outside the window
    assert window.p95_ms(now=105.0) == pytest.approx(95.05)
    assert window.p95_ms(now=200.0) == 0.0
