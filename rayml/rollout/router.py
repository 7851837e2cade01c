"""Traffic router: which arm (``production``, ``canary`` or an experiment arm) serves a user.

Assignment is a stable hash of the user id and a salt, never random per request, so a user sees one model for
the whole rollout and the user is the unit of analysis:

- ``bucket(user, salt)`` is the first 8 bytes of BLAKE2b(salt, user id) modulo :data:`BUCKETS` (10,000, i.e.
  0.01 % steps);
- **canary layer:** a user is in the canary when ``bucket < weight_pct × 100``. Buckets are monotone: a user in
  the canary at 1 % is in it at 5 %, 25 % and 100 %, so raising the weight only adds users;
- **experiment layer:** an A/B experiment hashes with its *own* salt, so its arms are orthogonal to (independent
  of) the canary's; its arm is recorded on every answer. Where both apply, the canary's model serves (the canary
  layer decides the model, the experiment layer only labels), so an experiment analysed during a canary should
  exclude canary users (``arm == "canary"``), documented in ``docs/rollout.md``.

The weights a replica routes by come from the controller's state (:mod:`rayml.rollout.state`). They carry the
controller's heartbeat: past ``ttl_s`` without one, the canary gets 0 % (fail safe towards production).
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass, field

BUCKETS = 10_000
PRODUCTION = "production"
CANARY = "canary"


@functools.lru_cache(maxsize=256)
def _keyed(salt: str) -> hashlib.blake2b:
    """BLAKE2b keyed with ``salt``, before any data: copied per user (keying is most of the cost of a new hasher)."""
    return hashlib.blake2b(digest_size=8, key=salt.encode()[:64])


@functools.lru_cache(maxsize=1 << 16)
def bucket(user_id: int, salt: str) -> int:
    """The user's bucket in [0, BUCKETS) under ``salt`` (stable across processes, versions and machines).

    Cached per (user, salt): a replica sees the same users again and again, and routes each request by two
    buckets (the canary's and the outcome log's).
    """
    hasher = _keyed(salt).copy()
    hasher.update(str(int(user_id)).encode())
    return int.from_bytes(hasher.digest(), "big") % BUCKETS


def in_share(user_id: int, salt: str, weight_pct: float) -> bool:
    """Whether the user falls in the first ``weight_pct`` % of buckets (monotone in the weight)."""
    return bucket(user_id, salt) < round(weight_pct * BUCKETS / 100)


def logged(user_id: int, salt: str, sample: float) -> bool:
    """Whether a production user's outcomes are logged at ``sample`` (by user, with a salt of its own, so a
    logged user's totals are complete and the sample is independent of the canary's buckets)."""
    return sample >= 1 or bucket(user_id, salt + "/log") < round(sample * BUCKETS)


@dataclass(frozen=True)
class CanaryWeights:
    """What a replica needs to route: published by the controller with each heartbeat."""

    alias: str  # the canary alias the canary arm is served under
    version: int  # the candidate version the weight applies to (another version in the alias gets 0 %)
    weight_pct: float
    salt: str
    heartbeat_at: float  # epoch seconds of the controller's last write
    ttl_s: float
    log_sample: float = 0.1  # production users' outcome-log share


@dataclass(frozen=True)
class ExperimentArm:
    name: str
    weight_pct: float
    alias: str | None = None  # the model alias this arm serves; None: whatever the canary layer chose


@dataclass(frozen=True)
class Experiment:
    name: str
    salt: str
    arms: tuple[ExperimentArm, ...]

    def __post_init__(self) -> None:
        total = sum(a.weight_pct for a in self.arms)
        if abs(total - 100) > 1e-9:
            raise ValueError(f"experiment {self.name!r}: arms' weight_pct sum to {total:g}, not 100")

    def arm(self, user_id: int) -> ExperimentArm:
        b, edge = bucket(user_id, self.salt), 0.0
        for arm in self.arms:
            edge += arm.weight_pct * BUCKETS / 100
            if b < round(edge):
                return arm
        return self.arms[-1]


@dataclass(frozen=True)
class Assignment:
    arm: str  # production | canary
    alias: str | None  # model alias to serve; None: the default (production) alias
    logged: bool  # whether this request's outcome goes to the outcome log
    experiment_arm: str | None = None


@dataclass
class Router:
    """Per-replica router; :meth:`update` swaps in the controller's latest weights (one reference assignment)."""

    weights: CanaryWeights | None = None
    experiment: Experiment | None = None
    served_version: dict[str, int] = field(default_factory=dict)  # alias → version this replica has loaded

    def update(self, weights: CanaryWeights | None, served_version: dict[str, int] | None = None) -> None:
        self.weights = weights
        if served_version is not None:
            self.served_version = served_version

    def live_weight(self, now: float) -> float:
        """The canary's share now: 0 without weights, past the TTL, or while this replica does not serve the
        candidate version under the canary alias (a candidate that failed to load never gets traffic)."""
        w = self.weights
        if w is None or w.weight_pct <= 0 or now - w.heartbeat_at > w.ttl_s:
            return 0.0
        if self.served_version.get(w.alias) != w.version:
            return 0.0
        return w.weight_pct

    def assign(self, user_id: int, now: float) -> Assignment:
        exp_arm = self.experiment.arm(user_id) if self.experiment is not None else None
        w = self.weights
        weight = self.live_weight(now)
        if w is not None and weight > 0 and in_share(user_id, w.salt, weight):
            return Assignment(CANARY, w.alias, True, exp_arm.name if exp_arm else None)
        sample = w.log_sample if w is not None else 0.0
        is_logged = weight > 0 and logged(user_id, w.salt if w else "", sample)
        alias = exp_arm.alias if exp_arm is not None else None
        return Assignment(PRODUCTION, alias, is_logged, exp_arm.name if exp_arm else None)
