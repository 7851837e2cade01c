"""Feature profiles on DataSketches: merges, serialization, queries against numpy, registry storage."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from rayml.monitoring.reference import (
    build_served_baseline,
    load_reference,
    references,
    save_training_profile,
    serving_windows,
)
from rayml.monitoring.sketches import (
    DEFAULT_K,
    Profile,
    ProfileError,
    frequent_items_epsilon,
    kll_rank_error,
    new_categories,
)
from rayml.registry import ArtifactCorruptError, ModelRegistry, RegistryError

pytestmark = pytest.mark.unit

EPS = kll_rank_error(DEFAULT_K)
SCHEMA = {"x": "numeric", "y": "numeric", "n": "numeric", "city": "categorical", "code": "categorical"}


def frame(rows: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.normal(3.0, 2.0, rows)
    x[rng.random(rows) < 0.05] = np.nan
    x[:3] = [np.inf, -np.inf, np.inf]
    y = rng.exponential(1.0, rows).astype(np.float32)
    city = rng.choice(["paris", "rome", "oslo", "lima"], rows, p=[0.5, 0.3, 0.15, 0.05]).astype(object)
    city[rng.random(rows) < 0.1] = None
    return pd.DataFrame({"x": x, "y": y, "n": rng.integers(0, 100, rows), "city": city,
                         "code": rng.integers(0, 20, rows)})


def rank_error(sample: np.ndarray, qs: list[float], estimates: np.ndarray) -> float:
    """Largest distance, in rank, between the asked quantile and the estimate's rank in the data."""
    ordered = np.sort(sample)
    lo = np.searchsorted(ordered, estimates, "left") / len(ordered)
    hi = np.searchsorted(ordered, estimates, "right") / len(ordered)
    q = np.asarray(qs)
    return float(np.max(np.maximum(0, np.maximum(lo - q, q - hi))))


def test_rank_error_bound_is_well_under_the_ks_critical_value():
    ks_1pct_5000 = 1.628 * np.sqrt(2 / 5000)
    assert EPS <= 0.003
    assert ks_1pct_5000 / 10 > EPS
    assert frequent_items_epsilon() < 0.004


def test_merge_of_halves_equals_profiling_the_whole():
    data = frame(60_000)
    whole = Profile.from_frame(data, SCHEMA)
    left = Profile.from_frame(data.iloc[:25_000], SCHEMA)
    right = Profile.from_frame(pa.Table.from_pandas(data.iloc[25_000:], preserve_index=False), SCHEMA)
    merged = left.merge(right)
    assert merged.rows == whole.rows == 60_000
    for name in ("x", "y", "n"):
        a, b = merged.numeric(name), whole.numeric(name)
        assert (a.rows, a.count, a.missing, a.nonfinite) == (b.rows, b.count, b.missing, b.nonfinite)
        assert a.mean == pytest.approx(b.mean, rel=1e-9, abs=1e-12)
        assert a.variance() == pytest.approx(b.variance(), rel=1e-9)
        assert (a.min, a.max) == (b.min, b.max)
    x = data["x"].to_numpy()
    finite = x[np.isfinite(x)]
    assert merged.mean("x") == pytest.approx(finite.mean(), rel=1e-9)
    assert merged.std("x", ddof=1) == pytest.approx(finite.std(ddof=1), rel=1e-9)
    qs = [0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99]
    assert rank_error(finite, qs, merged.quantiles("x", qs)) <= EPS
    assert rank_error(finite, qs, whole.quantiles("x", qs)) <= EPS
    for name in ("city", "code"):
        assert merged.categorical(name).total_weight == whole.categorical(name).total_weight
        assert merged.top_categories(name, 3) == whole.top_categories(name, 3)  # exact below capacity
        assert merged.distinct(name) == pytest.approx(whole.distinct(name), rel=0.02)


def test_missing_nan_and_non_finite_counting():
    profile = Profile.from_frame(pd.DataFrame({
        "v": [1.0, np.nan, np.inf, -np.inf, 2.0, None],
        "s": ["a", None, "b", "a", None, "c"],
    }))
    v = profile.numeric("v")
    assert (v.rows, v.missing, v.nonfinite, v.count) == (6, 2, 2, 2)
    assert profile.missing_rate("v") == pytest.approx(2 / 6)
    assert (v.min, v.max, profile.mean("v")) == (1.0, 2.0, 1.5)
    assert profile.missing_rate("s") == pytest.approx(2 / 6)
    assert profile.schema == {"v": "numeric", "s": "categorical"}
    nulls = Profile.from_frame(pa.table({"i": pa.array([1, None, 3], pa.int64())}))
    assert (nulls.numeric("i").missing, nulls.mean("i")) == (1, 2.0)
    absent = Profile({"v": "numeric", "gone": "categorical"}).update(pd.DataFrame({"v": [1.0, 2.0]}))
    assert absent.missing_rate("gone") == 1.0
    empty = Profile.from_frame(pd.DataFrame({"v": [np.nan, np.nan]}))
    assert np.isnan(empty.quantiles("v", [0.5])).all() and np.isnan(empty.mean("v"))


