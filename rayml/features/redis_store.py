"""Redis online store: one key per (view, entity) holding the row as msgpack; a batch lookup is one MGET.

Keys are ``<prefix>:<view>:<id>``; the view's column names live in ``<prefix>:<view>:__columns__``.
Connection problems raise :class:`OnlineStoreUnavailable`, which callers turn into degraded answers.
"""

from __future__ import annotations

import json
from typing import Any

import msgpack
import numpy as np
import pyarrow as pa

from rayml.features.online import Lookup


class OnlineStoreUnavailable(ConnectionError):
    """The online store cannot be reached; the message says which one."""


class RedisOnlineStore:
    """Online store on a Redis server (``redis`` client; pipelined writes, MGET reads, optional TTL)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 6379, db: int = 0, prefix: str = "rayml",
                 ttl_s: int | None = None, timeout_s: float = 0.2, password: str | None = None) -> None:
        import redis

        self.address = f"redis://{host}:{port}/{db}"
        self.prefix = prefix
        self.ttl_s = ttl_s
        self.errors = (redis.ConnectionError, redis.TimeoutError)  # what counts as "down" (AuthenticationError is one)
        self.client = redis.Redis(host=host, port=port, db=db, password=password, socket_timeout=timeout_s,
                                  socket_connect_timeout=timeout_s, health_check_interval=0)
        self._columns: dict[str, list[str]] = {}

    def _key(self, view: str, entity: int | str) -> str:
        return f"{self.prefix}:{view}:{entity}"

    def write(self, view: str, table: pa.Table, key: str, batch: int = 10_000) -> int:
        """Upsert one row per entity of ``table``; returns rows written."""
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
                pipe.execute()
        except self.errors as exc:
            raise OnlineStoreUnavailable(f"{self.address}: {exc}") from None
        self._columns[view] = columns
        return len(ids)

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
        keys = self.row_keys(view, ids)
        try:
            raw = self.client.mget(keys)
        except self.errors as exc:
            raise OnlineStoreUnavailable(f"{self.address}: {exc}") from None
        return self.decode_rows(view, raw, features)

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
