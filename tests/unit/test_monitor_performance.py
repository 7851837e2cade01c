"""Delayed-label performance in the monitor: the real outcome log (Parquet written by the replicas' logger) read
on an injected clock. Estimates come when a window closes, labels only once it is mature; a concept change fires
the concept alert while an unchanged model does not; the state survives a restart; bad logs never crash it."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pytest

from rayml.monitoring.delayed import PerformanceConfig
from rayml.monitoring.metrics import roc_auc
from rayml.monitoring.online import Monitor, MonitorConfig
from rayml.rollout.outcomes import OutcomeLogger
from tests.clock import Clock

pytestmark = pytest.mark.unit
T0 = 1_800_000_000.0  # a window boundary for window_s = 600
WINDOW, ATTRIBUTION, GRACE = 600.0, 300.0, 5.0
VERSION = "ranker:v1"



def _config(tmp_path: Path, **performance) -> MonitorConfig:
    return MonitorConfig(window_s=WINDOW, grace_s=GRACE, state_dir=str(tmp_path / "state"),
                         performance=PerformanceConfig(outcomes=str(tmp_path / "outcomes"),
                                                       attribution_window_s=ATTRIBUTION, threshold=0.3, k=5,
                                                       min_impressions=200, **performance))


def _serve_window(log: OutcomeLogger, rng: np.random.Generator, start: float, requests: int = 150,
                  concept: bool = False, scores: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """``requests`` slates of 5 items in [start, start + WINDOW); clicks drawn from the scores (calibrated) or,
    under a concept change, from scores the model no longer predicts (its ranking reversed)."""
    ys, ps = [], []
    for i in range(requests):
        rid = uuid.uuid4().hex
        ts = start + (i + 0.5) * WINDOW / requests
        p = np.sort(rng.uniform(0.02, 0.7, 5))[::-1]
        truth = p[::-1] if concept else p
        clicked = rng.random(5) < truth
        items = rng.choice(10_000, 5, replace=False)
        log.served(rid, ts, "", user_id=i, arm="production", model_version=VERSION, status=200, latency_ms=3.0,
                   items=items.tolist(), scores=p.tolist() if scores else None)
        for item in items[clicked]:
            log.clicked(rid, ts + 60.0, i, int(item))
        ys.append(clicked)
        ps.append(p)
    log.flush()
    return np.concatenate(ys), np.concatenate(ps)


def _by_kind(results, kind):
    return [r for r in results if r.get("kind") == kind]


def test_estimate_at_close_labels_once_mature_and_the_numbers_match(tmp_path):
    clock = Clock(T0 + WINDOW + GRACE)
    log = OutcomeLogger(tmp_path / "outcomes")
    y, p = _serve_window(log, np.random.default_rng(0), T0)
    monitor = Monitor(_config(tmp_path), clock=clock)
    first = monitor.tick()
    (estimate,) = _by_kind(first, "estimated")
    assert estimate["window_start"] == T0 and estimate["impressions"] == 750
    assert abs(estimate["estimated"]["ctr"]["value"] - p.mean()) < 1e-9
    assert not _by_kind(first, "performance")  # clicks may still arrive: not judged yet
    clock.now = T0 + WINDOW + ATTRIBUTION + GRACE
    (result,) = _by_kind(monitor.tick(), "performance")
    assert result["status"] == "ok" and result["requests"] == 150
    assert result["metrics"]["ctr"] == pytest.approx(y.mean())
    assert result["metrics"]["auc"] == pytest.approx(roc_auc(y, p))
    assert result["metrics"]["precision"] == pytest.approx(y[p > 0.3].mean())
    assert result["recalibration"]["status"] == "baseline"
    assert not monitor.tick()  # nothing is evaluated twice


def test_concept_change_fires_the_concept_alert_an_unchanged_model_does_not(tmp_path):
    rng = np.random.default_rng(1)
    log = OutcomeLogger(tmp_path / "outcomes")
    for w in range(8):
        _serve_window(log, rng, T0 + w * WINDOW, concept=w >= 5)
    monitor = Monitor(_config(tmp_path), clock=Clock(T0 + 8 * WINDOW + ATTRIBUTION + GRACE))
    results = _by_kind(monitor.tick(), "performance")
    assert [r["recalibration"]["status"] for r in results] == ["baseline"] + ["tested"] * 7
    p_values = [r["recalibration"]["p_value"] for r in results[1:]]
    assert min(p_values[:4]) > 1e-3 and max(p_values[4:]) < 1e-6, p_values
    fired = [e for r in results for e in r.get("alerts", []) if e["status"] == "firing"]
    assert [e["rule"] for e in fired] == ["concept-drift"]
    assert fired[0]["at"] == T0 + 7 * WINDOW  # the second changed window (2 of 3)
    assert monitor.alerts.firing_by_rule()["concept-drift"] == 1


def test_the_seven_day_auc_drop_rule_on_compressed_days(tmp_path):
    rng = np.random.default_rng(2)
    log = OutcomeLogger(tmp_path / "outcomes")
    for w in range(8):
        _serve_window(log, rng, T0 + w * WINDOW, concept=w >= 4)
    config = _config(tmp_path, day_s=WINDOW, drop_days=2)  # a "day" per window; 2 days against 2 days
    monitor = Monitor(config, clock=Clock(T0 + 8 * WINDOW + ATTRIBUTION + GRACE))
    results = _by_kind(monitor.tick(), "performance")
    assert results[-1]["auc_drop"]["fired"] and results[-1]["auc_drop"]["relative_drop"] > 0.02
    assert monitor.alerts.firing_by_rule()["auc-drop-7d"] == 1


def test_state_survives_a_restart_and_nothing_is_evaluated_twice(tmp_path):
    rng = np.random.default_rng(3)
    log = OutcomeLogger(tmp_path / "outcomes")
    for w in range(3):
        _serve_window(log, rng, T0 + w * WINDOW)
    clock = Clock(T0 + 2 * WINDOW + ATTRIBUTION + GRACE)
    assert len(_by_kind(Monitor(_config(tmp_path), clock=clock).tick(), "performance")) == 2
    clock.now = T0 + 3 * WINDOW + ATTRIBUTION + GRACE
    again = Monitor(_config(tmp_path), clock=clock)  # a replaced monitor replica
    (third,) = _by_kind(again.tick(), "performance")
    assert third["window_start"] == T0 + 2 * WINDOW and third["recalibration"]["status"] == "tested"


def test_logs_without_scores_few_rows_and_a_corrupt_file_never_crash_it(tmp_path, caplog):
    rng = np.random.default_rng(4)
    log = OutcomeLogger(tmp_path / "outcomes")
    _serve_window(log, rng, T0, scores=False)  # written before the log had scores
    _serve_window(log, rng, T0 + WINDOW, requests=10)
    monitor = Monitor(_config(tmp_path), clock=Clock(T0 + 2 * WINDOW + ATTRIBUTION + GRACE))
    results = monitor.tick()
    estimates = _by_kind(results, "estimated")
    assert [e["status"] for e in estimates] == ["too_few_scored", "too_few_scored"]
    first, second = _by_kind(results, "performance")
    assert first["status"] == "ok" and "auc" not in first["metrics"] and first["metrics"]["ctr"] > 0
    assert second["status"] == "too_few_impressions"
    bad = tmp_path / "outcomes" / "requests" / "date=2027-01-15" / "part-bad.parquet"
    bad.parent.mkdir(parents=True, exist_ok=True)
    bad.write_bytes(b"not parquet")
    monitor.clock = Clock(T0 + 3 * WINDOW + ATTRIBUTION + GRACE)
    assert monitor.tick() == []
    assert "outcome log unreadable" in caplog.text
    bad.unlink()
    assert monitor.tick() == []  # the empty window after is skipped, and the monitor goes on


def test_freshness_of_a_served_version_from_the_registry(tmp_path):
    import datetime as dt

    from rayml.registry import ModelRegistry
    from rayml.serving.monitor_app import Freshness

    artifact = tmp_path / "model.onnx"
    artifact.write_bytes(b"weights")
    registry = ModelRegistry(tmp_path / "registry")
    version = registry.register("ranker", {"model.onnx": artifact}, {"lineage": {"data_end": "2026-01-15"}})
    created = dt.datetime.fromisoformat(version.metadata["created_at"]).timestamp()
    now = created + 3600.0
    ages = Freshness(str(tmp_path / "registry")).ages(version.label, now=now)
    assert ages["model"] == pytest.approx(3600.0)
    assert ages["data"] == pytest.approx(now - dt.datetime(2026, 1, 15, tzinfo=dt.UTC).timestamp())
    assert Freshness(str(tmp_path / "registry")).ages("ranker:v9", now=now) == {}  # unknown: no gauge, no crash
