"""Schema of a synthetic world: sizes, feature noise, click model and drift scenarios."""

from __future__ import annotations

import datetime as dt
from typing import Any

from pydantic import Field, model_validator

from rayml.config import StrictModel


class ClickModel(StrictModel):
    """P(click | user, item, t) = sigmoid(base_logit + taste_scale * u·v + b_u + b_i + season(t) + noise)."""

    base_logit: float = Field(-2.0, ge=-10, le=10, description="Intercept; sets the average CTR.")
    taste_scale: float = Field(2.0, gt=0, le=20, description="Weight of the taste match u·v.")
    user_bias_std: float = Field(0.3, ge=0, le=5, description="Spread of per-user click propensity.")
    item_bias_std: float = Field(0.5, ge=0, le=5, description="Spread of per-item attractiveness.")
    noise_std: float = Field(0.2, ge=0, le=5, description="Per-impression logit noise.")


class CovariateDrift(StrictModel):
    """From ``start_day`` on, every user's taste moves by ``shift`` along one direction; features follow."""

    enabled: bool = False
    start_day: int = Field(7, ge=0, description="Day index (0 = start_date) where drift begins.")
    shift: float = Field(1.0, ge=0, le=10, description="Size of the taste move, in taste std units.")


class InterceptDrift(StrictModel):
    """Concept change of the base click rate: from ``start_day`` the click logit moves by ``delta``.

    p(x) stays and p(y | x) changes for every x (it was called ``label`` before, but it is not a
    label shift: p(x | y) changes too, so label-shift estimators such as BBSE cannot see it).
    """

    enabled: bool = False
    start_day: int = Field(7, ge=0)
    delta: float = Field(-0.7, ge=-10, le=10, description="Added to base_logit after start_day.")


class LabelShift(StrictModel):
    """True label shift: from ``start_day`` the click prior moves to ``new_prior``, p(x | y) kept.

    Impressions are thinned by class after the clicks are drawn: a clicked impression is kept with
    probability ``a`` and a non-clicked one with probability ``b`` (the larger of the two is 1),
    chosen per user chunk and day so that the share of clicks becomes ``new_prior``. Thinning
    that depends on the class only keeps p(x | y); p(y), p(x) and p(y | x) move.
    """

    enabled: bool = False
    start_day: int = Field(7, ge=0)
    new_prior: float = Field(0.25, gt=0, lt=1, description="Click rate of the log after start_day.")


class ConceptDrift(StrictModel):
    """Tastes rotate over time while features stay put, so P(click | features) changes."""

    enabled: bool = False
    start_day: int = Field(7, ge=0)
    degrees_per_day: float = Field(10.0, ge=0, le=180, description="Rotation speed of the taste space.")


class Seasonality(StrictModel):
    """Periodic swing of the click logit: amplitude * sin(2π t / period_days)."""

    enabled: bool = False
    amplitude: float = Field(0.5, ge=0, le=5)
    period_days: float = Field(7.0, gt=0, le=366)


class Drift(StrictModel):
    """Switchable drift scenarios; all deterministic given the world seed."""

    covariate: CovariateDrift = CovariateDrift()
    intercept: InterceptDrift = InterceptDrift()
    label_shift: LabelShift = LabelShift()
    concept: ConceptDrift = ConceptDrift()
    seasonality: Seasonality = Seasonality()

    @model_validator(mode="before")
    @classmethod
    def _renamed_label(cls, data: Any) -> Any:
        if isinstance(data, dict) and "label" in data:
            raise ValueError(
                "drift.label was renamed to drift.intercept (it moves the base click rate, a "
                "concept change); for a true label shift (click prior moves, p(x | y) kept) use "
                "drift.label_shift"
            )
        return data

    def enabled_scenarios(self) -> list[str]:
        """Names of the scenarios switched on, in field order."""
        return [name for name in type(self).model_fields if getattr(self, name).enabled]


class WorldConfig(StrictModel):
    """A whole synthetic world. Same config and seed → byte-identical Parquet."""

    seed: int = Field(7, ge=0, description="Root seed of every random draw.")
    n_users: int = Field(20_000, ge=10, le=1_000_000_000)
    n_items: int = Field(2_000, ge=10, le=10_000_000)
    latent_dim: int = Field(16, ge=2, le=256, description="Dimension of taste vectors.")
    n_categories: int = Field(20, ge=2, le=1000, description="Item categories (taste clusters).")
    n_regions: int = Field(8, ge=1, le=1000)
    observed_dim: int = Field(8, ge=1, le=256, description="Noisy numeric projections of taste per entity.")
    feature_noise: float = Field(0.5, ge=0, le=10, description="Noise std on observed projections.")
    missing_rate: float = Field(0.05, ge=0, lt=1, description="Share of missing values per feature.")
    start_date: dt.date = Field(dt.date(2026, 1, 1))
    days: int = Field(14, ge=1, le=3650, description="Length of the event log.")
    impressions_per_user: float = Field(30.0, ge=0, le=10_000, description="Mean impressions per user.")
    popularity_exponent: float = Field(
        1.0, ge=0, le=5, description="Logging policy: items are shown ∝ exp(exponent * item bias)."
    )
    chunk_users: int = Field(200_000, ge=100, description="Users generated and written per chunk.")
    click: ClickModel = ClickModel()
    drift: Drift = Drift()

    @model_validator(mode="after")
    def _drift_inside_log(self) -> WorldConfig:
        for name in ("covariate", "intercept", "label_shift", "concept"):
            scenario = getattr(self.drift, name)
            if scenario.enabled and scenario.start_day >= self.days:
                raise ValueError(
                    f"drift.{name}.start_day={scenario.start_day} must be < days={self.days}"
                )
        return self
