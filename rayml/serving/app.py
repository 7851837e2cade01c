"""Ray Serve application: FastAPI ingress over :class:`RecommenderCore`."""

# No `from __future__ import annotations`: FastAPI must see the real request-model classes.

import logging
import math
import threading
import time
from typing import Annotated, Any

import numpy as np
from fastapi import FastAPI, HTTPException, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from ray.serve import Application
from ray.util import metrics

from rayml.features.definitions import FeatureRepo
from rayml.features.realtime import Events
from rayml.features.redis_store import OnlineStoreUnavailable
from rayml.serving import oip
from rayml.serving.autoscaling import LatencyWindow
from rayml.serving.batching import apply_batching, batching_state
from rayml.serving.config import RecommenderArgs, load_serving_repo
from rayml.serving.http_guards import BodyLimit, InFlight, RequestCount
from rayml.serving.ranker import Ranker
from rayml.serving.recommender import (
    Recommendation,
    RecommendCall,
    RecommenderCore,
    UnknownAliasError,
    UnknownUserError,
)
from rayml.serving.stages import LoadedRanker

MAX_ID = 2**63 - 1  # ids are int64 everywhere


class RecommendRequest(BaseModel):
    """Body of ``POST /recommend``. Strict: ``"5"`` is not an int, unknown fields are refused."""

    model_config = ConfigDict(extra="forbid", strict=True)

    user_id: int = Field(ge=0, le=MAX_ID, description="User to recommend for.")
    k: int | None = Field(None, ge=1, description="Number of items; default and maximum come from the app config.")
    explain: bool = Field(False, description="Also return the raw online features behind the answer.")
    model_alias: str | None = Field(None, max_length=64, description="Ranker alias (e.g. canary); default: the app's.")


class RecommendResponse(BaseModel):
    user_id: int
    items: list[int]
    scores: list[float]
    model_version: str
    feature_missing: int = Field(description="Entities of this request the online store did not know (defaults used).")
    degraded: bool = Field(description="True when the online store was down: batch candidates in retrieval order.")
    features: dict[str, dict[str, list]] | None = None
    candidates: str = Field(description="batch: precomputed candidates; realtime: two-tower retrieval at request time.")


