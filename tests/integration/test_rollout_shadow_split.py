"""Shadow traffic in the `split` plan on real Serve: the ingress encodes the rows production scored with the
shadow's own encoders, and the Ranker deployment scores them under the shadow version's label.

Three shadows over HTTP traffic: production's own version (perfect agreement), an inverted copy (the Ranker loads
it on first use; it disagrees), and a version the Ranker cannot load (shadow errors; every user still gets a 200).
"""

from __future__ import annotations

import functools
import shutil
import threading
import time

import numpy as np
import pytest
import requests

from rayml.registry import ModelRegistry
from tests.clients import run_clients
from tests.conftest import MEASURED
from tests.integration.test_rollout_canary import _harness
from tests.integration.test_serving_swap import copy_version, wait_for

pytestmark = pytest.mark.integration

SHADOW = {"fraction": 1.0, "k": 5, "window_s": 2, "min_requests": 20}


@pytest.fixture(scope="module")
def split_app(serve_url, trained, recommender_args, tmp_path_factory):
    """The recommender, plan `split`, with rollout on (its poll starts and stops shadows), on its own registry."""
    from ray import serve

    from rayml.serving.app import build_recommender
    from rayml.serving.config import RolloutServing

    registry, _ = trained
    root = tmp_path_factory.mktemp("shadow-split") / "registry"
    shutil.copytree(registry.root, root, ignore=shutil.ignore_patterns("_rollout"))
    args = recommender_args.model_copy(update={
        "plan": "split", "registry": str(root), "alias_poll_s": 0.5, "precision": "fp32", "event_log": None,
        "feature_log": None, "rollout": RolloutServing(outcomes=str(root.parent / "outcomes"), flush_s=0.5)})
    serve.run(build_recommender(args), name="shadow-split", route_prefix="/shadow-split")
    yield f"{serve_url}/shadow-split", ModelRegistry(root)
    serve.delete("shadow-split")


def _traffic(url: str, users: int, seconds: float, clients: int = 2) -> list[int]:
    """HTTP statuses of ``clients`` loops of /recommend for random users, for ``seconds``."""
    statuses: list[int] = []

    def client(stop: threading.Event, seed: int) -> None:
        rng = np.random.default_rng(seed)
        with requests.Session() as session:
            while not stop.is_set():
                user = int(rng.integers(users))
                statuses.append(session.post(f"{url}/recommend", json={"user_id": user, "k": 10}, timeout=30)
                                .status_code)

    run_clients([functools.partial(client, seed=i) for i in range(clients)], seconds, join_s=35)
    return statuses


def _start(url: str, alias: str) -> None:
    """A fresh shadow of ``alias`` (a stop first, seen by a poll, so its report starts empty)."""
    assert requests.delete(f"{url}/admin/shadow", timeout=10).status_code == 200
    time.sleep(1.5)
    started = requests.post(f"{url}/admin/shadow", json={"alias": alias, "config": SHADOW}, timeout=10)
    assert started.status_code == 200, started.text
    time.sleep(1.5)  # the replica's next polls: the alias followed (its encoders loaded), the shadow started


def _totals(url: str, alias: str, predicate, timeout_s: float = 30) -> dict:
    """The replicas' windows summed once ``predicate(totals)`` holds: requests, errors, means of overlap and τ."""
    deadline = time.monotonic() + timeout_s
    totals: dict = {}
    while time.monotonic() < deadline:
        body = requests.get(f"{url}/admin/shadow", timeout=10).json()
        windows = [w for r in body["replicas"].values() if r["alias"] == alias
                   for w in [*r["report"]["completed"], r["report"]["current"]] if w]
        overlap_n = sum(w["overlap_count"] for w in windows)
        tau_n = sum(w["kendall_tau_count"] for w in windows)
        totals = {
            "requests": sum(w["requests"] for w in windows),
            "errors": sum(w["errors"] for w in windows),
            "last_error": next((w["last_error"] for w in reversed(windows) if w["last_error"]), None),
            "overlap": sum(w["overlap_at_k_mean"] * w["overlap_count"] for w in windows if w["overlap_count"])
            / overlap_n if overlap_n else None,
            "tau": sum(w["kendall_tau_mean"] * w["kendall_tau_count"] for w in windows if w["kendall_tau_count"])
            / tau_n if tau_n else None,
            "abs_delta": max((w["score_delta"]["abs_mean"] or 0.0 for w in windows), default=None),
            "agreement": body["agreement"],
            "latency_p50_ms": max((w["latency_ms"]["p50"] or 0.0 for w in windows), default=None),
            "queue": {name: sum(r["queue"][name] for r in body["replicas"].values() if r["alias"] == alias)
                      for name in ("completed", "dropped", "errors")},
        }
        if predicate(totals):
            return totals
        time.sleep(0.5)
    raise AssertionError(f"shadow report never met the condition; last totals {totals}")


