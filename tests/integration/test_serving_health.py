"""Honest health on real Serve: a dependency outage flips readiness only; a broken model makes the replica failing
and Serve replaces it; both recover."""

from __future__ import annotations

import re
import time

import onnx
import pytest
import requests

from rayml.registry import ModelRegistry
from tests.integration.conftest import write_feature_repo
from tests.integration.test_serving_redis import load_redis, wait_for

pytestmark = pytest.mark.integration


def health(base: str) -> dict:
    return requests.get(f"{base}/healthz", timeout=10).json()


def test_redis_down_30s_degrades_and_unreadies_without_a_restart(
    serve_url, redis_server, recommender_args, feature_repo, tiny_world, tmp_path
):
    from ray import serve

    from rayml.serving.app import Recommender
    from rayml.serving.config import load_serving_repo

    _, state_dir = feature_repo
    redis_path = write_feature_repo(tmp_path / "features.yaml", tiny_world.path,
                                    {"type": "redis", "port": redis_server.port, "timeout_s": 0.2})
    load_redis(redis_server.port, state_dir)
    args = recommender_args.model_copy(update={"features": str(redis_path), "event_log": None, "feature_log": None})
    app = Recommender.options(health_check_period_s=1, health_check_timeout_s=5).bind(
        args.model_dump(), load_serving_repo(args).model_dump())
    serve.run(app, name="health-redis", route_prefix="/health-redis")
    base = f"{serve_url}/health-redis"
    try:
        before = health(base)
        assert before["status"] == "ok" and before["ready"] is True
        startup = before["startup_s"]  # what a replacement replica's start costs (replica-failure recovery)
        assert 0 < startup["init"] <= startup["since_import"], startup
        redis_server.stop()
        deadline = time.monotonic() + 30
        statuses: set[int] = set()
        while time.monotonic() < deadline:  # 30 s of outage under steady traffic
            answer = requests.post(f"{base}/recommend", json={"user_id": 7, "k": 5}, timeout=10)
            statuses.add(answer.status_code)
            assert answer.json()["degraded"] is True
            time.sleep(0.2)
        assert statuses == {200}
        during = health(base)
        assert during["status"] == "degraded" and during["live"] is True and during["ready"] is False
        assert any("online store (redis) unavailable" in r for r in during["reasons"])
        for path in ("/readyz", "/v2/health/ready", "/v2/models/ranker/ready"):
            not_ready = requests.get(f"{base}{path}", timeout=10)
            assert not_ready.status_code == 503 and not_ready.headers["retry-after"] == "1", path
        assert requests.get(f"{base}/v2/health/live", timeout=10).json() == {"live": True}
        assert during["replica"] == before["replica"]  # 0 restarts: liveness never failed on a dependency

        redis_server.start()
        load_redis(redis_server.port, state_dir)
        after = wait_for(lambda: health(base), lambda b: b["status"] == "ok")
        assert after["ready"] is True and after["replica"] == before["replica"]
        assert requests.get(f"{base}/readyz", timeout=10).status_code == 200
    finally:
        if redis_server.process is None or redis_server.process.poll() is not None:
            redis_server.start()
        serve.delete("health-redis")


def register_static_batch_copy(registry: ModelRegistry, ref: str) -> int:
    """A copy of ``ref`` exported with a fixed batch of 1: it loads and passes parity, then fails every request
    that scores more than one row (a real export mistake)."""
    source = registry.get("ranker", ref)
    files = {}
    for name in source.metadata["files"]:
        path = source.file(name)
        if name.endswith(".onnx"):
            model = onnx.load(str(path))
            for value in (*model.graph.input, *model.graph.output):
                value.type.tensor_type.shape.dim[0].dim_value = 1
            fixed = path.parent.parent.parent / f".static-{name}"
            onnx.save(model, str(fixed))
            path = fixed
        files[name] = path
    meta = {k: v for k, v in source.metadata.items() if k not in ("name", "version", "files", "created_at", "writer")}
    return registry.register("ranker", files, meta | {"note": "static batch 1"}).version


def test_a_broken_model_makes_the_replica_failing_serve_replaces_it_and_a_rollback_recovers(
    serve_url, trained, recommender_args
):
    from ray import serve

    from rayml.serving.app import Recommender
    from rayml.serving.config import load_serving_repo

    registry, _ = trained
    broken = register_static_batch_copy(registry, "1")
    registry.set_alias("ranker", "brittle", broken)
    args = recommender_args.model_copy(update={
        "ranker_alias": "brittle", "alias_poll_s": 0.5, "event_log": None, "feature_log": None,
        "health": {"stall_s": 10, "failing_after": 3}})
    app = Recommender.options(health_check_period_s=3, health_check_timeout_s=5).bind(
        args.model_dump(), load_serving_repo(args).model_dump())
    serve.run(app, name="health-model", route_prefix="/health-model")
    base = f"{serve_url}/health-model"
    try:
        first = health(base)
        assert first["model_version"] == f"ranker:v{broken}" and first["status"] == "ok"
        for _ in range(3):
            assert requests.post(f"{base}/recommend", json={"user_id": 3, "k": 3}, timeout=10).status_code == 500
        failing = health(base)
        assert failing["status"] == "failing" and failing["live"] is False and failing["ready"] is False
        assert any("model calls failed" in r and "InvalidArgument" in r for r in failing["reasons"]), failing
        assert re.search(r"(^|[\s'\"(])/\w", " ".join(failing["reasons"])) is None  # no file paths
        assert requests.get(f"{base}/v2/health/live", timeout=10).status_code == 503
        # Serve's check_health sees it and replaces the replica (the new one starts clean, then fails again
        # on the same requests: the cure is a rollback).
        replaced = wait_for(lambda: health(base), lambda b: b.get("replica") not in (None, first["replica"]), 60)
        assert replaced["replica"] != first["replica"]

        registry.set_alias("ranker", "brittle", 1, reason="rollback")  # what `rayml registry rollback` does
        recovered = wait_for(lambda: health(base), lambda b: b.get("model_version") == "ranker:v1", 60)
        answer = requests.post(f"{base}/recommend", json={"user_id": 3, "k": 3}, timeout=10)
        assert answer.status_code == 200 and answer.json()["model_version"] == "ranker:v1"
        assert health(base)["status"] == "ok" and recovered["model_version"] == "ranker:v1"
    finally:
        serve.delete("health-model")
