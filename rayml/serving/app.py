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
from rayml.serving.config import RecommenderArgs, load_serving_repo
from rayml.serving.recommender import (
    Recommendation,
    RecommendCall,
    RecommenderCore,
    UnknownAliasError,
    UnknownUserError,
)

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


api = FastAPI(title="rayml recommender", version="0.1.0")


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
    """One replica holds the ranker, features and candidates in memory: no extra handle hops."""

    def __init__(self, args: dict, repo: dict) -> None:
        # Serve ships init args to replicas as plain data, so the models travel as dicts.
        self.core = RecommenderCore(RecommenderArgs.model_validate(args), FeatureRepo.model_validate(repo))
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
            now = self.core.refresh_aliases()
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
        allowed = {"ranker_alias", "max_batch_size", "batch_wait_timeout_s"}
        unknown = set(config) - allowed
        if unknown:
            raise ValueError(f"user_config: unknown keys {sorted(unknown)}; allowed: {sorted(allowed)}")
        size, wait = config.get("max_batch_size"), config.get("batch_wait_timeout_s")
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or not 1 <= size <= self.MAX_BATCH:
                raise ValueError(f"user_config.max_batch_size: {size!r} is not an int in 1..{self.MAX_BATCH}")
            self._batcher.set_max_batch_size(size)
        if wait is not None:
            if not isinstance(wait, int | float) or isinstance(wait, bool) or not 0 <= wait <= 1:
                raise ValueError(f"user_config.batch_wait_timeout_s: {wait!r} is not a number in [0, 1]")
            self._batcher.set_batch_wait_timeout_s(float(wait))
        ref = config.get("ranker_alias")
        if ref is None:
            return
        try:
            version = self.core.swap_ranker(str(ref))
            logger.info("serving ranker %s", version)
        except Exception:
            logger.exception("ranker %r refused; still serving %s", ref, self.core.model_version)

    MAX_BATCH = 64

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.0)  # no wait: batches form from what queued meanwhile
    async def _recommend_batch(self, calls: list[RecommendCall]) -> list[Recommendation | Exception]:
        """Concurrent requests share one ONNX call per ranker.

        The work (about half a millisecond a request) runs inline: requests arriving meanwhile queue and form the
        next batch, and no thread hand-off is added to every request's latency.
        """
        return self.core.recommend_many(calls)

    @property
    def _batcher(self) -> Any:
        """The @serve.batch wrapper, whose setters and getters Serve attaches at run time."""
        return self._recommend_batch

    def batching(self) -> dict[str, float]:
        return {"max_batch_size": self._batcher._get_max_batch_size(),
                "batch_wait_timeout_s": self._batcher._get_batch_wait_timeout_s(),
                "largest_batch": self.core.largest_batch}

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
            result = await self._recommend_batch(RecommendCall(request.user_id, k, request.explain, request.model_alias))
            if isinstance(result, Exception):
                raise result
            rec = result
        except UnknownAliasError:
            raise HTTPException(status_code=422, detail=[
                {"type": "unknown_alias", "loc": ["body", "model_alias"], "input": request.model_alias,
                 "msg": f"not served; aliases: {sorted([self.core.args.ranker_alias, *self.core.aliases])}"}]) from None
        except UnknownUserError:
            raise HTTPException(status_code=404, detail=f"user_id {request.user_id} is unknown") from None
        except OnlineStoreUnavailable:
            raise self._store_down("online store unavailable and the user has no batch candidates") from None
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
    def score(self, request: ScoreRequest) -> ScoreResponse:
        try:
            rec = self.core.score(request.user_id, np.asarray(request.item_ids, np.int64))
        except OnlineStoreUnavailable as exc:
            raise self._store_down(f"online store unavailable: {exc}") from None
        return ScoreResponse(user_id=rec.user_id, items=rec.items, scores=rec.scores, model_version=rec.model_version,
                             feature_missing=rec.feature_missing)

    @api.get("/readyz")
    def readyz(self):
        """Ready when the models are loaded and the online store answers (503 otherwise)."""
        try:
            self.core.features.get(self.core.args.user_view, np.array([0]))
        except OnlineStoreUnavailable as exc:
            return JSONResponse(status_code=503, content={"ready": False, "reason": f"online store: {exc}"},
                                headers={"Retry-After": "1"})
        return {"ready": True, "ranker": self.core.model_version,
                "retriever": self.core.retriever.model_version if self.core.retriever else None,
                "online_store": self.core.features.backend}

    # ----- Open Inference Protocol v2 (REST) -----

    def _oip_models(self) -> dict[str, tuple[str, oip.TensorSpec, oip.TensorSpec]]:
        ranker = self.core.ranker
        width = ranker.user_encoder.width + ranker.item_encoder.width
        models = {"ranker": (ranker.model_version, oip.TensorSpec(name="features", datatype="FP32", shape=[-1, width]),
                             oip.TensorSpec(name="score", datatype="FP32", shape=[-1]))}
        retriever = self.core.retriever
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
    def oip_infer(self, name: str, request: oip.InferenceRequest, version: str | None = None):
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
        label, result = self.core.infer(name, tensor)
        return oip.InferenceResponse(model_name=name, model_version=label.rsplit(":v", 1)[1], id=request.id,
                                     outputs=[oip.encode(spec_out.name, np.asarray(result, np.float32))])

    @api.get("/healthz")
    async def healthz(self) -> dict:
        body = {"status": "ok", "model_version": self.core.model_version, "artifact": self.core.ranker.artifact,
                "online_store": self.core.features.backend, "online_store_errors": self.core.features.errors,
                "batching": self.batching()}
        if self.core.reload_error:
            body["reload_error"] = self.core.reload_error
        if self.core.args.ranker_aliases:
            body["aliases"] = {alias: ranker.model_version for alias, ranker in self.core.aliases.items()}
        if self.core.alias_errors:
            body["alias_errors"] = dict(self.core.alias_errors)
        return body


def build_recommender(args: RecommenderArgs) -> Application:
    """The application ``serve run`` deploys; options in the YAML ``deployments:`` override the defaults.

    The feature repo is read here, on the driver, and travels to replicas as data (no shared file needed).
    """
    repo = load_serving_repo(args)
    return Recommender.bind(args.model_dump(), repo.model_dump())  # type: ignore[attr-defined]  # from @serve.deployment
