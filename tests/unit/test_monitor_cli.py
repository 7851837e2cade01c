"""``rayml monitor report`` on files: a drifted feature found and rendered; bad input named; empty windows."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from rayml.cli import app

pytestmark = pytest.mark.unit


def _frame(rng, n: int, shift: float = 0.0) -> pd.DataFrame:
    return pd.DataFrame({"age": rng.normal(40 + 10 * shift, 10, n), "income": rng.lognormal(3, 0.5, n),
                         "region": rng.choice(["n", "s", "e", "w"], n)})


def test_report_finds_the_drifted_feature_and_writes_html_and_json(tmp_path):
    rng = np.random.default_rng(0)
    _frame(rng, 3000).to_parquet(tmp_path / "ref.parquet")
    _frame(rng, 3000, shift=0.5).to_parquet(tmp_path / "cur.parquet")
    out = tmp_path / "report" / "r.html"
    result = CliRunner().invoke(app, ["monitor", "report", "--reference", str(tmp_path / "ref.parquet"),
                                      "--current", str(tmp_path / "cur.parquet"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "drifted: age" in result.output
    html = out.read_text()
    assert html.count('class="drift-row"') >= 3 and "http://" not in html and "<script src" not in html
    summary = json.loads(out.with_suffix(".json").read_text())
    assert {r["feature"] for r in summary["drift"] if r["drifted"] and r["test"] == "ks"} == {"age"}


def test_bad_input_names_the_file_or_the_columns(tmp_path):
    rng = np.random.default_rng(1)
    _frame(rng, 100).to_parquet(tmp_path / "ref.parquet")
    _frame(rng, 100).drop(columns=["income"]).to_csv(tmp_path / "cur.csv", index=False)
    runner = CliRunner()
    missing = runner.invoke(app, ["monitor", "report", "--reference", str(tmp_path / "nope.parquet"),
                                  "--current", str(tmp_path / "cur.csv"), "--out", str(tmp_path / "r.html")])
    assert missing.exit_code == 2 and "nope.parquet: no such file" in missing.output
    mismatch = runner.invoke(app, ["monitor", "report", "--reference", str(tmp_path / "ref.parquet"),
                                   "--current", str(tmp_path / "cur.csv"), "--out", str(tmp_path / "r.html")])
    assert mismatch.exit_code == 2 and "cur.csv" in mismatch.output and "income" in mismatch.output


def test_an_empty_window_says_so(tmp_path):
    rng = np.random.default_rng(2)
    _frame(rng, 100).to_parquet(tmp_path / "ref.parquet")
    _frame(rng, 100).iloc[:0].to_parquet(tmp_path / "cur.parquet")
    out = tmp_path / "r.html"
    result = CliRunner().invoke(app, ["monitor", "report", "--reference", str(tmp_path / "ref.parquet"),
                                      "--current", str(tmp_path / "cur.parquet"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "(empty window)" in result.output and json.loads(out.with_suffix(".json").read_text())["empty"]


def test_performance_over_time_from_the_monitor_results(tmp_path):
    from rayml.monitoring.online import Monitor
    from rayml.rollout.outcomes import OutcomeLogger
    from tests.unit.test_monitor_performance import (
        ATTRIBUTION,
        GRACE,
        T0,
        WINDOW,
        Clock,
        _config,
        _serve_window,
    )

    log = OutcomeLogger(tmp_path / "outcomes")
    for w in range(3):
        _serve_window(log, np.random.default_rng(w), T0 + w * WINDOW)
    monitor = Monitor(_config(tmp_path), clock=Clock(T0 + 3 * WINDOW + ATTRIBUTION + GRACE))
    monitor.tick()
    (tmp_path / "results.json").write_text(json.dumps({"results": monitor.results}))
    rng = np.random.default_rng(3)
    _frame(rng, 500).to_parquet(tmp_path / "ref.parquet")
    _frame(rng, 500).to_parquet(tmp_path / "cur.parquet")
    args = ["monitor", "report", "--reference", str(tmp_path / "ref.parquet"), "--current",
            str(tmp_path / "cur.parquet"), "--out", str(tmp_path / "r.html")]
    result = CliRunner().invoke(app, [*args, "--performance", str(tmp_path / "results.json")])
    assert result.exit_code == 0, result.output
    points = json.loads((tmp_path / "r.json").read_text())["performance"]
    ctr = [p for p in points if p["metric"] == "ctr (ranker:v1)"]
    assert len(ctr) == 3 and all(p["delayed"] is not None and p["estimated"] is not None for p in ctr)
    assert all(p["lo"] <= p["estimated"] <= p["hi"] for p in ctr)
    assert (tmp_path / "r.html").read_text().count('class="perf-chart"') >= 5
    (tmp_path / "bad.json").write_text('{"results": 3}')
    bad = CliRunner().invoke(app, [*args, "--performance", str(tmp_path / "bad.json")])
    assert bad.exit_code == 2 and "bad.json: key 'results' must be a list" in bad.output
    gone = CliRunner().invoke(app, [*args, "--performance", str(tmp_path / "gone.json")])
    assert gone.exit_code == 2 and "gone.json: no such file" in gone.output
