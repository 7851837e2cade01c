"""Distil the teacher ranker into a small int8 student and register both.

Run locally:          python batch_jobs/distill.py --config configs/distill/demo.yaml
Submit to a cluster:  ray job submit --working-dir . -- python batch_jobs/distill.py --config ... (absolute paths)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from rayml.config import ConfigError, load_config
from rayml.models.distill import run_distillation
from rayml.models.distill_config import DistillConfig
from rayml.registry import RegistryError
from rayml.world import WorldNotFoundError


def main(
    config: Annotated[Path, typer.Option(help="Distillation config YAML (configs/distill/*.yaml).")],
    world: Annotated[str | None, typer.Option(help="Override `world`.")] = None,
    registry: Annotated[str | None, typer.Option(help="Override `registry`.")] = None,
    storage_path: Annotated[str | None, typer.Option(help="Override `storage_path`.")] = None,
    run_name: Annotated[str | None, typer.Option(help="Override `run_name` (same name = resume).")] = None,
    report: Annotated[Path | None, typer.Option(help="Also write the evaluation as JSON here.")] = None,
) -> None:
    overrides = {k: v for k, v in {"world": world, "registry": registry, "storage_path": storage_path,
                                   "run_name": run_name}.items() if v}
    try:
        job = load_config(config, DistillConfig, overrides)
        result = run_distillation(job)
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    except (RegistryError, WorldNotFoundError, FileNotFoundError) as exc:
        typer.echo(f"error: {config}: {exc}", err=True)
        raise typer.Exit(2) from None
    print(result.table())
    if report:
        report.write_text(json.dumps(result.to_dict(), indent=1))


if __name__ == "__main__":
    sys.exit(typer.run(main))
