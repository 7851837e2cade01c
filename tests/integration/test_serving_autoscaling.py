"""LatencySLOPolicy on real Serve, through the shipped HAProxy ingress: replicas that are full scale up although
the latency they measure stays under the target (what an overloaded replica reports on a fast node, since Serve
lets only ``max_ongoing_requests`` into it), and without ``saturated_ongoing`` the same load does not."""

from __future__ import annotations

import asyncio
import threading

import pytest
import requests

from tests.clients import run_clients

pytestmark = pytest.mark.integration

ONGOING = 4  # max_ongoing_requests of the test deployment


def deployment(name: str, policy_kwargs: dict):
    from ray import serve

    @serve.deployment(
        name=name, max_ongoing_requests=ONGOING, max_queued_requests=64, ray_actor_options={"num_cpus": 0.01},
        autoscaling_config={
            "min_replicas": 1, "max_replicas": 2, "upscale_delay_s": 1, "downscale_delay_s": 600,
            "look_back_period_s": 2, "metrics_interval_s": 0.5,
            "policy": {"policy_function": "rayml.serving.autoscaling:LatencySLOPolicy",
                       "policy_kwargs": policy_kwargs},
        },
    )
    class Full:
        async def __call__(self, request) -> str:
            await asyncio.sleep(0.2)
            return "ok"

        def record_autoscaling_stats(self) -> dict[str, float]:
            return {"latency_p95_ms": 5.0}  # far under target_ms: only the saturation rule can scale

    return Full.bind()


def running_replicas(app: str, name: str) -> int:
    from ray import serve

    states = serve.status().applications[app].deployments[name].replica_states
    return int(states.get("RUNNING", 0))


def drive_until(url: str, seconds: float, done) -> dict[int, int]:
    """8 clients (twice what one replica admits) until ``done()`` or ``seconds``; statuses counted."""
    statuses: dict[int, int] = {}
    lock = threading.Lock()

    def client(stop: threading.Event) -> None:
        with requests.Session() as session:
            while not stop.is_set():
                status = session.get(url, timeout=10).status_code
                with lock:
                    statuses[status] = statuses.get(status, 0) + 1

    run_clients([client] * (2 * ONGOING), seconds, until=done)
    return statuses


@pytest.mark.parametrize("saturated", [None, ONGOING - 1], ids=["latency-only", "saturated_ongoing"])
def test_full_replicas_scale_up_only_with_saturated_ongoing(serve_url, saturated):
    from ray import serve

    app = f"autoscale-{'sat' if saturated else 'lat'}"
    # target_ongoing_requests at the replica's limit: the policy's no-latency-yet fallback (scale up when more than
    # that many are ongoing a replica) can never fire, so only the saturation rule can add the replica.
    kwargs = {"target_ms": 10_000, "target_ongoing_requests": ONGOING} | (
        {"saturated_ongoing": saturated} if saturated else {})
    serve.run(deployment("Full", kwargs), name=app, route_prefix=f"/{app}")
    try:
        assert running_replicas(app, "Full") == 1
        statuses = drive_until(f"{serve_url}/{app}", 8 if saturated is None else 40,
                               lambda: running_replicas(app, "Full") >= 2)
        assert set(statuses) == {200}, statuses  # 8 clients fit in 4 ongoing + 64 queued
        assert running_replicas(app, "Full") == (1 if saturated is None else 2)
    finally:
        serve.delete(app)
