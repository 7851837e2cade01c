"""Shadow traffic: a bounded work queue and the statistics comparing shadow with production.

What is compared
    A *shadow* model scores exactly the candidate rows that production scored for a request,
    after the user's answer was already sent. Per request we compare the two score vectors:

    * overlap@k: ``|topk(prod) ∩ topk(shadow)| / k`` with ``k`` capped at the number of rows;
    * Kendall τ-b between the two score vectors (``scipy.stats.kendalltau``); NaN when there
      are fewer than two rows or a vector is constant, and NaN values are skipped in aggregates;
    * score deltas ``shadow - prod`` per row (quantiles and mean absolute delta).

Why identical rows
    Feeding the shadow the very rows production scored (same order, same length) removes
    candidate-generation and feature-freshness noise: any difference is the model's, so
    overlap@k and τ measure ranking agreement and the deltas measure calibration drift.
    Top-k sets are taken by row *position* (rows are identical, so a position is a row);
    ties are broken by position (stable sort, higher score first, NaN last).

What is dropped first
    Shadow work never competes with users. :class:`ShadowQueue` drops a shadow job (and
    counts it) when the replica reports itself busy with user requests or when the bounded
    queue is full; it never blocks the caller and never raises a job's exception.
    Statistics are memory bounded: per tumbling window only counts, sums and fixed-size
    uniform reservoirs (score deltas, latencies) are kept, and only the last ``max_windows``
    windows are retained; older windows are dropped first.

Conventions
    Clocks are monotonic seconds (injectable, ``time.monotonic`` by default); latencies are
    milliseconds; ``report()`` is JSON safe (NaN and infinities become ``None``).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
import warnings
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "AgreementSummary",
    "RankingComparison",
    "Reservoir",
    "ShadowConfig",
    "ShadowQueue",
    "ShadowReport",
    "ShadowWindow",
    "blocks_canary",
    "compare_rankings",
]

MAX_ERROR_CHARS = 200
DELTA_QUANTILES: tuple[tuple[str, float], ...] = (
    ("p01", 0.01),
    ("p05", 0.05),
    ("p50", 0.50),
    ("p95", 0.95),
    ("p99", 0.99),
)
AGREEMENT_TOLERANCE = 1e-9  # a mean of 0.8s summed in floats must still pass min 0.8
LATENCY_QUANTILES: tuple[tuple[str, float], ...] = (("p50", 0.50), ("p99", 0.99))

ShadowJob = Callable[[], Awaitable[None]]
Clock = Callable[[], float]


class ShadowConfig(BaseModel):
    """Shadow traffic settings.

    ``fraction`` is the share of requests mirrored to the shadow (0..1); ``k`` the overlap@k
    cut; ``queue_size`` the bound of the shadow work queue; ``window_s`` the tumbling
    statistics window in seconds; ``min_agreement`` the overlap@k below which a canary may not
    start (``None``: no gate); ``min_requests`` the comparisons needed before agreement counts.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    fraction: float = Field(ge=0.0, le=1.0)
    k: int = Field(default=10, ge=1)
    queue_size: int = Field(default=64, ge=1)
    window_s: float = Field(default=60.0, gt=0.0)
    min_agreement: float | None = Field(default=None, ge=0.0, le=1.0)
    min_requests: int = Field(default=100, ge=1)


# --------------------------------------------------------------------------- helpers


def _truncate(message: str, limit: int = MAX_ERROR_CHARS) -> str:
    """Return ``message`` cut to at most ``limit`` characters."""
    return message if len(message) <= limit else message[: limit - 1] + "…"


def _error_message(exc: BaseException) -> str:
    """``"TypeName: message"`` of an exception, truncated."""
    text = str(exc)
    return _truncate(f"{type(exc).__name__}: {text}" if text else type(exc).__name__)


