"""The online store's Redis password comes from the environment variable the feature repo names (a Kubernetes
Secret in the cluster), never from the file: a real redis-server with `requirepass` accepts it, and refuses a
missing or wrong one as "down" (the store's usual error), while an unset variable is a config error naming it."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from rayml.config import ConfigError
from rayml.features.definitions import RedisStoreConfig, make_online_store
from rayml.features.redis_store import OnlineStoreUnavailable
from tests.conftest import RedisServer

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def locked_redis(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis-auth"), "--requirepass", "s3cret-for-tests")
    server.start()
    yield server
    server.stop()


def test_the_password_from_the_environment_opens_the_store(locked_redis, monkeypatch):
    monkeypatch.setenv("RAYML_REDIS_PASSWORD", "s3cret-for-tests")
    config = RedisStoreConfig(type="redis", port=locked_redis.port, password_env="RAYML_REDIS_PASSWORD")
    store = make_online_store(config)
    store.write("users", pa.table({"user_id": [1, 2], "age": [30.0, 40.0]}), key="user_id")
    assert store.lookup("users", np.array([2])).columns["age"][0] == 40.0


def test_a_missing_or_wrong_password(locked_redis, monkeypatch):
    config = RedisStoreConfig(type="redis", port=locked_redis.port, password_env="RAYML_REDIS_PASSWORD")
    monkeypatch.delenv("RAYML_REDIS_PASSWORD", raising=False)
    with pytest.raises(ConfigError, match="password_env: environment variable RAYML_REDIS_PASSWORD is not set"):
        make_online_store(config)
    monkeypatch.setenv("RAYML_REDIS_PASSWORD", "wrong")
    store = make_online_store(config)
    with pytest.raises(OnlineStoreUnavailable):
        store.write("users", pa.table({"user_id": [1], "age": [30.0]}), key="user_id")
    with pytest.raises(ValueError, match="password_env"):
        RedisStoreConfig(type="redis", password_env="not a name")
