"""Skew check on a real served-feature log: zero on a consistent pipeline, and caught when events arrive late.

The recommender core runs in-process (no Serve needed) with the embedded store, its own logs and the CLI.
"""

from __future__ import annotations

import json
import shutil
import time

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from rayml.cli import app
from rayml.features.realtime import Events
from rayml.serving.config import load_serving_repo
from rayml.serving.recommender import RecommenderCore

pytestmark = pytest.mark.integration


def events(user, item, ts, clicked) -> Events:
    return Events(np.asarray(user, np.int64), np.asarray(item, np.int64), np.asarray(ts, np.float64),
                  np.asarray(clicked, bool))


@pytest.fixture()
def core(recommender_args, tmp_path):
    args = recommender_args.model_copy(update={
        "event_log": str(tmp_path / "events"),
        "feature_log": recommender_args.feature_log.model_copy(update={"path": str(tmp_path / "log"), "flush_rows": 10**6}),
    })
    core = RecommenderCore(args, load_serving_repo(args))
    yield core
    core.close()


def run_skew(core, tmp_path, *extra: str, with_events: bool = True):
    out = tmp_path / "skew.json"
    events_args = ["--events", core.args.event_log] if with_events else []
    result = CliRunner().invoke(app, ["features", "skew", "--repo", core.args.features, "--log", core.args.feature_log.path,
                                      *events_args, "--out", str(out), "--prometheus", str(tmp_path / "skew.prom"), *extra])
    return result, json.loads(out.read_text()) if out.is_file() else None


def test_consistent_serving_has_zero_skew_and_late_events_are_caught(core, tmp_path):
    now = time.time()
    core.ingest(events([3, 3, 4], [10, 11, 10], [now - 30, now - 20, now - 10], [True, False, True]))
    for user in range(3, 13):
        core.recommend(user, 5)
    core.close()
    result, report = run_skew(core, tmp_path, "--fail-above", "0")
    assert result.exit_code == 0, result.output
    assert report["rows"] == 10 * 50 and report["requests"] == 10 and report["skipped"] == []
    checked = {f["feature"] for f in report["features"]}
    assert {"user_profile.age", "user_profile.region", "item_catalog.price", "rt.user.clicks_5m",
            "rt.item.impressions_1h"} <= checked
    assert report["max_rate"] == 0
    assert 'rayml_feature_skew_mismatch_rate{feature="rt.user.clicks_5m"} 0.0' in (tmp_path / "skew.prom").read_text()

    # An event stamped before those requests but ingested after them: serving could not have seen it.
    core.ingest(events([5], [999_999], [now - 5], [True]))
    result, report = run_skew(core, tmp_path, "--fail-above", "0")
    assert result.exit_code == 1
    rates = {f["feature"]: f for f in report["features"]}
    assert rates["rt.user.clicks_5m"]["mismatches"] == 50  # user 5's one request, all 50 candidate rows
    assert rates["rt.user.clicks_5m"]["served_example"] == 0 and rates["rt.user.clicks_5m"]["offline_example"] == 1
    assert rates["user_profile.age"]["mismatches"] == 0
    assert "rt.user.clicks_5m" in result.output


def test_stale_online_snapshot_shows_up_as_skew(recommender_args, tmp_path):
    """Serving from an older snapshot than the offline store holds: every changed value is counted."""
    state = tmp_path / "online"
    shutil.copytree(recommender_args.feature_state, state)
    profile = pq.read_table(state / "user_profile.parquet")
    aged = profile.set_column(profile.schema.get_field_index("age"), "age", pc.add(profile["age"], 1.0))
    pq.write_table(aged, state / "user_profile.parquet")
    args = recommender_args.model_copy(update={
        "feature_state": str(state), "event_log": str(tmp_path / "events"),
        "feature_log": recommender_args.feature_log.model_copy(update={"path": str(tmp_path / "log")}),
    })
    core = RecommenderCore(args, load_serving_repo(args))
    for user in range(4):
        core.recommend(user, 3)
    core.close()
    result, report = run_skew(core, tmp_path, with_events=False)
    assert result.exit_code == 0, result.output
    rates = {f["feature"]: f for f in report["features"]}
    non_missing = sum(r is not None for r in pq.read_table(args.feature_log.path)["user_profile.age"].to_pylist())
    assert rates["user_profile.age"]["mismatches"] == non_missing > 0
    assert rates["user_profile.f0"]["mismatches"] == 0
    assert report["skipped"] == ["rt.user.* (no event log given)", "rt.item.* (no event log given)"]


def test_unknown_user_features_are_defaults_with_a_missing_count(recommender_args, tmp_path):
    state = tmp_path / "online"
    shutil.copytree(recommender_args.feature_state, state)
    profile = pq.read_table(state / "user_profile.parquet")
    pq.write_table(profile.filter(pc.not_equal(profile["user_id"], 7)), state / "user_profile.parquet")
    args = recommender_args.model_copy(update={"feature_state": str(state), "feature_log": None, "event_log": None})
    core = RecommenderCore(args, load_serving_repo(args))
    rec = core.recommend(7, 5, explain=True)
    assert rec.feature_missing == 1 and not rec.degraded and len(rec.items) == 5
    assert rec.features is not None and rec.features["user_profile"]["age"] == [None]
    assert core.recommend(8, 5).feature_missing == 0


def test_skew_cli_names_a_missing_log(recommender_args, tmp_path):
    result = CliRunner().invoke(app, ["features", "skew", "--repo", recommender_args.features, "--log",
                                      str(tmp_path / "nope")])
    assert result.exit_code == 2 and f"--log {tmp_path / 'nope'} does not exist" in result.output


def test_a_user_missing_from_batch_candidates_gets_realtime_two_tower_candidates(recommender_args, tmp_path):
    """The fallback retrieves what the batch job would have: same retriever, same features."""
    cands = pq.read_table(recommender_args.candidates)
    pq.write_table(cands.filter(pc.not_equal(cands["user_id"], 9)), tmp_path / "part-0.parquet")
    args = recommender_args.model_copy(update={"candidates": str(tmp_path), "feature_log": None, "event_log": None})
    core = RecommenderCore(args, load_serving_repo(args))
    rec = core.recommend(9, 5)
    assert rec.candidates == "realtime" and len(rec.items) == 5
    batch = RecommenderCore(recommender_args.model_copy(update={"feature_log": None, "event_log": None}),
                            load_serving_repo(args)).recommend(9, 5)
    assert batch.candidates == "batch" and rec.items == batch.items
    np.testing.assert_allclose(rec.scores, batch.scores, rtol=1e-6)


def test_post_filters_exclude_items_and_cap_categories(recommender_args):
    base = recommender_args.model_copy(update={"feature_log": None, "event_log": None})
    plain = RecommenderCore(base, load_serving_repo(base)).recommend(3, 10, explain=True)
    rules = {"exclude_items": plain.items[:2], "max_per_category": 1}
    args = base.model_copy(update={"filters": base.filters.model_validate(rules)})
    rec = RecommenderCore(args, load_serving_repo(args)).recommend(3, 10, explain=True)
    assert not set(rec.items) & set(plain.items[:2])
    categories = rec.features["item_catalog"]["category"]
    assert len(categories) == len(set(categories)) == len(rec.items) > 0
    assert rec.scores == sorted(rec.scores, reverse=True)
