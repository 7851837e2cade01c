"""Candidates as an online-store view: the real materialization job into a real Redis, read by real Serve replicas
in one round trip with the user's features; a new run reaches running replicas; bad values and missing views are
named."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import requests
import yaml

from rayml.batch.candidate_store import load_candidate_store_job, materialize_candidates
from rayml.features.candidates import (
    CandidateEncodingError,
    CandidateRunWriter,
    CandidateStoreKeys,
    CandidateViewMissing,
    RedisCandidates,
)
from rayml.features.redis_store import RedisOnlineStore
from tests.conftest import REPO
from tests.integration.conftest import write_feature_repo

pytestmark = pytest.mark.integration
DB = 3  # apart from the other Redis tests' db 0


@pytest.fixture(scope="module")
def online(redis_server, tiny_world, feature_repo, candidates, tmp_path_factory):
    """A Redis feature repo (db 3) with the tiny world's features, and a job config for its candidates."""
    root = tmp_path_factory.mktemp("cstore")
    repo_path = write_feature_repo(root / "features.yaml", tiny_world.path,
                                   {"type": "redis", "port": redis_server.port, "db": DB, "timeout_s": 0.2})
    _, state_dir = feature_repo
    store = RedisOnlineStore(port=redis_server.port, db=DB)
    store.client.flushdb()
    store.write("user_profile", pq.read_table(state_dir / "user_profile.parquet"), key="user_id")
    store.write("item_catalog", pq.read_table(state_dir / "item_catalog.parquet"), key="item_id")
    config, _ = candidates
    job = root / "job.yaml"
    job.write_text(yaml.safe_dump({"candidates": config.output, "features": str(repo_path), "batch_rows": 700}))
    return {"repo": repo_path, "job": job, "store": store, "root": root}


def materialize(job, force: bool = False, **overrides):
    config, repo = load_candidate_store_job(job, overrides)
    return materialize_candidates(config, repo, force=force)


def reads(store: RedisOnlineStore) -> int:
    """Read events the server processed: one per client round trip (a pipeline arrives in one)."""
    return int(store.client.info("stats")["total_reads_processed"])


def test_materialized_view_holds_each_users_candidates_in_6_bytes_a_candidate(online, candidates, tiny_world):
    config, _ = candidates
    summary = materialize(online["job"])
    assert (summary.rows, summary.top_k, summary.reused, summary.dropped_runs) == (tiny_world.n_users, 50, False, [])
    assert summary.rows_per_s > 0 and summary.used_memory_bytes > summary.rows * 300
    store = online["store"]
    keys = CandidateStoreKeys(store, "candidates")
    assert keys.current_run() == summary.run
    table = pq.read_table(config.output).to_pandas().set_index("user_id")
    value = store.client.get(keys.user(summary.run, 7))
    assert len(value) == 300  # 50 × (int32 + float16)
    view = RedisCandidates(store)
    (items, scores), user = view.fetch(7, "user_profile")
    assert items.tolist() == table.loc[7, "items"].tolist()
    np.testing.assert_allclose(scores, table.loc[7, "scores"], rtol=1e-3, atol=1e-3)
    assert user.found.tolist() == [True] and set(user.columns) >= {"age", "region"}
    again = materialize(online["job"])
    assert again.reused and again.run == summary.run  # same candidate-job output: nothing written

    before = reads(store)
    view.fetch(8, "user_profile")
    assert reads(store) - before == 2  # the fetch (pointer, candidates, user row) in one round trip + this INFO
    assert view.fetch(10**9, "user_profile")[0] is None  # not in the view: the caller retrieves in real time


def test_missing_view_and_malformed_values_are_named(online, redis_server):
    empty = RedisOnlineStore(port=redis_server.port, db=DB + 1)
    empty.client.flushdb()
    with pytest.raises(CandidateViewMissing, match=r"no candidate view 'candidates' \(key 'rayml:candidates:__current__' "
                                                   r"is absent\); run batch_jobs/materialize_candidates.py"):
        RedisCandidates(empty)
    empty.client.set("rayml:candidates:__current__", "r1")
    with pytest.raises(CandidateViewMissing, match="no 'rayml:candidates:r1:__meta__'"):
        RedisCandidates(empty)
    empty.client.set("rayml:candidates:r1:__meta__", "{not json")
    with pytest.raises(CandidateEncodingError, match="'rayml:candidates:r1:__meta__': not the candidate job's metadata"):
        RedisCandidates(empty)

    store = online["store"]
    view = RedisCandidates(store)
    key = CandidateStoreKeys(store, "candidates").user(view.run.run, 12)
    good = store.client.get(key)
    store.client.set(key, good[:-2])
    try:
        with pytest.raises(CandidateEncodingError, match=f"candidates value at '{key}' is 298 bytes; .*top_k=50 takes 300"):
            view.fetch(12, "user_profile")
    finally:
        store.client.set(key, good)

    keys = CandidateStoreKeys(store, "candidates")
    served = keys.current_run()
    store.client.set(keys.current, "29990101T000000000000Z")  # a pointer the job did not write: no metadata
    try:
        (items, _), _ = view.fetch(12, "user_profile")
        assert len(items) == 50 and view.run.run == served  # refused; the served run keeps answering
        assert "no 'rayml:candidates:29990101T000000000000Z:__meta__'" in view.describe()["refused"]
    finally:
        store.client.set(keys.current, served)


