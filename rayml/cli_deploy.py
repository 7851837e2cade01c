"""``rayml deploy``: render cluster descriptions (Ray cluster launcher YAML, KubeRay manifests) from rayml's configs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from rayml.config import ConfigError

deploy_app = typer.Typer(help="Cluster and Kubernetes deployment descriptions.", no_args_is_help=True)

SpecOpt = Annotated[Path, typer.Option("--config", help="Deploy spec (configs/deploy/*.yaml).")]
RepoOpt = Annotated[Path, typer.Option("--repo", help="Repository root: configs are read and cluster/ written here.")]
DEFAULT_SPEC = Path("configs/deploy/production.yaml")


@deploy_app.command("render")
def render_cmd(
    config: SpecOpt = DEFAULT_SPEC,
    repo: RepoOpt = Path("."),
    check: Annotated[bool, typer.Option("--check", help="Write nothing; exit 1 with a diff if files differ.")] = False,
) -> None:
    """Check the spec, the Serve config and the jobs' configs, then write cluster/ray-cluster.aws.yaml and cluster/k8s/."""
    from rayml.deploy.render import diff, render, write

    try:
        rendered = render(config, repo)
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    if check:
        changes = diff(rendered, repo)
        if changes:
            typer.echo(changes, nl=False)
            typer.echo("error: committed files differ from the rendered ones; run `rayml deploy render`", err=True)
            raise typer.Exit(1)
        typer.echo(f"{len(rendered.files)} files match {config}")
        return
    changed = write(rendered, repo)
    for rel in changed:
        typer.echo(f"wrote {rel}")
    typer.echo(f"{len(rendered.files)} files rendered, {len(changed)} changed")
