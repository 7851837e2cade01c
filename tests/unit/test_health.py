"""Replica health semantics and the access log, without Ray: a real event loop, a real ASGI app over httpx."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest
from fastapi import FastAPI
from fastapi.responses import JSONResponse

from rayml.serving.health import (
    DEPENDENCY,
    HealthReport,
    LoopWatchdog,
    ModelCalls,
    ReplicaHealth,
    safe_reason,
)
from rayml.serving.http_guards import AccessLog

pytestmark = pytest.mark.unit


def test_safe_reason_masks_paths_and_caps_length():
    text = "ArtifactCorruptError: /mnt/registry/ranker/versions/4/model.onnx fails its checksum"
    assert safe_reason(text) == "ArtifactCorruptError: <path> fails its checksum"
    assert len(safe_reason("x" * 1000)) == 300
    assert safe_reason("ranker:v4 refused") == "ranker:v4 refused"


def test_model_calls_fail_only_after_a_run_of_failures():
    calls = ModelCalls(failing_after=3)
    for _ in range(2):
        calls.failed(RuntimeError("boom at /tmp/x/y.onnx"))
    calls.ok()  # one success resets the run
    calls.failed(RuntimeError("boom"))
    assert not calls.failing and calls.total_failures == 3
    calls.failed(RuntimeError("boom"))
    calls.failed(RuntimeError("[ONNXRuntimeError] Got invalid dimensions"))
    assert calls.failing and "invalid dimensions" in calls.last_error


def test_report_status_liveness_and_readiness():
    assert HealthReport().status == "ok" and HealthReport().ready
    refused = HealthReport(degraded=["ranker 'production' points at refused ranker:v4"])
    assert refused.status == "degraded" and refused.ready  # a refused version does not stop serving
    store = HealthReport(degraded=[f"{DEPENDENCY}online store (redis) unavailable"])
    assert store.status == "degraded" and not store.ready and store.live
    failing = HealthReport(failing=["event loop stalled"], degraded=[f"{DEPENDENCY}x"])
    assert failing.status == "failing" and not failing.live and not failing.ready
    assert failing.reasons == ["event loop stalled", f"{DEPENDENCY}x"]


def test_watchdog_sees_a_stalled_loop_and_its_recovery():
    health = ReplicaHealth(stall_s=0.6, failing_after=10)
    seen: list[list[str]] = []

    async def scenario() -> None:
        health.watch(asyncio.get_running_loop())
        await asyncio.sleep(0.8)
        seen.append(health.liveness())  # healthy loop
        time.sleep(1.5)  # user code blocking the loop
        seen.append(health.liveness())  # read from inside the stall's end: the probe is still pending
        await asyncio.sleep(0.8)
        seen.append(health.liveness())

    asyncio.run(scenario())
    assert health.watchdog is not None
    health.watchdog.stop()
    assert seen[0] == [] and seen[2] == []
    assert len(seen[1]) == 1 and seen[1][0].startswith("event loop stalled for ")


def test_watchdog_lag_is_zero_on_an_idle_loop():
    async def scenario() -> float:
        dog = LoopWatchdog(asyncio.get_running_loop(), interval_s=0.05)
        await asyncio.sleep(0.3)
        lag = dog.lag_s
        dog.stop()
        return lag

    assert asyncio.run(scenario()) < 0.2


def _app(lines: list[dict], rate: float) -> AccessLog:
    inner = FastAPI()

    @inner.get("/ok")
    def ok() -> JSONResponse:
        return JSONResponse({"ok": True}, headers={"x-model-version": "ranker:v7"})

    @inner.get("/boom")
    def boom() -> JSONResponse:
        return JSONResponse({"detail": "down"}, status_code=503)

    return AccessLog(inner, sample_rate=lambda: rate, sink=lines.append)


def test_access_log_one_structured_line_per_request():
    lines: list[dict] = []

    async def scenario() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=_app(lines, 1.0))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return [await client.get("/ok", headers={"x-request-id": "abc-1"}), await client.get("/ok")]

    given, generated = asyncio.run(scenario())
    assert [line["request_id"] for line in lines] == ["abc-1", generated.headers["x-request-id"]]
    assert "x-request-id" not in given.headers  # a given id is echoed by Serve itself, not twice
    first = lines[0]
    assert first | {"latency_ms": 0} == {"request_id": "abc-1", "method": "GET", "route": "/ok", "status": 200,
                                         "latency_ms": 0, "model_version": "ranker:v7"}
    assert first["latency_ms"] > 0
    json.dumps(lines)  # every line is JSON-serialisable


def test_access_log_samples_but_keeps_every_server_error():
    lines: list[dict] = []

    async def scenario() -> None:
        transport = httpx.ASGITransport(app=_app(lines, 0.0))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            for _ in range(20):
                await client.get("/ok")
            await client.get("/boom")

    asyncio.run(scenario())
    assert [(line["route"], line["status"]) for line in lines] == [("/boom", 503)]


def test_admission_control_sheds_posts_before_any_work_and_never_probes():
    from rayml.serving.http_guards import Admission, InFlight, RequestCount

    counter = RequestCount()
    inner = FastAPI()
    started: list[str] = []
    release = asyncio.Event()

    @inner.post("/work")
    async def work() -> dict:
        started.append("work")
        await release.wait()
        return {"ok": True}

    @inner.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok"}

    app = InFlight(inner, counter=lambda: counter, limit=lambda: Admission(2, 3))

    async def scenario() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            held = [asyncio.create_task(client.post("/work", json={})) for _ in range(2)]
            while len(started) < 2:
                await asyncio.sleep(0.01)
            shed = await client.post("/work", json={})
            probe = await client.get("/healthz")
            release.set()
            return [shed, probe, *await asyncio.gather(*held)]

    shed, probe, *held = asyncio.run(scenario())
    assert shed.status_code == 503 and shed.headers["retry-after"] == "3" and "over capacity" in shed.json()["detail"]
    assert probe.status_code == 200 and all(r.status_code == 200 for r in held)
    assert started == ["work", "work"] and counter.shed == 1 and counter.value == 0  # the shed one did no work


def test_a_shed_tightens_admission_to_the_overload_limit_until_hold_s_passes():
    """Below ``most`` nothing is shed and the limit never tightens (a closed-loop client with fewer connections);
    after a shed, only ``overload_most`` are admitted until ``hold_s`` after the latest shed."""
    from rayml.serving.http_guards import Admission, InFlight, RequestCount
    from tests.clock import Clock

    counter, clock = RequestCount(), Clock()
    inner = FastAPI()
    gates: list[asyncio.Event] = []

    @inner.post("/work")
    async def work() -> dict:
        gate = asyncio.Event()
        gates.append(gate)
        await gate.wait()
        return {"ok": True}

    app = InFlight(inner, counter=lambda: counter, limit=lambda: Admission(4, 1, overload_most=2, hold_s=3.0),
                   clock=clock)

    async def scenario() -> dict[str, list[int]]:
        transport = httpx.ASGITransport(app=app)
        seen: dict[str, list[int]] = {}
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            async def hold(n: int) -> list[asyncio.Task]:
                before = len(gates)
                tasks = [asyncio.create_task(client.post("/work", json={})) for _ in range(n)]
                while len(gates) < before + n:
                    await asyncio.sleep(0.005)
                return tasks

            async def release(tasks: list[asyncio.Task]) -> list[int]:
                for gate in gates:
                    gate.set()
                gates.clear()
                return [r.status_code for r in await asyncio.gather(*tasks)]

            first = await hold(3)  # 3 < 4: all in, no overload
            seen["below most"] = await release(first)
            assert not counter.overloaded(clock())
            held = await hold(4)
            seen["fifth"] = [(await client.post("/work", json={})).status_code]  # 4 inside: shed, overloaded
            assert counter.overloaded(clock())
            seen["held"] = await release(held)
            two = await hold(2)  # 2 inside now: the overload limit
            seen["third while overloaded"] = [(await client.post("/work", json={})).status_code]
            clock.now += 2.9  # still within hold_s of the latest shed, which restarted it
            seen["later, still overloaded"] = [(await client.post("/work", json={})).status_code]
            clock.now += 3.1
            assert not counter.overloaded(clock())
            seen["after hold_s"] = await release([*two, *await hold(2)])  # 4 inside again: the normal limit
        return seen

    seen = asyncio.run(scenario())
    assert seen == {"below most": [200] * 3, "fifth": [503], "held": [200] * 4, "third while overloaded": [503],
                    "later, still overloaded": [503], "after hold_s": [200] * 4}
    assert counter.shed == 3 and counter.value == 0