def test_job_entry_point_names_a_missing_candidates_output(online, tmp_path):
    missing = tmp_path / "nope"
    result = subprocess.run([sys.executable, "batch_jobs/materialize_candidates.py", "--config", str(online["job"]),
                             "--candidates", str(missing)], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert f"{online['job']}: key 'candidates': {missing} does not exist" in result.stderr


def test_older_runs_are_dropped_after_publishing_unfinished_ones_too(online, redis_server):
    store = RedisOnlineStore(port=redis_server.port, db=DB + 2)
    store.client.flushdb()
    for run in ("20260101T000000000000Z", "20260102T000000000000Z"):
        writer = CandidateRunWriter(store, "c", run, top_k=2)
        writer.write(np.arange(5), np.ones((5, 2), int), np.zeros((5, 2)))
        if run.startswith("202601010"):
            writer.publish({})  # the first run was published; the second was killed before publishing
    newest = CandidateRunWriter(store, "c", "20260103T000000000000Z", top_k=2)
    newest.write(np.arange(5), np.ones((5, 2), int), np.zeros((5, 2)))
    newest.publish({})
    assert newest.drop_old_runs(keep=1) == ["20260101T000000000000Z", "20260102T000000000000Z"]
    assert sorted(k.decode() for k in store.client.keys("rayml:c:2026010[12]*")) == []
    assert CandidateStoreKeys(store, "c").runs() == ["20260103T000000000000Z"]
    with pytest.raises(CandidateEncodingError, match="this run holds top_k=2"):
        newest.write(np.arange(2), np.ones((2, 3), int), np.zeros((2, 3)))


def post(url: str, body) -> requests.Response:
    return requests.post(f"{url}/recommend", json=body, timeout=30)


def wait_for(call, predicate, timeout_s: float = 20):
    deadline = time.monotonic() + timeout_s
    while True:
        result = call()
        if predicate(result) or time.monotonic() > deadline:
            return result
        time.sleep(0.2)


def test_replicas_read_the_view_follow_a_new_run_and_503_while_redis_is_down(
    online, serve_url, recommender_args, candidates, redis_server, tiny_world, tmp_path
):
    from ray import serve

    from rayml.serving.app import build_recommender

    materialize(online["job"])
    args = recommender_args.model_copy(update={
        "features": str(online["repo"]), "candidates_store": "online", "candidates": None,
        "event_log": None, "feature_log": None,
    })
    serve.run(build_recommender(args), name="cstore", route_prefix="/cstore")
    base = f"{serve_url}/cstore"
    store = online["store"]
    try:
        for user in (7, 8, 30):  # the same answers as the in-memory Parquet candidates on the embedded store
            got, want = post(base, {"user_id": user, "k": 5}).json(), post(serve_url, {"user_id": user, "k": 5}).json()
            assert (got["items"], got["candidates"], got["feature_missing"]) == (want["items"], "batch", 0)

        served = CandidateStoreKeys(store, "candidates").current_run()
        store.client.delete(CandidateStoreKeys(store, "candidates").user(served, 11))
        missing = post(base, {"user_id": 11, "k": 5})
        assert missing.status_code == 200 and missing.json()["candidates"] == "realtime"  # as for a new user

        # A newer candidate run: user 7 gets 50 items it did not have before.
        config, _ = candidates
        table = pq.read_table(config.output)
        users = table["user_id"].to_numpy()
        items = table["items"].combine_chunks().flatten().to_numpy().reshape(len(users), -1).copy()
        row = int(np.flatnonzero(users == 7)[0])
        fresh = np.setdiff1d(np.arange(tiny_world.n_items), items[row])[:50]
        items[row] = fresh
        out = tmp_path / "newer"
        out.mkdir()
        pq.write_table(table.set_column(1, "items", pa.FixedSizeListArray.from_arrays(pa.array(items.ravel()), 50)),
                       out / "part-0.parquet")
        (out / "_manifest.json").write_text(json.dumps({"model_version": "retriever:v1", "run": "newer"}))
        newer = materialize(online["job"], candidates=str(out))
        assert newer.run != served and newer.dropped_runs == []  # keep_runs 2: the previous run stays
        answer = wait_for(lambda: post(base, {"user_id": 7, "k": 5}).json(), lambda a: set(a["items"]) <= set(fresh))
        assert set(answer["items"]) <= set(fresh)  # no restart, no redeploy
        third = materialize(online["job"], force=True)
        assert third.dropped_runs == [served] and not store.client.exists(CandidateStoreKeys(store, "candidates").user(served, 7))

        redis_server.stop()
        down = post(base, {"user_id": 7, "k": 5})
        assert down.status_code == 503 and down.headers["retry-after"] == "1"  # no candidates without the store
    finally:
        if redis_server.process is None or redis_server.process.poll() is not None:
            redis_server.start()
        serve.delete("cstore")
