"""Batch scoring as users run it: `ray job submit`, a killed-and-restarted driver, and a lost worker node.

Each asserts the same thing at the end: exactly one output row per input entity, no id missing or repeated.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from tests.conftest import MEASURED, REPO, free_port
from tests.e2e.conftest import BIN, cli_env, kill_pids, kill_session, pids_with_marker

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
FEATURES = [f"f{j}" for j in range(16)]


@pytest.fixture(scope="module")
def entities(tmp_path_factory):
    """24 shards × 40k entities with 16 float features, and a registry holding an entity scorer for them."""
    from rayml.features import FeatureEncoder
    from rayml.models.entity_scorer import MLPScorer, publish_entity_scorer
    from rayml.registry import ModelRegistry

    root = tmp_path_factory.mktemp("scoring")
    data = root / "entities"
    data.mkdir()
    rng = np.random.default_rng(0)
    for i in range(24):
        ids = np.arange(i * 40_000, (i + 1) * 40_000)
        pq.write_table(pa.table({"entity_id": ids, **{f: rng.normal(size=len(ids)) for f in FEATURES}}),
                       data / f"part-{i:03d}.parquet")
    registry = ModelRegistry(root / "registry")
    sample = pq.read_table(data / "part-000.parquet")
    encoder = FeatureEncoder.fit(sample, "entity_id")
    torch.manual_seed(0)
    version = publish_entity_scorer(registry, "scorer", MLPScorer(encoder.width, (256, 128)), encoder,
                                    encoder.transform(sample.slice(0, 512)), {})
    registry.set_alias("scorer", "production", version.version)
    config = root / "job.yaml"
    config.write_text(yaml.safe_dump({
        "input": str(data), "registry": str(registry.root), "model": "scorer", "output": str(root / "unused"),
        "id_column": "entity_id", "batch_size": 8192, "actors": {"min_size": 2, "max_size": 2, "num_cpus": 0.5},
    }))
    return config, data, 24 * 40_000


def summary_line(stdout: str) -> dict:
    """The job's JSON summary (Ray may interleave its own log lines on the driver's stdout)."""
    return json.loads(next(line for line in reversed(stdout.splitlines()) if line.startswith('{"output"')))


def assert_exact(output: Path, rows: int) -> None:
    ids = pq.read_table(output, columns=["entity_id"])["entity_id"].to_numpy()
    assert len(ids) == rows, f"{len(ids)} rows for {rows} entities"
    assert np.array_equal(np.sort(ids), np.arange(rows)), "an entity is missing or scored twice"


def committed(output: Path) -> int:
    return len(list(output.glob("part-*.parquet")))


def test_scoring_job_under_ray_job_submit(ray_cluster, entities, tmp_path):
    config, _, rows = entities
    output = tmp_path / "scores"
    submit = [str(BIN / "ray"), "job", "submit", "--address", ray_cluster, "--working-dir", ".", "--",
              "python", "batch_jobs/score_entities.py", "--config", str(config), "--output", str(output)]
    result = subprocess.run(submit, cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=420)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    job_id = re.search(r"Job '(raysubmit_\w+)' succeeded", log).group(1)
    status = subprocess.run([str(BIN / "ray"), "job", "status", "--address", ray_cluster, job_id],
                            cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=60)
    assert "SUCCEEDED" in status.stdout + status.stderr or f"Job '{job_id}' succeeded" in status.stdout + status.stderr
    summary = summary_line(log)
    assert summary["rows_in"] == summary["rows_out"] == rows and summary["shards"] == 24
    assert "MapBatches(ShardScorer)" in log  # Ray Data's per-operator stats are printed
    assert_exact(output, rows)


def test_unknown_version_fails_the_submitted_job_before_any_work(ray_cluster, entities, tmp_path):
    config, _, _ = entities
    output = tmp_path / "scores"
    submit = [str(BIN / "ray"), "job", "submit", "--address", ray_cluster, "--working-dir", ".", "--",
              "python", "batch_jobs/score_entities.py", "--config", str(config), "--output", str(output),
              "--version", "7"]
    result = subprocess.run(submit, cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "scorer" in result.stdout + result.stderr and "7" in result.stdout + result.stderr
    assert not output.exists()


def test_killed_driver_rerun_scores_each_entity_exactly_once(entities, tmp_path):
    config, _, rows = entities
    output = tmp_path / "scores"
    ray_tmp = tempfile.mkdtemp(prefix="/tmp/rs")
    cmd = [str(BIN / "python"), "batch_jobs/score_entities.py", "--config", str(config), "--output", str(output)]
    env = cli_env() | {"RAY_TMPDIR": ray_tmp}
    try:
        first = subprocess.Popen(cmd, cwd=REPO, env=env, start_new_session=True,
                                 stdout=(tmp_path / "first.log").open("w"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and committed(output) < 3:
            assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            time.sleep(0.05)
        kill_session(first.pid)  # the driver and its local Ray, mid-job, its Ray workers included
        first.wait()
        kill_pids(pids_with_marker(ray_tmp))
        done = committed(output)
        assert 3 <= done < 24, f"{done} shards committed when killed"
        half_written = len(list(output.rglob(".*.tmp")))  # shards the killed writers never finished
        second = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
        assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
        summary = summary_line(second.stdout)
        assert summary["shards_skipped"] >= done and summary["rows_out"] == rows
        assert summary["stale_temporaries_removed"] == half_written
        assert not list(output.rglob(".*.tmp")), "temporary files left behind"
        assert_exact(output, rows)
        MEASURED["batch kill-and-resume"] = (f"killed with {done}/24 shards committed and {half_written} half-written; "
                                             f"rerun skipped {summary['shards_skipped']}, removed the half-written")
    finally:
        kill_pids(pids_with_marker(ray_tmp))
        shutil.rmtree(ray_tmp, ignore_errors=True)


def scorer_actors_under(raylet: int) -> list[int]:
    """PIDs of Ray Data scoring actors whose parent is ``raylet`` (i.e. running on that node)."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if ppid == raylet and b"ShardScorer" in (entry / "cmdline").read_bytes():
                pids.append(int(entry.name))
        except (OSError, ValueError, IndexError):
            continue
    return pids


