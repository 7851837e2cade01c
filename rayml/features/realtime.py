"""Real-time windowed features: impressions and clicks per entity over sliding windows, from an event stream.

One definition (:class:`RealtimeConfig`) drives three implementations that must agree exactly:

- :class:`EmbeddedWindowStore`: in-process counters (one replica's view of the events it ingested);
- :class:`RedisWindowStore`: counters in Redis shared by every replica (``HINCRBY`` per bucket, one pipelined
  round trip per lookup, which can share a pipeline with a request's other reads);
- :func:`offline_window_features`: the same aggregates recomputed from an event log, for training and the
  train/serve skew check.

Windows are bucketed: an event at time ``ts`` falls in bucket ``floor(ts / bucket_s)``; the window ``W`` at time
``now`` counts the ``W / bucket_s`` buckets ending with ``now``'s bucket. So a window's edge has bucket
resolution, and online and offline counts are equal for the same events and the same ``now``.

Both stores also keep each user's recent clicks (:func:`offline_recent_clicks` is their offline counterpart):
the last ``recent_clicks`` distinct items the user clicked, newest first by event time, so serving can filter
them out. They are kept whenever ``recent_clicks > 0``, whether or not ``user`` is a real-time entity.
"""

from __future__ import annotations

import threading
from collections import OrderedDict, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from pydantic import Field, model_validator

from rayml.config import StrictModel
from rayml.features.online import Lookup
from rayml.features.redis_store import Finish, OnlineStoreUnavailable, RedisOnlineStore

COUNTERS = ("impressions", "clicks")


class RealtimeConfig(StrictModel):
    """The ``realtime:`` block of a feature repo."""

    entities: list[str] = Field(["user", "item"], min_length=1, description="Entities aggregated (names in `entities`).")
    bucket_s: int = Field(60, ge=1, le=86_400, description="Bucket width: the time resolution of every window.")
    windows: dict[str, int] = Field(
        {"5m": 300, "1h": 3600}, min_length=1, description="Window name → length in seconds (a multiple of bucket_s)."
    )
    max_future_s: float = Field(60, ge=0, description="Events stamped later than now + this are refused (clock skew).")
    max_past_s: float = Field(
        86_400, gt=0, le=366 * 86_400,
        description="Events stamped earlier than now - this are refused (backfills go through the offline path).",
    )
    recent_clicks: int = Field(
        50, ge=0, le=10_000, description="Last N clicked items kept per user (post-filters exclude them); 0: none kept."
    )
    max_entities: int = Field(
        20_000, ge=1, le=100_000_000,
        description="Embedded store only: entities kept per entity type (least recently updated dropped first), so "
        "events with random ids cannot grow a replica's memory without bound. Redis expires keys instead.",
    )

    @model_validator(mode="after")
    def _whole_buckets(self) -> RealtimeConfig:
        for name, seconds in self.windows.items():
            if seconds <= 0 or seconds % self.bucket_s:
                raise ValueError(f"windows.{name}={seconds} must be a positive multiple of bucket_s={self.bucket_s}")
        return self

    @property
    def feature_names(self) -> list[str]:
        """Column names of one entity's real-time features, e.g. ``clicks_5m``."""
        return [f"{counter}_{window}" for window in self.windows for counter in COUNTERS]

    @property
    def max_buckets(self) -> int:
        return max(self.windows.values()) // self.bucket_s


@dataclass(frozen=True)
class Events:
    """A batch of impression events, column-wise. ``ts`` is epoch seconds."""

    user_id: np.ndarray
    item_id: np.ndarray
    ts: np.ndarray
    clicked: np.ndarray

    def entity_ids(self, key: str) -> np.ndarray:
        return {"user_id": self.user_id, "item_id": self.item_id}[key]

    def __len__(self) -> int:
        return len(self.ts)


