"""The canary gate decision: every action path of evaluate(), its evidence, the offline harness."""

from __future__ import annotations

import functools
import json
import math
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import norm

from rayml.config.base import load_config
from rayml.rollout import gates
from rayml.rollout import sequential as sq
from rayml.rollout.gates import ArmArrays, ArmStats, GateInputs, evaluate, evaluate_many
from rayml.rollout.plan import RolloutPlan

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
DAY = 86_400.0


@pytest.fixture(scope="module")
def plan() -> RolloutPlan:
    """The shipped plan's stages and α, pinned to the settings these constructed cases were written for:
    every stage proves non-inferiority and lasts at least a day, a 14-day deadline, τ = δ, production logged at
    10 %."""
    shipped = load_config(REPO / "configs/rollout/production.yaml", RolloutPlan).model_dump()
    shipped.update(production_log_sample=0.1, mixture_scale=None, deadline_s=14 * DAY,
                   stages=[{**s, "require_noninferiority": True, "min_duration_s": DAY} for s in shipped["stages"]])
    return RolloutPlan.model_validate(shipped)


@functools.lru_cache(maxsize=16)
def latency_hist(
    requests: int,
    median_ms: float = 25.0,
    sigma: float = 0.4,
    slow_share: float = 0.0,
    slow_factor: float = 10.0,
) -> tuple[int, ...]:
    """A deterministic lognormal histogram (quantiles of the distribution); ``slow_share`` of it ×
    slow_factor."""
    u = (np.arange(requests) + 0.5) / requests
    values = median_ms * np.exp(sigma * norm.ppf(u))
    slow = np.arange(requests) % 1000 < slow_share * 1000
    values[slow] *= slow_factor
    return tuple(int(x) for x in sq.latency_histogram(values))


def arm(
    users: int = 20_000,
    per_user: int = 100,
    ctr: float = 0.05,
    spread: float = 0.5,
    lift: float = 1.0,
    error_rate: float = 0.002,
    hist: tuple[int, ...] | None = None,
) -> ArmStats:
    """Exact sums for users with ``per_user`` impressions: half click ctr·(1−spread), half
    ctr·(1+spread) (× lift)."""
    lo, hi = ctr * (1 - spread) * per_user * lift, ctr * (1 + spread) * per_user * lift
    half = users / 2
    requests = users * per_user // 10
    return ArmStats(
        users=users,
        clicks=half * (lo + hi),
        impressions=float(users * per_user),
        clicks_sq=half * (lo * lo + hi * hi),
        impressions_sq=float(users * per_user**2),
        clicks_impressions=half * (lo + hi) * per_user,
        requests=requests,
        errors=round(error_rate * requests),
        latency_hist=hist or latency_hist(requests),
    )


def inputs(
    canary: ArmStats | None = None,
    production: ArmStats | None = None,
    stage_users: tuple[int, int] = (1000, 9900),
    stage_canary_users: int | None = None,
) -> GateInputs:
    return GateInputs(
        canary or arm(),
        production or arm(),
        stage_users,
        stage_users[0] if stage_canary_users is None else stage_canary_users,
    )


def check(decision: gates.Decision, action: str, gate: str) -> None:
    assert (decision.action, decision.evidence["gate"]) == (action, gate), decision.reason
    assert decision.reason.startswith(action)
    json.dumps(decision.evidence, allow_nan=False)  # JSON-safe: no NaN/inf, only plain types


# --- each action path -----------------------------------------------------------------------------


def test_promote_when_minimums_met_and_noninferiority_shown(plan):
    d = evaluate(plan, 0, DAY, DAY, inputs())
    check(d, "promote", "promote")
    ctr = d.evidence["ctr"]
    assert ctr["lower"] > ctr["log_margin"] and ctr["relative_lower"] == pytest.approx(
        math.expm1(ctr["lower"])
    )
    assert (
        d.evidence["samples"]["canary"]["users"] == 20_000
        and d.evidence["samples"]["production"]["impressions"]
    )


def test_complete_at_the_last_stage(plan):
    d = evaluate(plan, 3, DAY, 4 * DAY, inputs(stage_users=(20_000, 0)))
    check(d, "complete", "promote")
    assert d.evidence["srm"]["checked"] is False  # 100 %: nothing to compare


def test_continue_until_the_minimum_duration(plan):
    d = evaluate(plan, 0, DAY - 3600, DAY - 3600, inputs())
    check(d, "continue", "none")
    assert "23.0 h of 24 h" in d.reason


