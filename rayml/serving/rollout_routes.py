"""Rollout in the recommender: canary routing, the outcome log, per-arm metrics, shadow traffic, admin routes.

The replica routes by the controller's published weights (:mod:`rayml.rollout.state`, re-read at every alias poll)
and never decides a rollout itself. The admin routes (``admin`` token) are the operator's commands of
:mod:`rayml.rollout.controller`; they override the controller.
"""

# No `from __future__ import annotations`: FastAPI must see the real classes.

import asyncio
import logging
import random
import threading
import time
from typing import Any, Literal

import numpy as np
from fastapi import HTTPException
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from ray.util import metrics

from rayml.config import format_validation_error
from rayml.rollout.outcomes import OutcomeLogger
from rayml.rollout.plan import RolloutPlan
from rayml.rollout.router import Assignment, Experiment, ExperimentArm, Router, logged
from rayml.rollout.shadow import ShadowConfig, ShadowQueue, ShadowReport, compare_rankings
from rayml.rollout.state import RolloutConflict, RolloutStore
from rayml.serving.auth import TokenStore
from rayml.serving.health_routes import replica_id
from rayml.serving.http_api import IN_FLIGHT, SECURED, Authorization, api, responses
from rayml.serving.recommender import Prepared, RecommenderCore
from rayml.serving.stages import LoadedRanker

logger = logging.getLogger("ray.serve")
MONITOR_SALT = "rayml-monitor-outcomes"  # the monitor's user sample is independent of any rollout's buckets
LATENCY_BOUNDARIES_MS = [0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 30, 50, 75, 100, 200, 500, 1000, 2000]
# A split-plan shadow call waits this long for the Ranker deployment, then counts as a shadow error. Room for the
# Ranker's first use of the shadow version (a load with checksums); the queue runs one job at a time, so a stuck
# Ranker fills the bounded queue and the rest are dropped, never waited on.
SHADOW_RANK_TIMEOUT_S = 5.0