def bucket_counts(config: RealtimeConfig, ids: np.ndarray, events: Events) -> dict[tuple[int, int], list[int]]:
    """(entity id, bucket) → [impressions, clicks] for one batch of events: the unit both stores add."""
    buckets = np.floor(events.ts / config.bucket_s).astype(np.int64)
    out: dict[tuple[int, int], list[int]] = defaultdict(lambda: [0, 0])
    for entity, bucket, clicked in zip(ids.tolist(), buckets.tolist(), events.clicked.tolist(), strict=True):
        cell = out[(entity, bucket)]
        cell[0] += 1
        cell[1] += int(bool(clicked))
    return out


def newest_clicks(clicks: dict[int, float], n: int) -> list[int]:
    """The ``n`` newest items of item → last click ts, newest first.

    Equal timestamps order like Redis orders sorted-set members of equal score: by the item id as a string,
    descending. So all three implementations agree even on ties.
    """
    return sorted(clicks, key=lambda item: (clicks[item], str(item)), reverse=True)[:n]


def clicks_by_user(events: Events) -> dict[int, dict[int, float]]:
    """user → item → newest click ts among the clicked events of one batch."""
    out: dict[int, dict[int, float]] = defaultdict(dict)
    mask = np.asarray(events.clicked, bool)
    for user, item, ts in zip(events.user_id[mask].tolist(), events.item_id[mask].tolist(),
                              np.asarray(events.ts, np.float64)[mask].tolist(), strict=True):
        out[user][item] = max(ts, out[user].get(item, ts))
    return out


def window_lookup(config: RealtimeConfig, per_id: list[dict[int, list[int]]], now: float) -> Lookup:
    """Sum the buckets of each id's counters over every window ending at ``now``."""
    now_bucket = int(np.floor(now / config.bucket_s))
    columns = {name: np.zeros(len(per_id), np.float64) for name in config.feature_names}
    for window, seconds in config.windows.items():
        first = now_bucket - seconds // config.bucket_s + 1
        imp, clk = columns[f"impressions_{window}"], columns[f"clicks_{window}"]
        for row, buckets in enumerate(per_id):
            for bucket, (n_imp, n_clk) in buckets.items():
                if first <= bucket <= now_bucket:
                    imp[row] += n_imp
                    clk[row] += n_clk
    return Lookup(columns, np.ones(len(per_id), bool))  # no events in a window is a count of 0, not missing


