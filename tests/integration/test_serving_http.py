"""The recommender on real Ray Serve over real HTTP: answers, quality, and 4xx for every client mistake."""

from __future__ import annotations

import re

import numpy as np
import pytest
import requests

from rayml.monitoring import ndcg_at_k
from tests.conftest import MEASURED

pytestmark = pytest.mark.integration


def post(url: str, body=None, data: str | None = None) -> requests.Response:
    if data is not None:
        return requests.post(f"{url}/recommend", data=data, headers={"content-type": "application/json"}, timeout=30)
    return requests.post(f"{url}/recommend", json=body, timeout=30)


def test_recommend_answers_with_ranked_candidates(serve_url, candidates):
    config, _ = candidates
    response = post(serve_url, {"user_id": 7, "k": 5})
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"user_id", "items", "scores", "model_version", "feature_missing", "degraded", "features",
                         "candidates", "request_id", "arm", "experiment_arm"}
    assert body["candidates"] == "batch" and body["arm"] == "production"  # no rollout running
    assert body["experiment_arm"] is None  # no experiment either
    assert isinstance(body["request_id"], str) and body["request_id"]
    assert body["user_id"] == 7 and body["model_version"] == "ranker:v1"
    assert body["feature_missing"] == 0 and body["degraded"] is False and body["features"] is None
    assert len(body["items"]) == len(set(body["items"])) == 5
    assert body["scores"] == sorted(body["scores"], reverse=True)
    import pyarrow.parquet as pq

    table = pq.read_table(config.output).to_pandas().set_index("user_id")
    assert set(body["items"]) <= set(table.loc[7, "items"].tolist())
    assert len(post(serve_url, {"user_id": 7}).json()["items"]) == 10  # default_k


def test_healthz(serve_url):
    response = requests.get(f"{serve_url}/healthz", timeout=10)
    assert response.status_code == 200
    body = response.json()
    assert body.pop("batching").keys() == {"max_batch_size", "batch_wait_timeout_s", "largest_batch", "shed",
                                                "overloaded"}
    assert isinstance(body.pop("replica"), str)
    startup = body.pop("startup_s")
    assert startup.keys() == {"init", "since_import", "pid"} and 0 < startup["init"] <= startup["since_import"]
    assert body == {
        "status": "ok", "reasons": [], "live": True, "ready": True, "model_version": "ranker:v1",
        "artifact": "model.onnx", "online_store": "embedded", "online_store_errors": 0, "model_call_failures": 0,
        "ingress": "haproxy", "plan": "fused", "auth": {"enabled": False, "protect_reads": True},
        "models": {"ranker 'production'": {"ref": "production", "serving": "ranker:v1", "follows_registry": True},
                   "retriever 'production'": {"ref": "production", "serving": "retriever:v1",
                                              "follows_registry": True}},
    }
    assert re.search(r"(^|[\s'\"(])/\w", str(body)) is None  # no file paths on a public endpoint


def test_served_quality_beats_random(serve_url, tiny_world):
    """NDCG@10 against the world's true relevance, served vs random, over 150 users."""
    users = np.arange(0, tiny_world.n_users, tiny_world.n_users // 150)[:150]
    truth = tiny_world.relevance(users, np.arange(tiny_world.n_items))
    served = np.array([post(serve_url, {"user_id": int(u), "k": 10}).json()["items"] for u in users])
    served_ndcg = ndcg_at_k(np.take_along_axis(truth, served, 1), truth, 10).mean()
    rng = np.random.default_rng(0)
    random_items = np.stack([rng.choice(tiny_world.n_items, 10, replace=False) for _ in users])
    random_ndcg = ndcg_at_k(np.take_along_axis(truth, random_items, 1), truth, 10).mean()
    MEASURED["NDCG@10 of served recommendations (tiny world)"] = (
        f"served {served_ndcg:.3f}, random {random_ndcg:.3f}, over {len(users)} users"
    )
    assert served_ndcg > random_ndcg + 0.25


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"user_id": "7", "k": 5}, "user_id"),
        ({"user_id": 7.5}, "user_id"),
        ({"user_id": 7, "k": "5"}, "k"),
        ({"user_id": 7, "k": 0}, "k"),
        ({"user_id": 7, "k": -3}, "k"),
        ({"user_id": 7, "k": 51}, "k"),
        ({"user_id": -1}, "user_id"),
        ({"k": 5}, "user_id"),
        ({"user_id": 7, "kk": 5}, "kk"),
        ({"user_id": True}, "user_id"),
    ],
)
def test_bad_fields_get_422_naming_the_field(serve_url, body, field):
    response = post(serve_url, body)
    assert response.status_code == 422, response.text
    assert [d["loc"][-1] for d in response.json()["detail"]] == [field]


@pytest.mark.parametrize("raw", ['{"user_id": 7, "k": 5', "not json", "[1, 2]", ""])
def test_malformed_json_is_4xx_not_5xx(serve_url, raw):
    response = post(serve_url, data=raw)
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"][0] == "body"


def test_unknown_user_is_404_with_json_error(serve_url, tiny_world):
    response = post(serve_url, {"user_id": tiny_world.n_users + 10})
    assert response.status_code == 404
    assert response.json() == {"detail": f"user_id {tiny_world.n_users + 10} is unknown"}


@pytest.mark.parametrize("content_type", ["application/json", "application/json; charset=utf-8",
                                          "application/vnd.rayml+json", "text/plain"])
def test_the_shortcut_and_fastapi_give_the_same_answer(serve_url, content_type):
    """`application/json` takes the shortcut past FastAPI's router (rayml.serving.fast_routes); any other content
    type goes through FastAPI itself. Both must answer alike, for a good body and for a bad one."""
    def answer(body: str) -> tuple[int, dict]:
        response = requests.post(f"{serve_url}/recommend", data=body, headers={"content-type": content_type},
                                 timeout=30)
        payload = response.json()
        payload.pop("request_id", None)
        return response.status_code, payload

    plain = requests.post(f"{serve_url}/recommend", json={"user_id": 11, "k": 4}, timeout=30).json()
    plain.pop("request_id")
    if content_type == "text/plain":  # FastAPI parses JSON content types only; the shortcut takes no other
        status, refused = answer('{"user_id": 11, "k": 4}')
        assert status == 422 and refused["detail"][0]["loc"] == ["body"], refused
        return
    assert answer('{"user_id": 11, "k": 4}') == (200, plain)
    status, bad = answer('{"user_id": 11, "k": 0}')
    assert status == 422 and bad["detail"][0]["loc"] == ["body", "k"]
    status, unknown = answer('{"user_id": 11, "kk": 3}')
    assert status == 422 and bad["detail"][0]["type"] == "greater_than_equal" and unknown["detail"][0]["loc"] == [
        "body", "kk"]
