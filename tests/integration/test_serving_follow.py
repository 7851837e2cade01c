"""The default ranker alias follows the registry under load: promote, a refused promote, a replica added later,
then rollback; every request answered 200 by a version the registry allowed.

The alias here is the test's own (``steady``): the session registry is shared with the other tests.
"""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest
import requests

from tests.integration.test_serving_swap import copy_version

pytestmark = pytest.mark.integration


def test_promote_refused_promote_scale_out_and_rollback_under_load(serve_url, trained, recommender_args):
    from ray import serve

    from rayml.serving.app import Recommender
    from rayml.serving.config import load_serving_repo

    registry, _ = trained
    first, second, bad = (copy_version(registry, "1", note) for note in ("steady A", "steady B", "to corrupt"))
    artifact = registry.get("ranker", bad).file("model.onnx")
    artifact.write_bytes(artifact.read_bytes()[:100])  # truncated on disk: fails its checksum
    registry.set_alias("ranker", "steady", first)
    args = recommender_args.model_copy(update={"ranker_alias": "steady", "alias_poll_s": 0.5, "precision": "fp32",
                                               "event_log": None, "feature_log": None})
    repo = load_serving_repo(args).model_dump()

    def deploy(replicas: int) -> None:
        app = Recommender.options(num_replicas=replicas, ray_actor_options={"num_cpus": 0.25}).bind(
            args.model_dump(), repo)
        serve.run(app, name="follow", route_prefix="/follow")

    deploy(1)
    base = f"{serve_url}/follow"
    statuses: Counter[int] = Counter()
    versions: Counter[str] = Counter()
    stop = threading.Event()

    def load() -> None:
        with requests.Session() as session:
            while not stop.is_set():
                response = session.post(f"{base}/recommend", json={"user_id": 5, "k": 3}, timeout=30)
                statuses[response.status_code] += 1
                if response.status_code == 200:
                    versions[response.json()["model_version"]] += 1

    def served_now(label: str, timeout_s: float = 30) -> None:
        seen = versions[label]
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and versions[label] < seen + 20:
            time.sleep(0.1)
        assert versions[label] >= seen + 20, (label, versions)

    def replicas_health(n: int) -> dict[str, dict]:
        by_replica: dict[str, dict] = {}
        deadline = time.monotonic() + 60
        while len(by_replica) < n and time.monotonic() < deadline:
            body = requests.get(f"{base}/healthz", timeout=10).json()
            by_replica[body["replica"]] = body
        assert len(by_replica) == n, by_replica.keys()
        return by_replica

    threads = [threading.Thread(target=load) for _ in range(3)]
    for thread in threads:
        thread.start()
    try:
        served_now(f"ranker:v{first}")
        registry.set_alias("ranker", "steady", second, reason="promote")
        served_now(f"ranker:v{second}")

        registry.set_alias("ranker", "steady", bad, reason="promote")  # a version that cannot load
        deadline = time.monotonic() + 30
        body: dict = {}
        while time.monotonic() < deadline:
            body = requests.get(f"{base}/healthz", timeout=10).json()
            if body["status"] == "degraded":
                break
            time.sleep(0.2)
        assert body["status"] == "degraded" and body["model_version"] == f"ranker:v{second}"
        assert any(f"refused ranker:v{bad}" in r for r in body["reasons"]), body["reasons"]
        served_now(f"ranker:v{second}")
        record = registry.serving_record("ranker")["steady"]
        assert record["known_good"] == second and str(bad) in record["refused"]

        deploy(2)  # a replica started later (autoscaling, a restart) serves the known-good version, not the refused
        for replica in replicas_health(2).values():
            assert replica["model_version"] == f"ranker:v{second}" and replica["status"] == "degraded"
            assert f"ranker:v{bad}" in replica["models"]["ranker 'steady'"]["refused"]

        assert registry.rollback("ranker", "steady") == second  # `rayml registry rollback ranker --alias steady`
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(r["status"] != "ok" for r in replicas_health(2).values()):
            time.sleep(0.5)
        assert all(r["status"] == "ok" and r["model_version"] == f"ranker:v{second}"
                   for r in replicas_health(2).values())
        served_now(f"ranker:v{second}")
    finally:
        stop.set()
        for thread in threads:
            thread.join()
        serve.delete("follow")
    assert set(statuses) == {200}, statuses  # zero failed requests through every move
    assert set(versions) == {f"ranker:v{first}", f"ranker:v{second}"}, versions  # never the refused one
