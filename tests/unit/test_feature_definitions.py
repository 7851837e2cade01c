"""Feature definitions: unknown features and entities fail at load, naming file and key; backends by `type:`."""

from __future__ import annotations

import pytest

from rayml.config import ConfigError
from rayml.features.definitions import load_feature_repo, make_online_store
from rayml.features.online import EmbeddedOnlineStore

pytestmark = pytest.mark.unit


def repo_yaml(tmp_path, world, features: str, store: str = "{type: embedded}", entity: str = "user"):
    path = tmp_path / "features.yaml"
    path.write_text(
        "entities:\n  user: {key: user_id}\n"
        f"views:\n  profile:\n    entity: {entity}\n    source: {world.path / 'users'}\n"
        f"    features: {features}\nonline_store: {store}\n"
    )
    return path


def test_valid_repo_loads_and_picks_the_backend(tmp_path, tiny_world):
    repo = load_feature_repo(repo_yaml(tmp_path, tiny_world, "[age, region]"))
    assert repo.views["profile"].features == ["age", "region"]
    assert isinstance(make_online_store(repo.online_store), EmbeddedOnlineStore)
    redis_repo = load_feature_repo(repo_yaml(tmp_path, tiny_world, "[age]", "{type: redis, port: 6390}"))
    assert make_online_store(redis_repo.online_store).address == "redis://127.0.0.1:6390/0"


def test_unknown_feature_is_refused_at_load(tmp_path, tiny_world):
    path = repo_yaml(tmp_path, tiny_world, "[age, agee]")
    with pytest.raises(ConfigError, match=rf"{path}: key 'views.profile.features': unknown feature 'agee' \(source has: "):
        load_feature_repo(path)


def test_unknown_entity_and_backend(tmp_path, tiny_world):
    with pytest.raises(ConfigError, match=r"key 'views.profile.entity': unknown entity 'usr'"):
        load_feature_repo(repo_yaml(tmp_path, tiny_world, "[age]", entity="usr"))
    with pytest.raises(ConfigError, match=r"online_store"):
        load_feature_repo(repo_yaml(tmp_path, tiny_world, "[age]", "{type: memcached}"))
