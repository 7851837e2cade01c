"""Honest health of one replica: liveness (restart me) kept apart from readiness (route around me).

- **failing** (liveness): a fault inside the replica that a restart can cure: its event loop stalled for longer
  than ``stall_s``, or its last ``failing_after`` model calls all raised. ``check_health`` raises, and Serve
  replaces the replica.
- **degraded** (readiness only): a dependency is out (the online store, the split plan's Ranker deployment), or
  the registry points an alias at a version this replica refused. The replica keeps answering (batch-only answers
  while the store is down) and is never restarted for it.
- **ok**: neither.

Reasons are short, client-safe strings: exception types and messages with file paths replaced by ``<path>``.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from dataclasses import dataclass, field

PATH_RE = re.compile(r"(?:[A-Za-z]:)?(?:/[\w.@+-]+){2,}/?")


def safe_reason(text: str, limit: int = 300) -> str:
    """``text`` with file-system paths masked and its length capped: fit for a public health endpoint."""
    masked = PATH_RE.sub("<path>", " ".join(str(text).split()))
    return masked if len(masked) <= limit else masked[: limit - 1] + "…"


class LoopWatchdog:
    """Measures, from its own thread, how long the watched event loop takes to run a posted no-op.

    A loop that runs user code for seconds without yielding (a blocking call, a hot loop) shows as a growing
    :attr:`lag_s`; a healthy one answers within milliseconds.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, interval_s: float = 0.5) -> None:
        self.loop, self.interval_s = loop, interval_s
        self._posted: float | None = None  # monotonic time of the probe the loop has not run yet
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="loop-watchdog", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            if self._posted is None and not self.loop.is_closed():
                self._posted = time.monotonic()
                try:
                    self.loop.call_soon_threadsafe(self._pong)
                except RuntimeError:  # loop closed: the replica is going away
                    return

    def _pong(self) -> None:
        self._posted = None

    @property
    def lag_s(self) -> float:
        posted = self._posted
        return 0.0 if posted is None else time.monotonic() - posted

    def stop(self) -> None:
        self._stop.set()


@dataclass
class ModelCalls:
    """Consecutive failed model calls; one success resets the count."""

    failing_after: int
    consecutive_failures: int = 0
    last_error: str | None = None
    total_failures: int = 0

    def ok(self) -> None:
        self.consecutive_failures = 0

    def failed(self, exc: BaseException) -> None:
        self.consecutive_failures += 1
        self.total_failures += 1
        self.last_error = safe_reason(f"{type(exc).__name__}: {exc}")

    @property
    def failing(self) -> bool:
        return self.consecutive_failures >= self.failing_after


@dataclass
class HealthReport:
    """What ``/healthz`` says: ``status`` is ok | degraded | failing, with one reason per problem."""

    failing: list[str] = field(default_factory=list)
    degraded: list[str] = field(default_factory=list)

    @property
    def status(self) -> str:
        return "failing" if self.failing else "degraded" if self.degraded else "ok"

    @property
    def live(self) -> bool:
        return not self.failing

    @property
    def ready(self) -> bool:
        return not self.failing and not any(r.startswith(DEPENDENCY) for r in self.degraded)

    @property
    def reasons(self) -> list[str]:
        return [safe_reason(r) for r in (*self.failing, *self.degraded)]


DEPENDENCY = "dependency "  # degraded reasons that also make the replica not ready start with this


class ReplicaHealth:
    """Liveness signals of one replica: the loop watchdog and the model-call counter."""

    def __init__(self, stall_s: float, failing_after: int) -> None:
        self.stall_s = stall_s
        self.calls = ModelCalls(failing_after)
        self.watchdog: LoopWatchdog | None = None

    def watch(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start watching ``loop`` (the one requests run on); idempotent."""
        if self.watchdog is None:
            self.watchdog = LoopWatchdog(loop)

    def liveness(self) -> list[str]:
        """Reasons this replica should be replaced; empty when it is alive."""
        reasons = []
        if self.watchdog is not None and self.watchdog.lag_s > self.stall_s:
            reasons.append(f"event loop stalled for {self.watchdog.lag_s:.1f}s (limit {self.stall_s:g}s)")
        if self.calls.failing:
            reasons.append(f"last {self.calls.consecutive_failures} model calls failed: {self.calls.last_error}")
        return reasons
