"""The same recommender on Redis by changing one config value; Redis down → batch-only answers, then recovery."""

from __future__ import annotations

import time

import pyarrow.parquet as pq
import pytest
import requests
import yaml

from tests.integration.conftest import write_feature_repo

pytestmark = pytest.mark.integration


def load_redis(port: int, state_dir) -> None:
    """Fill Redis from the materialized snapshots (what the materialization job writes; tested on its own)."""
    from rayml.features.redis_store import RedisOnlineStore

    store = RedisOnlineStore(port=port)
    store.write("user_profile", pq.read_table(state_dir / "user_profile.parquet"), key="user_id")
    store.write("item_catalog", pq.read_table(state_dir / "item_catalog.parquet"), key="item_id")


def post(url: str, path: str, body) -> requests.Response:
    return requests.post(f"{url}{path}", json=body, timeout=30)


def wait_for(call, predicate, timeout_s: float = 30):
    deadline = time.monotonic() + timeout_s
    while True:
        result = call()
        if predicate(result) or time.monotonic() > deadline:
            return result
        time.sleep(0.3)


def test_redis_backend_by_one_value_degrades_while_down_and_recovers(
    serve_url, redis_server, recommender_args, feature_repo, tiny_world, tmp_path
):
    from ray import serve

    from rayml.serving.app import build_recommender

    embedded_path, state_dir = feature_repo
    redis_path = write_feature_repo(tmp_path / "features.yaml", tiny_world.path,
                                    {"type": "redis", "port": redis_server.port, "timeout_s": 0.2})
    embedded, redis_cfg = yaml.safe_load(embedded_path.read_text()), yaml.safe_load(redis_path.read_text())
    assert {k for k in embedded if embedded[k] != redis_cfg[k]} == {"online_store"}
    load_redis(redis_server.port, state_dir)
    args = recommender_args.model_copy(update={"features": str(redis_path), "event_log": None, "feature_log": None})
    serve.run(build_recommender(args), name="redis", route_prefix="/redis")
    base = f"{serve_url}/redis"
    try:
        assert requests.get(f"{base}/healthz", timeout=10).json()["online_store"] == "redis"
        on_redis = post(base, "/recommend", {"user_id": 7, "k": 5}).json()
        assert on_redis["items"] == post(serve_url, "/recommend", {"user_id": 7, "k": 5}).json()["items"]
        assert on_redis["degraded"] is False and on_redis["feature_missing"] == 0
        assert post(base, "/events", {"events": [{"user_id": 7, "item_id": 1, "clicked": True}]}).status_code == 200
        rt = post(base, "/recommend", {"user_id": 7, "k": 5, "explain": True}).json()["features"]["rt.user"]
        assert rt["clicks_5m"] == [1]

        redis_server.stop()
        started = time.monotonic()
        down = post(base, "/recommend", {"user_id": 7, "k": 5})
        assert down.status_code == 200 and down.json()["degraded"] is True
        assert len(down.json()["items"]) == 5  # the batch candidates, in retrieval order
        for _ in range(20):  # the breaker answers at once while the store is marked down
            assert post(base, "/recommend", {"user_id": 8, "k": 5}).json()["degraded"] is True
        assert time.monotonic() - started < 10
        refused = post(base, "/events", {"events": [{"user_id": 7, "item_id": 1, "clicked": True}]})
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
        assert requests.get(f"{base}/healthz", timeout=10).json()["online_store_errors"] >= 1

        redis_server.start()
        load_redis(redis_server.port, state_dir)  # the restarted server is empty: materialize again
        back = wait_for(lambda: post(base, "/recommend", {"user_id": 7, "k": 5}).json(), lambda b: not b["degraded"])
        assert back["degraded"] is False and back["items"] == on_redis["items"]
    finally:
        if redis_server.process is None or redis_server.process.poll() is not None:
            redis_server.start()
        serve.delete("redis")
