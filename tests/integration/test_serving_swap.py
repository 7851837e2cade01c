"""Live ranker swaps through Serve `user_config`: a corrupt version is refused and the current model keeps serving."""

from __future__ import annotations

import time

import pytest
import requests

from rayml.registry import ModelRegistry

pytestmark = pytest.mark.integration


def copy_version(registry: ModelRegistry, ref: str, note: str) -> int:
    source = registry.get("ranker", ref)
    meta = {k: v for k, v in source.metadata.items() if k not in ("name", "version", "files", "created_at", "writer")}
    files = {name: source.file(name) for name in source.metadata["files"]}
    return registry.register("ranker", files, meta | {"note": note}).version


def wait_for(url: str, predicate, timeout_s: float = 60) -> dict:
    deadline = time.monotonic() + timeout_s
    body: dict = {}
    while time.monotonic() < deadline:
        body = requests.get(url, timeout=10).json()
        if predicate(body):
            return body
        time.sleep(0.5)
    raise AssertionError(f"condition never met; last answer {body}")


def test_corrupt_version_is_refused_and_serving_continues(serve_url, trained, recommender_args):
    from ray import serve

    from rayml.serving.app import Recommender
    from rayml.serving.config import load_serving_repo

    registry, _ = trained
    good = copy_version(registry, "1", "good copy")
    bad = copy_version(registry, "1", "to be corrupted")
    artifact = registry.get("ranker", bad).file("model.onnx")
    artifact.write_bytes(artifact.read_bytes()[: artifact.stat().st_size // 2])  # truncated on disk

    base = serve_url + "/swap"
    def deploy(alias: str) -> None:
        app = Recommender.options(user_config={"ranker_alias": alias}).bind(
            recommender_args.model_dump(), load_serving_repo(recommender_args).model_dump()
        )
        serve.run(app, name="swap", route_prefix="/swap")

    deploy("1")
    assert wait_for(f"{base}/healthz", lambda b: b["model_version"] == "ranker:v1")["status"] == "ok"
    deploy(str(bad))
    health = wait_for(f"{base}/healthz", lambda b: "reload_error" in b)
    assert health["model_version"] == "ranker:v1"
    assert f"ranker v{bad}: artifact model.onnx fails its checksum" in health["reload_error"]
    answer = requests.post(f"{base}/recommend", json={"user_id": 3, "k": 3}, timeout=10)
    assert answer.status_code == 200 and answer.json()["model_version"] == "ranker:v1"
    deploy(str(good))
    health = wait_for(f"{base}/healthz", lambda b: b["model_version"] == f"ranker:v{good}")
    assert "reload_error" not in health
    assert requests.post(f"{base}/recommend", json={"user_id": 3, "k": 3}, timeout=10).json()["model_version"] == f"ranker:v{good}"
    serve.delete("swap")
