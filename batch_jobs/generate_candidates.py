"""Top-K candidates for every user, on Ray Data.

Run locally:           python batch_jobs/generate_candidates.py --config configs/batch/candidates.yaml
Submit to a cluster:   ray job submit --working-dir . -- python batch_jobs/generate_candidates.py --config ...
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer

from rayml.batch import CandidateJobConfig, generate_candidates
from rayml.batch.shards import worker_error
from rayml.config import ConfigError, load_config
from rayml.registry import RegistryError


def main(
    config: Annotated[Path, typer.Option(help="Job config YAML (configs/batch/*.yaml).")],
    users: Annotated[str | None, typer.Option(help="Override `users`.")] = None,
    registry: Annotated[str | None, typer.Option(help="Override `registry`.")] = None,
    output: Annotated[str | None, typer.Option(help="Override `output`.")] = None,
    alias: Annotated[str | None, typer.Option(help="Override `alias` (version or alias).")] = None,
    force: Annotated[bool, typer.Option(help="Recompute even if the output is up to date.")] = False,
) -> None:
    overrides = {k: v for k, v in {"users": users, "registry": registry, "output": output, "alias": alias}.items() if v}
    try:
        job = load_config(config, CandidateJobConfig, overrides)
        summary = generate_candidates(job, force=force)
    except (ConfigError, RegistryError, FileNotFoundError, ValueError) as exc:
        typer.echo(f"error: {config}: {exc}" if not isinstance(exc, ConfigError) else f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    except Exception as exc:  # a worker that cannot load the model (e.g. a registry path only the driver has)
        cause = worker_error(exc, RegistryError)
        if cause is None:
            raise
        typer.echo(f"error: {cause}", err=True)
        raise typer.Exit(2) from None
    print(json.dumps(asdict(summary)))


if __name__ == "__main__":
    typer.run(main)
