"""The canary's gate decision: one pure function shared by the Serve controller and the harness.

:func:`evaluate` decides one rollout's next step from its plan, clock and cumulative *mature*
statistics; :func:`evaluate_many` is the same decision on arrays (one element per rollout), used by
``benchmarks/rollout_sim.py``. ``evaluate`` calls ``evaluate_many`` on a batch of one, so there is
one implementation of every formula and every threshold.

Checks, in order (the first that fires decides):

1. **SRM** (skipped at 100 % or with fewer than :data:`SRM_MIN_USERS` stage users): distinct canary
   vs production-logged users of the current stage against the shares ``w`` vs
   ``(1−w)·production_log_sample`` (normalised), Dirichlet–multinomial Bayes factor at
   ``α_srm / len(stages)`` → ``halt``.
2. **Errors**: always-valid lower bound of ``err_canary − err_production`` above
   ``max_error_increase`` → ``rollback``.
3. **Latency** (α_latency split half each): the share of canary requests slower than
   ``p95_ratio ×`` production's p95 surely above 5 %, or slower than ``p99_ratio ×`` production's
   p99 surely above 1 % → ``rollback``.
4. **CTR**: always-valid (1−α_ctr) interval of the log lift (mixture scale ``plan.tau``); upper
   bound below ``log(1−δ)`` → ``rollback``.
5. **Deadline**: ``elapsed_s ≥ plan.deadline_s`` → ``rollback``.
6. **Promote**: the stage's ``min_duration_s`` and ``min_samples`` are met and the CTR lower bound
   is above ``log(1−δ)`` → ``promote`` (``complete`` at the last stage); otherwise ``continue``.

Checks 2–4 and 6 are skipped (``continue``) while either arm has fewer than ``GATE_MIN_USERS`` users
or no impressions or no clicks. The CTR and guardrail tests run on data cumulative over the whole
rollout: a new stage continues the same confidence sequence, it never restarts it (restarting would
spend α again).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

from rayml.rollout import sequential as sq
from rayml.rollout.plan import GATE_MIN_USERS, RolloutPlan

Action = Literal["continue", "promote", "complete", "rollback", "halt"]
CtrInterval = Literal["msprt", "naive95"]

ACTIONS: tuple[Action, ...] = ("continue", "promote", "complete", "rollback", "halt")
CONTINUE, PROMOTE, COMPLETE, ROLLBACK, HALT = range(5)
GATES: tuple[str, ...] = (
    "none",
    "srm",
    "errors",
    "latency_p95",
    "latency_p99",
    "ctr",
    "deadline",
    "promote",
)
G_NONE, G_SRM, G_ERRORS, G_P95, G_P99, G_CTR, G_DEADLINE, G_PROMOTE = range(len(GATES))

SRM_MIN_USERS = GATE_MIN_USERS  # fewer distinct stage users than this: the SRM check waits
MIN_ERROR_TAU = 1e-3  # mixture scale of the error guardrail when max_error_increase is 0
LATENCY_QUANTILES = (("p95", 0.95), ("p99", 0.99))


# --------------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ArmStats:
    """One arm, cumulative over the rollout, mature data only (attribution window closed).

    ``c_u``/``n_u`` are one user's clicks/impressions in this arm; the sums run over distinct users.
    ``latency_hist`` counts requests per :data:`rayml.rollout.sequential.LATENCY_EDGES_MS` bucket
    (``LATENCY_BUCKETS`` entries, overflow included).
    """

    users: int  # distinct users with ≥ 1 impression
    clicks: float  # Σ_u c_u
    impressions: float  # Σ_u n_u
    clicks_sq: float  # Σ_u c_u²
    impressions_sq: float  # Σ_u n_u²
    clicks_impressions: float  # Σ_u c_u n_u
    requests: int
    errors: int
    latency_hist: tuple[int, ...]

    def __post_init__(self) -> None:
        if len(self.latency_hist) != sq.LATENCY_BUCKETS:
            raise ValueError(
                f"latency_hist: expected {sq.LATENCY_BUCKETS} buckets, got {len(self.latency_hist)}"
            )

    @classmethod
    def empty(cls) -> ArmStats:
        """No data yet."""
        return cls(0, 0.0, 0.0, 0.0, 0.0, 0.0, 0, 0, (0,) * sq.LATENCY_BUCKETS)

    def merged(self, other: ArmStats) -> ArmStats:
        """Elementwise sums; valid only when the two hold disjoint users (else Σc² is wrong)."""
        values = {
            f.name: getattr(self, f.name) + getattr(other, f.name)
            for f in fields(self)
            if f.name != "latency_hist"
        }
        hist = tuple(a + b for a, b in zip(self.latency_hist, other.latency_hist, strict=True))
        return ArmStats(latency_hist=hist, **values)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe mapping (``latency_hist`` as a list)."""
        out: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self)}
        out["latency_hist"] = list(self.latency_hist)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ArmStats:
        """Inverse of :meth:`to_dict`; every key is required, unknown keys are errors."""
        names = {f.name for f in fields(cls)}
        if set(data) != names:
            missing, unknown = sorted(names - set(data)), sorted(set(data) - names)
            raise ValueError(f"ArmStats keys: missing {missing}, unknown {unknown}")
        return cls(
            users=int(data["users"]),
            clicks=float(data["clicks"]),
            impressions=float(data["impressions"]),
            clicks_sq=float(data["clicks_sq"]),
            impressions_sq=float(data["impressions_sq"]),
            clicks_impressions=float(data["clicks_impressions"]),
            requests=int(data["requests"]),
            errors=int(data["errors"]),
            latency_hist=tuple(int(x) for x in data["latency_hist"]),
        )


