"""Several ranker aliases served at once, chosen per request, and followed live under load with no failed request.

Alias names here are the test's own (beta, gamma): the session registry is shared with the CLI tests.
"""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest
import requests

from tests.integration.test_serving_swap import copy_version

pytestmark = pytest.mark.integration


def test_aliases_per_request_and_live_alias_moves_under_load(serve_url, trained, recommender_args):
    from ray import serve

    from rayml.serving.app import build_recommender

    registry, _ = trained
    first = copy_version(registry, "1", "canary A")
    second = copy_version(registry, "1", "canary B")
    registry.set_alias("ranker", "beta", first)
    args = recommender_args.model_copy(update={"ranker_aliases": ["beta", "gamma"], "alias_poll_s": 0.5,
                                               "feature_log": None, "event_log": None})
    serve.run(build_recommender(args), name="aliases", route_prefix="/aliases")
    base = f"{serve_url}/aliases"
    try:
        health = requests.get(f"{base}/healthz", timeout=10).json()
        assert health["aliases"] == {"beta": f"ranker:v{first}"}
        assert "gamma" in health["alias_errors"]  # not in the registry yet: reported, not fatal
        answer = requests.post(f"{base}/recommend", json={"user_id": 3, "k": 3, "model_alias": "beta"}, timeout=10)
        assert answer.status_code == 200 and answer.json()["model_version"] == f"ranker:v{first}", answer.text
        default = requests.post(f"{base}/recommend", json={"user_id": 3, "k": 3}, timeout=10).json()
        assert default["model_version"] == "ranker:v1"
        unknown = requests.post(f"{base}/recommend", json={"user_id": 3, "model_alias": "gamma"}, timeout=10)
        assert unknown.status_code == 422 and unknown.json()["detail"][0]["loc"] == ["body", "model_alias"]

        statuses: Counter[int] = Counter()
        versions: Counter[str] = Counter()
        stop = threading.Event()

        def load(alias: str | None) -> None:
            with requests.Session() as session:
                while not stop.is_set():
                    response = session.post(f"{base}/recommend", json={"user_id": 5, "k": 3, "model_alias": alias},
                                            timeout=30)
                    statuses[response.status_code] += 1
                    if response.status_code == 200:
                        versions[response.json()["model_version"]] += 1

        threads = [threading.Thread(target=load, args=(alias,)) for alias in ("beta", "beta", None, None)]
        for thread in threads:
            thread.start()
        time.sleep(1.5)
        registry.set_alias("ranker", "beta", second)  # what `rayml registry promote` does
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and versions[f"ranker:v{second}"] < 20:
            time.sleep(0.2)
        stop.set()
        for thread in threads:
            thread.join()
        assert set(statuses) == {200}, statuses  # zero failed requests across the move
        assert versions[f"ranker:v{first}"] > 0 and versions[f"ranker:v{second}"] >= 20 and versions["ranker:v1"] > 0
    finally:
        serve.delete("aliases")


def test_dynamic_batching_is_tuned_live_and_batches_concurrent_requests(serve_url, recommender_args):
    from concurrent.futures import ThreadPoolExecutor

    from ray import serve

    from rayml.serving.app import Recommender
    from rayml.serving.config import load_serving_repo

    args = recommender_args.model_copy(update={"feature_log": None, "event_log": None})

    def deploy(user_config: dict) -> None:
        app = Recommender.options(user_config=user_config).bind(args.model_dump(), load_serving_repo(args).model_dump())
        serve.run(app, name="batching", route_prefix="/batching")

    base = f"{serve_url}/batching"
    try:
        deploy({"max_batch_size": 16, "batch_wait_timeout_s": 0.05})
        batching = requests.get(f"{base}/healthz", timeout=10).json()["batching"]
        assert (batching["max_batch_size"], batching["batch_wait_timeout_s"]) == (16, 0.05)
        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(lambda u: requests.post(f"{base}/recommend", json={"user_id": u, "k": 3}, timeout=30),
                                    range(32)))
        assert all(a.status_code == 200 for a in answers)
        assert [a.json()["user_id"] for a in answers] == list(range(32))  # each request gets its own answer
        assert requests.get(f"{base}/healthz", timeout=10).json()["batching"]["largest_batch"] > 1
        deploy({"max_batch_size": 2, "batch_wait_timeout_s": 0.0})  # a new user_config: applied by reconfigure()
        batching = requests.get(f"{base}/healthz", timeout=10).json()["batching"]
        assert (batching["max_batch_size"], batching["batch_wait_timeout_s"]) == (2, 0.0)
    finally:
        serve.delete("batching")
