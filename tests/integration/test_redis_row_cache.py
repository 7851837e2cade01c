"""The replica-side row cache of the Redis online store (RedisOnlineStore.cache_view) against a real redis-server.

A cached view must answer exactly as an uncached store does, skip Redis for the rows it holds, drop them when the
view's version token changes or disappears (a write, a flush, a restart), stay within ``cache_max_rows``, be off
with ``ttl_s``, and raise OnlineStoreUnavailable when Redis is down.

Every test uses its own key prefix in its own Redis database (:data:`DB`), so a FLUSHDB here touches no other
test's keys; a restart of the shared server is what test_redis_store.py does already.
"""

from __future__ import annotations

import msgpack
import numpy as np
import pyarrow as pa
import pytest

from rayml.features.online import Lookup
from rayml.features.redis_store import VERSION, OnlineStoreUnavailable, RedisOnlineStore

pytestmark = pytest.mark.integration

DB = 7  # a database of the shared server that no other test uses


def items_table(n: int = 200, shift: float = 0.0, score: bool = False) -> pa.Table:
    """Items with a float column (some nulls), an int column and a string column (some nulls, id 0 among them)."""
    ids = np.arange(n)
    columns = {
        "item_id": ids,
        "price": pa.array([None if i % 11 == 5 else i * 1.5 + shift for i in ids], pa.float64()),
        "clicks": pa.array(ids * 3 + int(shift), pa.int64()),
        "category": pa.array([None if i % 7 == 0 else f"c{(i + int(shift)) % 4}" for i in ids], pa.string()),
    }
    if score:
        columns["score"] = pa.array(ids * -0.5, pa.float64())
    return pa.table(columns)


def stores(redis_server, prefix: str, **kwargs) -> tuple[RedisOnlineStore, RedisOnlineStore]:
    """(a replica that caches ``items``, one that does not), both on ``prefix`` of :data:`DB`."""
    cached = RedisOnlineStore(port=redis_server.port, db=DB, prefix=prefix, **kwargs)
    assert cached.cache_view("items")
    return cached, RedisOnlineStore(port=redis_server.port, db=DB, prefix=prefix, **kwargs)


def assert_same(got: Lookup, want: Lookup) -> None:
    """Same found flags, same columns in the same order, same values (NaN equal NaN), same kind of array.

    One allowance: an uncached MGET whose found rows hold no string in a string column returns that column as
    float NaN (decode_rows tells strings by the first non-null value); the cache, which knows the column holds
    strings, returns None there, as the embedded store does.
    """
    assert got.found.dtype == bool and got.found.tolist() == want.found.tolist()
    assert list(got.columns) == list(want.columns)
    for name, values in want.columns.items():
        if got.columns[name].dtype == object and values.dtype == np.float64 and np.isnan(values).all():
            assert all(v is None for v in got.columns[name].tolist()), name
            continue
        assert got.columns[name].dtype == values.dtype, name
        if values.dtype == object:
            assert got.columns[name].tolist() == values.tolist(), name
        else:
            np.testing.assert_array_equal(got.columns[name], values, err_msg=name)


def calls(store: RedisOnlineStore, command: str) -> int:
    return int(store.client.info("commandstats").get(f"cmdstat_{command}", {}).get("calls", 0))


def cache_size(store: RedisOnlineStore, view: str = "items") -> int:
    cache = store._caches[view]
    return 0 if cache is None else len(cache)