def _json_float(value: float | None) -> float | None:
    """A plain float, or ``None`` for ``None``/NaN/infinity (JSON has no NaN)."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _mean(total: float, count: int) -> float:
    """``total / count``, NaN when ``count`` is zero."""
    return total / count if count else math.nan


def _as_vector(values: ArrayLike, name: str) -> NDArray[np.float64]:
    """``values`` as a 1-D float64 array, or ``ValueError`` naming the argument."""
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {array.shape}")
    return array


# --------------------------------------------------------------------------- per request


@dataclass(frozen=True)
class RankingComparison:
    """One request's comparison of shadow with production over the same ``n`` rows.

    ``k`` is the effective cut (requested k capped at ``n``); ``overlap_at_k`` is NaN when
    ``n == 0``; ``kendall_tau`` is τ-b, NaN when undefined; ``deltas`` is ``shadow - prod``
    per row; ``prod_topk``/``shadow_topk`` are the ids of each top-k, best first.
    """

    n: int
    k: int
    overlap_at_k: float
    kendall_tau: float
    deltas: NDArray[np.float64]
    prod_topk: tuple[Any, ...]
    shadow_topk: tuple[Any, ...]


def _topk_positions(scores: NDArray[np.float64], k: int) -> NDArray[np.intp]:
    """Positions of the ``k`` highest scores, best first; ties by position, NaN last."""
    order = np.argsort(-scores, kind="stable")
    return order[:k]


def _kendall_tau(a: NDArray[np.float64], b: NDArray[np.float64]) -> float:
    """Kendall τ-b of ``a`` and ``b``; NaN when fewer than two rows or undefined."""
    if a.size < 2:
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # Imported here: serving replicas import this module, and scipy.stats costs about half a second.
        from scipy.stats import kendalltau

        tau = float(kendalltau(a, b, variant="b").statistic)
    return tau if math.isfinite(tau) else math.nan


def compare_rankings(
    prod_ids: Sequence[Any],
    prod_scores: ArrayLike,
    shadow_scores: ArrayLike,
    k: int,
) -> RankingComparison:
    """Compare production and shadow scores of the same candidate rows.

    ``prod_ids[i]``, ``prod_scores[i]`` and ``shadow_scores[i]`` describe the same row ``i``;
    all three must have the same length ``n``. Higher scores rank first. Returns overlap@k
    (``k`` capped at ``n``), Kendall τ-b and per-row deltas ``shadow - prod``.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    prod = _as_vector(prod_scores, "prod_scores")
    shadow = _as_vector(shadow_scores, "shadow_scores")
    n = len(prod_ids)
    if prod.size != n or shadow.size != n:
        raise ValueError(
            "prod_ids, prod_scores and shadow_scores must have the same length, got "
            f"{n}, {prod.size}, {shadow.size}"
        )
    cut = min(k, n)
    prod_top = _topk_positions(prod, cut)
    shadow_top = _topk_positions(shadow, cut)
    overlap = len(set(prod_top.tolist()) & set(shadow_top.tolist())) / cut if cut else math.nan
    return RankingComparison(
        n=n,
        k=cut,
        overlap_at_k=overlap,
        kendall_tau=_kendall_tau(prod, shadow),
        deltas=shadow - prod,
        prod_topk=tuple(prod_ids[i] for i in prod_top.tolist()),
        shadow_topk=tuple(prod_ids[i] for i in shadow_top.tolist()),
    )


# --------------------------------------------------------------------------- reservoir


