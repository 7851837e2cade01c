"""The canary controller: evaluates the gates on the outcome log and moves weights and aliases.

:class:`CanaryController` is plain Python (a clock and paths), so the offline tests drive it step by step;
:mod:`rayml.serving.rollout_app` runs it as a one-replica Serve deployment. Each :meth:`CanaryController.step`:

1. takes or renews the lease (:mod:`rayml.rollout.state`); without it the controller is passive;
2. publishes a heartbeat with the current weight (replicas drop the canary to 0 % after ``weights_ttl_s``
   without one);
3. every ``evaluate_every_s`` evaluates the gates (:func:`rayml.rollout.gates.evaluate`) on the mature outcome log
   and acts: next stage, complete (the production alias moves to the candidate), roll back (the canary alias
   moves back to production's version, the canary gets 0 %), or halt (0 %, paused for an operator).

Every statistic is recomputed from the log at each evaluation and the evaluation times continue from the stored
state, so a restarted controller makes the decisions an uninterrupted one would have made on the same data.
Operator commands (:func:`start`, :func:`pause`, …) override the controller: they write the state directly, and
a controller write that raced one is refused (revision check) and redone on the next step.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from rayml.registry import ModelRegistry, RegistryError
from rayml.rollout.gates import Decision, evaluate
from rayml.rollout.outcomes import OutcomeLog
from rayml.rollout.plan import RolloutPlan
from rayml.rollout.state import LeaseLost, RolloutState, RolloutStore

logger = logging.getLogger(__name__)


class RolloutError(ValueError):
    """An operator command cannot be applied; the message names the field or the state."""


def _label(model: str, version: int) -> str:
    return f"{model}:v{version}"


class CanaryController:
    def __init__(self, registry_root: str | Path, model: str, outcomes: str | Path, holder: str | None = None,
                 lease_ttl_s: float = 30.0, clock: Callable[[], float] = time.time) -> None:
        self.registry = ModelRegistry(registry_root)
        self.store = RolloutStore(registry_root, model)
        self.log = OutcomeLog(outcomes)
        self.model = model
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.lease_ttl_s = lease_ttl_s
        self.clock = clock
        self.token: int | None = None
        self.last_error: str | None = None
        self.steps = 0

    @property
    def leader(self) -> bool:
        return self.token is not None

    def step(self) -> Decision | None:
        """One control-loop iteration; returns the decision it evaluated (None: passive, idle or not due)."""
        now = self.clock()
        self.steps += 1
        self.token = self.store.acquire(self.holder, self.lease_ttl_s, now)
        if self.token is None:
            return None
        state = self.store.read()
        if state is None or not state.active:
            return None
        try:
            return self._step(state, now)
        except LeaseLost as exc:
            logger.warning("controller %s: write refused (%s); retrying next step", self.holder, exc)
            return None

    def _step(self, state: RolloutState, now: float) -> Decision | None:
        plan = RolloutPlan.model_validate(state.plan)
        if state.status == "Paused":
            self._write(replace(state, heartbeat_at=now), state)
            return None
        refused = self.registry.serving_record(self.model).get(plan.canary_alias, {}).get("refused", {})
        if str(state.candidate_version) in refused:
            decision = Decision("rollback", f"candidate {_label(self.model, state.candidate_version)} failed to "
                                f"load in serving: {refused[str(state.candidate_version)]}",
                                {"gate": "load", "error": refused[str(state.candidate_version)]})
        elif state.last_evaluated_at is not None and now - state.last_evaluated_at < plan.evaluate_every_s:
            self._write(replace(state, heartbeat_at=now), state)
            return None
        else:
            decision = self.evaluate(state, plan, now)
        self._apply(state, plan, decision, now)
        return decision

    def evaluate(self, state: RolloutState, plan: RolloutPlan, now: float) -> Decision:
        report = self.log.gate_inputs(state.id, _label(self.model, state.candidate_version), state.started_at,
                                      state.stage_started_at, now, plan.attribution_window_s)
        decision = evaluate(plan, state.stage_index, now - state.stage_started_at, now - state.started_at,
                            report.inputs)
        evidence = {**decision.evidence, "unknown_clicks": report.unknown_clicks,
                    "ignored_clicks": report.late_clicks, "mature_requests": report.requests}
        return Decision(decision.action, decision.reason, evidence)

    def _write(self, state: RolloutState, read: RolloutState) -> RolloutState:
        return self.store.write(state, self.token, expect_revision=read.revision)

    def _apply(self, state: RolloutState, plan: RolloutPlan, decision: Decision, now: float) -> None:
        latest = {"at": now, "action": decision.action, "reason": decision.reason, "evidence": decision.evidence,
                  "stage": state.stage_index, "weight_pct": state.weight_pct}
        base = replace(state, heartbeat_at=now, last_evaluated_at=now, latest=latest)
        if decision.action == "continue":
            self._write(base, state)
            return
        seq = len(state.decisions) + 1
        evidence_id = self.store.save_evidence(state.id, seq, {**latest, "dry_run": state.dry_run,
                                                               "rollout": state.id})
        entry = {"at": now, "action": decision.action, "reason": decision.reason, "evidence": evidence_id,
                 "stage": state.stage_index, "weight_pct": state.weight_pct, "dry_run": state.dry_run}
        base = replace(base, decisions=[*state.decisions, entry], evidence=evidence_id, reason=decision.reason)
        if state.dry_run:
            self._write(base, state)
            return
        self._write(_transition(self.registry, base, plan, decision.action, decision.reason, evidence_id, now),
                    state)
        logger.info("rollout %s: %s (%s) evidence %s", state.id, decision.action, decision.reason, evidence_id)


def _transition(registry: ModelRegistry, state: RolloutState, plan: RolloutPlan, action: str, reason: str,
                evidence_id: str | None, now: float) -> RolloutState:
    """The state after ``action``, with its alias moves made (shared by the controller and operator commands)."""
    why = f"rollout {state.id}: {reason}"
    if action == "promote":
        nxt = state.stage_index + 1
        return replace(state, stage_index=nxt, stage_started_at=now, weight_pct=plan.stages[nxt].weight_pct,
                       status="Progressing")
    if action == "complete":
        registry.set_alias(state.model, plan.production_alias, state.candidate_version, reason=why,
                           evidence=evidence_id)
        return replace(state, status="Healthy", weight_pct=0.0, finished_at=now)
    if action in ("rollback", "abort"):
        registry.set_alias(state.model, plan.canary_alias, state.production_version, reason=why,
                           evidence=evidence_id)
        return replace(state, status="Degraded" if action == "rollback" else "Aborted", weight_pct=0.0,
                       finished_at=now)
    if action == "halt":
        return replace(state, status="Paused", paused_weight_pct=state.weight_pct, weight_pct=0.0)
    raise ValueError(f"unknown action {action!r}")


# -- operator commands (CLI and admin API) --------------------------------------------------------------------
def start(registry_root: str | Path, plan: RolloutPlan, candidate: str, dry_run: bool = False,
          now: float | None = None, shadow_agreement: float | None = None) -> RolloutState:
    """Start a rollout of ``candidate`` (a version or an alias) under ``plan``; 409 (:class:`RolloutConflict`)
    while another is active."""
    now = time.time() if now is None else now
    registry = ModelRegistry(registry_root)
    try:
        version = registry.resolve(plan.model, candidate)
    except RegistryError as exc:
        raise RolloutError(f"candidate: {exc}") from None
    try:
        production = registry.resolve(plan.model, plan.production_alias)
    except RegistryError as exc:
        raise RolloutError(f"production_alias: {exc}") from None
    if version == production:
        raise RolloutError(f"candidate: v{version} is already {plan.production_alias!r}")
    if plan.min_shadow_agreement is not None and (
            shadow_agreement is None or shadow_agreement < plan.min_shadow_agreement):
        raise RolloutError(f"min_shadow_agreement: the shadow's agreement is {shadow_agreement}, below "
                               f"{plan.min_shadow_agreement}; run a shadow first")
    store = RolloutStore(registry_root, plan.model)
    rollout_id = f"r{int(now)}-{uuid.uuid4().hex[:6]}"
    state = RolloutState(id=rollout_id, model=plan.model, status="Progressing", plan=plan.model_dump(),
                         candidate_version=version, production_version=production, started_at=now, stage_index=0,
                         stage_started_at=now, weight_pct=plan.stages[0].weight_pct, heartbeat_at=now,
                         dry_run=dry_run, reason="started")
    state = store.start(state)
    registry.set_alias(plan.model, plan.canary_alias, version, reason=f"rollout {rollout_id}: start")
    return state


def command(registry_root: str | Path, model: str, action: str, now: float | None = None,
            reason: str = "") -> RolloutState:
    """``pause | resume | abort | promote | rollback`` by an operator: applied at once, overriding the
    controller, and recorded in the decisions with ``by: operator``."""
    now = time.time() if now is None else now
    store = RolloutStore(registry_root, model)
    state = store.read()
    if state is None or not state.active:
        raise RolloutError(f"no active rollout of {model!r} to {action}"
                           + (f" (last: {state.id} {state.status})" if state else ""))
    plan = RolloutPlan.model_validate(state.plan)
    registry = ModelRegistry(registry_root)
    why = reason or f"operator {action}"
    entry: dict[str, Any] = {"at": now, "action": action, "reason": why, "by": "operator",
                             "stage": state.stage_index, "weight_pct": state.weight_pct}
    state = replace(state, decisions=[*state.decisions, entry], reason=why, heartbeat_at=now)
    if action == "pause":
        new = replace(state, status="Paused", paused_weight_pct=state.weight_pct)
    elif action == "resume":
        if state.status != "Paused":
            raise RolloutError(f"rollout {state.id} is {state.status}, not Paused")
        weight = state.paused_weight_pct if state.paused_weight_pct is not None else state.weight_pct
        new = replace(state, status="Progressing", weight_pct=weight or plan.stages[state.stage_index].weight_pct,
                      paused_weight_pct=None)
    elif action == "promote":
        last = state.stage_index + 1 >= len(plan.stages)
        new = _transition(registry, state, plan, "complete" if last else "promote", why, None, now)
    elif action in ("rollback", "abort"):
        new = _transition(registry, state, plan, action, why, None, now)
    else:
        raise RolloutError(f"action: unknown {action!r}; use pause, resume, abort, promote or rollback")
    return store.write(new, token=None)