def test_cached_view_answers_exactly_as_an_uncached_store(redis_server):
    cached, plain = stores(redis_server, "rc1")
    plain.write("items", items_table(), key="item_id")
    table = items_table()
    ids_in_order = [
        [0, 7, 14, 9999],  # first fill: every category here is null (the cached column starts as floats)
        [3, 5, 9999, 3, 0, 5],  # repeated and unknown ids; some held, some not
        [1, 2, 3, 4, 150, 4, 777],  # strings arrive in a column held as floats so far
        [3, 5, 9999, 3, 0, 5],  # all held now
        [199, 198, 9999, 0],
    ]
    for ids in ids_in_order:
        ids = np.array(ids)
        for features in (None, ["category"], ["clicks", "price"]):
            assert_same(cached.lookup("items", ids, features), plain.lookup("items", ids, features))
    hit = cached.lookup("items", np.array([5, 6, 9999, 6]))
    assert hit.found.tolist() == [True, True, False, True] and hit.missing == 1
    assert np.isnan(hit.columns["price"][[0, 2]]).all()  # 5: a null price; 9999: unknown
    assert hit.columns["price"][1] == table["price"][6].as_py() and hit.columns["clicks"].tolist()[:2] == [15.0, 18.0]
    assert hit.columns["category"].tolist() == ["c1", "c2", None, "c2"]
    # An unknown feature is named, whether the rows come from the cache or from Redis (a replica's first read).
    with pytest.raises(KeyError, match="no feature 'age'"):
        cached.lookup("items", np.array([3, 5]), ["price", "age"])
    cold, _ = stores(redis_server, "rc1")
    with pytest.raises(KeyError, match="no feature 'age'"):
        cold.lookup("items", np.array([3, 5]), ["age"])
    with pytest.raises(KeyError, match="no feature 'age'"):
        plain.lookup("items", np.array([3, 5]), ["age"])


def test_only_unknown_ids_answer_found_false_from_the_cache(redis_server):
    cached, plain = stores(redis_server, "rc1b")
    plain.write("items", items_table(20), key="item_id")
    cached.lookup("items", np.arange(20))  # every row held
    for lookup in (cached.lookup("items", np.array([500, 501, 500])), plain.lookup("items", np.array([500, 501, 500]))):
        assert lookup.found.tolist() == [False, False, False] and lookup.missing == 3
        assert np.isnan(lookup.columns["price"]).all() and np.isnan(lookup.columns["clicks"]).all()
        # A string column of only unknown ids: None from the cache, NaN from an uncached MGET that found no row.
        assert all(v is None or v != v for v in lookup.columns["category"].tolist())


def test_cache_hits_send_no_mget_and_keys_set_behind_the_store_are_not_noticed(redis_server):
    cached, plain = stores(redis_server, "rc2")
    plain.write("items", items_table(50), key="item_id")
    ids = np.array([1, 2, 3, 2, 40])
    first = cached.lookup("items", ids)
    mgets, gets = calls(cached, "mget"), calls(cached, "get")
    again = cached.lookup("items", ids)
    assert calls(cached, "mget") == mgets  # no row fetched
    assert calls(cached, "get") == gets + 1  # only the version token (the columns are known)
    assert_same(again, first)
    cached.lookup("items", np.array([1, 41, 41, 42]))  # two ids not held: one MGET of those two
    assert calls(cached, "mget") == mgets + 1 and cache_size(cached) == 6
    # The documented contract (cache_view): rows must be written through write(); a key set or deleted by other
    # means, with the token unchanged, is not noticed by a replica that holds the row.
    plain.client.set("rc2:items:2", msgpack.packb([-1.0, -1, "changed"]))
    plain.client.delete("rc2:items:3")
    assert plain.lookup("items", np.array([2, 3])).found.tolist() == [True, False]
    assert plain.lookup("items", np.array([2])).columns["category"].tolist() == ["changed"]
    stale = cached.lookup("items", np.array([2, 3]))
    assert stale.found.tolist() == [True, True]
    assert_same(stale, first_of(first, [1, 2]))


def first_of(lookup: Lookup, positions: list[int]) -> Lookup:
    return Lookup({name: values[positions] for name, values in lookup.columns.items()}, lookup.found[positions])


