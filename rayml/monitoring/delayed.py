"""Model performance in the monitor: delayed labels from the outcome log, and estimates before they arrive.

The replicas write served requests (items and the ranker's click probabilities) and the clicks that name their
``request_id`` to Rollout's outcome log (:mod:`rayml.rollout.outcomes`); this module reads it, per model version
and per event-time window of ``window_s``:

- **estimated** (kind ``estimated``), as soon as a window has closed: CBPE's expected CTR, precision and recall
  at ``threshold`` from the scores alone, with intervals (:func:`rayml.monitoring.performance.cbpe`);
- **delayed** (kind ``performance``), once every request of the window is older than the attribution window
  (mature, so no click can still arrive): CTR, NDCG@k, MRR@k of the served slates; precision, recall, F1, AUC
  at ``threshold``; label and predicted priors; and Cox's recalibration of the labels on the scores against the
  version's baseline (its first ``baseline_windows`` mature windows): a concept change moves it while covariate
  drift does not (see :mod:`rayml.monitoring.scenarios`).

Signals for the alert rules: ``performance.auc_drop`` (the article's "> 2 % drop over 7 days": the relative
drop of the last ``drop_days`` days' AUC against the first ``drop_days`` days of the version, each day the
impression-weighted mean of its windows), ``performance.recalibration_p`` and ``performance.ctr``.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import pandas as pd
from pydantic import Field

from rayml.config import StrictModel
from rayml.monitoring.performance import (
    PerformanceDropRule,
    cbpe,
    classification_metrics,
    ranking_metrics,
    recalibration,
    recalibration_change,
)
from rayml.rollout.outcomes import OutcomeLog

logger = logging.getLogger(__name__)


class PerformanceConfig(StrictModel):
    """Where the labels come from and how performance is judged (``monitor.performance``)."""

    outcomes: str = Field(description="The outcome log directory (the recommender's `rollout.outcomes`).")
    attribution_window_s: float = Field(
        1800.0, gt=0, description="A click counts within this long of its request; a window is mature after it.")
    threshold: float = Field(0.5, gt=0, lt=1, description="Classification threshold on the click probability.")
    k: int = Field(10, ge=1, le=1000, description="Cut-off of NDCG@k and MRR@k.")
    baseline_windows: int = Field(1, ge=1, description="Mature windows of a version that form its baseline.")
    min_impressions: int = Field(200, ge=10, description="A window with fewer is reported, not evaluated.")
    day_s: float = Field(86_400.0, gt=0, description="A day of the drop rule (tests shrink it).")
    drop_days: int = Field(7, ge=1, le=365, description="Days of the baseline and the current span of the rule.")
    max_relative_drop: float = Field(0.02, ge=0, le=1, description="The rule's AUC drop, relative.")
    lookback_s: float = Field(86_400.0, gt=0, description="How far back a monitor with no state starts.")


def _finite(value: float | None) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


class DelayedPerformance:
    """Per-version windows of the outcome log, evaluated once when closed (estimate) and once when mature."""

    def __init__(self, config: PerformanceConfig, window_s: float, grace_s: float) -> None:
        self.config = config
        self.window_s, self.grace_s = window_s, grace_s
        self.log = OutcomeLog(config.outcomes)
        self.estimated_until: float | None = None  # window starts below this have their estimate
        self.evaluated_until: float | None = None  # ... and their delayed-label evaluation
        self.baselines: dict[str, dict[str, Any]] = {}  # version → {"windows", "params", "cov", "rows"}
        self.days: dict[str, dict[str, list[float]]] = {}  # version → {day index: [Σ auc·n, Σ n]}
        self._pending: dict[str, list[pd.DataFrame]] = {}  # version → baseline windows' rows until complete

    # -- schedule --------------------------------------------------------------------------------------
    def _span(self, until: float | None, edge: float, now: float) -> tuple[float, float] | None:
        start = until if until is not None else math.floor((now - self.config.lookback_s) / self.window_s) * self.window_s
        end = math.floor(edge / self.window_s) * self.window_s
        return (start, end) if end > start else None

    def tick(self, now: float) -> list[dict[str, Any]]:
        """Estimates of newly closed windows, then evaluations of newly mature ones (event-time order each)."""
        results: list[dict[str, Any]] = []
        span = self._span(self.estimated_until, now - self.grace_s, now)
        if span is not None:
            results += self._estimate(*span)
            self.estimated_until = span[1]
        span = self._span(self.evaluated_until, now - self.grace_s - self.config.attribution_window_s, now)
        if span is not None:
            results += self._evaluate(*span)
            self.evaluated_until = span[1]
        return results

    def _windows(self, since: float, before: float, mature: bool) -> list[tuple[str, float, pd.DataFrame]]:
        rows = self.log.impressions(since, before, self.config.attribution_window_s if mature else 0.0)
        if rows.empty:
            return []
        starts = np.floor(rows["ts"].to_numpy(np.float64) / self.window_s) * self.window_s
        rows = rows.assign(window_start=starts)
        return [(str(version), float(start), group)
                for (start, version), group in rows.groupby(["window_start", "model_version"], sort=True)]

    # -- estimate before labels ------------------------------------------------------------------------
    def _estimate(self, since: float, before: float) -> list[dict[str, Any]]:
        out = []
        for version, start, rows in self._windows(since, before, mature=False):
            scores = rows["score"].to_numpy(np.float64)
            scores = scores[np.isfinite(scores)]
            base = self._base("estimated", version, start, rows)
            if len(scores) < self.config.min_impressions:
                out.append({**base, "status": "too_few_scored", "scored": len(scores)})
                continue
            est = cbpe(scores, threshold=self.config.threshold)
            out.append({**base, "status": "ok", "scored": len(scores), "estimated": {
                name: {"value": i.value, "low": i.low, "high": i.high}
                for name, i in (("ctr", est.ctr), ("precision", est.precision), ("recall", est.recall),
                                ("f1", est.f1))}})
        return out

    # -- evaluate with labels --------------------------------------------------------------------------
    def _evaluate(self, since: float, before: float) -> list[dict[str, Any]]:
        out = []
        for version, start, rows in self._windows(since, before, mature=True):
            base = self._base("performance", version, start, rows)
            if len(rows) < self.config.min_impressions:
                out.append({**base, "status": "too_few_impressions"})
                continue
            out.append({**base, "status": "ok", **self._metrics(version, start, rows)})
        return out

    def _base(self, kind: str, version: str, start: float, rows: pd.DataFrame) -> dict[str, Any]:
        return {"kind": kind, "version": version, "window_start": start, "window_end": start + self.window_s,
                "impressions": len(rows), "requests": int(rows["request_id"].nunique())}

    def _metrics(self, version: str, start: float, rows: pd.DataFrame) -> dict[str, Any]:
        cfg = self.config
        clicked = rows["clicked"].to_numpy(bool)
        slates = rows.pivot_table(index="request_id", columns="position", values="clicked", aggfunc="max",
                                  fill_value=False).to_numpy(np.float64)
        metrics: dict[str, float | None] = {"ctr": float(clicked.mean())}
        metrics |= {name: _finite(v) for name, v in ranking_metrics(slates, cfg.k).items()}
        scores = rows["score"].to_numpy(np.float64)
        scored = np.isfinite(scores)
        result: dict[str, Any] = {"metrics": metrics}
        if scored.sum() >= cfg.min_impressions:
            y, p = clicked[scored], scores[scored]
            metrics |= {name: _finite(v) for name, v in classification_metrics(y, p, cfg.threshold).items()}
            result["recalibration"] = self._recalibration(version, y, p)
            auc = metrics.get("auc")
            if auc is not None:
                day = str(int(start // cfg.day_s))
                acc = self.days.setdefault(version, {}).setdefault(day, [0.0, 0.0])
                acc[0] += auc * len(y)
                acc[1] += len(y)
            result["auc_drop"] = self._auc_drop(version)
        return result

    def _recalibration(self, version: str, clicked: np.ndarray, scores: np.ndarray) -> dict[str, Any]:
        """Against the version's baseline once it has one; the baseline windows themselves only accumulate."""
        baseline = self.baselines.get(version)
        if baseline is None or baseline["windows"] < self.config.baseline_windows:
            pending = self._pending.setdefault(version, [])
            pending.append(pd.DataFrame({"y": clicked, "p": scores}))
            rows = pd.concat(pending)
            params, cov = recalibration(rows["y"].to_numpy(bool), rows["p"].to_numpy(np.float64))
            self.baselines[version] = {"windows": len(pending), "params": params.tolist(), "cov": cov.tolist(),
                                       "rows": len(rows)}
            if len(pending) >= self.config.baseline_windows:
                self._pending.pop(version, None)
            return {"status": "baseline", "intercept": float(params[0]), "slope": float(params[1])}
        reference = (np.asarray(baseline["params"]), np.asarray(baseline["cov"]))
        params, _ = recalibration(clicked, scores)
        stat, p_value = recalibration_change(reference, clicked, scores)
        return {"status": "tested", "intercept": float(params[0]), "slope": float(params[1]), "chi2": stat,
                "p_value": p_value, "baseline_slope": float(reference[0][1])}

    def _auc_drop(self, version: str) -> dict[str, Any]:
        days = self.days.get(version, {})
        if not days:
            return {"fired": False, "reason": "no days yet"}
        first, last = min(int(d) for d in days), max(int(d) for d in days)
        series = [days[str(d)][0] / days[str(d)][1] if str(d) in days else float("nan") for d in range(first, last + 1)]
        rule = PerformanceDropRule(metric="auc", max_relative_drop=self.config.max_relative_drop,
                                   window_days=self.config.drop_days)
        outcome = rule.evaluate(series)
        return {"fired": outcome.fired, **{k: v for k, v in outcome.evidence.items() if not isinstance(v, tuple)}}

    # -- persistence -----------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {"estimated_until": self.estimated_until, "evaluated_until": self.evaluated_until,
                "baselines": self.baselines, "days": self.days}

    def restore(self, state: dict[str, Any]) -> None:
        self.estimated_until, self.evaluated_until = state.get("estimated_until"), state.get("evaluated_until")
        self.baselines, self.days = state.get("baselines", {}), state.get("days", {})