class EmbeddedWindowStore:
    """Counters in this process: exact for the events this replica ingested, lost when it restarts."""

    def __init__(self, config: RealtimeConfig) -> None:
        self.config = config
        self._lock = threading.Lock()
        # entity → id → bucket → [impressions, clicks]; each id map is kept in update order (oldest first)
        self._counts: dict[str, OrderedDict[int, dict[int, list[int]]]] = defaultdict(OrderedDict)
        self._clicks: OrderedDict[int, dict[int, float]] = OrderedDict()  # user → item → ts, most recent last
        self.evicted = 0  # entities dropped to keep within max_entities

    def _bound(self, table: OrderedDict) -> None:
        """Drop the least recently updated entities beyond ``max_entities`` (caller holds the lock)."""
        while len(table) > self.config.max_entities:
            table.popitem(last=False)
            self.evicted += 1

    def ingest(self, entity: str, ids: np.ndarray, events: Events, *, track_recent_clicks: bool = True) -> None:
        """Add ``events`` to the counters of ``entity`` (``ids``: its id per event).

        With ``track_recent_clicks`` the clicked items also go to each user's recent clicks; a caller that
        ingests the same events for several entities sets it on one call only.
        """
        if track_recent_clicks and self.config.recent_clicks:
            self._add_clicks(events)
        horizon = int(np.floor(events.ts.max() / self.config.bucket_s)) - self.config.max_buckets if len(events) else 0
        with self._lock:
            table = self._counts[entity]
            for (entity_id, bucket), (n_imp, n_clk) in bucket_counts(self.config, ids, events).items():
                buckets = table.get(entity_id)
                if buckets is None:
                    buckets = table[entity_id] = {}
                else:
                    table.move_to_end(entity_id)
                cell = buckets.setdefault(bucket, [0, 0])
                cell[0] += n_imp
                cell[1] += n_clk
                for old in [b for b in buckets if b <= horizon]:
                    del buckets[old]
            self._bound(table)

    def lookup(self, entity: str, ids: np.ndarray, now: float) -> Lookup:
        with self._lock:
            table: Mapping[int, dict[int, list[int]]] = self._counts.get(entity, {})
            per_id = [dict(table.get(int(i), {})) for i in ids]
        return window_lookup(self.config, per_id, now)

    def _add_clicks(self, events: Events) -> None:
        n = self.config.recent_clicks
        with self._lock:
            for user, batch in clicks_by_user(events).items():
                clicks = self._clicks.setdefault(user, {})
                self._clicks.move_to_end(user)
                for item, ts in batch.items():
                    if ts > clicks.get(item, -np.inf):  # an older click never moves an item (Redis ZADD GT)
                        clicks[item] = ts
                if len(clicks) > n:
                    self._clicks[user] = {item: clicks[item] for item in newest_clicks(clicks, n)}
            self._bound(self._clicks)

    def recent_clicks(self, user_ids: np.ndarray) -> list[np.ndarray]:
        """Each user's recently clicked item ids (int64), newest first; empty for a user with none."""
        with self._lock:
            per_user = [dict(self._clicks.get(int(u), {})) for u in user_ids]
        return [np.array(newest_clicks(clicks, self.config.recent_clicks), np.int64) for clicks in per_user]


