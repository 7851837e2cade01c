"""batch_jobs/profile_features.py refuses bad input before it starts Ray, naming the option (exit 2)."""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import typer
from typer.testing import CliRunner

from tests.conftest import REPO

runner = CliRunner()


@pytest.fixture(scope="module")
def cli() -> typer.Typer:
    spec = importlib.util.spec_from_file_location("profile_features_entry", REPO / "batch_jobs" / "profile_features.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    app = typer.Typer()
    app.command()(module.main)
    return app


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("profile-cli")
    rng = np.random.default_rng(0)
    pq.write_table(pa.table({"x": rng.normal(size=100), "city": ["a", "b"] * 50}), folder / "part-0.parquet")
    return str(folder)


@pytest.mark.parametrize(("extra", "message"), [
    (["--registry", "{reg}"], "--registry needs --model and --version"),
    (["--kind", "nightly"], "--kind: must be one of"),
    (["--k", "4"], "--k: must be at least 8, got 4"),
    (["--columns", "x,nope"], "no columns ['nope']"),
    (["--registry", "{reg}", "--model", "ranker", "--version", "3"], "model 'ranker' has no versions"),
])
def test_bad_options_exit_2_naming_them(cli, source, tmp_path, extra, message) -> None:
    extra = [arg.replace("{reg}", str(tmp_path / "registry")) for arg in extra]
    result = runner.invoke(cli, ["--source", source, "--out", str(tmp_path / "p.bin"), *extra])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert not (tmp_path / "p.bin").exists()  # nothing written


def test_missing_source_names_it(cli, tmp_path) -> None:
    missing = str(tmp_path / "nowhere")
    result = runner.invoke(cli, ["--source", missing, "--out", str(tmp_path / "p.bin")])
    assert result.exit_code == 2, result.output
    assert f"--source {missing}" in result.output
