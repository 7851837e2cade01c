"""Ray Serve application: FastAPI ingress over :class:`RecommenderCore`."""

# No `from __future__ import annotations`: FastAPI must see the real request-model classes.

import logging

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from ray.serve import Application

from rayml.serving.config import RecommenderArgs
from rayml.serving.recommender import RecommenderCore, UnknownUserError


class RecommendRequest(BaseModel):
    """Body of ``POST /recommend``. Strict: ``"5"`` is not an int, unknown fields are refused."""

    model_config = ConfigDict(extra="forbid", strict=True)

    user_id: int = Field(ge=0, description="User to recommend for.")
    k: int | None = Field(None, ge=1, description="Number of items; default and maximum come from the app config.")


class RecommendResponse(BaseModel):
    user_id: int
    items: list[int]
    scores: list[float]
    model_version: str


api = FastAPI(title="rayml recommender", version="0.1.0")
logger = logging.getLogger("ray.serve")


@serve.deployment(ray_actor_options={"num_cpus": 0.5}, max_ongoing_requests=32)
@serve.ingress(api)
class Recommender:
    """One replica holds the ranker, features and candidates in memory: no extra handle hops."""

    def __init__(self, args: dict) -> None:
        # Serve ships init args to replicas as plain data, so the model travels as a dict.
        self.core = RecommenderCore(RecommenderArgs.model_validate(args))

    def reconfigure(self, config: dict) -> None:
        """Live `user_config`: ``{"ranker_alias": "canary"}`` swaps the ranker without a restart.

        A version that fails to load (missing, corrupt, failed parity) is refused: the current ranker keeps
        serving and ``/healthz`` reports the error.
        """
        unknown = set(config) - {"ranker_alias"}
        if unknown:
            raise ValueError(f"user_config: unknown keys {sorted(unknown)}; allowed: ranker_alias")
        ref = config.get("ranker_alias")
        if ref is None:
            return
        try:
            version = self.core.swap_ranker(str(ref))
            logger.info("serving ranker %s", version)
        except Exception:
            logger.exception("ranker %r refused; still serving %s", ref, self.core.model_version)

    # Plain `def`: FastAPI runs it in a thread pool, so numpy/ONNX work never blocks the replica's event loop.
    @api.post("/recommend")
    def recommend(self, request: RecommendRequest) -> RecommendResponse:
        k = request.k or self.core.args.default_k
        if k > self.core.args.max_k:
            raise HTTPException(
                status_code=422,
                detail=[{"type": "less_than_equal", "loc": ["body", "k"],
                         "msg": f"Input should be less than or equal to {self.core.args.max_k}", "input": k}],
            )
        try:
            rec = self.core.recommend(request.user_id, k)
        except UnknownUserError:
            raise HTTPException(status_code=404, detail=f"user_id {request.user_id} not found") from None
        return RecommendResponse(user_id=rec.user_id, items=rec.items, scores=rec.scores, model_version=rec.model_version)

    @api.get("/healthz")
    async def healthz(self) -> dict:
        body = {"status": "ok", "model_version": self.core.model_version, "artifact": self.core.ranker.artifact}
        if self.core.reload_error:
            body["reload_error"] = self.core.reload_error
        return body


def build_recommender(args: RecommenderArgs) -> Application:
    """The application ``serve run`` deploys; options in the YAML ``deployments:`` override the defaults."""
    return Recommender.bind(args.model_dump())  # type: ignore[attr-defined]  # added by @serve.deployment
