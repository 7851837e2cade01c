"""Health routes of the recommender: ``/healthz``, ``/readyz``, OIP health, and Serve's ``check_health``.

Semantics (see :mod:`rayml.serving.health`): liveness fails only on faults inside the replica, and Serve then
replaces it; a dependency outage (Redis down, the Ranker deployment unreachable) flips readiness only.
"""

# No `from __future__ import annotations`: FastAPI must see the real classes.

import asyncio
import os
from typing import Any

import numpy as np
from fastapi.responses import JSONResponse
from ray import serve

from rayml.features.redis_store import OnlineStoreUnavailable
from rayml.registry.follow import AliasFollower
from rayml.serving.health import DEPENDENCY, HealthReport, ReplicaHealth, safe_reason
from rayml.serving.http_api import api
from rayml.serving.recommender import RecommenderCore

RANKER_DESCRIBE_TIMEOUT_S = 2.0


def cluster_ingress() -> str:
    """The cluster's ingress, from the flags its Serve processes started with (:mod:`rayml.serving.ingress`):
    ``haproxy``, ``direct`` (replica ports only, no HAProxy) or ``serve-proxy``."""
    if os.environ.get("RAY_SERVE_ENABLE_HA_PROXY") == "1":
        return "haproxy"
    if "1" in (os.environ.get("RAY_SERVE_ENABLE_DIRECT_INGRESS"), os.environ.get("RAY_SERVE_THROUGHPUT_OPTIMIZED")):
        return "direct"
    return "serve-proxy"


def replica_id() -> str | None:
    try:
        return serve.get_replica_context().replica_id.unique_id
    except Exception:  # outside a replica (tests of the class itself)
        return None


class HealthRoutes:
    """Mixin of the recommender deployment; needs ``self.core``, ``self.health`` and ``self.ranker`` (a handle to
    the split plan's Ranker deployment, or None)."""

    core: RecommenderCore
    health: ReplicaHealth
    ranker: Any
    startup_s: dict[str, float] | None = None  # set when the replica is ready: init, and since its imports began

    def _followers(self) -> dict[str, AliasFollower]:
        ranking = self.core.ranking
        followers: dict[str, AliasFollower] = {f"ranker {ranking.alias!r}": ranking.follower}
        followers.update({f"ranker {alias!r}": f for alias, f in ranking.extra.items()})
        if self.core.retrieval.follower is not None:
            followers[f"retriever {self.core.retrieval.follower.ref!r}"] = self.core.retrieval.follower
        return followers

    async def _report(self) -> tuple[HealthReport, dict[str, Any]]:
        report = HealthReport(failing=self.health.liveness())
        extra: dict[str, Any] = {}
        try:
            self.core.features.get(self.core.args.user_view, np.array([0]))
        except OnlineStoreUnavailable as exc:
            report.degraded.append(f"{DEPENDENCY}online store ({self.core.features.backend}) unavailable: {exc}")
        if self.ranker is not None:
            try:
                extra["ranker_deployment"] = await asyncio.wait_for(self.ranker.describe.remote(),
                                                                    RANKER_DESCRIBE_TIMEOUT_S)
            except Exception as exc:
                report.degraded.append(f"{DEPENDENCY}ranker deployment unreachable: {type(exc).__name__}")
        for name, follower in self._followers().items():
            if follower.target != follower.version and follower.target in follower.refused:
                report.degraded.append(f"{name} points at refused {follower.model}:v{follower.target}: "
                                       f"{follower.refused[follower.target]}; serving {follower.label}")
        for alias, error in self.core.ranking.alias_errors.items():
            report.degraded.append(f"ranker alias {alias!r} not served: {error}")
        if self.core.ranking.reload_error:
            report.degraded.append(f"ranker_alias refused: {self.core.ranking.reload_error}")
        return report, extra

    async def check_health(self) -> None:
        """Serve's liveness probe: raises (and Serve replaces this replica) only on faults inside it."""
        self.health.watch(asyncio.get_running_loop())
        reasons = self.health.liveness()
        if reasons:
            raise RuntimeError("; ".join(reasons))

    @api.get("/healthz")
    async def healthz(self) -> dict:
        """``status``: ok | degraded | failing, with ``reasons``; always 200 (a probe reads the body)."""
        report, extra = await self._report()
        core = self.core
        return {
            "status": report.status, "reasons": report.reasons, "live": report.live, "ready": report.ready,
            "model_version": core.model_version, "artifact": core.ranker.artifact,
            "models": {name: _safe(f.describe()) for name, f in self._followers().items()},
            "online_store": core.features.backend, "online_store_errors": core.features.errors,
            "model_call_failures": self.health.calls.total_failures,
            "ingress": cluster_ingress(), "replica": replica_id(), "plan": core.args.plan,
            "startup_s": self.startup_s,
            "auth": {"enabled": core.args.auth.enabled, "protect_reads": core.args.auth.protect_reads},
            "batching": self.batching(),  # type: ignore[attr-defined]
            **extra,
        } | self._alias_fields()

    def _alias_fields(self) -> dict[str, Any]:
        ranking = self.core.ranking
        fields: dict[str, Any] = {}
        if ranking.extra_aliases:
            fields["aliases"] = {alias: ranker.model_version for alias, ranker in ranking.aliases.items()}
        if ranking.alias_errors:
            fields["alias_errors"] = {a: safe_reason(e) for a, e in ranking.alias_errors.items()}
        if ranking.reload_error:
            fields["reload_error"] = safe_reason(ranking.reload_error)
        return fields

    async def _ready(self) -> JSONResponse | None:
        """None when ready, else the 503 to answer (with the reasons)."""
        report, _ = await self._report()
        if report.ready:
            return None
        return JSONResponse(status_code=503, content={"ready": False, "reasons": report.reasons},
                            headers={"Retry-After": "1"})

    @api.get("/readyz", responses={503: {"description": "Not ready: a dependency is down or the replica is failing."}})
    async def readyz(self):
        """Ready when the models are loaded, the online store answers and the replica is live (503 otherwise)."""
        not_ready = await self._ready()
        if not_ready is not None:
            return not_ready
        retriever = self.core.retrieval.retriever
        return {"ready": True, "ranker": self.core.model_version,
                "retriever": retriever.model_version if retriever else None,
                "online_store": self.core.features.backend, "plan": self.core.args.plan}

    @api.get("/v2/health/live", responses={503: {"description": "The replica is failing."}})
    async def oip_live(self):
        reasons = self.health.liveness()
        if reasons:
            return JSONResponse(status_code=503, content={"live": False, "reasons": [safe_reason(r) for r in reasons]})
        return {"live": True}

    @api.get("/v2/health/ready", responses={503: {"description": "Not ready: a dependency is down."}})
    async def oip_ready(self):
        return await self._ready() or {"ready": True}


def _safe(value: Any) -> Any:
    if isinstance(value, str):
        return safe_reason(value)
    if isinstance(value, dict):
        return {k: _safe(v) for k, v in value.items()}
    return value
