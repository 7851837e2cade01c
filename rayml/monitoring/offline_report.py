"""The offline report: the shipped preset, data quality and PSI of ``current`` against ``reference``, rendered by
:mod:`rayml.monitoring.report` (``rayml monitor report``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from rayml.monitoring.online import MonitorConfig, drift_rows, evaluate_window, schema_of
from rayml.monitoring.presets import SchemaMismatch
from rayml.monitoring.report import build_summary, render_report


def read_frame(path: str | Path) -> pd.DataFrame:
    """A Parquet file or directory, or a CSV file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or directory")
    return pd.read_csv(path) if path.suffix == ".csv" else pd.read_parquet(path)


def quality_rows(quality: dict[str, Any]) -> list[dict[str, Any]]:
    keys = ("missing_rate", "out_of_range_rate", "cardinality", "new_category_rate")
    return [{"feature": feature, **{k: values.get(k) for k in keys}}
            for feature, values in (quality.get("features") or {}).items()]


def write_report(reference: pd.DataFrame, current: pd.DataFrame, out_html: Path, out_json: Path,
                 names: tuple[str, str] = ("reference", "current"), alpha: float = 0.01) -> dict[str, Any]:
    """Test, summarise and render; returns the summary. Raises :class:`SchemaMismatch` naming the columns."""
    missing, extra = sorted(set(reference.columns) - set(current.columns)), \
        sorted(set(current.columns) - set(reference.columns))
    if missing or extra:
        raise SchemaMismatch(missing=missing, extra=extra)
    config = MonitorConfig(state_dir=str(out_html.parent), alpha=alpha)
    notes = []
    if len(reference) and len(current):
        result = {"version": "offline", **evaluate_window(reference, current, config)}
        drift, quality = drift_rows(result), quality_rows(result["quality"])
    else:
        drift, quality = [], []
        notes.append("an empty window: nothing was tested")
    summary = build_summary(reference, current, dict(schema_of(reference)), drift, quality, names=names,
                            notes=notes)
    render_report(summary, out_html, out_json)
    return dict(summary)
