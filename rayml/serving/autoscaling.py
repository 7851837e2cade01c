"""Latency-SLO autoscaling for Ray Serve: add replicas when latency exceeds the target, remove them when it is low.

Replicas report their recent request latency through Serve's custom autoscaling metrics
(``record_autoscaling_stats`` → :class:`LatencyWindow`); Serve aggregates them per replica over
``look_back_period_s`` and calls :class:`LatencySLOPolicy` with an ``AutoscalingContext`` every control-loop
tick. Serve then applies the deployment's own ``upscale_delay_s`` / ``downscale_delay_s`` and bounds.

In a Serve config::

    autoscaling_config:
      min_replicas: 1
      max_replicas: 4
      upscale_delay_s: 5
      downscale_delay_s: 60
      policy:
        policy_function: rayml.serving.autoscaling:LatencySLOPolicy
        policy_kwargs: {target_ms: 50, metric: latency_p95_ms, saturated_ongoing: 28}   # max_ongoing_requests: 32
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from typing import Any

import numpy as np

METRIC = "latency_p95_ms"


class LatencyWindow:
    """Thread-safe record of request latencies over the last ``window_s`` seconds; reports their p95."""

    def __init__(self, window_s: float = 10.0, max_samples: int = 10_000) -> None:
        self.window_s = window_s
        self._samples: deque[tuple[float, float]] = deque(maxlen=max_samples)
        self._lock = threading.Lock()

    def add(self, latency_s: float, now: float | None = None) -> None:
        with self._lock:
            self._samples.append((time.monotonic() if now is None else now, latency_s * 1e3))

    def p95_ms(self, now: float | None = None) -> float:
        """95th percentile in ms of the latencies inside the window (0 when idle)."""
        horizon = (time.monotonic() if now is None else now) - self.window_s
        with self._lock:
            recent = [ms for t, ms in self._samples if t >= horizon]
        return float(np.percentile(recent, 95)) if recent else 0.0

    def stats(self) -> dict[str, float]:
        return {METRIC: self.p95_ms()}


class LatencySLOPolicy:
    """Desired replicas from a latency SLO.

    - Above the target: scale in proportion to the overshoot, ``ceil(n · p / target)``, at most ``max_step``× a tick.
    - Below ``downscale_below × target`` with idle capacity: one replica fewer.
    - Saturated (``saturated_ongoing``, optional): when the deployment's ongoing requests average at least that many
      per replica, one replica more (or the latency rule's count, if larger), and never fewer. The latency a replica
      measures is bounded by ``max_ongoing_requests``: what waits beyond it, in Serve's queue or answered 503, is not
      in it. So on a fast node an overloaded replica can report a p95 under the target while it sheds; its ongoing
      count, pinned at ``max_ongoing_requests``, tells. Set it a little below ``max_ongoing_requests``.
    - Otherwise keep the current count. Replicas that reported nothing yet are ignored; with no latency data at
      all the policy falls back on the queue: scale up when requests are waiting.
    The result is clamped to the deployment's (capacity-adjusted) ``min_replicas`` / ``max_replicas``.
    """

    def __init__(self, target_ms: float, metric: str = METRIC, downscale_below: float = 0.5,
                 max_step: float = 2.0, target_ongoing_requests: float = 2.0,
                 saturated_ongoing: float | None = None) -> None:
        if target_ms <= 0 or not 0 < downscale_below < 1 or max_step < 1:
            raise ValueError("need target_ms > 0, 0 < downscale_below < 1 and max_step >= 1")
        if saturated_ongoing is not None and not saturated_ongoing > 0:
            raise ValueError(f"saturated_ongoing: {saturated_ongoing} must be > 0, or null (off)")
        self.target_ms = target_ms
        self.metric = metric
        self.downscale_below = downscale_below
        self.max_step = max_step
        self.target_ongoing_requests = target_ongoing_requests
        self.saturated_ongoing = saturated_ongoing

    def desired(self, current: int, latencies_ms: list[float], ongoing: float) -> int:
        """The decision itself, from plain numbers (what the unit tests drive)."""
        if current == 0:
            return 1 if ongoing > 0 else 0
        saturated = self.saturated_ongoing is not None and ongoing >= self.saturated_ongoing * current
        if not latencies_ms:
            busy = saturated or ongoing > self.target_ongoing_requests * current
            return current + 1 if busy else current
        worst = max(latencies_ms)
        if worst > self.target_ms:
            return math.ceil(current * min(worst / self.target_ms, self.max_step))
        if saturated:
            return current + 1
        if worst < self.downscale_below * self.target_ms and ongoing < self.target_ongoing_requests * (current - 1):
            return current - 1
        return current

    def __call__(self, ctx: Any) -> tuple[int, dict[str, Any]]:
        per_replica = (ctx.aggregated_metrics or {}).get(self.metric, {})
        latencies = [float(v) for v in per_replica.values() if v is not None and v > 0]
        wanted = self.desired(ctx.current_num_replicas, latencies, float(ctx.total_num_requests or 0.0))
        bounded = max(ctx.capacity_adjusted_min_replicas, min(ctx.capacity_adjusted_max_replicas, wanted))
        state = dict(ctx.policy_state or {})
        state["last_p95_ms"] = max(latencies) if latencies else None
        return bounded, state
