"""Candidates as an online-store view: each user's precomputed top-K items, one compact Redis value per user.

The candidate job (:mod:`rayml.batch.candidates`) writes Parquet; ``batch_jobs/materialize_candidates.py`` copies
one such output into Redis as a **run**, then points the view at it. Serving replicas fetch a user's candidates in
the same pipelined round trip as the user's features, so a replica's memory no longer grows with the user count.

Layout (``<p>`` is the online store's key prefix, ``<view>`` the candidate view's name, e.g. ``candidates``):

- ``<p>:<view>:<run>:<user_id>``: the user's candidates, :func:`encode_candidates` (K int32 ids, then K float16
  scores, little-endian: ``6 × K`` bytes, 600 for K = 100).
- ``<p>:<view>:<run>:__meta__``: JSON (``top_k``, ``rows``, ``encoding``, the candidate job's manifest).
- ``<p>:<view>:<run>:__items__``: every item id the run holds (int32), for the replicas' pre-encoded item rows.
- ``<p>:<view>:__runs__``: a set of every run id written (published or not), for the clean-up.
- ``<p>:<view>:__current__``: the served run's id. It is set once every key of a run is written (one ``SET``, so
  atomic), and readers see the old run or the new one, never a mix within one user. The previous run is kept
  (``keep_runs``), so a replica that has not noticed the swap yet still finds its keys.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from rayml.features.online import Lookup
from rayml.features.redis_store import OnlineStoreUnavailable, RedisOnlineStore

ENCODING = "int32-ids+float16-scores-le"
ID_DTYPE = np.dtype("<i4")
SCORE_DTYPE = np.dtype("<f2")
BYTES_PER_CANDIDATE = ID_DTYPE.itemsize + SCORE_DTYPE.itemsize  # 6
CURRENT = "__current__"
META = "__meta__"
ITEMS = "__items__"
RUNS = "__runs__"


class CandidateEncodingError(ValueError):
    """Candidates that cannot be encoded (ids beyond int32, scores beyond float16) or a stored value that
    cannot be decoded; the message names the key or the rows."""


class CandidateViewMissing(LookupError):
    """The online store holds no candidate view (no pointer, or a pointer to a run whose metadata is gone)."""


def encode_candidates(items: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Rows of ``6 × K`` bytes, one per user: [N, K] item ids as int32, then [N, K] scores as float16.

    Raises:
        CandidateEncodingError: an id outside int32, or a finite score that float16 cannot hold (|s| > 65504).
    """
    items, scores = np.asarray(items), np.asarray(scores)
    if items.shape != scores.shape or items.ndim != 2:
        raise CandidateEncodingError(f"items {items.shape} and scores {scores.shape} must both be [users, K]")
    info = np.iinfo(ID_DTYPE)
    if items.size and (items.min() < info.min or items.max() > info.max):
        raise CandidateEncodingError(f"item ids span [{items.min()}, {items.max()}]; int32 holds [{info.min}, {info.max}]")
    with np.errstate(over="ignore"):
        half = scores.astype(SCORE_DTYPE)
    overflow = np.isfinite(scores) & ~np.isfinite(half)
    if overflow.any():
        row = int(np.argwhere(overflow)[0][0])
        raise CandidateEncodingError(f"row {row}: score {scores[overflow][0]} is beyond float16's ±65504")
    n, k = items.shape
    out = np.empty((n, BYTES_PER_CANDIDATE * k), np.uint8)  # [N, 6K]
    out[:, : 4 * k] = items.astype(ID_DTYPE).view(np.uint8).reshape(n, 4 * k)
    out[:, 4 * k :] = half.view(np.uint8).reshape(n, 2 * k)
    return out


def decode_candidates(value: bytes, top_k: int, key: str) -> tuple[np.ndarray, np.ndarray]:
    """One user's (item ids [K] int64, scores [K] float32) from a value of :func:`encode_candidates`.

    Raises:
        CandidateEncodingError: the value is not ``6 × top_k`` bytes (naming ``key``).
    """
    if len(value) != BYTES_PER_CANDIDATE * top_k:
        raise CandidateEncodingError(
            f"candidates value at {key!r} is {len(value)} bytes; {ENCODING} with top_k={top_k} takes "
            f"{BYTES_PER_CANDIDATE * top_k}")
    items = np.frombuffer(value, ID_DTYPE, count=top_k).astype(np.int64)
    scores = np.frombuffer(value, SCORE_DTYPE, count=top_k, offset=4 * top_k).astype(np.float32)
    return items, scores


@dataclass(frozen=True)
class CandidateRun:
    """One materialized run of the view, as its ``__meta__`` key describes it."""

    run: str
    top_k: int
    rows: int
    meta: dict[str, Any]


