"""The synthetic world: deterministic, well-formed, its click model calibrated, its drift switchable."""

from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from rayml.config import ConfigError, load_config
from rayml.world import World, WorldConfig, WorldNotFoundError, build_world

pytestmark = pytest.mark.unit
SCENARIO_DIR = Path(__file__).resolve().parents[2] / "configs" / "world" / "scenarios"
SMALL = WorldConfig(seed=5, n_users=600, n_items=80, n_categories=6, days=6, impressions_per_user=30, chunk_users=250)


def variant(**changes) -> WorldConfig:
    return WorldConfig.model_validate({**SMALL.model_dump(), **changes})


def build(tmp_path, name: str, config: WorldConfig = SMALL) -> World:
    build_world(config, tmp_path / name)
    return World(tmp_path / name)


def digests(root) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_byte_identical_files(tmp_path):
    a, b = build(tmp_path, "a"), build(tmp_path, "b")
    files_a = digests(a.path)
    assert len(files_a) > 20 and files_a == digests(b.path)
    other = build(tmp_path, "c", variant(seed=6))
    assert not pq.read_table(a.path / "items.parquet").to_pandas().equals(pq.read_table(other.path / "items.parquet").to_pandas())


def test_shapes_ids_and_missing_values(tmp_path):
    world = build(tmp_path, "w")
    users = world.user_features_table()
    items = world.item_features_table()
    assert users["user_id"].to_pylist() == list(range(600))
    assert items["item_id"].to_pylist() == list(range(80))
    assert {"age", "activity", "region", "device", "fav_category", "f0", "f7"} <= set(users.column_names)
    assert users["region"].null_count > 0 and users["fav_category"].null_count > 0
    assert np.isnan(users["f0"].to_numpy(zero_copy_only=False)).any()
    assert len(list((world.path / "users" / "valid_from=2026-01-01").glob("part-*.parquet"))) == 3  # 600 / 250
    events = world.events_dataset().to_table()
    assert events.num_rows == world.meta["n_events"] > 600 * 20
    dates = {p.name for p in (world.path / "events").iterdir()}
    assert dates == {f"date=2026-01-0{d}" for d in range(1, 7)}
    ts = events["ts"].to_numpy()
    assert ts.min() >= np.datetime64("2026-01-01") and ts.max() < np.datetime64("2026-01-07")


def test_clicks_follow_the_true_relevance(tmp_path):
    """Mean predicted click probability matches the observed CTR, and clicked items are more relevant."""
    world = build(tmp_path, "w", variant(click={"noise_std": 0.0}))
    events = world.events_dataset().to_table()
    users, items = events["user_id"].to_numpy(), events["item_id"].to_numpy()
    relevance = world.relevance(np.arange(600), np.arange(80))[users, items]
    clicked = events["clicked"].to_numpy(zero_copy_only=False)
    assert abs(relevance.mean() - clicked.mean()) < 0.01
    assert relevance[clicked].mean() > relevance[~clicked].mean() + 0.05


def drift_world(tmp_path, name: str, **drift) -> World:
    return build(tmp_path, name, variant(drift=drift))


def ctr_by_day(world: World) -> np.ndarray:
    events = world.events_dataset().to_table(columns=["ts", "clicked"])
    day = (events["ts"].to_numpy() - np.datetime64("2026-01-01")) // np.timedelta64(1, "D")
    clicked = events["clicked"].to_numpy(zero_copy_only=False)
    return np.array([clicked[day == d].mean() for d in range(6)])


def test_intercept_drift_moves_base_ctr_after_start(tmp_path):
    base = ctr_by_day(build(tmp_path, "base"))
    intercept = {"enabled": True, "start_day": 3, "delta": -1.5}
    drifted = ctr_by_day(drift_world(tmp_path, "intercept", intercept=intercept))
    assert np.allclose(base[:3], drifted[:3], atol=0.02)
    assert (drifted[3:] < base[3:] - 0.05).all()