def test_online_features_read_pipelines_a_cached_view_with_other_reads(redis_server):
    from rayml.features.definitions import Entity, FeatureRepo, FeatureView, RedisStoreConfig
    from rayml.features.service import OnlineFeatures

    repo = FeatureRepo(
        entities={"user": Entity(key="user_id"), "item": Entity(key="item_id")},
        views={"users": FeatureView(entity="user", source="unused", features=["spend"]),
               "items": FeatureView(entity="item", source="unused", features=["price", "clicks", "category"])},
        online_store=RedisStoreConfig(type="redis", port=redis_server.port, db=DB + 1),
    )
    features = OnlineFeatures(repo, "unused")
    store = features.store
    assert isinstance(store, RedisOnlineStore) and features.cache_view("items")
    store.client.flushdb()
    store.write("users", pa.table({"user_id": np.arange(5), "spend": np.arange(5) * 2.0}), key="user_id")
    store.write("items", items_table(30), key="item_id")
    plain = RedisOnlineStore(port=redis_server.port, db=DB + 1)
    asked = {"users": np.array([1, 9]), "items": np.array([4, 5, 99, 4])}
    for n in range(3):  # first read fills the cache, then hits: the users' MGET follows a lone token GET
        if n == 2:
            store.write("items", items_table(30, shift=100.0), key="item_id")  # a materialization between reads
        mgets = calls(store, "mget")
        read = features.read(asked)
        assert calls(store, "mget") - mgets == [2, 1, 2][n]  # (after the write: users, then the items' re-read)
        for view, ids in asked.items():
            assert_same(read.rows[view], plain.lookup(view, ids))
    assert read.rows["items"].columns["clicks"].tolist()[:2] == [112.0, 115.0]


def test_a_write_replaces_the_token_and_the_next_lookup_reads_new_values_and_columns(redis_server):
    cached, plain = stores(redis_server, "rc3")
    job = RedisOnlineStore(port=redis_server.port, db=DB, prefix="rc3")  # the materialization job elsewhere
    job.write("items", items_table(40), key="item_id")
    ids = np.array([1, 2, 39, 1, 500])
    old = cached.lookup("items", ids)
    token = cached.client.get(f"rc3:items:{VERSION}")
    assert token is not None and list(old.columns) == ["price", "clicks", "category"]
    job.write("items", items_table(40, shift=10.0, score=True), key="item_id")
    assert cached.client.get(f"rc3:items:{VERSION}") != token
    new = cached.lookup("items", ids)
    assert list(new.columns) == ["price", "clicks", "category", "score"]
    assert_same(new, plain.lookup("items", ids))
    assert new.columns["clicks"].tolist()[:3] == [13.0, 16.0, 127.0] and new.columns["score"][2] == -19.5
    assert_same(cached.lookup("items", ids, ["score"]), plain.lookup("items", ids, ["score"]))
    mgets = calls(cached, "mget")
    assert_same(cached.lookup("items", ids), new)  # held again, at the new token
    assert calls(cached, "mget") == mgets
    # The replica's own write replaces the token too.
    cached.write("items", items_table(40, shift=20.0), key="item_id")
    assert cached.lookup("items", ids).columns["clicks"].tolist()[:3] == [23.0, 26.0, 137.0]


def _empty_redis(how: str, cached: RedisOnlineStore, redis_server) -> None:
    if how == "flush":
        cached.client.flushdb()
    else:
        redis_server.stop()
        redis_server.start()  # no persistence: it comes back empty


@pytest.mark.parametrize("how", ["flush", "restart"])
def test_after_redis_is_emptied_cached_rows_are_not_served_and_ids_count_as_missing(redis_server, how):
    cached, plain = stores(redis_server, f"rc4{how}")
    cached.write("items", items_table(30), key="item_id")
    ids = np.array([0, 3, 17, 3])
    assert cached.lookup("items", ids).missing == 0 and plain.lookup("items", ids).missing == 0
    _empty_redis(how, cached, redis_server)
    assert cached.client.get(f"rc4{how}:items:{VERSION}") is None
    assert plain.lookup("items", ids).missing == 4  # an uncached store: every id missing
    gone = cached.lookup("items", ids)
    assert gone.found.tolist() == [False] * 4 and gone.missing == 4
    assert np.isnan(gone.columns["price"]).all()


@pytest.mark.parametrize("how", ["flush", "restart"])
def test_after_redis_is_emptied_and_rewritten_only_the_rewritten_rows_are_found(redis_server, how):
    cached, plain = stores(redis_server, f"rc4b{how}")
    cached.write("items", items_table(30), key="item_id")
    ids = np.array([0, 3, 17, 3, 29])
    assert cached.lookup("items", ids).missing == 0
    _empty_redis(how, cached, redis_server)
    plain.write("items", items_table(10, shift=50.0), key="item_id")  # the job re-materializes 10 items only
    after = cached.lookup("items", ids)
    assert after.found.tolist() == [True, True, False, True, False] and after.missing == 2
    assert after.columns["clicks"].tolist()[:2] == [50.0, 59.0] and np.isnan(after.columns["clicks"][[2, 4]]).all()
    assert_same(after, plain.lookup("items", ids))