class Reservoir:
    """Uniform reservoir sample (Algorithm R) of at most ``capacity`` floats.

    ``seen`` counts every value offered; ``values`` holds the sample (a copy). Randomness
    comes from a seeded ``numpy.random.Generator`` so results are reproducible.
    """

    def __init__(self, capacity: int, rng: np.random.Generator) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.seen = 0
        self._rng = rng
        self._buf = np.empty(0, dtype=np.float64)

    def __len__(self) -> int:
        return int(self._buf.size)

    @property
    def values(self) -> NDArray[np.float64]:
        """A copy of the current sample."""
        return self._buf.copy()

    def add(self, values: ArrayLike) -> None:
        """Offer a batch of values (vectorised Algorithm R)."""
        batch = np.asarray(values, dtype=np.float64).ravel()
        if batch.size == 0:
            return
        room = self.capacity - self._buf.size
        if room > 0:
            self._buf = np.concatenate([self._buf, batch[:room]])
        self._replace(batch[max(room, 0) :], self.seen + max(room, 0))
        self.seen += int(batch.size)

    def _replace(self, rest: NDArray[np.float64], first_index: int) -> None:
        """Item with 0-based global index ``t`` replaces slot ``j ~ U[0, t]`` when ``j < cap``."""
        if rest.size == 0:
            return
        indices = np.arange(first_index, first_index + rest.size, dtype=np.int64)
        slots = self._rng.integers(0, indices + 1)
        keep = slots < self.capacity
        self._buf[slots[keep]] = rest[keep]

    def quantiles(self, qs: Sequence[float]) -> list[float]:
        """Quantiles of the sample (NaN each when empty)."""
        if self._buf.size == 0:
            return [math.nan] * len(qs)
        return [float(v) for v in np.quantile(self._buf, list(qs))]


# --------------------------------------------------------------------------- windows


class ShadowWindow:
    """Statistics of one tumbling window ``[start, end)`` in clock seconds.

    Holds only counts, sums and two bounded reservoirs (score deltas, latencies in ms).
    ``requests`` counts compared requests; means skip NaN values (their own counts).
    """

    def __init__(
        self,
        start: float,
        end: float,
        *,
        max_deltas: int = 10_000,
        max_latencies: int = 10_000,
        rng: np.random.Generator | None = None,
    ) -> None:
        rng = rng if rng is not None else np.random.default_rng(0)
        self.start = start
        self.end = end
        self.requests = 0
        self.overlap_sum = 0.0
        self.overlap_count = 0
        self.tau_sum = 0.0
        self.tau_count = 0
        self.abs_delta_sum = 0.0
        self.delta_count = 0
        self.nonfinite_deltas = 0
        self.errors = 0
        self.last_error: str | None = None
        self.dropped = 0
        self.deltas = Reservoir(max_deltas, rng)
        self.latencies_ms = Reservoir(max_latencies, rng)

    def add(self, comparison: RankingComparison, latency_ms: float | None = None) -> None:
        """Fold one request's comparison (and the shadow's latency, ms) into the window."""
        self.requests += 1
        if math.isfinite(comparison.overlap_at_k):
            self.overlap_sum += comparison.overlap_at_k
            self.overlap_count += 1
        if math.isfinite(comparison.kendall_tau):
            self.tau_sum += comparison.kendall_tau
            self.tau_count += 1
        self._add_deltas(comparison.deltas)
        if latency_ms is not None and math.isfinite(latency_ms):
            self.latencies_ms.add([latency_ms])

    def _add_deltas(self, deltas: NDArray[np.float64]) -> None:
        finite = deltas[np.isfinite(deltas)]
        self.nonfinite_deltas += int(deltas.size - finite.size)
        self.abs_delta_sum += float(np.abs(finite).sum())
        self.delta_count += int(finite.size)
        self.deltas.add(finite)

    def add_error(self, message: str) -> None:
        """Count one failed shadow call, keeping its (truncated) message."""
        self.errors += 1
        self.last_error = _truncate(message)

    def add_drop(self, count: int = 1) -> None:
        """Count shadow jobs dropped (busy replica or full queue)."""
        self.dropped += count

    @property
    def mean_overlap(self) -> float:
        """Mean overlap@k (NaN when nothing was compared)."""
        return _mean(self.overlap_sum, self.overlap_count)

    @property
    def mean_tau(self) -> float:
        """Mean Kendall τ-b over requests where it was defined (NaN when none)."""
        return _mean(self.tau_sum, self.tau_count)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe summary of the window (NaN becomes ``None``)."""
        delta_q = self.deltas.quantiles([q for _, q in DELTA_QUANTILES])
        latency_q = self.latencies_ms.quantiles([q for _, q in LATENCY_QUANTILES])
        return {
            "start": float(self.start),
            "end": float(self.end),
            "requests": self.requests,
            "overlap_at_k_mean": _json_float(self.mean_overlap),
            "overlap_count": self.overlap_count,
            "kendall_tau_mean": _json_float(self.mean_tau),
            "kendall_tau_count": self.tau_count,
            "score_delta": {
                **{
                    name: _json_float(v)
                    for (name, _), v in zip(DELTA_QUANTILES, delta_q, strict=True)
                },
                "abs_mean": _json_float(_mean(self.abs_delta_sum, self.delta_count)),
                "count": self.delta_count,
                "nonfinite": self.nonfinite_deltas,
                "sampled": len(self.deltas),
            },
            "latency_ms": {
                **{
                    name: _json_float(v)
                    for (name, _), v in zip(LATENCY_QUANTILES, latency_q, strict=True)
                },
                "count": self.latencies_ms.seen,
            },
            "errors": self.errors,
            "last_error": self.last_error,
            "dropped": self.dropped,
        }


@dataclass(frozen=True)
class AgreementSummary:
    """Mean overlap@k over the most recent windows that together hold ``requests`` >= min."""

    overlap_at_k: float
    requests: int
    windows: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form."""
        return {
            "overlap_at_k": _json_float(self.overlap_at_k),
            "requests": self.requests,
            "windows": self.windows,
        }


