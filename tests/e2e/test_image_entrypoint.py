"""The image's entrypoint outside a container: the exact ENTRYPOINT of cluster/Dockerfile (tini → `rayml serve`),
with the image's ENV, answers, passes the image's own HEALTHCHECK command, and after SIGTERM (what `docker stop` and
Kubernetes send to PID 1) leaves nothing behind within the Edge issue's SHUTDOWN_BOUND_S.

The command is read from the Dockerfile, so the two cannot drift apart. Only what exists in the image and not on the
host is mapped: PATH (the image's /opt/venv/bin is this venv's bin) and the files the runtime stage COPYs in.
The CMD is replaced by a test config, as `docker run rayml:cpu <config>` does: the image's default (the production
config) needs /mnt/rayml volumes, Redis and a GPU node.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import requests

from rayml.serving.launcher import SHUTDOWN_BOUND_S
from tests.conftest import MEASURED, REPO, free_port
from tests.e2e.conftest import cli_env, pids_with_marker
from tests.e2e.test_serve_run import (  # the demo layout and the helpers of the Edge issue's SIGTERM test
    cli_process,
    demo_layout,  # noqa: F401 (a fixture)
    port_is_free,
    shipped_config_on_free_ports,
    tokens_of,
    wait_for_recommendation,
)
from tests.image import dockerfile as df

pytestmark = pytest.mark.e2e

HOST_ONLY = ("PATH", "HOME", "VIRTUAL_ENV")  # image paths; the host run keeps its own


def image_env() -> dict[str, str]:
    return {k: v for k, v in df.env(df.runtime()).items() if k not in HOST_ONLY}


def on_host(argv: list[str]) -> list[str]:
    """Map the files the runtime stage COPYs in (e.g. /opt/rayml/healthcheck.py) to the repository's."""
    copies = df.copies(df.runtime())
    return [str(REPO / copies[arg]) if arg in copies else arg for arg in argv]


def test_image_entrypoint_serves_passes_its_healthcheck_and_drains_on_sigterm(demo_layout, tmp_path):  # noqa: F811
    entrypoint, image_cmd = df.entrypoint_and_cmd()
    assert entrypoint[0] == "tini" and image_cmd, "see tests/unit/test_container_image.py"
    tini = shutil.which("tini")
    # tini is Debian's (the image installs it from there); without it here, run what tini would exec.
    command = entrypoint if tini else entrypoint[entrypoint.index("--") + 1:]
    config_path, port = shipped_config_on_free_ports(tmp_path)
    stats, metrics = free_port(), free_port()
    health_url = f"http://127.0.0.1:{port}/v2/health/live"
    env = image_env() | {
        "RAY_SERVE_HAPROXY_STATS_PORT": str(stats), "RAY_SERVE_HAPROXY_METRICS_PORT": str(metrics),
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": "{tmp}/haproxy/haproxy.cfg",  # HAProxy's command line names the run
        "RAYML_HEALTH_URL": health_url,
        # In a container tini is PID 1, so orphans reparent to it; here it registers as subreaper to do the same.
        "TINI_SUBREAPER": "1",
    }
    log_path = tmp_path / "entrypoint.log"
    tokens = tokens_of(demo_layout)
    with cli_process([*command, str(config_path)], demo_layout, log_path, env) as (process, ray_tmp):
        wait_for_recommendation(port, process, tokens["read"])
        assert requests.get(f"http://127.0.0.1:{port}/healthz", timeout=10).json()["ingress"] == "haproxy"

        health = df.exec_form(df.runtime().last("HEALTHCHECK"))
        health_env = cli_env() | {"RAYML_HEALTH_URL": health_url}
        probe = subprocess.run(on_host(health), env=health_env, capture_output=True, text=True, timeout=30)
        assert probe.returncode == 0, f"the image's HEALTHCHECK fails on a live app: {probe.stdout}{probe.stderr}"

        started = time.monotonic()
        process.send_signal(signal.SIGTERM)  # to tini, as `docker stop` does to PID 1
        assert process.wait(timeout=SHUTDOWN_BOUND_S + 5) == 0, log_path.read_text()[-3000:]
        while pids_with_marker(ray_tmp) and time.monotonic() - started < SHUTDOWN_BOUND_S + 5:
            time.sleep(0.2)
        elapsed = time.monotonic() - started
        left = pids_with_marker(ray_tmp)
        assert left == [], f"left behind after SIGTERM: {[Path(f'/proc/{p}/cmdline').read_bytes()[:120] for p in left]}"
        assert elapsed <= SHUTDOWN_BOUND_S, f"took {elapsed:.1f}s (bound {SHUTDOWN_BOUND_S}s)"
        assert port_is_free(port) and port_is_free(stats) and port_is_free(metrics)
        assert "stopped" in log_path.read_text()
        after = subprocess.run(on_host(health), env=health_env, capture_output=True, text=True, timeout=30)
        assert after.returncode == 1, "the HEALTHCHECK passes with nothing listening"
        how = " ".join(entrypoint) if tini else f"{' '.join(command)} (tini not installed here)"
        MEASURED["image ENTRYPOINT SIGTERM to every process gone"] = \
            f"{elapsed:.1f}s (bound {SHUTDOWN_BOUND_S}s; {how})"