class CandidateStoreKeys:
    """Key names of one candidate view in one Redis online store."""

    def __init__(self, store: RedisOnlineStore, view: str) -> None:
        self.store, self.view = store, view
        self.base = f"{store.prefix}:{view}"

    @property
    def current(self) -> str:
        return f"{self.base}:{CURRENT}"

    def user(self, run: str, user_id: int) -> str:
        return f"{self.base}:{run}:{user_id}"

    def meta(self, run: str) -> str:
        return f"{self.base}:{run}:{META}"

    def items(self, run: str) -> str:
        return f"{self.base}:{run}:{ITEMS}"

    def read_run(self, run: str) -> CandidateRun:
        """The metadata of ``run``.

        Raises:
            CandidateViewMissing: no ``__meta__`` key for it.
            CandidateEncodingError: the metadata is not the JSON the job writes.
        """
        raw = self._call(lambda: self.store.client.get(self.meta(run)))
        if raw is None:
            raise CandidateViewMissing(f"online store {self.store.address}: no {self.meta(run)!r} (run {run!r} of view "
                                       f"{self.view!r} is gone or was never completed)")
        try:
            meta = json.loads(raw)
            if meta["encoding"] != ENCODING:
                raise ValueError(f"encoding {meta['encoding']!r}, expected {ENCODING!r}")
            return CandidateRun(run, int(meta["top_k"]), int(meta["rows"]), meta)
        except (ValueError, KeyError, TypeError) as exc:
            raise CandidateEncodingError(f"{self.meta(run)!r}: not the candidate job's metadata ({exc})") from None

    def current_run(self) -> str:
        """The served run's id.

        Raises:
            CandidateViewMissing: the pointer key is absent (nothing was materialized yet).
        """
        raw = self._call(lambda: self.store.client.get(self.current))
        if raw is None:
            raise CandidateViewMissing(
                f"online store {self.store.address}: no candidate view {self.view!r} (key {self.current!r} is absent); "
                "run batch_jobs/materialize_candidates.py first")
        return raw.decode()

    @property
    def run_set(self) -> str:
        return f"{self.base}:{RUNS}"

    def runs(self) -> list[str]:
        """Ids of every run written (published or not), oldest first: run ids sort by time."""
        return sorted(r.decode() for r in self._call(lambda: self.store.client.smembers(self.run_set)))

    def _call(self, call: Any) -> Any:
        try:
            return call()
        except self.store.errors as exc:
            raise OnlineStoreUnavailable(f"{self.store.address}: {exc}") from None


class RedisCandidates:
    """The candidate view in a Redis online store, read by serving: one user's candidates together with that
    user's feature row, in one pipelined round trip.

    Every fetch also reads the pointer (same round trip); when a newer run was published, the next fetches read
    that run (its metadata costs one more round trip, once). Nothing here grows with the number of users.
    """

    def __init__(self, store: RedisOnlineStore, view: str = "candidates") -> None:
        """Raises: CandidateViewMissing (no pointer or metadata), OnlineStoreUnavailable."""
        self.keys = CandidateStoreKeys(store, view)
        self.store = store
        self.run = self.keys.read_run(self.keys.current_run())
        self.swaps = 0  # runs switched to since start
        self.refused: str | None = None  # why the last published run could not be served, if it could not

    @property
    def top_k(self) -> int:
        return self.run.top_k

    def fetch(self, user_id: int, user_view: str) -> tuple[tuple[np.ndarray, np.ndarray] | None, Lookup]:
        """(item ids, scores) of ``user_id`` (None: not in the view), and its row of ``user_view``.

        Raises:
            OnlineStoreUnavailable: the store is down.
            CandidateEncodingError: the stored value is malformed (naming its key).
        """
        run = self.run
        user_keys = self.store.row_keys(user_view, np.array([user_id]))
        try:
            pipe = self.store.client.pipeline(transaction=False)
            pipe.get(self.keys.current)
            pipe.get(self.keys.user(run.run, user_id))
            pipe.mget(user_keys)
            pointer, value, user_rows = pipe.execute()
        except self.store.errors as exc:
            raise OnlineStoreUnavailable(f"{self.store.address}: {exc}") from None
        user = self.store.decode_rows(user_view, user_rows)
        if pointer is not None and pointer.decode() != run.run:
            run = self._switch(pointer.decode())
            if value is None:  # the old run may be gone already: ask the new one
                value = self.keys._call(lambda: self.store.client.get(self.keys.user(run.run, user_id)))
        if value is None:
            return None, user
        return decode_candidates(value, run.top_k, self.keys.user(run.run, user_id)), user

    def _switch(self, new: str) -> CandidateRun:
        """Serve ``new`` from now on; a run without readable metadata is refused (the current one stays)."""
        try:
            self.run = self.keys.read_run(new)
            self.swaps += 1
            self.refused = None
        except (CandidateViewMissing, CandidateEncodingError) as exc:  # not written by the job: keep what works
            self.refused = str(exc)
        return self.run

    def item_ids(self) -> np.ndarray:
        """Every item id of the served run (int64, sorted, unique): bounded by the catalog, not the users."""
        raw = self.keys._call(lambda: self.store.client.get(self.keys.items(self.run.run)))
        if raw is None:
            raise CandidateViewMissing(f"online store {self.store.address}: no {self.keys.items(self.run.run)!r}")
        if len(raw) % ID_DTYPE.itemsize:
            raise CandidateEncodingError(f"{self.keys.items(self.run.run)!r} is {len(raw)} bytes, not int32 ids")
        return np.frombuffer(raw, ID_DTYPE).astype(np.int64)

    def describe(self) -> dict[str, Any]:
        return {"view": self.keys.view, "run": self.run.run, "top_k": self.run.top_k, "rows": self.run.rows,
                "swaps": self.swaps, "refused": self.refused}


