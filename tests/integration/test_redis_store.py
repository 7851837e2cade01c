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


def test_recent_clicks_on_redis_equal_embedded_and_offline_in_one_round_trip(redis_server):
    from rayml.features.realtime import (
        EmbeddedWindowStore,
        Events,
        RealtimeConfig,
        RedisWindowStore,
        offline_recent_clicks,
    )

    config = RealtimeConfig(recent_clicks=8)
    redis = RedisWindowStore(config, RedisOnlineStore(port=redis_server.port, prefix="t5"))
    embedded = EmbeddedWindowStore(config)
    rng = np.random.default_rng(2)
    now = 1_800_000_000.0
    n = 3000
    # Whole seconds: equal timestamps (ties) and older re-clicks of an item are common; items past 9 order
    # differently as strings than as numbers, which is how Redis breaks ties.
    events = Events(rng.integers(0, 30, n), rng.integers(0, 60, n), now - rng.integers(0, 300, n).astype(np.float64),
                    rng.random(n) < 0.4)
    for lo in range(0, n, 500):  # several ingestion calls, out of time order
        part = slice(lo, lo + 500)
        batch = Events(events.user_id[part], events.item_id[part], events.ts[part], events.clicked[part])
        redis.ingest("item", batch.item_id, batch)
        embedded.ingest("item", batch.item_id, batch)
    users = np.arange(35)
    calls = int(redis.client.info("stats")["total_commands_processed"])
    online = redis.recent_clicks(users)
    assert int(redis.client.info("stats")["total_commands_processed"]) - calls == len(users) + 1  # 35 ZREVRANGE + INFO
    for user, got, local in zip(users, online, embedded.recent_clicks(users), strict=True):
        want = offline_recent_clicks(config, events.user_id, events.item_id, events.ts, events.clicked, int(user), now)
        np.testing.assert_array_equal(got, local, err_msg=f"user {user}")
        np.testing.assert_array_equal(got, want, err_msg=f"user {user}")
    assert all(len(a) == 8 for a in online[:30]) and all(len(a) == 0 for a in online[30:])
    assert redis.client.zcard("t5:rc:3") == 8  # trimmed in Redis, not only on read
    assert 0 < redis.client.ttl("t5:rc:3") <= redis.expire_s


def test_recent_clicks_on_redis_an_older_click_never_moves_an_item(redis_server):
    from rayml.features.realtime import Events, RealtimeConfig, RedisWindowStore

    def click(item: int, ts: float) -> Events:
        return Events(np.array([1]), np.array([item]), np.array([ts]), np.array([True]))

    redis = RedisWindowStore(RealtimeConfig(recent_clicks=3), RedisOnlineStore(port=redis_server.port, prefix="t6"))
    for item, ts in [(10, 100.0), (11, 300.0), (12, 200.0)]:
        redis.ingest("user", np.array([1]), click(item, ts))
    redis.ingest("user", np.array([1]), click(11, 50.0))  # replayed older click of 11
    assert redis.recent_clicks(np.array([1]))[0].tolist() == [11, 12, 10]
    assert redis.client.zscore("t6:rc:1", "11") == 300.0
    redis.ingest("user", np.array([1]), click(10, 400.0))
    assert redis.recent_clicks(np.array([1]))[0].tolist() == [10, 11, 12]

    off = RedisWindowStore(RealtimeConfig(recent_clicks=0), RedisOnlineStore(port=redis_server.port, prefix="t7"))
    off.ingest("user", np.array([1]), click(10, 100.0))
    assert off.recent_clicks(np.array([1]))[0].tolist() == [] and off.client.keys("t7:rc:*") == []


def test_recent_clicks_with_redis_down_raise_and_open_the_circuit(redis_server):
    from rayml.features.definitions import Entity, FeatureRepo, RedisStoreConfig
    from rayml.features.realtime import Events, RealtimeConfig
    from rayml.features.service import OnlineFeatures
    from tests.conftest import free_port

    entities = {"user": Entity(key="user_id"), "item": Entity(key="item_id")}
    repo = FeatureRepo(entities=entities, views={}, realtime=RealtimeConfig(),
                       online_store=RedisStoreConfig(type="redis", port=redis_server.port))
    features = OnlineFeatures(repo, "unused", retry_after_s=30)
    user = 987_654_321  # the default prefix is shared with other tests: an id nobody else uses
    features.ingest(Events(np.array([user, user]), np.array([5, 6]), np.array([10.0, 20.0]), np.array([True, True])))
    assert features.recent_clicks(user).tolist() == [6, 5]

    dead_port = free_port()  # nothing listens there: a Redis that is down
    dead = OnlineFeatures(repo.model_copy(update={"online_store": RedisStoreConfig(type="redis", port=dead_port)}),
                          "unused", retry_after_s=30)
    with pytest.raises(OnlineStoreUnavailable, match=f"redis://127.0.0.1:{dead_port}/0"):
        dead.recent_clicks(user)
    with pytest.raises(OnlineStoreUnavailable, match="marked down"):  # the breaker answers without a socket
        dead.recent_clicks(user)
    assert dead.errors == 1
