"""Kill the training driver mid-run (and its whole local Ray), run it again: training resumes, not restarts."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import MEASURED, REPO
from tests.e2e.conftest import BIN, cli_env, kill_pids, kill_session, pids_with_marker

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
EPOCHS = 12


def checkpoint_epochs(run_dir: Path) -> list[int]:
    epochs = []
    for state in run_dir.glob("checkpoint_*/state.pt"):
        try:
            epochs.append(torch.load(state, map_location="cpu", weights_only=False)["epoch"])
        except Exception:  # a checkpoint being written right now
            continue
    return sorted(epochs)


def committed_epoch(run_dir: Path) -> int | None:
    """The epoch of the last checkpoint Ray Train committed (its checkpoint manager's snapshot): where a rerun resumes.

    A checkpoint directory can be on disk before the controller registers it; on a loaded machine two can be.
    """
    try:
        snapshot = json.loads((run_dir / "checkpoint_manager_snapshot.json").read_text())
    except (OSError, ValueError):  # not written yet, or being written right now
        return None
    latest = snapshot.get("latest_checkpoint_result")
    return None if latest is None else int(latest["metrics"]["epoch"])


def test_killed_driver_resumes_from_last_checkpoint(tiny_world, tmp_path):
    storage = tmp_path / "train"
    ray_tmp = tempfile.mkdtemp(prefix="/tmp/rk")
    cmd = [str(BIN / "python"), str(REPO / "tests" / "e2e" / "train_driver.py"), str(tiny_world.path),
           str(storage), "resume-test", str(EPOCHS)]
    env = cli_env() | {"RAY_TMPDIR": ray_tmp}
    try:
        first = subprocess.Popen(cmd, cwd=REPO, env=env, start_new_session=True,
                                 stdout=(tmp_path / "first.log").open("w"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 240
        run_dir = storage / "resume-test"
        while time.monotonic() < deadline and (committed_epoch(run_dir) or 0) < 1:
            assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            time.sleep(0.5)
        kill_session(first.pid)  # the driver and the local Ray it started: as if the node vanished, its Ray workers included
        first.wait()
        kill_pids(pids_with_marker(ray_tmp))
        done = checkpoint_epochs(run_dir)
        committed = committed_epoch(run_dir)
        assert committed is not None and 1 <= committed < EPOCHS - 1, (committed, done)
        assert committed in done, (committed, done)

        second = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
        assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
        metrics = json.loads(next(line for line in second.stdout.splitlines() if line.startswith("RESULT "))[7:])
        assert metrics["epoch"] == EPOCHS - 1
        assert metrics["resumed_from"] > 0, "training restarted from epoch 0"
        # exactly after the last checkpoint Ray had committed when the driver died
        assert metrics["resumed_from"] == committed + 1, (metrics, committed, done)
        MEASURED["kill-and-resume"] = (
            f"killed with checkpoints of epochs {done} on disk, {committed} the last committed; "
            f"rerun resumed at epoch {metrics['resumed_from']} of {EPOCHS}"
        )
    finally:
        kill_pids(pids_with_marker(ray_tmp))
        shutil.rmtree(ray_tmp, ignore_errors=True)
