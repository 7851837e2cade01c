"""Score every entity of a Parquet dataset with a registry model, on Ray Data; resumable, exactly once.

Run locally:          python batch_jobs/score_entities.py --config configs/batch/score_users.yaml
Submit to a cluster:  ray job submit --working-dir . -- python batch_jobs/score_entities.py --config ... \
                          --input /abs/or/s3://... --output /abs/or/s3://...
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from rayml.batch.config import ScoreJobConfig
from rayml.batch.scoring import BadRowError, score_entities
from rayml.batch.shards import worker_error
from rayml.config import ConfigError, load_config
from rayml.registry import RegistryError


def main(
    config: Annotated[Path, typer.Option(help="Job config YAML (configs/batch/*.yaml).")],
    input: Annotated[str | None, typer.Option(help="Override `input`.")] = None,
    output: Annotated[str | None, typer.Option(help="Override `output`.")] = None,
    registry: Annotated[str | None, typer.Option(help="Override `registry`.")] = None,
    version: Annotated[str | None, typer.Option(help="Override `version` (number or alias).")] = None,
    bad_rows: Annotated[str | None, typer.Option(help="Override `bad_rows` (skip | fail).")] = None,
    stats: Annotated[bool, typer.Option(help="Print Ray Data's per-operator stats.")] = True,
) -> None:
    overrides = {"input": input, "output": output, "registry": registry, "version": version, "bad_rows": bad_rows}
    try:
        job = load_config(config, ScoreJobConfig, {k: v for k, v in overrides.items() if v is not None})
        summary = score_entities(job)
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    except (RegistryError, FileNotFoundError, ValueError) as exc:
        typer.echo(f"error: {config}: {exc}", err=True)
        raise typer.Exit(2) from None
    except Exception as exc:  # a bad row (`bad_rows: fail`) or a model a worker cannot load, wrapped by Ray
        cause = worker_error(exc, BadRowError, RegistryError)
        if cause is None:
            raise
        typer.echo(f"error: {cause}", err=True)
        raise typer.Exit(3 if isinstance(cause, BadRowError) else 2) from None
    if stats and summary.operator_stats:
        print(summary.operator_stats, file=sys.stderr)
    print(json.dumps(summary.to_dict() | {"operator_stats": None}))


if __name__ == "__main__":
    typer.run(main)
