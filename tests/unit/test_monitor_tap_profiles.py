"""Replicas pre-aggregate sampled rows into mergeable profiles; the monitor merges every replica's into its windows.

Real sketches (datasketches) end to end: the merged profile of two replicas' messages equals the exact figures of
all their rows (counts and moments exactly, quantiles within the KLL rank error), out-of-range and new-category
rates are measured against the served baseline, and bad, late or unaligned profiles are counted, never fatal.
"""

from __future__ import annotations

import numpy as np
import pytest

from rayml.monitoring.online import Monitor, MonitorConfig
from rayml.monitoring.sketches import Profile
from rayml.monitoring.tap import MonitorTap, bucket_profiles
from tests.clock import Clock

pytestmark = pytest.mark.unit
HOUR = 3600.0
T0 = 1_800_000_000.0 - 1_800_000_000.0 % HOUR



def _rows(rng, start: float, n: int, shift: float = 0.0, regions=("n", "s", "e", "w")) -> list[dict]:
    age = rng.normal(40 + shift, 10, n)
    age[::50] = np.nan  # 2 % missing
    ts = start + rng.random(n) * 20  # 20 one-second buckets of the window
    region = rng.choice(list(regions), n)
    return [{"ts": float(ts[i]), "version": "ranker:v1", "request_id": f"r{i}", "age": float(age[i]),
             "region": str(region[i]), "score_max": float(rng.beta(2, 20))} for i in range(n)]


def _ship(rows: list[dict], replica: str, chunk: int = 500) -> list[dict]:
    """What a replica's tap sends for ``rows``: one message per ``chunk`` rows (one a second in service)."""
    sent: list[dict] = []
    tap = MonitorTap(1.0, sent.append, replica=replica, send_every_s=3600, bucket_s=1.0)
    try:
        for start in range(0, len(rows), chunk):
            for row in rows[start:start + chunk]:
                tap.add(row)
            tap.flush()
    finally:
        tap.stop()
    assert tap.profile_errors == 0 and tap.sent_rows == len(rows)
    return sent


def _monitor(tmp_path, clock) -> Monitor:
    return Monitor(MonitorConfig(window_s=HOUR, grace_s=60, baseline_windows=1, min_rows=100, reservoir=300,
                                 state_dir=str(tmp_path / "monitor"), rules=[]), clock=clock)


def test_two_replicas_profiles_merge_into_the_exact_figures_of_every_row(tmp_path):
    rng = np.random.default_rng(1)
    clock = Clock(T0)
    monitor = _monitor(tmp_path, clock)
    a, b = _rows(rng, T0, 3_000), _rows(rng, T0, 2_000)
    for message in _ship(a, "r1") + _ship(b, "r2"):
        monitor.ingest(message)
    assert monitor.status()["profiles"]["merged"] > 0 and monitor.status()["profiles"]["bad"] == 0
    clock.now = T0 + HOUR + 61
    (result,) = monitor.tick()
    assert result["kind"] == "baseline" and result["rows"] == result["profile_rows"] == 5_000
    age = np.array([r["age"] for r in a + b])
    summary = result["profile"]["age"]
    assert summary["rows"] == 5_000 and summary["missing_rate"] == pytest.approx(np.isnan(age).mean(), abs=1e-12)
    finite = age[np.isfinite(age)]
    assert summary["mean"] == pytest.approx(finite.mean(), rel=1e-9)
    assert summary["std"] == pytest.approx(finite.std(), rel=1e-9)
    assert summary["min"] == finite.min() and summary["max"] == finite.max()
    rank = np.searchsorted(np.sort(finite), summary["p50"]) / len(finite)  # the sketch's median, ranked exactly
    assert abs(rank - 0.5) <= summary["rank_error"] + 1 / len(finite)
    region = result["profile"]["region"]
    assert region["distinct"] == pytest.approx(4, abs=0.5) and {c for c, _ in region["top"]} == {"n", "s", "e", "w"}
    assert "score_max" in result["profile"] and "request_id" not in result["profile"] and "ts" not in result["profile"]
    # the reservoir holds 300 rows; the profile covers all 5,000
    assert len(monitor.baselines["ranker:v1"]) == 300


def test_a_tested_window_reports_out_of_range_and_new_categories_against_the_served_baseline(tmp_path):
    rng = np.random.default_rng(2)
    clock = Clock(T0)
    monitor = _monitor(tmp_path, clock)
    baseline = _rows(rng, T0, 2_000)
    for message in _ship(baseline, "r1"):
        monitor.ingest(message)
    clock.now = T0 + HOUR + 61
    monitor.tick()
    restarted = _monitor(tmp_path, clock)  # the baseline's profile survives a restart
    current = _rows(rng, T0 + HOUR, 2_000, shift=25.0, regions=("n", "s", "mars"))
    for message in _ship(current, "r1"):
        restarted.ingest(message)
    clock.now = T0 + 2 * HOUR + 61
    (result,) = restarted.tick()
    assert result["kind"] == "tested"
    lo, hi = np.nanmin([r["age"] for r in baseline]), np.nanmax([r["age"] for r in baseline])
    age = np.array([r["age"] for r in current])
    finite = age[np.isfinite(age)]
    exact = float(((finite < lo) | (finite > hi)).mean())
    assert exact > 0.05  # the shift moved a visible share out of the baseline's range
    assert result["profile"]["age"]["out_of_range_rate"] == pytest.approx(exact, abs=2 * result["profile"]["age"]["rank_error"])
    mars = np.mean([r["region"] == "mars" for r in current])
    assert result["profile"]["region"]["new_category_rate"] == pytest.approx(mars, abs=1e-9)


