"""Benchmark: point-in-time join vs plain pandas.merge_asof, and embedded online-store lookups.

    python benchmarks/feature_store.py [--events 1000000] [--entities 100000]

Prints one JSON line per measurement with its ratio or percentile. Both joins run in the same process on the
same data; their outputs are checked to be equal.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from rayml.features.offline import get_historical_features
from rayml.features.online import EmbeddedOnlineStore
from rayml.features.realtime import EmbeddedWindowStore, Events, RealtimeConfig, RedisWindowStore


def history_and_events(entities: int, events: int, features: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    snapshots = 3
    keys = np.tile(np.arange(entities), snapshots)
    ts = np.repeat(pd.date_range("2026-01-01", periods=snapshots, freq="7D").to_numpy().astype("datetime64[us]"), entities)
    history = pd.DataFrame({"user_id": keys, "valid_from": ts})
    for j in range(features):
        history[f"f{j}"] = rng.normal(size=len(keys))
    event_ts = (np.datetime64("2026-01-01") + rng.integers(0, 21 * 86_400, events).astype("timedelta64[s]")).astype("datetime64[us]")
    entity_df = pd.DataFrame({"user_id": rng.integers(0, entities, events), "event_timestamp": event_ts})
    return history, entity_df


def plain_merge_asof(entity_df: pd.DataFrame, history: pd.DataFrame) -> pd.DataFrame:
    left = entity_df.assign(order=np.arange(len(entity_df))).sort_values("event_timestamp", kind="stable")
    right = history.sort_values("valid_from", kind="stable")
    joined = pd.merge_asof(left, right, left_on="event_timestamp", right_on="valid_from", by="user_id",
                           direction="backward")
    return joined.sort_values("order").reset_index(drop=True)  # back to the input order, like rayml's


def median_seconds(fn, repeats: int) -> tuple[float, Any]:
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times)), out


def lookup_percentiles(store, lookups: list[np.ndarray], warmup: int = 200) -> tuple[float, float]:
    """p50 and p99 in ms of ``store.lookup("users", ids)`` over ``lookups`` after ``warmup`` untimed ones."""
    return call_percentiles(lambda ids: store.lookup("users", ids), lookups, warmup)


def call_percentiles(call, lookups: list[np.ndarray], warmup: int = 200) -> tuple[float, float]:
    """p50 and p99 in ms of ``call(ids)`` over ``lookups`` after ``warmup`` untimed ones."""
    for ids in lookups[:warmup]:
        call(ids)
    latencies = []
    for ids in lookups:
        start = time.perf_counter()
        call(ids)
        latencies.append((time.perf_counter() - start) * 1e3)
    p50, p99 = np.percentile(latencies, [50, 99])
    return float(p50), float(p99)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--entities", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--redis-port", type=int, default=None, help="Also measure a redis-server on this port.")
    args = parser.parse_args()
    history, entity_df = history_and_events(args.entities, args.events, features=8)
    features = [f"f{j}" for j in range(8)]
    get_historical_features(entity_df.head(1000), history, key="user_id")  # warm-up
    ours_s, ours = median_seconds(lambda: get_historical_features(entity_df, history, key="user_id"), args.repeats)
    peer_s, peer = median_seconds(lambda: plain_merge_asof(entity_df, history), args.repeats)
    assert np.allclose(ours[features].to_numpy(), peer[features].to_numpy(), equal_nan=True), "joins differ"
    print(json.dumps({"benchmark": "pit_join", "events": args.events, "history_rows": len(history),
                      "rayml_s": round(ours_s, 3), "merge_asof_s": round(peer_s, 3),
                      "ratio_to_merge_asof": round(ours_s / peer_s, 3), "target": "<= 2", "repeats": args.repeats}))

    store = EmbeddedOnlineStore()
    rng = np.random.default_rng(1)
    table = pa.table({"user_id": np.arange(args.entities), **{f"f{j}": rng.normal(size=args.entities) for j in range(64)}})
    store.write("users", table, key="user_id")
    lookups = [rng.integers(0, args.entities, 200) for _ in range(3000)]
    p50, p99 = lookup_percentiles(store, lookups)
    print(json.dumps({"benchmark": "embedded_lookup", "entities_per_lookup": 200, "features": 64,
                      "lookups": len(lookups), "p50_ms": round(p50, 4), "p99_ms": round(p99, 4), "target_p99_ms": 1.0}))
    window_lookup(EmbeddedWindowStore(RealtimeConfig()), "embedded", lookups[:1000])
    if args.redis_port:
        redis_lookup(args.redis_port, table, lookups)
        from rayml.features.redis_store import RedisOnlineStore

        window_lookup(RedisWindowStore(RealtimeConfig(), RedisOnlineStore(port=args.redis_port, prefix="benchrt")),
                      "redis", lookups[:1000])


def window_lookup(store, backend: str, lookups: list[np.ndarray], events: int = 200_000) -> None:
    """Real-time windows (5m, 1h over 60 s buckets) of 200 items after an hour of events on 100k items."""
    rng = np.random.default_rng(2)
    now = time.time()
    ingested = Events(rng.integers(0, 100_000, events), rng.integers(0, 100_000, events),
                      now - rng.uniform(0, 3600, events), rng.random(events) < 0.2)
    start = time.perf_counter()
    for lo in range(0, events, 10_000):
        part = slice(lo, lo + 10_000)
        store.ingest("item", ingested.item_id[part], Events(ingested.user_id[part], ingested.item_id[part],
                                                            ingested.ts[part], ingested.clicked[part]))
    ingest_s = time.perf_counter() - start
    p50, p99 = call_percentiles(lambda ids: store.lookup("item", ids, now), lookups)
    print(json.dumps({"benchmark": "realtime_window_lookup", "backend": backend, "entities_per_lookup": 200,
                      "windows": 2, "events_ingested": events, "ingest_events_per_s": round(events / ingest_s),
                      "p50_ms": round(p50, 4), "p99_ms": round(p99, 4)}))


def redis_lookup(port: int, table: pa.Table, lookups: list[np.ndarray]) -> None:
    """The same lookups against redis-server on loopback (one MGET each); p99 target 5 ms."""
    from rayml.features.redis_store import RedisOnlineStore

    store = RedisOnlineStore(port=port, prefix="bench")
    store.write("users", table, key="user_id")
    p50, p99 = lookup_percentiles(store, lookups)
    print(json.dumps({"benchmark": "redis_lookup", "entities_per_lookup": 200, "features": 64, "round_trips": 1,
                      "lookups": len(lookups), "p50_ms": round(p50, 4), "p99_ms": round(p99, 4), "target_p99_ms": 5.0}))


if __name__ == "__main__":
    main()
