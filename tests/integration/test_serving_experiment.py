"""An A/B experiment served by the real app: users split by the experiment's hash into arms that serve different
ranker versions, answers name the arm, clicks come back with the request_id, and `rayml experiment export` turns
the outcome log into per-user results that `rayml experiment analyze` reads."""

from __future__ import annotations

import json
import shutil
import time

import pytest
import requests
from typer.testing import CliRunner

from rayml.cli import app as cli
from rayml.registry import ModelRegistry
from tests.integration.test_serving_swap import copy_version

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def experiment_app(serve_url, trained, recommender_args, tmp_path_factory):
    from ray import serve

    from rayml.serving.app import Recommender
    from rayml.serving.config import ExperimentServing, RolloutServing, load_serving_repo

    registry, _ = trained
    root = tmp_path_factory.mktemp("experiment") / "registry"
    shutil.copytree(registry.root, root, ignore=shutil.ignore_patterns("_rollout"))
    own = ModelRegistry(root)
    treatment = copy_version(own, "production", "experiment treatment")
    own.set_alias("ranker", "treatment", treatment)
    outcomes = root.parent / "outcomes"
    experiment = ExperimentServing(name="ranker-ab", arms=[{"name": "control", "weight_pct": 50},
                                                            {"name": "treatment", "weight_pct": 50,
                                                             "alias": "treatment"}])
    args = recommender_args.model_copy(update={
        "registry": str(root), "ranker_aliases": ["treatment"], "event_log": None, "feature_log": None,
        "alias_poll_s": 0.5,  # the poll thread also flushes the outcome buffers
        "rollout": RolloutServing(outcomes=str(outcomes), flush_s=0.5, experiment=experiment)})
    serve.run(Recommender.options(ray_actor_options={"num_cpus": 0.25}).bind(
        args.model_dump(), load_serving_repo(args).model_dump()), name="ab", route_prefix="/ab")
    yield f"{serve_url}/ab", outcomes, f"ranker:v{treatment}", own.get("ranker", "production").label
    serve.delete("ab")


def test_arms_are_stable_per_user_serve_their_alias_and_export_to_analyze(experiment_app, tmp_path):
    url, outcomes, treatment_version, control_version = experiment_app
    arms: dict[int, set[str]] = {}
    with requests.Session() as session:
        for _ in range(2):
            for user in range(120):
                r = session.post(f"{url}/recommend", json={"user_id": user, "k": 5}, timeout=10)
                assert r.status_code == 200, r.text
                answer = r.json()
                arms.setdefault(user, set()).add(answer["experiment_arm"])
                expected = treatment_version if answer["experiment_arm"] == "treatment" else control_version
                assert answer["model_version"] == expected, answer
                if user % 3 == 0:
                    click = {"user_id": user, "item_id": answer["items"][0], "clicked": True,
                             "request_id": answer["request_id"]}
                    assert session.post(f"{url}/events", json={"events": [click]}, timeout=10).status_code == 200
    assert all(len(a) == 1 for a in arms.values()), "a user changed arms"
    share = sum("treatment" in a for a in arms.values()) / len(arms)
    assert 0.3 < share < 0.7, share
    out = tmp_path / "users.parquet"
    runner = CliRunner()
    deadline = time.monotonic() + 30  # the replica's poll flushes its buffers; the attribution window is 1 s
    while True:
        time.sleep(1)
        export = runner.invoke(cli, ["experiment", "export", "--outcomes", str(outcomes), "--experiment",
                                     "ranker-ab", "--out", str(out), "--attribution-window-s", "1"])
        if "120 users" in export.output or time.monotonic() > deadline:
            break
    assert export.exit_code == 0 and "120 users" in export.output, export.output
    analyzed = runner.invoke(cli, ["experiment", "analyze", str(out), "--primary", "ctr", "--guardrail", "errors",
                                   "--control", "control", "--json"])
    assert analyzed.exit_code == 0, analyzed.output
    result = json.loads(analyzed.output)
    assert (result["control"], result["treatment"]) == ("control", "treatment"), result
    assert {m["metric"]: m["role"] for m in result["metrics"]} == {"ctr": "primary", "errors": "guardrail"}
    missing = runner.invoke(cli, ["experiment", "export", "--outcomes", str(outcomes), "--experiment", "nope",
                                  "--out", str(out)])
    assert missing.exit_code == 2 and "no mature requests of experiment 'nope'" in missing.output
