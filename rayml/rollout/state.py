"""Rollout state in the registry root: the lease, the rollout's state, and the evidence behind each decision.

Layout, under ``<registry>/_rollout/<model>/`` (``_rollout`` can never be a model name)::

    lease.json          {"holder": "...", "token": 7, "expires_at": 1733100000.0}
    state.json          the current rollout (:class:`RolloutState`), rewritten atomically
    evidence/<id>.json  one file per decision: the gate, test, statistics, samples and thresholds

**Lease with a fencing token.** One controller acts at a time: it holds the lease while it renews it before
``expires_at``. A new holder gets the next token, and every write a controller makes carries its token, checked
under the same file lock, so a controller that lost its lease (paused, partitioned, replaced during a KubeRay
upgrade) cannot overwrite its successor's decisions: its write raises :class:`LeaseLost` and it goes passive.
Operator commands (CLI, admin API) override the controller and are applied without a token.

Files are local (or on a shared POSIX filesystem with working ``flock``); writes go to a temp file and are
renamed into place, so readers (every serving replica, each poll) never see half a file.

**Registry URIs** (``s3://…``): an object store has no ``flock``, so the lease's fencing cannot be kept there. A store
over a URI registry holds no rollout (reads find none); every write raises :class:`RolloutStoreUnsupported`, which
names the URI. Run rollouts with the registry on a shared POSIX filesystem (docs/registry-uri.md).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from rayml.registry import display_uri
from rayml.registry.store import COLLAPSED_URI
from rayml.rollout.router import CanaryWeights

Status = Literal["Progressing", "Paused", "Healthy", "Degraded", "Aborted"]
ACTIVE: tuple[Status, ...] = ("Progressing", "Paused")


class LeaseLost(RuntimeError):
    """A controller tried to write with a token that is no longer the lease's."""


class RolloutStoreUnsupported(RuntimeError):
    """A rollout write on a registry URI (an object store): the lease needs a file lock it cannot have there."""


class RolloutConflict(RuntimeError):
    """A rollout is already running (HTTP 409 with its state)."""

    def __init__(self, state: RolloutState) -> None:
        super().__init__(f"rollout {state.id} is {state.status} (stage {state.stage_index + 1}, "
                         f"{state.weight_pct:g} %)")
        self.state = state


@dataclass(frozen=True)
class RolloutState:
    id: str
    model: str
    status: Status
    plan: dict[str, Any]
    candidate_version: int
    production_version: int
    started_at: float
    stage_index: int
    stage_started_at: float
    weight_pct: float
    heartbeat_at: float
    dry_run: bool = False
    reason: str = ""
    evidence: str | None = None  # id of the latest decision's evidence
    decisions: list[dict[str, Any]] = field(default_factory=list)  # every non-continue decision, in order
    token: int | None = None  # fencing token of the last controller write (None: an operator's)
    revision: int = 0
    finished_at: float | None = None
    last_evaluated_at: float | None = None
    latest: dict[str, Any] | None = None  # the latest evaluation: decision, reason, evidence (also for continue)
    paused_weight_pct: float | None = None  # the weight a halted rollout resumes at

    @property
    def active(self) -> bool:
        return self.status in ACTIVE

    def weights(self) -> CanaryWeights | None:
        """What replicas route by: the canary weight with the heartbeat its TTL counts from."""
        if not self.active:
            return None
        plan = self.plan
        return CanaryWeights(alias=plan.get("canary_alias", "canary"), version=self.candidate_version,
                             weight_pct=self.weight_pct, salt=plan.get("salt", "canary"),
                             heartbeat_at=self.heartbeat_at, ttl_s=float(plan.get("weights_ttl_s", 120.0)),
                             log_sample=float(plan.get("production_log_sample", 0.1)))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RolloutState:
        return cls(**data)