class ShadowReport:
    """Shadow-vs-production statistics in tumbling windows of ``config.window_s`` seconds.

    Windows are aligned on the clock reading at construction (``origin``): window ``m`` is
    ``[origin + m*window_s, origin + (m+1)*window_s)``. Windows are opened lazily on the first
    event; periods without events leave no window. At most ``max_windows`` completed windows
    are kept (oldest dropped first). ``clock`` returns monotonic seconds.
    """

    def __init__(
        self,
        config: ShadowConfig,
        *,
        clock: Clock = time.monotonic,
        max_windows: int = 60,
        max_deltas: int = 10_000,
        max_latencies: int = 10_000,
        seed: int = 0,
    ) -> None:
        if max_windows < 1:
            raise ValueError(f"max_windows must be >= 1, got {max_windows}")
        self.config = config
        self._clock = clock
        self._origin = float(clock())
        self._max_deltas = max_deltas
        self._max_latencies = max_latencies
        self._rng = np.random.default_rng(seed)
        self._current: ShadowWindow | None = None
        self._completed: deque[ShadowWindow] = deque(maxlen=max_windows)

    # -- window bookkeeping

    def _roll(self, now: float) -> None:
        """Close the current window when ``now`` is past its end."""
        if self._current is not None and now >= self._current.end:
            self._completed.append(self._current)
            self._current = None

    def _window(self) -> ShadowWindow:
        """The window containing the clock's now, opened if needed."""
        now = float(self._clock())
        self._roll(now)
        if self._current is None:
            width = self.config.window_s
            index = math.floor((now - self._origin) / width)
            start = self._origin + index * width
            self._current = ShadowWindow(
                start,
                start + width,
                max_deltas=self._max_deltas,
                max_latencies=self._max_latencies,
                rng=self._rng,
            )
        return self._current

    def windows(self) -> list[ShadowWindow]:
        """Completed windows oldest first, then the current one (if any)."""
        self._roll(float(self._clock()))
        current = [self._current] if self._current is not None else []
        return [*self._completed, *current]

    # -- recording

    def record(
        self,
        prod_ids: Sequence[Any],
        prod_scores: ArrayLike,
        shadow_scores: ArrayLike,
        latency_ms: float | None = None,
    ) -> RankingComparison:
        """Compare one request's scores (see :func:`compare_rankings`) and fold it in."""
        comparison = compare_rankings(prod_ids, prod_scores, shadow_scores, self.config.k)
        self.record_comparison(comparison, latency_ms)
        return comparison

    def record_comparison(
        self, comparison: RankingComparison, latency_ms: float | None = None
    ) -> None:
        """Fold an already computed comparison (and shadow latency, ms) into the window."""
        self._window().add(comparison, latency_ms)

    def record_error(self, message: str) -> None:
        """Count one failed shadow call."""
        self._window().add_error(message)

    def record_drop(self, count: int = 1) -> None:
        """Count shadow jobs dropped before running."""
        self._window().add_drop(count)

    # -- reading

    def agreement_summary(self) -> AgreementSummary | None:
        """Merge the newest windows until they hold ``min_requests`` comparisons.

        Returns ``None`` when all kept windows together hold fewer.
        """
        total, count = 0.0, 0
        for used, window in enumerate(reversed(self.windows()), start=1):
            total += window.overlap_sum
            count += window.overlap_count
            if count >= self.config.min_requests:
                return AgreementSummary(total / count, count, used)
        return None

    def agreement(self) -> float | None:
        """Mean overlap@k over the most recent window(s) holding ``min_requests``; else None."""
        summary = self.agreement_summary()
        return None if summary is None else summary.overlap_at_k

    def report(self) -> dict[str, Any]:
        """JSON-safe report: settings, current window, completed windows, agreement."""
        windows = self.windows()
        current = self._current
        completed = [w.to_dict() for w in windows if w is not current]
        summary = self.agreement_summary()
        return {
            "k": self.config.k,
            "window_s": float(self.config.window_s),
            "min_requests": self.config.min_requests,
            "min_agreement": _json_float(self.config.min_agreement),
            "current": current.to_dict() if current is not None else None,
            "completed": completed,
            "agreement": summary.to_dict() if summary is not None else None,
        }