def test_cache_max_rows_bounds_the_cache_and_lookups_past_it_read_through(redis_server):
    cached, plain = stores(redis_server, "rc5", cache_max_rows=10)
    plain.write("items", items_table(100), key="item_id")
    big = np.arange(12)
    assert_same(cached.lookup("items", big), plain.lookup("items", big))  # more than the bound: nothing held
    assert cache_size(cached) == 0
    assert_same(cached.lookup("items", np.arange(8)), plain.lookup("items", np.arange(8)))
    assert cache_size(cached) == 8
    mgets = calls(cached, "mget")
    past = np.array([5, 6, 20, 21, 22, 7])  # 8 held + 3 new > 10: read through, as without a cache
    through = cached.lookup("items", past)
    assert calls(cached, "mget") == mgets + 1 and cache_size(cached) == 8
    assert_same(through, plain.lookup("items", past))
    mgets = calls(cached, "mget")
    held = cached.lookup("items", np.array([1, 2]))
    assert calls(cached, "mget") == mgets  # the held rows still hit
    assert_same(held, plain.lookup("items", np.array([1, 2])))
    rng = np.random.default_rng(5)
    for _ in range(40):
        ids = rng.integers(0, 110, rng.integers(1, 14))
        assert_same(cached.lookup("items", ids), plain.lookup("items", ids))
        assert cache_size(cached) <= 10


def test_with_ttl_the_view_is_not_cached_and_lookups_go_to_redis(redis_server):
    store = RedisOnlineStore(port=redis_server.port, db=DB, prefix="rc6", ttl_s=60)
    assert store.cache_view("items") is False
    store.write("items", items_table(20), key="item_id")
    ids = np.array([1, 2, 2, 99])
    first = store.lookup("items", ids)
    mgets = calls(store, "mget")
    assert_same(store.lookup("items", ids), first)
    assert calls(store, "mget") == mgets + 1  # every lookup is one MGET
    store.client.delete("rc6:items:2")  # noticed at once: nothing held in the process
    assert store.lookup("items", ids).found.tolist() == [True, False, False, False]
    assert "items" not in store._caches


def test_redis_down_raises_unavailable_even_for_held_rows_and_recovers_after_a_rewrite(redis_server):
    cached, _ = stores(redis_server, "rc7")
    cached.write("items", items_table(20), key="item_id")
    ids = np.array([1, 2, 3])
    assert cached.lookup("items", ids).missing == 0  # every row held
    redis_server.stop()
    try:
        with pytest.raises(OnlineStoreUnavailable, match=f"redis://127.0.0.1:{redis_server.port}/{DB}"):
            cached.lookup("items", ids)  # the token is read on every lookup
    finally:
        redis_server.start()
    cached.write("items", items_table(20, shift=7.0), key="item_id")  # the restarted server is empty
    back = cached.lookup("items", np.array([1, 2, 3, 15]))
    assert back.missing == 0 and back.columns["clicks"].tolist() == [10.0, 13.0, 16.0, 52.0]


def test_a_dead_redis_costs_one_connection_attempt_not_redis_py_s_ten_retries():
    """redis-py 8 retries 10 times with backoff by default (4-5 s a call); the store's callers have a breaker."""
    import socket
    import threading

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    server.settimeout(0.1)
    accepted: list[int] = []
    stop = threading.Event()

    def refuse() -> None:  # accept and hang up at once: every attempt is a ConnectionError
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            accepted.append(1)
            conn.close()

    thread = threading.Thread(target=refuse, daemon=True)
    thread.start()
    try:
        store = RedisOnlineStore(port=server.getsockname()[1], timeout_s=0.5)
        store.cache_view("items")
        with pytest.raises(OnlineStoreUnavailable):
            store.lookup("items", np.array([1, 2]))
    finally:
        stop.set()
        thread.join()
        server.close()
    assert len(accepted) == 1
