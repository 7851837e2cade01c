"""The detection matrix: every drift detector on every world scenario, with the delay from onset to alarm.

A scenario world (``configs/world/scenarios/*.yaml``) knows when its drift starts and what kind it is, so
each detector's delay and false alarms are measured against the truth. The stream is the world's
impression log in time order; every impression carries the features a replica would have served (the
user snapshot valid that day, the item row) and the score of a model fitted before any drift
(:meth:`rayml.world.World.model_score`). Labels are the logged clicks, used once their window closes.

Detectors, one per kind of drift (each decides per window at ``alpha``):

- ``covariate``: the shipped preset (KS / χ², Holm) on the served features against the reference.
- ``label_prior``: the window's click rate against the reference's, a two-proportion z-test.
- ``concept``: Cox's recalibration test. A logistic fit ``logit P(y) = a + b·logit(p)`` of the labels on
  the model's scores, on the window and on the reference; a Wald χ² (2 df) on the difference of (a, b).
  Under an unchanged p(y | x) the fit is the same whatever p(x) is, so covariate drift leaves it alone;
  a concept change moves the slope (the model discriminates less) or the intercept (the base rate).
- ``seasonal``: time windows' click rate against the same phase one period back
  (:func:`rayml.monitoring.performance.seasonal_baseline`); ``seasonal_off`` is the same test against the
  reference's mean, i.e. with the baseline switched off.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
from scipy.stats import norm

from rayml.monitoring.detectors import Kind
from rayml.monitoring.performance import recalibration, recalibration_change, seasonal_baseline
from rayml.monitoring.presets import default_preset, run_preset
from rayml.world import World

DETECTORS = ("covariate", "label_prior", "concept")
FEATURE_COLUMNS_SKIPPED = ("user_id", "item_id")


@dataclass(frozen=True)
class Stream:
    """A world's impressions in time order: time in days since the start, label, model score, features."""

    t_days: np.ndarray
    clicked: np.ndarray
    score: np.ndarray
    features: pd.DataFrame
    onset_day: float | None
    kind: str

    def __len__(self) -> int:
        return len(self.t_days)


def scenario_kind(world: World) -> tuple[str, float | None]:
    """The one drift a scenario world switches on, and its onset day (``none`` and None without drift)."""
    drift = world.config.drift
    enabled = [name for name in ("covariate", "intercept", "label_shift", "concept", "seasonality")
               if getattr(drift, name).enabled]
    if len(enabled) > 1:
        raise ValueError(f"{world.path}: scenario worlds switch on one drift each, this one has {enabled}")
    if not enabled:
        return "none", None
    name = enabled[0]
    return name, None if name == "seasonality" else float(getattr(drift, name).start_day)


def _served_features(world: World, users: np.ndarray, items: np.ndarray, dates: np.ndarray) -> pd.DataFrame:
    """Each impression's user row from the snapshot valid on its date, beside its item row."""
    item_frame = world.item_features_table().to_pandas().set_index("item_id")
    snapshots = world.user_snapshots()
    valid_from = np.array([np.datetime64(d) for d in snapshots])
    snapshot_of_row = np.searchsorted(valid_from, dates, side="right") - 1
    parts: list[pd.DataFrame] = []
    order = np.argsort(snapshot_of_row, kind="stable")
    for index in np.unique(snapshot_of_row):
        if index < 0:
            raise ValueError(f"{world.path}: impressions before the first user snapshot ({snapshots[0]})")
        rows = order[snapshot_of_row[order] == index]
        as_of = snapshots[index] + dt.timedelta(days=1)
        user_frame = world.user_features_table(as_of=as_of).to_pandas().set_index("user_id")
        part = user_frame.reindex(users[rows]).reset_index(drop=True)
        part.index = rows
        parts.append(part)
    user_part = pd.concat(parts).sort_index()
    item_part = item_frame.reindex(items).reset_index(drop=True)
    return pd.concat([user_part.reset_index(drop=True), item_part], axis=1)