# --------------------------------------------------------------------------- canary gate


def _agreement_of(source: ShadowReport | ShadowWindow | Mapping[str, Any]) -> tuple[float, int]:
    """``(mean overlap@k, comparisons)`` of a report, a window or a ``report()`` dict."""
    if isinstance(source, ShadowReport):
        summary = source.agreement_summary()
        if summary is not None:
            return summary.overlap_at_k, summary.requests
        return math.nan, sum(w.overlap_count for w in source.windows())
    if isinstance(source, ShadowWindow):
        return source.mean_overlap, source.overlap_count
    return _agreement_of_dict(source)


def _agreement_of_dict(report: Mapping[str, Any]) -> tuple[float, int]:
    summary = report.get("agreement")
    if summary and summary.get("overlap_at_k") is not None:
        return float(summary["overlap_at_k"]), int(summary["requests"])
    windows = [*report.get("completed", []), report.get("current")]
    return math.nan, sum(int(w.get("overlap_count", 0)) for w in windows if w)


def blocks_canary(
    report_or_window: ShadowReport | ShadowWindow | Mapping[str, Any],
    config: ShadowConfig,
) -> str | None:
    """Why shadow agreement forbids starting a canary, or ``None`` when it does not.

    ``None`` when ``config.min_agreement`` is unset or agreement reaches it (equality passes,
    with a 1e-9 tolerance for float summation). Accepts a
    :class:`ShadowReport`, a single :class:`ShadowWindow` or a ``ShadowReport.report()`` dict.
    """
    if config.min_agreement is None:
        return None
    overlap, requests = _agreement_of(report_or_window)
    if requests < config.min_requests or not math.isfinite(overlap):
        return (
            "shadow has fewer than min_requests comparisons "
            f"({requests:,} < {config.min_requests:,})"
        )
    if overlap < config.min_agreement - AGREEMENT_TOLERANCE:
        return (
            f"shadow agreement overlap@{config.k} {overlap:.2f} < min_agreement "
            f"{config.min_agreement:g} over {requests:,} requests"
        )
    return None


# --------------------------------------------------------------------------- work queue