def test_serialization_round_trip():
    profile = Profile.from_frame(frame(20_000), SCHEMA)
    data = profile.serialize()
    back = Profile.deserialize(data)
    assert Profile.deserialize(back.serialize()).summary() == back.summary()
    assert back.schema == SCHEMA and back.rows == 20_000
    qs = [0.1, 0.5, 0.9]
    np.testing.assert_array_equal(back.quantiles("x", qs), profile.quantiles("x", qs))
    assert back.top_categories("city") == profile.top_categories("city")
    assert back.distinct("code") == profile.distinct("code")
    assert back.summary() == profile.summary()
    json.dumps(back.summary())
    with pytest.raises(ProfileError, match="not a serialized profile"):
        Profile.deserialize(b"garbage")
    assert Profile.merge_all([data, profile.serialize()]).rows == 40_000


def test_categorical_top_k_and_new_categories():
    rng = np.random.default_rng(1)
    reference = Profile.from_frame(pd.DataFrame({"c": rng.choice(["a", "b", "c"], 10_000, p=[0.6, 0.3, 0.1])}))
    top = reference.top_categories("c", 2)
    assert [name for name, _ in top] == ["a", "b"]
    assert top[0][1] == pytest.approx(0.6, abs=0.02)
    assert reference.distinct("c") == pytest.approx(3, abs=0.01)
    current = Profile.from_frame(pd.DataFrame({"c": rng.choice(["a", "b", "zz"], 5_000, p=[0.5, 0.3, 0.2])}))
    merged = Profile.deserialize(reference.serialize()).merge(current)
    assert "zz" in dict(merged.top_categories("c", 4))
    assert merged.distinct("c") == pytest.approx(4, abs=0.01)
    assert [name for name, _ in new_categories(reference, current, "c")] == ["zz"]
    assert reference.categorical("c").frequency("zz") == 0.0
    ints = Profile.from_frame(pd.DataFrame({"k": [3, 3, 4, None]}), {"k": "categorical"})
    assert ints.top_categories("k") == [("3", pytest.approx(2 / 3)), ("4", pytest.approx(1 / 3))]
    assert ints.missing_rate("k") == 0.25
    # more categories than the sketch holds: the heavy ones are still found
    many = np.concatenate([np.repeat(["hot"], 20_000), rng.integers(0, 50_000, 30_000).astype(str)])
    wide = Profile.from_frame(pd.DataFrame({"w": many}), lg_max_k=8)
    assert wide.top_categories("w", 1)[0][0] == "hot"
    assert wide.distinct("w") == pytest.approx(len(set(many)), rel=0.05)


def test_histogram_and_cdf_on_edges_match_numpy_within_epsilon():
    rng = np.random.default_rng(2)
    x = np.concatenate([rng.normal(0, 1, 80_000), rng.normal(4, 0.5, 20_000)])
    profile = Profile.from_frame(pd.DataFrame({"x": x}))
    edges = profile.quantile_edges("x", 10)
    assert len(edges) == 9
    expected = np.histogram(x, np.concatenate([[-np.inf], edges, [np.inf]]))[0] / len(x)
    got = profile.histogram("x", edges)
    assert got.sum() == pytest.approx(1.0)
    assert np.max(np.abs(got - expected)) <= kll_rank_error(DEFAULT_K, pmf=True)
    np.testing.assert_allclose(expected, 0.1, atol=2 * EPS)  # the reference's quantile bins: equal mass
    fixed = np.array([-2.0, -0.5, 0.0, 1.0, 3.5, 5.0])
    expected = np.histogram(x, np.concatenate([[-np.inf], fixed, [np.inf]]))[0] / len(x)
    assert np.max(np.abs(profile.histogram("x", fixed) - expected)) <= kll_rank_error(DEFAULT_K, pmf=True)
    cdf = profile.cdf("x", fixed)
    assert np.max(np.abs(cdf - np.array([(x <= p).mean() for p in fixed]))) <= EPS
    with pytest.raises(ProfileError, match="strictly increasing"):
        profile.histogram("x", [1.0, 0.0])


def test_kinds_must_agree_to_merge_and_errors_name_the_feature():
    a = Profile.from_frame(pd.DataFrame({"f": [1.0, 2.0]}))
    b = Profile.from_frame(pd.DataFrame({"f": ["x", "y"]}))
    with pytest.raises(ProfileError, match="'f'"):
        a.merge(b)
    with pytest.raises(ProfileError, match="no feature 'g'"):
        a.mean("g")
    with pytest.raises(ProfileError, match="not numeric"):
        b.mean("f")
    only_b = Profile().merge(b)
    assert only_b.schema == {"f": "categorical"} and only_b.rows == 2


# -- registry ------------------------------------------------------------------------------------------
@pytest.fixture
def registry(tmp_path):
    registry = ModelRegistry(tmp_path / "registry")
    artifact = tmp_path / "model.onnx"
    artifact.write_bytes(b"onnx")
    registry.register("ranker", {"model.onnx": artifact}, {"kind": "test"})
    registry.register("ranker", {"model.onnx": artifact}, {"kind": "test"})
    return registry


