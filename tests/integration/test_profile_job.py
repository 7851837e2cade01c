"""The profiling job (rayml.monitoring.profile_job, run by batch_jobs/profile_features.py) on the shared Ray:
a fixed pool of folding actors gives the in-process profile."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rayml.monitoring import profile_job as job
from rayml.monitoring.reference import load_reference, save_reference
from rayml.monitoring.sketches import Profile, kll_rank_error
from rayml.registry import ModelRegistry

pytestmark = pytest.mark.integration

ROWS, FILES = 50_000, 5


@pytest.fixture(scope="module")
def parquet_dir(tmp_path_factory):
    rng = np.random.default_rng(7)
    out = tmp_path_factory.mktemp("profile-src")
    tables = []
    per = ROWS // FILES
    for i in range(FILES):
        x = rng.normal(i, 1.0, per).astype(np.float32)
        x[rng.random(per) < 0.02] = np.nan
        table = pa.table({
            "x": x, "z": rng.integers(0, 1000, per),
            "city": rng.choice(["paris", "rome", "oslo", f"new{i}"], per).astype(object),
            "code": rng.integers(0, 30, per).astype(np.int32),
        })
        pq.write_table(table, out / f"part-{i}.parquet")
        tables.append(table)
    return out, pa.concat_tables(tables)


def test_job_profile_equals_in_process_profile(ray_session, parquet_dir, tmp_path):
    folder, table = parquet_dir
    run = job.profile_parquet(str(folder), categorical=["code"], num_cpus=0.5, batch_size=8_000)
    profile = run.profile
    local = Profile.from_frame(table, {"x": "numeric", "z": "numeric", "city": "categorical", "code": "categorical"})
    assert run.fragments == FILES and run.batches == FILES * 2  # 10k-row files in batches of 8k
    assert 1 <= run.partials <= FILES  # one partial per actor of the pool (4 at 0.5 CPU on 2), not one per batch
    assert profile.rows == local.rows == ROWS
    assert profile.schema == local.schema
    for name in ("x", "z"):
        a, b = profile.numeric(name), local.numeric(name)
        assert (a.rows, a.count, a.missing, a.min, a.max) == (b.rows, b.count, b.missing, b.min, b.max)
        assert a.mean == pytest.approx(b.mean, rel=1e-9)
        assert a.variance() == pytest.approx(b.variance(), rel=1e-9)
    x = table["x"].to_numpy(zero_copy_only=False).astype(np.float64)
    x = np.sort(x[np.isfinite(x)])
    qs = np.array([0.01, 0.1, 0.5, 0.9, 0.99])
    ranks = np.searchsorted(x, profile.quantiles("x", qs)) / len(x)
    assert np.max(np.abs(ranks - qs)) <= kll_rank_error(profile.k) + 1 / len(x)
    for name in ("city", "code"):
        assert profile.top_categories(name, 40) == local.top_categories(name, 40)  # exact below capacity
        assert profile.missing_rate(name) == local.missing_rate(name)
        assert profile.distinct(name) == pytest.approx(local.distinct(name), rel=0.01)
    assert profile.distinct("city") == pytest.approx(3 + FILES, abs=0.1)

    out = tmp_path / "out" / "train.profile"
    job.write_profile(profile, str(out))
    assert Profile.deserialize(out.read_bytes()).summary() == profile.summary()

    registry = ModelRegistry(tmp_path / "registry")
    artifact = tmp_path / "m.onnx"
    artifact.write_bytes(b"m")
    registry.register("ranker", {"m.onnx": artifact}, {})
    save_reference(registry, "ranker", 1, "training", profile, {"source": str(folder)})
    assert load_reference(registry, "ranker", 1).summary() == profile.summary()


def test_pool_size_is_fixed_and_rows_are_folded_exactly(ray_session, parquet_dir, tmp_path):
    """Two actors fold five files into at most two partials; a lone file of row groups is split among them."""
    folder, table = parquet_dir
    schema = {"x": "numeric", "z": "numeric", "city": "categorical", "code": "categorical"}
    local = Profile.from_frame(table, schema)
    run = job.profile_parquet(str(folder), categorical=["code"], num_cpus=0.5, concurrency=2)
    assert (run.fragments, run.batches) == (FILES, FILES)
    assert 1 <= run.partials <= 2  # the pool's size, whatever the number of files (an actor slow to start gets none)
    assert run.profile.rows == ROWS
    assert run.profile.numeric("z").mean == pytest.approx(local.numeric("z").mean, rel=1e-12)
    assert run.profile.top_categories("city", 40) == local.top_categories("city", 40)

    single = tmp_path / "single"
    single.mkdir()
    pq.write_table(table, single / "all.parquet", row_group_size=ROWS // 4)
    run = job.profile_parquet(str(single), categorical=["code"], num_cpus=0.5, concurrency=2)
    assert run.fragments == 4 and 1 <= run.partials <= 2
    assert run.profile.rows == ROWS
    assert run.profile.numeric("x").missing == local.numeric("x").missing
