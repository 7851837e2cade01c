"""Copy the candidate job's output into the online store (Redis) as a new run of the candidate view.

Run locally:           python batch_jobs/materialize_candidates.py --config configs/batch/candidates_store.yaml
Submit to a cluster:   ray job submit --working-dir . -- python batch_jobs/materialize_candidates.py --config ...

Serving replicas with ``candidates_store: online`` follow the published run (see docs/candidates-store.md).
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer

from rayml.batch.candidate_store import load_candidate_store_job, materialize_candidates
from rayml.config import ConfigError
from rayml.features.candidates import CandidateEncodingError
from rayml.features.redis_store import OnlineStoreUnavailable


def main(
    config: Annotated[Path, typer.Option(help="Job config YAML (configs/batch/candidates_store.yaml).")],
    candidates: Annotated[str | None, typer.Option(help="Override `candidates` (the candidate job's output).")] = None,
    features: Annotated[str | None, typer.Option(help="Override `features` (feature repo YAML, Redis store).")] = None,
    force: Annotated[bool, typer.Option(help="Write a new run even if the served one came from the same output.")] = False,
) -> None:
    overrides = {k: v for k, v in {"candidates": candidates, "features": features}.items() if v}
    try:
        job, repo = load_candidate_store_job(config, overrides)
        summary = materialize_candidates(job, repo, force=force)
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    except CandidateEncodingError as exc:
        typer.echo(f"error: {config}: {exc}", err=True)
        raise typer.Exit(2) from None
    except OnlineStoreUnavailable as exc:
        typer.echo(f"error: online store unavailable: {exc}", err=True)
        raise typer.Exit(3) from None
    print(json.dumps(asdict(summary)))


if __name__ == "__main__":
    sys.exit(typer.run(main))
