"""Candidate generation on Ray Data: exact top-K items per user by two-tower dot product."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from rayml.batch.config import CandidateJobConfig
from rayml.batch.shards import (
    LOCAL,
    Shard,
    ShardWorker,
    committed_outputs,
    list_shards,
    load_model,
    refuse_relative_paths_in_job,
    remove_stale_temporaries,
    run_sharded,
)
from rayml.config import init_ray
from rayml.features import FeatureEncoder, resolve_snapshot
from rayml.inference import ort_session
from rayml.registry import ModelRegistry

MANIFEST = "_manifest.json"
SCORE_BLOCK = 1024  # users scored against all items at once: bounds the [block, items] matrix


class CandidateScorer:
    """Ray Data actor: encodes users, embeds them with the ONNX user tower, keeps the top-K items."""

    def __init__(self, model_dir: str, top_k: int, version_label: str) -> None:
        model_dir_path = Path(model_dir)
        self.encoder = FeatureEncoder.load(model_dir_path / "user_encoder.json")
        self.session = ort_session(model_dir_path / "user_tower.onnx")
        self.item_emb = np.load(model_dir_path / "item_embeddings.npy")  # [I, E+1]
        self.item_ids = np.load(model_dir_path / "item_ids.npy")  # [I]
        self.top_k = min(top_k, len(self.item_ids))
        self.version_label = version_label

    def __call__(self, batch: pa.Table) -> pa.Table:
        user_emb = self.session.run(None, {"user_features": self.encoder.transform(batch)})[0]  # [B, E+1]
        k = self.top_k
        items = np.empty((len(user_emb), k), np.int64)
        scores = np.empty((len(user_emb), k), np.float32)
        for lo in range(0, len(user_emb), SCORE_BLOCK):
            block = user_emb[lo : lo + SCORE_BLOCK] @ self.item_emb.T  # [b, I]
            top = np.argpartition(-block, k - 1, axis=1)[:, :k]
            top_scores = np.take_along_axis(block, top, 1)
            order = np.argsort(-top_scores, axis=1, kind="stable")
            items[lo : lo + len(block)] = self.item_ids[np.take_along_axis(top, order, 1)]
            scores[lo : lo + len(block)] = np.take_along_axis(top_scores, order, 1)
        return pa.table(
            {
                "user_id": batch["user_id"],
                "items": pa.FixedSizeListArray.from_arrays(pa.array(items.ravel()), k),
                "scores": pa.FixedSizeListArray.from_arrays(pa.array(scores.ravel()), k),
                "model_version": pa.array([self.version_label] * len(items)),
            }
        )


def _check_user_columns(users: Path, encoder: FeatureEncoder) -> None:
    """Fail before any Ray work when the user table lacks what the model reads."""
    files = [users] if users.is_file() else sorted(users.rglob("*.parquet"))
    if not files:
        raise FileNotFoundError(f"users path {users} holds no Parquet files")
    names = set(pq.read_schema(files[0]).names)
    missing = [c for c in ["user_id", *encoder.columns] if c not in names]
    if missing:
        raise ValueError(f"users table {files[0]} lacks columns {missing} that the retriever reads")


@dataclass(frozen=True)
class CandidateSummary:
    output: str
    users_path: str
    model_version: str
    rows: int
    top_k: int
    seconds: float
    shards: int = 0
    shards_skipped: int = 0
    reused: bool = False


def read_manifest(output: str | Path) -> dict | None:
    path = Path(output) / MANIFEST
    return json.loads(path.read_text()) if path.is_file() else None


class CandidateShardWorker(ShardWorker):
    """Ray Data actor: top-K candidates for every user of a shard, committed as one output file."""

    def __init__(self, users: str, staging: str, registry: str, model: str, version: int, top_k: int,
                 batch_size: int) -> None:
        super().__init__(users, staging, batch_size)
        # Through the registry URI, never the driver's local path: on another node the version is downloaded
        # into that node's cache and verified there.
        loaded = load_model(registry, model, version)
        self.scorer = CandidateScorer(str(loaded.path), top_k, loaded.label)
        self.columns = ["user_id", *self.scorer.encoder.columns]
        k = self.scorer.top_k
        self.output_schema = pa.schema([("user_id", pa.int64()), ("items", pa.list_(pa.int64(), k)),
                                        ("scores", pa.list_(pa.float32(), k)), ("model_version", pa.string())])

    def process(self, table: pa.Table, shard: Shard) -> pa.Table:
        return self.scorer(table).cast(self.output_schema)


def _staging_dir(output: Path, version_label: str, top_k: int, users: Path) -> Path:
    """Deterministic per (model version, k, users): a rerun of the same job resumes in it."""
    digest = hashlib.sha256(str(users.resolve()).encode()).hexdigest()[:8]
    return output.parent / f".{output.name}.staging-{version_label.replace(':', '_')}-k{top_k}-{digest}"


def generate_candidates(config: CandidateJobConfig, force: bool = False) -> CandidateSummary:
    """Run the job on Ray (the cluster in ``RAY_ADDRESS``, else a local one started here).

    The model is resolved and verified before any work starts. Each users file is a shard whose candidates are
    committed atomically into a staging directory named after the job, so a killed job resumes where it stopped.
    When every shard is done the staging directory is renamed into place, so readers never see a partial
    result. When ``output`` already holds candidates from the same model version and users path, it is reused
    unless ``force``.
    """
    refuse_relative_paths_in_job({k: getattr(config, k) for k in ("users", "registry", "output")})
    registry = ModelRegistry(config.registry)
    version = registry.get(config.model, config.alias)
    users = resolve_snapshot(config.users)
    _check_user_columns(users, FeatureEncoder.load(version.file("user_encoder.json")))
    manifest = read_manifest(config.output)
    if (
        not force
        and manifest
        and manifest["model_version"] == version.label
        and manifest["users_path"] == str(users.resolve())
        and manifest["top_k"] == config.top_k
    ):
        return CandidateSummary(**{**manifest, "reused": True})
    output = Path(config.output)
    staging = _staging_dir(output, version.label, config.top_k, users)
    if force and staging.exists():
        shutil.rmtree(staging)
    shards = list_shards(LOCAL, str(users.resolve()))
    remove_stale_temporaries(LOCAL, str(staging))  # a killed attempt's half-written shards
    done = committed_outputs(LOCAL, str(staging))
    todo = [s for s in shards if s.output_name not in done]
    if todo:
        init_ray()  # not timed: a cluster's start-up is not the job's
    started = time.perf_counter()
    if todo:
        run_sharded(CandidateShardWorker, {
            "users": str(users.resolve()), "staging": str(staging.resolve()), "registry": registry.location,
            "model": config.model, "version": version.version, "top_k": config.top_k, "batch_size": config.batch_size,
        }, todo, config.actors)
    remove_stale_temporaries(LOCAL, str(staging))  # a writer on a node lost mid-job never cleaned up
    rows = pq.ParquetDataset(staging).read(columns=["user_id"]).num_rows
    summary = CandidateSummary(
        output=str(output), users_path=str(users.resolve()), model_version=version.label, rows=rows,
        top_k=config.top_k, seconds=round(time.perf_counter() - started, 3), shards=len(shards),
        shards_skipped=len(shards) - len(todo),
    )
    (staging / MANIFEST).write_text(json.dumps(asdict(summary), indent=1))
    if output.exists():
        trash = output.parent / f".{output.name}.old-{uuid.uuid4().hex[:8]}"
        os.rename(output, trash)
        os.rename(staging, output)
        shutil.rmtree(trash)
    else:
        output.parent.mkdir(parents=True, exist_ok=True)
        os.rename(staging, output)
    return summary
