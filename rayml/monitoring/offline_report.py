"""The offline report: the shipped preset, data quality and PSI of ``current`` against ``reference``, rendered by
:mod:`rayml.monitoring.report` (``rayml monitor report``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from rayml.monitoring.delayed import performance_points
from rayml.monitoring.online import MonitorConfig, drift_rows, evaluate_window, schema_of
from rayml.monitoring.presets import SchemaMismatch
from rayml.monitoring.report import build_summary, render_report


def read_frame(path: str | Path) -> pd.DataFrame:
    """A Parquet file or directory, or a CSV file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or directory")
    return pd.read_csv(path) if path.suffix == ".csv" else pd.read_parquet(path)


def read_performance(path: str | Path) -> list[dict[str, Any]]:
    """Performance points from a JSON file of monitor results: a list of results, an object with ``results``
    (``GET /admin/monitor``), or the monitor's state file. Raises ValueError naming the file and what is wrong."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not readable JSON ({exc})") from None
    results = data.get("results") if isinstance(data, dict) else data
    if not isinstance(results, list) or not all(isinstance(r, dict) for r in results):
        raise ValueError(f"{path}: key 'results' must be a list of monitor results (GET /admin/monitor)")
    try:
        return performance_points(results)
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{path}: a result lacks {exc} (kind, status, version, window_start)") from None


def quality_rows(quality: dict[str, Any]) -> list[dict[str, Any]]:
    keys = ("missing_rate", "out_of_range_rate", "cardinality", "new_category_rate")
    return [{"feature": feature, **{k: values.get(k) for k in keys}}
            for feature, values in (quality.get("features") or {}).items()]


def write_report(reference: pd.DataFrame, current: pd.DataFrame, out_html: Path, out_json: Path,
                 names: tuple[str, str] = ("reference", "current"), alpha: float = 0.01,
                 performance: list[dict[str, Any]] | None = None) -> dict[str, Any]:
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
                            notes=notes, performance=performance)
    render_report(summary, out_html, out_json)
    return dict(summary)
