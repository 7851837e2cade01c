"""The canary end to end on real Serve: a bad candidate is rolled back by the CTR gate, a good one is promoted
through every stage to production; simulated users click by the world's truth and report clicks over HTTP.

The plan is the test's own (a 50 % first stage, a wide margin, small minimums, seconds instead of days); the
statistics' error rates are the offline harness's job (``benchmarks/rollout_sim.py``).
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

from rayml.registry import ModelRegistry
from tests.integration.test_serving_swap import copy_version

pytestmark = pytest.mark.integration

PLAN = {
    "model": "ranker", "salt": "it-canary",
    "stages": [{"weight_pct": 50, "min_samples": 100, "min_duration_s": 4},
               {"weight_pct": 100, "min_samples": 100, "min_duration_s": 3}],
    "margin": 0.3, "attribution_window_s": 1.5, "evaluate_every_s": 1, "production_log_sample": 1.0,
    "weights_ttl_s": 30, "deadline_s": 150,
}


def _harness():
    path = Path(__file__).parents[2] / "benchmarks" / "rollout_http.py"
    spec = importlib.util.spec_from_file_location("rollout_http", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their annotations through it
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def canary_app(serve_url, trained, recommender_args, tmp_path_factory):
    from ray import serve

    from rayml.serving.app import Recommender
    from rayml.serving.config import RolloutServing, load_serving_repo
    from rayml.serving.rollout_app import ControllerArgs, build_controller

    registry, _ = trained
    root = tmp_path_factory.mktemp("rollout") / "registry"
    shutil.copytree(registry.root, root, ignore=shutil.ignore_patterns("_rollout"))
    own = ModelRegistry(root)
    outcomes = root.parent / "outcomes"
    args = recommender_args.model_copy(update={
        "registry": str(root), "alias_poll_s": 0.5, "precision": "fp32", "event_log": None, "feature_log": None,
        "rollout": RolloutServing(outcomes=str(outcomes), flush_s=0.5)})
    serve.run(Recommender.options(ray_actor_options={"num_cpus": 0.25}).bind(
        args.model_dump(), load_serving_repo(args).model_dump()), name="canary", route_prefix="/canary")
    serve.run(build_controller(ControllerArgs(registry=str(root), outcomes=str(outcomes), step_s=0.5,
                                              lease_ttl_s=10)), name="canary-controller", route_prefix=None)
    yield f"{serve_url}/canary", own
    serve.delete("canary-controller")
    serve.delete("canary")


def _wait_status(url: str, statuses: set[str], timeout_s: float) -> dict:
    deadline = time.monotonic() + timeout_s
    state: dict = {}
    while time.monotonic() < deadline:
        state = requests.get(f"{url}/admin/rollout", timeout=10).json()["rollout"] or {}
        if state.get("status") in statuses:
            return state
        time.sleep(0.5)
    raise AssertionError(f"rollout never reached {statuses}; last state {state}")


def _with_traffic(url: str, world, body: dict, statuses: set[str], timeout_s: float):
    harness = _harness()
    traffic, stop = harness.Traffic(), threading.Event()
    threads = [threading.Thread(target=harness.drive, args=(url, "", world, stop, traffic, i), daemon=True)
               for i in range(3)]
    for t in threads:
        t.start()
    try:
        started = requests.post(f"{url}/admin/rollout", json=body, timeout=30)
        assert started.status_code == 200, started.text
        again = requests.post(f"{url}/admin/rollout", json=body, timeout=30)
        assert again.status_code == 409 and again.json()["rollout"]["status"] == "Progressing"
        return _wait_status(url, statuses, timeout_s), traffic
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=15)


def test_bad_candidate_is_rolled_back_by_the_ctr_gate_then_a_good_one_reaches_production(canary_app, tiny_world):
    url, registry = canary_app
    production = registry.resolve("ranker", "production")
    bad = _harness().register_inverted(registry, "production")
    state, traffic = _with_traffic(url, tiny_world, {"candidate": str(bad), "plan": PLAN}, {"Degraded"}, 90)
    assert state["weight_pct"] == 0
    rollback = state["decisions"][-1]
    assert rollback["action"] == "rollback" and rollback["stage"] == 0, state["decisions"]
    evidence = requests.get(f"{url}/admin/rollout/evidence/{rollback['evidence']}", timeout=10).json()
    assert evidence["evidence"]["gate"] == "ctr", evidence
    assert traffic.ctr(f"ranker:v{bad}") < 0.7 * traffic.ctr(f"ranker:v{production}")
    history = registry.alias_history("ranker")
    back = [m for m in history if m["alias"] == "canary"][-1]
    assert back["to"] == production and back["evidence"] == rollback["evidence"], history
    assert registry.resolve("ranker", "production") == production

    good = copy_version(registry, "production", "an equal candidate")
    state, traffic = _with_traffic(url, tiny_world, {"candidate": str(good), "plan": PLAN}, {"Healthy"}, 120)
    actions = [d["action"] for d in state["decisions"]]
    assert actions == ["promote", "complete"], state["decisions"]
    assert registry.resolve("ranker", "production") == good
    move = [m for m in registry.alias_history("ranker") if m["alias"] == "production"][-1]
    assert move["to"] == good and move["evidence"] == state["decisions"][-1]["evidence"]
    arms = {arm for arm, _ in traffic.requests}
    assert arms == {"production", "canary"}, traffic.requests
    assert not [s for s in traffic.statuses if s not in (200,)], traffic.statuses


def _traffic_for(url: str, world, seconds: float, clients: int = 3):
    harness = _harness()
    traffic, stop = harness.Traffic(), threading.Event()
    threads = [threading.Thread(target=harness.drive, args=(url, "", world, stop, traffic, 10 + i), daemon=True)
               for i in range(clients)]
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join(timeout=15)
    return traffic


def _agreement(url: str, timeout_s: float = 30) -> tuple[float, dict]:
    deadline = time.monotonic() + timeout_s
    body: dict = {}
    while time.monotonic() < deadline:
        body = requests.get(f"{url}/admin/shadow", timeout=10).json()
        if body["agreement"] is not None:
            return body["agreement"], body
        time.sleep(0.5)
    raise AssertionError(f"no shadow agreement; last report {body}")


def test_shadow_compares_on_the_same_rows_and_blocks_a_canary_below_agreement(canary_app, tiny_world):
    url, registry = canary_app
    inverted = _harness().register_inverted(registry, "production")
    equal = copy_version(registry, "production", "an equal shadow")
    shadow = {"fraction": 1.0, "k": 5, "window_s": 2, "min_requests": 20}
    refused = requests.post(f"{url}/admin/shadow", json={"alias": "no-such-alias", "config": shadow}, timeout=10)
    assert refused.status_code == 422 and "alias" in refused.text
    refused = requests.post(f"{url}/admin/shadow", json={"alias": "production", "config": {"fraction": 2}},
                            timeout=10)
    assert refused.status_code == 422 and "config: key 'fraction'" in refused.text

    registry.set_alias("ranker", "shadow", inverted)
    assert requests.post(f"{url}/admin/shadow", json={"alias": "shadow", "config": shadow},
                         timeout=10).status_code == 200
    time.sleep(1.5)  # every replica's next poll
    traffic = _traffic_for(url, tiny_world, 8)
    assert set(traffic.statuses) == {200}, traffic.statuses  # the shadow's work never reaches users
    low, report = _agreement(url)
    assert low < 0.5, report  # the inverted model ranks production's top items last
    replica = next(iter(report["replicas"].values()))
    assert replica["queue"]["completed"] > 0 and replica["alias"] == "shadow"
    plan = {**PLAN, "min_shadow_agreement": 0.9}
    blocked = requests.post(f"{url}/admin/rollout", json={"candidate": str(equal), "plan": plan}, timeout=10)
    assert blocked.status_code == 422 and "min_shadow_agreement" in blocked.text

    registry.set_alias("ranker", "shadow", equal)
    requests.delete(f"{url}/admin/shadow", timeout=10)  # reset the windows: a fresh comparison
    assert requests.post(f"{url}/admin/shadow", json={"alias": "shadow", "config": shadow},
                         timeout=10).status_code == 200
    time.sleep(1.5)
    _traffic_for(url, tiny_world, 6)
    high, report = _agreement(url)
    assert high > 0.99, report
    requests.delete(f"{url}/admin/shadow", timeout=10)


def test_invalid_plans_and_unknown_candidates_are_refused_naming_the_field(canary_app):
    url, _ = canary_app
    bad = {**PLAN, "stages": [{"weight_pct": 50, "min_duration_s": 1}, {"weight_pct": 20, "min_duration_s": 1}]}
    response = requests.post(f"{url}/admin/rollout", json={"candidate": "1", "plan": bad}, timeout=10)
    assert response.status_code == 422 and "stages.1.weight_pct" in response.text
    response = requests.post(f"{url}/admin/rollout", json={"candidate": "staging", "plan": PLAN}, timeout=10)
    assert response.status_code == 422 and "candidate" in response.text
    response = requests.post(f"{url}/admin/rollout/promote", timeout=10)
    assert response.status_code == 409 and "no active rollout" in response.text


def test_the_cli_drives_the_admin_routes(canary_app, tmp_path):
    from typer.testing import CliRunner

    from rayml.cli import app

    url, _ = canary_app
    runner = CliRunner()
    status = runner.invoke(app, ["rollout", "status", "--url", url, "--token", "unused"])
    assert status.exit_code == 0, status.output
    assert "no rollout" in status.output or "rollout r" in status.output
    plan = tmp_path / "plan.yaml"
    plan.write_text("stages:\n  - {weight_pct: 100, min_duration_s: 1}\n")
    refused = runner.invoke(app, ["rollout", "start", str(plan), "--candidate", "staging", "--url", url])
    assert refused.exit_code == 2 and "HTTP 422" in refused.output and "candidate" in refused.output
    plan.write_text("stages:\n  - {weight_pct: 100, min_duration_s: 1, min_sample: 3}\n")
    refused = runner.invoke(app, ["rollout", "start", str(plan), "--candidate", "1", "--url", url])
    assert refused.exit_code == 2 and "unknown key 'stages.0.min_sample'" in refused.output


def test_a_controller_killed_mid_stage_is_replaced_and_finishes_the_rollout(canary_app, tiny_world):
    import ray

    url, registry = canary_app
    candidate = copy_version(registry, "production", "a candidate whose controller is killed")
    plan = {**PLAN, "stages": [{"weight_pct": 50, "min_samples": 100, "min_duration_s": 8},
                               {"weight_pct": 100, "min_samples": 100, "min_duration_s": 3}]}
    harness = _harness()
    traffic, stop = harness.Traffic(), threading.Event()
    threads = [threading.Thread(target=harness.drive, args=(url, "", tiny_world, stop, traffic, 20 + i),
                                daemon=True) for i in range(3)]
    for t in threads:
        t.start()
    try:
        assert requests.post(f"{url}/admin/rollout", json={"candidate": str(candidate), "plan": plan},
                             timeout=10).status_code == 200
        time.sleep(3)  # mid-stage: the controller holds the lease and has evaluated
        before = requests.get(f"{url}/admin/rollout", timeout=10).json()["rollout"]
        assert before["status"] == "Progressing" and before["stage_index"] == 0 and before["token"] is not None
        [name] = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                  if "RolloutController" in a["name"] and a["name"].startswith("SERVE_REPLICA")]
        ray.kill(ray.get_actor(name, namespace="serve"), no_restart=True)  # kill -9 of the replica
        state = _wait_status(url, {"Healthy", "Degraded"}, 120)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=15)
    assert state["status"] == "Healthy", state["decisions"]
    assert [d["action"] for d in state["decisions"]] == ["promote", "complete"]
    assert state["token"] > before["token"]  # the replacement took the lease over (a new fencing token)
    assert registry.resolve("ranker", "production") == candidate


def test_without_the_controllers_heartbeat_the_canary_falls_to_zero_after_the_ttl(canary_app, tiny_world):
    from ray import serve

    from rayml.rollout.controller import command

    url, registry = canary_app
    candidate = copy_version(registry, "production", "a canary whose controller dies")
    plan = {**PLAN, "weights_ttl_s": 4, "stages": [{"weight_pct": 100, "min_samples": 100,
                                                     "min_duration_s": 3600}]}
    assert requests.post(f"{url}/admin/rollout", json={"candidate": str(candidate), "plan": plan},
                         timeout=10).status_code == 200
    time.sleep(1.5)  # every replica's next poll
    arms = _traffic_for(url, tiny_world, 3, clients=1).requests
    assert {arm for arm, _ in arms} == {"canary"}, arms  # 100 %: every user on the canary
    serve.delete("canary-controller")  # no more heartbeats
    time.sleep(4 + 1.5)  # the TTL, then a poll
    arms = _traffic_for(url, tiny_world, 3, clients=1).requests
    assert {arm for arm, _ in arms} == {"production"}, arms
    command(registry.root, "ranker", "abort")
