"""The monitor as a one-replica Serve deployment (its own application, no HTTP route of its own).

Recommender replicas send it sampled rows (``ingest``, at most one message per replica per second, fire and
forget); a thread closes windows every ``tick_s`` and exports the results through ``ray.util.metrics`` (Ray
dashboard, Prometheus endpoint):

- ``rayml_drift_score`` and ``rayml_drift_p_value`` {version, feature, test};
- ``rayml_data_quality`` {version, feature, check} (from the replicas' merged profiles where a window has them);
- ``rayml_alerts_firing`` {rule};
- ``rayml_monitor_rows`` {version} (rows of the latest closed window);
- ``rayml_model_performance`` {version, metric, source}: ``source=delayed`` from labels joined in the outcome
  log once a window is mature (ctr, ndcg@k, mrr@k, precision, recall, f1, auc, priors, recalibration slope and
  p-value, auc_drop), ``source=estimated`` from the scores before labels (CBPE: ctr, precision, recall, f1);
- ``rayml_model_age_seconds`` and ``rayml_training_data_age_seconds`` {version} (freshness, from the registry:
  the version's ``created_at`` and its lineage's ``data_end``), with ``registry`` set.

**Which series exist.** The exported series are a table (:class:`SeriesTable`) that holds the latest closed
window's values of the ``max_versions`` most recent versions (recency: the end of a version's latest window).
Ray 2.60's ``ray.util.metrics`` has no call that removes a tag set, and its emitter sends a gauge's tag set only
when it was set since the previous export; the metrics agent then forgets a tag set about two report intervals
(2 × max(``metrics_report_interval_ms``, 1 s)) after its last report. So the thread re-sets every series of the
table at least once a second, and a version that leaves the table is simply no longer set: its series leave
Ray's endpoint within that time, and Prometheus marks them stale at its next scrape. Cardinality is therefore
bounded by ``max_versions`` × features × tests (features from the schema the replicas send, tests fixed by the
preset), whatever the churn of versions. See ``docs/monitoring-report.md``.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

from pydantic import Field
from ray import serve
from ray.serve import Application
from ray.util import metrics

from rayml.config import StrictModel
from rayml.monitoring.online import Monitor, MonitorConfig, drift_rows
from rayml.registry import ModelRegistry, RegistryError

logger = logging.getLogger("ray.serve")


QUALITY_CHECKS = ("missing_rate", "out_of_range_rate", "new_category_rate", "cardinality")
# Ray's emitter exports only what was set since its previous export, at most once a second (its report interval is
# floored at 1 s), so re-setting the table this often keeps every live series in every export.
REFRESH_S = 1.0


class MonitorArgs(StrictModel):
    monitor: MonitorConfig
    tick_s: float = Field(1.0, gt=0, le=3600, description="How often windows are closed and metrics exported.")
    registry: str | None = Field(None, description="Registry root, for the freshness of the served versions.")
    max_versions: int = Field(
        3, ge=1, le=50,
        description="Model versions whose series are exported: the most recent ones by window end. Keep it at "
                    "least the number of versions that serve at once (production, canary, experiment arms); "
                    "the rest keep the previous production visible after a promote.")


class Freshness:
    """Ages of a served version (``name:vN``) from its registry metadata; read once per version."""

    def __init__(self, registry: str) -> None:
        self.registry = ModelRegistry(registry)
        self._stamps: dict[str, dict[str, float]] = {}

    def _stamps_of(self, version: str) -> dict[str, float]:
        if version not in self._stamps:
            stamps: dict[str, float] = {}
            name, _, number = version.rpartition(":v")
            try:
                meta = self.registry.get(name, int(number)).metadata
                stamps["model"] = dt.datetime.fromisoformat(meta["created_at"]).timestamp()
                data_end = (meta.get("lineage") or {}).get("data_end")
                if data_end:
                    stamps["data"] = dt.datetime.fromisoformat(str(data_end)).replace(tzinfo=dt.UTC).timestamp()
            except (RegistryError, ValueError, KeyError) as exc:
                logger.warning("monitor: no freshness for %s (%s)", version, exc)
            self._stamps[version] = stamps
        return self._stamps[version]

    def ages(self, version: str, now: float | None = None) -> dict[str, float]:
        now = time.time() if now is None else now
        return {kind: now - stamp for kind, stamp in self._stamps_of(version).items()}

    def forget(self, version: str) -> None:
        self._stamps.pop(version, None)


class GaugeLike(Protocol):
    def set(self, value: float, tags: dict[str, str] = ...) -> None: ...


Series = tuple[str, dict[str, str], float]  # (gauge name, tags, value)


class SeriesTable:
    """The gauge series the monitor exports: per version, the latest value of each series, for the
    ``max_versions`` most recent versions only.

    A version's recency is the end (event time) of the latest window that gave it a result; ties go to the
    greater version string, so the choice never flaps. Its series come in groups (``window``, ``drift``,
    ``delayed``, ``estimated``), and a group is replaced whole by the next result of its kind, so a feature or
    metric the latest window lacks is gone rather than frozen. Nothing is exported until :meth:`refresh`, which
    sets every series held; a series not in the table is never set again. Thread-safe.
    """

    def __init__(self, gauges: Mapping[str, GaugeLike], max_versions: int) -> None:
        if max_versions < 1:
            raise ValueError(f"max_versions: got {max_versions}; it must be at least 1")
        self.gauges, self.max_versions = gauges, max_versions
        self._lock = threading.Lock()
        self._recency: dict[str, float] = {}
        self._groups: dict[str, dict[str, list[Series]]] = {}

    def put(self, version: str, window_end: float, group: str, series: Iterable[Series]) -> list[str]:
        """Replace ``group`` of ``version``; returns the versions that left the table (``version`` itself when it
        is older than every kept one)."""
        series = list(series)
        unknown = sorted({name for name, _, _ in series} - set(self.gauges))
        if unknown:
            raise ValueError(f"series for unknown gauges {unknown}; known: {sorted(self.gauges)}")
        with self._lock:
            self._recency[version] = max(self._recency.get(version, -math.inf), window_end)
            self._groups.setdefault(version, {})[group] = series
            kept = set(sorted(self._recency, key=lambda v: (self._recency[v], v), reverse=True)[:self.max_versions])
            evicted = [v for v in self._recency if v not in kept]
            for v in evicted:
                del self._recency[v], self._groups[v]
        return evicted

    def versions(self) -> list[str]:
        """The exported versions, most recent first."""
        with self._lock:
            return sorted(self._recency, key=lambda v: (self._recency[v], v), reverse=True)

    def series(self, extra: Callable[[str], Iterable[Series]] | None = None) -> list[Series]:
        """Every series held, plus ``extra(version)`` for each version (values computed now, e.g. ages)."""
        with self._lock:
            held = [(v, [s for group in groups.values() for s in group]) for v, groups in self._groups.items()]
        out: list[Series] = []
        for version, series in held:
            out.extend(series)
            if extra is not None:
                out.extend(extra(version))
        return out

    def refresh(self, extra: Callable[[str], Iterable[Series]] | None = None) -> int:
        """Set every series held (and ``extra``'s); returns how many."""
        series = self.series(extra)
        for name, tags, value in series:
            self.gauges[name].set(value, tags=tags)
        return len(series)


class MonitorDeployment:
    def __init__(self, args: dict) -> None:
        cfg = MonitorArgs.model_validate(args)
        self.cfg = cfg
        self.monitor = Monitor(cfg.monitor)
        self.gauges: dict[str, metrics.Gauge] = {
            "rayml_drift_score": metrics.Gauge("rayml_drift_score", "Drift statistic of the latest closed window.",
                                               tag_keys=("version", "feature", "test")),
            "rayml_drift_p_value": metrics.Gauge("rayml_drift_p_value",
                                                 "Corrected p-value of the latest closed window.",
                                                 tag_keys=("version", "feature", "test")),
            "rayml_data_quality": metrics.Gauge("rayml_data_quality", "Data-quality rate of the latest closed window.",
                                                tag_keys=("version", "feature", "check")),
            "rayml_monitor_rows": metrics.Gauge("rayml_monitor_rows", "Rows of the latest closed window.",
                                                tag_keys=("version",)),
            "rayml_model_performance": metrics.Gauge(
                "rayml_model_performance", "Model performance of the latest window: delayed labels or estimated.",
                tag_keys=("version", "metric", "source")),
            "rayml_model_age_seconds": metrics.Gauge("rayml_model_age_seconds",
                                                     "Age of the served version (registry created_at).",
                                                     tag_keys=("version",)),
            "rayml_training_data_age_seconds": metrics.Gauge(
                "rayml_training_data_age_seconds", "Age of the served version's training data (lineage data_end).",
                tag_keys=("version",)),
        }
        self.firing = metrics.Gauge("rayml_alerts_firing", "Alerts firing now, per rule.", tag_keys=("rule",))
        self.series = SeriesTable(self.gauges, cfg.max_versions)
        self.freshness = Freshness(cfg.registry) if cfg.registry else None
        self.failures = self.refresh_failures = 0
        self.exported_series = 0
        self.refresh_s = 0.0
        for result in self.monitor.results:  # a restarted monitor exports its saved latest windows at once
            try:
                self._export(result)
            except (KeyError, TypeError, ValueError) as exc:
                logger.warning("monitor: a saved result is not exported (%s: %s)", type(exc).__name__, exc)
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="monitor", daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        next_tick = time.monotonic() + self.cfg.tick_s
        last_refresh = -math.inf
        while not self.stopping.wait(max(0.0, min(next_tick, last_refresh + REFRESH_S) - time.monotonic())):
            closed = False
            if time.monotonic() >= next_tick:
                next_tick = time.monotonic() + self.cfg.tick_s
                closed = self._tick()
            if closed or time.monotonic() >= last_refresh + REFRESH_S:
                self._refresh()
                last_refresh = time.monotonic()

    def _tick(self) -> bool:
        try:
            results = self.monitor.tick()
            for result in results:
                self._export(result)
            self.failures = 0
            return bool(results)
        except Exception:
            self.failures += 1
            logger.exception("monitor tick failed (%d in a row)", self.failures)
            return False

    def _refresh(self) -> None:
        try:
            started = time.perf_counter()
            self.exported_series = self.series.refresh(self._freshness)
            for rule, count in self.monitor.alerts.firing_by_rule().items():
                self.firing.set(count, tags={"rule": rule})
            self.refresh_s = time.perf_counter() - started
            self.refresh_failures = 0
        except Exception:
            self.refresh_failures += 1
            logger.exception("monitor: metrics refresh failed (%d in a row)", self.refresh_failures)

    def _freshness(self, version: str) -> list[Series]:
        if self.freshness is None:
            return []
        return [("rayml_model_age_seconds" if kind == "model" else "rayml_training_data_age_seconds",
                 {"version": version}, age) for kind, age in self.freshness.ages(version).items()]

    def _put(self, version: str, window_end: float, group: str, series: list[Series]) -> None:
        was = set(self.series.versions())
        for gone in self.series.put(version, window_end, group, series):
            if self.freshness is not None:
                self.freshness.forget(gone)
            if gone in was:
                logger.info("monitor: %s is no longer among the %d most recent versions; its series are no longer "
                            "exported", gone, self.cfg.max_versions)
            if gone in self.monitor.open_versions():
                logger.warning("monitor: %s still serves but is beyond max_versions=%d, so its series are not "
                               "exported; raise max_versions", gone, self.cfg.max_versions)

    def _export(self, result: dict[str, Any]) -> None:
        version, kind = str(result["version"]), result.get("kind")
        window_end = float(result.get("window_end") or 0.0)
        if kind in ("performance", "estimated"):
            if result.get("status") == "ok":
                self._put(version, window_end, "delayed" if kind == "performance" else "estimated",
                          performance_series(result))
            return
        self._put(version, window_end, "window", [("rayml_monitor_rows", {"version": version}, float(result["rows"]))])
        if kind == "tested":
            self._put(version, window_end, "drift", drift_series(result))

    async def ingest(self, message: dict[str, Any]) -> int:
        return self.monitor.ingest(message)

    def status(self) -> dict[str, Any]:
        return {**self.monitor.status(), "tick_failures": self.failures,
                "exported": {"versions": self.series.versions(), "max_versions": self.cfg.max_versions,
                             "series": self.exported_series, "refresh_s": self.refresh_s}}

    def results(self, last: int = 20) -> list[dict[str, Any]]:
        return self.monitor.results[-last:]

    def check_health(self) -> None:
        if not self.thread.is_alive():
            raise RuntimeError("monitor thread died")
        if self.failures >= 5:
            raise RuntimeError(f"monitor: {self.failures} failed ticks in a row")
        if self.refresh_failures >= 5:
            raise RuntimeError(f"monitor: {self.refresh_failures} failed metrics refreshes in a row")


def drift_series(result: dict[str, Any]) -> list[Series]:
    """Drift statistic and p-value per (feature, test), and data quality per (feature, check), of a tested window."""
    version = str(result["version"])
    out: list[Series] = []
    for row in drift_rows(result):
        tags = {"version": version, "feature": row["feature"], "test": row["test"]}
        if row["statistic"] is not None:
            out.append(("rayml_drift_score", tags, float(row["statistic"])))
        p = row["adjusted_p_value"] if row["adjusted_p_value"] is not None else row["p_value"]
        if p is not None:
            out.append(("rayml_drift_p_value", tags, float(p)))
    profiles = result.get("profile") or {}
    for feature, checks in ((result.get("quality") or {}).get("features") or {}).items():
        for check, value in {**checks, **sketched_quality(profiles.get(feature))}.items():
            if check in QUALITY_CHECKS and value is not None:
                out.append(("rayml_data_quality", {"version": version, "feature": str(feature), "check": str(check)},
                            float(value)))
    return out


def sketched_quality(profile: dict[str, Any] | None) -> dict[str, float]:
    """A window's quality rates from the replicas' merged profiles (``profile_summary``), which cover every sampled
    row where the reservoir's quality report covers a sample of them; they win where both have a rate."""
    if not profile:
        return {}
    out = {check: float(profile[check]) for check in ("missing_rate", "out_of_range_rate", "new_category_rate")
           if profile.get(check) is not None}
    if profile.get("distinct") is not None:
        out["cardinality"] = float(round(profile["distinct"]))
    return out


def performance_series(result: dict[str, Any]) -> list[Series]:
    """Finite performance values of an ``ok`` delayed (``source=delayed``) or estimated window."""
    version = str(result["version"])
    if result["kind"] == "estimated":
        values = {metric: interval["value"] for metric, interval in result["estimated"].items()}
        source = "estimated"
    else:
        values = dict(result.get("metrics") or {})
        recal = result.get("recalibration") or {}
        values["recalibration_slope"] = recal.get("slope")
        values["recalibration_p_value"] = recal.get("p_value")
        values["auc_drop"] = (result.get("auc_drop") or {}).get("relative_drop")
        source = "delayed"
    return [("rayml_model_performance", {"version": version, "metric": metric, "source": source}, float(value))
            for metric, value in values.items() if value is not None and math.isfinite(value)]


MonitorService = serve.deployment(name="Monitor", num_replicas=1, ray_actor_options={"num_cpus": 0.1})(
    MonitorDeployment)


def build_monitor(args: MonitorArgs) -> Application:
    return MonitorService.bind(args.model_dump())
