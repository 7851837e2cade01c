"""Profile the features of a Parquet dataset on Ray Data into one mergeable profile (DataSketches).

Every Ray Data batch becomes one serialized partial profile (whole Arrow columns into the sketches, no per-row
Python); the driver streams the partials and merges them, so memory stays flat however many rows there are.
The profile is written to ``--out`` and, with ``--registry``, stored as a reference of a model version.

Run locally:          python batch_jobs/profile_features.py --source data/train --out /tmp/train.profile
Submit to a cluster:  ray job submit --working-dir . -- python batch_jobs/profile_features.py \
                          --source /abs/or/s3://... --out /abs/or/s3://... \
                          --registry /abs/or/s3://... --model ranker --version 3 --kind training
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import typer

from rayml.config import ConfigError
from rayml.monitoring.reference import save_reference
from rayml.monitoring.sketches import (
    CATEGORICAL,
    DEFAULT_K,
    DEFAULT_LG_K,
    DEFAULT_LG_MAX_K,
    NUMERIC,
    Profile,
    ProfileError,
    infer_kind,
)
from rayml.registry import ModelRegistry, RegistryError
from rayml.registry.store import PROFILE_KINDS


@dataclass
class ProfileRun:
    """A finished profiling run: the merged profile, how many partials made it, and the wall time."""

    profile: Profile
    partials: int
    seconds: float
    source: str

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "rows": self.profile.rows, "features": len(self.profile.features),
                "partials": self.partials, "seconds": round(self.seconds, 3), "k": self.profile.k,
                "rank_error": round(self.profile.rank_error, 6)}


def feature_schema(source: str, columns: Sequence[str] | None = None, categorical: Sequence[str] = (),
                   numeric: Sequence[str] = ()) -> dict[str, str]:
    """Feature → kind for a Parquet dataset, from its metadata: inferred kinds, overridden by ``categorical``
    and ``numeric``; ``columns`` restricts the features. Columns of unsupported types are skipped."""
    arrow_schema = pads.dataset(source, format="parquet", partitioning="hive").schema
    names = list(columns) if columns else arrow_schema.names
    unknown = [c for c in [*names, *categorical, *numeric] if c not in arrow_schema.names]
    if unknown:
        raise ConfigError(f"--source {source}: no columns {sorted(set(unknown))} (have {arrow_schema.names})")
    schema: dict[str, str] = {}
    for name in names:
        kind = CATEGORICAL if name in categorical else NUMERIC if name in numeric else infer_kind(
            arrow_schema.field(name).type)
        if kind is not None:
            schema[name] = kind
    if not schema:
        raise ConfigError(f"--source {source}: no column of a numeric or categorical type to profile")
    return schema


def profile_parquet(source: str, *, columns: Sequence[str] | None = None, categorical: Sequence[str] = (),
                    numeric: Sequence[str] = (), k: int = DEFAULT_K, lg_max_k: int = DEFAULT_LG_MAX_K,
                    lg_k: int = DEFAULT_LG_K, batch_size: int | None = None,
                    num_cpus: float = 1.0, override_num_blocks: int | None = None) -> ProfileRun:
    """Profile ``source`` (a Parquet file or directory, local or a pyarrow URI) on the current Ray.

    ``batch_size=None`` profiles each Ray Data block as it was read (no re-batching copies); each batch returns
    one row holding its serialized partial, and the driver merges the partials as they stream in.
    """
    import ray

    started = time.perf_counter()
    schema = feature_schema(source, columns, categorical, numeric)
    params = {"k": k, "lg_max_k": lg_max_k, "lg_k": lg_k}

    def partial(batch: pa.Table) -> pa.Table:  # runs on Ray workers; self-contained so it pickles by value
        data = Profile(schema, **params).update(batch).serialize()
        pa.default_memory_pool().release_unused()  # hand decoded column buffers back between batches
        return pa.table({"profile": pa.array([data], pa.binary())})

    # One read task per file by default: Ray Data's size-based bucketing may otherwise put several files
    # into one task and leave cores idle.
    blocks = override_num_blocks or len(pads.dataset(source, format="parquet", partitioning="hive").files)
    ds = ray.data.read_parquet(source, override_num_blocks=max(blocks, 1)).select_columns(list(schema))
    parts = ds.map_batches(partial, batch_format="pyarrow", batch_size=batch_size, zero_copy_batch=True,
                           num_cpus=num_cpus)
    merged = Profile(schema, **params)
    count = 0
    for block in parts.iter_batches(batch_format="pyarrow", batch_size=None):
        assert isinstance(block, pa.Table)
        for data in block.column("profile").to_pylist():
            merged.merge(Profile.deserialize(data))
            count += 1
    return ProfileRun(merged, count, time.perf_counter() - started, source)


def write_profile(profile: Profile, out: str) -> str:
    """Write the serialized profile to a local path or pyarrow URI (write then rename); returns the path."""
    if "://" in out:
        fs, path = pafs.FileSystem.from_uri(out)
    else:
        fs, path = pafs.LocalFileSystem(), str(Path(out).expanduser().resolve())
    parent = path.rsplit("/", 1)[0]
    if parent:
        fs.create_dir(parent, recursive=True)
    tmp = f"{path}.tmp-{time.time_ns()}"
    with fs.open_output_stream(tmp) as fh:
        fh.write(profile.serialize())
    fs.move(tmp, path)
    return out


def main(
    source: Annotated[str, typer.Option(help="Parquet file or directory to profile (path or URI).")],
    out: Annotated[str, typer.Option(help="Where to write the serialized profile (path or URI).")],
    registry: Annotated[str | None, typer.Option(help="Also store the profile in this model registry.")] = None,
    model: Annotated[str | None, typer.Option(help="Model name in the registry (with --registry).")] = None,
    version: Annotated[str | None, typer.Option(help="Model version: number or alias (with --registry).")] = None,
    kind: Annotated[str, typer.Option(help="Reference kind: training | served.")] = "training",
    columns: Annotated[str | None, typer.Option(help="Comma-separated features (default: all).")] = None,
    categorical: Annotated[str, typer.Option(help="Comma-separated columns to treat as categorical.")] = "",
    k: Annotated[int, typer.Option(help="KLL k (rank error 0.00278 at 1000).")] = DEFAULT_K,
    batch_size: Annotated[int | None, typer.Option(help="Rows per partial (default: one per block).")] = None,
) -> None:
    from rayml.config import init_ray

    def split(text: str | None) -> list[str]:
        return [c.strip() for c in (text or "").split(",") if c.strip()]

    try:
        if registry is not None and (model is None or version is None):
            raise ConfigError("--registry needs --model and --version")
        if kind not in PROFILE_KINDS:
            raise ConfigError(f"--kind: must be one of {', '.join(PROFILE_KINDS)}, got {kind!r}")
        if k < 8:
            raise ConfigError(f"--k: must be at least 8, got {k}")
        target = ModelRegistry(registry) if registry is not None else None
        if target is not None:
            target.resolve(model or "", version or "")  # fail before the work, not after it
        feature_schema(source, split(columns) or None, split(categorical))  # fail before starting Ray
        init_ray()
        run = profile_parquet(source, columns=split(columns) or None, categorical=split(categorical), k=k,
                              batch_size=batch_size)
        summary = run.to_dict() | {"out": write_profile(run.profile, out)}
        if target is not None:
            entry = save_reference(target, model or "", version or "", kind, run.profile, {"source": source})
            summary["registry"] = {"model": model, "version": target.resolve(model or "", version or ""),
                                   "kind": kind, **entry}
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    except (RegistryError, ProfileError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    except (FileNotFoundError, pa.ArrowInvalid) as exc:
        typer.echo(f"error: --source {source}: {exc}", err=True)
        raise typer.Exit(2) from None
    print(json.dumps(summary))


if __name__ == "__main__":
    typer.run(main)
