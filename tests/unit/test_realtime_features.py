"""Real-time windows and recent clicks: the embedded store and the offline recomputation agree exactly; bucket
edges; config errors."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rayml.config import ConfigError
from rayml.features.definitions import Entity, FeatureRepo, load_feature_repo
from rayml.features.event_log import append_events, read_events
from rayml.features.realtime import (
    EmbeddedWindowStore,
    Events,
    RealtimeConfig,
    offline_recent_clicks,
    offline_window_features,
)
from rayml.features.service import OnlineFeatures

pytestmark = pytest.mark.unit

CONFIG = RealtimeConfig(bucket_s=60, windows={"5m": 300, "1h": 3600})
NOW = 1_800_000_000.0  # a bucket boundary (divisible by 60)


def events(user, item, ts, clicked) -> Events:
    return Events(np.asarray(user, np.int64), np.asarray(item, np.int64), np.asarray(ts, np.float64),
                  np.asarray(clicked, bool))


def test_counts_per_window_and_bucket_edges():
    store = EmbeddedWindowStore(CONFIG)
    ev = events([1, 1, 1, 1, 2], [9, 9, 8, 9, 9],
                [NOW + 30, NOW - 200, NOW - 301, NOW - 3540, NOW - 3601], [1, 0, 1, 1, 1])
    store.ingest("user", ev.user_id, ev)
    got = store.lookup("user", np.array([1, 2, 3]), now=NOW + 59)
    # 5m = buckets [now-4, now]: NOW+30 and NOW-200 count; NOW-301 is in bucket now-6 → out.
    assert got.columns["impressions_5m"].tolist() == [2, 0, 0]
    assert got.columns["clicks_5m"].tolist() == [1, 0, 0]
    assert got.columns["impressions_1h"].tolist() == [4, 0, 0]  # NOW-3540 is bucket now-59 (in); NOW-3601 is bucket now-61 (out)
    assert got.columns["clicks_1h"].tolist() == [3, 0, 0]
    assert got.missing == 0  # no recent events is a count of 0, not a missing value
    later = store.lookup("user", np.array([1]), now=NOW + 3599)
    assert later.columns["impressions_1h"].tolist() == [1]  # only NOW+30 is still inside the hour


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 5), st.integers(-5000, 100), st.booleans()),
                min_size=1, max_size=60),
       st.integers(0, 200))
def test_online_equals_offline_recomputation(rows, at_offset):
    user, item, offset, clicked = map(list, zip(*rows, strict=True))
    ev = events(user, item, [NOW + o for o in offset], clicked)
    store = EmbeddedWindowStore(CONFIG)
    for lo in range(0, len(ev), 7):  # several ingestion calls
        part = slice(lo, lo + 7)
        store.ingest("item", ev.item_id[part], events(ev.user_id[part], ev.item_id[part], ev.ts[part], ev.clicked[part]))
    ids = np.arange(7)
    online = store.lookup("item", ids, now=NOW + at_offset)
    offline = offline_window_features(CONFIG, ev.item_id, ev.ts, ev.clicked, ids, np.full(len(ids), NOW + at_offset))
    for name in CONFIG.feature_names:
        np.testing.assert_array_equal(online.columns[name], offline[name], err_msg=name)


def test_window_must_be_whole_buckets():
    with pytest.raises(ValueError, match=r"windows.odd=90 must be a positive multiple of bucket_s=60"):
        RealtimeConfig(bucket_s=60, windows={"odd": 90})


def test_unknown_realtime_entity_names_file_and_key(tmp_path):
    path = tmp_path / "features.yaml"
    path.write_text("entities: {user: {key: user_id}}\n"
                    "views: {p: {entity: user, source: x, features: [a]}}\n"
                    "realtime: {entities: [user, shop]}\n")
    with pytest.raises(ConfigError, match=r"features.yaml: key 'realtime.entities': unknown entity 'shop'"):
        load_feature_repo(path, check_sources=False)


def test_event_log_round_trip(tmp_path):
    ev = events([1, 2, 3], [4, 5, 6], [NOW, NOW + 86_400.5, NOW + 1.25], [True, False, True])
    files = append_events(tmp_path / "log", ev)
    assert len(files) == 2  # two days, two partitions
    back = read_events(tmp_path / "log")
    order = np.argsort(back.ts)
    np.testing.assert_array_equal(back.user_id[order], [1, 3, 2])
    np.testing.assert_allclose(back.ts[order], [NOW, NOW + 1.25, NOW + 86_400.5])
    np.testing.assert_array_equal(back.clicked[order], [True, True, False])


def test_recent_clicks_newest_first_distinct_and_trimmed():
    store = EmbeddedWindowStore(RealtimeConfig(recent_clicks=3))
    store.ingest("user", np.array([1, 1, 1, 2]),
                 events([1, 1, 1, 2], [10, 11, 12, 10], [NOW + 1, NOW + 3, NOW + 3, NOW], [1, 1, 0, 1]))
    store.ingest("user", np.array([1, 1, 1]), events([1, 1, 1], [10, 13, 11], [NOW + 5, NOW + 2, NOW + 1], [1, 1, 1]))
    # 10 clicked again later → front; 11's older click does not move it behind 13; 12 was only an impression.
    got = store.recent_clicks(np.array([1, 2, 3]))
    assert [a.tolist() for a in got] == [[10, 11, 13], [10], []]
    assert got[0].dtype == np.int64
    store.ingest("user", np.array([1]), events([1], [14], [NOW + 6], [1]))
    assert store.recent_clicks(np.array([1]))[0].tolist() == [14, 10, 11]  # 13, the oldest, is dropped


def test_recent_clicks_zero_keeps_nothing():
    store = EmbeddedWindowStore(RealtimeConfig(recent_clicks=0))
    store.ingest("user", np.array([1]), events([1], [10], [NOW], [1]))
    assert [a.tolist() for a in store.recent_clicks(np.array([1, 2]))] == [[], []]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 4), st.integers(0, 12), st.integers(-50, 50), st.booleans()),
                min_size=1, max_size=80),
       st.integers(0, 6))
def test_recent_clicks_online_equals_offline_recomputation(rows, n):
    """Coarse timestamps make ties and out-of-order re-clicks common; several ingestion calls trim as they go."""
    user, item, offset, clicked = map(list, zip(*rows, strict=True))
    ev = events(user, item, [NOW + o for o in offset], clicked)
    config = RealtimeConfig(recent_clicks=n)
    store = EmbeddedWindowStore(config)
    for lo in range(0, len(ev), 9):
        part = slice(lo, lo + 9)
        store.ingest("item", ev.item_id[part], events(ev.user_id[part], ev.item_id[part], ev.ts[part], ev.clicked[part]))
    users = np.arange(6)
    online = store.recent_clicks(users)
    for u, got in zip(users, online, strict=True):
        want = offline_recent_clicks(config, ev.user_id, ev.item_id, ev.ts, ev.clicked, int(u), NOW + 50)
        np.testing.assert_array_equal(got, want, err_msg=f"user {u}")
    # Offline at an earlier time sees only the events stamped up to then.
    past = ev.ts <= NOW
    before = EmbeddedWindowStore(config)
    before.ingest("item", ev.item_id[past], events(ev.user_id[past], ev.item_id[past], ev.ts[past], ev.clicked[past]))
    for u, got in zip(users, before.recent_clicks(users), strict=True):
        want = offline_recent_clicks(config, ev.user_id, ev.item_id, ev.ts, ev.clicked, int(u), NOW)
        np.testing.assert_array_equal(got, want, err_msg=f"user {u} at NOW")


def test_online_features_recent_clicks_even_without_user_windows_and_need_a_realtime_block(tmp_path):
    entities = {"user": Entity(key="user_id"), "item": Entity(key="item_id")}
    realtime = RealtimeConfig(entities=["item"], recent_clicks=2)  # no user windows: clicks are still kept per user
    features = OnlineFeatures(FeatureRepo(entities=entities, views={}, realtime=realtime), tmp_path)
    features.ingest(events([7, 7, 7], [1, 2, 3], [NOW, NOW + 1, NOW + 2], [1, 0, 1]))
    assert features.recent_clicks(7).tolist() == [3, 1]
    assert features.recent_clicks(8).tolist() == []
    without = OnlineFeatures(FeatureRepo(entities=entities, views={}), tmp_path)
    with pytest.raises(LookupError, match="no `realtime:` block"):
        without.recent_clicks(7)


def test_random_ids_cannot_grow_the_embedded_store_beyond_max_entities():
    """Events with random ids (anyone can POST /events) keep at most max_entities per entity type; the entities
    updated last are the ones kept, and their counts stay exact."""
    config = RealtimeConfig(bucket_s=60, windows={"5m": 300}, max_entities=1_000, recent_clicks=5)
    store = EmbeddedWindowStore(config)
    rng = np.random.default_rng(0)
    for _ in range(20):  # 20 × 5,000 events with random ids
        users = rng.integers(0, 2**62, 5_000)
        batch = events(users, rng.integers(0, 2**62, 5_000), np.full(5_000, NOW - 10), np.ones(5_000, bool))
        store.ingest("user", batch.user_id, batch)
        store.ingest("item", batch.item_id, batch, track_recent_clicks=False)
    assert len(store._counts["user"]) == len(store._counts["item"]) == 1_000
    assert len(store._clicks) == 1_000 and store.evicted >= 2 * (100_000 - 1_000)
    kept = events([7, 7], [1, 2], [NOW - 5, NOW - 4], [True, False])  # a real user, updated last: kept, exact
    store.ingest("user", kept.user_id, kept)
    looked = store.lookup("user", np.array([7]), NOW)
    assert looked.columns["impressions_5m"][0] == 2 and looked.columns["clicks_5m"][0] == 1
    assert store.recent_clicks(np.array([7]))[0].tolist() == [1]
