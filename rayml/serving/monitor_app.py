"""The monitor as a one-replica Serve deployment (its own application, no HTTP route of its own).

Recommender replicas send it sampled rows (``ingest``, at most one message per replica per second, fire and
forget); a thread closes windows every ``tick_s`` and exports the results through ``ray.util.metrics`` (Ray
dashboard, Prometheus endpoint):

- ``rayml_drift_score`` and ``rayml_drift_p_value`` {version, feature, test};
- ``rayml_data_quality`` {version, feature, check};
- ``rayml_alerts_firing`` {rule};
- ``rayml_monitor_rows`` {version} (rows of the latest closed window).

Tag cardinality is bounded by version × feature × test: the preset's tests are fixed per feature, and only the
versions that serve produce rows.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from pydantic import Field
from ray import serve
from ray.serve import Application
from ray.util import metrics

from rayml.config import StrictModel
from rayml.monitoring.online import Monitor, MonitorConfig, drift_rows

logger = logging.getLogger("ray.serve")


QUALITY_CHECKS = ("missing_rate", "out_of_range_rate", "new_category_rate", "cardinality")


class MonitorArgs(StrictModel):
    monitor: MonitorConfig
    tick_s: float = Field(1.0, gt=0, le=3600, description="How often windows are closed and metrics exported.")


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