def performance_signals(result: dict[str, Any]) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Alert signals of a delayed-label result: ``performance.auc_drop``, ``.recalibration_p``, ``.ctr``."""
    if result.get("kind") != "performance" or result.get("status") != "ok":
        return {}
    labels = {"version": result["version"]}
    signals: dict[str, list[tuple[dict[str, str], float]]] = {}
    drop = (result.get("auc_drop") or {}).get("relative_drop")
    if drop is not None and math.isfinite(drop):
        signals["performance.auc_drop"] = [(labels, float(drop))]
    recal = result.get("recalibration") or {}
    if recal.get("status") == "tested":
        signals["performance.recalibration_p"] = [(labels, float(recal["p_value"]))]
    ctr = (result.get("metrics") or {}).get("ctr")
    if ctr is not None:
        signals["performance.ctr"] = [(labels, float(ctr))]
    return signals


REPORTED_METRICS = ("ctr", "precision", "recall", "f1", "auc")


def performance_points(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The report's performance series from monitor results (``GET /admin/monitor`` → ``results``, or the
    monitor's state file): per window and metric, the delayed value and the estimate with its interval."""
    points: dict[tuple[float, str, str], dict[str, Any]] = {}
    for result in results:
        if result.get("status") != "ok" or result.get("kind") not in ("performance", "estimated"):
            continue
        for metric in REPORTED_METRICS:
            key = (float(result["window_start"]), str(result["version"]), metric)
            point = points.setdefault(key, {"window_start": key[0], "metric": f"{metric} ({key[1]})"})
            if result["kind"] == "performance":
                value = (result.get("metrics") or {}).get(metric)
                if value is not None:
                    point["delayed"] = value
            else:
                interval = (result.get("estimated") or {}).get(metric)
                if interval is not None:
                    point.update(estimated=interval["value"], lo=interval["low"], hi=interval["high"])
    return [p for _, p in sorted(points.items()) if "delayed" in p or "estimated" in p]
