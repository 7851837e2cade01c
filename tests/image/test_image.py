"""The built image, run: it answers its liveness endpoint, its HEALTHCHECK passes, it runs as uid 1000, and
`podman stop` (SIGTERM to tini, PID 1) ends it within the shutdown bound.  `pytest -m image` (outside `make test`).

The image is ``$RAYML_IMAGE`` (default ``localhost/rayml:0.1.0-cpu``), built by ``cluster/docker/rehearsal-build.sh``
when missing. ``$RAYML_PODMAN`` is the podman command line (default: vfs storage and runc, as that script builds).
Data is mounted, never baked in: the test world's registry, candidates and online state go in as a volume.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import requests

from rayml.serving.launcher import SHUTDOWN_BOUND_S
from tests.conftest import MEASURED, REPO, free_port
from tests.e2e.test_serve_run import (
    demo_layout,  # noqa: F401 (a fixture)
    shipped_config_on_free_ports,
    tokens_of,
)
from tests.image import dockerfile as df

pytestmark = [pytest.mark.image, pytest.mark.slow]

IMAGE = os.environ.get("RAYML_IMAGE", "localhost/rayml:0.1.0-cpu")
PODMAN = shlex.split(os.environ.get("RAYML_PODMAN", "podman --storage-driver vfs --runtime runc"))
STOP_GRACE_S = SHUTDOWN_BOUND_S + 10  # what docs/deploy-image.md tells `docker stop -t` and Kubernetes to allow


def podman(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([*PODMAN, *args], capture_output=True, text=True, timeout=timeout, check=check)


def logs(name: str) -> str:
    out = podman("logs", name, check=False)
    return (out.stdout + out.stderr)[-6000:]


@pytest.fixture(scope="module")
def image() -> str:
    if shutil.which(PODMAN[0]) is None:
        pytest.skip(f"{PODMAN[0]} is not installed (see docs/deploy-image.md)")
    if podman("image", "exists", IMAGE, check=False).returncode != 0:
        build = subprocess.run([str(REPO / "cluster" / "docker" / "rehearsal-build.sh")], env=os.environ | {
            "IMAGE": IMAGE}, capture_output=True, text=True, timeout=3600)
        assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    return IMAGE


def test_image_serves_its_health_endpoint_and_stops_within_the_bound(image, demo_layout, tmp_path):  # noqa: F811
    # The demo layout's data, symlinks resolved (a volume cannot follow links out of itself), writable by uid 1000.
    data = tmp_path / "data"
    shutil.copytree(demo_layout / ".rayml", data, symlinks=False)
    for path in [data, *data.rglob("*")]:
        path.chmod(0o777 if path.is_dir() else 0o666)
    config_path, port = shipped_config_on_free_ports(tmp_path)
    stats, metrics = free_port(), free_port()
    health_url = f"http://127.0.0.1:{port}/v2/health/live"
    name = f"rayml-image-test-{os.getpid()}"
    workdir = df.runtime().last("WORKDIR").args
    run = podman(
        "run", "-d", "--name", name, "--network", "host", "--shm-size", "1g",
        # HAProxy raises its FD limit to ~10k; this sandbox refuses rlimits at its hard limit (20000), so ask for less.
        "--ulimit", "nofile=16384:16384", "--ulimit", "nproc=4096:4096",
        "-v", f"{data}:{workdir}/.rayml", "-v", f"{config_path}:/config/recommender.yaml:ro",
        "-e", f"RAY_SERVE_HAPROXY_STATS_PORT={stats}", "-e", f"RAY_SERVE_HAPROXY_METRICS_PORT={metrics}",
        "-e", f"RAYML_HEALTH_URL={health_url}",
        image, "/config/recommender.yaml", check=False)
    assert run.returncode == 0, run.stderr
    try:
        deadline = time.monotonic() + 300
        live = None
        while time.monotonic() < deadline:
            state = podman("inspect", "--format", "{{.State.Status}}", name).stdout.strip()
            assert state == "running", logs(name)
            try:
                live = requests.get(health_url, timeout=5)
                if live.status_code == 200:
                    break
            except requests.RequestException:
                pass
            time.sleep(2)
        assert live is not None and live.status_code == 200, logs(name)
        assert live.json() == {"live": True}
        token = tokens_of(demo_layout)["read"]
        answer = requests.post(f"http://127.0.0.1:{port}/recommend", json={"user_id": 3, "k": 4}, timeout=30,
                               headers={"Authorization": f"Bearer {token}"})
        assert answer.status_code == 200 and len(answer.json()["items"]) == 4, answer.text
        assert podman("healthcheck", "run", name, check=False).returncode == 0, "the image's HEALTHCHECK fails"
        assert podman("exec", name, "id", "-u").stdout.strip() == "1000"
        started = time.monotonic()
        podman("stop", "-t", str(STOP_GRACE_S), name, timeout=STOP_GRACE_S + 30)
        elapsed = time.monotonic() - started
        exit_code = podman("inspect", "--format", "{{.State.ExitCode}}", name).stdout.strip()
        assert exit_code == "0", f"exit {exit_code} (137: killed at the grace period, not drained)"
        assert elapsed <= SHUTDOWN_BOUND_S, f"podman stop took {elapsed:.1f}s (bound {SHUTDOWN_BOUND_S}s)"
        size = int(podman("image", "inspect", "--format", "{{.Size}}", image).stdout.strip())
        MEASURED["image podman stop (SIGTERM to tini) to exit"] = f"{elapsed:.1f}s (bound {SHUTDOWN_BOUND_S}s)"
        MEASURED["image size (uncompressed, podman image inspect)"] = f"{size / 1e9:.2f} GB"
    finally:
        podman("rm", "-f", "-t", "0", name, check=False)
        Path(config_path).unlink(missing_ok=True)
