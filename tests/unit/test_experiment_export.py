"""A served A/B experiment's config is checked at load, and `rayml experiment export` turns the real outcome log
(written by the replicas' logger) into per-user results that `rayml experiment analyze` reads."""

from __future__ import annotations

import json
import uuid

import numpy as np
import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from rayml.cli import app
from rayml.rollout.outcomes import OutcomeLogger
from rayml.serving.config import ExperimentServing

pytestmark = pytest.mark.unit
ARMS = [{"name": "control", "weight_pct": 50}, {"name": "treatment", "weight_pct": 50, "alias": "challenger"}]


def test_bad_experiments_are_refused_naming_the_field():
    with pytest.raises(ValidationError, match="weight_pct sum to 90"):
        ExperimentServing(name="ab", arms=[{**ARMS[0], "weight_pct": 40}, ARMS[1]])
    with pytest.raises(ValidationError, match="names repeat"):
        ExperimentServing(name="ab", arms=[ARMS[0], {**ARMS[1], "name": "control"}])
    with pytest.raises(ValidationError, match="arms"):
        ExperimentServing(name="ab", arms=[{**ARMS[0], "weight_pct": 100}])


def test_an_arm_must_serve_a_served_alias(tmp_path):
    from rayml.serving.config import RecommenderArgs

    base = {"registry": str(tmp_path), "candidates": str(tmp_path), "features": str(tmp_path / "f.yaml"),
            "feature_state": str(tmp_path)}
    rollout = {"outcomes": str(tmp_path / "o"), "experiment": {"name": "ab", "arms": ARMS}}
    with pytest.raises(ValidationError, match=r"rollout.experiment.arms.1.alias: 'challenger' is not served"):
        RecommenderArgs.model_validate({**base, "rollout": rollout})
    args = RecommenderArgs.model_validate({**base, "rollout": rollout, "ranker_aliases": ["challenger"]})
    assert args.rollout is not None and args.rollout.experiment is not None


def _log_experiment(path, rng: np.random.Generator, users: int = 400) -> None:
    log = OutcomeLogger(path)
    for user in range(users):
        arm = "treatment" if user % 2 else "control"
        ctr = 0.12 if arm == "treatment" else 0.10
        for visit in range(3):
            rid, ts = uuid.uuid4().hex, 1_000.0 + user + visit * 0.1
            items = rng.choice(10_000, 10, replace=False)
            log.served(rid, ts, "", user, "production", "ranker:v1", 200, 4.0, items.tolist(),
                       experiment="ab", experiment_arm=arm)
            for item in items[rng.random(10) < ctr]:
                log.clicked(rid, ts + 5.0, user, int(item))
    log.flush()


def test_export_then_analyze(tmp_path):
    _log_experiment(tmp_path / "outcomes", np.random.default_rng(0))
    out = tmp_path / "users.csv"
    runner = CliRunner()
    export = runner.invoke(app, ["experiment", "export", "--outcomes", str(tmp_path / "outcomes"), "--experiment",
                                 "ab", "--out", str(out), "--attribution-window-s", "60", "--before", "5000"])
    assert export.exit_code == 0, export.output
    assert "400 users (control 200, treatment 200)" in export.output
    import pandas as pd

    users = pd.read_csv(out)
    assert (users["requests"] == 3).all() and (users["impressions"] == 30).all()
    assert users.groupby("arm")["ctr"].mean()["treatment"] > users.groupby("arm")["ctr"].mean()["control"]
    analyzed = runner.invoke(app, ["experiment", "analyze", str(out), "--primary", "ctr", "--control", "control",
                                   "--json"])
    assert analyzed.exit_code == 0, analyzed.output
    assert json.loads(analyzed.output)["treatment"] == "treatment"


def test_export_bad_input(tmp_path):
    runner = CliRunner()
    args = ["experiment", "export", "--experiment", "ab", "--before", "5000"]
    nothing = runner.invoke(app, [*args, "--outcomes", str(tmp_path / "none"), "--out", str(tmp_path / "u.csv")])
    assert nothing.exit_code == 2 and "no outcome log here" in nothing.output
    _log_experiment(tmp_path / "outcomes", np.random.default_rng(1), users=20)
    suffix = runner.invoke(app, [*args, "--outcomes", str(tmp_path / "outcomes"), "--out", str(tmp_path / "u.txt")])
    assert suffix.exit_code == 2 and "must end in .parquet or .csv" in suffix.output
    early = runner.invoke(app, ["experiment", "export", "--experiment", "ab", "--before", "1000", "--outcomes",
                                str(tmp_path / "outcomes"), "--out", str(tmp_path / "u.csv")])
    assert early.exit_code == 2 and "no mature requests of experiment 'ab'" in early.output
    log = OutcomeLogger(tmp_path / "outcomes")
    log.served("x", 1_001.0, "", 3, "production", "ranker:v1", 200, 1.0, [1], experiment="ab",
               experiment_arm="control")  # user 3 was in treatment: the arms changed mid-experiment
    log.flush()
    moved = runner.invoke(app, [*args, "--outcomes", str(tmp_path / "outcomes"), "--out", str(tmp_path / "u.csv")])
    assert moved.exit_code == 2 and "1 users were served by more than one arm" in moved.output
