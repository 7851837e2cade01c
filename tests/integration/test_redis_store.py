"""The Redis online store against a real redis-server: round trip, one MGET per lookup, TTL, outage and recovery."""

from __future__ import annotations

import time

import numpy as np
import pyarrow as pa
import pytest

from rayml.features.redis_store import OnlineStoreUnavailable, RedisOnlineStore

pytestmark = pytest.mark.integration


def users_table(n: int = 500) -> pa.Table:
    rng = np.random.default_rng(0)
    return pa.table({"user_id": np.arange(n), "spend": rng.normal(size=n), "tier": [f"t{i % 3}" for i in range(n)]})


def mget_calls(store: RedisOnlineStore) -> int:
    return int(store.client.info("commandstats").get("cmdstat_mget", {}).get("calls", 0))


def test_round_trip_in_one_round_trip(redis_server):
    store = RedisOnlineStore(port=redis_server.port, prefix="t1")
    table = users_table()
    assert store.write("users", table, key="user_id") == 500
    ids = np.array([5, 499, 7000, 0])
    before = mget_calls(store)
    result = store.lookup("users", ids)
    assert mget_calls(store) == before + 1  # 4 entities, one command
    assert result.found.tolist() == [True, True, False, True] and result.missing == 1
    spend = table["spend"].to_numpy()
    assert np.allclose(result.columns["spend"][[0, 1, 3]], spend[[5, 499, 0]]) and np.isnan(result.columns["spend"][2])
    assert result.columns["tier"].tolist() == ["t2", "t1", None, "t0"]
    fresh = RedisOnlineStore(port=redis_server.port, prefix="t1")  # column names come from Redis, not memory
    assert fresh.lookup("users", np.array([5]), ["tier"]).columns["tier"].tolist() == ["t2"]
    with pytest.raises(KeyError, match="no feature 'age'"):
        fresh.lookup("users", ids, ["age"])
    with pytest.raises(KeyError, match="no view 'items'"):
        fresh.lookup("items", ids)


def test_ttl_expires_rows(redis_server):
    store = RedisOnlineStore(port=redis_server.port, prefix="t2", ttl_s=1)
    store.write("users", users_table(10), key="user_id")
    assert store.lookup("users", np.arange(10)).missing == 0
    time.sleep(1.6)
    assert store.lookup("users", np.arange(10)).missing == 10


def test_outage_raises_a_named_error_and_recovers(redis_server):
    store = RedisOnlineStore(port=redis_server.port, prefix="t3")
    store.write("users", users_table(10), key="user_id")
    redis_server.stop()
    try:
        with pytest.raises(OnlineStoreUnavailable, match=f"redis://127.0.0.1:{redis_server.port}/0"):
            store.lookup("users", np.arange(3))
    finally:
        redis_server.start()
    store.write("users", users_table(10), key="user_id")  # the restarted server is empty (no persistence)
    assert store.lookup("users", np.arange(3)).missing == 0


def test_realtime_windows_on_redis_equal_offline_recomputation_in_one_round_trip(redis_server):
    from rayml.features.realtime import (
        Events,
        RealtimeConfig,
        RedisWindowStore,
        offline_window_features,
    )

    config = RealtimeConfig(bucket_s=60, windows={"5m": 300, "1h": 3600})
    store = RedisWindowStore(config, RedisOnlineStore(port=redis_server.port, prefix="t4"))
    rng = np.random.default_rng(1)
    now = 1_800_000_000.0
    n = 3000
    events = Events(rng.integers(0, 40, n), rng.integers(0, 200, n), now - rng.uniform(-30, 5000, n),
                    rng.random(n) < 0.3)
    for lo in range(0, n, 500):  # several ingestion calls, out of time order
        part = slice(lo, lo + 500)
        store.ingest("user", events.user_id[part],
                     Events(events.user_id[part], events.item_id[part], events.ts[part], events.clicked[part]))
    ids = np.arange(45)
    calls = int(store.client.info("stats")["total_commands_processed"])
    online = store.lookup("user", ids, now=now)
    assert int(store.client.info("stats")["total_commands_processed"]) - calls == len(ids) + 1  # 45 HGETALL + INFO
    offline = offline_window_features(config, events.user_id, events.ts, events.clicked, ids, np.full(len(ids), now))
    for name in config.feature_names:
        np.testing.assert_array_equal(online.columns[name], offline[name], err_msg=name)
    assert online.columns["impressions_1h"][40:].tolist() == [0] * 5
    assert store.client.ttl("t4:rt:user:3") <= config.windows["1h"] + config.bucket_s