def test_continue_until_the_minimum_samples(plan):
    d = evaluate(plan, 1, 2 * DAY, 3 * DAY, inputs(stage_users=(4000, 7600)))
    check(d, "continue", "none")
    assert "4000 of 5000 canary users" in d.reason


def test_continue_while_too_few_users_even_with_errors(plan):
    """Below GATE_MIN_USERS in an arm every gate but SRM and the deadline waits, however bad."""
    few = arm(users=50, error_rate=0.5, lift=0.5)
    d = evaluate(plan, 0, 2 * DAY, 2 * DAY, inputs(canary=few, stage_users=(50, 495)))
    check(d, "continue", "none")
    assert d.evidence["errors"]["checked"] is False and d.evidence["ctr"]["checked"] is False
    assert d.evidence["ctr"]["skipped"]
    no_clicks = replace(arm(), clicks=0.0, clicks_sq=0.0, clicks_impressions=0.0)
    check(evaluate(plan, 0, 2 * DAY, 2 * DAY, inputs(canary=no_clicks)), "continue", "none")


def test_halt_on_sample_ratio_mismatch(plan):
    """1 % canary vs 10 % of 99 % production: 9.17 % expected; 15 % observed on 10,000 users."""
    d = evaluate(plan, 0, DAY, DAY, inputs(stage_users=(1500, 8500)))
    check(d, "halt", "srm")
    srm = d.evidence["srm"]
    assert srm["expected_canary_share"] == pytest.approx(0.01 / (0.01 + 0.099))
    assert (
        srm["log_bayes_factor"] >= math.log(srm["threshold"])
        and srm["alpha"] == plan.stage_alpha_srm()
    )
    # a split that matches the shares does not halt
    ok = evaluate(plan, 0, DAY, DAY, inputs(stage_users=(1834, 18_166)))
    assert ok.action == "promote" and not ok.evidence["srm"]["log_bayes_factor"] >= math.log(
        srm["threshold"]
    )


def test_srm_comes_first(plan):
    d = evaluate(plan, 0, DAY, DAY, inputs(canary=arm(error_rate=0.05), stage_users=(1500, 8500)))
    check(d, "halt", "srm")


def test_rollback_on_errors(plan):
    d = evaluate(plan, 0, 3600, 3600, inputs(canary=arm(error_rate=0.02)))
    check(d, "rollback", "errors")
    err = d.evidence["errors"]
    assert err["lower"] > err["margin"] == plan.guardrails.max_error_increase
    # a small increase within the margin is tolerated
    check(evaluate(plan, 0, 3600, 3600, inputs(canary=arm(error_rate=0.004))), "continue", "none")


def test_rollback_on_p95_latency(plan):
    requests = 20_000 * 100 // 10
    slow = arm(hist=latency_hist(requests, median_ms=25.0 * 1.5))
    d = evaluate(plan, 0, 3600, 3600, inputs(canary=slow))
    check(d, "rollback", "latency_p95")
    p95 = d.evidence["latency"]["p95"]
    assert p95["lower"] > 0.05 and p95["threshold_ms"] == pytest.approx(
        1.2 * p95["production_quantile_ms"]
    )


def test_rollback_on_p99_latency_only(plan):
    """2 % of canary requests 10× slower: under the p95 allowance (5 %), over the p99 one (1 %)."""
    requests = 20_000 * 100 // 10
    tail = arm(hist=latency_hist(requests, slow_share=0.02))
    d = evaluate(plan, 0, 3600, 3600, inputs(canary=tail))
    check(d, "rollback", "latency_p99")
    assert d.evidence["latency"]["p95"]["lower"] < 0.05 < d.evidence["latency"]["p95"]["upper"] + 1


def test_equal_latency_never_fires(plan):
    d = evaluate(plan, 0, 3600, 3600, inputs())
    for name in ("p95", "p99"):
        lat = d.evidence["latency"][name]
        assert lat["checked"] and lat["upper"] < lat["nominal_share"]


def test_rollback_on_ctr(plan):
    d = evaluate(plan, 0, 3600, 3600, inputs(canary=arm(lift=0.8)))
    check(d, "rollback", "ctr")
    ctr = d.evidence["ctr"]
    assert ctr["relative_lift"] == pytest.approx(-0.2) and ctr["relative_upper"] < -plan.margin
    assert ctr["p_value_at_margin"] < plan.alpha_split.ctr


def test_rollback_at_the_deadline_with_the_latest_evidence(plan):
    unsure = inputs(canary=arm(users=2000), stage_users=(2000, 19_800))  # interval straddles −δ
    assert evaluate(plan, 0, DAY, DAY, unsure).action == "continue"
    d = evaluate(plan, 0, 14 * DAY, 14 * DAY, unsure)
    check(d, "rollback", "deadline")
    assert d.evidence["ctr"]["lower"] < d.evidence["ctr"]["log_margin"] < d.evidence["ctr"]["upper"]


