"""Push the latest feature values into the online store, incrementally, on Ray Data.

Run locally:          python batch_jobs/materialize_features.py --config configs/features/demo.yaml
Submit to a cluster:  ray job submit --working-dir . -- python batch_jobs/materialize_features.py --config ...
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from rayml.config import ConfigError, init_ray
from rayml.features.definitions import load_feature_repo
from rayml.features.materialize import materialize_view
from rayml.features.redis_store import OnlineStoreUnavailable


def main(
    config: Annotated[Path, typer.Option(help="Feature repo YAML (configs/features/*.yaml).")],
    state_dir: Annotated[Path, typer.Option(help="Watermarks, and the embedded store's snapshots.")] = Path(".rayml/demo/online"),
    view: Annotated[list[str] | None, typer.Option(help="Views to materialize (default: all).")] = None,
) -> None:
    try:
        repo = load_feature_repo(config)
        names = view or sorted(repo.views)
        unknown = [v for v in names if v not in repo.views]
        if unknown:
            raise ConfigError(f"{config}: unknown views {unknown} (views: {sorted(repo.views)})")
        init_ray()
        for name in names:
            print(json.dumps(materialize_view(repo, name, state_dir).to_dict()))
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    except OnlineStoreUnavailable as exc:
        typer.echo(f"error: online store unavailable: {exc}", err=True)
        raise typer.Exit(3) from None


if __name__ == "__main__":
    sys.exit(typer.run(main))
