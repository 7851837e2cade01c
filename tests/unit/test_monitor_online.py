"""The monitor on an injected clock: event-time windows, served baselines, drift caught and alerted, bad rows
counted, state that survives a restart; the replica tap's one-message-a-second shipping."""

from __future__ import annotations

import time

import numpy as np
import pytest

from rayml.monitoring.alerts import AlertRule
from rayml.monitoring.online import Monitor, MonitorConfig, drift_rows
from rayml.monitoring.tap import MonitorTap, sample_rate_update
from tests.clock import Clock

pytestmark = pytest.mark.unit
HOUR = 3600.0
T0 = 1_800_000_000.0 - 1_800_000_000.0 % HOUR



def _message(rng, start: float, n: int, shift: float = 0.0, nan_every: int = 0) -> dict:
    ts = start + rng.random(n) * HOUR
    age = rng.normal(40 + 10 * shift, 10, n)
    if nan_every:
        age[::nan_every] = np.nan
    return {"replica": "r1", "columns": {
        "ts": ts.tolist(), "version": ["ranker:v1"] * n, "age": age.tolist(),
        "income": rng.lognormal(3, 0.5, n).tolist(), "region": rng.choice(["n", "s", "e", "w"], n).tolist(),
        "score_max": rng.beta(2, 20, n).tolist()}}


def _config(tmp_path, **kw) -> MonitorConfig:
    rules = [AlertRule(name="feature-drift", signal="drift.family", op=">=", threshold=1, k=2, n=3),
             AlertRule(name="psi", signal="drift.psi", op=">", threshold=0.2, k=1, n=1)]
    return MonitorConfig(window_s=HOUR, grace_s=60, baseline_windows=2, min_rows=200, rules=rules,
                         state_dir=str(tmp_path / "monitor"), **kw)


def test_a_day_replayed_baseline_then_no_alarm_then_drift_caught_within_a_window(tmp_path):
    rng = np.random.default_rng(0)
    clock = Clock(T0)
    monitor = Monitor(_config(tmp_path), clock=clock)
    results = []
    started = time.perf_counter()
    for hour in range(24):  # one simulated day of hourly windows in well under a second per window
        drifting = hour >= 12
        monitor.ingest(_message(rng, T0 + hour * HOUR, 2_000, shift=0.5 if drifting else 0.0))
        clock.now = T0 + (hour + 1) * HOUR + 61
        results += monitor.tick()
    assert time.perf_counter() - started < 30
    kinds = [r["kind"] for r in results]
    assert kinds[:2] == ["baseline", "baseline"] and set(kinds[2:]) == {"tested"}
    quiet, drifted = results[2:12], results[12:]
    assert not any(r["drift"]["drifted"] for r in quiet)
    assert all(r["drift"]["drifted"] for r in drifted)  # caught in the first window after onset
    first = {row["feature"]: row for row in drift_rows(drifted[0]) if row["test"] == "ks"}
    assert first["age"]["drifted"] and not first["income"]["drifted"]
    fired = [a for r in results for a in r["alerts"] if a["status"] == "firing"]
    assert {a["rule"] for a in fired} == {"feature-drift", "psi"}
    assert min(a["at"] for a in fired if a["rule"] == "feature-drift") == drifted[1]["window_end"]  # 2 of 3
    assert monitor.status()["firing"]["feature-drift"] == 1


def test_bad_rows_late_rows_and_nan_features_are_counted_never_raised(tmp_path):
    rng = np.random.default_rng(1)
    clock = Clock(T0)
    monitor = Monitor(_config(tmp_path), clock=clock)
    assert monitor.ingest({"replica": "x", "columns": {"ts": [1.0, 2.0], "version": ["v"]}}) == 0
    assert monitor.ingest({"replica": "x"}) == 0
    message = _message(rng, T0, 500, nan_every=10)
    message["columns"]["ts"][0] = "not a time"
    assert monitor.ingest(message) == 499
    assert monitor.bad_rows == 3
    clock.now = T0 + HOUR + 61
    [result] = monitor.tick()
    assert result["missing"]["age"] == 49  # every 10th, less the bad row 0
    assert monitor.ingest(_message(rng, T0, 10)) == 0 and monitor.late_rows == 10  # its window has closed


def test_state_survives_a_restart(tmp_path):
    rng = np.random.default_rng(2)
    clock = Clock(T0)
    monitor = Monitor(_config(tmp_path), clock=clock)
    for hour in range(2):
        monitor.ingest(_message(rng, T0 + hour * HOUR, 1_000))
    clock.now = T0 + 2 * HOUR + 61
    assert [r["kind"] for r in monitor.tick()] == ["baseline", "baseline"]
    again = Monitor(_config(tmp_path), clock=clock)  # a replaced monitor replica
    assert again.baseline_done == {"ranker:v1": 2} and len(again.results) == 2
    again.ingest(_message(rng, T0 + 2 * HOUR, 1_000, shift=1.0))
    clock.now = T0 + 3 * HOUR + 61
    [tested] = again.tick()
    assert tested["kind"] == "tested" and tested["drift"]["drifted"]


def test_the_tap_ships_at_most_one_message_a_second_off_the_request_path():
    sent: list[dict] = []
    tap = MonitorTap(1.0, sent.append, send_every_s=0.2, max_rows=100)
    for i in range(150):
        tap.add({"ts": float(i), "version": "v"})
    assert tap.dropped_rows == 50  # a full buffer drops (counted)
    time.sleep(0.5)
    tap.stop()
    assert len(sent) == 1 and len(sent[0]["columns"]["ts"]) == 100

    def down(message: dict) -> None:
        raise ConnectionError("monitor down")

    failing = MonitorTap(1.0, down, send_every_s=60)
    failing.add({"ts": 1.0, "version": "v"})
    failing.flush()
    assert failing.send_errors == 1 and failing.dropped_rows == 1
    failing.stop()


def test_a_live_sample_rate_is_checked_and_names_its_key():
    assert sample_rate_update({}) is None
    assert sample_rate_update({"monitor_sample_rate": 0}) == 0.0
    assert sample_rate_update({"monitor_sample_rate": 0.25}) == 0.25
    for bad in (1.5, -0.1, "0.5", True):
        with pytest.raises(ValueError, match=r"user_config\.monitor_sample_rate: .* is not a number in \[0, 1\]"):
            sample_rate_update({"monitor_sample_rate": bad})