def test_registry_save_load_and_checksum(registry):
    profile = Profile.from_frame(frame(5_000), SCHEMA)
    entry = save_training_profile(registry, "ranker", 1, profile, {"source": "train.parquet"})
    root = registry.root
    pdir = Path(root) / "ranker" / "profiles" / "1"
    assert entry["file"] == "training.bin"
    assert entry["meta"]["source"] == "train.parquet" and entry["meta"]["rows"] == 5_000
    current = json.loads((pdir / "current.json").read_text())
    assert current["training"]["sha256"] == entry["sha256"]
    sidecar = json.loads((pdir / "training.json").read_text())
    assert sidecar["sha256"] == entry["sha256"] and sidecar["created_at"] and sidecar["version"] == 1
    assert registry.load_profile("ranker", 1, "training") == profile.serialize()
    assert load_reference(registry, "ranker", 1).summary() == profile.summary()
    assert registry.profiles("ranker", "v1") == current
    assert registry.profiles("ranker", 2) == {}
    assert sorted(p.name for p in (Path(root) / "ranker" / "versions" / "1").iterdir()) == ["metadata.json", "model.onnx"]  # immutable
    registry.get("ranker", 1)  # the version still verifies

    data = bytearray((pdir / "training.bin").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (pdir / "training.bin").write_bytes(bytes(data))
    with pytest.raises(ArtifactCorruptError, match=r"training\.bin fails its checksum"):
        registry.load_profile("ranker", 1, "training")
    (pdir / "training.bin").unlink()
    with pytest.raises(ArtifactCorruptError, match="missing"):
        registry.load_profile("ranker", 1, "training")
    with pytest.raises(RegistryError, match="no 'served' profile"):
        registry.load_profile("ranker", 1, "served")
    with pytest.raises(RegistryError, match="invalid profile kind"):
        registry.save_profile("ranker", 1, "other", b"x", {})
    with pytest.raises(RegistryError, match="version 9 does not exist"):
        registry.save_profile("ranker", 9, "training", b"x", {})


def test_registry_rebuild_moves_current(registry):
    first = Profile.from_frame(frame(2_000, seed=1), SCHEMA)
    second = Profile.from_frame(frame(3_000, seed=2), SCHEMA)
    save_training_profile(registry, "ranker", 2, first)
    entry = save_training_profile(registry, "ranker", 2, second)
    third = registry.save_profile("ranker", 2, "training", second.serialize(), {"note": "again"})
    assert (entry["file"], third["file"]) == ("training-2.bin", "training-3.bin")
    assert registry.profiles("ranker", 2)["training"]["file"] == "training-3.bin"
    assert load_reference(registry, "ranker", 2).rows == 3_000
    pdir = Path(registry.root) / "ranker" / "profiles" / "2"
    assert (pdir / "training.bin").read_bytes() == first.serialize()  # earlier builds are kept
    registry.save_profile("ranker", 2, "served", first.serialize(), {})
    assert set(references(registry, "ranker", 2)) == {"training", "served"}
    assert registry.profiles("ranker", 2)["training"]["file"] == "training-3.bin"


def test_served_baseline_from_the_feature_log_window(registry, tmp_path):
    import datetime as dt

    import pyarrow.parquet as pq

    log = tmp_path / "log" / "date=2026-01-01"
    log.mkdir(parents=True)
    base = dt.datetime(2026, 1, 1, 12)
    ts = [base + dt.timedelta(minutes=i) for i in range(100)]
    pq.write_table(pa.table({
        "request_id": [f"r{i}" for i in range(100)], "ts": pa.array(ts, pa.timestamp("us")),
        "user_id": np.arange(100), "user_profile.age": np.arange(100, dtype=np.float64),
        "item_catalog.category": ["a" if i % 2 else "b" for i in range(100)],
    }), log / "part-1.parquet")
    save_training_profile(registry, "ranker", 1, Profile.from_frame(
        pd.DataFrame({"age": [1.0, 2.0], "category": ["a", "b"]})))
    profile = build_served_baseline(registry, "ranker", 1, tmp_path / "log", base, base + dt.timedelta(minutes=50),
                                    strip_prefix=True)
    assert profile.rows == 50 and profile.schema == {"age": "numeric", "category": "categorical"}
    assert profile.numeric("age").max == 49.0
    stored = registry.profiles("ranker", 1)["served"]
    assert stored["meta"]["filtered_by"] == "window" and stored["meta"]["rows"] == 50
    assert registry.load_profile("ranker", 1, "served") == profile.serialize()
    registry.set_alias("ranker", "production", 1)
    windows = serving_windows(registry, "ranker", 1)
    assert len(windows) == 1 and windows[0][1] is None
    registry.set_alias("ranker", "production", 2)
    assert serving_windows(registry, "ranker", 1)[0][1] is not None