class RolloutStore:
    """The rollout files of one model under a registry root."""

    def __init__(self, registry_root: str | Path, model: str) -> None:
        self.root = str(registry_root)
        # Never a local directory named "s3:" (what Path makes of a URI, collapsing its "//").
        self.remote = "://" in self.root or COLLAPSED_URI.match(self.root) is not None
        self.dir = Path(registry_root) / "_rollout" / model
        self.model = model

    def _refuse_remote(self) -> None:
        if self.remote:
            raise RolloutStoreUnsupported(
                f"registry {display_uri(self.root)} is a URI: rollouts need the registry on a filesystem with "
                "file locks (the lease's fencing token), e.g. a local or shared POSIX directory; see docs/registry-uri.md"
            )

    # -- files --------------------------------------------------------------------------------
    def _write(self, path: Path, data: Any) -> None:
        self._refuse_remote()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True, default=_jsonable))
        os.replace(tmp, path)

    def _read(self, path: Path) -> Any:
        if self.remote:
            return None  # nothing can have been written there (see _refuse_remote)
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            return None

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self._refuse_remote()
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / ".lock", "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    # -- lease --------------------------------------------------------------------------------
    def lease(self) -> dict[str, Any] | None:
        return self._read(self.dir / "lease.json")

    def acquire(self, holder: str, ttl_s: float, now: float) -> int | None:
        """Take or renew the lease; returns the fencing token, or None while another holder's lease is live."""
        with self._locked():
            lease = self.lease()
            if lease is not None and lease["holder"] != holder and lease["expires_at"] > now:
                return None
            token = lease["token"] if lease is not None and lease["holder"] == holder else \
                (lease["token"] + 1 if lease is not None else 1)
            self._write(self.dir / "lease.json", {"holder": holder, "token": token, "expires_at": now + ttl_s})
            return token

    def release(self, holder: str) -> None:
        with self._locked():
            lease = self.lease()
            if lease is not None and lease["holder"] == holder:
                self._write(self.dir / "lease.json", {**lease, "expires_at": 0.0})

    # -- state --------------------------------------------------------------------------------
    def read(self) -> RolloutState | None:
        data = self._read(self.dir / "state.json")
        return RolloutState.from_dict(data) if data is not None else None

    def write(self, state: RolloutState, token: int | None, expect_revision: int | None = None) -> RolloutState:
        """Write ``state`` (a controller's: with its token; an operator's: ``token=None``).

        ``expect_revision``: the revision the writer read; a controller whose state was changed meanwhile (an
        operator's command) has its write refused, so the command wins.
        """
        with self._locked():
            if token is not None:
                lease = self.lease()
                if lease is None or lease["token"] != token:
                    raise LeaseLost(f"fencing token {token} is stale (lease: {lease})")
            current = self.read()
            if expect_revision is not None and current is not None and current.revision != expect_revision:
                raise LeaseLost(f"state changed meanwhile (revision {current.revision}, read {expect_revision})")
            state = replace(state, token=token, revision=(current.revision + 1) if current else 1)
            self._write(self.dir / "state.json", state.to_dict())
            return state

    def start(self, state: RolloutState) -> RolloutState:
        """Write a new rollout unless one is active (:class:`RolloutConflict`)."""
        with self._locked():
            current = self.read()
            if current is not None and current.active:
                raise RolloutConflict(current)
            state = replace(state, token=None, revision=(current.revision + 1) if current else 1)
            self._write(self.dir / "state.json", state.to_dict())
            return state

    # -- shadow -------------------------------------------------------------------------------
    def shadow(self) -> dict[str, Any] | None:
        """The shadow every replica mirrors to: ``{"alias", "config"}`` (None: no shadow)."""
        data = self._read(self.dir / "shadow.json")
        return data if data else None

    def set_shadow(self, shadow: dict[str, Any] | None) -> None:
        self._write(self.dir / "shadow.json", shadow or {})
        if shadow is None:
            for path in (self.dir / "shadow_reports").glob("*.json"):
                path.unlink(missing_ok=True)

    def save_shadow_report(self, replica: str, report: dict[str, Any]) -> None:
        safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in replica)[:100]
        self._write(self.dir / "shadow_reports" / f"{safe}.json", report)

    def shadow_reports(self) -> dict[str, Any]:
        folder = self.dir / "shadow_reports"
        return {p.stem: self._read(p) for p in sorted(folder.glob("*.json"))} if folder.exists() and not self.remote \
            else {}

    def shadow_agreement(self) -> float | None:
        """Overlap@k over every replica's qualifying windows, weighted by their requests (None: not enough)."""
        total = count = 0.0
        for report in self.shadow_reports().values():
            agreement = ((report or {}).get("report") or {}).get("agreement") or {}
            if agreement.get("overlap_at_k") is not None and agreement.get("requests"):
                total += agreement["overlap_at_k"] * agreement["requests"]
                count += agreement["requests"]
        return total / count if count else None

    # -- evidence -----------------------------------------------------------------------------
    def save_evidence(self, rollout_id: str, seq: int, evidence: dict[str, Any]) -> str:
        evidence_id = f"{rollout_id}-{seq:04d}"
        self._write(self.dir / "evidence" / f"{evidence_id}.json", {"id": evidence_id, **evidence})
        return evidence_id

    def evidence(self, evidence_id: str) -> dict[str, Any] | None:
        if "/" in evidence_id or evidence_id.startswith("."):
            return None
        return self._read(self.dir / "evidence" / f"{evidence_id}.json")


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()  # numpy scalars
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