class ShadowQueue:
    """Bounded asyncio queue of shadow jobs, run one at a time by a background worker.

    :meth:`offer` never blocks: a job is dropped (``dropped`` += 1, ``on_drop`` called) when
    ``busy()`` returns True (or raises) or the queue holds ``maxsize`` jobs. The worker starts
    lazily on the first offer made inside a running event loop, or by :meth:`start`. Job
    exceptions are counted in ``errors`` and the last message kept (200 chars); they never
    propagate. Counters: ``offered = accepted + dropped``; ``completed``/``errors`` per job run.
    """

    def __init__(
        self,
        maxsize: int = 64,
        busy: Callable[[], bool] | None = None,
        on_drop: Callable[[], None] | None = None,
    ) -> None:
        if maxsize < 1:
            raise ValueError(f"maxsize must be >= 1, got {maxsize}")
        self.maxsize = maxsize
        self._busy = busy
        self._on_drop = on_drop
        self._queue: asyncio.Queue[ShadowJob] = asyncio.Queue(maxsize=maxsize)
        self._worker: asyncio.Task[None] | None = None
        self.offered = 0
        self.accepted = 0
        self.dropped = 0
        self.completed = 0
        self.errors = 0
        self.last_error: str | None = None

    @classmethod
    def from_config(
        cls,
        config: ShadowConfig,
        busy: Callable[[], bool] | None = None,
        on_drop: Callable[[], None] | None = None,
    ) -> ShadowQueue:
        """A queue bounded by ``config.queue_size``."""
        return cls(config.queue_size, busy=busy, on_drop=on_drop)

    @property
    def pending(self) -> int:
        """Jobs accepted but not yet started."""
        return self._queue.qsize()

    @property
    def running(self) -> bool:
        """Whether the worker task is alive."""
        return self._worker is not None and not self._worker.done()

    def _is_busy(self) -> bool:
        if self._busy is None:
            return False
        try:
            return bool(self._busy())
        except Exception:
            return True  # when in doubt, protect user traffic

    def _drop(self) -> bool:
        self.dropped += 1
        if self._on_drop is not None:
            with contextlib.suppress(Exception):
                self._on_drop()
        return False

    def offer(self, job: ShadowJob) -> bool:
        """Enqueue ``job`` unless busy or full; returns whether it was accepted. Never blocks."""
        self.offered += 1
        if self._is_busy():
            return self._drop()
        try:
            self._queue.put_nowait(job)
        except asyncio.QueueFull:
            return self._drop()
        self.accepted += 1
        self._start_if_in_loop()
        return True

    def _start_if_in_loop(self) -> None:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return
        self.start()

    def start(self) -> None:
        """Start the worker in the running loop (no-op when already running)."""
        if not self.running:
            self._worker = asyncio.get_running_loop().create_task(
                self._run(), name="rayml-shadow-worker"
            )

    def stop(self) -> None:
        """Cancel the worker; jobs still queued stay queued until a later start."""
        if self._worker is not None:
            self._worker.cancel()
            self._worker = None

    async def join(self) -> None:
        """Wait until every accepted job has run (starts the worker if needed)."""
        self.start()
        await self._queue.join()

    async def _run(self) -> None:
        while True:
            job = await self._queue.get()
            try:
                await self._run_one(job)
            finally:
                self._queue.task_done()

    async def _run_one(self, job: ShadowJob) -> None:
        try:
            await job()
        except asyncio.CancelledError as exc:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # the worker itself is being stopped
            self._record_error(exc)
        except Exception as exc:
            self._record_error(exc)
        else:
            self.completed += 1

    def _record_error(self, exc: BaseException) -> None:
        self.errors += 1
        self.last_error = _error_message(exc)

    def stats(self) -> dict[str, Any]:
        """JSON-safe counters."""
        return {
            "offered": self.offered,
            "accepted": self.accepted,
            "dropped": self.dropped,
            "completed": self.completed,
            "errors": self.errors,
            "pending": self.pending,
            "last_error": self.last_error,
        }
