"""Batch scoring on real Ray Data: exact row counts, resume by shard, bad-row policies, pre-flight errors."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rayml.batch.config import ScoreJobConfig
from rayml.batch.scoring import BadRowError, score_entities
from rayml.models.config import TrainLoop
from rayml.models.entity_scorer import PROPENSITY, publish_entity_scorer, train_user_propensity
from rayml.registry import RegistryError
from tests.conftest import MEASURED

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def scorer(trained, tiny_world):
    registry, _ = trained
    model, encoder, report, sample = train_user_propensity(tiny_world, TrainLoop(epochs=1, batch_size=4096))
    version = publish_entity_scorer(registry, PROPENSITY, model, encoder, sample,
                                    {"metrics": {"holdout_auc": report.holdout_auc}})
    registry.set_alias(PROPENSITY, "production", version.version)
    return registry, encoder


@pytest.fixture(scope="module")
def sharded_users(tiny_world, tmp_path_factory):
    """The tiny world's users split into 6 shards."""
    users = pq.read_table(tiny_world.path / "users")
    users = users.drop_columns([c for c in users.column_names if c == "valid_from"])
    root = tmp_path_factory.mktemp("entities") / "users"
    root.mkdir()
    for i, lo in enumerate(range(0, users.num_rows, 350)):
        pq.write_table(users.slice(lo, 350), root / f"chunk-{i}.parquet")
    return root, users.num_rows


def job(scorer, input_path, output, **overrides) -> ScoreJobConfig:
    registry, _ = scorer
    return ScoreJobConfig(input=str(input_path), registry=str(registry.root), output=str(output), **overrides)


def test_scores_every_entity_exactly_once_and_resumes_by_shard(ray_session, scorer, sharded_users, tmp_path):
    source, rows = sharded_users
    summary = score_entities(job(scorer, source, tmp_path / "scores"))
    assert summary.rows_in == summary.rows_out == rows and summary.rejected == 0
    assert summary.shards == 6 and summary.shards_skipped == 0 and "ShardScorer" in summary.operator_stats
    out = pq.read_table(tmp_path / "scores").to_pandas()
    assert len(out) == rows and out.entity_id.is_unique and out.model_version.unique().tolist() == ["user_propensity:v1"]
    assert out.score.between(0, 1).all() and out.score.std() > 0
    MEASURED["batch scoring, tiny world"] = f"{rows} users in {summary.seconds} s ({summary.shards} shards)"
    # A finished shard is never redone: delete two outputs, run again, only those two are scored.
    first = sorted((tmp_path / "scores").glob("part-*.parquet"))
    for path in first[:2]:
        path.unlink()
    again = score_entities(job(scorer, source, tmp_path / "scores"))
    assert again.shards_skipped == 4 and len(again.per_shard) == 2 and again.rows_out == rows
    assert pq.read_table(tmp_path / "scores").to_pandas().entity_id.is_unique


def bad_input(sharded_users, tmp_path):
    source, _ = sharded_users
    table = pq.read_table(next(source.glob("chunk-0.parquet")))
    f0 = table["f0"].to_numpy(zero_copy_only=False).copy()
    f0[[3, 10]] = [np.inf, -np.inf]
    age = table["age"].to_numpy(zero_copy_only=False).copy()
    age[5] = np.nan
    table = table.set_column(table.schema.get_field_index("f0"), "f0", pa.array(f0, pa.float32()))
    table = table.set_column(table.schema.get_field_index("age"), "age", pa.array(age, pa.float32()))
    folder = tmp_path / "bad"
    folder.mkdir()
    pq.write_table(table, folder / "chunk-0.parquet")
    ids = table["user_id"].to_numpy()
    return folder, table.num_rows, ids