@dataclass(frozen=True)
class GateInputs:
    """What one evaluation reads: both arms (cumulative) and the current stage's user counts."""

    canary: ArmStats
    # production users are logged at plan.production_log_sample by user hash
    production: ArmStats
    # distinct (canary, production-logged) users seen in the current stage, for SRM
    stage_users: tuple[int, int]
    # canary users with mature data in the current stage (vs stage.min_samples)
    stage_canary_users: int


@dataclass(frozen=True)
class ArmArrays:
    """:class:`ArmStats` of many rollouts: each field ``(R,)``, ``latency_hist`` ``(R, B)``."""

    users: NDArray[np.float64]
    clicks: NDArray[np.float64]
    impressions: NDArray[np.float64]
    clicks_sq: NDArray[np.float64]
    impressions_sq: NDArray[np.float64]
    clicks_impressions: NDArray[np.float64]
    requests: NDArray[np.float64]
    errors: NDArray[np.float64]
    latency_hist: NDArray[np.float64]

    @classmethod
    def from_stats(cls, stats: Sequence[ArmStats]) -> ArmArrays:
        """Stack one :class:`ArmStats` per rollout."""
        cols = {
            f.name: np.array([getattr(s, f.name) for s in stats], dtype=np.float64)
            for f in fields(cls)
        }
        cols["latency_hist"] = cols["latency_hist"].reshape(len(stats), sq.LATENCY_BUCKETS)
        return cls(**cols)

    def ratio_sums(self) -> tuple[NDArray[np.float64], ...]:
        """The six sums :func:`rayml.rollout.sequential.ratio_log_variance` takes, in its order."""
        return (
            self.users,
            self.clicks,
            self.impressions,
            self.clicks_sq,
            self.impressions_sq,
            self.clicks_impressions,
        )


# --------------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Decision:
    """What the controller does next, why, and the statistics behind it (JSON-safe ``evidence``)."""

    action: Action
    reason: str
    evidence: dict[str, Any]


@dataclass(frozen=True)
class LatencyCheck:
    """One latency guardrail on arrays: production's quantile, the threshold, the share above it."""

    checked: NDArray[np.bool_]
    production_ms: NDArray[np.float64]
    threshold_ms: NDArray[np.float64]
    share: NDArray[np.float64]
    lower: NDArray[np.float64]
    upper: NDArray[np.float64]
    fired: NDArray[np.bool_]