def test_bad_late_and_unaligned_profiles_are_counted_and_the_rows_still_count(tmp_path):
    rng = np.random.default_rng(3)
    clock = Clock(T0)
    monitor = _monitor(tmp_path, clock)
    (message,) = _ship(_rows(rng, T0, 300), "r1", chunk=300)
    good = message["profiles"][0]
    message["profiles"] += [{**good, "profile": b"not a profile"}, {"version": "ranker:v1"},
                            {**good, "bucket_s": 7.0, "bucket": int((T0 + HOUR - 3) // 7)},  # straddles the hour
                            {**good, "bucket_s": 0}]
    assert monitor.ingest(message) == 300
    counts = monitor.status()["profiles"]
    assert counts == {"merged": len(message["profiles"]) - 4, "late": 0, "bad": 3, "unaligned": 1}
    clock.now = T0 + HOUR + 61
    monitor.tick()
    monitor.ingest({"replica": "r1", "columns": {"ts": [], "version": []}, "profiles": [good]})  # its window closed
    assert monitor.status()["profiles"]["late"] == 1


def test_buckets_split_by_version_and_event_time_and_a_bad_value_loses_no_rows():
    rows = [{"ts": T0 + 0.5, "version": "a", "age": 1.0}, {"ts": T0 + 1.5, "version": "a", "age": 2.0},
            {"ts": T0 + 0.7, "version": "b", "age": None}]
    columns = {k: [r.get(k) for r in rows] for k in ("ts", "version", "age")}
    profiles, schema = bucket_profiles(columns, 1.0)
    assert schema == {"age": "numeric"}
    later, extended = bucket_profiles({"ts": [T0], "version": ["a"], "age": [3.0], "region": ["n"]}, 1.0,
                                      {"age": "numeric", "income": "numeric"})
    assert extended == {"age": "numeric", "income": "numeric", "region": "categorical"}  # typed once seen
    profile = Profile.deserialize(later[0]["profile"])
    assert profile["income"].missing_rate == 1.0 and profile["region"].rows == 1  # known but absent: missing
    _, kept = bucket_profiles({"ts": [T0], "version": ["a"], "age": [1.0], "note": [None]}, 1.0, {"age": "numeric"})
    assert kept == {"age": "numeric"}  # an all-null column has no type yet: it joins when a message types it
    assert [(p["version"], p["bucket"] - int(T0), p["rows"]) for p in profiles] == [("a", 0, 1), ("a", 1, 1), ("b", 0, 1)]
    sent: list[dict] = []
    tap = MonitorTap(1.0, sent.append, send_every_s=3600)
    try:
        tap.add({"ts": T0, "version": "a", "age": 1.0})
        tap.flush()  # fixes the schema: age is numeric
        tap.add({"ts": T0, "version": "a", "age": "forty"})
        tap.flush()
    finally:
        tap.stop()
    assert tap.profile_errors == 1 and tap.sent_rows == 2 and "profiles" not in sent[1]
    assert sent[1]["columns"]["age"] == ["forty"]
    rows_only: list[dict] = []
    untyped = MonitorTap(1.0, rows_only.append, send_every_s=3600, bucket_s=None)  # profile_bucket_s: null
    try:
        untyped.add({"ts": T0, "version": "a", "age": 1.0})
        untyped.flush()
    finally:
        untyped.stop()
    assert rows_only == [{"replica": "local", "columns": {"ts": [T0], "version": ["a"], "age": [1.0]}}]
    assert untyped.schema is None and untyped.profile_errors == 0


def test_exported_quality_rates_come_from_the_profiles_where_a_window_has_them():
    from rayml.serving.monitor_app import drift_series

    result = {"version": "ranker:v1", "drift": {}, "psi": {},
              "quality": {"features": {"age": {"missing_rate": 0.5, "out_of_range_rate": 0.1},
                                       "region": {"missing_rate": 0.0, "cardinality": 3}}},
              "profile": {"age": {"kind": "numeric", "missing_rate": 0.02, "out_of_range_rate": 0.07},
                          "region": {"kind": "categorical", "missing_rate": 0.0, "distinct": 4.02,
                                     "new_category_rate": 0.25}}}
    exported = {(tags["feature"], tags["check"]): value for name, tags, value in drift_series(result)
                if name == "rayml_data_quality"}
    assert exported == {("age", "missing_rate"): 0.02, ("age", "out_of_range_rate"): 0.07,
                        ("region", "missing_rate"): 0.0, ("region", "cardinality"): 4.0,
                        ("region", "new_category_rate"): 0.25}
    del result["profile"]  # rows only (profile_bucket_s: null): the reservoir's report
    exported = {(tags["feature"], tags["check"]): value for name, tags, value in drift_series(result)
                if name == "rayml_data_quality"}
    assert exported[("age", "missing_rate")] == 0.5 and exported[("region", "cardinality")] == 3
