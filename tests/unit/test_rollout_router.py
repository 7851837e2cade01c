"""The router: stable, monotone, salted buckets; the TTL and load fail-safes; the plan's refusals."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from rayml.config import ConfigError, load_config
from rayml.rollout.plan import RolloutPlan
from rayml.rollout.router import (
    BUCKETS,
    CanaryWeights,
    Experiment,
    ExperimentArm,
    Router,
    bucket,
    in_share,
)

pytestmark = pytest.mark.unit
USERS = range(20_000)


def test_buckets_are_stable_and_uniform():
    a = [bucket(u, "s") for u in USERS]
    assert a == [bucket(u, "s") for u in USERS]  # same answer every time, in any process (no PYTHONHASHSEED)
    counts = np.bincount(np.array(a) * 10 // BUCKETS, minlength=10)
    assert counts.min() > 1_800 and counts.max() < 2_200


def test_monotone_a_canary_user_stays_in_at_every_larger_weight():
    for lo, hi in [(1, 5), (5, 25), (25, 100)]:
        small = {u for u in USERS if in_share(u, "s", lo)}
        large = {u for u in USERS if in_share(u, "s", hi)}
        assert small <= large
        assert abs(len(large) / len(USERS) - hi / 100) < 0.015


def test_salts_are_independent():
    canary = np.array([in_share(u, "canary", 50) for u in USERS])
    other = np.array([in_share(u, "experiment-7", 50) for u in USERS])
    assert abs((canary & other).mean() - 0.25) < 0.02


def _weights(**kw) -> CanaryWeights:
    base = {"alias": "canary", "version": 2, "weight_pct": 50.0, "salt": "s", "heartbeat_at": 1000.0,
            "ttl_s": 60.0, "log_sample": 0.1}
    return CanaryWeights(**{**base, **kw})


def test_router_assigns_by_weight_and_logs_all_canary_users_and_a_sample_of_production():
    router = Router()
    router.update(_weights(), {"production": 1, "canary": 2})
    got = [router.assign(u, 1010.0) for u in range(4000)]
    canary = [a for a in got if a.arm == "canary"]
    assert 0.45 < len(canary) / 4000 < 0.55
    assert all(a.alias == "canary" and a.logged for a in canary)
    prod_logged = [a.logged for a in got if a.arm == "production"]
    assert 0.07 < np.mean(prod_logged) < 0.13


def test_canary_gets_nothing_past_the_ttl_or_when_the_replica_does_not_serve_the_candidate():
    router = Router()
    router.update(_weights(), {"production": 1, "canary": 2})
    assert router.live_weight(1059.0) == 50
    assert router.live_weight(1061.0) == 0  # the controller stopped heartbeating: fail safe to production
    assert all(router.assign(u, 1061.0).arm == "production" for u in range(500))
    router.update(_weights(), {"production": 1, "canary": 1})  # the candidate did not load here
    assert router.live_weight(1010.0) == 0


def test_experiment_arms_must_sum_to_100_and_split_by_their_own_salt():
    with pytest.raises(ValueError, match="sum to 90"):
        Experiment("e", "salt", (ExperimentArm("a", 50), ExperimentArm("b", 40)))
    exp = Experiment("e", "salt", (ExperimentArm("a", 30), ExperimentArm("b", 70)))
    share = np.mean([exp.arm(u).name == "a" for u in USERS])
    assert abs(share - 0.3) < 0.015


PLAN = {"stages": [{"weight_pct": 1, "min_duration_s": 10}, {"weight_pct": 100, "min_duration_s": 10}]}


@pytest.mark.parametrize(("change", "field"), [
    ({"stages": [{"weight_pct": 5, "min_duration_s": 1}, {"weight_pct": 1, "min_duration_s": 1}]},
     "stages.1.weight_pct"),
    ({"stages": [{"weight_pct": 5, "min_duration_s": 1}, {"weight_pct": 50, "min_duration_s": 1}]},
     "stages.1.weight_pct: the last stage must send 100"),
    ({"stages": [{"weight_pct": 100, "min_samples": 10, "min_duration_s": 1}]}, "stages.0.min_samples"),
    ({"alpha_split": {"ctr": 0.04, "errors": 0.01, "latency": 0.005, "srm": 0.005}}, "alpha_split"),
    ({"canary_alias": "production"}, "canary_alias"),
])
def test_invalid_plans_are_refused_naming_the_field(change, field):
    with pytest.raises(ValidationError, match=field.replace(".", r"\.")):
        RolloutPlan.model_validate({**PLAN, **change})


def test_shipped_production_plan_holds_each_stage_a_full_day(tmp_path):
    plan = load_config("configs/rollout/production.yaml", RolloutPlan)
    assert [s.weight_pct for s in plan.stages] == [1, 5, 25, 100]
    assert all(s.min_duration_s >= 86_400 for s in plan.stages)
    bad = tmp_path / "plan.yaml"
    bad.write_text("stages:\n  - {weight_pct: 1, min_duration_s: 1, min_sample: 5}\n")
    with pytest.raises(ConfigError, match=r"plan\.yaml: unknown key 'stages\.0\.min_sample'"):
        load_config(bad, RolloutPlan)


def test_non_inferiority_must_be_proved_from_some_stage_on_and_by_the_last():
    stages = [{"weight_pct": 1, "min_duration_s": 1, "require_noninferiority": False},
              {"weight_pct": 100, "min_duration_s": 1}]
    assert RolloutPlan.model_validate({"stages": stages}).prove_from_stage == 1
    with pytest.raises(ValidationError, match=r"stages\.1\.require_noninferiority: the last stage"):
        RolloutPlan.model_validate({"stages": [stages[0], {**stages[1], "require_noninferiority": False}]})
    with pytest.raises(ValidationError, match=r"stages\.1\.require_noninferiority: once a stage proves"):
        RolloutPlan.model_validate({"stages": [{**stages[0], "require_noninferiority": True},
                                               {"weight_pct": 50, "min_duration_s": 1,
                                                "require_noninferiority": False}, stages[1]]})