class RedisWindowStore:
    """Counters in Redis: hash ``<prefix>:rt:<entity>:<id>`` with fields ``<bucket>:i`` / ``<bucket>:c``.

    Every replica writes and reads the same counters. Keys expire one full window after their last event, and
    each write drops the buckets that fell out of the longest window. A user's recent clicks are the sorted set
    ``<prefix>:rc:<user_id>`` (member: item id, score: click ts), trimmed to ``recent_clicks`` and expiring like
    the counters, one full window after the user's last click. Shares the batch store's connection;
    connection problems raise :class:`OnlineStoreUnavailable`.
    """

    def __init__(self, config: RealtimeConfig, store: RedisOnlineStore) -> None:
        self.config = config
        self.store = store
        self.client = store.client
        self.prefix = store.prefix
        self.expire_s = max(config.windows.values()) + config.bucket_s

    def _execute(self, pipe) -> list:
        try:
            return pipe.execute()
        except self.store.errors as exc:
            raise OnlineStoreUnavailable(f"{self.store.address}: {exc}") from None

    def _key(self, entity: str, entity_id: int) -> str:
        return f"{self.prefix}:rt:{entity}:{entity_id}"

    def _clicks_key(self, user_id: int) -> str:
        return f"{self.prefix}:rc:{user_id}"

    def ingest(self, entity: str, ids: np.ndarray, events: Events, *, track_recent_clicks: bool = True) -> None:
        """Add ``events`` to the counters of ``entity`` (``ids``: its id per event), in one round trip.

        With ``track_recent_clicks`` the clicked items also go to each user's recent clicks, in the same round
        trip; a caller that ingests the same events for several entities sets it on one call only.
        """
        pipe = self.client.pipeline(transaction=False)
        newest: dict[int, int] = {}
        for (entity_id, bucket), (n_imp, n_clk) in bucket_counts(self.config, ids, events).items():
            key = self._key(entity, entity_id)
            pipe.hincrby(key, f"{bucket}:i", n_imp)
            if n_clk:
                pipe.hincrby(key, f"{bucket}:c", n_clk)
            newest[entity_id] = max(bucket, newest.get(entity_id, bucket))
        for entity_id, bucket in newest.items():
            key = self._key(entity, entity_id)
            stale = range(bucket - 2 * self.config.max_buckets, bucket - self.config.max_buckets)
            pipe.hdel(key, *[f"{b}:{c}" for b in stale for c in "ic"])
            pipe.expire(key, self.expire_s)
        if track_recent_clicks and self.config.recent_clicks:
            self._add_clicks(pipe, events)
        self._execute(pipe)

    def _add_clicks(self, pipe, events: Events) -> None:
        n = self.config.recent_clicks
        for user, clicks in clicks_by_user(events).items():
            key = self._clicks_key(user)
            pipe.zadd(key, {str(item): ts for item, ts in clicks.items()}, gt=True)  # an older click never moves an item
            pipe.zremrangebyrank(key, 0, -n - 1)  # keep the n highest (ts, member): newest_clicks' order
            pipe.expire(key, self.expire_s)

    def lookup(self, entity: str, ids: np.ndarray, now: float) -> Lookup:
        """Windowed counters of ``entity`` for ``ids`` at ``now``, in one round trip."""
        pipe = self.client.pipeline(transaction=False)
        finish = self.queue_lookup(pipe, entity, ids, now)
        return finish(iter(self._execute(pipe)))

    def queue_lookup(self, pipe, entity: str, ids: np.ndarray, now: float) -> Finish:
        """Queue the reads of :meth:`lookup` into ``pipe`` (one HGETALL an id); the returned function makes the
        :class:`Lookup` of their replies."""
        keys = [self._key(entity, i) for i in np.asarray(ids, np.int64).tolist()]
        for key in keys:
            pipe.hgetall(key)
        return lambda replies: hash_window_lookup(self.config, [next(replies) for _ in keys], now)

    def recent_clicks(self, user_ids: np.ndarray) -> list[np.ndarray]:
        """Each user's recently clicked item ids (int64), newest first, in one round trip; empty for unknown users."""
        pipe = self.client.pipeline(transaction=False)
        finish = self.queue_recent_clicks(pipe, user_ids)
        return finish(iter(self._execute(pipe)))  # an empty pipeline sends nothing

    def queue_recent_clicks(self, pipe, user_ids: np.ndarray) -> Finish:
        """Queue the reads of :meth:`recent_clicks` into ``pipe`` (none when ``recent_clicks`` is 0)."""
        users = np.asarray(user_ids, np.int64).tolist()
        if not self.config.recent_clicks:
            return lambda replies: [np.zeros(0, np.int64) for _ in users]
        for user in users:
            pipe.zrevrange(self._clicks_key(user), 0, self.config.recent_clicks - 1)
        return lambda replies: [np.array(next(replies), dtype=np.int64).reshape(-1) for _ in users]


