"""Composition plans and admission limits on real Serve: `split` answers exactly as `fused`; over capacity gets
429/503 with Retry-After; oversized bodies get 413 before they are read."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
import requests

from rayml.serving.filters import PostFilters
from tests.integration.test_serving_swap import copy_version

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def split_url(serve_url, recommender_args, trained):
    """The same app, plan `split` (the ranker in its own deployment, reached through a Serve handle), recently
    clicked items excluded, and alias `delta` served beside the default (a copy of v1 that a test corrupts)."""
    from ray import serve

    from rayml.serving.app import build_recommender

    registry, _ = trained
    registry.set_alias("ranker", "delta", copy_version(registry, "1", "the split plan's extra alias"))
    args = recommender_args.model_copy(update={"plan": "split", "feature_log": None, "event_log": None,
                                               "filters": PostFilters(exclude_clicked=True),
                                               "ranker_aliases": ["delta"], "alias_poll_s": 0})
    serve.run(build_recommender(args), name="split", route_prefix="/split")
    yield f"{serve_url}/split"
    serve.delete("split")


def test_split_plan_answers_exactly_as_fused(serve_url, split_url):
    for user in (0, 3, 11, 17):  # users without clicks: the filter changes nothing
        body = {"user_id": user, "k": 10}
        fused = requests.post(f"{serve_url}/recommend", json=body, timeout=30).json()
        split = requests.post(f"{split_url}/recommend", json=body, timeout=30).json()
        assert split["items"] == fused["items"] and split["model_version"] == fused["model_version"]
        np.testing.assert_allclose(split["scores"], fused["scores"], rtol=1e-6)
    pairs = {"user_id": 3, "item_ids": [1, 2, 3, 50]}
    fused_scores = requests.post(f"{serve_url}/score", json=pairs, timeout=30).json()["scores"]
    split_scores = requests.post(f"{split_url}/score", json=pairs, timeout=30).json()["scores"]
    np.testing.assert_allclose(split_scores, fused_scores, rtol=1e-6)


def test_recently_clicked_items_are_not_recommended_again(split_url):
    before = requests.post(f"{split_url}/recommend", json={"user_id": 42, "k": 10}, timeout=30).json()["items"]
    clicked, shown = before[:3], before[3]
    events = [{"user_id": 42, "item_id": i, "clicked": True} for i in clicked]
    events.append({"user_id": 42, "item_id": shown, "clicked": False})  # an impression alone excludes nothing
    assert requests.post(f"{split_url}/events", json={"events": events}, timeout=30).status_code == 200
    after = requests.post(f"{split_url}/recommend", json={"user_id": 42, "k": 10}, timeout=30).json()["items"]
    assert not set(clicked) & set(after) and len(after) == 10
    assert after[:7] == before[3:]  # the rest keep their order
    other = requests.post(f"{split_url}/recommend", json={"user_id": 41, "k": 10}, timeout=30).json()["items"]
    assert len(other) == 10  # another user's answer is unaffected by 42's clicks


def test_exclude_clicked_needs_recent_clicks_in_the_feature_repo(recommender_args, tmp_path):
    import yaml

    from rayml.config import ConfigError
    from rayml.serving.config import load_serving_repo

    repo = yaml.safe_load(Path(recommender_args.features).read_text())
    repo["realtime"]["recent_clicks"] = 0
    (tmp_path / "repo.yaml").write_text(yaml.safe_dump(repo))
    args = recommender_args.model_copy(update={"features": str(tmp_path / "repo.yaml"),
                                               "filters": PostFilters(exclude_clicked=True)})
    with pytest.raises(ConfigError, match=r"exclude_clicked.*repo\.yaml.*recent_clicks"):
        load_serving_repo(args)


def test_split_plan_serves_oip_and_reports_the_ranker_deployment(split_url):
    health = requests.get(f"{split_url}/healthz", timeout=30).json()
    assert health["ranker_deployment"]["device"] == "cpu"
    assert health["ranker_deployment"]["loaded"] == [health["model_version"]]
    width = requests.get(f"{split_url}/v2/models/ranker", timeout=30).json()["inputs"][0]["shape"][1]
    rows = np.random.default_rng(0).normal(size=(3, width)).astype(np.float32)
    infer = {"inputs": [{"name": "features", "datatype": "FP32", "shape": [3, width], "data": rows.ravel().tolist()}]}
    response = requests.post(f"{split_url}/v2/models/ranker/infer", json=infer, timeout=30)
    assert response.status_code == 200
    assert response.json()["outputs"][0]["shape"] == [3]


def test_split_plan_batches_across_requests(split_url):
    """Concurrent requests through the ingress's batch queue and the Ranker's: every answer correct, none failed."""
    import httpx

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=30) as client:
            return await asyncio.gather(*(client.post(f"{split_url}/recommend", json={"user_id": u % 40, "k": 5})
                                          for u in range(64)))

    responses = asyncio.run(burst())
    assert [r.status_code for r in responses] == [200] * 64
    assert all(len(r.json()["items"]) == 5 for r in responses)


def test_over_capacity_gets_429_with_retry_after_and_nothing_else(serve_url, recommender_args):
    """One request in the replica, two queued: a burst of 48 gets 200s and fast 429s with Retry-After, no 5xx."""
    import httpx
    from ray import serve

    from rayml.serving.app import Recommender
    from rayml.serving.config import load_serving_repo

    args = recommender_args.model_copy(update={"feature_log": None, "event_log": None})
    tight = Recommender.options(  # type: ignore[attr-defined]
        num_replicas=1, max_ongoing_requests=1, max_queued_requests=2,
        backpressure_config={"status_code": 429, "retry_after_s": 2},
    )
    serve.run(tight.bind(args.model_dump(), load_serving_repo(args).model_dump()), name="tight",
              route_prefix="/tight")
    try:
        async def burst() -> list[httpx.Response]:
            limits = httpx.Limits(max_connections=48)
            async with httpx.AsyncClient(timeout=30, limits=limits) as client:
                return await asyncio.gather(*(client.post(f"{serve_url}/tight/recommend", json={"user_id": u, "k": 5})
                                              for u in range(48)))

        responses = asyncio.run(burst())
        statuses = [r.status_code for r in responses]
        assert set(statuses) <= {200, 429}, statuses
        assert statuses.count(200) >= 1 and statuses.count(429) >= 1, statuses  # how many fit depends on timing
        assert all(r.headers["retry-after"] == "2" for r in responses if r.status_code == 429)
        assert requests.post(f"{serve_url}/tight/recommend", json={"user_id": 1}, timeout=30).status_code == 200
    finally:
        serve.delete("tight")


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
@pytest.mark.parametrize("path", ["/score", "/v2/models/ranker/infer"])
def test_oversized_body_gets_413_naming_the_body(serve_url, recommender_args, path, chunked):
    limit = recommender_args.max_body_bytes
    raw = b'{"user_id": 1, "item_ids": [' + b"1, " * (limit // 3) + b"1]}"
    data = iter([raw[i : i + 65536] for i in range(0, len(raw), 65536)]) if chunked else raw
    response = requests.post(f"{serve_url}{path}", data=data, headers={"content-type": "application/json"},
                             timeout=60)
    assert response.status_code == 413
    detail = response.json()["detail"][0]
    assert detail["loc"] == ["body"] and f"max_body_bytes={limit}" in detail["msg"]
    assert requests.post(f"{serve_url}/score", json={"user_id": 1, "item_ids": [1]}, timeout=30).status_code == 200


def test_split_plan_version_the_ranker_cannot_load_gets_503_and_spares_the_others(split_url, trained):
    """The ingress loaded alias delta's encoders; then its ONNX file was corrupted on storage, so the Ranker
    deployment's checksum check refuses it: requests for delta get 503 + Retry-After, the default keeps answering."""
    registry, _ = trained
    served = requests.get(f"{split_url}/healthz", timeout=30).json()["aliases"]["delta"]
    onnx = registry.get("ranker", served.rsplit(":v", 1)[1]).file("model.onnx")
    onnx.chmod(0o644)
    onnx.write_bytes(b"not an onnx model")
    bad = requests.post(f"{split_url}/recommend", json={"user_id": 3, "k": 5, "model_alias": "delta"}, timeout=30)
    assert bad.status_code == 503 and bad.headers["retry-after"] == "1"
    assert "ranker deployment" in bad.json()["detail"]
    good = requests.post(f"{split_url}/recommend", json={"user_id": 3, "k": 5}, timeout=30)
    assert good.status_code == 200 and good.json()["model_version"] == "ranker:v1"