def test_covariate_drift_adds_a_shifted_feature_snapshot(tmp_path):
    world = drift_world(tmp_path, "cov", covariate={"enabled": True, "start_day": 2, "shift": 3.0})
    assert world.user_snapshots() == [dt.date(2026, 1, 1), dt.date(2026, 1, 3)]
    before = world.user_features_table(as_of=dt.date(2026, 1, 2))
    after = world.user_features_table()
    mean_before = np.nanmean(np.stack([before[f"f{j}"].to_numpy(zero_copy_only=False) for j in range(8)]), axis=1)
    mean_after = np.nanmean(np.stack([after[f"f{j}"].to_numpy(zero_copy_only=False) for j in range(8)]), axis=1)
    assert np.linalg.norm(mean_after - mean_before) > 1.0
    assert before["region"].to_pylist() == after["region"].to_pylist()  # only taste-driven features move


def test_concept_drift_changes_relevance_over_time_but_not_features(tmp_path):
    world = drift_world(tmp_path, "concept", concept={"enabled": True, "start_day": 1, "degrees_per_day": 30})
    users, items = np.arange(50), np.arange(80)
    early, late = world.relevance(users, items, 0.5), world.relevance(users, items, 5.5)
    rank_corr = np.mean([np.corrcoef(early[u], late[u])[0, 1] for u in range(50)])
    assert rank_corr < 0.5
    assert world.user_snapshots() == [dt.date(2026, 1, 1)]
    static = build(tmp_path, "static")
    assert np.allclose(static.relevance(users, items, 0.5), static.relevance(users, items, 5.5))


def test_seasonality_is_periodic(tmp_path):
    world = drift_world(tmp_path, "season", seasonality={"enabled": True, "amplitude": 1.0, "period_days": 4})
    u, i = np.arange(5), np.arange(5)
    assert np.allclose(world.relevance(u, i, 0.3), world.relevance(u, i, 4.3))
    assert not np.allclose(world.relevance(u, i, 1.0), world.relevance(u, i, 3.0))


def test_old_label_key_is_a_clear_config_error(tmp_path):
    path = tmp_path / "old.yaml"
    path.write_text("drift:\n  label: {enabled: true, start_day: 3, delta: -1.0}\n")
    renamed = r"drift\.label was renamed to drift\.intercept.*drift\.label_shift"
    with pytest.raises(ConfigError, match=renamed):
        load_config(path, WorldConfig)


SCENARIOS = {"covariate": "covariate", "label_shift": "label_shift", "concept": "concept",
             "intercept": "intercept", "seasonal": "seasonality", "none": None}


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_each_scenario_config_enables_exactly_its_scenario(name):
    config = load_config(SCENARIO_DIR / f"{name}.yaml", WorldConfig)
    expected = [SCENARIOS[name]] if SCENARIOS[name] else []
    assert config.drift.enabled_scenarios() == expected
    assert config.n_users * config.impressions_per_user * config.days <= 5_000 * 30 * 14  # small


def test_scenario_configs_cover_every_drift_field():
    assert {f"{p.stem}" for p in SCENARIO_DIR.glob("*.yaml")} == set(SCENARIOS)
    drift_fields = set(WorldConfig.model_fields["drift"].annotation.model_fields)
    assert drift_fields == {s for s in SCENARIOS.values() if s}


def _per_event_features(world: World, events) -> np.ndarray:
    """[n, 1 + 8 + 8]: true relevance, the user's observed f0..f7 and the item's observed g0..g7."""
    users, items = events["user_id"].to_numpy(), events["item_id"].to_numpy()
    relevance = world.relevance(np.arange(world.n_users), np.arange(world.n_items))[users, items]
    user_table, item_table = world.user_features_table(), world.item_features_table()
    f = np.stack([user_table[f"f{j}"].to_numpy(zero_copy_only=False) for j in range(8)], 1)[users]
    g = np.stack([item_table[f"g{j}"].to_numpy(zero_copy_only=False) for j in range(8)], 1)[items]
    return np.column_stack([relevance, f, g])


