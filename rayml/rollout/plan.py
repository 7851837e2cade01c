"""The canary plan: stages, gates, one α for the whole rollout (``configs/rollout/*.yaml``).

A plan is validated when a rollout is submitted (``rayml rollout start`` or ``POST /admin/rollout``), so a
plan that cannot work is refused with the field that is wrong, before any traffic moves:

- stage weights must rise strictly and end at 100 %;
- each stage's ``min_samples`` (canary users with mature data in the stage) must reach :data:`GATE_MIN_USERS`,
  the fewest users per arm the delta-method variance is trusted on;
- ``alpha_split`` must sum to ``alpha`` (one error budget for the whole rollout, see ``docs/rollout.md``).
"""

from __future__ import annotations

import itertools
import math

from pydantic import Field, model_validator

from rayml.config import StrictModel

GATE_MIN_USERS = 100  # users per arm below which the delta-method (CLT) variance of a ratio metric is not trusted
DAY_S = 86_400.0


class Stage(StrictModel):
    """One step of the ramp: the canary's share of users, held until both minimums are met and the gates pass."""

    weight_pct: float = Field(gt=0, le=100, description="Share of users routed to the canary, in percent.")
    min_samples: int = Field(GATE_MIN_USERS, ge=1, description="Canary users with mature data in this stage.")
    min_duration_s: float = Field(ge=0, description="Seconds the stage lasts at least.")
    require_noninferiority: bool = Field(
        True, description="Promote only once the CTR lift's lower bound is above -δ. false: promote once the "
        "minimums are met and no gate fired (the stage still rolls back when the upper bound is below -δ or a "
        "guardrail fires). A 1 % stage rarely has the users to prove δ = 2 %; see docs/rollout-statistics.md.")


class AlphaSplit(StrictModel):
    """How the rollout's α is spent across the gates (sums to ``alpha``)."""

    ctr: float = Field(0.03, gt=0, lt=1, description="The primary metric's two-sided confidence sequence.")
    errors: float = Field(0.01, gt=0, lt=1, description="The error-rate guardrail.")
    latency: float = Field(0.005, gt=0, lt=1, description="p95 and p99 guardrails, half each.")
    srm: float = Field(0.005, gt=0, lt=1, description="The sample-ratio check, split evenly over the stages.")

    def total(self) -> float:
        return self.ctr + self.errors + self.latency + self.srm


class Guardrails(StrictModel):
    """Margins the canary must stay within, each tested sequentially against production."""

    max_error_increase: float = Field(
        0.005, ge=0, lt=1, description="Rolled back once the error rate is surely this much above production's.")
    p95_ratio: float = Field(1.2, ge=1, description="Canary p95 latency may be at most this × production's.")
    p99_ratio: float = Field(1.3, ge=1, description="Canary p99 latency may be at most this × production's.")


class RolloutPlan(StrictModel):
    """A canary of ``candidate`` against ``production``, ramped through ``stages``."""

    model: str = Field("ranker", description="Registry model the rollout moves.")
    production_alias: str = Field("production", description="The alias the candidate replaces when it completes.")
    canary_alias: str = Field("canary", description="The alias the candidate is served under during the rollout.")
    salt: str = Field("canary", min_length=1, description="Salt of the user hash that assigns the canary arm.")
    stages: list[Stage] = Field(min_length=1, description="Ascending weights ending at 100.")
    margin: float = Field(0.02, gt=0, lt=1, description="δ: non-inferiority margin on relative CTR lift.")
    alpha: float = Field(0.05, gt=0, lt=1, description="Error budget of the whole rollout.")
    alpha_split: AlphaSplit = Field(default_factory=AlphaSplit)
    mixture_scale: float | None = Field(
        None, gt=0, description="τ of the mSPRT's normal mixture on log lift; null: the margin δ.")
    guardrails: Guardrails = Field(default_factory=Guardrails)
    attribution_window_s: float = Field(
        1800.0, gt=0, description="A click counts for an impression served at most this long before it; "
        "gates read only impressions older than this (mature).")
    deadline_s: float = Field(14 * DAY_S, gt=0, description="Rolled back if not complete by then.")
    evaluate_every_s: float = Field(60.0, gt=0, description="How often the controller evaluates the gates.")
    production_log_sample: float = Field(
        0.1, gt=0, le=1, description="Share of production users whose impressions are logged (by user hash); "
        "the canary's are logged at 100 %.")
    weights_ttl_s: float = Field(
        120.0, gt=0, description="Replicas keep the last weights this long without a controller heartbeat, "
        "then send the canary 0 %.")
    min_shadow_agreement: float | None = Field(
        None, ge=0, le=1, description="Refuse to start unless the shadow's overlap@k reached this.")

    @model_validator(mode="after")
    def _consistent(self) -> RolloutPlan:
        weights = [s.weight_pct for s in self.stages]
        for i, (a, b) in enumerate(itertools.pairwise(weights)):
            if b <= a:
                raise ValueError(f"stages.{i + 1}.weight_pct: stages must rise strictly ({b} after {a})")
        if weights[-1] != 100:
            raise ValueError(f"stages.{len(weights) - 1}.weight_pct: the last stage must send 100 %, "
                             f"got {weights[-1]}")
        for i, stage in enumerate(self.stages):
            if stage.min_samples < GATE_MIN_USERS:
                raise ValueError(f"stages.{i}.min_samples: {stage.min_samples} is below the "
                                 f"{GATE_MIN_USERS} users per arm the gates need")
        proving = [s.require_noninferiority for s in self.stages]
        if not proving[-1]:
            raise ValueError(f"stages.{len(proving) - 1}.require_noninferiority: the last stage must prove "
                             "non-inferiority before production moves")
        for i, (a, b) in enumerate(itertools.pairwise(proving)):
            if a and not b:
                raise ValueError(f"stages.{i + 1}.require_noninferiority: once a stage proves non-inferiority, "
                                 "every later one must")
        if not math.isclose(self.alpha_split.total(), self.alpha, rel_tol=1e-9, abs_tol=1e-12):
            raise ValueError(f"alpha_split: its parts sum to {self.alpha_split.total():g}, not alpha={self.alpha:g}")
        if self.canary_alias == self.production_alias:
            raise ValueError("canary_alias: must differ from production_alias")
        return self

    @property
    def tau(self) -> float:
        """The mixture scale on log lift (δ unless set)."""
        return self.mixture_scale if self.mixture_scale is not None else self.margin

    @property
    def prove_from_stage(self) -> int:
        """Index of the first stage that must prove non-inferiority to be promoted."""
        return next(i for i, s in enumerate(self.stages) if s.require_noninferiority)

    def stage_alpha_srm(self) -> float:
        return self.alpha_split.srm / len(self.stages)