def test_safety_stages_promote_without_the_proof(plan):
    unsure = inputs(canary=arm(users=2000), stage_users=(2000, 19_800))
    assert evaluate(plan, 0, DAY, DAY, unsure, prove_from_stage=0).action == "continue"
    d = evaluate(plan, 0, DAY, DAY, unsure, prove_from_stage=3)
    check(d, "promote", "promote")
    assert "not required" in d.reason
    # the last stage always needs it
    assert (
        evaluate(
            plan, 3, DAY, 4 * DAY, replace(unsure, stage_users=(2000, 0)), prove_from_stage=9
        ).action
        == "continue"
    )


def test_naive_interval_is_narrower(plan):
    a = evaluate(plan, 0, 3600, 3600, inputs()).evidence["ctr"]
    b = evaluate(plan, 0, 3600, 3600, inputs(), ctr_interval="naive95").evidence["ctr"]
    assert b["upper"] - b["lower"] < a["upper"] - a["lower"]
    with pytest.raises(ValueError):
        evaluate(plan, 0, 3600, 3600, inputs(), ctr_interval="bogus")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        evaluate(plan, 4, 3600, 3600, inputs())


# --- one implementation: evaluate == evaluate_many ------------------------------------------------


def test_evaluate_agrees_with_evaluate_many(plan):
    rng = np.random.default_rng(0)
    cases = []
    for _ in range(120):
        users = int(rng.choice([50, 2000, 20_000, 20_000]))
        canary = arm(
            users=users,
            lift=float(rng.choice([0.8, 0.97, 1.0, 1.03])),
            error_rate=float(rng.choice([0.002, 0.002, 0.002, 0.01])),
        )
        production = arm(users=int(rng.choice([500, 20_000, 20_000])))
        stage = int(rng.integers(0, 4))
        w = plan.stages[stage].weight_pct / 100
        expected = w / (w + (1 - w) * plan.production_log_sample)
        share = round(
            30_000 * expected * float(rng.choice([1.0, 1.0, 1.0, 0.8]))
        )  # a quarter mismatched
        cases.append(
            (
                stage,
                float(rng.choice([3600, DAY, DAY])),
                float(rng.choice([DAY, DAY, 14 * DAY])),
                inputs(canary, production, (share, 30_000 - share)),
            )
        )
    many = evaluate_many(
        plan,
        [c[0] for c in cases],
        [c[1] for c in cases],
        [c[2] for c in cases],
        ArmArrays.from_stats([c[3].canary for c in cases]),
        ArmArrays.from_stats([c[3].production for c in cases]),
        [c[3].stage_users for c in cases],
        [c[3].stage_canary_users for c in cases],
    )
    actions = [evaluate(plan, *c).action for c in cases]
    assert actions == [gates.ACTIONS[a] for a in many.action]
    assert set(actions) == {"continue", "promote", "complete", "rollback", "halt"}  # every path


# --- ArmStats -------------------------------------------------------------------------------------


def test_arm_stats_empty_merged_and_round_trip():
    a = arm(users=1000)
    assert ArmStats.empty().merged(a) == a
    both = a.merged(arm(users=3000))
    assert (
        both.users == 4000
        and both.impressions == 400_000
        and sum(both.latency_hist) == both.requests
    )
    data = json.loads(json.dumps(both.to_dict()))
    assert ArmStats.from_dict(data) == both
    with pytest.raises(ValueError, match="unknown"):
        ArmStats.from_dict({**data, "extra": 1})
    with pytest.raises(ValueError, match="buckets"):
        replace(a, latency_hist=(1, 2, 3))


# --- the offline harness --------------------------------------------------------------------------


def test_rollout_sim_quick_rolls_the_bad_candidate_back_early():
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks/rollout_sim.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    by_name = {
        (line["candidate"], line["ctr_interval"]): line
        for line in lines
        if line.get("variant") == "plan"
    }
    bad = by_name[("bad", "msprt")]
    early = bad["rollback_at_stage_by_gate"]["1%"] + bad["rollback_at_stage_by_gate"]["5%"]
    assert early >= 0.7 and bad["complete"] == 0
    assert by_name[("equal", "msprt")]["rollback_by_a_gate"] <= 0.1
    summary = lines[-1]
    assert summary["summary"] and summary["scalar_mismatches"] == 0