def test_label_shift_moves_the_prior_and_keeps_p_x_given_y(tmp_path):
    config = load_config(SCENARIO_DIR / "label_shift.yaml", WorldConfig)
    shift = config.drift.label_shift
    world = build(tmp_path, "ls", config)
    events = world.events_dataset().to_table(columns=["user_id", "item_id", "ts", "clicked"])
    day = (events["ts"].to_numpy() - np.datetime64("2026-01-01")) // np.timedelta64(1, "D")
    clicked = events["clicked"].to_numpy(zero_copy_only=False)
    after = day >= shift.start_day
    unshifted = build(tmp_path, "none", load_config(SCENARIO_DIR / "none.yaml", WorldConfig)).meta
    base_ctr = unshifted["n_clicks"] / unshifted["n_events"]
    assert abs(clicked[~after].mean() - base_ctr) < 0.01  # before the shift: the unshifted world
    assert abs(clicked[after].mean() - shift.new_prior) < 0.01
    assert abs(clicked[after].mean() - clicked[~after].mean()) > 0.1
    x = _per_event_features(world, events)
    for cls in (False, True):
        a, b = x[~after & (clicked == cls)], x[after & (clicked == cls)]
        se = np.sqrt(np.nanvar(a, axis=0) / len(a) + np.nanvar(b, axis=0) / len(b))
        z = (np.nanmean(b, axis=0) - np.nanmean(a, axis=0)) / se
        assert np.abs(z).max() < 4.5, (cls, z.round(2))
    # ... while p(x) does move: the pooled mean relevance follows the new class mix
    se = np.sqrt(x[:, 0].var() * (1 / after.sum() + 1 / (~after).sum()))
    pooled = (x[after, 0].mean() - x[~after, 0].mean()) / se
    assert pooled > 10


def test_label_shift_leaves_other_worlds_byte_identical(tmp_path):
    """Switching label shift off draws nothing extra: a world without it matches the old layout."""
    plain = build(tmp_path, "plain")
    off = build(tmp_path, "off", variant(drift={"label_shift": {"enabled": False, "start_day": 2}}))
    assert {k: v for k, v in digests(plain.path).items() if k != "world.json"} == \
        {k: v for k, v in digests(off.path).items() if k != "world.json"}


def test_missing_or_corrupt_world_is_a_clear_error(tmp_path):
    with pytest.raises(WorldNotFoundError, match="no world here"):
        World(tmp_path)
    (tmp_path / "world.json").write_text("{not json")
    with pytest.raises(WorldNotFoundError, match=r"world\.json: unreadable world metadata"):
        World(tmp_path)


def test_build_refuses_to_replace_a_directory_that_is_not_a_world(tmp_path):
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="holds no world"):
        build_world(SMALL, tmp_path)
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def test_world_without_events_says_so(tmp_path):
    build_world(SMALL, tmp_path / "w", events=False)
    world = World(tmp_path / "w")
    assert not world.has_events
    with pytest.raises(WorldNotFoundError, match="built without events"):
        world.events_dataset()


def _peak_rss_mb(n_users: int, tmp_path) -> float:
    import subprocess
    import sys

    code = (
        "import resource, sys; from rayml.world import WorldConfig, build_world; "
        f"build_world(WorldConfig(n_users={n_users}, n_items=500, chunk_users=5000, impressions_per_user=10, days=7), "
        "sys.argv[1]); print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)"
    )
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / f"w{n_users}")], capture_output=True, text=True, check=True)
    return float(out.stdout.strip())


@pytest.mark.slow
def test_streaming_build_memory_does_not_grow_with_users(tmp_path):
    """Peak RSS is set by the chunk, not the world: 8× the users costs (almost) no more memory."""
    small, large = _peak_rss_mb(10_000, tmp_path), _peak_rss_mb(80_000, tmp_path)
    assert large < small * 1.15 + 30, (small, large)
    assert large < 2048
