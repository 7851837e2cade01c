"""Online features behind one API: batch views from the online store plus real-time windows from events.

This is what serving calls on every request. The backend follows the repo's ``online_store.type``:

- ``embedded``: each view is the snapshot that materialization wrote to ``<state_dir>/<view>.parquet``; the
  real-time counters live in this process.
- ``redis``: views and counters are read from (and events written to) one Redis server.

When the store is down a call raises :class:`OnlineStoreUnavailable` at once for ``retry_after_s`` (a circuit
breaker), so a dead Redis costs one socket timeout per interval, not one per request.

:meth:`OnlineFeatures.read` is what one request reads (rows of several views, windows, recent clicks): on Redis
in one pipelined round trip, and :meth:`OnlineFeatures.cache_view` keeps a view's rows in this process between
materializations (the item catalog), as the embedded store keeps every view.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import pyarrow.parquet as pq

from rayml.features.definitions import FeatureRepo, make_online_store
from rayml.features.online import EmbeddedOnlineStore, Lookup
from rayml.features.realtime import EmbeddedWindowStore, Events, RedisWindowStore
from rayml.features.redis_store import OnlineStoreUnavailable, RedisOnlineStore

T = TypeVar("T")


@dataclass(frozen=True)
class FeatureRead:
    """What :meth:`OnlineFeatures.read` returns.

    Attributes:
        rows: view → its :class:`Lookup` for the ids asked.
        windows: real-time entity → its windowed counters for the ids asked.
        recent_clicks: the user's recently clicked items (int64, newest first), when asked; else None.
    """

    rows: dict[str, Lookup]
    windows: dict[str, Lookup]
    recent_clicks: np.ndarray | None


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
        self._clicks_read = threading.local()  # this thread's last read() of recent clicks: (user, clicks, when)
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

    def cache_view(self, view: str) -> bool:
        """Keep ``view``'s rows in this process between materializations (a view of bounded size, such as the
        item catalog); True when they are kept (the embedded store keeps every view; Redis: see
        :meth:`rayml.features.redis_store.RedisOnlineStore.cache_view`)."""
        if isinstance(self.store, RedisOnlineStore):
            return self.store.cache_view(view)
        return True

    def read(self, rows: Mapping[str, np.ndarray], windows: Mapping[str, np.ndarray] | None = None,
             now: float | None = None, clicks_of: int | None = None) -> FeatureRead:
        """Everything one request reads, at once: for each view the rows of its ids (``rows``), for each real-time
        entity its windows at ``now`` (``windows``; default clock), and with ``clicks_of`` that user's recent
        clicks. On Redis this is one pipelined round trip (a cached view adds its token and only the ids it
        lacks; a second round trip only right after a materialization).

        Raises:
            OnlineStoreUnavailable: the store is down (or marked down).
            KeyError: an unknown view or feature.
            LookupError: windows or clicks asked of a repo without a ``realtime:`` block.
        """
        self._clicks_read.last = None
        entities = dict(windows or {})
        at = time.time() if now is None else now
        counters = self._require_windows() if entities or clicks_of is not None else None
        store = self.store
        if not isinstance(store, RedisOnlineStore):
            def local() -> FeatureRead:
                return FeatureRead(
                    {view: store.lookup(view, ids) for view, ids in rows.items()},
                    {entity: counters.lookup(entity, ids, at) for entity, ids in entities.items() if counters},
                    None if counters is None or clicks_of is None
                    else counters.recent_clicks(np.array([clicks_of], np.int64))[0],
                )

            return self._remember_clicks(clicks_of, self._guarded(local))

        def remote() -> FeatureRead:
            assert counters is None or isinstance(counters, RedisWindowStore)
            pipe = store.client.pipeline(transaction=False)
            queued_rows = {view: store.queue_lookup(pipe, view, ids) for view, ids in rows.items()}
            queued_windows = {entity: counters.queue_lookup(pipe, entity, ids, at)
                              for entity, ids in entities.items() if counters}
            queued_clicks = None if counters is None or clicks_of is None \
                else counters.queue_recent_clicks(pipe, np.array([clicks_of], np.int64))
            replies = iter(store.execute(pipe))  # each finish takes its own replies, in the order queued
            found = {view: finish(replies) for view, finish in queued_rows.items()}
            counted = {entity: finish(replies) for entity, finish in queued_windows.items()}
            clicks = None if queued_clicks is None else queued_clicks(replies)[0]
            return FeatureRead(found, counted, clicks)

        return self._remember_clicks(clicks_of, self._guarded(remote))

    def _remember_clicks(self, user_id: int | None, read: FeatureRead) -> FeatureRead:
        if user_id is not None and read.recent_clicks is not None:
            self._clicks_read.last = (user_id, read.recent_clicks, time.monotonic())
        return read

    def realtime(self, entity: str, ids: np.ndarray, now: float | None = None) -> Lookup:
        """Windowed counters of ``entity`` for ``ids`` at ``now`` (default: the clock)."""
        windows = self._require_windows()
        at = time.time() if now is None else now
        return self._guarded(lambda: windows.lookup(entity, ids, at))

    def recent_clicks(self, user_id: int, fresh_s: float = 0.0) -> np.ndarray:
        """The items ``user_id`` clicked last (int64, newest first, at most ``realtime.recent_clicks``).

        With ``fresh_s``: the clicks this thread's last :meth:`read` fetched for the same user, if it was at
        most ``fresh_s`` seconds ago, answer without a round trip (once).
        """
        last, self._clicks_read.last = getattr(self._clicks_read, "last", None), None
        if last is not None and last[0] == user_id and time.monotonic() - last[2] <= fresh_s:
            return last[1]
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
