"""Offline harness: canary rollouts simulated many at once, judged by the gates the controller runs.

    python benchmarks/rollout_sim.py [--runs 1000] [--seed 0] [--quick] [--users 200000]
        [--variant plan] [--variant prove_from=3,log_sample=1,tau=0.05] [--candidates bad,equal]
        [--no-peeking]

Every look of every run is decided by ``rayml.rollout.gates.evaluate_many`` (the function
``evaluate`` calls), and a sample of looks is re-decided by ``evaluate`` itself
(``scalar_checks``/``scalar_mismatches`` in the output).

Simulation model (also printed as the first JSON line):

- **Plan**: ``configs/rollout/production.yaml`` (stages 1/5/25/100 % for at least 3, 4, 7 and 1
  days, an 18-day deadline), looks every ``--look-s`` (1 h) of simulated time; at a look the gates see impressions
  older than the attribution window (30 min) with all their clicks. A promotion takes effect at the
  look that decides it.
- **Traffic**: 1,000 requests/s, 10 items a response, from ``--users`` users (200,000) whose request
  rates are Gamma(shape ``--visit-shape`` = 1) around 1,000/users per second (432 requests/user/day)
  and whose click propensities are Beta with mean 0.05 and concentration ``--ctr-concentration``
  (20, i.e. Beta(1, 19)): a user's propensity persists over visits, so users are clusters and repeat
  visits matter.
- **Assignment**: users are grouped at random into blocks of 100 (the simulation's unit of
  assignment); a run ranks the blocks at random (the stable user hash): the first 1 % are canary
  from the start, the next 4 % join at the 5 % stage and so on (monotone); a random
  ``production_log_sample`` of blocks is production-logged. A logged user who moves to the canary
  keeps its production data (frozen at the move) and starts a canary record. Counts are Poisson per
  user per look interval; clicks Binomial(impressions, propensity × lift).
- **World reuse** (for speed): each user's production and canary trajectories are simulated once per
  candidate lift (independently of each other) and shared by the runs, which differ by their random
  assignment, the error/latency draws and the SRM counts; runs are independent given the world (a
  design-based simulation of one population of ``--users`` users). A canary record that starts at
  time T reuses the user's canary trajectory from time 0 (the model is stationary: no time-of-day
  effect).
- **Errors** 0.2 % of requests and **latency** lognormal (median 25 ms, σ 0.4) in both arms, drawn
  per run (Poisson counts per latency bucket). **SRM** inputs: the distinct users of the stage's
  sets seen so far (expected count) split by the hash shares (no mismatch simulated).
- **Candidates**: bad (CTR × 0.80, per-run jitter: one of 0.78/0.80/0.82), slightly_bad (× 0.95),
  at_margin (× 0.98 = exactly δ worse), equal (A/A), good (× 1.05); same latency and errors for all.
- **Peeking**: the same runs judged with the CTR interval replaced by a plain 95 % interval at every
  look.
- **Variants** (``--variant``, repeatable; one world serves all): ``plan`` as configured and
  ``prove_from=2,log_sample=1,tau=0.03`` (the changes ``docs/rollout-statistics.md`` recommends) by
  default; keys ``prove_from`` (``gates.evaluate(prove_from_stage=...)``), ``log_sample``, ``tau``,
  ``alpha_ctr``, ``margin``, ``min_hours``.

Output: one JSON line describing the model, one per (variant, interval, candidate), and a summary
with every target (met or not). Results and runtime: ``docs/rollout-statistics.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy.stats import norm

from rayml.config.base import load_config
from rayml.rollout import gates
from rayml.rollout import sequential as sq
from rayml.rollout.gates import ArmArrays, ArmStats, GateInputs
from rayml.rollout.plan import RolloutPlan

CANDIDATES: dict[str, tuple[float, tuple[float, ...]]] = {  # name: (lift, per-run jitter choices)
    "bad": (0.80, (-0.02, 0.0, 0.02)),
    "slightly_bad": (0.95, (0.0,)),
    "at_margin": (0.98, (0.0,)),
    "equal": (1.00, (0.0,)),
    "good": (1.05, (0.0,)),
}
RECOMMENDED = (
    "prove_from=2,log_sample=1,tau=0.03"  # the plan changes docs/rollout-statistics.md argues
)
DEFAULT_VARIANTS = ("plan", RECOMMENDED)
TARGET_ERROR = 0.065  # safety error (at_margin completes) and false rollback (equal) at most this
TARGET_MOST = 0.8  # "most runs" of good/equal complete before the deadline
TARGET_ALL = 0.95  # "~all runs" of bad rolled back during the 1 % or 5 % stage


@dataclass(frozen=True)
class Model:
    """The simulated service and population (see the module docstring)."""

    users: int = 200_000
    block_users: int = 100
    requests_per_s: float = 1000.0
    items_per_request: int = 10
    visit_shape: float = 1.0
    ctr_mean: float = 0.05
    ctr_concentration: float = 20.0
    look_s: float = 3600.0
    error_rate: float = 0.002
    latency_median_ms: float = 25.0
    latency_sigma: float = 0.4

    @property
    def blocks(self) -> int:
        return self.users // self.block_users


# --------------------------------------------------------------------------------------------------
# The world: per-block trajectories of the six per-user sums, at each look's mature-data horizon
# --------------------------------------------------------------------------------------------------


@dataclass
class World:
    """Per-block trajectories of the six per-user sums at each look's mature-data horizon.

    ``a``: production records ``(blocks, looks+1, 6)``; ``b[lift]``: canary records; ``seen``: share
    of users with a request within each horizon; ``unit_var``: per-user variance of log CTR after
    one day (``k·Var`` of one arm's estimate).
    """

    horizons_s: NDArray[np.float64]
    a: NDArray[np.float64]
    b: dict[float, NDArray[np.float64]]
    seen: NDArray[np.float64]
    unit_var: float
    build_s: float


def _block_sums(
    impressions: NDArray[np.int64], clicks: NDArray[np.int64], block_users: int
) -> NDArray[np.float64]:
    """Per-block sums of the six statistics at each horizon, from per-user increments.

    ``impressions``/``clicks``: ``(users, looks)`` counts per look interval, users in block order.
    """
    n = np.cumsum(impressions, axis=1)
    c = np.cumsum(clicks, axis=1)
    users, looks = n.shape
    blocks = users // block_users
    out = np.zeros((blocks, looks + 1, 6))
    for i, values in enumerate((n > 0, c, n, c * c, n * n, c * n)):
        out[:, 1:, i] = values.reshape(blocks, block_users, looks).sum(axis=1)
    return out


def population(model: Model, max_lift: float, rng: np.random.Generator) -> tuple[NDArray[Any], ...]:
    """Per user: request rate (req/s, Gamma) and click propensity (Beta, capped so ×lift ≤ 0.99)."""
    shape = model.visit_shape
    rate = rng.gamma(shape, model.requests_per_s / model.users / shape, model.users)
    a = model.ctr_mean * model.ctr_concentration
    b = (1.0 - model.ctr_mean) * model.ctr_concentration
    return rate, np.minimum(rng.beta(a, b, model.users), 0.99 / max_lift)


def build_world(
    model: Model, plan: RolloutPlan, looks: int, lifts: list[float], rng: np.random.Generator
) -> World:
    """Simulate every user's production and canary (per lift) trajectories once, summed per block.

    Each user has two independent records: production (clicks at the base propensity) and canary
    (clicks at propensity × lift; the lifts are coupled, each lower one thinning the clicks of the
    one above, so candidates differ only by their lift).
    """
    started = time.perf_counter()
    lifts = sorted(set(lifts), reverse=True)
    rate, prop = population(model, lifts[0], rng)
    horizons = np.maximum(np.arange(looks + 1) * model.look_s - plan.attribution_window_s, 0.0)
    steps = np.diff(horizons)
    a = np.zeros((model.blocks, looks + 1, 6))
    b = {lift: np.zeros((model.blocks, looks + 1, 6)) for lift in lifts}
    chunk = max(1, 4000 // model.block_users)  # blocks simulated at once
    for first in range(0, model.blocks, chunk):
        last = min(first + chunk, model.blocks)
        users = slice(first * model.block_users, last * model.block_users)
        mean, p = rate[users, None] * steps[None, :], prop[users, None]
        imp = rng.poisson(mean) * model.items_per_request
        a[first:last] = _block_sums(imp, rng.binomial(imp, p), model.block_users)
        imp = rng.poisson(mean) * model.items_per_request
        clicks = rng.binomial(imp, p * lifts[0])
        previous = lifts[0]
        for lift in lifts:
            if lift != previous:
                clicks = rng.binomial(clicks, lift / previous)
                previous = lift
            b[lift][first:last] = _block_sums(imp, clicks, model.block_users)
    day = min(looks, round(86_400 / model.look_s))
    _, var = sq.ratio_log_variance(*a[:, day].sum(axis=0))
    unit_var = float(var * a[:, day, 0].sum())
    seen = _seen_share(horizons, rate)
    return World(horizons, a, b, seen, unit_var, time.perf_counter() - started)


def _seen_share(horizons: NDArray[np.float64], lam: NDArray[np.float64]) -> NDArray[np.float64]:
    """Share of users with ≥ 1 request within each horizon (chunked ``1 − mean exp(−λ h)``)."""
    out = np.zeros(len(horizons))
    for first in range(0, len(lam), 50_000):
        out += np.exp(-np.outer(horizons, lam[first : first + 50_000])).sum(axis=1)
    return 1.0 - out / len(lam)


def latency_probs(model: Model) -> tuple[NDArray[np.intp], NDArray[np.float64]]:
    """Buckets with probability > 1e-12 under the lognormal latency, and their probabilities."""
    lower = np.log(np.concatenate([[1e-300], sq.LATENCY_EDGES_MS]))
    upper = np.log(np.concatenate([sq.LATENCY_EDGES_MS, [np.inf]]))
    mu = math.log(model.latency_median_ms)
    probs = norm.cdf((upper - mu) / model.latency_sigma) - norm.cdf(
        (lower - mu) / model.latency_sigma
    )
    support = np.flatnonzero(probs > 1e-12)
    return support, probs[support]


# --------------------------------------------------------------------------------------------------
# Runs: random assignments of the world's blocks, then the stage machine
# --------------------------------------------------------------------------------------------------


@dataclass
class Assignment:
    """Per run (rows): the stage at which each block joins the canary, its log rank, the lift."""

    stage_of_block: NDArray[np.intp]
    log_rank: NDArray[np.intp]
    lift: NDArray[np.float64]


def assign(
    model: Model,
    plan: RolloutPlan,
    runs: int,
    lift: float,
    jitter: tuple[float, ...],
    rng: np.random.Generator,
) -> Assignment:
    """Random stable buckets: a uniformly random order of the blocks per run (monotone stages)."""
    weights = np.array([s.weight_pct for s in plan.stages]) / 100.0
    cuts = np.round(weights * model.blocks).astype(int)
    rank = np.argsort(rng.random((runs, model.blocks)), axis=1).argsort(axis=1)
    stage_of_block = np.searchsorted(cuts, rank, side="right")
    log_rank = np.argsort(rng.random((runs, model.blocks)), axis=1).argsort(axis=1)
    lifts = np.round(lift + rng.choice(np.array(jitter), runs), 6)
    return Assignment(stage_of_block, log_rank, lifts)


def arm_trajectories(
    model: Model, plan: RolloutPlan, world: World, asg: Assignment
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """``(canary, production)`` sums per run and stage block: ``(runs, stages, looks+1, 6)``.

    Canary block s is its users' canary trajectories (from their own start); production block s is
    its logged users' production trajectories (used until block s moves to the canary, then frozen).
    """
    runs, stages = asg.stage_of_block.shape[0], len(plan.stages)
    flat = world.a.shape[1] * 6
    logged = asg.log_rank < round(plan.production_log_sample * model.blocks)
    canary = np.zeros((runs, stages, flat))
    production = np.zeros((runs, stages, flat))
    a = world.a.reshape(model.blocks, flat)
    for lift in np.unique(asg.lift):
        rows = np.flatnonzero(asg.lift == lift)
        b = world.b[float(lift)].reshape(model.blocks, flat)
        for s in range(stages):
            member = (asg.stage_of_block[rows] == s).astype(np.float64)
            canary[rows, s] = member @ b
            if s > 0:
                production[rows, s] = (member * logged[rows]) @ a
    shape = (runs, stages, world.a.shape[1], 6)
    return canary.reshape(shape), production.reshape(shape)


@dataclass
class Outcomes:
    """Per run: final action and gate, look and stage of the decision, stage starts, samples."""

    action: NDArray[np.int8]
    gate: NDArray[np.int8]
    look: NDArray[np.intp]
    stage: NDArray[np.intp]
    stage_start: NDArray[np.intp]
    canary_users: NDArray[np.float64]
    canary_impressions: NDArray[np.float64]
    production_users: NDArray[np.float64]
    production_impressions: NDArray[np.float64]
    scalar_checks: int
    scalar_mismatches: int


def _arm(
    sums: NDArray[np.float64], errors: NDArray[np.float64], hist: NDArray[np.float64], items: int
) -> ArmArrays:
    users, clicks, impressions, clicks_sq, impressions_sq, clicks_impressions = sums.T
    return ArmArrays(
        users,
        clicks,
        impressions,
        clicks_sq,
        impressions_sq,
        clicks_impressions,
        requests=impressions / items,
        errors=errors,
        latency_hist=hist,
    )


def _scalar(arm: ArmArrays, i: int) -> ArmStats:
    return ArmStats(
        users=int(arm.users[i]),
        clicks=float(arm.clicks[i]),
        impressions=float(arm.impressions[i]),
        clicks_sq=float(arm.clicks_sq[i]),
        impressions_sq=float(arm.impressions_sq[i]),
        clicks_impressions=float(arm.clicks_impressions[i]),
        requests=round(float(arm.requests[i])),
        errors=int(arm.errors[i]),
        latency_hist=tuple(int(x) for x in arm.latency_hist[i]),
    )


class Machine:
    """The stage machine of many runs; every look is decided by ``gates.evaluate_many``."""

    def __init__(
        self,
        model: Model,
        plan: RolloutPlan,
        world: World,
        canary: NDArray[np.float64],
        production: NDArray[np.float64],
        rng: np.random.Generator,
        ctr_interval: gates.CtrInterval,
        prove_from: int,
    ) -> None:
        self.model, self.plan, self.world = model, plan, world
        self.canary, self.production, self.rng = canary, production, rng
        self.ctr_interval, self.prove_from = ctr_interval, prove_from
        runs, stages = canary.shape[0], canary.shape[1]
        self.stage = np.zeros(runs, dtype=np.intp)
        self.start = np.full((runs, stages), -1, dtype=np.intp)
        self.start[:, 0] = 0
        self.support, self.probs = latency_probs(model)
        self.hist = np.zeros((2, runs, sq.LATENCY_BUCKETS))
        self.errors = np.zeros((2, runs))
        self.requests = np.zeros((2, runs))
        self.srm = np.zeros((runs, 2))
        self.weights = np.array([s.weight_pct / 100.0 for s in plan.stages])
        canary_share = self.weights
        logged_share = (1.0 - self.weights) * plan.production_log_sample
        self.set_users = (canary_share + logged_share) * model.users
        self.expected = canary_share / (canary_share + logged_share)

    def sums(
        self, idx: NDArray[np.intp], look: int
    ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Both arms' six sums at ``look`` for runs ``idx``."""
        stage = self.stage[idx]
        can = np.zeros((len(idx), 6))
        prod = np.zeros((len(idx), 6))
        for s in range(self.canary.shape[1]):
            joined = stage >= s
            rows = idx[joined]
            can[joined] += self.canary[rows, s, look - self.start[rows, s]]
            if s > 0:
                frozen_at = np.where(joined, self.start[idx, s], look)
                prod += self.production[idx, s, frozen_at]
        return can, prod

    def draw_guardrail_data(self, idx: NDArray[np.intp], requests: NDArray[np.float64]) -> None:
        """Errors and latency of each arm's new requests (``requests``: cumulative, (2, runs))."""
        new = np.maximum(requests - self.requests[:, idx], 0.0)
        self.requests[:, idx] = requests
        self.errors[:, idx] += self.rng.binomial(
            np.round(new).astype(np.int64), self.model.error_rate
        )
        for arm in range(2):
            self.hist[arm][np.ix_(idx, self.support)] += self._poisson(
                new[arm][:, None] * self.probs[None, :]
            )

    def _poisson(self, lam: NDArray[np.float64]) -> NDArray[np.float64]:
        """Poisson counts; above a mean of 50 the rounded normal approximation (faster)."""
        out = np.empty_like(lam)
        big = lam > 50.0
        out[~big] = self.rng.poisson(lam[~big])
        mean = lam[big]
        out[big] = np.maximum(
            np.round(mean + np.sqrt(mean) * self.rng.standard_normal(mean.shape)), 0.0
        )
        return out

    def draw_stage_users(self, idx: NDArray[np.intp], look: int) -> None:
        """Distinct users seen this stage (expected count), split between the arms by hash share."""
        stage = self.stage[idx]
        target = np.floor(self.set_users[stage] * self.world.seen[look - self.start[idx, stage]])
        new = np.maximum(target - self.srm[idx].sum(axis=1), 0).astype(np.int64)
        to_canary = self.rng.binomial(new, self.expected[stage])
        self.srm[idx, 0] += to_canary
        self.srm[idx, 1] += new - to_canary

    def run(self, looks: int, check_every: int) -> Outcomes:
        runs = self.canary.shape[0]
        items, look_s = self.model.items_per_request, self.model.look_s
        action = np.full(runs, -1, dtype=np.int8)
        gate = np.zeros(runs, dtype=np.int8)
        at_look = np.zeros(runs, dtype=np.intp)
        samples = np.zeros((runs, 4))
        checks = mismatches = 0
        for look in range(1, looks + 1):
            idx = np.flatnonzero(action < 0)
            if idx.size == 0:
                break
            can, prod = self.sums(idx, look)
            self.draw_guardrail_data(idx, np.stack([can[:, 2], prod[:, 2]]) / items)
            self.draw_stage_users(idx, look)
            stage = self.stage[idx]
            stage_elapsed = (look - self.start[idx, stage]) * look_s
            canary = _arm(can, self.errors[0, idx], self.hist[0, idx], items)
            production = _arm(prod, self.errors[1, idx], self.hist[1, idx], items)
            res = gates.evaluate_many(
                self.plan,
                stage,
                stage_elapsed,
                look * look_s,
                canary,
                production,
                self.srm[idx],
                self.srm[idx, 0],
                ctr_interval=self.ctr_interval,
                prove_from_stage=self.prove_from,
            )
            if check_every and look % check_every == 0:
                checks += 1
                mismatches += self._check_scalar(
                    res,
                    look % len(idx),
                    stage,
                    stage_elapsed,
                    look * look_s,
                    canary,
                    production,
                    self.srm[idx],
                )
            self._apply(res, idx, look, action, gate, at_look, samples, can, prod)
        return Outcomes(
            action,
            gate,
            at_look,
            self.stage.copy(),
            self.start.copy(),
            samples[:, 0],
            samples[:, 1],
            samples[:, 2],
            samples[:, 3],
            checks,
            mismatches,
        )

    def _check_scalar(
        self,
        res: gates.GateResults,
        i: int,
        stage: NDArray[np.intp],
        stage_elapsed: NDArray[Any],
        elapsed: float,
        canary: ArmArrays,
        production: ArmArrays,
        srm: NDArray[np.float64],
    ) -> int:
        """Re-decide row ``i`` with ``gates.evaluate`` (the controller's call): 1 if it differs."""
        inputs = GateInputs(
            _scalar(canary, i),
            _scalar(production, i),
            (int(srm[i, 0]), int(srm[i, 1])),
            int(srm[i, 0]),
        )
        decision = gates.evaluate(
            self.plan,
            int(stage[i]),
            float(stage_elapsed[i]),
            elapsed,
            inputs,
            ctr_interval=self.ctr_interval,
            prove_from_stage=self.prove_from,
        )
        json.dumps(decision.evidence, allow_nan=False)
        return int(decision.action != gates.ACTIONS[int(res.action[i])])

    def _apply(
        self,
        res: gates.GateResults,
        idx: NDArray[np.intp],
        look: int,
        action: NDArray[np.int8],
        gate: NDArray[np.int8],
        at_look: NDArray[np.intp],
        samples: NDArray[np.float64],
        can: NDArray[np.float64],
        prod: NDArray[np.float64],
    ) -> None:
        promoted = idx[res.action == gates.PROMOTE]
        self.stage[promoted] += 1
        self.start[promoted, self.stage[promoted]] = look
        self.srm[promoted] = 0
        final = np.isin(res.action, (gates.COMPLETE, gates.ROLLBACK, gates.HALT))
        rows = idx[final]
        action[rows] = res.action[final]
        gate[rows] = res.gate[final]
        at_look[rows] = look
        samples[rows] = np.stack(
            [can[final, 0], can[final, 2], prod[final, 0], prod[final, 2]], axis=1
        )


# --------------------------------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------------------------------


def _share(mask: NDArray[np.bool_]) -> float:
    return round(float(mask.mean()), 4) if mask.size else math.nan


def _quantiles(values: NDArray[Any]) -> dict[str, float] | None:
    if values.size == 0:
        return None
    q = np.quantile(values, [0.1, 0.5, 0.9])
    return {
        "p10": round(float(q[0]), 1),
        "median": round(float(q[1]), 1),
        "p90": round(float(q[2]), 1),
    }


def summarize(
    name: str,
    lift: float,
    jitter: tuple[float, ...],
    plan: RolloutPlan,
    model: Model,
    world: World,
    out: Outcomes,
    variant: str,
    ctr_interval: str,
) -> dict[str, Any]:
    """One JSON line: outcome shares, where and when rollbacks happened, stage times, samples."""
    runs = len(out.action)
    weights = [s.weight_pct for s in plan.stages]
    rollback = out.action == gates.ROLLBACK
    by_gate = {
        gates.GATES[g]: _share(rollback & (out.gate == g)) for g in np.unique(out.gate[rollback])
    }
    stage_hours: dict[str, Any] = {}
    for s in range(len(weights)):
        left = (
            out.stage_start[:, s + 1]
            if s + 1 < len(weights)
            else np.where(out.action == gates.COMPLETE, out.look, -1)
        )
        held = (left >= 0) & (out.stage_start[:, s] >= 0)
        stage_hours[f"{weights[s]:g}%"] = _quantiles(
            (left[held] - out.stage_start[held, s]) * model.look_s / 3600
        )
    decided = out.action >= 0
    effect = abs(math.log(lift) - math.log(1.0 - plan.margin))
    return {
        "bench": "rollout_sim",
        "variant": variant,
        "ctr_interval": ctr_interval,
        "candidate": name,
        "lift": lift,
        "jitter": list(jitter),
        "runs": runs,
        "complete": _share(out.action == gates.COMPLETE),
        "promoted_at_least_once": _share(out.stage_start[:, 1] >= 0),
        "rollback": _share(rollback),
        "halt": _share(out.action == gates.HALT),
        "rollback_by_gate": by_gate,
        "rollback_by_a_gate": _share(rollback & (out.gate != gates.G_DEADLINE)),
        "rollback_at_stage": {
            f"{w:g}%": _share(rollback & (out.stage == s)) for s, w in enumerate(weights)
        },
        "rollback_at_stage_by_gate": {
            f"{w:g}%": _share(rollback & (out.stage == s) & (out.gate != gates.G_DEADLINE))
            for s, w in enumerate(weights)
        },
        "hours_to_decision": _quantiles(out.look[decided] * model.look_s / 3600),
        "hours_to_gate_rollback": _quantiles(
            out.look[rollback & (out.gate != gates.G_DEADLINE)] * model.look_s / 3600
        ),
        "stage_hours_when_promoted": stage_hours,
        "at_decision": {
            "canary_users": _quantiles(out.canary_users[decided]),
            "canary_impressions": _quantiles(out.canary_impressions[decided]),
            "production_users": _quantiles(out.production_users[decided]),
            "production_impressions": _quantiles(out.production_impressions[decided]),
        },
        "fixed_horizon_users_per_arm": _round_or_none(
            sq.fixed_horizon_users_per_arm(effect, world.unit_var, plan.alpha_split.ctr, 0.8)
        ),
        "fixed_horizon_effect_log": round(effect, 5),
        "scalar_checks": out.scalar_checks,
        "scalar_mismatches": out.scalar_mismatches,
    }


def _round_or_none(x: float) -> int | None:
    return None if not math.isfinite(x) else math.ceil(x)


def targets(lines: dict[tuple[str, str, str], dict[str, Any]], variant: str) -> dict[str, Any]:
    """The brief's targets for one variant, each with its figure and met/not met."""

    def get(name: str, interval: str = "msprt") -> dict[str, Any] | None:
        return lines.get((variant, interval, name))

    out: dict[str, Any] = {}

    def early(line: dict[str, Any], stages: tuple[str, ...]) -> float:
        return round(sum(line["rollback_at_stage"][s] for s in stages), 4)

    def early_gate(line: dict[str, Any], stages: tuple[str, ...]) -> float:
        return round(sum(line["rollback_at_stage_by_gate"][s] for s in stages), 4)

    if (bad := get("bad")) is not None:
        out["bad_rolled_back_at_1_or_5pct"] = {
            "value": early(bad, ("1%", "5%")),
            "by_a_gate": early_gate(bad, ("1%", "5%")),
            "target": f"≥ {TARGET_ALL}",
            "met": early_gate(bad, ("1%", "5%")) >= TARGET_ALL,
        }
    if (slight := get("slightly_bad")) is not None:
        out["slightly_bad_rolled_back_before_25pct"] = {
            "value": early(slight, ("1%", "5%")),
            "by_a_gate": early_gate(slight, ("1%", "5%")),
            "target": f"≥ {TARGET_ALL}",
            "met": early_gate(slight, ("1%", "5%")) >= TARGET_ALL,
        }
    if (margin := get("at_margin")) is not None:
        out["at_margin_safety_error"] = {
            "value": margin["complete"],
            "target": f"≤ {TARGET_ERROR}",
            "met": margin["complete"] <= TARGET_ERROR,
            "runs": margin["runs"],
        }
    if (equal := get("equal")) is not None:
        out["equal_false_rollback"] = {
            "value": equal["rollback_by_a_gate"],
            "any_rollback": equal["rollback"],
            "target": f"≤ {TARGET_ERROR}",
            "met": equal["rollback_by_a_gate"] <= TARGET_ERROR,
            "runs": equal["runs"],
        }
    for name in ("good", "equal"):
        if (line := get(name)) is not None:
            out[f"{name}_completes"] = {
                "value": line["complete"],
                "target": f"≥ {TARGET_MOST}",
                "met": line["complete"] >= TARGET_MOST,
                "stage_hours": line["stage_hours_when_promoted"],
            }
    naive_margin, naive_equal = get("at_margin", "naive95"), get("equal", "naive95")
    if naive_margin is not None and margin is not None:
        out["peeking_at_margin_safety_error"] = {
            "naive95": naive_margin["complete"],
            "msprt": margin["complete"],
            "inflation_vs_nominal_0.025": round(naive_margin["complete"] / 0.025, 2),
        }
    if naive_equal is not None and equal is not None:
        out["peeking_equal_false_rollback"] = {
            "naive95": naive_equal["rollback_by_a_gate"],
            "msprt": equal["rollback_by_a_gate"],
            "inflation_vs_nominal_0.025": round(naive_equal["rollback_by_a_gate"] / 0.025, 2),
        }
    return out


# --------------------------------------------------------------------------------------------------
# Variants and CLI
# --------------------------------------------------------------------------------------------------


def apply_variant(plan: RolloutPlan, spec: str) -> tuple[RolloutPlan, int]:
    """``plan`` with a variant's overrides, and its ``prove_from_stage``.

    ``spec`` is ``plan`` or ``key=value,...`` with keys ``prove_from`` (int), ``log_sample``,
    ``tau``, ``alpha_ctr`` (the rollout α follows), ``margin``, ``min_hours`` (every stage's minimum
    duration).
    """
    if spec == "plan":
        return plan, plan.prove_from_stage
    data = plan.model_dump()
    prove_from = plan.prove_from_stage
    for item in spec.split(","):
        key, _, value = item.partition("=")
        if key == "prove_from":
            prove_from = int(value)
        elif key == "log_sample":
            data["production_log_sample"] = float(value)
        elif key == "tau":
            data["mixture_scale"] = float(value)
        elif key == "alpha_ctr":
            data["alpha_split"]["ctr"] = float(value)
            data["alpha"] = sum(data["alpha_split"].values())
        elif key == "margin":
            data["margin"] = float(value)
        elif key == "min_hours":
            for stage in data["stages"]:
                stage["min_duration_s"] = float(value) * 3600
        else:
            raise SystemExit(f"--variant: unknown key {key!r} in {spec!r}")
    return RolloutPlan.model_validate(data), prove_from


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=1000, help="runs per candidate")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: bad and equal, 40 runs, the plan only, 1-day deadline",
    )
    parser.add_argument(
        "--plan",
        default=str(Path(__file__).resolve().parent.parent / "configs/rollout/production.yaml"),
    )
    parser.add_argument("--users", type=int, default=Model.users)
    parser.add_argument("--visit-shape", type=float, default=Model.visit_shape)
    parser.add_argument("--ctr-concentration", type=float, default=Model.ctr_concentration)
    parser.add_argument("--look-s", type=float, default=Model.look_s)
    parser.add_argument("--candidates", default=",".join(CANDIDATES))
    parser.add_argument(
        "--variant",
        action="append",
        help=f"plan or overrides, e.g. {RECOMMENDED} (repeatable; default: {DEFAULT_VARIANTS})",
    )
    parser.add_argument(
        "--no-peeking", action="store_true", help="skip the naive 95 %% interval comparison"
    )
    args = parser.parse_args(argv)
    started = time.perf_counter()
    base = load_config(args.plan, RolloutPlan)
    names = args.candidates.split(",")
    runs = args.runs
    if args.quick:
        names = [n for n in names if n in ("bad", "equal")]
        runs = min(runs, 40)
        base = RolloutPlan.model_validate({**base.model_dump(), "deadline_s": 86_400.0})
    model = Model(
        users=args.users,
        visit_shape=args.visit_shape,
        ctr_concentration=args.ctr_concentration,
        look_s=args.look_s,
    )
    specs = args.variant or (["plan"] if args.quick else list(DEFAULT_VARIANTS))
    variants = [(spec, *apply_variant(base, spec)) for spec in specs]
    looks = math.ceil(max(v[1].deadline_s for v in variants) / model.look_s)
    lifts = sorted({round(CANDIDATES[n][0] + j, 6) for n in names for j in CANDIDATES[n][1]})
    world = build_world(model, base, looks, lifts, np.random.default_rng([args.seed, 0]))
    print(
        json.dumps(
            {
                "bench": "rollout_sim",
                "model": asdict(model),
                "looks": looks,
                "runs": runs,
                "variants": [v[0] for v in variants],
                "candidates": names,
                "unit_var_log_ctr_1day": round(world.unit_var, 4),
                "world_build_s": round(world.build_s, 1),
                "plan": base.model_dump(),
            }
        ),
        flush=True,
    )
    lines: dict[tuple[str, str, str], dict[str, Any]] = {}
    intervals: list[gates.CtrInterval] = ["msprt"] if args.no_peeking else ["msprt", "naive95"]
    for ci, name in enumerate(names):
        lift, jitter = CANDIDATES[name]
        asg = assign(model, base, runs, lift, jitter, np.random.default_rng([args.seed, 1, ci]))
        for spec, plan, prove_from in variants:
            canary, production = arm_trajectories(model, plan, world, asg)
            for interval in intervals:
                machine = Machine(
                    model,
                    plan,
                    world,
                    canary,
                    production,
                    np.random.default_rng([args.seed, 2, ci]),
                    interval,
                    prove_from,
                )
                out = machine.run(looks, check_every=1 if args.quick else 24)
                line = summarize(name, lift, jitter, plan, model, world, out, spec, interval)
                lines[(spec, interval, name)] = line
                print(json.dumps(line), flush=True)
    summary = {
        "bench": "rollout_sim",
        "summary": True,
        "runtime_s": round(time.perf_counter() - started, 1),
        "world_build_s": round(world.build_s, 1),
        "targets": {spec: targets(lines, spec) for spec, _, _ in variants},
        "scalar_mismatches": sum(line["scalar_mismatches"] for line in lines.values()),
    }
    print(json.dumps(summary), flush=True)
    return summary


if __name__ == "__main__":
    main()
