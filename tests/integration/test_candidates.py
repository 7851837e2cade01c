"""The Ray Data candidate job: one row per user, K distinct valid items, sorted scores, atomic reuse."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from rayml.batch import generate_candidates
from rayml.registry import RegistryError

pytestmark = pytest.mark.integration


def test_one_row_per_user_with_k_distinct_items(candidates, tiny_world):
    config, summary = candidates
    table = pq.read_table(config.output)
    assert summary.rows == table.num_rows == tiny_world.n_users
    assert sorted(table["user_id"].to_pylist()) == list(range(tiny_world.n_users))
    items = table["items"].combine_chunks().flatten().to_numpy().reshape(-1, config.top_k)
    scores = table["scores"].combine_chunks().flatten().to_numpy().reshape(-1, config.top_k)
    assert all(len(np.unique(row)) == config.top_k for row in items)
    assert items.min() >= 0 and items.max() < tiny_world.n_items
    assert (np.diff(scores, axis=1) <= 0).all()
    assert set(table["model_version"].to_pylist()) == {"retriever:v1"}


def test_matches_exact_top_k_computed_directly(candidates, trained, tiny_world):
    """The job's top-K equals a plain numpy top-K over the same exported artifacts."""
    from rayml.features import FeatureEncoder
    from rayml.models import ort_session

    config, _ = candidates
    registry, _ = trained
    version = registry.get("retriever")
    users = tiny_world.user_features_table().slice(0, 64)
    x = FeatureEncoder.load(version.file("user_encoder.json")).transform(users)
    emb = ort_session(version.file("user_tower.onnx")).run(None, {"user_features": x})[0]
    expected = np.argsort(-(emb @ np.load(version.file("item_embeddings.npy")).T), axis=1, kind="stable")[:, : config.top_k]
    table = pq.read_table(config.output).to_pandas().set_index("user_id").loc[list(range(64))]
    got = np.stack(table["items"].to_numpy())
    overlap = [len(set(g) & set(e)) / config.top_k for g, e in zip(got, expected, strict=True)]
    assert np.mean(overlap) > 0.99  # only ties at the K boundary may differ


def test_second_run_reuses_output(candidates):
    config, first = candidates
    again = generate_candidates(config)
    assert again.reused and again.rows == first.rows and again.model_version == first.model_version


def test_unknown_alias_fails_before_any_work(candidates, tmp_path):
    config, _ = candidates
    bad = config.model_copy(update={"alias": "shadow", "output": str(tmp_path / "out")})
    with pytest.raises(RegistryError, match="no alias 'shadow'"):
        generate_candidates(bad)
    assert not (tmp_path / "out").exists()


def test_an_interrupted_job_resumes_from_its_committed_shards(ray_session, candidates, tiny_world, tmp_path):
    """Shards committed before a kill stay in the job's deterministic staging dir; the rerun only does the rest."""
    import shutil

    import pyarrow as pa

    from rayml.batch.candidates import _staging_dir

    config, _ = candidates
    users = pq.read_table(tiny_world.path / "users")
    users = users.drop_columns(["valid_from"])
    source = tmp_path / "users"
    source.mkdir()
    for i, lo in enumerate(range(0, users.num_rows, 500)):
        pq.write_table(users.slice(lo, 500), source / f"chunk-{i}.parquet")
    job = config.model_copy(update={"users": str(source), "output": str(tmp_path / "cands")})
    first = generate_candidates(job)
    assert (first.shards, first.shards_skipped, first.rows) == (4, 0, users.num_rows)
    # As if killed after two shards: their outputs sit in the staging dir, the published output is gone.
    staging = _staging_dir(tmp_path / "cands", first.model_version, job.top_k, source)
    staging.mkdir()
    for part in sorted((tmp_path / "cands").glob("part-*.parquet"))[:2]:
        shutil.copy(part, staging / part.name)
    shutil.rmtree(tmp_path / "cands")
    second = generate_candidates(job)
    assert (second.shards, second.shards_skipped, second.rows) == (4, 2, users.num_rows)
    ids = pq.read_table(tmp_path / "cands", columns=["user_id"])["user_id"].to_numpy()
    assert np.array_equal(np.sort(ids), users["user_id"].to_numpy()[np.argsort(users["user_id"].to_numpy())])
    assert not staging.exists()
    assert pa.types.is_fixed_size_list(pq.read_schema(next((tmp_path / "cands").glob("part-*.parquet"))).field("items").type)
