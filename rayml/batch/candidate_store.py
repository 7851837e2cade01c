"""Materialize the candidate job's output into the online store (Redis) as a new run of the candidate view.

One process reads the Parquet in batches, encodes each user's candidates into one value
(:func:`rayml.features.candidates.encode_candidates`) and writes them with MSET; then it publishes the run (the
pointer swap) and drops runs older than ``keep_runs``. Redis executes commands on one thread, so a single
pipelined writer already keeps it busy; more writers would only queue behind it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
from pydantic import Field

from rayml.batch.candidates import read_manifest
from rayml.config import ConfigError, StrictModel, load_config
from rayml.features.candidates import CandidateRunWriter, CandidateStoreKeys, CandidateViewMissing
from rayml.features.definitions import (
    FeatureRepo,
    RedisStoreConfig,
    load_feature_repo,
    make_online_store,
)
from rayml.features.redis_store import OnlineStoreUnavailable, RedisOnlineStore


class CandidateStoreJobConfig(StrictModel):
    """Copy one candidate-job output into the online store's candidate view (``configs/batch/candidates_store.yaml``)."""

    candidates: str = Field(description="Output directory of batch_jobs/generate_candidates.py (Parquet + _manifest.json).")
    features: str = Field(description="Feature repo YAML; its `online_store` (type: redis) receives the view.")
    view: str = Field("candidates", pattern=r"^[A-Za-z0-9_.-]+$", max_length=64,
                      description="Name of the candidate view; serving reads the same name (args.candidates_view).")
    keep_runs: int = Field(
        2, ge=1, le=10,
        description="Runs kept after publishing (the new one included). 2 keeps the previous run for replicas that "
        "have not seen the swap yet.",
    )
    batch_rows: int = Field(50_000, ge=1, le=1_000_000, description="Users read, encoded and written at once.")


@dataclass(frozen=True)
class CandidateStoreSummary:
    view: str
    run: str
    rows: int
    top_k: int
    model_version: str
    seconds: float
    rows_per_s: float
    used_memory_bytes: int  # Redis INFO memory after publishing (everything the server holds)
    dropped_runs: list[str]
    reused: bool = False


def load_candidate_store_job(path: str | Path, overrides: dict | None = None) -> tuple[CandidateStoreJobConfig, FeatureRepo]:
    """The job config at ``path`` and its feature repo, checked before any work.

    Raises:
        ConfigError: naming the file and key (a missing candidates output, a repo whose store is not Redis, a view
            name taken by a feature view).
    """
    config = load_config(path, CandidateStoreJobConfig, overrides)
    out = Path(config.candidates)
    if not out.is_dir():
        raise ConfigError(f"{path}: key 'candidates': {out} does not exist (run batch_jobs/generate_candidates.py first)")
    if read_manifest(out) is None:
        raise ConfigError(f"{path}: key 'candidates': {out} has no _manifest.json (not a finished candidate job output)")
    repo = load_feature_repo(config.features, check_sources=False)
    if not isinstance(repo.online_store, RedisStoreConfig):
        raise ConfigError(f"{path}: key 'features': {config.features} has online_store.type "
                          f"{repo.online_store.type!r}; the candidate view needs `type: redis`")
    if config.view in repo.views:
        raise ConfigError(f"{path}: key 'view': {config.view!r} is a feature view of {config.features}; choose another name")
    return config, repo


def new_run_id() -> str:
    """A run id that sorts by time (UTC, microseconds)."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")


def materialize_candidates(config: CandidateStoreJobConfig, repo: FeatureRepo, force: bool = False) -> CandidateStoreSummary:
    """Write ``config.candidates`` into Redis as a new run, publish it, drop old runs.

    When the served run was materialized from the same candidate-job output (same manifest), nothing is written
    unless ``force``.

    Raises:
        OnlineStoreUnavailable: Redis is down (the served run stays as it was).
        CandidateEncodingError: ids or scores that do not fit the encoding (nothing is published).
    """
    store = make_online_store(repo.online_store)
    assert isinstance(store, RedisOnlineStore)
    manifest = read_manifest(config.candidates) or {}
    keys = CandidateStoreKeys(store, config.view)
    try:
        current = keys.read_run(keys.current_run())
    except CandidateViewMissing:
        current = None
    if current is not None and not force and current.meta.get("source") == manifest:
        return CandidateStoreSummary(config.view, current.run, current.rows, current.top_k,
                                     str(manifest.get("model_version")), 0.0, 0.0, used_memory(store), [], reused=True)
    dataset = ds.dataset(config.candidates, format="parquet")
    items_type = dataset.schema.field("items").type
    if not pa.types.is_fixed_size_list(items_type):
        raise ValueError(f"candidates {config.candidates}: column 'items' is {items_type}, expected a fixed-size list")
    top_k = items_type.list_size
    writer = CandidateRunWriter(store, config.view, new_run_id(), top_k)
    started = time.perf_counter()
    for batch in dataset.to_batches(columns=["user_id", "items", "scores"], batch_size=config.batch_rows):
        n = batch.num_rows
        items = batch["items"].flatten().to_numpy().reshape(n, top_k)  # [n, K]
        scores = batch["scores"].flatten().to_numpy().reshape(n, top_k)  # [n, K]
        writer.write(batch["user_id"].to_numpy(), items, scores)
    writer.publish({"source": manifest, "candidates": str(Path(config.candidates).resolve())})
    seconds = time.perf_counter() - started
    dropped = writer.drop_old_runs(config.keep_runs)
    return CandidateStoreSummary(
        view=config.view, run=writer.run, rows=writer.rows, top_k=top_k, model_version=str(manifest.get("model_version")),
        seconds=round(seconds, 3), rows_per_s=round(writer.rows / max(seconds, 1e-9), 1),
        used_memory_bytes=used_memory(store), dropped_runs=dropped,
    )


def used_memory(store: RedisOnlineStore) -> int:
    """Redis ``used_memory`` (bytes) right now."""
    try:
        return int(store.client.info("memory")["used_memory"])
    except store.errors as exc:
        raise OnlineStoreUnavailable(f"{store.address}: {exc}") from None