def test_bad_rows_are_skipped_into_rejects_with_reasons(ray_session, scorer, sharded_users, tmp_path):
    folder, rows, ids = bad_input(sharded_users, tmp_path)
    summary = score_entities(job(scorer, folder, tmp_path / "out"))
    assert (summary.rows_in, summary.rows_out, summary.rejected) == (rows, rows - 2, 2)
    rejects = pq.read_table(tmp_path / "out" / "_rejects").to_pandas().sort_values("entity_id")
    assert rejects.to_dict("records") == sorted([
        {"entity_id": ids[3], "column": "f0", "reason": "infinite value"},
        {"entity_id": ids[10], "column": "f0", "reason": "infinite value"},
    ], key=lambda r: r["entity_id"])
    scored = pq.read_table(tmp_path / "out", columns=["entity_id", "score"]).to_pandas()
    assert set(scored.entity_id).isdisjoint(rejects.entity_id) and np.isfinite(scored.score).all()
    assert ids[5] in set(scored.entity_id)  # `missing: encode`: a NaN is the missing flag the model was trained with


def test_missing_values_can_be_rejected_instead(ray_session, scorer, sharded_users, tmp_path):
    folder, rows, ids = bad_input(sharded_users, tmp_path)
    _, encoder = scorer
    frame = pq.read_table(folder).to_pandas()
    expected = int((frame[encoder.columns].isna().any(axis=1) | frame.index.isin([3, 10])).sum())  # NaNs or infinities
    summary = score_entities(job(scorer, folder, tmp_path / "out", missing="reject"))
    assert (summary.rows_out, summary.rejected) == (rows - expected, expected)
    rejects = pq.read_table(tmp_path / "out" / "_rejects").to_pandas().set_index("entity_id")
    assert rejects.loc[ids[5], "reason"] == "missing value"


def test_bad_rows_fail_names_the_entity_and_column(ray_session, scorer, sharded_users, tmp_path):
    folder, _, ids = bad_input(sharded_users, tmp_path)
    with pytest.raises(Exception, match=rf"entity {ids[3]}: column 'f0': infinite value \(bad_rows: fail\)") as info:
        score_entities(job(scorer, folder, tmp_path / "out", bad_rows="fail"))
    assert isinstance(info.value, BadRowError) or "BadRowError" in str(info.value)
    assert not list((tmp_path / "out").glob("part-*.parquet"))  # the failed shard committed nothing


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        ({"version": "41"}, RegistryError, "user_propensity"),
        ({"model": "ranker"}, RegistryError, "not an entity scorer"),
        ({"input": "/nonexistent/users"}, FileNotFoundError, "/nonexistent/users does not exist"),
        ({"id_column": "uid"}, ValueError, "lacks column 'uid'"),
    ],
)
def test_preflight_fails_before_any_work(scorer, sharded_users, tmp_path, change, error, message):
    source, _ = sharded_users
    config = job(scorer, source, tmp_path / "out").model_copy(update=change)
    with pytest.raises(error, match=message):
        score_entities(config)
    assert not (tmp_path / "out").exists()


def test_schema_mismatch_names_the_column_and_type(scorer, sharded_users, tmp_path):
    source, _ = sharded_users
    table = pq.read_table(next(source.glob("chunk-0.parquet")))
    table = table.set_column(table.schema.get_field_index("region"), "region", pa.array(np.arange(table.num_rows)))
    folder = tmp_path / "typed"
    folder.mkdir()
    pq.write_table(table, folder / "x.parquet")
    with pytest.raises(ValueError, match="column 'region' is int64, user_propensity:v1 needs a string"):
        score_entities(job(scorer, folder, tmp_path / "out"))


def test_output_of_another_model_is_not_mixed(ray_session, scorer, sharded_users, tmp_path):
    source, _ = sharded_users
    score_entities(job(scorer, source, tmp_path / "out"))
    registry, _ = scorer
    registry.set_alias(PROPENSITY, "other", 1)
    with pytest.raises(ValueError, match="holds scores of user_propensity:v1"):
        score_entities(job(scorer, source.parent, tmp_path / "out"))


def test_input_and_output_as_filesystem_uris(ray_session, scorer, sharded_users, tmp_path):
    source, rows = sharded_users
    summary = score_entities(job(scorer, f"file://{source}", f"file://{tmp_path}/scores"))
    assert summary.rows_out == rows and summary.output == f"file://{tmp_path}/scores"
    assert pq.read_table(tmp_path / "scores").num_rows == rows
