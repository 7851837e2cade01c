"""Shared fixtures: a tiny world and trained models (built once per session), free ports, Ray, Serve."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from rayml.models import ModelsConfig, TrainedSlice, train_and_publish
from rayml.ports import free_port
from rayml.registry import ModelRegistry
from rayml.world import World, WorldConfig, build_world

REPO = Path(__file__).resolve().parent.parent
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

TINY_WORLD = WorldConfig(
    seed=3, n_users=2_000, n_items=300, n_categories=10, days=7, impressions_per_user=40, chunk_users=700,
)
TINY_MODELS = ModelsConfig.model_validate(
    {
        "ranker": {"train": {"epochs": 4, "batch_size": 512, "device": "cpu"}},
        "retriever": {"train": {"epochs": 4, "batch_size": 512, "device": "cpu"}},
    }
)


MEASURED: dict[str, str] = {}  # figures tests measured; printed at the end of the run
_TOKEN_DIR: list[str] = []


def pytest_configure(config) -> None:
    """Ray token auth stays on, with a fresh token of this run's own (never ~/.ray/auth_token).

    `ray start --head` does not create a token where none exists (a fresh machine), and a token left in HOME by an
    earlier run would hide that. Every Ray this run starts (ray.init, ray start, serve run, ray job submit) reads
    ``RAY_AUTH_TOKEN_PATH`` from the environment.
    """
    if "RAY_AUTH_TOKEN_PATH" in os.environ or os.environ.get("RAY_AUTH_TOKEN"):
        return
    folder = tempfile.mkdtemp(prefix="rayml-token-")
    path = Path(folder) / "auth_token"
    path.write_text(secrets.token_hex(32))
    path.chmod(0o600)
    os.environ["RAY_AUTH_TOKEN_PATH"] = str(path)
    os.environ["RAY_AUTH_MODE"] = "token"
    _TOKEN_DIR.append(folder)


def pytest_unconfigure(config) -> None:
    for folder in _TOKEN_DIR:
        shutil.rmtree(folder, ignore_errors=True)


def pytest_terminal_summary(terminalreporter) -> None:
    if MEASURED:
        terminalreporter.section("measured")
        for key, value in MEASURED.items():
            terminalreporter.write_line(f"{key}: {value}")


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory: pytest.TempPathFactory) -> World:
    out = tmp_path_factory.mktemp("world") / "world"
    build_world(TINY_WORLD, out)
    return World(out)


@pytest.fixture(scope="session")
def trained(tiny_world: World, tmp_path_factory: pytest.TempPathFactory) -> tuple[ModelRegistry, TrainedSlice]:
    registry = ModelRegistry(tmp_path_factory.mktemp("registry"))
    return registry, train_and_publish(tiny_world, TINY_MODELS, registry)


@pytest.fixture(scope="session")
def ray_session(tmp_path_factory: pytest.TempPathFactory):
    """One local Ray for every integration test (start-up costs seconds on 2 cores), on the shipped ingress:
    HAProxy in front of direct-ingress replicas, with this session's own ports and files."""
    import ray

    from rayml.serving.ingress import with_ingress

    state = Path(tempfile.mkdtemp(prefix="rmt-"))  # short: HAProxy's unix sockets live under it
    saved = dict(os.environ)
    os.environ.update(with_ingress("haproxy", state / "haproxy"))
    ray.init(address="local", num_cpus=2, object_store_memory=400 * 1024 * 1024, include_dashboard=False, namespace="rayml-tests")
    yield ray
    from ray import serve

    serve.shutdown()
    ray.shutdown()
    os.environ.clear()
    os.environ.update(saved)
    shutil.rmtree(state, ignore_errors=True)


class RedisServer:
    """A real redis-server on a free loopback port, stopped and restarted by PID."""

    def __init__(self, workdir: Path, *extra_args: str) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.extra_args = extra_args
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.workdir), *self.extra_args],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.05)
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory):
    if shutil.which("redis-server") is None:
        raise RuntimeError("redis-server is not installed: run `make redis-server` (make test does)")
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()