class CandidateRunWriter:
    """Writes one run of the candidate view, then publishes it (see the module docstring for the layout)."""

    def __init__(self, store: RedisOnlineStore, view: str, run: str, top_k: int, chunk: int = 10_000) -> None:
        self.keys = CandidateStoreKeys(store, view)
        self.store, self.run, self.top_k, self.chunk = store, run, top_k, chunk
        if not run or ":" in run or run.startswith("__"):
            raise ValueError(f"run id {run!r} must be non-empty, without ':' and not start with '__'")
        self.rows = 0
        self._items = np.empty(0, np.int64)
        self._registered = False

    def write(self, user_ids: np.ndarray, items: np.ndarray, scores: np.ndarray) -> int:
        """Write [N] users' [N, K] candidates (MSET, ``chunk`` users a command); returns N.

        Raises:
            CandidateEncodingError: K differs from the run's ``top_k``, or values do not fit the encoding.
            OnlineStoreUnavailable: the store is down.
        """
        if items.ndim != 2 or items.shape[1] != self.top_k:
            raise CandidateEncodingError(f"got candidates of shape {items.shape}; this run holds top_k={self.top_k}")
        encoded = encode_candidates(items, scores)  # [N, 6K]
        if not self._registered:  # before any of its keys: a killed job's keys are found and dropped later
            self.keys._call(lambda: self.store.client.sadd(self.keys.run_set, self.run))
            self._registered = True
        width = encoded.shape[1]
        raw = encoded.tobytes()
        ids = np.asarray(user_ids, np.int64).tolist()
        for lo in range(0, len(ids), self.chunk):
            hi = min(lo + self.chunk, len(ids))
            mapping = {self.keys.user(self.run, ids[i]): raw[i * width : (i + 1) * width] for i in range(lo, hi)}
            self.keys._call(lambda m=mapping: self.store.client.mset(m))
        self._items = np.union1d(self._items, pd.unique(items.ravel()))  # hashing: ~6× np.unique's sort here
        self.rows += len(ids)
        return len(ids)

    def publish(self, meta: dict[str, Any]) -> None:
        """Write the run's item ids and metadata, then point the view at it (one SET: atomic for readers)."""
        body = {**meta, "run": self.run, "top_k": self.top_k, "rows": self.rows, "encoding": ENCODING}
        client = self.store.client
        self.keys._call(lambda: client.set(self.keys.items(self.run), self._items.astype(ID_DTYPE).tobytes()))
        self.keys._call(lambda: client.set(self.keys.meta(self.run), json.dumps(body)))
        self.keys._call(lambda: client.set(self.keys.current, self.run))

    def drop_old_runs(self, keep: int) -> list[str]:
        """Delete every run but the ``keep`` newest (this one among them); returns the dropped ids.

        An unfinished run (a job killed before :meth:`publish`) is dropped too once newer runs are kept.
        """
        runs = self.keys.runs()
        kept = runs[-keep:]
        if self.run not in kept:
            kept = [*runs[-keep + 1 :], self.run] if keep > 1 else [self.run]
        dropped = [r for r in runs if r not in kept]
        client = self.store.client
        for run in dropped:
            pattern = f"{self.keys.base}:{run}:*"
            batch: list[bytes] = []
            for key in self.keys._call(lambda p=pattern: list(client.scan_iter(match=p, count=10_000))):
                batch.append(key)
                if len(batch) >= 10_000:
                    self.keys._call(lambda b=batch: client.unlink(*b))
                    batch = []
            if batch:
                self.keys._call(lambda b=batch: client.unlink(*b))
            self.keys._call(lambda r=run: client.srem(self.keys.run_set, r))
        return dropped
