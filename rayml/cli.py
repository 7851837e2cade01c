"""The ``rayml`` command line: build worlds, train models, inspect and move registry aliases."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from rayml.cli_deploy import deploy_app
from rayml.cli_experiment import experiment_app
from rayml.cli_monitor import monitor_app
from rayml.cli_rollout import rollout_app, shadow_app
from rayml.config import ConfigError, load_config
from rayml.registry import ModelRegistry, RegistryError

app = typer.Typer(help="rayml: run ML models in production on Ray.", no_args_is_help=True, add_completion=False)
world_app = typer.Typer(help="Synthetic worlds.", no_args_is_help=True)
models_app = typer.Typer(help="Train and publish models.", no_args_is_help=True)
registry_app = typer.Typer(help="Model registry.", no_args_is_help=True)
features_app = typer.Typer(help="Feature store checks.", no_args_is_help=True)
app.add_typer(world_app, name="world")
app.add_typer(models_app, name="models")
app.add_typer(registry_app, name="registry")
app.add_typer(features_app, name="features")
app.add_typer(rollout_app, name="rollout")
app.add_typer(shadow_app, name="shadow")
app.add_typer(experiment_app, name="experiment")
app.add_typer(monitor_app, name="monitor")
app.add_typer(deploy_app, name="deploy")
console = Console(soft_wrap=True)

RegistryOpt = Annotated[str, typer.Option(
    "--registry", help="Registry root: a directory or a URI (s3://bucket/prefix; docs/registry-uri.md).")]
DEFAULT_REGISTRY = ".rayml/demo/registry"


def _fail(message: str) -> typer.Exit:
    console.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(2)


@world_app.command("build")
def world_build(
    config: Annotated[Path, typer.Argument(help="World config YAML (configs/world/*.yaml).")],
    out: Annotated[Path, typer.Option(help="Output directory.")],
    force: Annotated[bool, typer.Option(help="Rebuild even if the same world exists.")] = False,
    events: Annotated[bool, typer.Option(help="Write the impression log.")] = True,
) -> None:
    """Build a synthetic world (reused when ``out`` already holds the same config)."""
    from rayml.world import World, WorldConfig, WorldNotFoundError, build_world

    try:
        cfg = load_config(config, WorldConfig)
    except ConfigError as exc:
        raise _fail(str(exc)) from None
    if not force:
        try:
            existing = World(out)
            if existing.config == cfg and existing.has_events == (events and cfg.impressions_per_user > 0):
                console.print(f"world at {out} is up to date ({existing.meta['n_events']:,} events); reusing it")
                return
        except WorldNotFoundError:
            pass
    try:
        summary = build_world(cfg, out, events=events)
    except FileExistsError as exc:
        raise _fail(str(exc)) from None
    console.print(
        f"built world at {out}: {summary.n_users:,} users, {summary.n_items:,} items, "
        f"{summary.n_events:,} events, CTR {summary.ctr:.3f}"
    )


@models_app.command("train")
def models_train(
    config: Annotated[Path, typer.Argument(help="Models config YAML (configs/models/*.yaml).")],
    world: Annotated[Path, typer.Option(help="World directory to train on.")],
    registry: RegistryOpt = DEFAULT_REGISTRY,
    alias: Annotated[str, typer.Option(help="Alias to point at the new versions.")] = "production",
    force: Annotated[bool, typer.Option(help="Train even if `alias` already serves models of this world.")] = False,
) -> None:
    """Train the ranker and the two-tower retriever, export to ONNX, register, and set ``alias``."""
    from rayml.models import RANKER, RETRIEVER, ModelsConfig, train_and_publish
    from rayml.models.publish import world_lineage
    from rayml.world import World, WorldNotFoundError

    try:
        cfg = load_config(config, ModelsConfig)
        w = World(world)
    except (ConfigError, WorldNotFoundError) as exc:
        raise _fail(str(exc)) from None
    reg = ModelRegistry(registry)
    if not force:
        digest = world_lineage(w)["world_digest"]
        try:
            current = [reg.metadata(m, alias) for m in (RANKER, RETRIEVER)]
            if all(v.get("lineage", {}).get("world_digest") == digest and v.get("params") == p
                   for v, p in zip(current, (cfg.ranker.model_dump(mode="json"), cfg.retriever.model_dump(mode="json")), strict=True)):
                console.print(f"{alias}: ranker v{current[0]['version']} and retriever v{current[1]['version']} already trained on this world; reusing them")
                return
        except RegistryError:
            pass
    try:
        result = train_and_publish(w, cfg, reg, alias=alias)
    except RuntimeError as exc:  # e.g. device: cuda on a machine without one
        raise _fail(f"{config}: {exc}") from None
    except (WorldNotFoundError, ValueError) as exc:
        raise _fail(f"cannot train on {world}: {exc}") from None
    for version, report in ((result.ranker, result.ranker_report), (result.retriever, result.retriever_report)):
        console.print(
            f"registered {version.label} → {alias}: holdout AUC {report.holdout_auc:.4f}, "
            f"parity {version.metadata['parity']['max_abs_diff']:.1e}, device {report.device}"
        )


@models_app.command("train-scorer")
def models_train_scorer(
    world: Annotated[Path, typer.Option(help="World directory to train on.")],
    registry: RegistryOpt = DEFAULT_REGISTRY,
    alias: Annotated[str, typer.Option(help="Alias to point at the new version.")] = "production",
    epochs: Annotated[int, typer.Option(min=1, help="Passes over the impressions.")] = 2,
    force: Annotated[bool, typer.Option(help="Train even if `alias` already holds a scorer of this world.")] = False,
) -> None:
    """Train the user-propensity entity scorer (P(click | user)) that the batch scoring job runs."""
    from rayml.models.config import TrainLoop
    from rayml.models.entity_scorer import PROPENSITY, publish_entity_scorer, train_user_propensity
    from rayml.models.publish import world_lineage
    from rayml.world import World, WorldNotFoundError

    try:
        w = World(world)
    except WorldNotFoundError as exc:
        raise _fail(str(exc)) from None
    reg = ModelRegistry(registry)
    lineage = world_lineage(w)
    if not force:
        try:
            current = reg.metadata(PROPENSITY, alias)
            if current.get("lineage", {}).get("world_digest") == lineage["world_digest"]:
                console.print(f"{alias}: {PROPENSITY} v{current['version']} already trained on this world; reusing it")
                return
        except RegistryError:
            pass
    loop = TrainLoop(epochs=epochs, batch_size=4096)
    model, encoder, report, sample = train_user_propensity(w, loop)
    version = publish_entity_scorer(reg, PROPENSITY, model, encoder, sample, {
        "metrics": {"holdout_auc": report.holdout_auc}, "training": report.to_dict(),
        "params": {"train": loop.model_dump(mode="json")}, "lineage": lineage,
    })
    reg.set_alias(PROPENSITY, alias, version.version)
    console.print(f"registered {version.label} → {alias}: holdout AUC {report.holdout_auc:.4f}, "
                  f"parity {version.metadata['parity']['max_abs_diff']:.1e}, device {report.device}")


@models_app.command("evaluate")
def models_evaluate(
    world: Annotated[Path, typer.Option(help="World whose held-out users and truth are used.")],
    registry: RegistryOpt = DEFAULT_REGISTRY,
    teacher: Annotated[str, typer.Option(help="Teacher version or alias.")] = "production",
    student: Annotated[str, typer.Option(help="Student ranker version or alias.")] = "production",
    users: Annotated[int, typer.Option(help="Held-out users ranked over every item.")] = 500,
    out: Annotated[Path | None, typer.Option(help="Also write the table: .md for markdown, else JSON.")] = None,
) -> None:
    """Teacher vs student fp32 vs student int8: params, file size, NDCG@10, AUC, ORT latency (1 thread)."""
    from rayml.models.distill import evaluate_registered
    from rayml.models.evaluate import markdown_table
    from rayml.world import World, WorldNotFoundError

    try:
        rows = evaluate_registered(World(world), ModelRegistry(registry), teacher, student, users)
    except (WorldNotFoundError, RegistryError) as exc:
        raise _fail(str(exc)) from None
    table = Table("model", "version", "params", "file KB", "NDCG@10", "AUC", "µs batch 1", "µs batch 256")
    for r in rows:
        table.add_row(r.name, r.version, f"{r.params:,}", f"{r.file_kb}", f"{r.ndcg10:.4f}", f"{r.auc:.4f}",
                      f"{r.latency_b1_us}", f"{r.latency_b256_us}")
    console.print(table)
    if out:
        out.write_text(markdown_table(rows) if out.suffix == ".md" else json.dumps([r.to_dict() for r in rows], indent=1))
        console.print(f"wrote {out}")


@registry_app.command("list")
def registry_list(registry: RegistryOpt = DEFAULT_REGISTRY) -> None:
    """Every model version with its aliases and headline metric."""
    reg = ModelRegistry(registry)
    table = Table("model", "version", "aliases", "holdout AUC", "parity", "created")
    for name in reg.models():
        aliases = reg.aliases(name)
        for number in reg.versions(name):
            try:
                meta = reg.metadata(name, number)
            except RegistryError as exc:
                table.add_row(name, str(number), "", "-", f"corrupt: {exc}", "-")
                continue
            names = ", ".join(a for a, v in sorted(aliases.items()) if v == number)
            auc = meta.get("metrics", {}).get("holdout_auc")
            table.add_row(
                name, str(number), names, f"{auc:.4f}" if auc is not None else "-",
                "ok" if meta.get("parity", {}).get("passed") else "FAILED", meta["created_at"],
            )
    console.print(table)


@registry_app.command("show")
def registry_show(
    model: Annotated[str, typer.Argument(help="Model name.")],
    version: Annotated[str, typer.Argument(help="Version number or alias.")] = "production",
    registry: RegistryOpt = DEFAULT_REGISTRY,
) -> None:
    """Metadata of one version (checksums verified)."""
    try:
        v = ModelRegistry(registry).get(model, version)
    except RegistryError as exc:
        raise _fail(str(exc)) from None
    console.print_json(json.dumps(v.metadata))


@registry_app.command("promote")
def registry_promote(
    model: Annotated[str, typer.Argument(help="Model name.")],
    version: Annotated[str, typer.Argument(help="Version number or alias to promote.")],
    alias: Annotated[str, typer.Option(help="Alias to move.")] = "production",
    registry: RegistryOpt = DEFAULT_REGISTRY,
) -> None:
    """Point an alias at a version (refused if the version is missing, corrupt, or failed parity)."""
    reg = ModelRegistry(registry)
    try:
        v = reg.get(model, version)
        if not v.metadata.get("parity", {}).get("passed", False):
            raise RegistryError(f"{v.label} failed its ONNX parity check; refusing to promote it")
        reg.set_alias(model, alias, v.version, reason="promote")
    except RegistryError as exc:
        raise _fail(str(exc)) from None
    console.print(f"{model}: {alias} → v{v.version}")


@registry_app.command("rollback")
def registry_rollback(
    model: Annotated[str, typer.Argument(help="Model name.")],
    alias: Annotated[str, typer.Option(help="Alias to roll back.")] = "production",
    registry: RegistryOpt = DEFAULT_REGISTRY,
) -> None:
    """Move an alias back to the version it pointed at before its latest move."""
    try:
        number = ModelRegistry(registry).rollback(model, alias)
    except RegistryError as exc:
        raise _fail(str(exc)) from None
    console.print(f"{model}: {alias} → v{number} (rolled back)")


@features_app.command("skew")
def features_skew(
    repo: Annotated[Path, typer.Option(help="Feature repo YAML the app served with.")],
    log: Annotated[Path, typer.Option(help="Served-feature log directory (args.feature_log.path).")],
    events: Annotated[Path | None, typer.Option(help="Event log for the real-time windows (args.event_log).")] = None,
    out: Annotated[Path | None, typer.Option(help="Also write the report as JSON here.")] = None,
    prometheus: Annotated[Path | None, typer.Option(help="Also write the rates in Prometheus text format.")] = None,
    fail_above: Annotated[float | None, typer.Option(help="Exit 1 when any feature's mismatch rate is above.")] = None,
) -> None:
    """Train/serve skew: recompute logged served features offline and report per-feature mismatch rates."""
    from rayml.features.definitions import load_feature_repo
    from rayml.features.skew import skew_report, write_prometheus

    try:
        feature_repo = load_feature_repo(repo)
    except ConfigError as exc:
        raise _fail(str(exc)) from None
    for name, path in (("--log", log), ("--events", events)):
        if path is not None and not path.exists():
            raise _fail(f"{name} {path} does not exist")
    try:
        report = skew_report(feature_repo, log, events)
    except ValueError as exc:
        raise _fail(str(exc)) from None
    table = Table(title=f"train/serve skew: {report.rows:,} served rows, {report.requests:,} requests")
    for column in ("feature", "rows", "mismatches", "rate", "example (served → offline)"):
        table.add_column(column, justify="left" if column.startswith(("feature", "example")) else "right")
    for skew in sorted(report.features, key=lambda f: -f.rate):
        example = f"{skew.served_example!r} → {skew.offline_example!r}" if skew.mismatches else ""
        color = "red" if skew.rate > (fail_above or 0) else "green"
        table.add_row(skew.feature, f"{skew.rows:,}", f"{skew.mismatches:,}", f"[{color}]{skew.rate:.4f}[/{color}]", example)
    console.print(table)
    for note in report.skipped:
        console.print(f"[yellow]skipped:[/yellow] {note}")
    if out is not None:
        out.write_text(json.dumps(report.to_dict(), indent=1, default=str))
    if prometheus is not None:
        write_prometheus(report, prometheus)
    if fail_above is not None and report.max_rate > fail_above:
        console.print(f"[red]skew above {fail_above}:[/red] max mismatch rate {report.max_rate:.4f}")
        raise typer.Exit(1)


IngressOpt = Annotated[
    str | None, typer.Option(help="haproxy (default) or proxy (Ray Serve's HTTP proxy); else $RAYML_INGRESS.")
]


@app.command("serve")
def serve_cmd(
    config: Annotated[Path, typer.Argument(help="Serve config YAML.")] = Path("serve_apps/recommender.yaml"),
    user_id: Annotated[int, typer.Option(help="User id used in the printed example request.")] = 42,
    ingress: IngressOpt = None,
) -> None:
    """`serve run CONFIG` in the foreground; prints a ready-to-paste curl once it answers. SIGTERM stops all."""
    from rayml.serving.launcher import serve_foreground

    try:
        code = serve_foreground(config, json.dumps({"user_id": user_id, "k": 5}), ingress=ingress)
    except ConfigError as exc:
        raise _fail(str(exc)) from None
    raise typer.Exit(code)


@app.command("ingress-env")
def ingress_env_cmd(
    ingress: IngressOpt = None,
    state_dir: Annotated[Path, typer.Option(help="This cluster's HAProxy files (config, sockets).")] = Path(
        ".rayml/haproxy"),
) -> None:
    """Print `export` lines for the ingress, for `eval "$(rayml ingress-env)"` before `serve run` or `ray start`."""
    import shlex

    from rayml.serving.ingress import chosen_ingress, ingress_env

    try:
        env = ingress_env(chosen_ingress(ingress), state_dir)
    except ConfigError as exc:
        raise _fail(str(exc)) from None
    for key, value in env.items():
        print(f"export {key}={shlex.quote(value)}")


def main() -> None:
    app()
