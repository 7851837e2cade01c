"""Feature definitions (``configs/features/*.yaml``): entities, feature views, and the online store.

A backend is chosen by ``online_store.type``, looked up in one explicit table (:data:`ONLINE_STORES`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

import pyarrow.dataset as ds
from pydantic import Field

from rayml.config import ConfigError, StrictModel, load_config
from rayml.features.online import EmbeddedOnlineStore
from rayml.features.realtime import RealtimeConfig


class Entity(StrictModel):
    key: str = Field(description="Column that identifies the entity, e.g. user_id.")


class FeatureView(StrictModel):
    """A group of features of one entity read from one Parquet source."""

    entity: str = Field(description="Name of an entity in `entities`.")
    source: str = Field(description="Parquet file or directory (hive partitions allowed, e.g. valid_from=…).")
    timestamp: str | None = Field("valid_from", description="Column or partition holding validity start; null: static.")
    ttl_days: float | None = Field(None, gt=0, le=36_500, description="Values older than this are treated as missing.")
    features: list[str] = Field(min_length=1, description="Feature columns served and joined.")


class EmbeddedStoreConfig(StrictModel):
    type: Literal["embedded"] = "embedded"


class RedisStoreConfig(StrictModel):
    type: Literal["redis"]
    host: str = Field("127.0.0.1", description="Redis host.")
    port: int = Field(6379, ge=1, le=65_535)
    db: int = Field(0, ge=0, le=1000)
    ttl_s: int | None = Field(None, ge=1, description="Expiry of materialised rows; null: never.")
    timeout_s: float = Field(0.2, gt=0, le=60, description="Socket timeout: a slow Redis counts as down.")
    password_env: str | None = Field(
        None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="Environment variable holding the Redis password (e.g. from a Kubernetes Secret); null: no AUTH. "
        "The password itself never goes in a config file.")


OnlineStoreConfig = Annotated[EmbeddedStoreConfig | RedisStoreConfig, Field(discriminator="type")]


class FeatureRepo(StrictModel):
    entities: dict[str, Entity]
    views: dict[str, FeatureView]
    online_store: OnlineStoreConfig = EmbeddedStoreConfig()
    realtime: RealtimeConfig | None = Field(None, description="Windowed counters fed by the event ingestion path.")


def _make_embedded(config: EmbeddedStoreConfig) -> EmbeddedOnlineStore:
    return EmbeddedOnlineStore()


def _make_redis(config: RedisStoreConfig):
    from rayml.features.redis_store import RedisOnlineStore

    password = None
    if config.password_env is not None:
        password = os.environ.get(config.password_env)
        if not password:
            raise ConfigError(f"online_store.password_env: environment variable {config.password_env} is not set")
    return RedisOnlineStore(config.host, config.port, config.db, ttl_s=config.ttl_s, timeout_s=config.timeout_s,
                            password=password)


ONLINE_STORES = {"embedded": _make_embedded, "redis": _make_redis}


def make_online_store(config: EmbeddedStoreConfig | RedisStoreConfig):
    """The online store named by ``config.type``."""
    return ONLINE_STORES[config.type](config)  # type: ignore[operator]


def load_feature_repo(path: str | Path, check_sources: bool = True) -> FeatureRepo:
    """Load and validate a feature repo; with ``check_sources`` every feature must exist in its source.

    Raises:
        ConfigError: one line per problem, naming the file and the key.
    """
    repo = load_config(path, FeatureRepo)
    problems = []
    for entity in repo.realtime.entities if repo.realtime else []:
        if entity not in repo.entities:
            problems.append(f"{path}: key 'realtime.entities': unknown entity {entity!r} (entities: {sorted(repo.entities)})")
    for name, view in repo.views.items():
        if view.entity not in repo.entities:
            problems.append(f"{path}: key 'views.{name}.entity': unknown entity {view.entity!r} "
                            f"(entities: {sorted(repo.entities)})")
            continue
        if not check_sources:
            continue
        if not Path(view.source).exists():
            problems.append(f"{path}: key 'views.{name}.source': {view.source} does not exist")
            continue
        columns = set(ds.dataset(view.source, format="parquet", partitioning="hive").schema.names)
        wanted = [repo.entities[view.entity].key, *view.features, *([view.timestamp] if view.timestamp else [])]
        for column in wanted:
            if column not in columns:
                problems.append(f"{path}: key 'views.{name}.features': unknown feature {column!r} "
                                f"(source has: {', '.join(sorted(columns))})")
    if problems:
        raise ConfigError("\n".join(problems))
    return repo