class StartRollout(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    candidate: str = Field(min_length=1, max_length=64, description="Version number or alias of the candidate.")
    plan: dict[str, Any] = Field(description="The rollout plan (configs/rollout/*.yaml as JSON).")
    dry_run: bool = Field(False, description="Compute and record decisions without acting on them.")


class StartShadow(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    alias: str = Field(min_length=1, max_length=64, description="The shadow model's alias.")
    config: dict[str, Any] = Field(default_factory=lambda: {"fraction": 0.1}, description="ShadowConfig.")


async def _ranker_scores(handle: Any, label: str, rows: np.ndarray, timeout_s: float) -> np.ndarray:
    """Scores of ``rows`` by the Ranker deployment under version ``label``; awaited on the loop the handle routes
    from. Raises TimeoutError (the call cancelled, best effort) when no answer came within ``timeout_s``."""
    response = handle.score.remote((label, rows))

    async def answer() -> np.ndarray:
        return await response

    try:
        return await asyncio.wait_for(answer(), timeout_s)
    except TimeoutError:
        response.cancel()
        raise TimeoutError(f"the Ranker deployment did not score {label} within {timeout_s:g}s") from None


class RolloutRoutes:
    """Mixin of the recommender deployment; needs ``self.core``, ``self.auth`` and ``self.ranker`` (the split
    plan's handle to the Ranker deployment, None in the fused plan)."""

    core: RecommenderCore
    auth: TokenStore
    ranker: Any

    def _rollout_setup(self) -> None:
        args = self.core.args
        cfg = args.rollout
        experiment = cfg.experiment if cfg is not None else None
        self.router = Router(experiment=Experiment(
            name=experiment.name, salt=experiment.salt or experiment.name,
            arms=tuple(ExperimentArm(a.name, a.weight_pct, a.alias) for a in experiment.arms),
        ) if experiment is not None else None)
        self.experiment_log_sample = experiment.log_sample if experiment is not None else 0.0
        self.rollout_store = RolloutStore(args.registry, args.ranker_model)
        self.rollout_id: str | None = None
        self.outcomes = OutcomeLogger(cfg.outcomes, flush_s=cfg.flush_s) if cfg is not None else None
        self.outcome_sample = args.monitoring.outcome_sample if args.monitoring is not None else 0.0
        self.shadow: dict[str, Any] | None = None  # {"alias", "config", "report", "queue"}
        tags = ("arm", "model_version")
        self.arm_requests = metrics.Counter("rayml_arm_requests", "Requests answered, per rollout arm and version.",
                                            tag_keys=tags)
        self.arm_errors = metrics.Counter("rayml_arm_errors", "Requests failed (5xx), per rollout arm and version.",
                                          tag_keys=tags)
        self.arm_latency = metrics.Histogram("rayml_arm_latency_ms", "Request latency in ms, per arm and version.",
                                             boundaries=LATENCY_BOUNDARIES_MS, tag_keys=tags)
        self.shadow_drops = metrics.Counter("rayml_shadow_dropped", "Shadow jobs dropped (queue full or busy).")
        if cfg is not None:
            self._rollout_poll()

    # -- the poll thread ----------------------------------------------------------------------
    def _rollout_poll(self) -> None:
        """Re-read the controller's weights and the shadow setting; flush outcome buffers. Never raises."""
        if self.outcomes is None:
            return
        try:
            state = self.rollout_store.read()
            weights = state.weights() if state is not None else None
            ranking = self.core.ranking
            shadow = self.rollout_store.shadow()
            wanted = [weights.alias] if weights is not None else []
            wanted += [shadow["alias"]] if shadow is not None else []
            if any([ranking.follow(alias) for alias in wanted]):
                ranking.refresh_aliases()  # load a newly followed alias now; the poll refreshes the rest
            self.router.update(weights, ranking.versions())
            self.rollout_id = state.id if state is not None and state.active else None
            self._shadow_update(shadow)
            self.outcomes.flush_due()
        except Exception:
            logger.exception("rollout poll failed; keeping the last weights (they expire after their TTL)")

    def _shadow_update(self, shadow: dict[str, Any] | None) -> None:
        if shadow is None:
            if self.shadow is not None:
                self.shadow["queue"].stop()
            self.shadow = None
            self.core.taps.pop("shadow", None)
            return
        if self.shadow is None or self.shadow["alias"] != shadow["alias"] or self.shadow["raw"] != shadow["config"]:
            config = ShadowConfig.model_validate(shadow["config"])
            busy_at = self.core.args.rollout.shadow_busy_in_flight if self.core.args.rollout else 4
            queue = ShadowQueue(self.core.args.rollout.shadow_queue if self.core.args.rollout else 64,
                                busy=lambda: IN_FLIGHT.value >= busy_at, on_drop=self._shadow_dropped)
            if self.shadow is not None:
                self.shadow["queue"].stop()
            self.shadow = {"alias": shadow["alias"], "raw": shadow["config"], "config": config,
                           "report": ShadowReport(config), "queue": queue, "lock": threading.Lock()}
            self.core.taps["shadow"] = self._shadow_tap
        self.rollout_store.save_shadow_report(replica_id() or "local", self._shadow_state())

    def _shadow_dropped(self) -> None:
        if self.shadow is not None:
            with self.shadow["lock"]:
                self.shadow["report"].record_drop()
        self.shadow_drops.inc()

    def _shadow_state(self) -> dict[str, Any]:
        assert self.shadow is not None
        with self.shadow["lock"]:
            report = self.shadow["report"].report()
        return {"alias": self.shadow["alias"], "report": report,
                "queue": self.shadow["queue"].stats(), "at": time.time()}

    # -- per request --------------------------------------------------------------------------
    def _route(self, user_id: int, model_alias: str | None) -> Assignment | None:
        """The arm of a request that names no alias; None: no rollout routing (the default ranker serves)."""
        if model_alias is not None or self.outcomes is None:
            return None
        if self.router.weights is None and self.router.experiment is None:
            return None
        return self.router.assign(user_id, time.time())

    def _served(self, assignment: Assignment | None, request_id: str, user_id: int, model_version: str,
                status: int, latency_s: float, items: list[int], scores: list[float] | None = None) -> None:
        arm = assignment.arm if assignment is not None else "production"
        tags = {"arm": arm, "model_version": model_version}
        self.arm_requests.inc(tags=tags)
        if status >= 500:
            self.arm_errors.inc(tags=tags)
        self.arm_latency.observe(latency_s * 1e3, tags=tags)
        if self.outcomes is None:
            return
        experiment = self.router.experiment
        in_experiment = (experiment is not None and assignment is not None and assignment.experiment_arm is not None
                         and logged(user_id, experiment.salt, self.experiment_log_sample))
        if assignment is not None and assignment.logged and self.rollout_id:
            rollout = self.rollout_id
        elif in_experiment or (self.outcome_sample > 0 and logged(user_id, MONITOR_SALT, self.outcome_sample)):
            rollout = ""  # an experiment's or the monitor's sample, outside any rollout
        else:
            return
        self.outcomes.served(request_id, time.time() - latency_s, rollout, user_id, arm, model_version, status,
                             latency_s * 1e3, items, scores,
                             experiment.name if in_experiment and experiment is not None else None,
                             assignment.experiment_arm if in_experiment and assignment is not None else None)

    def _clicked(self, request_id: str | None, ts: float, user_id: int, item_id: int, clicked: bool) -> None:
        if clicked and request_id is not None and self.outcomes is not None:
            self.outcomes.clicked(request_id, ts, user_id, item_id)

    def _shadow_tap(self, p: Prepared) -> None:
        """Mirror a production answer: after it is sent, the shadow scores exactly the rows production scored.

        Fused plan: the whole comparison runs on a worker thread. Split plan (a Ranker handle): the shadow's own
        encoders encode the rows on a worker thread, the Ranker deployment scores them under the shadow version's
        label, awaited on the replica's loop (where the handle routes) for at most ``SHADOW_RANK_TIMEOUT_S``.
        """
        shadow = self.shadow
        if shadow is None or p.call.alias is not None or random.random() >= shadow["config"].fraction:
            return
        ranking = self.core.ranking
        if shadow["alias"] not in ranking.extra or p.scores is None:
            return
        prod_scores = p.scores.copy()
        args, keys = self.core.args, self.core.lookup

        def encoded() -> tuple[LoadedRanker, np.ndarray]:
            loaded = ranking.extra[shadow["alias"]].value
            return loaded, ranking.encode(loaded, p.call.user_id, p.lookups[args.user_view], keys.user_key,
                                          p.item_ids, p.lookups[args.item_view], keys.item_key)

        def failed(exc: Exception) -> None:
            with shadow["lock"]:
                shadow["report"].record_error(f"{type(exc).__name__}: {exc}")

        def record(scores: np.ndarray, started: float) -> None:
            latency_ms = (time.perf_counter() - started) * 1e3
            comparison = compare_rankings(p.item_ids.tolist(), prod_scores, scores, shadow["config"].k)
            with shadow["lock"]:  # the poll thread reads the report
                shadow["report"].record_comparison(comparison, latency_ms)

        handle = getattr(self, "ranker", None)
        if handle is None:
            def compare() -> None:
                started = time.perf_counter()
                try:
                    loaded, rows = encoded()
                    scores = ranking.score(loaded, rows)
                except Exception as exc:
                    failed(exc)
                    raise
                record(scores, started)

            async def job() -> None:
                # Off the event loop: ONNX Runtime and numpy release the GIL, so on a second core the shadow's
                # work runs beside the user requests instead of in front of them.
                await asyncio.to_thread(compare)
        else:
            async def job() -> None:
                # The queue's worker is a task on the replica's loop (started by the first offer, from a request),
                # the loop the handle routes from; only the encoding and the statistics go to a thread.
                started = time.perf_counter()
                try:
                    loaded, rows = await asyncio.to_thread(encoded)
                    scores = await _ranker_scores(handle, loaded.model_version, rows, SHADOW_RANK_TIMEOUT_S)
                except Exception as exc:
                    # A RayTaskError's text is the Ranker's traceback; the report keeps 200 characters: the cause.
                    cause = getattr(exc, "cause", None)
                    failed(cause if isinstance(cause, Exception) else exc)
                    raise
                await asyncio.to_thread(record, scores, started)

        shadow["queue"].offer(job)

    # -- admin --------------------------------------------------------------------------------
    def _registry_root(self) -> str:
        return self.core.args.registry

    @api.get("/admin/rollout", responses=responses(401, 403), openapi_extra=SECURED)
    def rollout_status(self, authorization: Authorization = None) -> JSONResponse:
        """The rollout's state: status (Progressing, Paused, Healthy, Degraded, Aborted), stage, split, decisions
        and the latest gate evidence."""
        self.auth.check(authorization, "admin")
        state = self.rollout_store.read()
        return JSONResponse({"rollout": state.to_dict() if state else None,
                             "router": {"live_weight_pct": self.router.live_weight(time.time()),
                                        "replica": replica_id() or "local"}})

    @api.post("/admin/rollout", responses=responses(401, 403, 409, 422), openapi_extra=SECURED)
    def rollout_start(self, body: StartRollout, authorization: Authorization = None) -> JSONResponse:
        """Start a canary of ``candidate`` under ``plan``; 409 with the current state while one is active."""
        self.auth.check(authorization, "admin")
        from rayml.rollout.controller import (  # the gates' scipy: only where a rollout starts
            RolloutError,
            start,
        )

        try:
            plan = RolloutPlan.model_validate(body.plan)
        except ValidationError as exc:
            raise HTTPException(status_code=422, detail=format_validation_error("plan", RolloutPlan, exc)) from None
        try:
            state = start(self._registry_root(), plan, body.candidate, dry_run=body.dry_run,
                          shadow_agreement=self.rollout_store.shadow_agreement())
        except RolloutConflict as exc:
            return JSONResponse(status_code=409, content={"detail": str(exc), "rollout": exc.state.to_dict()})
        except RolloutError as exc:
            raise HTTPException(status_code=422, detail=str(exc)) from None
        return JSONResponse({"rollout": state.to_dict()})

    @api.post("/admin/rollout/{action}", responses=responses(401, 403, 404, 409), openapi_extra=SECURED)
    def rollout_command(self, action: Literal["pause", "resume", "abort", "promote", "rollback"],
                        authorization: Authorization = None) -> JSONResponse:
        """An operator's command; it overrides the controller."""
        self.auth.check(authorization, "admin")
        from rayml.rollout.controller import RolloutError, command
        try:
            state = command(self._registry_root(), self.core.args.ranker_model, action)
        except RolloutError as exc:
            return JSONResponse(status_code=409, content={"detail": str(exc)})
        return JSONResponse({"rollout": state.to_dict()})

    @api.get("/admin/rollout/evidence/{evidence_id}", responses=responses(401, 403, 404), openapi_extra=SECURED)
    def rollout_evidence(self, evidence_id: str, authorization: Authorization = None) -> JSONResponse:
        self.auth.check(authorization, "admin")
        evidence = self.rollout_store.evidence(evidence_id)
        if evidence is None:
            raise HTTPException(status_code=404, detail=f"evidence_id {evidence_id!r} is unknown")
        return JSONResponse(evidence)

    @api.post("/admin/shadow", responses=responses(401, 403, 422), openapi_extra=SECURED)
    def shadow_start(self, body: StartShadow, authorization: Authorization = None) -> JSONResponse:
        """Mirror ``config.fraction`` of production requests to ``alias`` (every replica, from its next poll)."""
        self.auth.check(authorization, "admin")
        try:
            ShadowConfig.model_validate(body.config)
        except ValidationError as exc:
            raise HTTPException(status_code=422, detail=format_validation_error("config", ShadowConfig, exc)) from None
        try:
            self.core.ranking.registry.resolve(self.core.args.ranker_model, body.alias)
        except Exception as exc:
            raise HTTPException(status_code=422, detail=f"alias: {exc}") from None
        self.rollout_store.set_shadow({"alias": body.alias, "config": body.config})
        return JSONResponse({"shadow": {"alias": body.alias, "config": body.config}})

    @api.delete("/admin/shadow", responses=responses(401, 403), openapi_extra=SECURED)
    def shadow_stop(self, authorization: Authorization = None) -> JSONResponse:
        self.auth.check(authorization, "admin")
        self.rollout_store.set_shadow(None)
        return JSONResponse({"shadow": None})

    @api.get("/admin/shadow", responses=responses(401, 403), openapi_extra=SECURED)
    def shadow_report(self, authorization: Authorization = None) -> JSONResponse:
        """Every replica's shadow report (overlap@k, Kendall τ, score deltas, errors, latency, drops) and the
        request-weighted agreement over all of them."""
        self.auth.check(authorization, "admin")
        return JSONResponse({"shadow": self.rollout_store.shadow(), "replicas": self.rollout_store.shadow_reports(),
                             "agreement": self.rollout_store.shadow_agreement()})


