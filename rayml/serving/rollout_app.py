"""The canary controller as a one-replica Serve deployment (its own application, no HTTP route).

The replica runs :class:`rayml.rollout.controller.CanaryController` on a thread, one step every ``step_s``.
``check_health`` fails when that thread has died or its steps keep raising, so Serve replaces the replica; a
replacement takes the lease over when the old one's expires (a second controller, e.g. during a KubeRay upgrade,
stays passive meanwhile), and rebuilds its statistics from the outcome log.
"""

from __future__ import annotations

import logging
import threading
import time

from pydantic import Field
from ray import serve
from ray.serve import Application

from rayml.config import StrictModel
from rayml.rollout.controller import CanaryController

logger = logging.getLogger("ray.serve")


class ControllerArgs(StrictModel):
    registry: str = Field(description="Registry root (the rollout state lives under <registry>/_rollout).")
    model: str = Field("ranker", description="Registry model whose rollouts this controller runs.")
    outcomes: str = Field(description="The outcome log the recommender writes (args.rollout.outcomes).")
    step_s: float = Field(2.0, gt=0, le=600, description="Seconds between control-loop steps (heartbeats).")
    lease_ttl_s: float = Field(30.0, gt=0, le=3600, description="The lease lapses this long after a last renewal.")
    failing_after: int = Field(5, ge=1, description="This many failed steps in a row make the replica unhealthy.")


class RolloutControllerDeployment:
    def __init__(self, args: dict) -> None:
        cfg = ControllerArgs.model_validate(args)
        self.cfg = cfg
        self.controller = CanaryController(cfg.registry, cfg.model, cfg.outcomes, lease_ttl_s=cfg.lease_ttl_s)
        self.failures = 0
        self.last_error: str | None = None
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="canary-controller", daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while not self.stopping.is_set():
            try:
                decision = self.controller.step()
                if decision is not None and decision.action != "continue":
                    logger.info("canary controller: %s (%s)", decision.action, decision.reason)
                self.failures, self.last_error = 0, None
            except Exception as exc:
                self.failures += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
                logger.exception("canary controller step failed (%d in a row)", self.failures)
            self.stopping.wait(self.cfg.step_s)

    def check_health(self) -> None:
        if not self.thread.is_alive():
            raise RuntimeError("canary controller thread died")
        if self.failures >= self.cfg.failing_after:
            raise RuntimeError(f"canary controller: {self.failures} failed steps in a row ({self.last_error})")

    def status(self) -> dict:
        return {"leader": self.controller.leader, "holder": self.controller.holder, "steps": self.controller.steps,
                "failures": self.failures, "last_error": self.last_error, "at": time.time()}

    def __del__(self) -> None:
        if hasattr(self, "stopping"):
            self.stopping.set()
            self.controller.store.release(self.controller.holder)


RolloutController = serve.deployment(name="RolloutController", num_replicas=1,
                                     ray_actor_options={"num_cpus": 0.1})(RolloutControllerDeployment)


def build_controller(args: ControllerArgs) -> Application:
    return RolloutController.bind(args.model_dump())
