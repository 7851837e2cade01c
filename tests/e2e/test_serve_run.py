"""`serve run <config.yaml>` as a user runs it: a real process, a real request, a clean Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest
import requests
import yaml

from tests.conftest import REPO, free_port
from tests.e2e.conftest import BIN, cli_env, kill_pids, pids_with_marker

pytestmark = pytest.mark.e2e


def test_serve_run_answers_and_stops_cleanly(trained, tiny_world, tmp_path):
    """Same YAML as shipped, with ports and data paths pointed at the test world."""
    registry, _ = trained

    config = yaml.safe_load((REPO / "serve_apps" / "recommender.yaml").read_text())
    port = free_port()
    config["http_options"]["port"] = port
    config["grpc_options"] = {"port": free_port()}
    args = config["applications"][0]["args"]
    cands = tmp_path / "candidates"
    subprocess.run(
        [str(BIN / "python"), "batch_jobs/generate_candidates.py", "--config", "configs/batch/candidates.yaml",
         "--users", str(tiny_world.path / "users"), "--registry", str(registry.root), "--output", str(cands)],
        cwd=REPO, env=cli_env(), check=True, capture_output=True, timeout=300,
    )
    args.update(registry=str(registry.root), candidates=str(cands), users=str(tiny_world.path / "users"),
                items=str(tiny_world.path / "items.parquet"))
    config_path = tmp_path / "recommender.yaml"
    config_path.write_text(yaml.safe_dump(config))
    temp_dir = f"/tmp/rs{port}"
    env = cli_env() | {"RAY_TMPDIR": temp_dir}
    process = subprocess.Popen(
        [str(BIN / "serve"), "run", str(config_path)], cwd=REPO, env=env, start_new_session=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        deadline = time.monotonic() + 180
        body = None
        while time.monotonic() < deadline and process.poll() is None:
            try:
                response = requests.post(f"http://127.0.0.1:{port}/recommend", json={"user_id": 3, "k": 4}, timeout=5)
                if response.status_code == 200:
                    body = response.json()
                    break
            except requests.ConnectionError:
                pass
            time.sleep(1)
        assert body is not None, "serve run never answered"
        assert body["user_id"] == 3 and len(body["items"]) == 4 and body["model_version"] == "ranker:v1"
        os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        output, _ = process.communicate(timeout=60)
        assert "Got KeyboardInterrupt, shutting down" in output
        time.sleep(2)
        assert pids_with_marker(temp_dir) == [], "Ray processes left behind after Ctrl-C"
    finally:
        if process.poll() is None:
            process.kill()
        kill_pids(pids_with_marker(temp_dir))
