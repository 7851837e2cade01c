"""The monitor's exported series (no Ray): only the ``max_versions`` most recent versions are held and re-set, a
version that drops out is never set again, a group is replaced whole, and a bad ``max_versions`` is refused."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from rayml.monitoring.online import Monitor, MonitorConfig
from rayml.serving.monitor_app import MonitorArgs, SeriesTable, drift_series, performance_series

pytestmark = pytest.mark.unit
WINDOW = 60.0
T0 = 1_800_000_000.0 - 1_800_000_000.0 % WINDOW
GAUGES = ("rayml_drift_score", "rayml_drift_p_value", "rayml_data_quality", "rayml_monitor_rows",
          "rayml_model_performance")


class RecordingGauge:
    """Stands in for ``ray.util.metrics.Gauge``: remembers what each refresh set."""

    def __init__(self) -> None:
        self.sets: list[tuple[float, dict[str, str]]] = []

    def set(self, value: float, tags: dict[str, str] = ...) -> None:  # type: ignore[assignment]
        self.sets.append((value, dict(tags)))


def _table(max_versions: int) -> tuple[SeriesTable, dict[str, RecordingGauge]]:
    gauges = {name: RecordingGauge() for name in GAUGES}
    return SeriesTable(gauges, max_versions), gauges


def _refreshed(table: SeriesTable, gauges: dict[str, RecordingGauge]) -> dict[str, set[tuple]]:
    for gauge in gauges.values():
        gauge.sets.clear()
    table.refresh()
    return {name: {tuple(sorted(tags.items())) for _, tags in g.sets} for name, g in gauges.items()}


def _rows(rng: np.random.Generator, version: str, start: float, n: int = 300) -> dict:
    return {"replica": "r1", "columns": {
        "ts": (start + rng.random(n) * WINDOW).tolist(), "version": [version] * n,
        "age": rng.normal(40, 10, n).tolist(), "income": rng.lognormal(3, 0.5, n).tolist(),
        "region": rng.choice(["n", "s", "e", "w"], n).tolist()}}


def test_versions_churning_through_a_real_monitor_keep_only_the_last_max_versions(tmp_path):
    """v1..v7, one after the other (a baseline window, then a tested one each), through the real Monitor and the
    shipped preset: the table ends with v5..v7 and at most 3 × features × tests drift series."""
    rng = np.random.default_rng(0)
    now = [T0]
    monitor = Monitor(MonitorConfig(window_s=WINDOW, grace_s=0, baseline_windows=1, min_rows=50,
                                    state_dir=str(tmp_path / "m")), clock=lambda: now[0])
    table, gauges = _table(3)
    seen_versions: list[list[str]] = []
    for k in range(1, 8):
        version = f"ranker:v{k}"
        for w in range(2):
            start = T0 + (2 * k + w) * WINDOW
            monitor.ingest(_rows(rng, version, start))
            now[0] = start + WINDOW
            for result in monitor.tick():
                table.put(version, result["window_end"], "window",
                          [("rayml_monitor_rows", {"version": version}, float(result["rows"]))])
                if result["kind"] == "tested":
                    table.put(version, result["window_end"], "drift", drift_series(result))
        seen_versions.append(table.versions())
        assert len(table.versions()) <= 3
    assert table.versions() == ["ranker:v7", "ranker:v6", "ranker:v5"]
    exported = _refreshed(table, gauges)
    features, tests = {"age", "income", "region"}, {"ks", "psi", "chi2"}  # numeric: KS and PSI; categorical: χ²
    drift = exported["rayml_drift_score"]
    assert {dict(t)["version"] for t in drift} == {"ranker:v5", "ranker:v6", "ranker:v7"}
    assert {dict(t)["feature"] for t in drift} == features and {dict(t)["test"] for t in drift} == tests
    assert len(drift) == 3 * 5 <= 3 * len(features) * len(tests)  # age, income: ks + psi; region: chi2
    assert len(exported["rayml_drift_p_value"]) == 3 * 3  # PSI has no p-value
    assert len(exported["rayml_data_quality"]) <= 3 * len(features) * 4
    assert {dict(t)["version"] for t in exported["rayml_monitor_rows"]} == {"ranker:v5", "ranker:v6", "ranker:v7"}
    assert seen_versions[0] == ["ranker:v1"] and seen_versions[3] == ["ranker:v4", "ranker:v3", "ranker:v2"]


def test_a_dropped_version_is_never_set_again_and_a_late_result_does_not_bring_it_back():
    table, gauges = _table(2)
    rows = lambda v, n: [("rayml_monitor_rows", {"version": v}, n)]  # noqa: E731
    assert table.put("v1", 100, "window", rows("v1", 1.0)) == []
    assert table.put("v2", 200, "window", rows("v2", 2.0)) == []
    before = _refreshed(table, gauges)["rayml_monitor_rows"]
    assert before == {(("version", "v1"),), (("version", "v2"),)}
    assert table.put("v3", 300, "window", rows("v3", 3.0)) == ["v1"]
    assert _refreshed(table, gauges)["rayml_monitor_rows"] == {(("version", "v2"),), (("version", "v3"),)}
    # v1's delayed labels mature after it left: older than every kept version, so it is not exported
    late = {"kind": "performance", "status": "ok", "version": "v1", "window_end": 100.0, "metrics": {"ctr": 0.1}}
    assert table.put("v1", 100, "delayed", performance_series(late)) == ["v1"]
    after = _refreshed(table, gauges)
    assert after["rayml_model_performance"] == set()
    assert all(dict(t)["version"] != "v1" for series in after.values() for t in series)
    # a version that serves again (a rollback) comes back with its new windows
    assert table.put("v1", 400, "window", rows("v1", 4.0)) == ["v2"]
    assert table.versions() == ["v1", "v3"]


def test_a_group_is_replaced_whole_so_a_feature_the_latest_window_lacks_is_gone():
    table, gauges = _table(1)
    table.put("v1", 100, "drift", [("rayml_drift_score", {"version": "v1", "feature": f, "test": "ks"}, 0.1)
                                   for f in ("a", "b")])
    table.put("v1", 100, "window", [("rayml_monitor_rows", {"version": "v1"}, 10.0)])
    table.put("v1", 200, "drift", [("rayml_drift_score", {"version": "v1", "feature": "a", "test": "ks"}, 0.3)])
    exported = _refreshed(table, gauges)
    assert exported["rayml_drift_score"] == {(("feature", "a"), ("test", "ks"), ("version", "v1"))}
    assert gauges["rayml_drift_score"].sets == [(0.3, {"version": "v1", "feature": "a", "test": "ks"})]
    assert exported["rayml_monitor_rows"] == {(("version", "v1"),)}  # other groups stay
    with pytest.raises(ValueError, match="unknown gauges"):
        table.put("v1", 300, "drift", [("rayml_drift_scor", {"version": "v1"}, 1.0)])


def test_ties_keep_the_greater_version_so_the_choice_never_flaps():
    table, _ = _table(2)
    for v in ("b", "c", "a"):
        table.put(v, 100, "window", [("rayml_monitor_rows", {"version": v}, 1.0)])
    assert table.versions() == ["c", "b"]


@pytest.mark.parametrize("bad", [0, -1, 51, "three", 2.5, None])
def test_an_invalid_max_versions_is_refused_naming_the_field(tmp_path, bad):
    with pytest.raises(ValidationError) as info:
        MonitorArgs.model_validate({"monitor": {"state_dir": str(tmp_path)}, "max_versions": bad})
    assert [e["loc"] for e in info.value.errors()] == [("max_versions",)]
    assert "max_versions" in str(info.value)
    with pytest.raises(ValueError, match="max_versions: got 0"):
        SeriesTable({}, 0)


def test_max_versions_defaults_to_three(tmp_path):
    assert MonitorArgs.model_validate({"monitor": {"state_dir": str(tmp_path)}}).max_versions == 3