class Event(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    user_id: int = Field(ge=0, le=MAX_ID)
    item_id: int = Field(ge=0, le=MAX_ID)
    clicked: bool
    ts: float | None = Field(None, ge=0, allow_inf_nan=False, description="Event time, epoch seconds; default: now.")


class EventsRequest(BaseModel):
    """Body of ``POST /events``: impressions (clicked or not) that feed the real-time windows."""

    model_config = ConfigDict(extra="forbid", strict=True)

    events: list[Event] = Field(min_length=1, max_length=10_000)


class EventsResponse(BaseModel):
    accepted: int


class ScoreRequest(BaseModel):
    """Body of ``POST /score``: score these items for this user (any items, not only its candidates)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    user_id: int = Field(ge=0, le=MAX_ID)
    item_ids: list[Annotated[int, Field(ge=0, le=MAX_ID)]] = Field(min_length=1, max_length=10_000)


class ScoreResponse(BaseModel):
    user_id: int
    items: list[int]
    scores: list[float]
    model_version: str
    feature_missing: int


def oip_error(status: int, message: str) -> JSONResponse:
    """The Open Inference Protocol's error body: ``{"error": "..."}``."""
    return JSONResponse(status_code=status, content={"error": message})


class RankerUnavailable(RuntimeError):
    """The split plan's Ranker deployment did not answer."""


api = FastAPI(title="rayml recommender", version="0.1.0")
BODY_LIMIT = {"max_bytes": RecommenderArgs.model_fields["max_body_bytes"].default}  # this replica's, set at init
api.add_middleware(BodyLimit, max_bytes=lambda: BODY_LIMIT["max_bytes"])
IN_FLIGHT = RequestCount()  # HTTP requests inside this replica now
api.add_middleware(InFlight, counter=IN_FLIGHT)  # added last: outermost, so it counts from the first byte


@api.exception_handler(RequestValidationError)
async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """FastAPI's 422, made safe for inputs JSON cannot encode (``Infinity``/``NaN`` literals would make it a 500)."""
    return JSONResponse(status_code=422, content={"detail": _finite(jsonable_encoder(exc.errors()))})


def _finite(value):
    """``value`` with every non-finite float replaced by its name (strict JSON has no Infinity or NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value
logger = logging.getLogger("ray.serve")


@serve.deployment(ray_actor_options={"num_cpus": 0.5}, max_ongoing_requests=32)
@serve.ingress(api)
class Recommender:
    """The ingress: candidates, features and filters in memory; the ranker too (fused plan) or behind a handle
    to the `Ranker` deployment (split plan)."""

    def __init__(self, args: dict, repo: dict, ranker: Any = None) -> None:
        """``ranker``: the split plan's handle to the :class:`rayml.serving.ranker.Ranker` deployment."""
        # Serve ships init args to replicas as plain data, so the models travel as dicts.
        self.core = RecommenderCore(RecommenderArgs.model_validate(args), FeatureRepo.model_validate(repo))
        self.ranker = ranker
        BODY_LIMIT["max_bytes"] = self.core.args.max_body_bytes
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
        if self.core.args.ranker_aliases and self.core.args.alias_poll_s > 0:
            threading.Thread(target=self._poll_aliases, name="alias-poll", daemon=True).start()

    def _poll_aliases(self) -> None:
        """Follow registry alias moves (promote, rollback) without a restart or a dropped request."""
        served: dict[str, str] = {}
        while True:
            time.sleep(self.core.args.alias_poll_s)
            now = self.core.ranking.refresh_aliases()
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
        return HTTPException(status_code=503, detail=detail, headers={"Retry-After": "1"})

    def _count_store_errors(self) -> None:
        errors = self.core.features.errors
        if errors > self._errors_seen:
            self.store_errors.inc(errors - self._errors_seen)
            self._errors_seen = errors

    def reconfigure(self, config: dict) -> None:
        """Live `user_config`, applied without a restart.

        - ``ranker_alias``: swap the default ranker. A version that fails to load (missing, corrupt, failed
          parity) is refused: the current ranker keeps serving and ``/healthz`` reports the error.
        - ``max_batch_size`` / ``batch_wait_timeout_s``: tune the dynamic batching of ranker calls.
        """
        apply_batching(self._recommend_batch, config, allowed={"ranker_alias"})
        ref = config.get("ranker_alias")
        if ref is None:
            return
        try:
            version = self.core.ranking.swap(str(ref))
            logger.info("serving ranker %s", version)
        except Exception:
            logger.exception("ranker %r refused; still serving %s", ref, self.core.model_version)

    async def _rank(self, ranker: LoadedRanker, features: np.ndarray) -> np.ndarray:
        """Scores of encoded rows: here (fused plan) or by the Ranker deployment (split plan)."""
        if self.ranker is None:
            return self.core.ranking.score(ranker, features)
        try:
            return await self.ranker.score.remote((ranker.model_version, features))
        except Exception as exc:
            raise RankerUnavailable(f"ranker deployment: {type(exc).__name__}: {exc}") from exc

    async def _answer(self, calls: list[RecommendCall]) -> list[Recommendation | Exception]:
        if self.ranker is None:
            return self.core.recommend_many(calls)  # fused: inline, no await between stages
        prepared = self.core.prepare_many(calls)
        for batch in self.core.ranking_batches(prepared):
            try:
                batch.set_scores(await self._rank(batch.ranker, batch.features))
            except RankerUnavailable as exc:
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
        """Straight through when this is the replica's only HTTP request; through the batch queue otherwise."""
        if IN_FLIGHT.value <= 1:
            return (await self._answer([call]))[0]
        return await self._recommend_batch(call)

    def batching(self) -> dict[str, float]:
        return {**batching_state(self._recommend_batch), "largest_batch": self.core.largest_batch}

    @api.post("/recommend", response_model=RecommendResponse)
    async def recommend(self, request: RecommendRequest) -> JSONResponse:
        k = request.k or self.core.args.default_k
        if k > self.core.args.max_k:
            raise HTTPException(
                status_code=422,
                detail=[{"type": "less_than_equal", "loc": ["body", "k"],
                         "msg": f"Input should be less than or equal to {self.core.args.max_k}", "input": k}],
            )
        started = time.perf_counter()
        try:
            result = await self._recommend_one(RecommendCall(request.user_id, k, request.explain, request.model_alias))
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
            raise self._store_down("online store unavailable and the user has no batch candidates") from None
        except RankerUnavailable as exc:
            raise HTTPException(status_code=503, detail=str(exc), headers={"Retry-After": "1"}) from None
        finally:
            self.latency.add(time.perf_counter() - started)
        if rec.degraded:
            self._count_store_errors()
            self.degraded.inc()
            logger.error("online store %s down: answered user %d batch-only", self.core.features.backend, rec.user_id)
        if rec.feature_missing:
            self.feature_missing.inc(rec.feature_missing)
        # Built directly (the schema above documents it): skips re-validating what the core just produced.
        return JSONResponse({"user_id": rec.user_id, "items": rec.items, "scores": rec.scores,
                             "model_version": rec.model_version, "feature_missing": rec.feature_missing,
                             "degraded": rec.degraded, "features": rec.features, "candidates": rec.candidates})

    @api.post("/events")
    def events(self, request: EventsRequest) -> EventsResponse:
        """Ingest impressions into the real-time windows (and the event log); 503 while the store is down."""
        now = time.time()
        limit = self.core.features.repo.realtime.max_future_s if self.core.features.repo.realtime else 0.0
        late = [i for i, e in enumerate(request.events) if e.ts is not None and e.ts > now + limit]
        if late:
            raise HTTPException(status_code=422, detail=[
                {"type": "future_timestamp", "loc": ["body", "events", i, "ts"],
                 "msg": f"event time is more than {limit:g}s in the future", "input": request.events[i].ts}
                for i in late])
        events = Events(
            user_id=np.array([e.user_id for e in request.events], np.int64),
            item_id=np.array([e.item_id for e in request.events], np.int64),
            ts=np.array([now if e.ts is None else e.ts for e in request.events], np.float64),
            clicked=np.array([e.clicked for e in request.events], bool),
        )
        try:
            self.core.ingest(events)
        except LookupError as exc:
            raise HTTPException(status_code=404, detail=str(exc)) from None
        except OnlineStoreUnavailable as exc:
            raise self._store_down(f"online store unavailable: {exc}") from None
        return EventsResponse(accepted=len(events))

    @api.post("/score")
    async def score(self, request: ScoreRequest) -> ScoreResponse:
        item_ids = np.asarray(request.item_ids, np.int64)
        try:
            ranker, features, missing = self.core.score_inputs(request.user_id, item_ids)
            scores = await self._rank(ranker, features)
        except OnlineStoreUnavailable as exc:
            raise self._store_down(f"online store unavailable: {exc}") from None
        except RankerUnavailable as exc:
            raise HTTPException(status_code=503, detail=str(exc), headers={"Retry-After": "1"}) from None
        return ScoreResponse(user_id=request.user_id, items=request.item_ids, scores=scores.astype(float).tolist(),
                             model_version=ranker.model_version, feature_missing=missing)

    @api.get("/readyz")
    def readyz(self):
        """Ready when the models are loaded and the online store answers (503 otherwise)."""
        try:
            self.core.features.get(self.core.args.user_view, np.array([0]))
        except OnlineStoreUnavailable as exc:
            return JSONResponse(status_code=503, content={"ready": False, "reason": f"online store: {exc}"},
                                headers={"Retry-After": "1"})
        retriever = self.core.retrieval.retriever
        return {"ready": True, "ranker": self.core.model_version,
                "retriever": retriever.model_version if retriever else None,
                "online_store": self.core.features.backend, "plan": self.core.args.plan}

    # ----- Open Inference Protocol v2 (REST) -----

    def _oip_models(self) -> dict[str, tuple[str, oip.TensorSpec, oip.TensorSpec]]:
        ranker = self.core.ranker
        models = {"ranker": (ranker.model_version,
                             oip.TensorSpec(name="features", datatype="FP32", shape=[-1, ranker.width]),
                             oip.TensorSpec(name="score", datatype="FP32", shape=[-1]))}
        retriever = self.core.retrieval.retriever
        if retriever is not None:
            session = retriever.session
            models["retriever"] = (
                retriever.model_version,
                oip.TensorSpec(name="user_features", datatype="FP32", shape=[-1, session.get_inputs()[0].shape[1]]),
                oip.TensorSpec(name="embedding", datatype="FP32", shape=[-1, session.get_outputs()[0].shape[1]]),
            )
        return models

    def _oip_model(self, name: str, version: str | None):
        models = self._oip_models()
        if name not in models:
            return None, oip_error(404, f"model_name: unknown model {name!r}; served: {sorted(models)}")
        label, spec_in, spec_out = models[name]
        served = label.rsplit(":v", 1)[1]
        if version is not None and version != served:
            return None, oip_error(404, f"model_version: {name} serves version {served}, not {version!r}")
        return (label, served, spec_in, spec_out), None

    @api.get("/v2")
    def oip_server(self) -> dict:
        return {"name": "rayml", "version": api.version, "extensions": []}

    @api.get("/v2/health/live")
    def oip_live(self) -> dict:
        return {"live": True}

    @api.get("/v2/health/ready")
    def oip_ready(self) -> dict:
        return {"ready": True}

    @api.get("/v2/models/{name}")
    @api.get("/v2/models/{name}/versions/{version}")
    def oip_metadata(self, name: str, version: str | None = None):
        model, error = self._oip_model(name, version)
        if error is not None:
            return error
        _, served, spec_in, spec_out = model
        return oip.ModelMetadata(name=name, versions=[served], platform="onnxruntime_onnx", inputs=[spec_in],
                                 outputs=[spec_out])

    @api.get("/v2/models/{name}/ready")
    @api.get("/v2/models/{name}/versions/{version}/ready")
    def oip_model_ready(self, name: str, version: str | None = None):
        _, error = self._oip_model(name, version)
        return error if error is not None else {"name": name, "ready": True}

    @api.post("/v2/models/{name}/infer")
    @api.post("/v2/models/{name}/versions/{version}/infer")
    async def oip_infer(self, name: str, request: oip.InferenceRequest, version: str | None = None):
        model, error = self._oip_model(name, version)
        if error is not None:
            return error
        _, _, spec_in, spec_out = model
        if len(request.inputs) != 1:
            return oip_error(400, f"inputs: {name} takes exactly one input ({spec_in.name!r}), got {len(request.inputs)}")
        for i, wanted in enumerate(request.outputs or []):
            if wanted.name != spec_out.name:
                return oip_error(400, f"outputs[{i}].name: unknown output {wanted.name!r}; {name} returns {spec_out.name!r}")
        try:
            tensor = oip.decode(request.inputs[0], 0, spec_in)
        except oip.TensorError as exc:
            return oip_error(400, str(exc))
        try:
            label, result = await self._infer(name, tensor)
        except RankerUnavailable as exc:
            return JSONResponse(status_code=503, content={"error": str(exc)}, headers={"Retry-After": "1"})
        return oip.InferenceResponse(model_name=name, model_version=label.rsplit(":v", 1)[1], id=request.id,
                                     outputs=[oip.encode(spec_out.name, np.asarray(result, np.float32))])

    async def _infer(self, model: str, features: np.ndarray) -> tuple[str, np.ndarray]:
        """A served model on an already-encoded batch: ``ranker`` → scores [N], ``retriever`` → embeddings."""
        if model == "ranker":
            ranker = self.core.ranker
            return ranker.model_version, await self._rank(ranker, features)
        retriever = self.core.retrieval.retriever
        assert retriever is not None  # _oip_model checked the name
        return retriever.model_version, retriever.session.run(None, {"user_features": features})[0]

    @api.get("/healthz")
    async def healthz(self) -> dict:
        ranking = self.core.ranking
        body = {"status": "ok", "model_version": self.core.model_version, "artifact": self.core.ranker.artifact,
                "online_store": self.core.features.backend, "online_store_errors": self.core.features.errors,
                "batching": self.batching()}
        if self.ranker is not None:
            body["ranker_deployment"] = await self.ranker.describe.remote()
        if ranking.reload_error:
            body["reload_error"] = ranking.reload_error
        if self.core.args.ranker_aliases:
            body["aliases"] = {alias: ranker.model_version for alias, ranker in ranking.aliases.items()}
        if ranking.alias_errors:
            body["alias_errors"] = dict(ranking.alias_errors)
        return body


def build_recommender(args: RecommenderArgs) -> Application:
    """The application ``serve run`` deploys; options in the YAML ``deployments:`` override the defaults.

    The feature repo is read here, on the driver, and travels to replicas as data (no shared file needed).
    """
    repo = load_serving_repo(args)
    ranker = None
    if args.plan == "split":
        ranker = Ranker.bind(args.registry, args.ranker_model, args.precision, args.ranker_alias)  # type: ignore[attr-defined]
    return Recommender.bind(args.model_dump(), repo.model_dump(), ranker)  # type: ignore[attr-defined]
