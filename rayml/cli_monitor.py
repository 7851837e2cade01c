"""``rayml monitor report``: a self-contained HTML drift and quality report of two datasets."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

monitor_app = typer.Typer(help="Monitoring: offline reports.", no_args_is_help=True)
console = Console(soft_wrap=True)


@monitor_app.command("report")
def report(
    reference: Annotated[Path, typer.Option(help="Reference rows: Parquet (file or folder) or CSV.")],
    current: Annotated[Path, typer.Option(help="Current rows, same columns.")],
    out: Annotated[Path, typer.Option(help="The HTML file to write (a JSON summary goes beside it).")],
    alpha: Annotated[float, typer.Option(help="Family-wise level over the features.")] = 0.01,
    performance: Annotated[Path | None, typer.Option(
        help="Monitor results as JSON (GET /admin/monitor, or the monitor's monitor_state.json): "
        "performance over time, delayed and estimated.")] = None,
) -> None:
    """Drift (the shipped preset, Holm-corrected), PSI and data quality, with per-feature overlays."""
    from rayml.monitoring.offline_report import read_frame, read_performance, write_report
    from rayml.monitoring.presets import SchemaMismatch

    try:
        frames = read_frame(reference), read_frame(current)
    except (FileNotFoundError, OSError, ValueError) as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(2) from None
    try:
        points = read_performance(performance) if performance is not None else None
    except ValueError as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(2) from None
    try:
        summary = write_report(frames[0], frames[1], out, out.with_suffix(".json"),
                               names=(reference.name, current.name), alpha=alpha, performance=points)
    except SchemaMismatch as exc:
        console.print(f"[red]error:[/red] {current}: {exc}", highlight=False)
        raise typer.Exit(2) from None
    drifted = sorted({row["feature"] for row in summary["drift"] if row["drifted"] and row["test"] != "psi"})
    console.print(f"wrote {out} and {out.with_suffix('.json')}: {len(summary['features'])} features, "
                  f"drifted: {', '.join(drifted) or 'none'}{'  (empty window)' if summary['empty'] else ''}")