def world_stream(world: World) -> Stream:
    """The world's impression log as a :class:`Stream` (time order, served features, pre-drift score)."""
    events = world.events_dataset().to_table(columns=["user_id", "item_id", "ts", "clicked"])
    ts = events["ts"].to_numpy()
    order = np.argsort(ts, kind="stable")
    ts = ts[order]
    t_days = (ts - np.datetime64(world.config.start_date)) / np.timedelta64(1, "s") / 86_400.0
    users = events["user_id"].to_numpy()[order]
    items = events["item_id"].to_numpy()[order]
    clicked = events["clicked"].to_numpy(zero_copy_only=False)[order]
    kind, onset = scenario_kind(world)
    features = _served_features(world, users, items, ts.astype("datetime64[D]"))
    return Stream(t_days=t_days, clicked=clicked, score=world.model_score(users, items, t_days),
                  features=features, onset_day=onset, kind=kind)


def feature_schema(frame: pd.DataFrame) -> dict[str, Kind]:
    """numeric for number columns, categorical for the rest (the served features' kinds)."""
    return {c: ("numeric" if pd.api.types.is_numeric_dtype(frame[c]) else "categorical") for c in frame.columns}


@dataclass
class WindowDecision:
    """One count window: its span in days and each detector's decision and statistic."""

    start_day: float
    end_day: float
    decisions: dict[str, bool] = field(default_factory=dict)
    statistics: dict[str, float] = field(default_factory=dict)


