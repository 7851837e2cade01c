"""Redis online store: one key per (view, entity) holding the row as msgpack; a batch lookup is one MGET.

Keys are ``<prefix>:<view>:<id>``; the view's column names live in ``<prefix>:<view>:__columns__``, and
``<prefix>:<view>:__version__`` holds a token that every :meth:`RedisOnlineStore.write` batch replaces (after its
rows). A replica may keep a view's rows in memory (:meth:`RedisOnlineStore.cache_view`, meant for the item view,
whose rows change only when it is materialized again): each lookup then reads the token, in the same round trip,
and fetches only the ids it does not hold yet; a new token drops what it held.

Reads can be queued into a pipeline shared with other reads (:meth:`RedisOnlineStore.queue_lookup`), so one
request's reads of several views and of the real-time windows cost one round trip.
Connection problems raise :class:`OnlineStoreUnavailable`, which callers turn into degraded answers.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import msgpack
import numpy as np
import pyarrow as pa

from rayml.features.online import Lookup

VERSION = "__version__"
CACHE_MAX_ROWS = 1_000_000

Finish = Callable[[Iterator[Any]], Any]
"""Turns a queued read's replies (taken in order from the pipeline's) into its result."""


class OnlineStoreUnavailable(ConnectionError):
    """The online store cannot be reached; the message says which one."""


class RedisOnlineStore:
    """Online store on a Redis server (``redis`` client; pipelined writes, MGET reads, optional TTL)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 6379, db: int = 0, prefix: str = "rayml",
                 ttl_s: int | None = None, timeout_s: float = 0.2, password: str | None = None,
                 cache_max_rows: int = CACHE_MAX_ROWS) -> None:
        """``cache_max_rows``: the most rows one view's cache holds (see :meth:`cache_view`)."""
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        self.address = f"redis://{host}:{port}/{db}"
        self.prefix = prefix
        self.ttl_s = ttl_s
        self.cache_max_rows = cache_max_rows
        self.errors = (redis.ConnectionError, redis.TimeoutError)  # what counts as "down" (AuthenticationError is one)
        # No client-side retries: redis-py 8's default (10, with backoff) made one call to a dead Redis take 4-5 s;
        # the callers' breaker decides when to try again (one socket timeout per interval).
        self.client = redis.Redis(host=host, port=port, db=db, password=password, socket_timeout=timeout_s,
                                  socket_connect_timeout=timeout_s, health_check_interval=0, retry=Retry(NoBackoff(), 0))
        self._columns: dict[str, list[str]] = {}
        self._caches: dict[str, CachedRows | None] = {}  # cached view → its rows (None: none held yet)

    def _key(self, view: str, entity: int | str) -> str:
        return f"{self.prefix}:{view}:{entity}"

    def write(self, view: str, table: pa.Table, key: str, batch: int = 10_000) -> int:
        """Upsert one row per entity of ``table``; returns rows written.

        Each batch of ``batch`` rows is one pipeline whose last command replaces the view's version token, so a
        replica that caches the view drops its rows at its next lookup.
        """
        columns = [c for c in table.column_names if c != key]
        ids = table[key].to_pylist()
        values = [table[c].to_pylist() for c in columns]
        try:
            self.client.set(self._key(view, "__columns__"), json.dumps(columns))
            for lo in range(0, len(ids), batch):
                pipe = self.client.pipeline(transaction=False)
                for i in range(lo, min(lo + batch, len(ids))):
                    row = msgpack.packb([v[i] for v in values])
                    pipe.set(self._key(view, ids[i]), row, ex=self.ttl_s)
                pipe.set(self._key(view, VERSION), uuid.uuid4().hex)  # after the rows: readers see them first
                pipe.execute()
        except self.errors as exc:
            raise OnlineStoreUnavailable(f"{self.address}: {exc}") from None
        self._columns[view] = columns
        return len(ids)

    def cache_view(self, view: str) -> bool:
        """Keep ``view``'s rows in this process between writes; True when they will be.

        Meant for a view of bounded size that changes only when materialized (the item catalog), not for one per
        user. Rows are fetched on first use and kept while the view's version token is unchanged; a write (the
        materialization job, :meth:`write`) replaces the token and the next lookup reads everything it needs
        again. Not with ``ttl_s``: rows that expire change no token. The rows must be written through
        :meth:`write`; a key set by other means is not noticed.
        """
        if self.ttl_s is not None:
            return False
        self._caches.setdefault(view, None)
        return True

    def columns(self, view: str) -> list[str]:
        if view not in self._columns:
            try:
                raw = self.client.get(self._key(view, "__columns__"))
            except self.errors as exc:
                raise OnlineStoreUnavailable(f"{self.address}: {exc}") from None
            if raw is None:
                raise KeyError(f"online store {self.address} has no view {view!r}")
            self._columns[view] = json.loads(raw)
        return self._columns[view]

    def lookup(self, view: str, ids: np.ndarray, features: list[str] | None = None) -> Lookup:
        """Values for ``ids`` in one round trip (MGET); unknown or expired ids get NaN/None and ``found=False``."""
        pipe = self.client.pipeline(transaction=False)
        finish = self.queue_lookup(pipe, view, ids, features)
        return finish(iter(self.execute(pipe)))

    def execute(self, pipe: Any) -> list[Any]:
        """Run a pipeline of this store's client; connection problems raise :class:`OnlineStoreUnavailable`."""
        try:
            return pipe.execute()
        except self.errors as exc:
            raise OnlineStoreUnavailable(f"{self.address}: {exc}") from None

    def queue_lookup(self, pipe: Any, view: str, ids: np.ndarray, features: list[str] | None = None) -> Finish:
        """Queue the reads of :meth:`lookup` into ``pipe``; the returned function makes the :class:`Lookup` of
        their replies (it may need a second round trip, once after a write to a cached view)."""
        if view not in self._caches:
            keys = self.row_keys(view, ids)
            pipe.mget(keys)
            return lambda replies: self.decode_rows(view, next(replies), features)
        wanted = np.asarray(ids, dtype=np.int64).tolist()
        cache = self._caches[view]
        fetch = wanted if cache is None else cache.absent(wanted)
        if cache is not None and fetch and len(cache) + len(fetch) > self.cache_max_rows:
            cache = None  # full: this lookup reads all its ids, as without a cache
            fetch = wanted
        pipe.get(self._key(view, VERSION))
        if fetch:
            pipe.mget([self._key(view, i) for i in fetch])

        def finish(replies: Iterator[Any]) -> Lookup:
            version = next(replies)
            raw = next(replies) if fetch else []
            if cache is not None and version == cache.version:
                if fetch:
                    cache.add(fetch, self.decode_rows(view, raw))
                return cache.lookup(wanted, features)
            current = self._caches.get(view)
            if current is not None and current.version != version and version is not None:
                self._columns.pop(view, None)  # a new materialization may have new columns
            # (no token: Redis was emptied; the known columns stay, and every id decodes as not found)
            if cache is not None:  # the held rows are stale: read every id of this lookup again
                version, raw = self._read_rows(view, wanted)
            rows = self.decode_rows(view, raw)
            if current is None or current.version != version:  # (a full cache at this version stays as it is)
                self._keep(view, version, wanted, rows)
            return rows if features is None else _select(view, rows, features)

        return finish

    def _read_rows(self, view: str, ids: list[int]) -> tuple[bytes | None, list[Any]]:
        """The view's version token and the rows of ``ids`` (token first: the rows are at least that new)."""
        pipe = self.client.pipeline(transaction=False)
        pipe.get(self._key(view, VERSION))
        pipe.mget([self._key(view, i) for i in ids])
        version, raw = self.execute(pipe)
        return version, raw

    def _keep(self, view: str, version: bytes | None, ids: list[int], rows: Lookup) -> None:
        """Hold ``view``'s rows at ``version``, starting with ``rows`` of ``ids`` (no token: hold nothing)."""
        if version is None or len(ids) > self.cache_max_rows:
            self._caches[view] = None
            return
        cache = CachedRows(view, version, self.columns(view))
        cache.add(*_first_of_each(ids, rows))
        self._caches[view] = cache  # one reference swap: concurrent readers use the old rows or these

    def row_keys(self, view: str, ids: np.ndarray) -> list[str]:
        """The keys holding ``ids``' rows of ``view``: to fetch them inside another pipeline (see
        :meth:`decode_rows`)."""
        return [self._key(view, int(i)) for i in np.asarray(ids)]

    def decode_rows(self, view: str, raw: list[Any], features: list[str] | None = None) -> Lookup:
        """The :class:`Lookup` of rows fetched by the keys of :meth:`row_keys` (None: unknown or expired)."""
        columns = self.columns(view)
        wanted = features or columns
        index = []
        for name in wanted:
            if name not in columns:
                raise KeyError(f"view {view!r} has no feature {name!r}")
            index.append(columns.index(name))
        found = np.fromiter((r is not None for r in raw), dtype=bool, count=len(raw))
        rows = [msgpack.unpackb(r) for r in raw if r is not None]
        by_column = list(zip(*rows, strict=True)) if rows else [()] * len(columns)  # one pass, not one per feature
        complete = bool(found.all())
        out = {}
        for name, j in zip(wanted, index, strict=True):
            values = by_column[j]
            # Columns come from typed Arrow columns: the first non-null value tells strings from numbers.
            if isinstance(next((v for v in values if v is not None), None), str):
                column = np.full(len(raw), None, dtype=object)
                column[found] = values
            elif complete:
                column = np.array(values, dtype=np.float64)  # None (a null feature) → NaN
            else:
                column = np.full(len(raw), np.nan)
                column[found] = np.array(values, dtype=np.float64)
            out[name] = column
        return Lookup(out, found)


