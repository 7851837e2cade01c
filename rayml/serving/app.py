"""Ray Serve application: the recommender deployment (FastAPI ingress over :class:`RecommenderCore`).

Routes by concern: recommend, score and events here; OIP in :mod:`rayml.serving.oip_routes`; health in
:mod:`rayml.serving.health_routes`; the FastAPI object, middlewares and error shapes in :mod:`rayml.serving.http_api`.
"""

# No `from __future__ import annotations`: FastAPI must see the real request-model classes.

import asyncio
import json
import logging
import os
import threading
import time
from typing import Any

import numpy as np
from fastapi import HTTPException, Request
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from ray import serve
from ray.serve import Application
from ray.util import metrics

from rayml.features.definitions import FeatureRepo
from rayml.features.realtime import Events
from rayml.features.redis_store import OnlineStoreUnavailable
from rayml.monitoring.tap import USER_CONFIG_KEY, MonitorTap, sample_rate_update
from rayml.serving.auth import TokenStore
from rayml.serving.autoscaling import LatencyWindow
from rayml.serving.batching import apply_batching, batching_state
from rayml.serving.config import RecommenderArgs, load_serving_repo
from rayml.serving.fast_routes import ROUTES, Scope, header, is_json
from rayml.serving.health import ReplicaHealth
from rayml.serving.health_routes import HealthRoutes, replica_id
from rayml.serving.http_api import (
    EDGE,
    IN_FLIGHT,
    SECURED,
    Authorization,
    api,
    responses,
    unavailable,
)
from rayml.serving.oip_routes import OIPRoutes, RankerUnavailable, document_oip
from rayml.serving.ranker import Ranker
from rayml.serving.recommender import (
    Prepared,
    Recommendation,
    RecommendCall,
    RecommenderCore,
    UnknownAliasError,
    UnknownUserError,
)
from rayml.serving.rollout_routes import RolloutRoutes
from rayml.serving.schemas import (
    EventsRequest,
    EventsResponse,
    RecommendRequest,
    RecommendResponse,
    ScoreRequest,
    ScoreResponse,
)
from rayml.serving.stages import LoadedRanker

__all__ = ["RankerUnavailable", "Recommender", "RecommenderIngress", "build_recommender"]

logger = logging.getLogger("ray.serve")
document_oip(api)
IMPORTED_AT = time.monotonic()  # a replica's start: its process imports this module first