def hash_window_lookup(config: RealtimeConfig, hashes: list[dict[bytes, bytes]], now: float) -> Lookup:
    """:func:`window_lookup` of counters read from Redis: one hash an id, fields ``<bucket>:i`` / ``<bucket>:c``.

    Vectorised: every field of every id is parsed by one numpy call, and each window is one ``bincount``.
    """
    n = len(hashes)
    columns = {name: np.zeros(n, np.float64) for name in config.feature_names}
    sizes = np.fromiter(map(len, hashes), dtype=np.int64, count=n)
    if not sizes.any():
        return Lookup(columns, np.ones(n, bool))
    fields = b" ".join([b" ".join(h) for h in hashes if h]).replace(b":i", b" 0").replace(b":c", b" 1")
    parsed = np.fromstring(fields, dtype=np.int64, sep=" ").reshape(-1, 2)  # [F, 2]: bucket, 0 impressions / 1 clicks
    counts = np.fromstring(b" ".join([b" ".join(h.values()) for h in hashes if h]), dtype=np.float64, sep=" ")  # [F]
    if len(parsed) != len(counts) or len(counts) != sizes.sum():
        raise ValueError("real-time counters in Redis are not `<bucket>:i|c` → integer fields")
    row = np.repeat(np.arange(n), sizes)  # [F] the id each field belongs to
    bucket, clicks = parsed[:, 0], parsed[:, 1].astype(bool)
    now_bucket = int(np.floor(now / config.bucket_s))
    for window, seconds in config.windows.items():
        inside = (bucket >= now_bucket - seconds // config.bucket_s + 1) & (bucket <= now_bucket)
        for name, mask in ((f"impressions_{window}", inside & ~clicks), (f"clicks_{window}", inside & clicks)):
            columns[name] = np.bincount(row[mask], weights=counts[mask], minlength=n).astype(np.float64, copy=False)
    return Lookup(columns, np.ones(n, bool))  # no events in a window is a count of 0, not missing


def offline_recent_clicks(
    config: RealtimeConfig, user_ids: np.ndarray, item_ids: np.ndarray, ts: np.ndarray, clicked: np.ndarray,
    user: int, at: float,
) -> np.ndarray:
    """The recent clicks of ``user`` at time ``at`` (events with ``ts <= at``), recomputed from an event log.

    Equal to what the online stores serve for the same events (Redis: before its key expires).
    """
    ts = np.asarray(ts, np.float64)
    mask = (np.asarray(user_ids) == user) & np.asarray(clicked, bool) & (ts <= at)
    clicks: dict[int, float] = {}
    for item, t in zip(np.asarray(item_ids, np.int64)[mask].tolist(), ts[mask].tolist(), strict=True):
        clicks[item] = max(t, clicks.get(item, t))
    return np.array(newest_clicks(clicks, config.recent_clicks), np.int64)


def offline_window_features(
    config: RealtimeConfig, event_ids: np.ndarray, event_ts: np.ndarray, event_clicked: np.ndarray,
    ids: np.ndarray, at: np.ndarray,
) -> dict[str, np.ndarray]:
    """The real-time features of entities ``ids`` at times ``at``, recomputed from an event log.

    Vectorised: events are sorted by (id, bucket) with cumulative counts, and each (id, window) is two
    binary searches. Equal, by construction, to what the online stores serve for the same events.
    """
    buckets = np.floor(np.asarray(event_ts, np.float64) / config.bucket_s).astype(np.int64)
    event_ids = np.asarray(event_ids, np.int64)
    order = np.lexsort((buckets, event_ids))
    ev_id, ev_bucket = event_ids[order], buckets[order]
    cum_clicks = np.concatenate([[0], np.cumsum(np.asarray(event_clicked, bool)[order].astype(np.int64))])
    ids = np.asarray(ids, np.int64)
    now_bucket = np.floor(np.asarray(at, np.float64) / config.bucket_s).astype(np.int64)
    out = {}
    for window, seconds in config.windows.items():
        first = now_bucket - seconds // config.bucket_s + 1
        lo = _search(ev_id, ev_bucket, ids, first, "left")
        hi = _search(ev_id, ev_bucket, ids, now_bucket, "right")
        out[f"impressions_{window}"] = (hi - lo).astype(np.float64)
        out[f"clicks_{window}"] = (cum_clicks[hi] - cum_clicks[lo]).astype(np.float64)
    return {name: out[name] for name in config.feature_names}


def _search(ev_id: np.ndarray, ev_bucket: np.ndarray, ids: np.ndarray, buckets: np.ndarray, side: str) -> np.ndarray:
    """Positions of (id, bucket) pairs in events sorted by (id, bucket)."""
    start = np.searchsorted(ev_id, ids, "left")
    end = np.searchsorted(ev_id, ids, "right")
    pos = np.empty(len(ids), np.int64)
    for i, (s, e, b) in enumerate(zip(start, end, buckets, strict=True)):
        pos[i] = s + np.searchsorted(ev_bucket[s:e], b, side)  # type: ignore[call-overload]
    return pos
