"""Online features behind one API: batch views from the online store plus real-time windows from events.

This is what serving calls on every request. The backend follows the repo's ``online_store.type``:

- ``embedded``: each view is the snapshot that materialization wrote to ``<state_dir>/<view>.parquet``; the
  real-time counters live in this process.
- ``redis``: views and counters are read from (and events written to) one Redis server.

When the store is down a call raises :class:`OnlineStoreUnavailable` at once for ``retry_after_s`` (a circuit
breaker), so a dead Redis costs one socket timeout per interval, not one per request.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np
import pyarrow.parquet as pq

from rayml.features.definitions import FeatureRepo, make_online_store
from rayml.features.online import EmbeddedOnlineStore, Lookup
from rayml.features.realtime import EmbeddedWindowStore, Events, RedisWindowStore
from rayml.features.redis_store import OnlineStoreUnavailable, RedisOnlineStore

T = TypeVar("T")


class OnlineFeatures:
    """Batch and real-time features of a feature repo, looked up for a batch of entity ids at once."""

    def __init__(self, repo: FeatureRepo, state_dir: str | Path, views: list[str] | None = None,
                 retry_after_s: float = 1.0) -> None:
        self.repo = repo
        self.retry_after_s = retry_after_s
        self.store = make_online_store(repo.online_store)
        self.errors = 0
        self._down_until = 0.0
        self._lock = threading.Lock()
        if isinstance(self.store, EmbeddedOnlineStore):
            for name in views or sorted(repo.views):
                path = Path(state_dir) / f"{name}.parquet"
                if not path.is_file():
                    raise FileNotFoundError(
                        f"online store: no snapshot of view {name!r} at {path}; "
                        "run batch_jobs/materialize_features.py with the same feature repo first"
                    )
                self.store.write(name, pq.read_table(path), self.key_of_view(name))
        self.windows: EmbeddedWindowStore | RedisWindowStore | None = None
        if repo.realtime is not None:
            if isinstance(self.store, RedisOnlineStore):
                self.windows = RedisWindowStore(repo.realtime, self.store)
            else:
                self.windows = EmbeddedWindowStore(repo.realtime)

    @property
    def backend(self) -> str:
        return self.repo.online_store.type

    def key_of_view(self, view: str) -> str:
        return self.repo.entities[self.repo.views[view].entity].key

    def _guarded(self, call: Callable[[], T]) -> T:
        if time.monotonic() < self._down_until:
            raise OnlineStoreUnavailable(f"{self.backend} online store marked down (retrying within {self.retry_after_s}s)")
        try:
            return call()
        except OnlineStoreUnavailable:
            with self._lock:
                self.errors += 1
                self._down_until = time.monotonic() + self.retry_after_s
            raise

    def get(self, view: str, ids: np.ndarray, features: list[str] | None = None) -> Lookup:
        """Latest batch values of ``view`` for ``ids`` (unknown ids: NaN/None and ``found=False``)."""
        return self._guarded(lambda: self.store.lookup(view, ids, features))

    def realtime(self, entity: str, ids: np.ndarray, now: float | None = None) -> Lookup:
        """Windowed counters of ``entity`` for ``ids`` at ``now`` (default: the clock)."""
        windows = self._require_windows()
        at = time.time() if now is None else now
        return self._guarded(lambda: windows.lookup(entity, ids, at))

    def recent_clicks(self, user_id: int) -> np.ndarray:
        """The items ``user_id`` clicked last (int64, newest first, at most ``realtime.recent_clicks``)."""
        windows = self._require_windows()
        return self._guarded(lambda: windows.recent_clicks(np.array([user_id], np.int64))[0])

    def ingest(self, events: Events) -> None:
        """Add ``events`` to the windowed counters of every real-time entity and to the users' recent clicks."""
        windows = self._require_windows()
        assert self.repo.realtime is not None
        keyed = [(e, self.repo.entities[e].key) for e in self.repo.realtime.entities]

        def write() -> None:
            for n, (entity, key) in enumerate(keyed):
                # Recent clicks ride along with the first entity's writes: once per event, no extra round trip.
                windows.ingest(entity, events.entity_ids(key), events, track_recent_clicks=n == 0)

        self._guarded(write)

    def _require_windows(self) -> EmbeddedWindowStore | RedisWindowStore:
        if self.windows is None:
            raise LookupError("this feature repo has no `realtime:` block")
        return self.windows
