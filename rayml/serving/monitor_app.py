"""The monitor as a one-replica Serve deployment (its own application, no HTTP route of its own).

Recommender replicas send it sampled rows (``ingest``, at most one message per replica per second, fire and
forget); a thread closes windows every ``tick_s`` and exports the results through ``ray.util.metrics`` (Ray
dashboard, Prometheus endpoint):

- ``rayml_drift_score`` and ``rayml_drift_p_value`` {version, feature, test};
- ``rayml_data_quality`` {version, feature, check};
- ``rayml_alerts_firing`` {rule};
- ``rayml_monitor_rows`` {version} (rows of the latest closed window);
- ``rayml_model_performance`` {version, metric, source}: ``source=delayed`` from labels joined in the outcome
  log once a window is mature (ctr, ndcg@k, mrr@k, precision, recall, f1, auc, priors, recalibration slope and
  p-value, auc_drop), ``source=estimated`` from the scores before labels (CBPE: ctr, precision, recall, f1);
- ``rayml_model_age_seconds`` and ``rayml_training_data_age_seconds`` {version} (freshness, from the registry:
  the version's ``created_at`` and its lineage's ``data_end``), with ``registry`` set.

Tag cardinality is bounded by version × feature × test: the preset's tests are fixed per feature, and only the
versions that serve produce rows.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import threading
import time
from typing import Any

from pydantic import Field
from ray import serve
from ray.serve import Application
from ray.util import metrics

from rayml.config import StrictModel
from rayml.monitoring.online import Monitor, MonitorConfig, drift_rows
from rayml.registry import ModelRegistry, RegistryError

logger = logging.getLogger("ray.serve")


QUALITY_CHECKS = ("missing_rate", "out_of_range_rate", "new_category_rate", "cardinality")


class MonitorArgs(StrictModel):
    monitor: MonitorConfig
    tick_s: float = Field(1.0, gt=0, le=3600, description="How often windows are closed and metrics exported.")
    registry: str | None = Field(None, description="Registry root, for the freshness of the served versions.")


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


class MonitorDeployment:
    def __init__(self, args: dict) -> None:
        cfg = MonitorArgs.model_validate(args)
        self.cfg = cfg
        self.monitor = Monitor(cfg.monitor)
        self.drift_score = metrics.Gauge("rayml_drift_score", "Drift statistic of the latest closed window.",
                                         tag_keys=("version", "feature", "test"))
        self.drift_p = metrics.Gauge("rayml_drift_p_value", "Corrected p-value of the latest closed window.",
                                     tag_keys=("version", "feature", "test"))
        self.quality = metrics.Gauge("rayml_data_quality", "Data-quality rate of the latest closed window.",
                                     tag_keys=("version", "feature", "check"))
        self.firing = metrics.Gauge("rayml_alerts_firing", "Alerts firing now, per rule.", tag_keys=("rule",))
        self.rows = metrics.Gauge("rayml_monitor_rows", "Rows of the latest closed window.", tag_keys=("version",))
        self.performance = metrics.Gauge(
            "rayml_model_performance", "Model performance of the latest window: delayed labels or estimated.",
            tag_keys=("version", "metric", "source"))
        self.model_age = metrics.Gauge("rayml_model_age_seconds", "Age of the served version (registry created_at).",
                                       tag_keys=("version",))
        self.data_age = metrics.Gauge("rayml_training_data_age_seconds",
                                      "Age of the served version's training data (lineage data_end).",
                                      tag_keys=("version",))
        self.freshness = Freshness(cfg.registry) if cfg.registry else None
        self.failures = 0
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="monitor", daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while not self.stopping.wait(self.cfg.tick_s):
            try:
                for result in self.monitor.tick():
                    self._export(result)
                for rule, count in self.monitor.alerts.firing_by_rule().items():
                    self.firing.set(count, tags={"rule": rule})
                self.failures = 0
            except Exception:
                self.failures += 1
                logger.exception("monitor tick failed (%d in a row)", self.failures)

    def _export(self, result: dict[str, Any]) -> None:
        version = result["version"]
        if result.get("kind") in ("performance", "estimated"):
            self._export_performance(result)
            return
        if self.freshness is not None:
            for name, value in self.freshness.ages(version).items():
                (self.model_age if name == "model" else self.data_age).set(value, tags={"version": version})
        self.rows.set(result["rows"], tags={"version": version})
        for row in drift_rows(result):
            tags = {"version": version, "feature": row["feature"], "test": row["test"]}
            if row["statistic"] is not None:
                self.drift_score.set(float(row["statistic"]), tags=tags)
            p = row["adjusted_p_value"] if row["adjusted_p_value"] is not None else row["p_value"]
            if p is not None:
                self.drift_p.set(float(p), tags=tags)
        for feature, checks in ((result.get("quality") or {}).get("features") or {}).items():
            for check, value in checks.items():
                if check in QUALITY_CHECKS and value is not None:
                    self.quality.set(float(value), tags={"version": version, "feature": str(feature),
                                                         "check": str(check)})

    def _export_performance(self, result: dict[str, Any]) -> None:
        if result.get("status") != "ok":
            return
        version = result["version"]
        if result["kind"] == "estimated":
            for metric, interval in result["estimated"].items():
                if interval["value"] is not None and math.isfinite(interval["value"]):
                    self.performance.set(interval["value"], tags={"version": version, "metric": metric,
                                                                  "source": "estimated"})
            return
        values = dict(result.get("metrics") or {})
        recal = result.get("recalibration") or {}
        values["recalibration_slope"] = recal.get("slope")
        values["recalibration_p_value"] = recal.get("p_value")
        values["auc_drop"] = (result.get("auc_drop") or {}).get("relative_drop")
        for metric, value in values.items():
            if value is not None and math.isfinite(value):
                self.performance.set(float(value), tags={"version": version, "metric": metric, "source": "delayed"})

    async def ingest(self, message: dict[str, Any]) -> int:
        return self.monitor.ingest(message)

    def status(self) -> dict[str, Any]:
        return {**self.monitor.status(), "tick_failures": self.failures}

    def results(self, last: int = 20) -> list[dict[str, Any]]:
        return self.monitor.results[-last:]

    def check_health(self) -> None:
        if not self.thread.is_alive():
            raise RuntimeError("monitor thread died")
        if self.failures >= 5:
            raise RuntimeError(f"monitor: {self.failures} failed ticks in a row")


MonitorService = serve.deployment(name="Monitor", num_replicas=1, ray_actor_options={"num_cpus": 0.1})(
    MonitorDeployment)


def build_monitor(args: MonitorArgs) -> Application:
    return MonitorService.bind(args.model_dump())
