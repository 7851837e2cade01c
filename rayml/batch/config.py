"""Schemas for batch job configs (``configs/batch/*.yaml``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from rayml.config import StrictModel


class ActorPool(StrictModel):
    """Ray Data actor pool. Fractional CPUs keep read/write tasks schedulable on 2 cores."""

    min_size: int = Field(1, ge=1, le=10_000)
    max_size: int = Field(2, ge=1, le=10_000)
    num_cpus: float = Field(0.5, gt=0, le=64, description="CPUs reserved per actor; < 1 on small boxes.")
    num_gpus: float = Field(0.0, ge=0, le=8)
    resources: dict[str, float] = Field(
        {}, description="Custom resources per actor, e.g. {spot: 0.01} to run only on nodes started with `spot`."
    )

    @model_validator(mode="after")
    def _ordered(self) -> ActorPool:
        if self.max_size < self.min_size:
            raise ValueError(f"max_size={self.max_size} must be >= min_size={self.min_size}")
        return self


class CandidateJobConfig(StrictModel):
    """Top-K candidate items for every user from the retriever's embeddings."""

    users: str = Field(description="User-feature Parquet: a file, a directory, or a directory of valid_from=… snapshots (latest is used).")
    registry: str = Field(
        description="Registry root: a directory, or a URI every node reaches (s3://bucket/prefix; docs/registry-uri.md)."
    )
    model: str = Field("retriever", description="Registry model name of the two-tower retriever.")
    alias: str = Field("production", description="Version or alias to use.")
    output: str = Field(description="Output directory; replaced atomically when the job succeeds.")
    top_k: int = Field(100, ge=1, le=10_000, description="Candidates kept per user.")
    batch_size: int = Field(4096, ge=1, le=1_000_000, description="Users per Ray Data batch.")
    actors: ActorPool = ActorPool()


class ScoreJobConfig(StrictModel):
    """Score every entity of a Parquet dataset with a registry model, one committed output file per input file."""

    input: str = Field(description="Entity-feature Parquet: a file, a directory or a pyarrow filesystem URI (s3://…).")
    registry: str = Field(
        description="Registry root: a directory, or a URI every node reaches (s3://bucket/prefix; docs/registry-uri.md)."
    )
    model: str = Field("user_propensity", description="Registry model name (an entity scorer: encoder + ONNX).")
    version: str = Field("production", description="Version number or alias.")
    output: str = Field(description="Output directory or URI: part-<input shard>.parquet, _rejects/, _manifest.json.")
    id_column: str = Field("user_id", description="Entity id column, copied to the output as `entity_id`.")
    batch_size: int = Field(131_072, ge=1, le=10_000_000, description="Rows per read/score/write step inside a shard.")
    ort_threads: int = Field(1, ge=1, le=256, description="ONNX Runtime threads per actor.")
    actors: ActorPool = ActorPool(min_size=2, max_size=2, num_cpus=0.5)
    bad_rows: Literal["skip", "fail"] = Field(
        "skip", description="skip: count bad rows and write them to _rejects/ with the reason; fail: stop at the first."
    )
    missing: Literal["encode", "reject"] = Field(
        "encode", description="encode: missing values get the encoder's missing flag (as in training); reject: bad row."
    )