@dataclass(frozen=True)
class GateResults:
    """:func:`evaluate_many`'s output per rollout: action and gate (codes), every statistic."""

    action: NDArray[np.int8]  # index into ACTIONS
    gate: NDArray[np.int8]  # index into GATES
    stage: NDArray[np.intp]
    enough: NDArray[np.bool_]  # both arms have the users, impressions and clicks the gates need
    srm_checked: NDArray[np.bool_]
    srm_expected_share: NDArray[np.float64]  # expected canary share of the stage's users
    srm_log_bf: NDArray[np.float64]
    err_checked: NDArray[np.bool_]
    err_diff: NDArray[np.float64]
    err_lower: NDArray[np.float64]
    err_upper: NDArray[np.float64]
    latency: dict[str, LatencyCheck]
    ctr_checked: NDArray[np.bool_]
    ctr_log_lift: NDArray[np.float64]
    ctr_var: NDArray[np.float64]
    ctr_lower: NDArray[np.float64]
    ctr_upper: NDArray[np.float64]
    min_duration_met: NDArray[np.bool_]
    min_samples_met: NDArray[np.bool_]
    proven: NDArray[np.bool_]  # CTR lower bound above log(1 − δ)
    deadline: NDArray[np.bool_]


# --------------------------------------------------------------------------------------------------
# The decision on arrays
# --------------------------------------------------------------------------------------------------


def _stage_table(plan: RolloutPlan, stage: NDArray[np.intp]) -> tuple[NDArray[np.float64], ...]:
    """Per rollout: canary weight (fraction), min duration (s), min samples, is-last-stage."""
    weights = np.array([s.weight_pct / 100.0 for s in plan.stages])
    durations = np.array([s.min_duration_s for s in plan.stages])
    samples = np.array([s.min_samples for s in plan.stages], dtype=np.float64)
    last = (stage == len(plan.stages) - 1).astype(np.float64)
    return weights[stage], durations[stage], samples[stage], last


def _srm(
    plan: RolloutPlan, weight: NDArray[np.float64], stage_users: NDArray[np.float64]
) -> tuple[NDArray[np.bool_], NDArray[np.float64], NDArray[np.float64]]:
    """``(checked, expected canary share, log BF)`` of the stage's user counts."""
    logged = (1.0 - weight) * plan.production_log_sample
    expected = weight / (weight + logged)
    checked = (weight < 1.0) & (stage_users.sum(axis=-1) >= SRM_MIN_USERS)
    safe = np.where(checked, expected, 0.5)  # unchecked rows (w = 100 %) would give log(0)
    log_bf = sq.srm_log_bayes_factor(stage_users, np.stack([safe, 1.0 - safe], axis=-1))
    return checked, expected, np.where(checked, log_bf, np.nan)


def _latency_checks(
    plan: RolloutPlan, canary: ArmArrays, production: ArmArrays, enough: NDArray[np.bool_]
) -> dict[str, LatencyCheck]:
    """The p95 and p99 guardrails (α_latency split half each); mixture scale = the nominal share."""
    alpha = plan.alpha_split.latency / 2.0
    ratios = {"p95": plan.guardrails.p95_ratio, "p99": plan.guardrails.p99_ratio}
    canary_total = canary.latency_hist.sum(axis=-1)
    production_total = production.latency_hist.sum(axis=-1)
    out: dict[str, LatencyCheck] = {}
    for name, q in LATENCY_QUANTILES:
        nominal = 1.0 - q
        prod_ms = sq.quantile_from_hist(production.latency_hist, q)
        threshold = ratios[name] * prod_ms
        above = sq.count_above(canary.latency_hist, threshold)
        share, lower, upper = sq.share_bounds(above, canary_total, nominal, alpha)
        checked = enough & (canary_total > 0) & (production_total > 0)
        out[name] = LatencyCheck(
            checked, prod_ms, threshold, share, lower, upper, checked & (lower > nominal)
        )
    return out


