"""Online monitoring: replicas sample what they serve; one monitor deployment windows it and runs the detectors.

**In the replica** (:class:`rayml.monitoring.tap.MonitorTap`): a ``sample_rate`` share of answered requests is
kept as one row each (event time, the model version, the user's raw online features, the top and mean score, the
``request_id``). Rows are buffered and sent at most once a second per replica, by a thread of their own, as one
message of columns plus their mergeable profiles per version and event-time bucket
(:func:`rayml.monitoring.tap.bucket_profiles`): the response never waits for monitoring, and a full buffer drops
rows (counted).

**In the monitor** (:class:`Monitor`, with an injectable clock so tests replay days in seconds):

- rows go to tumbling *event-time* windows of ``window_s`` per model version; each window keeps a uniform
  reservoir of at most ``reservoir`` rows (for KS and the other sample tests) and exact counts of every row, and
  its missing or non-finite values per feature;
- the replicas' profiles merge into the window of their bucket (``bucket_s`` must divide ``window_s``; a bucket
  that straddles two windows is counted as unaligned and skipped), so a window's profile covers every sampled row
  however small the reservoir: its result carries per-feature quantiles, missing, non-finite and out-of-range
  rates (against the served baseline's range), distinct counts and new-category rates (:func:`profile_summary`);
- a window closes ``grace_s`` after its end (later rows for it are counted as late and dropped);
- the first ``baseline_windows`` closed windows of a version are its **served baseline** (the logging policy that
  produced the training rows is not the ranker that serves, so drift is judged against served traffic of the
  same version);
- each later window is tested against the baseline with the default preset (corrected over features), plus
  data quality; the results become signals (``drift.<test>`` per feature, ``drift.family``, ``quality.<check>``)
  that the alert rules read (:mod:`rayml.monitoring.alerts`);
- state (baselines, recent results, alert state) is saved under ``state_dir`` after every close, so a restarted
  monitor continues where it stopped.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import Field

from rayml.config import StrictModel
from rayml.monitoring.alerts import DEFAULT_RULES, AlertManager, AlertRule, WebhookConfig
from rayml.monitoring.delayed import DelayedPerformance, PerformanceConfig, performance_signals
from rayml.monitoring.sketches import CategoricalProfile, NumericProfile, Profile
from rayml.monitoring.tap import META

logger = logging.getLogger(__name__)


class MonitorConfig(StrictModel):
    window_s: float = Field(300.0, gt=0, description="Tumbling event-time window length, seconds.")
    grace_s: float = Field(5.0, ge=0, description="A window closes this long after its end (late rows).")
    baseline_windows: int = Field(1, ge=1, description="Closed windows of a version that form its baseline.")
    reservoir: int = Field(5000, ge=10, description="Rows kept per window for the sample tests.")
    min_rows: int = Field(200, ge=10, description="A window with fewer rows is reported, not tested.")
    alpha: float = Field(0.01, gt=0, lt=1, description="Family-wise level over the features of a window.")
    correction: Literal["holm", "fdr_bh"] = "holm"
    rules: list[AlertRule] = Field(default_factory=lambda: list(DEFAULT_RULES))
    webhook: WebhookConfig | None = None
    state_dir: str = Field(description="Where the monitor's state survives restarts.")
    keep_results: int = Field(500, ge=1, description="Closed-window results kept in memory and on disk.")
    performance: PerformanceConfig | None = Field(
        None, description="Delayed-label performance and label-free estimates from the outcome log; null: off.")


# -- monitor side ---------------------------------------------------------------------------------------------
@dataclass
class Window:
    version: str
    index: int
    seen: int = 0
    missing: dict[str, int] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)  # the reservoir
    profile: Profile | None = None  # the replicas' profiles of this window's rows, merged

    def add(self, row: dict[str, Any], capacity: int, rng: random.Random) -> None:
        self.seen += 1
        for key, value in row.items():
            if value is None or (isinstance(value, float) and not math.isfinite(value)):
                self.missing[key] = self.missing.get(key, 0) + 1
        if len(self.rows) < capacity:
            self.rows.append(row)
        else:
            j = rng.randrange(self.seen)
            if j < capacity:
                self.rows[j] = row


class Monitor:
    def __init__(self, config: MonitorConfig, clock: Callable[[], float] = time.time,
                 evaluate: Callable[[pd.DataFrame, pd.DataFrame, MonitorConfig], dict[str, Any]] | None = None,
                 ) -> None:
        self.config = config
        self.clock = clock
        self.dir = Path(config.state_dir)
        self.alerts = AlertManager(config.rules, self.dir / "alerts", config.webhook)
        self._evaluate = evaluate or evaluate_window
        self._rng = random.Random(0)
        self._lock = threading.Lock()
        self.windows: dict[tuple[str, int], Window] = {}
        self.baselines: dict[str, list[dict[str, Any]]] = {}  # version → rows of its baseline windows
        self.baseline_done: dict[str, int] = {}  # version → baseline windows closed so far
        self.baseline_profiles: dict[str, Profile] = {}  # version → its baseline windows' profiles, merged
        self.profile_counts = {"merged": 0, "late": 0, "bad": 0, "unaligned": 0}
        self.results: list[dict[str, Any]] = []
        self.late_rows = self.bad_rows = self.received = 0
        self.closed_until: dict[str, int] = {}  # version → first window index still open
        self.performance = (DelayedPerformance(config.performance, config.window_s, config.grace_s)
                            if config.performance is not None else None)
        self._load()

    # -- ingest ---------------------------------------------------------------------------------------
    def ingest(self, message: dict[str, Any]) -> int:
        """Add a replica's message (columns of equal length); returns rows accepted. Never raises on bad rows."""
        columns = message.get("columns") or {}
        try:
            n = len(columns["ts"])
            if any(len(v) != n for v in columns.values()):
                raise ValueError("columns of different lengths")
        except (KeyError, TypeError, ValueError) as exc:
            self.bad_rows += 1
            logger.warning("monitor: malformed message from %s (%s)", message.get("replica"), exc)
            return 0
        accepted = 0
        with self._lock:
            for i in range(n):
                row = {key: values[i] for key, values in columns.items()}
                try:
                    ts, version = float(row["ts"]), str(row["version"])
                except (KeyError, TypeError, ValueError):
                    self.bad_rows += 1
                    continue
                index = int(ts // self.config.window_s)
                if index < self.closed_until.get(version, -1):
                    self.late_rows += 1
                    continue
                window = self.windows.get((version, index))
                if window is None:
                    window = self.windows[(version, index)] = Window(version, index)
                window.add(row, self.config.reservoir, self._rng)
                accepted += 1
            for item in message.get("profiles") or []:
                self.profile_counts[self._merge_profile(item)] += 1
        self.received += accepted
        return accepted

    def _merge_profile(self, item: Any) -> str:
        """Fold one replica profile into its window; returns how it went (a key of ``profile_counts``)."""
        w = self.config.window_s
        try:
            version, bucket, bucket_s = str(item["version"]), int(item["bucket"]), float(item["bucket_s"])
            if not bucket_s > 0:
                raise ValueError(f"bucket_s {bucket_s}")
            profile = Profile.deserialize(item["profile"])
        except (KeyError, TypeError, ValueError) as exc:  # ProfileError is a ValueError
            logger.warning("monitor: bad profile (%s: %s)", type(exc).__name__, exc)
            return "bad"
        start, end = bucket * bucket_s, (bucket + 1) * bucket_s
        index = int(start // w)
        if end > (index + 1) * w + 1e-9 * w:
            return "unaligned"
        if index < self.closed_until.get(version, -1):
            return "late"
        window = self.windows.get((version, index))
        if window is None:
            window = self.windows[(version, index)] = Window(version, index)
        try:
            window.profile = profile if window.profile is None else window.profile.merge(profile)
        except ValueError as exc:  # kinds disagree (a replica with another schema)
            logger.warning("monitor: profile not merged (%s)", exc)
            return "bad"
        return "merged"

    # -- close and evaluate ---------------------------------------------------------------------------
    def tick(self) -> list[dict[str, Any]]:
        """Close every window whose end + grace has passed; returns their results (in event-time order)."""
        now = self.clock()
        with self._lock:
            due = sorted((k for k in self.windows
                          if (k[1] + 1) * self.config.window_s + self.config.grace_s <= now), key=lambda k: k[1])
            closing = [self.windows.pop(k) for k in due]
            for w in closing:
                self.closed_until[w.version] = max(self.closed_until.get(w.version, -1), w.index + 1)
        results = [self._close(w) for w in closing]
        if self.performance is not None:
            results += self._performance(now)
        if results:
            self._save()
        return results

    def _performance(self, now: float) -> list[dict[str, Any]]:
        """Estimates and delayed-label results of the outcome log's newly closed or mature windows; a failure to
        read the log is logged and retried at the next tick (the windows are not skipped)."""
        assert self.performance is not None
        try:
            results = self.performance.tick(now)
        except (OSError, ValueError) as exc:
            logger.error("monitor: outcome log unreadable (%s: %s); retrying next tick", type(exc).__name__, exc)
            return []
        for result in results:
            signals = performance_signals(result)
            if signals:
                result["alerts"] = [e.to_dict() for e in self.alerts.observe(result["window_end"], signals)]
        self.results = [*self.results, *results][-self.config.keep_results:]
        return results

    def _close(self, window: Window) -> dict[str, Any]:
        cfg = self.config
        start = window.index * cfg.window_s
        base: dict[str, Any] = {"version": window.version, "window_start": start, "window_end": start + cfg.window_s,
                                "rows": window.seen, "missing": window.missing, "alerts": []}
        done = self.baseline_done.get(window.version, 0)
        if window.profile is not None:
            reference = self.baseline_profiles.get(window.version) if done >= cfg.baseline_windows else None
            base["profile_rows"] = window.profile.rows
            base["profile"] = profile_summary(window.profile, reference)
        if done < cfg.baseline_windows:
            self.baselines.setdefault(window.version, []).extend(window.rows)
            self.baseline_done[window.version] = done + 1
            if window.profile is not None:
                held = self.baseline_profiles.get(window.version)
                self.baseline_profiles[window.version] = window.profile if held is None else held.merge(window.profile)
            result = {**base, "kind": "baseline", "baseline_rows": len(self.baselines[window.version])}
        elif window.seen < cfg.min_rows:
            result = {**base, "kind": "too_few_rows", "min_rows": cfg.min_rows}
        else:
            reference = _frame(self.baselines[window.version])
            current = _frame(window.rows)
            evaluated = self._evaluate(reference, current, cfg)
            result = {**base, "kind": "tested", **evaluated}
            events = self.alerts.observe(start + cfg.window_s, signals_of(result))
            result["alerts"] = [e.to_dict() for e in events]
        self.results = [*self.results, result][-cfg.keep_results:]
        return result

    def open_versions(self) -> set[str]:
        """Versions with a window still open: the ones whose rows arrive now, i.e. that serve."""
        with self._lock:
            return {version for version, _ in self.windows}

    def status(self) -> dict[str, Any]:
        return {"open_windows": len(self.windows), "received": self.received, "late_rows": self.late_rows,
                "bad_rows": self.bad_rows, "baselines": {v: len(r) for v, r in self.baselines.items()},
                "profiles": dict(self.profile_counts),
                "latest": self.results[-1] if self.results else None, "firing": self.alerts.firing_by_rule(),
                "alerts": [e.to_dict() for e in self.alerts.firing.values()]}

    # -- persistence ----------------------------------------------------------------------------------
    def _save(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        state = {"baselines": self.baselines, "baseline_done": self.baseline_done, "results": self.results,
                 "closed_until": self.closed_until,
                 "baseline_profiles": {v: base64.b64encode(p.serialize()).decode() for v, p in self.baseline_profiles.items()},
                 "performance": self.performance.state() if self.performance is not None else None}
        tmp = self.dir / ".monitor_state.json.tmp"
        tmp.write_text(json.dumps(state, default=_jsonable))
        tmp.replace(self.dir / "monitor_state.json")

    def _load(self) -> None:
        path = self.dir / "monitor_state.json"
        if not path.exists():
            return
        state = json.loads(path.read_text())
        self.baselines, self.baseline_done = state["baselines"], state["baseline_done"]
        self.results, self.closed_until = state["results"], state["closed_until"]
        self.baseline_profiles = {v: Profile.deserialize(base64.b64decode(b))
                                  for v, b in (state.get("baseline_profiles") or {}).items()}
        if self.performance is not None and state.get("performance"):
            self.performance.restore(state["performance"])


def _frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    frame = pd.DataFrame.from_records(rows)
    return frame.drop(columns=[c for c in META if c in frame.columns])


SUMMARY_QUANTILES = (0.01, 0.5, 0.99)


def profile_summary(current: Profile, reference: Profile | None = None, top: int = 5) -> dict[str, dict[str, Any]]:
    """Per feature of a window's merged profile: what the sketches say about every sampled row.

    numeric: rows, missing and non-finite rates, mean, std, min, max, p01/p50/p99 (±``rank_error`` in rank) and,
    against ``reference`` (the version's served baseline), ``out_of_range_rate``: the share of finite values
    below the baseline's minimum or above its maximum (KLL cdf, ±2 × rank error). categorical: rows, missing
    rate, distinct count (HLL), the ``top`` categories and, against the reference, ``new_category_rate``: the
    share of the current window's frequent categories that the baseline never held (a lower bound once the
    baseline tracks more categories than its frequent-items sketch keeps).
    """
    out: dict[str, dict[str, Any]] = {}
    for name, feature in current.features.items():
        ref = reference.features.get(name) if reference is not None else None
        item: dict[str, Any] = {"kind": feature.kind, "rows": feature.rows, "missing_rate": feature.missing_rate}
        if isinstance(feature, NumericProfile):
            qs = feature.quantiles(SUMMARY_QUANTILES)
            item |= {"nonfinite_rate": feature.nonfinite / feature.rows if feature.rows else 0.0,
                     "mean": feature.mean if feature.count else None, "std": _finite_or_none(feature.std()),
                     "min": _finite_or_none(feature.min), "max": _finite_or_none(feature.max),
                     **{f"p{round(q * 100):02d}": _finite_or_none(v) for q, v in zip(SUMMARY_QUANTILES, qs, strict=True)},
                     "rank_error": feature.rank_error}
            if isinstance(ref, NumericProfile) and ref.count and feature.count:
                below, upto = feature.cdf([ref.min], inclusive=False)[0], feature.cdf([ref.max])[0]
                item["out_of_range_rate"] = float(min(max(below + 1.0 - upto, 0.0), 1.0))
        elif isinstance(feature, CategoricalProfile):
            item |= {"distinct": feature.distinct(), "top": [[c, share] for c, share in feature.top(top)]}
            if isinstance(ref, CategoricalProfile) and ref.total_weight and feature.total_weight:
                item["new_category_rate"] = float(sum(share for c, share in feature.top(10_000)
                                                      if ref.frequency_upper_bound(c) == 0))
        out[name] = item
    return out


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


Kind = Literal["numeric", "categorical"]


def schema_of(frame: pd.DataFrame) -> dict[str, Kind]:
    """numeric for number columns, categorical for the rest."""
    return {c: "numeric" if pd.api.types.is_numeric_dtype(frame[c]) else "categorical" for c in frame.columns}


def evaluate_window(reference: pd.DataFrame, current: pd.DataFrame, config: MonitorConfig) -> dict[str, Any]:
    """The default preset (corrected over features), PSI per numeric feature (for the PSI rule; no permutation
    p-value), and data quality of ``current`` against ``reference``."""
    from rayml.monitoring.detectors import PSI
    from rayml.monitoring.presets import default_preset, run_preset
    from rayml.monitoring.quality import quality_report

    schema = schema_of(reference)
    drift = run_preset(default_preset(schema, len(reference)), reference, current, alpha=config.alpha,
                       correction=config.correction).to_dict()
    psi = PSI(n_permutations=0)
    scores = {f: psi.run(reference[f].to_numpy(np.float64), current[f].to_numpy(np.float64), f).statistic
              for f, kind in schema.items() if kind == "numeric" and f in current}
    quality = quality_report(reference, current, schema).to_dict()
    return {"drift": drift, "psi": {f: _finite_or_none(v) for f, v in scores.items()}, "quality": quality}


def _finite_or_none(value: float) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


def drift_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (feature, test) of a tested window: statistic, p-value, corrected p-value, decision."""
    rows = []
    for feature in (result.get("drift") or {}).get("features", []):
        adjusted = feature.get("adjusted_p_values") or []
        for i, item in enumerate(feature.get("results", [])):
            rows.append({"feature": str(item["feature"]), "test": str(item["test"]),
                         "statistic": item.get("statistic"), "p_value": item.get("p_value"),
                         "adjusted_p_value": adjusted[i] if i < len(adjusted) else None,
                         "drifted": bool(feature.get("drifted"))})
    for feature, value in (result.get("psi") or {}).items():
        rows.append({"feature": feature, "test": "psi", "statistic": value, "p_value": None,
                     "adjusted_p_value": None, "drifted": value is not None and value > 0.2})
    return rows


def signals_of(result: dict[str, Any]) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Alert signals of a tested window: ``drift.<test>`` per feature (the statistic), ``drift.family``."""
    signals: dict[str, list[tuple[dict[str, str], float]]] = {}
    for row in drift_rows(result):
        if row["statistic"] is not None:
            labels = {"feature": row["feature"], "version": result["version"]}
            signals.setdefault(f"drift.{row['test']}", []).append((labels, float(row["statistic"])))
    drift = result.get("drift") or {}
    if "drifted" in drift:
        signals["drift.family"] = [({"version": result["version"]}, float(bool(drift["drifted"])))]
    return signals
