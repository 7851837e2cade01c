"""The local multi-node rehearsal as a user runs it: `python -m rayml.deploy.rehearsal` (what `make rehearsal` runs)
starts a head and a `spot` worker with `ray start`, serves the recommender on both, scores a batch pinned to spot,
loses the worker mid-job and checks exactly-once output; then every process is gone.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from rayml.config import load_config
from rayml.deploy.rehearsal import RehearsalConfig
from rayml.serving.auth import write_demo_tokens
from tests.conftest import MEASURED, REPO
from tests.e2e.conftest import BIN, cli_env, kill_pids, pids_with_marker

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
CONFIG = REPO / "configs" / "rehearsal" / "local.yaml"


@pytest.fixture(scope="module")
def layout(trained, tiny_world, tmp_path_factory) -> Path:
    """A working directory laid out like the repo after `make demo-data`, holding the test world's data."""
    from rayml.models.config import TrainLoop
    from rayml.models.entity_scorer import PROPENSITY, publish_entity_scorer, train_user_propensity
    from rayml.registry import ModelRegistry

    registry, _ = trained
    cwd = tmp_path_factory.mktemp("rehearsal-cwd")
    demo = cwd / ".rayml" / "demo"
    demo.mkdir(parents=True)
    (cwd / "configs").symlink_to(REPO / "configs")
    (demo / "world").symlink_to(tiny_world.path)
    shutil.copytree(registry.root, demo / "registry")  # a copy: the scorer is added to it, not to the shared one
    copy = ModelRegistry(demo / "registry")
    model, encoder, _, sample = train_user_propensity(tiny_world, TrainLoop(epochs=1, batch_size=4096))
    copy.set_alias(PROPENSITY, "production", publish_entity_scorer(copy, PROPENSITY, model, encoder, sample, {}).version)
    for job in (["generate_candidates.py", "--config", str(REPO / "configs/batch/candidates.yaml")],
                ["materialize_features.py", "--config", "configs/features/demo.yaml", "--state-dir", ".rayml/demo/online"]):
        subprocess.run([str(BIN / "python"), str(REPO / "batch_jobs" / job[0]), *job[1:]], cwd=cwd, env=cli_env(),
                       check=True, capture_output=True, timeout=300)
    write_demo_tokens(demo / "tokens.yaml")
    return cwd


def test_shipped_rehearsal_config_loads_through_its_schema():
    config = load_config(CONFIG, RehearsalConfig)
    assert config.spot_pin == {"spot": 0.01} and config.replicas == 2
    assert (REPO / config.serve_config).is_file() and (REPO / config.score_config).is_file()


def test_rehearsal_loses_the_spot_worker_mid_job_and_scores_each_entity_once(layout, tmp_path):
    config = load_config(CONFIG, RehearsalConfig)
    state = Path(tempfile.mkdtemp(prefix="/tmp/rr"))
    out = tmp_path / "out"
    cmd = [str(BIN / "python"), "-m", "rayml.deploy.rehearsal", "--config", str(CONFIG), "--workdir", str(layout),
           "--out", str(out), "--state", str(state)]
    try:
        run = subprocess.run(cmd, cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=600)
        lines = [line for line in run.stdout.splitlines() if line.startswith("{")]
        assert lines, run.stdout[-3000:] + run.stderr[-3000:]
        summary = json.loads(lines[-1])
        assert run.returncode == 0 and summary["ok"], json.dumps(summary, indent=1) + run.stderr[-3000:]

        # Serving: one replica on each node; after the loss, one on the head and one on the replacement.
        assert sorted(summary["serve"]["replica_nodes"]) == ["head", "worker-1"]
        assert sorted(summary["serve"]["replica_nodes_after"]) == ["head", "worker-2"]
        assert summary["serve"]["probe_during_loss"].get("200", 0) > 0, "the head's replica stopped answering"

        # Batch: driven from the head, scored only on spot nodes, killed mid-job, finished on the replacement.
        job, kill = summary["job"], summary["kill"]
        assert job["status"] == "SUCCEEDED" and job["driver_node"] == "head"
        assert set(job["scored_on"]) <= {"worker-1", "worker-2"} and "worker-2" in job["scored_on"]
        assert config.kill_after_shards <= kill["committed_shards"] < config.entities.shards

        # Exactly once, counted by the rehearsal and again here from the files.
        once = summary["exactly_once"]
        assert once["lost"] == once["duplicates"] == once["unknown"] == 0
        assert once["rows_in"] == once["rows_out"] + once["rejected"] == config.entities.rows
        ids = pq.read_table(out / "scores", columns=["entity_id"])["entity_id"].to_numpy()
        assert np.array_equal(np.sort(ids), np.arange(config.entities.rows)), "an entity is missing or scored twice"

        # Teardown by PID: nothing of the run is left, and its folder is gone.
        assert summary["teardown"]["left_pids"] == [] and pids_with_marker(str(state)) == []
        assert not state.exists()
        MEASURED["multi-node rehearsal"] = (
            f"start head {summary['start_s']['head']} s, worker {summary['start_s']['worker-1']} s; serve ready "
            f"{summary['serve']['ready_s']} s; job {job['seconds']} s for {once['rows_in']} rows, worker killed at "
            f"{kill['committed_shards']}/{config.entities.shards} shards; duplicates 0, lost 0; "
            f"probe {summary['serve']['probe_during_loss']}; total {summary['seconds_total']} s")
    finally:
        kill_pids(pids_with_marker(str(state)))
        shutil.rmtree(state, ignore_errors=True)