def test_a_shadow_of_the_production_version_agrees_perfectly(split_app, tiny_world):
    url, registry = split_app
    registry.set_alias("ranker", "shadow", registry.resolve("ranker", "production"))
    _start(url, "shadow")
    statuses = _traffic(url, tiny_world.n_users, 5)
    assert set(statuses) == {200}, statuses
    totals = _totals(url, "shadow", lambda t: t["agreement"] is not None)
    assert totals["requests"] >= SHADOW["min_requests"] and totals["errors"] == 0, totals
    assert totals["overlap"] == pytest.approx(1.0) and totals["tau"] == pytest.approx(1.0), totals
    assert totals["abs_delta"] == pytest.approx(0.0, abs=1e-6), totals
    assert totals["agreement"] == pytest.approx(1.0), totals
    MEASURED["split-plan shadow, encode + Ranker hop + compare"] = (
        f"p50 {totals['latency_p50_ms']:.1f} ms (worst window); jobs {totals['queue']} for {len(statuses)} requests")


def test_the_ranker_deployment_scores_the_shadow_version_it_loads_on_first_use(split_app, tiny_world):
    url, registry = split_app
    inverted = _harness().register_inverted(registry, "production")
    label = f"ranker:v{inverted}"
    registry.set_alias("ranker", "shadow", inverted)
    loaded = requests.get(f"{url}/healthz", timeout=30).json()["ranker_deployment"]["loaded"]
    assert label not in loaded, loaded
    _start(url, "shadow")
    wait_for(f"{url}/healthz", lambda h: h["aliases"].get("shadow") == label, 30)
    statuses = _traffic(url, tiny_world.n_users, 5)
    assert set(statuses) == {200}, statuses
    totals = _totals(url, "shadow", lambda t: t["agreement"] is not None)
    assert totals["errors"] == 0 and totals["requests"] >= SHADOW["min_requests"], totals
    assert totals["overlap"] < 0.5 and totals["tau"] < -0.9, totals  # negated scores: the order reversed
    health = requests.get(f"{url}/healthz", timeout=30).json()
    assert label in health["ranker_deployment"]["loaded"], health
    assert health["model_version"] != label  # users were answered by production all along


def test_a_shadow_the_ranker_cannot_load_counts_errors_and_users_still_get_answers(split_app, tiny_world):
    """The ingress loaded the version's encoders; then its ONNX file was corrupted on storage, so the Ranker's
    checksum check refuses it: every shadow job is a shadow error, every user request a 200."""
    url, registry = split_app
    broken = copy_version(registry, "production", "a shadow whose ONNX file breaks")
    registry.set_alias("ranker", "broken", broken)
    _start(url, "broken")
    wait_for(f"{url}/healthz", lambda h: h["aliases"].get("broken") == f"ranker:v{broken}", 30)
    onnx = registry.get("ranker", str(broken)).file("model.onnx")
    onnx.chmod(0o644)
    onnx.write_bytes(b"not an onnx model")
    statuses = _traffic(url, tiny_world.n_users, 3)
    assert set(statuses) == {200}, statuses
    totals = _totals(url, "broken", lambda t: t["errors"] >= 5)
    assert totals["requests"] == 0 and "fails its checksum" in (totals["last_error"] or ""), totals
    requests.delete(f"{url}/admin/shadow", timeout=10)