def _two_proportion_p(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    pa_, pb = a.mean(), b.mean()
    pooled = (a.sum() + b.sum()) / (len(a) + len(b))
    se = np.sqrt(pooled * (1 - pooled) * (1 / len(a) + 1 / len(b)))
    z = float((pb - pa_) / se) if se > 0 else 0.0
    return z, float(2 * norm.sf(abs(z)))


def count_windows(stream: Stream, window: int, reference_rows: int, alpha: float = 0.01,
                  days: tuple[float, float] | None = None) -> list[WindowDecision]:
    """The covariate, label-prior and concept detectors on consecutive windows of ``window`` rows after the
    first ``reference_rows`` (the reference); with ``days``, only windows starting within that span."""
    if reference_rows < window or len(stream) < reference_rows + window:
        raise ValueError(f"need ≥ reference_rows + window = {reference_rows + window} rows, have {len(stream)}")
    ref = slice(0, reference_rows)
    features = stream.features.drop(columns=[c for c in FEATURE_COLUMNS_SKIPPED if c in stream.features])
    preset = default_preset(feature_schema(features), n_reference=reference_rows)
    ref_features = features.iloc[ref]
    reference_fit = recalibration(stream.clicked[ref], stream.score[ref])
    out: list[WindowDecision] = []
    for start in range(reference_rows, len(stream) - window + 1, window):
        if days is not None and not days[0] <= stream.t_days[start] < days[1]:
            continue
        cur = slice(start, start + window)
        decision = WindowDecision(float(stream.t_days[start]), float(stream.t_days[start + window - 1]))
        report = run_preset(preset, ref_features, features.iloc[cur], alpha=alpha)
        decision.decisions["covariate"] = report.drifted
        decision.statistics["covariate"] = float(len(report.drifted_features))
        z, p = _two_proportion_p(stream.clicked[ref], stream.clicked[cur])
        decision.decisions["label_prior"], decision.statistics["label_prior"] = p < alpha, z
        stat, p = recalibration_change(reference_fit, stream.clicked[cur], stream.score[cur])
        decision.decisions["concept"], decision.statistics["concept"] = p < alpha, stat
        out.append(decision)
    return out


@dataclass(frozen=True)
class DetectorOutcome:
    """One cell of the matrix: when a detector first alarmed after onset, and its alarms before and after."""

    scenario: str
    detector: str
    first_alarm_window: int | None  # 0 = the first window wholly after onset
    delay_days: float | None  # onset → end of the first alarming window
    alarms_after: int
    windows_after: int
    alarms_before: int
    windows_before: int

    def to_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def summarize(scenario: str, onset_day: float | None, windows: list[WindowDecision],
              detectors: tuple[str, ...] = DETECTORS) -> list[DetectorOutcome]:
    """Per detector: the first alarm among windows starting at or after onset, and the alarm counts of the
    windows wholly before onset and wholly after it (without drift every window counts as before)."""
    onset = np.inf if onset_day is None else onset_day
    before = [w for w in windows if w.end_day < onset]
    after = [w for w in windows if w.start_day >= onset]
    out = []
    for name in detectors:
        first = next((i for i, w in enumerate(after) if w.decisions[name]), None)
        out.append(DetectorOutcome(
            scenario=scenario, detector=name, first_alarm_window=first,
            delay_days=None if first is None or onset_day is None else after[first].end_day - onset_day,
            alarms_after=sum(w.decisions[name] for w in after), windows_after=len(after),
            alarms_before=sum(w.decisions[name] for w in before), windows_before=len(before)))
    return out


@dataclass(frozen=True)
class SeasonalOutcome:
    """Seasonal alarms over the second cycle onwards: with the baseline off and on."""

    windows: int
    alarms_baseline_off: int
    alarms_baseline_on: int

    @property
    def rate_off(self) -> float:
        return self.alarms_baseline_off / self.windows if self.windows else float("nan")

    @property
    def rate_on(self) -> float:
        return self.alarms_baseline_on / self.windows if self.windows else float("nan")


def seasonal_windows(stream: Stream, period_days: float, window_hours: float = 12.0,
                     alpha: float = 0.01) -> SeasonalOutcome:
    """Click rate per time window of ``window_hours``; every window of the second cycle onwards is tested
    against the first cycle's mean (baseline off) and against the same phase one period back (on)."""
    per_period = period_days * 24 / window_hours
    if abs(per_period - round(per_period)) > 1e-9:
        raise ValueError(f"window_hours={window_hours} does not divide the period ({period_days} days)")
    period = round(per_period)
    index = np.floor(stream.t_days * 24 / window_hours).astype(np.int64)
    n_windows = int(index.max()) + 1
    counts = np.bincount(index, minlength=n_windows).astype(np.float64)
    clicks = np.bincount(index, weights=stream.clicked.astype(np.float64), minlength=n_windows)
    if n_windows < 2 * period or (counts == 0).any():
        raise ValueError(f"need two full cycles of non-empty windows, have {n_windows} windows of {period}/cycle")
    rate = clicks / counts
    reference_rate = clicks[:period].sum() / counts[:period].sum()
    z_crit = norm.isf(alpha / 2)
    off = on = 0
    for w in range(period, n_windows):
        se = np.sqrt(rate[w] * (1 - rate[w]) / counts[w]
                     + reference_rate * (1 - reference_rate) / counts[:period].sum())
        off += bool(abs(rate[w] - reference_rate) / se > z_crit)
        same_phase = seasonal_baseline(rate[: w + 1], period=period, counts=counts[: w + 1])
        on += bool(abs(same_phase.z) > z_crit)
    return SeasonalOutcome(windows=n_windows - period, alarms_baseline_off=off, alarms_baseline_on=on)


def detection_matrix(worlds: dict[str, World], window: int = 5_000, reference_rows: int = 30_000,
                     alpha: float = 0.01,
                     progress: Callable[[str], None] | None = None) -> list[DetectorOutcome]:
    """The matrix over named scenario worlds: one :class:`DetectorOutcome` per scenario × detector."""
    rows: list[DetectorOutcome] = []
    for name, world in worlds.items():
        stream = world_stream(world)
        rows += summarize(name, stream.onset_day, count_windows(stream, window, reference_rows, alpha))
        if progress:
            progress(name)
    return rows


def outcome_table(rows: list[DetectorOutcome]) -> pa.Table:
    """The matrix as an Arrow table (one row per cell), for reports."""
    return pa.Table.from_pylist([r.to_dict() for r in rows])
