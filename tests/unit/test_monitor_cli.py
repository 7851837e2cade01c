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