class RecommenderIngress(HealthRoutes, OIPRoutes, RolloutRoutes):
    """The ingress: candidates, features and filters in memory; the ranker too (fused plan) or behind a handle
    to the `Ranker` deployment (split plan)."""

    def __init__(self, args: dict, repo: dict, ranker: Any = None) -> None:
        """``ranker``: the split plan's handle to the :class:`rayml.serving.ranker.Ranker` deployment."""
        started = time.monotonic()
        # Serve ships init args to replicas as plain data, so the models travel as dicts.
        self.core = RecommenderCore(RecommenderArgs.model_validate(args), FeatureRepo.model_validate(repo))
        self.ranker = ranker
        edge = self.core.args
        EDGE.update(max_body_bytes=edge.max_body_bytes, access_log_sample=edge.access_log_sample,
                    max_in_flight=edge.max_in_flight, retry_after_s=edge.retry_after_s,
                    overload_in_flight=edge.overload.in_flight if edge.overload else 0,
                    overload_hold_s=edge.overload.hold_s if edge.overload else 0.0)
        self.auth = TokenStore(edge.auth)
        self.health = ReplicaHealth(edge.health.stall_s, edge.health.failing_after)
        backend = {"backend": self.core.features.backend}
        self.store_errors = metrics.Counter(
            "rayml_online_store_errors", "Online-store calls that failed (store down).", tag_keys=("backend",)
        ).set_default_tags(backend)
        self.degraded = metrics.Counter(
            "rayml_degraded_responses", "Answers served batch-only because the online store was down.",
            tag_keys=("backend",),
        ).set_default_tags(backend)
        self.feature_missing = metrics.Counter(
            "rayml_feature_missing", "Entities the online store did not know (defaults served).", tag_keys=("backend",)
        ).set_default_tags(backend)
        self._errors_seen = 0
        self.latency = LatencyWindow(window_s=10.0)
        self._rollout_setup()
        self._monitoring_setup()
        ROUTES[("POST", "/recommend")] = self._recommend_fast
        if edge.alias_poll_s > 0:
            threading.Thread(target=self._poll_aliases, name="alias-poll", daemon=True).start()
        done = time.monotonic()
        self.startup_s = {"init": round(done - started, 3), "since_import": round(done - IMPORTED_AT, 3),
                          "pid": os.getpid()}
        logger.info("recommender replica ready: init %.2f s, %.2f s after its module was imported",
                    self.startup_s["init"], self.startup_s["since_import"])

    def _monitoring_setup(self) -> None:
        """Send a sample of served rows to the monitor deployment (a thread ships them once a second)."""
        cfg = self.core.args.monitoring
        self.monitor_tap: MonitorTap | None = None
        if cfg is None:  # (a sample rate of 0 keeps the tap: user_config.monitor_sample_rate can raise it live)
            return
        handle = serve.get_deployment_handle(cfg.deployment, app_name=cfg.app)
        self._loop: asyncio.AbstractEventLoop | None = None  # the replica's loop, seen by the first request

        def send(message: dict[str, Any]) -> None:
            # The handle routes from the replica's event loop; the tap's thread hands the call over to it, and
            # does not wait for the answer (fire and forget).
            if self._loop is None:
                raise RuntimeError("no request seen yet")
            self._loop.call_soon_threadsafe(lambda: handle.ingest.remote(message))

        self.monitor_tap = MonitorTap(cfg.sample_rate, send, replica=replica_id() or "local", send_every_s=cfg.send_every_s,
                                      bucket_s=cfg.profile_bucket_s)
        self.core.taps["monitor"] = self._monitor_tap

    def _monitor_tap(self, p: Prepared) -> None:
        tap = self.monitor_tap
        if tap is None or not tap.sampled() or p.scores is None or not len(p.scores):
            return
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        tap.add(p.monitor_row(self.core.args.user_view))

    def _poll_aliases(self) -> None:
        """Follow registry alias moves (promote, rollback) without a restart or a dropped request.

        Loads happen on this thread, off the request path; each swap is one reference assignment.
        """
        served: dict[str, str] = {}
        args = self.core.args
        items_built = time.monotonic()
        while True:
            time.sleep(args.alias_poll_s)
            if args.item_rows_refresh_s and (self.core.features.backend == "redis" or self.core.ranker.items is None) \
                    and time.monotonic() - items_built >= args.item_rows_refresh_s:
                self.core.ranking.refresh_items()  # off the request path; one reference swap per version
                items_built = time.monotonic()
            now = self.core.ranking.refresh_aliases()
            self._rollout_poll()
            retriever = self.core.retrieval.follower
            if retriever is not None and retriever.refresh():
                logger.info("serving retriever %s", retriever.label)
            if now != served:
                logger.info("serving ranker aliases %s", now)
                served = now

    def record_autoscaling_stats(self) -> dict[str, float]:
        """Custom autoscaling metric for :class:`rayml.serving.autoscaling.LatencySLOPolicy`: recent p95 in ms."""
        return self.latency.stats()

    def __del__(self) -> None:
        if hasattr(self, "core"):  # not when __init__ failed
            self.core.close()  # flush the served-feature log on graceful shutdown

    def _store_down(self, detail: str) -> HTTPException:
        """The 503 a request gets while the online store is down (counted; clients retry after a second)."""
        self._count_store_errors()
        return unavailable(detail)

    def _count_store_errors(self) -> None:
        errors = self.core.features.errors
        if errors > self._errors_seen:
            self.store_errors.inc(errors - self._errors_seen)
            self._errors_seen = errors

    def reconfigure(self, config: dict) -> None:
        """Live `user_config`, applied without a restart.

        - ``ranker_alias``: the reference the default ranker follows from now on. It names *what* to follow; the
          registry says *where it points*: an alias (``production``) follows every promote and rollback, a version
          number (``"3"``) is pinned. A reference that cannot be loaded is refused: the current one keeps serving
          and ``/healthz`` reports it.
        - ``max_batch_size`` / ``batch_wait_timeout_s``: tune the dynamic batching of ranker calls.
        - ``monitor_sample_rate``: the share of answered requests sent to the monitor (``args.monitoring``
          must be configured; 0 pauses sampling).

        A bad value raises ``ValueError`` naming the key, before anything is applied.
        """
        rate = sample_rate_update(config)
        if rate is not None and self.monitor_tap is None:
            raise ValueError(f"user_config.{USER_CONFIG_KEY}: monitoring is not configured (args.monitoring)")
        apply_batching(self._recommend_batch, config, allowed={"ranker_alias", USER_CONFIG_KEY})
        if rate is not None and self.monitor_tap is not None:
            self.monitor_tap.sample_rate = rate
            logger.info("monitoring: sampling %.3f of answered requests", rate)
        ref = config.get("ranker_alias")
        if ref is None:
            return
        try:
            version = self.core.ranking.swap(str(ref))
            logger.info("serving ranker %s", version)
        except Exception:
            logger.exception("ranker %r refused; still serving %s", ref, self.core.model_version)

    def _score_here(self, ranker: LoadedRanker, features: np.ndarray) -> np.ndarray:
        """The fused plan's model call, counted for liveness (a run of failures makes the replica failing)."""
        try:
            scores = self.core.ranking.score(ranker, features)
        except Exception as exc:
            self.health.calls.failed(exc)
            raise
        self.health.calls.ok()
        return scores

    async def _rank(self, ranker: LoadedRanker, features: np.ndarray) -> np.ndarray:
        """Scores of encoded rows: here (fused plan) or by the Ranker deployment (split plan)."""
        if self.ranker is None:
            return self._score_here(ranker, features)
        try:
            return await self.ranker.score.remote((ranker.model_version, features))
        except Exception as exc:
            raise RankerUnavailable(f"ranker deployment: {type(exc).__name__}: {exc}") from exc

    async def _answer(self, calls: list[RecommendCall]) -> list[Recommendation | Exception]:
        prepared = self.core.prepare_many(calls)
        for batch in self.core.ranking_batches(prepared):
            try:  # fused: `_rank` scores inline and never suspends
                batch.set_scores(await self._rank(batch.ranker, batch.features))
            except Exception as exc:  # this batch's requests fail; the others are answered
                batch.fail(exc)
        return self.core.finish_many(prepared)

    # No wait: batches form from what queued meanwhile. Several batches at once only matter in the split plan,
    # where a batch awaits the Ranker deployment; fused batches run inline, one after the other.
    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.0, max_concurrent_batches=4)
    async def _recommend_batch(self, calls: list[RecommendCall]) -> list[Recommendation | Exception]:
        """Concurrent requests share one ONNX call per ranker version.

        The work (about half a millisecond a request) runs inline: requests arriving meanwhile queue and form the
        next batch, and no thread hand-off is added to every request's latency.
        """
        return await self._answer(calls)

    async def _recommend_one(self, call: RecommendCall) -> Recommendation | Exception:
        """Straight through when this is the replica's only HTTP request; through the batch queue otherwise.

        One yield first: requests whose bytes already arrived get parsed and counted, so under load they batch
        (the fused plan has no other await, and would otherwise answer them strictly one at a time).
        """
        if IN_FLIGHT.value <= 1:
            await asyncio.sleep(0)
            if IN_FLIGHT.value <= 1:
                return (await self._answer([call]))[0]
        return await self._recommend_batch(call)

    def _failed(self, assignment, request_id: str, user_id: int, alias: str | None, started: float) -> None:
        """A 5xx answer, for the per-arm error counts and the error guardrail."""
        try:
            version = self.core.ranking.ranker_for(alias).model_version
        except Exception:
            version = "unknown"
        self._served(assignment, request_id, user_id, version, 503, time.perf_counter() - started, [])

    def batching(self) -> dict[str, float]:
        return {**batching_state(self._recommend_batch), "largest_batch": self.core.largest_batch,
                "shed": IN_FLIGHT.shed, "overloaded": IN_FLIGHT.overloaded(time.monotonic())}

    @api.post("/recommend", response_model=RecommendResponse, responses=responses(401, 403, 404, 413, 422, 429, 503),
              openapi_extra=SECURED)
    async def recommend(self, request: RecommendRequest, http: Request,
                        authorization: Authorization = None) -> JSONResponse:
        """Top ``k`` items for a user. ``explain: true`` needs the admin role (it returns raw features).

        Without ``model_alias``, a running rollout's router picks the arm (production or canary) by the user's
        hash; the answer names its ``arm``, ``model_version`` and ``request_id`` (send it back with the clicks).
        """
        return await self._recommend(request, http.state.request_id, authorization)

    async def _recommend_fast(self, scope: Scope, body: bytes) -> Response | None:
        """``POST /recommend`` past FastAPI's router (:mod:`rayml.serving.fast_routes`): a JSON body that is a
        valid request is answered here; anything else (None) goes through FastAPI, which names the bad field."""
        if not is_json(scope):
            return None
        try:
            request = RecommendRequest.model_validate(json.loads(body))
        except (ValueError, ValidationError):  # JSONDecodeError is a ValueError
            return None
        return await self._recommend(request, scope["state"]["request_id"], header(scope, b"authorization"))

    async def _recommend(self, request: RecommendRequest, request_id: str, authorization: str | None) -> JSONResponse:
        self.auth.check(authorization, "admin" if request.explain else "read")
        k = request.k or self.core.args.default_k
        if k > self.core.args.max_k:
            raise HTTPException(
                status_code=422,
                detail=[{"type": "less_than_equal", "loc": ["body", "k"],
                         "msg": f"Input should be less than or equal to {self.core.args.max_k}", "input": k}],
            )
        started = time.perf_counter()
        assignment = self._route(request.user_id, request.model_alias)
        alias = assignment.alias if assignment is not None else request.model_alias
        try:
            result = await self._recommend_one(RecommendCall(request.user_id, k, request.explain, alias))
            if isinstance(result, Exception):
                raise result
            rec = result
        except UnknownAliasError:
            raise HTTPException(status_code=422, detail=[
                {"type": "unknown_alias", "loc": ["body", "model_alias"], "input": request.model_alias,
                 "msg": f"not served; aliases: {self.core.ranking.served_aliases}"}]) from None
        except UnknownUserError:
            raise HTTPException(status_code=404, detail=f"user_id {request.user_id} is unknown") from None
        except OnlineStoreUnavailable:
            self._failed(assignment, request_id, request.user_id, alias, started)
            raise self._store_down("online store unavailable and the user has no batch candidates") from None
        except RankerUnavailable as exc:
            self._failed(assignment, request_id, request.user_id, alias, started)
            raise unavailable(str(exc)) from None
        except Exception:
            self._failed(assignment, request_id, request.user_id, alias, started)
            raise
        finally:
            self.latency.add(time.perf_counter() - started)
        self._served(assignment, request_id, rec.user_id, rec.model_version, 200, time.perf_counter() - started,
                     rec.items, rec.scores)
        if rec.degraded:
            self._count_store_errors()
            self.degraded.inc()
            logger.error("online store %s down: answered user %d batch-only", self.core.features.backend, rec.user_id)
        if rec.feature_missing:
            self.feature_missing.inc(rec.feature_missing)
        # Built directly (the schema above documents it): skips re-validating what the core just produced.
        return JSONResponse({"user_id": rec.user_id, "items": rec.items, "scores": rec.scores,
                             "model_version": rec.model_version, "feature_missing": rec.feature_missing,
                             "degraded": rec.degraded, "features": rec.features, "candidates": rec.candidates,
                             "request_id": request_id, "arm": assignment.arm if assignment else "production",
                             "experiment_arm": assignment.experiment_arm if assignment else None},
                            headers={"x-model-version": rec.model_version})

    @api.get("/admin/monitor", responses=responses(401, 403, 404, 503), openapi_extra=SECURED)
    async def monitor_status(self, authorization: Authorization = None) -> JSONResponse:
        """The monitor's state (windows, baselines, firing alerts) and its latest closed windows' results."""
        self.auth.check(authorization, "admin")
        cfg = self.core.args.monitoring
        if cfg is None or self.monitor_tap is None:
            raise HTTPException(status_code=404, detail="monitoring is not configured (args.monitoring)")
        handle = serve.get_deployment_handle(cfg.deployment, app_name=cfg.app)
        try:
            status = await handle.status.remote()
            results = await handle.results.remote(5)
        except Exception as exc:
            raise unavailable(f"monitor deployment: {type(exc).__name__}: {exc}") from None
        tap = self.monitor_tap
        return JSONResponse({"status": status, "results": results,
                             "tap": {"sent_rows": tap.sent_rows, "dropped_rows": tap.dropped_rows,
                                     "send_errors": tap.send_errors, "profile_errors": tap.profile_errors,
                                     "last_error": tap.last_error}})

    @api.post("/events", responses=responses(401, 403, 404, 413, 422, 503), openapi_extra=SECURED)
    def events(self, request: EventsRequest, authorization: Authorization = None) -> EventsResponse:
        """Ingest impressions into the real-time windows (and the event log); needs the ingest role.

        503 while the store is down. Events stamped more than ``realtime.max_future_s`` ahead or
        ``realtime.max_past_s`` back are refused (422 naming ``events.<i>.ts``), and a refused batch adds nothing.
        """
        self.auth.check(authorization, "ingest")
        now = time.time()
        realtime = self.core.features.repo.realtime
        ahead, back = (realtime.max_future_s, realtime.max_past_s) if realtime else (0.0, float("inf"))
        wrong = [{"type": "future_timestamp", "loc": ["body", "events", i, "ts"], "input": e.ts,
                  "msg": f"event time is more than {ahead:g}s in the future"}
                 for i, e in enumerate(request.events) if e.ts is not None and e.ts > now + ahead]
        wrong += [{"type": "past_timestamp", "loc": ["body", "events", i, "ts"], "input": e.ts,
                   "msg": f"event time is more than max_past_s={back:g}s in the past"}
                  for i, e in enumerate(request.events) if e.ts is not None and e.ts < now - back]
        if wrong:
            raise HTTPException(status_code=422, detail=sorted(wrong, key=lambda w: w["loc"][2]))
        events = Events(
            user_id=np.array([e.user_id for e in request.events], np.int64),
            item_id=np.array([e.item_id for e in request.events], np.int64),
            ts=np.array([now if e.ts is None else e.ts for e in request.events], np.float64),
            clicked=np.array([e.clicked for e in request.events], bool),
        )
        for e in request.events:
            self._clicked(e.request_id, now if e.ts is None else e.ts, e.user_id, e.item_id, e.clicked)
        try:
            self.core.ingest(events)
        except LookupError as exc:
            raise HTTPException(status_code=404, detail=str(exc)) from None
        except OnlineStoreUnavailable as exc:
            raise self._store_down(f"online store unavailable: {exc}") from None
        return EventsResponse(accepted=len(events))

    @api.post("/score", responses=responses(401, 403, 413, 422, 503), openapi_extra=SECURED)
    async def score(self, request: ScoreRequest, authorization: Authorization = None) -> ScoreResponse:
        """Scores of any items for a user, on their online features (the default ranker)."""
        self.auth.check(authorization, "read")
        item_ids = np.asarray(request.item_ids, np.int64)
        try:
            ranker, features, missing = self.core.score_inputs(request.user_id, item_ids)
            scores = await self._rank(ranker, features)
        except OnlineStoreUnavailable as exc:
            raise self._store_down(f"online store unavailable: {exc}") from None
        except RankerUnavailable as exc:
            raise unavailable(str(exc)) from None
        return ScoreResponse(user_id=request.user_id, items=request.item_ids, scores=scores.astype(float).tolist(),
                             model_version=ranker.model_version, feature_missing=missing)


# The class keeps an importable name (the deployment below is another object), so replicas import this module,
# and Serve's class-based view applies to the mixins' routes there too instead of travelling by value without it.
Recommender = serve.deployment(name="Recommender", ray_actor_options={"num_cpus": 0.5}, max_ongoing_requests=32)(
    serve.ingress(api)(RecommenderIngress)
)


def build_recommender(args: RecommenderArgs) -> Application:
    """The application ``serve run`` deploys; options in the YAML ``deployments:`` override the defaults.

    The feature repo is read here, on the driver, and travels to replicas as data (no shared file needed).
    """
    repo = load_serving_repo(args)
    ranker = None
    if args.plan == "split":
        ranker = Ranker.bind(args.registry, args.ranker_model, args.precision, args.ranker_alias)  # type: ignore[attr-defined]
    return Recommender.bind(args.model_dump(), repo.model_dump(), ranker)
