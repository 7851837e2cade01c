"""``rayml deploy``: render cluster descriptions (Ray cluster launcher YAML, KubeRay manifests) from rayml's configs."""

from __future__ import annotations

import typer

deploy_app = typer.Typer(help="Cluster and Kubernetes deployment descriptions.", no_args_is_help=True)
