"""The controller on a real registry and outcome log, driven by a test clock: the join, the lease and fencing
token, operator commands, and a restart mid-stage that resumes with the decisions of an uninterrupted run."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from rayml.registry import ModelRegistry
from rayml.rollout.controller import CanaryController, RolloutError, command, start
from rayml.rollout.outcomes import OutcomeLog, OutcomeLogger
from rayml.rollout.plan import RolloutPlan
from rayml.rollout.router import in_share
from rayml.rollout.state import LeaseLost, RolloutConflict, RolloutStore
from tests.clock import Clock

pytestmark = pytest.mark.unit
T0 = 1_800_000_000.0
PLAN = RolloutPlan.model_validate({
    "salt": "unit", "stages": [{"weight_pct": 50, "min_samples": 100, "min_duration_s": 10},
                               {"weight_pct": 100, "min_samples": 100, "min_duration_s": 10}],
    "margin": 0.5, "attribution_window_s": 1.0, "evaluate_every_s": 1.0, "production_log_sample": 1.0,
    "deadline_s": 60,
})



@pytest.fixture
def world(tmp_path):
    """A registry with production v1 and a candidate v2, and an outcome log of 40 s of traffic: 1,000 users
    split 50/50 by the plan's salt, 10 items a request, clicks at 10 % half a second later."""
    root = tmp_path / "registry"
    registry = ModelRegistry(root)
    artifact = tmp_path / "model.onnx"
    artifact.write_bytes(b"not a real model: the controller never loads one")
    for note in ("production", "candidate"):
        registry.register("ranker", {"model.onnx": artifact}, {"note": note})
    registry.set_alias("ranker", "production", 1)
    rng = np.random.default_rng(0)
    rollout = start(root, PLAN, "2", now=T0)
    log = OutcomeLogger(tmp_path / "outcomes", flush_rows=1_000_000)
    for i in range(4_000):
        ts = T0 + i / 100
        user = int(rng.integers(1_000))
        arm = "canary" if in_share(user, PLAN.salt, 50) else "production"
        version = "ranker:v2" if arm == "canary" else "ranker:v1"
        items = rng.choice(300, 10, replace=False).tolist()
        log.served(f"req-{i}", ts, rollout.id, user, arm, version, 200, float(rng.gamma(4, 2)), items)
        for item in np.array(items)[rng.random(10) < 0.1]:
            log.clicked(f"req-{i}", ts + 0.5, user, int(item))
    log.clicked("no-such-request", T0 + 1, 3, 4)
    log.clicked("req-0", T0 + 30, 0, 0)  # outside the attribution window (and an item maybe not served)
    log.flush()
    return root, tmp_path / "outcomes", rollout


def _run(root, outcomes, clock: Clock, until: float, holder: str, lease_ttl_s: float = 3.0) -> CanaryController:
    controller = CanaryController(root, "ranker", outcomes, holder=holder, lease_ttl_s=lease_ttl_s, clock=clock)
    while clock.now < until:
        clock.now += 1.0
        controller.step()
    return controller


def test_join_counts_unknown_and_late_clicks_and_splits_by_arm(world):
    _, outcomes, rollout = world
    report = OutcomeLog(outcomes).gate_inputs(rollout.id, "ranker:v2", T0, T0, T0 + 41, 1.0)
    assert report.unknown_clicks == 1 and report.late_clicks >= 1
    canary, production = report.inputs.canary, report.inputs.production
    assert canary.users + production.users == len({u for u in range(1000)}) or canary.users > 400
    assert abs(canary.impressions / (canary.impressions + production.impressions) - 0.5) < 0.05
    assert 0.08 < canary.clicks / canary.impressions < 0.12
    assert canary.requests + production.requests == 4_000