class CachedRows:
    """One view's rows as read at one version token: id → slot, and every column in slot order.

    Readers take no lock: a slot is published in ``index`` only once its values are written, and a full array is
    replaced by a larger copy, never resized in place. :meth:`add` holds the lock. Numeric columns are float64
    with NaN, string columns object arrays with None, as :meth:`RedisOnlineStore.decode_rows` returns them.
    """

    def __init__(self, view: str, version: bytes, columns: list[str], capacity: int = 1024) -> None:
        self.view, self.version = view, version
        self.names = list(columns)
        self.index: dict[int, int] = {}
        self.found = np.zeros(capacity, dtype=bool)
        self.values = {name: np.full(capacity, np.nan) for name in self.names}
        self._size = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return self._size

    def absent(self, ids: list[int]) -> list[int]:
        """The ids of ``ids`` not held, each once."""
        index = self.index
        return list(dict.fromkeys(i for i in ids if i not in index))

    def add(self, ids: list[int], rows: Lookup) -> None:
        """Hold ``rows`` (every column, aligned with ``ids``, each id once); ids held already keep their row."""
        with self._lock:
            new = np.fromiter((i not in self.index for i in ids), dtype=bool, count=len(ids))
            if not new.any():
                return
            lo, hi = self._size, self._size + int(new.sum())
            if hi > len(self.found):
                self._grow(max(hi, 2 * len(self.found)))
            self.found[lo:hi] = rows.found[new]
            for name in self.names:
                column, values = self.values[name], rows.columns[name][new]
                if values.dtype == object and column.dtype != object:  # a string column's first strings
                    column = self.values[name] = _as_objects(column)
                column[lo:hi] = _as_objects(values) if column.dtype == object and values.dtype != object else values
            self._size = hi
            for slot, i in enumerate((i for i, is_new in zip(ids, new.tolist(), strict=True) if is_new), lo):
                self.index[i] = slot  # published last: a reader finds only written slots

    def _grow(self, capacity: int) -> None:
        found = np.zeros(capacity, dtype=bool)
        found[: self._size] = self.found[: self._size]
        values = {}
        for name, column in self.values.items():
            grown = np.full(capacity, None if column.dtype == object else np.nan, dtype=column.dtype)
            grown[: self._size] = column[: self._size]
            values[name] = grown
        self.found, self.values = found, values

    def lookup(self, ids: list[int], features: list[str] | None = None) -> Lookup:
        """The held rows of ``ids`` (every one held), for ``features`` (default: all)."""
        index = self.index
        slots = np.fromiter((index[i] for i in ids), dtype=np.int64, count=len(ids))
        values = self.values  # one read: a concurrent _grow swaps the whole dict
        out = {}
        for name in features or self.names:
            if name not in values:
                raise KeyError(f"view {self.view!r} has no feature {name!r}")
            out[name] = values[name].take(slots)  # a new array: the caller may write to it
        return Lookup(out, self.found.take(slots))


def _as_objects(values: np.ndarray) -> np.ndarray:
    """A float column as an object column: NaN → None (a string column whose values were all null so far)."""
    out = values.astype(object)
    out[np.isnan(values)] = None
    return out


def _first_of_each(ids: list[int], rows: Lookup) -> tuple[list[int], Lookup]:
    """``ids`` each once, with their first row of ``rows`` (a lookup may repeat ids)."""
    first: dict[int, int] = {}
    for n, i in enumerate(ids):
        first.setdefault(i, n)
    if len(first) == len(ids):
        return ids, rows
    order = np.fromiter(first.values(), dtype=np.int64, count=len(first))
    return list(first), Lookup({name: values.take(order) for name, values in rows.columns.items()},
                               rows.found.take(order))


def _select(view: str, rows: Lookup, features: list[str]) -> Lookup:
    """``rows`` with ``features`` only."""
    for name in features:
        if name not in rows.columns:
            raise KeyError(f"view {view!r} has no feature {name!r}")
    return Lookup({name: rows.columns[name] for name in features}, rows.found)
