"""Profile the features of a Parquet dataset on Ray into one mergeable profile (DataSketches).

The work is in :mod:`rayml.monitoring.profile_job`: a fixed pool of actors reads the files, each folding
its batches into one running profile; the driver merges the pool's few partials, so the worker processes, the
object store and each worker's memory stay flat however many rows and files there are.
The profile is written to ``--out`` and, with ``--registry``, stored as a reference of a model version.

Run locally:          python batch_jobs/profile_features.py --source data/train --out /tmp/train.profile
Submit to a cluster:  ray job submit --working-dir . -- python batch_jobs/profile_features.py \
                          --source /abs/or/s3://... --out /abs/or/s3://... \
                          --registry /abs/or/s3://... --model ranker --version 3 --kind training
"""

from __future__ import annotations

import json
from typing import Annotated

import pyarrow as pa
import typer

from rayml.config import ConfigError
from rayml.monitoring.profile_job import (
    DEFAULT_BATCH_ROWS,
    feature_schema,
    profile_parquet,
    write_profile,
)
from rayml.monitoring.reference import save_reference
from rayml.monitoring.sketches import DEFAULT_K, ProfileError
from rayml.registry import ModelRegistry, RegistryError
from rayml.registry.store import PROFILE_KINDS


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
    batch_size: Annotated[int | None, typer.Option(help=f"Rows per batch read (default {DEFAULT_BATCH_ROWS}).")] = None,
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
