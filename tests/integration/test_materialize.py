"""Materialization on Ray Data into both online stores: latest values, incremental runs, resumable watermark."""

from __future__ import annotations

import shutil

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import yaml

from rayml.features.definitions import load_feature_repo
from rayml.features.materialize import materialize_view
from rayml.features.online import EmbeddedOnlineStore
from rayml.features.redis_store import RedisOnlineStore

pytestmark = pytest.mark.integration


@pytest.fixture
def users_source(tiny_world, tmp_path):
    """The tiny world's users, as a snapshot directory we can add newer partitions to."""
    source = tmp_path / "users"
    shutil.copytree(tiny_world.path / "users", source)
    return source


def write_repo(tmp_path, source, store: str) -> object:
    path = tmp_path / f"features-{store.split(',')[0].split(':')[-1].strip(' }')}.yaml"
    path.write_text(yaml.safe_dump({
        "entities": {"user": {"key": "user_id"}},
        "views": {"profile": {"entity": "user", "source": str(source), "features": ["age", "region"]}},
        "online_store": yaml.safe_load(store),
    }))
    return load_feature_repo(path)


def add_partition(source, date: str, age_offset: float, users: int = 50) -> None:
    """A newer snapshot for the first ``users`` users with a different age."""
    first = sorted(source.glob("valid_from=*"))[0]
    table = pq.read_table(first).slice(0, users)
    table = table.set_column(table.schema.get_field_index("age"), "age",
                             pc.add(pc.fill_null(table["age"], 0.0), age_offset).cast(table.schema.field("age").type))
    (source / f"valid_from={date}").mkdir()
    pq.write_table(table, source / f"valid_from={date}" / "part-00000.parquet")


def test_embedded_snapshot_is_incremental(ray_session, users_source, tiny_world, tmp_path):
    repo = write_repo(tmp_path, users_source, "{type: embedded}")
    state = tmp_path / "online"
    first = materialize_view(repo, "profile", state)
    assert first.partitions == ["2026-01-01"] and first.rows == tiny_world.n_users
    assert materialize_view(repo, "profile", state).partitions == []  # nothing new
    add_partition(users_source, "2026-01-05", 1000.0)
    third = materialize_view(repo, "profile", state)
    assert third.partitions == ["2026-01-05"] and third.rows == 50 and third.watermark == "2026-01-05"
    store = EmbeddedOnlineStore()
    snapshot = pq.read_table(state / "profile.parquet")
    assert snapshot.num_rows == tiny_world.n_users  # one row per entity, no duplicates
    store.write("profile", snapshot, key="user_id")
    ages = store.lookup("profile", np.array([0, 49, 50])).columns["age"]
    assert ages[0] >= 1000 and ages[1] >= 1000 and ages[2] < 1000


def test_redis_store_gets_latest_values_in_order(ray_session, redis_server, users_source, tiny_world, tmp_path):
    repo = write_repo(tmp_path, users_source, f"{{type: redis, port: {redis_server.port}}}")
    add_partition(users_source, "2026-01-05", 1000.0)
    summary = materialize_view(repo, "profile", tmp_path / "online-redis")
    assert summary.partitions == ["2026-01-01", "2026-01-05"]
    assert summary.rows == tiny_world.n_users + 50
    store = RedisOnlineStore(port=redis_server.port)
    result = store.lookup("profile", np.array([0, 49, 50, 10**9]))
    assert result.found.tolist() == [True, True, True, False]
    assert result.columns["age"][0] >= 1000 and result.columns["age"][2] < 1000
    assert materialize_view(repo, "profile", tmp_path / "online-redis").rows == 0
