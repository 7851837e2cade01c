"""`serve run <config.yaml>` and `rayml serve` as a user runs them: real processes, real requests, clean Ctrl-C."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import yaml

from rayml.serving.auth import write_demo_tokens
from tests.conftest import MEASURED, REPO, free_port
from tests.e2e.conftest import BIN, cli_env, kill_pids, pids_with_marker

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def demo_layout(trained, tiny_world, tmp_path_factory) -> Path:
    """A working directory laid out like the repo after `make demo-data`, holding the test world's data."""
    registry, _ = trained
    cwd = tmp_path_factory.mktemp("cwd")
    demo = cwd / ".rayml" / "demo"
    demo.mkdir(parents=True)
    (cwd / "serve_apps").symlink_to(REPO / "serve_apps")
    (cwd / "configs").symlink_to(REPO / "configs")
    (demo / "world").symlink_to(tiny_world.path)
    (demo / "registry").symlink_to(registry.root)
    subprocess.run(
        [str(BIN / "python"), str(REPO / "batch_jobs" / "generate_candidates.py"), "--config",
         str(REPO / "configs" / "batch" / "candidates.yaml")],
        cwd=cwd, env=cli_env(), check=True, capture_output=True, timeout=300,
    )
    assert (demo / "candidates" / "_manifest.json").is_file()
    subprocess.run(
        [str(BIN / "python"), str(REPO / "batch_jobs" / "materialize_features.py"), "--config",
         "configs/features/demo.yaml", "--state-dir", ".rayml/demo/online"],
        cwd=cwd, env=cli_env(), check=True, capture_output=True, timeout=300,
    )
    write_demo_tokens(demo / "tokens.yaml")  # where the shipped config's auth reads them (rayml serve writes them)
    return cwd


def tokens_of(layout: Path) -> dict[str, str]:
    return {role: values[0] for role, values in yaml.safe_load((layout / ".rayml/demo/tokens.yaml").read_text()).items()}


def shipped_config_on_free_ports(dest: Path) -> tuple[Path, int]:
    """The shipped YAML unchanged except for its ports (tests may run beside a demo on :8000)."""
    config = yaml.safe_load((REPO / "serve_apps" / "recommender.yaml").read_text())
    port = free_port()
    config["http_options"]["port"] = port
    config["grpc_options"] = {"port": free_port()}
    path = dest / "recommender.yaml"
    path.write_text(yaml.safe_dump(config))
    return path, port


def wait_for_recommendation(port: int, process: subprocess.Popen, token: str, timeout_s: float = 180) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and process.poll() is None:
        try:
            response = requests.post(f"http://127.0.0.1:{port}/recommend", json={"user_id": 3, "k": 4}, timeout=5,
                                     headers={"Authorization": f"Bearer {token}"})
            if response.status_code == 200:
                return response.json()
        except (requests.ConnectionError, requests.Timeout):  # proxy up, replica still starting
            pass
        time.sleep(1)
    raise AssertionError("the app never answered")


def _default_sigint() -> None:
    """Ctrl-C works in the child even when this run was started in the background (`cmd &` in a script ignores
    SIGINT, and children inherit that), as it does in a user's terminal."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@contextlib.contextmanager
def cli_process(cmd: list[str], cwd: Path, log_path: Path,
                extra_env: dict[str, str] | None = None) -> Iterator[tuple[subprocess.Popen, str]]:
    """Run ``cmd`` in its own session with a private RAY_TMPDIR; afterwards kill whatever is left, by PID."""
    ray_tmp = tempfile.mkdtemp(prefix="/tmp/rs")
    env = cli_env() | {"RAY_TMPDIR": ray_tmp} | {k: v.replace("{tmp}", ray_tmp) for k, v in (extra_env or {}).items()}
    process = subprocess.Popen(cmd, cwd=cwd, env=env, start_new_session=True,
                               stdout=log_path.open("w"), stderr=subprocess.STDOUT, preexec_fn=_default_sigint)
    try:
        yield process, ray_tmp
    finally:
        if process.poll() is None:
            process.kill()
        kill_pids(pids_with_marker(ray_tmp))
        shutil.rmtree(ray_tmp, ignore_errors=True)


def check_every_endpoint(base: str, recommendation: dict, tokens: dict[str, str]) -> None:
    """Each endpoint of the shipped app answers over real HTTP (auth on: the admin token has every role)."""
    assert requests.post(f"{base}/recommend", json={"user_id": 3}, timeout=30).status_code == 401

    def ok(method: str, path: str, body=None) -> dict:
        response = requests.request(method, f"{base}{path}", json=body, timeout=30,
                                    headers={"Authorization": f"Bearer {tokens['admin']}"})
        assert response.status_code == 200, (path, response.status_code, response.text[:300])
        return response.json()

    assert ok("GET", "/healthz")["status"] == "ok"
    assert ok("GET", "/readyz")["ready"] is True
    assert "/recommend" in ok("GET", "/openapi.json")["paths"]
    scores = ok("POST", "/score", {"user_id": 3, "item_ids": recommendation["items"]})["scores"]
    assert len(scores) == 4
    assert ok("POST", "/events", {"events": [{"user_id": 3, "item_id": recommendation["items"][0], "clicked": True}]})
    assert ok("GET", "/v2")["name"] == "rayml" and ok("GET", "/v2/health/live")["live"] is True
    assert ok("GET", "/v2/health/ready")["ready"] is True
    for model in ("ranker", "retriever"):
        meta = ok("GET", f"/v2/models/{model}")
        assert ok("GET", f"/v2/models/{model}/ready")["ready"] is True
        spec = meta["inputs"][0]
        width = spec["shape"][1]
        out = ok("POST", f"/v2/models/{model}/versions/{meta['versions'][0]}/infer", {"inputs": [
            {"name": spec["name"], "datatype": "FP32", "shape": [2, width], "data": [0.0] * (2 * width)}]})
        assert out["outputs"][0]["shape"][0] == 2


def test_serve_run_answers_and_stops_cleanly(demo_layout, tmp_path):
    """`serve run` resolves the YAML's relative paths against its working directory, like `make demo`."""
    config_path, port = shipped_config_on_free_ports(tmp_path)
    cmd = [str(BIN / "serve"), "run", str(config_path)]  # no ingress flags: Ray Serve's own HTTP proxy
    tokens = tokens_of(demo_layout)
    with cli_process(cmd, demo_layout, tmp_path / "serve.log") as (process, ray_tmp):
        body = wait_for_recommendation(port, process, tokens["read"])
        assert body["user_id"] == 3 and len(body["items"]) == 4 and body["model_version"] == "ranker:v1"
        check_every_endpoint(f"http://127.0.0.1:{port}", body, tokens)
        assert requests.get(f"http://127.0.0.1:{port}/healthz", timeout=10).json()["ingress"] == "serve-proxy"
        os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        process.wait(timeout=60)
        assert "Got KeyboardInterrupt, shutting down" in (tmp_path / "serve.log").read_text()
        time.sleep(2)
        assert pids_with_marker(ray_tmp) == [], "Ray processes left behind after Ctrl-C"


