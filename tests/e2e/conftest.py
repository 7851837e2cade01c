"""E2E helpers: real CLI processes (`serve run`, `ray start`, `ray job submit`), stopped by PID."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, free_port

BIN = Path(sys.executable).parent


def cli_env() -> dict[str, str]:
    """Environment whose PATH starts with this venv, so `python` in a job is the same interpreter."""
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.pop("RAY_ADDRESS", None)
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    env["RAY_AUTH_MODE"] = "token"  # Ray 2.60 default for local clusters; explicit so the CLI and cluster agree
    return env


def pids_with_marker(marker: str) -> list[int]:
    """PIDs whose command line contains ``marker`` (a unique ``mkdtemp`` dir), never matched by process name."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmdline:
            pids.append(int(entry.name))
    return pids


def pids_in_session(sid: int) -> list[int]:
    """Live PIDs of session ``sid`` (a process started with ``start_new_session=True``): its whole tree.

    Ray puts each worker process in a process group of its own and renames it (``ray::TrainController.run``), so
    neither ``killpg`` on the driver nor a command-line marker reaches them; the session id does.
    """
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z" and int(fields[3]) == sid:  # state, ppid, pgrp, session
            pids.append(int(entry.name))
    return pids


def kill_session(sid: int, timeout_s: float = 30) -> None:
    """SIGKILL every process of session ``sid`` at once, as a vanished node; returns when none is left."""
    deadline = time.monotonic() + timeout_s
    while pids := pids_in_session(sid):
        if time.monotonic() > deadline:
            raise RuntimeError(f"processes of session {sid} survived SIGKILL: {pids}")
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)


def kill_pids(pids: list[int], grace_s: float = 10) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in pids):
        time.sleep(0.2)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def ray_cluster():
    """A real `ray start --head` cluster on free ports with its own temp dir; yields the dashboard URL."""
    temp_dir = tempfile.mkdtemp(prefix="/tmp/rt")  # short: Ray's unix socket paths have a length limit
    dashboard_port = free_port()
    cmd = [
        str(BIN / "ray"), "start", "--head", f"--port={free_port()}", f"--dashboard-port={dashboard_port}",
        "--dashboard-host=127.0.0.1", f"--dashboard-agent-listen-port={free_port()}",
        f"--ray-client-server-port={free_port()}", "--num-cpus=2", f"--object-store-memory={400 * 1024 * 1024}",
        f"--temp-dir={temp_dir}", "--disable-usage-stats",
    ]
    try:
        started = subprocess.run(cmd, cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=120)
        assert started.returncode == 0, started.stdout + started.stderr
        yield f"http://127.0.0.1:{dashboard_port}"
    finally:
        kill_pids(pids_with_marker(temp_dir))
        shutil.rmtree(temp_dir, ignore_errors=True)