def test_losing_the_spot_worker_node_mid_job_loses_and_duplicates_nothing(entities, tmp_path):
    """A head and a `spot` worker node on this box; the worker's raylet is killed while the job runs."""
    config, data, rows = entities
    output = tmp_path / "scores"
    temp_dir = tempfile.mkdtemp(prefix="/tmp/rn")
    port = free_port()
    marker = f"spot_{os.getpid()}_{port}"  # a resource name unique to this worker node: finds its raylet by PID
    env = cli_env()
    try:
        head = [str(BIN / "ray"), "start", "--head", f"--port={port}", "--num-cpus=1", "--include-dashboard=false",
                f"--object-store-memory={300 * 1024 * 1024}", f"--temp-dir={temp_dir}", "--disable-usage-stats"]
        started = subprocess.run(head, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
        assert started.returncode == 0, started.stdout + started.stderr
        worker = [str(BIN / "ray"), "start", f"--address=127.0.0.1:{port}", "--num-cpus=1",
                  f"--resources={json.dumps({'spot': 1, marker: 1})}", f"--object-store-memory={200 * 1024 * 1024}",
                  "--disable-usage-stats"]
        started = subprocess.run(worker, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
        assert started.returncode == 0, started.stdout + started.stderr
        # Pinned by a custom resource, the actors run only on the spot node.
        small = tmp_path / "small"
        small.mkdir()
        for part in sorted(data.glob("part-*.parquet"))[:2]:
            shutil.copy(part, small / part.name)
        pinned = tmp_path / "pinned.yaml"
        pinned.write_text(yaml.safe_dump(yaml.safe_load(config.read_text()) | {
            "input": str(small), "actors": {"min_size": 1, "max_size": 1, "num_cpus": 0.5, "resources": {marker: 0.5}}}))
        address = {"RAY_ADDRESS": f"127.0.0.1:{port}"}
        run = subprocess.run([str(BIN / "python"), "batch_jobs/score_entities.py", "--config", str(pinned), "--output",
                              str(tmp_path / "pinned")], cwd=REPO, env=env | address, capture_output=True, text=True,
                             timeout=300)
        assert run.returncode == 0, run.stderr[-3000:]
        spot_node = subprocess.run([str(BIN / "python"), "-c", "import ray; ray.init(); print([n['NodeID'] for n in "
                                    f"ray.nodes() if n['Alive'] and '{marker}' in n['Resources']][0])"],
                                   cwd=REPO, env=env | address, capture_output=True, text=True, timeout=120)
        manifest = json.loads((tmp_path / "pinned" / "_manifest.json").read_text())
        assert {r["node_id"] for r in manifest["per_shard"]} == {re.findall(r"\b[0-9a-f]{56}\b", spot_node.stdout)[-1]}

        one_per_node = tmp_path / "job.yaml"  # 0.6 CPU each: one actor on each 1-CPU node
        one_per_node.write_text(yaml.safe_dump(yaml.safe_load(config.read_text()) | {
            "actors": {"min_size": 2, "max_size": 2, "num_cpus": 0.6}}))
        cmd = [str(BIN / "python"), "batch_jobs/score_entities.py", "--config", str(one_per_node), "--output", str(output)]
        job = subprocess.Popen(cmd, cwd=REPO, env=env | address, start_new_session=True,
                               stdout=(tmp_path / "job.out").open("w"), stderr=(tmp_path / "job.err").open("w"))
        raylets = [p for p in pids_with_marker(marker) if b"raylet" in Path(f"/proc/{p}/cmdline").read_bytes()]
        assert len(raylets) == 1, raylets
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not (committed(output) >= 2 and scorer_actors_under(raylets[0])):
            assert job.poll() is None, (tmp_path / "job.err").read_text()[-3000:]
            time.sleep(0.05)
        assert scorer_actors_under(raylets[0]), "no scoring actor ran on the worker node"
        os.kill(raylets[0], signal.SIGKILL)  # the spot node is reclaimed while its actor is working
        done = committed(output)
        assert job.wait(timeout=400) == 0, (tmp_path / "job.err").read_text()[-3000:]
        summary = summary_line((tmp_path / "job.out").read_text())
        assert summary["rows_in"] == summary["rows_out"] == rows
        assert not list(output.rglob(".*.tmp")), "the lost node's half-written shards were left behind"
        assert_exact(output, rows)
        MEASURED["batch node loss"] = f"worker raylet killed with {done}/24 shards committed; output exact"
    finally:
        kill_pids(pids_with_marker(temp_dir))
        kill_pids(pids_with_marker(marker))
        shutil.rmtree(temp_dir, ignore_errors=True)