def test_rayml_serve_prints_a_working_curl_and_stops_on_ctrl_c(demo_layout, tmp_path):
    """What `make demo` runs last: the printed curl works; Ctrl-C exits 0 and leaves no process behind."""
    config_path, port = shipped_config_on_free_ports(tmp_path)
    log_path = tmp_path / "rayml-serve.log"
    cmd = [str(BIN / "rayml"), "serve", str(config_path), "--user-id", "5"]
    with cli_process(cmd, demo_layout, log_path) as (process, ray_tmp):
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and "recommender is ready" not in log_path.read_text():
            assert process.poll() is None, log_path.read_text()[-3000:]
            time.sleep(1)
        curl = next(line for line in log_path.read_text().splitlines() if line.startswith("curl "))
        assert f":{port}/recommend" in curl
        answer = subprocess.run(curl, shell=True, capture_output=True, text=True, timeout=30, check=True).stdout
        assert re.search(r'"user_id":5,"items":\[(\d+,){4}\d+\]', answer), answer
        os.killpg(process.pid, signal.SIGINT)
        assert process.wait(timeout=90) == 0
        assert "stopped" in log_path.read_text()
        time.sleep(2)
        assert pids_with_marker(ray_tmp) == [], "Ray processes left behind after Ctrl-C"


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def test_rayml_serve_on_haproxy_drains_on_sigterm_within_the_bound(demo_layout, tmp_path):
    """SIGTERM (docker stop, Kubernetes) reaches the whole tree: requests in flight get answers (never a 5xx),
    everything exits within SHUTDOWN_BOUND_S, and the HTTP port, HAProxy's ports and every process are gone."""
    from rayml.serving.launcher import SHUTDOWN_BOUND_S

    config_path, port = shipped_config_on_free_ports(tmp_path)
    stats, metrics = free_port(), free_port()
    env = {"RAY_SERVE_HAPROXY_STATS_PORT": str(stats), "RAY_SERVE_HAPROXY_METRICS_PORT": str(metrics),
           "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": "{tmp}/haproxy/haproxy.cfg"}  # HAProxy's command line names it
    log_path = tmp_path / "rayml-serve.log"
    tokens = tokens_of(demo_layout)
    cmd = [str(BIN / "rayml"), "serve", str(config_path)]
    with cli_process(cmd, demo_layout, log_path, env) as (process, ray_tmp):
        wait_for_recommendation(port, process, tokens["read"])
        health = requests.get(f"http://127.0.0.1:{port}/healthz", timeout=10).json()
        assert health["ingress"] == "haproxy" and health["status"] == "ok"
        assert not port_is_free(stats) and not port_is_free(metrics)
        assert any("haproxy" in (Path(f"/proc/{p}/cmdline").read_text(errors="replace")) for p in pids_with_marker(ray_tmp))

        answers: list[int] = []
        stop = threading.Event()

        def load() -> None:
            with requests.Session() as session:
                while not stop.is_set():
                    try:
                        answers.append(session.post(f"http://127.0.0.1:{port}/recommend", json={"user_id": 3},
                                                    headers={"Authorization": f"Bearer {tokens['read']}"},
                                                    timeout=10).status_code)
                    except requests.RequestException:
                        return  # the port closed: shutdown got there

        threads = [threading.Thread(target=load) for _ in range(4)]
        for thread in threads:
            thread.start()
        time.sleep(2)
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=SHUTDOWN_BOUND_S + 5) == 0
        elapsed = time.monotonic() - started
        stop.set()
        for thread in threads:
            thread.join(timeout=15)
        assert elapsed <= SHUTDOWN_BOUND_S, f"took {elapsed:.1f}s"
        assert answers and all(code < 500 for code in answers), Counter(answers)
        assert pids_with_marker(ray_tmp) == [], "processes (Ray, HAProxy) left behind after SIGTERM"
        assert port_is_free(port) and port_is_free(stats) and port_is_free(metrics)
        MEASURED["rayml serve SIGTERM to every process gone"] = f"{elapsed:.1f}s (bound {SHUTDOWN_BOUND_S}s)"