def _ctr_interval(
    plan: RolloutPlan, theta: NDArray[np.float64], var: NDArray[np.float64], interval: CtrInterval
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    if interval == "msprt":
        return sq.msprt_ci(theta, var, plan.tau, plan.alpha_split.ctr)
    if interval == "naive95":
        return sq.fixed_horizon_ci(theta, var, 0.05)
    raise ValueError(f"ctr_interval: {interval!r} is not 'msprt' or 'naive95'")


def evaluate_many(
    plan: RolloutPlan,
    stage_index: ArrayLike,
    stage_elapsed_s: ArrayLike,
    elapsed_s: ArrayLike,
    canary: ArmArrays,
    production: ArmArrays,
    stage_users: ArrayLike,
    stage_canary_users: ArrayLike,
    *,
    ctr_interval: CtrInterval = "msprt",
    prove_from_stage: int | None = None,
) -> GateResults:
    """The gate decision of ``R`` rollouts at once: arrays ``(R,)``, ``stage_users`` ``(R, 2)``.

    ``ctr_interval="naive95"`` swaps the CTR confidence sequence for a plain 95 % interval (the
    harness's peeking comparison, never for production). ``prove_from_stage``: stages with a lower
    index promote once their minimums are met and nothing fired, without the CTR non-inferiority
    proof (None, the default: the plan's ``require_noninferiority`` per stage; it is clipped so the
    last stage always requires it).
    """
    if prove_from_stage is None:
        prove_from_stage = plan.prove_from_stage
    rows = canary.users.shape[0]
    stage = np.broadcast_to(np.asarray(stage_index, dtype=np.intp), (rows,))
    stage_elapsed = np.broadcast_to(np.asarray(stage_elapsed_s, dtype=np.float64), (rows,))
    elapsed = np.broadcast_to(np.asarray(elapsed_s, dtype=np.float64), (rows,))
    users_now = np.asarray(stage_users, dtype=np.float64).reshape(rows, 2)
    canary_now = np.broadcast_to(np.asarray(stage_canary_users, dtype=np.float64), (rows,))
    weight, min_duration, min_samples, last = _stage_table(plan, stage)
    guard = plan.guardrails

    srm_checked, expected, log_bf = _srm(plan, weight, users_now)
    srm_fired = srm_checked & (log_bf >= math.log(1.0 / plan.stage_alpha_srm()))

    enough = (
        (canary.users >= GATE_MIN_USERS)
        & (production.users >= GATE_MIN_USERS)
        & (canary.impressions > 0)
        & (production.impressions > 0)
        & (canary.clicks > 0)
        & (production.clicks > 0)
    )

    err_checked = enough & (canary.requests > 0) & (production.requests > 0)
    err_diff, err_lower, err_upper = sq.share_difference_bounds(
        canary.errors,
        canary.requests,
        production.errors,
        production.requests,
        max(guard.max_error_increase, MIN_ERROR_TAU),
        plan.alpha_split.errors,
    )
    err_fired = err_checked & (err_lower > guard.max_error_increase)

    latency = _latency_checks(plan, canary, production, enough)

    theta, var = sq.log_lift(canary.ratio_sums(), production.ratio_sums())
    ctr_lower, ctr_upper = _ctr_interval(plan, theta, var, ctr_interval)
    ctr_checked = enough & np.isfinite(var)
    log_margin = math.log(1.0 - plan.margin)
    ctr_fired = ctr_checked & (ctr_upper < log_margin)

    deadline = elapsed >= plan.deadline_s
    duration_met = stage_elapsed >= min_duration
    samples_met = canary_now >= min_samples
    proven = ctr_checked & (ctr_lower > log_margin)
    safety_stage = stage < min(prove_from_stage, len(plan.stages) - 1)
    promote = duration_met & samples_met & ctr_checked & (proven | safety_stage)

    action = np.full(rows, CONTINUE, dtype=np.int8)
    gate = np.full(rows, G_NONE, dtype=np.int8)
    decided = np.zeros(rows, dtype=bool)
    promote_action = np.where(last > 0, COMPLETE, PROMOTE)
    for fired, act, code in (
        (srm_fired, HALT, G_SRM),
        (err_fired, ROLLBACK, G_ERRORS),
        (latency["p95"].fired, ROLLBACK, G_P95),
        (latency["p99"].fired, ROLLBACK, G_P99),
        (ctr_fired, ROLLBACK, G_CTR),
        (deadline, ROLLBACK, G_DEADLINE),
        (promote, promote_action, G_PROMOTE),
    ):
        take = fired & ~decided
        action = np.where(take, act, action).astype(np.int8)
        gate[take] = code
        decided |= take

    return GateResults(
        action=action,
        gate=gate,
        stage=np.asarray(stage),
        enough=enough,
        srm_checked=srm_checked,
        srm_expected_share=expected,
        srm_log_bf=log_bf,
        err_checked=err_checked,
        err_diff=err_diff,
        err_lower=err_lower,
        err_upper=err_upper,
        latency=latency,
        ctr_checked=ctr_checked,
        ctr_log_lift=theta,
        ctr_var=var,
        ctr_lower=ctr_lower,
        ctr_upper=ctr_upper,
        min_duration_met=duration_met,
        min_samples_met=samples_met,
        proven=proven,
        deadline=deadline,
    )


# --------------------------------------------------------------------------------------------------
# One rollout: Decision with reason and evidence
# --------------------------------------------------------------------------------------------------


def _num(value: Any) -> float | None:
    """A JSON-safe float: ``None`` for nan/inf."""
    x = float(value)
    return x if math.isfinite(x) else None


def _rel(log_value: Any) -> float | None:
    """Relative lift ``exp(θ) − 1`` of a log lift (``None`` when not finite)."""
    x = float(log_value)
    return math.expm1(x) if math.isfinite(x) else None


def _pct(x: float | None, digits: int = 2) -> str:
    return "n/a" if x is None else f"{x:+.{digits}%}"


def _arm_samples(arm: ArmStats) -> dict[str, Any]:
    return {
        "users": int(arm.users),
        "impressions": _num(arm.impressions),
        "clicks": _num(arm.clicks),
        "ctr": _num(arm.clicks / arm.impressions) if arm.impressions > 0 else None,
        "requests": int(arm.requests),
        "errors": int(arm.errors),
        "latency_count": int(sum(arm.latency_hist)),
    }


_SHARE_TEST = "normal-mixture mSPRT on the CLT estimate of a share, one-sided"


def _latency_evidence(plan: RolloutPlan, res: GateResults, skipped: str | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, q in LATENCY_QUANTILES:
        check = res.latency[name]
        out[name] = {
            "test": f"share of canary requests above ratio × production {name}; {_SHARE_TEST}",
            "checked": bool(check.checked[0]),
            "skipped": None if check.checked[0] else (skipped or "no latency recorded"),
            "production_quantile_ms": _num(check.production_ms[0]),
            "ratio": getattr(plan.guardrails, f"{name}_ratio"),
            "threshold_ms": _num(check.threshold_ms[0]),
            "canary_share_above": _num(check.share[0]),
            "lower": _num(check.lower[0]),
            "upper": _num(check.upper[0]),
            "nominal_share": round(1.0 - q, 6),
            "tau": round(1.0 - q, 6),
            "alpha": plan.alpha_split.latency / 2.0,
        }
    return out


def _srm_evidence(plan: RolloutPlan, res: GateResults, stage_users: list[int]) -> dict[str, Any]:
    log_bf = _num(res.srm_log_bf[0])
    total = sum(stage_users)
    return {
        "test": "Dirichlet-multinomial Bayes factor (Lindon & Malek 2022)",
        "checked": bool(res.srm_checked[0]),
        "skipped": None if res.srm_checked[0] else "100 % stage or too few stage users",
        "log_bayes_factor": log_bf,
        "bayes_factor": None if log_bf is None else _num(math.exp(min(log_bf, 700.0))),
        "threshold": 1.0 / plan.stage_alpha_srm(),
        "expected_canary_share": _num(res.srm_expected_share[0]),
        "observed_canary_share": stage_users[0] / total if total else None,
        "concentration": sq.SRM_CONCENTRATION,
        "alpha": plan.stage_alpha_srm(),
    }


def _errors_evidence(plan: RolloutPlan, res: GateResults, skipped: str | None) -> dict[str, Any]:
    margin = plan.guardrails.max_error_increase
    return {
        "test": f"error rate canary - production; {_SHARE_TEST}",
        "checked": bool(res.err_checked[0]),
        "skipped": skipped,
        "difference": _num(res.err_diff[0]),
        "lower": _num(res.err_lower[0]),
        "upper": _num(res.err_upper[0]),
        "margin": margin,
        "tau": max(margin, MIN_ERROR_TAU),
        "alpha": plan.alpha_split.errors,
    }


def _ctr_evidence(
    plan: RolloutPlan, res: GateResults, skipped: str | None, ctr_interval: CtrInterval
) -> dict[str, Any]:
    theta, var = res.ctr_log_lift[0], res.ctr_var[0]
    lower, upper = res.ctr_lower[0], res.ctr_upper[0]
    log_margin = math.log(1.0 - plan.margin)
    p_margin = sq.msprt_p_value(theta, var, plan.tau, log_margin) if res.ctr_checked[0] else None
    interval = "normal-mixture mSPRT" if ctr_interval == "msprt" else "naive fixed 95 % interval"
    return {
        "test": f"log lift of user-level CTR (delta method); {interval}",
        "checked": bool(res.ctr_checked[0]),
        "skipped": skipped,
        "log_lift": _num(theta),
        "variance": _num(var),
        "lower": _num(lower),
        "upper": _num(upper),
        "relative_lift": _rel(theta),
        "relative_lower": _rel(lower),
        "relative_upper": _rel(upper),
        "margin": plan.margin,
        "log_margin": log_margin,
        "p_value_at_margin": None if p_margin is None else _num(p_margin),
        "tau": plan.tau,
        "alpha": plan.alpha_split.ctr,
    }


def _alpha_evidence(plan: RolloutPlan, stage_index: int) -> dict[str, Any]:
    return {
        "rollout": plan.alpha,
        "ctr": plan.alpha_split.ctr,
        "errors": plan.alpha_split.errors,
        "latency_p95": plan.alpha_split.latency / 2.0,
        "latency_p99": plan.alpha_split.latency / 2.0,
        "srm_per_stage": plan.stage_alpha_srm(),
        "srm_spent_through_stage": plan.stage_alpha_srm() * (stage_index + 1),
    }


def _evidence(
    plan: RolloutPlan,
    res: GateResults,
    inputs: GateInputs,
    clock: tuple[float, float],
    ctr_interval: CtrInterval,
    prove_from_stage: int,
) -> dict[str, Any]:
    """The statistics of every gate at this look (row 0 of ``res``), JSON-safe."""
    i = int(res.stage[0])
    stage = plan.stages[i]
    last = len(plan.stages) - 1
    skipped = None if res.enough[0] else f"fewer than {GATE_MIN_USERS} users or no clicks in an arm"
    stage_users = [int(x) for x in inputs.stage_users]
    return {
        "gate": GATES[int(res.gate[0])],
        "action": ACTIONS[int(res.action[0])],
        "stage": {
            "index": i,
            "of": len(plan.stages),
            "weight_pct": stage.weight_pct,
            "elapsed_s": float(clock[0]),
            "min_duration_s": stage.min_duration_s,
            "canary_users": int(inputs.stage_canary_users),
            "min_samples": stage.min_samples,
            "last": i == last,
            "requires_noninferiority": i >= min(prove_from_stage, last),
        },
        "elapsed_s": float(clock[1]),
        "deadline_s": plan.deadline_s,
        "samples": {
            "canary": _arm_samples(inputs.canary),
            "production": _arm_samples(inputs.production),
            "stage_users": {"canary": stage_users[0], "production_logged": stage_users[1]},
        },
        "srm": _srm_evidence(plan, res, stage_users),
        "errors": _errors_evidence(plan, res, skipped),
        "latency": _latency_evidence(plan, res, skipped),
        "ctr": _ctr_evidence(plan, res, skipped, ctr_interval),
        "alpha": _alpha_evidence(plan, i),
    }


def _reason(plan: RolloutPlan, res: GateResults, evidence: dict[str, Any]) -> str:
    """One line saying why (row 0 of ``res``)."""
    gate = GATES[int(res.gate[0])]
    stage = evidence["stage"]
    where = f"stage {stage['index'] + 1}/{stage['of']} ({stage['weight_pct']:g} %)"
    ctr = evidence["ctr"]
    if gate == "srm":
        srm = evidence["srm"]
        return (
            f"halt: sample-ratio mismatch at {where}: Bayes factor ≥ {srm['threshold']:.4g} "
            f"(log BF {srm['log_bayes_factor']:.2f}); canary share of the stage's users "
            f"{srm['observed_canary_share']:.4f}, expected {srm['expected_canary_share']:.4f}"
        )
    if gate == "errors":
        err = evidence["errors"]
        return (
            f"rollback: error rate surely up by ≥ {err['lower']:.4%} "
            f"(estimate {err['difference']:.4%}) > {err['margin']:.4%} allowed"
        )
    if gate in ("latency_p95", "latency_p99"):
        name = gate[-3:]
        lat = evidence["latency"][name]
        return (
            f"rollback: ≥ {lat['lower']:.2%} of canary requests surely slower than "
            f"{lat['ratio']:g} × production {name} ({lat['threshold_ms']:.4g} ms) "
            f"> {lat['nominal_share']:.0%} allowed"
        )
    lift = f"[{_pct(ctr['relative_lower'])}, {_pct(ctr['relative_upper'])}]"
    if gate == "ctr":
        return (
            f"rollback: CTR lift surely ≤ {_pct(ctr['relative_upper'])} "
            f"(estimate {_pct(ctr['relative_lift'])}) < -{plan.margin:.1%} margin"
        )
    if gate == "deadline":
        return (
            f"rollback: deadline {plan.deadline_s / 3600:g} h reached at {where} without "
            f"completing (CTR lift in {lift})"
        )
    if gate == "promote":
        verb = "complete" if stage["last"] else "promote"
        proof = (
            f"CTR lift surely ≥ {_pct(ctr['relative_lower'])} > -{plan.margin:.1%}"
            if res.proven[0]
            else f"no gate fired; non-inferiority not required at this stage (CTR lift in {lift})"
        )
        held = stage["elapsed_s"] / 3600
        return (
            f"{verb}: {where} held {held:.1f} h with {stage['canary_users']} canary users; {proof}"
        )
    return "continue: " + "; ".join(_waiting(res, evidence))


def _waiting(res: GateResults, evidence: dict[str, Any]) -> list[str]:
    stage = evidence["stage"]
    parts = []
    if not res.enough[0]:
        parts.append(f"gates wait for {GATE_MIN_USERS} users with clicks in each arm")
    if not res.min_duration_met[0]:
        parts.append(
            f"stage held {stage['elapsed_s'] / 3600:.1f} h of {stage['min_duration_s'] / 3600:g} h"
        )
    if not res.min_samples_met[0]:
        parts.append(f"{stage['canary_users']} of {stage['min_samples']} canary users")
    if res.enough[0] and stage["requires_noninferiority"] and not res.proven[0]:
        ctr = evidence["ctr"]
        parts.append(f"CTR lift ≥ {_pct(ctr['relative_lower'])} not yet above -{ctr['margin']:.1%}")
    return parts or ["no decision yet"]


def evaluate(
    plan: RolloutPlan,
    stage_index: int,
    stage_elapsed_s: float,
    elapsed_s: float,
    inputs: GateInputs,
    *,
    ctr_interval: CtrInterval = "msprt",
    prove_from_stage: int | None = None,
) -> Decision:
    """The next step of one rollout; see the module docstring for the checks and their order.

    Args:
        plan: the validated plan.
        stage_index: current stage (0-based index into ``plan.stages``).
        stage_elapsed_s: seconds since the current stage began.
        elapsed_s: seconds since the rollout began (vs ``plan.deadline_s``).
        inputs: cumulative mature statistics of both arms and the current stage's user counts.
        ctr_interval, prove_from_stage: see :func:`evaluate_many` (defaults: the plan's rule).
    """
    if not 0 <= stage_index < len(plan.stages):
        raise ValueError(
            f"stage_index: {stage_index} is not a stage of a {len(plan.stages)}-stage plan"
        )
    if prove_from_stage is None:
        prove_from_stage = plan.prove_from_stage
    res = evaluate_many(
        plan,
        stage_index,
        stage_elapsed_s,
        elapsed_s,
        ArmArrays.from_stats([inputs.canary]),
        ArmArrays.from_stats([inputs.production]),
        [inputs.stage_users],
        inputs.stage_canary_users,
        ctr_interval=ctr_interval,
        prove_from_stage=prove_from_stage,
    )
    clock = (stage_elapsed_s, elapsed_s)
    evidence = _evidence(plan, res, inputs, clock, ctr_interval, prove_from_stage)
    return Decision(
        action=ACTIONS[int(res.action[0])], reason=_reason(plan, res, evidence), evidence=evidence
    )