def test_an_equal_candidate_is_promoted_through_every_stage_and_production_moves(world):
    root, outcomes, rollout = world
    clock = Clock(T0)
    _run(root, outcomes, clock, T0 + 40, "a")
    state = RolloutStore(root, "ranker").read()
    assert state.status == "Healthy", state.decisions
    assert [d["action"] for d in state.decisions] == ["promote", "complete"]
    registry = ModelRegistry(root)
    assert registry.resolve("ranker", "production") == 2
    move = registry.alias_history("ranker")[-1]
    assert move["alias"] == "production" and move["evidence"] == state.decisions[-1]["evidence"]
    evidence = RolloutStore(root, "ranker").evidence(move["evidence"])
    assert evidence["action"] == "complete" and evidence["rollout"] == rollout.id


def test_a_restart_mid_stage_resumes_with_the_decisions_of_an_uninterrupted_run(world, tmp_path):
    root, outcomes, _ = world
    twin = tmp_path / "twin"
    shutil.copytree(root, twin)
    _run(root, outcomes, Clock(T0), T0 + 40, "uninterrupted")
    clock = Clock(T0)
    first = _run(twin, outcomes, clock, T0 + 5, "first")  # killed mid-stage: no release, its lease lapses
    assert first.leader
    second = CanaryController(twin, "ranker", outcomes, holder="second", lease_ttl_s=3.0, clock=clock)
    clock.now += 1
    assert second.step() is None and not second.leader  # passive while the first one's lease is live
    while clock.now < T0 + 40:
        clock.now += 1.0
        second.step()
    a, b = RolloutStore(root, "ranker").read(), RolloutStore(twin, "ranker").read()
    assert b.status == a.status == "Healthy"
    keys = ("action", "stage", "weight_pct", "at")
    assert [{k: d[k] for k in keys} for d in b.decisions] == [{k: d[k] for k in keys} for d in a.decisions]
    ev_a = RolloutStore(root, "ranker").evidence(a.decisions[-1]["evidence"])
    ev_b = RolloutStore(twin, "ranker").evidence(b.decisions[-1]["evidence"])
    assert ev_a["evidence"] == ev_b["evidence"]  # the same statistics, rebuilt from the log


def test_a_stale_fencing_token_cannot_write(world):
    root, _, _ = world
    store = RolloutStore(root, "ranker")
    old = store.acquire("old", 3.0, T0)
    assert store.acquire("new", 3.0, T0 + 1) is None
    new = store.acquire("new", 3.0, T0 + 10)  # the old lease lapsed
    assert new == old + 1
    with pytest.raises(LeaseLost):
        store.write(store.read(), token=old)


def test_operator_commands_override_and_a_second_start_conflicts(world):
    root, outcomes, _ = world
    with pytest.raises(RolloutConflict):
        start(root, PLAN, "2", now=T0 + 1)
    paused = command(root, "ranker", "pause", now=T0 + 2)
    assert paused.status == "Paused"
    clock = Clock(T0 + 2)
    _run(root, outcomes, clock, T0 + 30, "c")
    assert RolloutStore(root, "ranker").read().status == "Paused"  # the controller does not act while paused
    assert command(root, "ranker", "resume", now=clock.now).status == "Progressing"
    aborted = command(root, "ranker", "abort", now=clock.now)
    assert aborted.status == "Aborted" and aborted.weight_pct == 0
    assert ModelRegistry(root).resolve("ranker", "canary") == 1  # the canary alias moved back
    with pytest.raises(RolloutError, match="no active rollout"):
        command(root, "ranker", "promote")


def test_start_refuses_an_unknown_candidate_naming_the_field(world):
    root, _, _ = world
    command(root, "ranker", "abort", now=T0 + 1)
    with pytest.raises(RolloutError, match=r"candidate: .*staging"):
        start(root, PLAN, "staging")
    with pytest.raises(RolloutError, match=r"candidate: v1 is already 'production'"):
        start(root, PLAN, "1")


def test_a_candidate_refused_by_serving_is_rolled_back_before_any_gate(world):
    root, outcomes, _ = world
    ModelRegistry(root).record_serving("ranker", "canary", 2, error="RegistryError: checksum mismatch")
    _run(root, outcomes, Clock(T0), T0 + 2, "d")
    state = RolloutStore(root, "ranker").read()
    assert state.status == "Degraded" and "failed to load" in state.reason
