"""The offline monitoring report: one self-contained HTML page and a JSON summary.

``build_summary`` turns a reference and a current window (two DataFrames), a schema and the results the
drift, quality and performance code computed into a :class:`ReportSummary`; ``render_report`` writes it as

- an HTML page with inline CSS and inline SVG charts drawn here in Python: no JavaScript, no CDN, no web
  fonts, no URL of any kind, so it opens from a file, an e-mail attachment or an air-gapped machine;
- the same summary as JSON (``NaN`` written as ``null``), for machines and for diffs between runs.

The summary schema (every key is required; ``null`` where a value is unknown)::

    {"title": str, "generated_at": ISO-8601 str,
     "reference": {"name": str, "rows": int}, "current": {"name": str, "rows": int},
     "features": {name: {"kind": "numeric" | "categorical",
                         "reference_hist": {"edges": [float, ...], "shares": [float, ...]}      # numeric
                                         | {"categories": [str, ...], "shares": [float, ...]},  # categorical
                         "current_hist": same shape as reference_hist}},
     "drift": [{"feature", "test", "statistic", "p_value" | null, "adjusted_p_value" | null,
                "threshold", "drifted": bool}],
     "quality": [{"feature", "missing_rate", "out_of_range_rate", "cardinality", "new_category_rate"}],
     "performance": [{"window_start": ISO str, "metric": str, "delayed": float | null,
                      "estimated": float | null, "lo": float | null, "hi": float | null}],
     "empty": bool, "notes": [str]}

Numeric histograms have ``len(edges) == len(shares) + 1``; both windows share the reference's edges, and
current values outside the reference's range are counted in the end bins (the quality table's
``out_of_range_rate`` says how many). Categorical histograms list the reference's top categories (at most
20) plus ``"other"``. Shares are fractions of the window's non-missing values. ``empty`` is true when either
window has no rows; the page then says so in a banner and draws no distributions for that window.

This module imports numpy and pandas only; it never imports ``rayml.serving``.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, NotRequired, TypedDict, cast

import numpy as np
import pandas as pd

__all__ = [
    "CategoricalHist",
    "DriftRow",
    "FeatureSummary",
    "NumericHist",
    "PerformancePoint",
    "QualityRow",
    "ReportSummary",
    "WindowInfo",
    "build_summary",
    "render_report",
]

N_BINS = 20
TOP_CATEGORIES = 20
OTHER = "other"

NUMERIC_KINDS = frozenset({"numeric", "number", "float", "int", "integer", "double", "continuous"})
CATEGORICAL_KINDS = frozenset(
    {"categorical", "category", "string", "str", "bool", "boolean", "discrete"}
)


# -- the schema ---------------------------------------------------------------------------------------------


class WindowInfo(TypedDict):
    """One window of data: a display name and its row count."""

    name: str
    rows: int


class NumericHist(TypedDict):
    """A numeric histogram: ``len(edges) == len(shares) + 1``; shares sum to 1 (or are all 0 when empty)."""

    edges: list[float]
    shares: list[float]


class CategoricalHist(TypedDict):
    """A categorical histogram: one share per category (the last may be ``"other"``)."""

    categories: list[str]
    shares: list[float]


class FeatureSummary(TypedDict):
    """Both windows' distributions of one feature, on the same bins or categories."""

    kind: Literal["numeric", "categorical"]
    reference_hist: NumericHist | CategoricalHist
    current_hist: NumericHist | CategoricalHist


class DriftRow(TypedDict):
    """One drift test on one feature (from ``rayml.monitoring.detectors`` / ``presets``)."""

    feature: str
    test: str
    statistic: float | None
    p_value: float | None
    adjusted_p_value: float | None
    threshold: float | None
    drifted: bool


class QualityRow(TypedDict):
    """Data-quality rates of one feature in the current window (from ``rayml.monitoring.quality``)."""

    feature: str
    missing_rate: float | None
    out_of_range_rate: float | None
    cardinality: int | None
    new_category_rate: float | None


class PerformancePoint(TypedDict):
    """One metric in one time window: delayed (from labels) and estimated value, with the interval."""

    window_start: str
    metric: str
    delayed: float | None
    estimated: float | None
    lo: float | None
    hi: float | None


class ReportSummary(TypedDict):
    """Everything the report shows; the JSON file is exactly this."""

    title: str
    generated_at: str
    reference: WindowInfo
    current: WindowInfo
    features: dict[str, FeatureSummary]
    drift: list[DriftRow]
    quality: list[QualityRow]
    performance: list[PerformancePoint]
    empty: bool
    notes: list[str]
    bins: NotRequired[str]


# -- building the summary -----------------------------------------------------------------------------------


def _kind(declared: str) -> Literal["numeric", "categorical"]:
    """Map a schema type name onto the two kinds the report draws."""
    d = declared.strip().lower()
    if d in NUMERIC_KINDS:
        return "numeric"
    if d in CATEGORICAL_KINDS:
        return "categorical"
    raise ValueError(f"unknown feature kind {declared!r}: use 'numeric' or 'categorical'")


def _num(x: Any) -> float | None:
    """A finite float, or None for missing/NaN/inf values (JSON has no NaN)."""
    if x is None:
        return None
    try:
        f = float(x)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _int(x: Any) -> int | None:
    f = _num(x)
    return None if f is None else int(f)


def _shares(counts: np.ndarray) -> list[float]:
    total = float(counts.sum())
    if total <= 0:
        return [0.0] * len(counts)
    return [float(c) / total for c in counts]


def _finite(values: pd.Series) -> np.ndarray:
    arr = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    return arr[np.isfinite(arr)]


def _numeric_edges(ref: np.ndarray, cur: np.ndarray, bins: str) -> np.ndarray:
    """Bin edges on the reference's range (or its quantiles); the current's range if the reference is empty."""
    base = ref if ref.size else cur
    if base.size == 0:
        return np.array([], dtype=np.float64)
    lo, hi = float(base.min()), float(base.max())
    if lo == hi:
        return np.linspace(lo - 0.5, hi + 0.5, N_BINS + 1)
    if bins == "quantile":
        edges = np.unique(np.quantile(base, np.linspace(0.0, 1.0, N_BINS + 1)))
        if edges.size >= 2:
            return edges
    return np.linspace(lo, hi, N_BINS + 1)


def _numeric_counts(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Counts per bin; values outside [edges[0], edges[-1]] go to the end bins."""
    n = edges.size - 1
    if values.size == 0:
        return np.zeros(n, dtype=np.int64)
    idx = np.clip(np.searchsorted(edges, values, side="right") - 1, 0, n - 1)
    return np.bincount(idx, minlength=n)


def _numeric_feature(ref: pd.Series, cur: pd.Series, bins: str) -> FeatureSummary:
    r, c = _finite(ref), _finite(cur)
    edges = _numeric_edges(r, c, bins)
    if edges.size < 2:
        empty: NumericHist = {"edges": [], "shares": []}
        return {
            "kind": "numeric",
            "reference_hist": empty,
            "current_hist": {"edges": [], "shares": []},
        }
    edge_list = [float(e) for e in edges]
    return {
        "kind": "numeric",
        "reference_hist": {"edges": edge_list, "shares": _shares(_numeric_counts(r, edges))},
        "current_hist": {"edges": list(edge_list), "shares": _shares(_numeric_counts(c, edges))},
    }


def _categorical_feature(ref: pd.Series, cur: pd.Series) -> FeatureSummary:
    r, c = ref.dropna().astype(str), cur.dropna().astype(str)
    base = r if len(r) else c
    counts = base.value_counts()
    # Most frequent first, ties by name, so the order is stable between runs.
    ordered = sorted(counts.items(), key=lambda kv: (-int(kv[1]), str(kv[0])))
    top = [str(k) for k, _ in ordered[:TOP_CATEGORIES] if str(k) != OTHER]
    top_set = set(top)

    def tally(values: pd.Series) -> np.ndarray:
        vc = values.value_counts()
        known = np.array([int(vc.get(k, 0)) for k in top], dtype=np.int64)
        rest = int(len(values) - known.sum())
        return np.append(known, rest)

    rc, cc = tally(r), tally(c)
    cats = [*top, OTHER]
    if rc[-1] == 0 and cc[-1] == 0 and top_set:
        cats, rc, cc = top, rc[:-1], cc[:-1]
    return {
        "kind": "categorical",
        "reference_hist": {"categories": list(cats), "shares": _shares(rc)},
        "current_hist": {"categories": list(cats), "shares": _shares(cc)},
    }


def _drift_row(d: Mapping[str, Any]) -> DriftRow:
    return {
        "feature": str(d["feature"]),
        "test": str(d.get("test", "")),
        "statistic": _num(d.get("statistic")),
        "p_value": _num(d.get("p_value")),
        "adjusted_p_value": _num(d.get("adjusted_p_value")),
        "threshold": _num(d.get("threshold")),
        "drifted": bool(d.get("drifted", False)),
    }


def _quality_row(q: Mapping[str, Any]) -> QualityRow:
    return {
        "feature": str(q["feature"]),
        "missing_rate": _num(q.get("missing_rate")),
        "out_of_range_rate": _num(q.get("out_of_range_rate")),
        "cardinality": _int(q.get("cardinality")),
        "new_category_rate": _num(q.get("new_category_rate")),
    }


def _iso(x: Any) -> str:
    if isinstance(x, datetime | pd.Timestamp):
        return x.isoformat()
    return str(x)


def _performance_point(p: Mapping[str, Any]) -> PerformancePoint:
    return {
        "window_start": _iso(p["window_start"]),
        "metric": str(p["metric"]),
        "delayed": _num(p.get("delayed")),
        "estimated": _num(p.get("estimated")),
        "lo": _num(p.get("lo")),
        "hi": _num(p.get("hi")),
    }


def build_summary(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    schema: dict[str, str],
    drift_results: list[dict[str, Any]],
    quality: list[dict[str, Any]],
    performance: list[dict[str, Any]] | None = None,
    names: tuple[str, str] = ("reference", "current"),
    *,
    title: str = "rayml monitoring report",
    notes: Iterable[str] = (),
    bins: Literal["uniform", "quantile"] = "uniform",
    generated_at: datetime | None = None,
) -> ReportSummary:
    """Compute the histograms and assemble a :class:`ReportSummary`.

    Args:
        reference: the reference window (e.g. the training data or last month).
        current: the window being checked.
        schema: feature name → ``"numeric"`` or ``"categorical"`` (``float``/``int``/``category``/``string``
            are accepted too). Features missing from a frame are treated as all-missing.
        drift_results: one dict per (feature, test) in the :class:`DriftRow` shape.
        quality: one dict per feature in the :class:`QualityRow` shape.
        performance: one dict per (window, metric) in the :class:`PerformancePoint` shape.
        names: display names of the reference and the current window.
        title: the page title.
        notes: free-text notes shown under the title (e.g. which preset ran).
        bins: numeric bins of equal width on the reference's range (``uniform``) or on its quantiles.
        generated_at: the timestamp to record (default: now, UTC).
    """
    if bins not in ("uniform", "quantile"):
        raise ValueError(f"bins must be 'uniform' or 'quantile', not {bins!r}")
    features: dict[str, FeatureSummary] = {}
    for name, declared in schema.items():
        ref = reference[name] if name in reference.columns else pd.Series([], dtype=object)
        cur = current[name] if name in current.columns else pd.Series([], dtype=object)
        if _kind(declared) == "numeric":
            features[name] = _numeric_feature(ref, cur, bins)
        else:
            features[name] = _categorical_feature(ref, cur)

    note_list = [str(n) for n in notes]
    empty = len(reference) == 0 or len(current) == 0
    if len(reference) == 0:
        note_list.append(f"The {names[0]} window is empty (0 rows).")
    if len(current) == 0:
        note_list.append(f"The {names[1]} window is empty (0 rows).")
    when = generated_at or datetime.now(UTC)
    return {
        "title": title,
        "generated_at": when.isoformat(),
        "reference": {"name": names[0], "rows": len(reference)},
        "current": {"name": names[1], "rows": len(current)},
        "features": features,
        "drift": [_drift_row(d) for d in drift_results],
        "quality": [_quality_row(q) for q in quality],
        "performance": [_performance_point(p) for p in (performance or [])],
        "empty": empty,
        "notes": note_list,
        "bins": bins,
    }


# -- SVG drawing --------------------------------------------------------------------------------------------

REF_COLOR = "#4c72b0"
CUR_COLOR = "#dd8452"
DELAYED_COLOR = "#2a7a3b"
ESTIMATED_COLOR = "#7b3fa0"

W, H = 460, 200
PAD_L, PAD_R, PAD_T, PAD_B = 44, 10, 10, 42


def _e(x: Any) -> str:
    """HTML-escape anything, quotes included."""
    return html.escape(str(x), quote=True)


def _f(x: float) -> str:
    """A coordinate, short."""
    return f"{x:.1f}"


def _fmt(x: float | int | None, digits: int = 3) -> str:
    if x is None:
        return "—"
    if isinstance(x, int) and not isinstance(x, bool):
        return str(x)
    ax = abs(x)
    if ax != 0 and (ax < 10**-(digits) or ax >= 1e5):
        return f"{x:.{digits - 1}e}"
    return f"{x:.{digits}g}" if ax >= 1 else f"{x:.{digits}f}"


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.2f} %"


def _axes(y_max: float, y_fmt: str = "share") -> list[str]:
    """Frame, y grid lines and labels (0 … y_max)."""
    parts = []
    x0, x1, y0, y1 = PAD_L, W - PAD_R, PAD_T, H - PAD_B
    for i in range(5):
        v = y_max * i / 4
        y = y1 - (y1 - y0) * i / 4
        parts.append(f'<path d="M{x0} {_f(y)}H{x1}" stroke="#e3e3e3" stroke-width="1"/>')
        label = f"{100 * v:.0f}%" if y_fmt == "share" else _fmt(v, 3)
        parts.append(
            f'<text x="{x0 - 4}" y="{_f(y + 3)}" text-anchor="end" class="tick">{_e(label)}</text>'
        )
    parts.append(f'<path d="M{x0} {y0}V{y1}H{x1}" stroke="#888" fill="none" stroke-width="1"/>')
    return parts


def _svg(parts: Sequence[str], label: str, cls: str, data: Mapping[str, str]) -> str:
    attrs = " ".join(f'data-{k}="{_e(v)}"' for k, v in data.items())
    return (
        f'<svg class="{cls}" {attrs} viewBox="0 0 {W} {H}" '
        f'width="{W}" height="{H}" role="img" aria-label="{_e(label)}">' + "".join(parts) + "</svg>"
    )


def _no_data(parts: list[str], text: str) -> None:
    parts.append(
        f'<text x="{(PAD_L + W - PAD_R) / 2}" y="{(PAD_T + H - PAD_B) / 2}" text-anchor="middle" '
        f'class="nodata">{_e(text)}</text>'
    )


def _numeric_svg(name: str, fs: FeatureSummary) -> str:
    ref = cast(NumericHist, fs["reference_hist"])
    cur = cast(NumericHist, fs["current_hist"])
    edges = ref["edges"] or cur["edges"]
    rs, cs = ref["shares"], cur["shares"]
    has_data = len(edges) >= 2 and (sum(rs) > 0 or sum(cs) > 0)
    y_max = max([*rs, *cs, 0.0]) * 1.1 or 1.0
    parts = _axes(y_max)
    if not has_data:
        _no_data(parts, "no data in either window")
        return _svg(parts, f"distribution of {name}: no data", "feature-chart", {"feature": name})
    x0, x1, y0, y1 = PAD_L, W - PAD_R, PAD_T, H - PAD_B
    lo, hi = edges[0], edges[-1]

    def sx(v: float) -> float:
        return x0 + (x1 - x0) * (v - lo) / (hi - lo)

    def sy(v: float) -> float:
        return y1 - (y1 - y0) * v / y_max

    # Reference: filled bars.
    for i, s in enumerate(rs):
        if s <= 0:
            continue
        xa, xb = sx(edges[i]), sx(edges[i + 1])
        parts.append(
            f'<rect class="ref-bar" x="{_f(xa)}" y="{_f(sy(s))}" width="{_f(max(xb - xa - 0.5, 0.5))}" '
            f'height="{_f(y1 - sy(s))}" fill="{REF_COLOR}" fill-opacity="0.45"/>'
        )
    # Current: a step outline on the same bins.
    if sum(cs) > 0:
        d = [f"M{_f(sx(edges[0]))} {_f(y1)}"]
        for i, s in enumerate(cs):
            d.append(f"V{_f(sy(s))}H{_f(sx(edges[i + 1]))}")
        d.append(f"V{_f(y1)}")
        parts.append(
            f'<path class="cur-step" d="{"".join(d)}" fill="none" stroke="{CUR_COLOR}" stroke-width="2"/>'
        )
    for v in (lo, (lo + hi) / 2, hi):
        parts.append(
            f'<text x="{_f(sx(v))}" y="{y1 + 14}" text-anchor="middle" class="tick">{_e(_fmt(v))}</text>'
        )
    return _svg(
        parts,
        f"distribution of {name}: reference bars, current outline",
        "feature-chart",
        {"feature": name},
    )


def _categorical_svg(name: str, fs: FeatureSummary) -> str:
    ref = cast(CategoricalHist, fs["reference_hist"])
    cur = cast(CategoricalHist, fs["current_hist"])
    cats = ref["categories"] or cur["categories"]
    rs, cs = ref["shares"], cur["shares"]
    has_data = bool(cats) and (sum(rs) > 0 or sum(cs) > 0)
    y_max = max([*rs, *cs, 0.0]) * 1.1 or 1.0
    parts = _axes(y_max)
    if not has_data:
        _no_data(parts, "no data in either window")
        return _svg(parts, f"distribution of {name}: no data", "feature-chart", {"feature": name})
    x0, x1, y0, y1 = PAD_L, W - PAD_R, PAD_T, H - PAD_B
    slot = (x1 - x0) / len(cats)
    bar = slot * 0.4

    def sy(v: float) -> float:
        return y1 - (y1 - y0) * v / y_max

    for i, cat in enumerate(cats):
        xa = x0 + slot * i + slot * 0.1
        r = rs[i] if i < len(rs) else 0.0
        c = cs[i] if i < len(cs) else 0.0
        parts.append(
            f'<rect class="ref-bar" x="{_f(xa)}" y="{_f(sy(r))}" width="{_f(bar)}" height="{_f(y1 - sy(r))}" '
            f'fill="{REF_COLOR}" fill-opacity="0.75"><title>{_e(cat)} reference {_pct(r)}</title></rect>'
        )
        parts.append(
            f'<rect class="cur-bar" x="{_f(xa + bar)}" y="{_f(sy(c))}" width="{_f(bar)}" height="{_f(y1 - sy(c))}" '
            f'fill="{CUR_COLOR}" fill-opacity="0.85"><title>{_e(cat)} current {_pct(c)}</title></rect>'
        )
        label = cat if len(cat) <= 8 else cat[:7] + "…"
        cx = x0 + slot * (i + 0.5)
        parts.append(
            f'<text x="{_f(cx)}" y="{y1 + 12}" text-anchor="end" class="tick" '
            f'transform="rotate(-35 {_f(cx)} {y1 + 12})">{_e(label)}</text>'
        )
    return _svg(
        parts,
        f"distribution of {name}: reference and current bars",
        "feature-chart",
        {"feature": name},
    )


def _parse_time(s: str) -> float | None:
    try:
        ts = pd.Timestamp(s)
    except (ValueError, TypeError):
        return None
    if ts is pd.NaT:
        return None
    return float(ts.timestamp())


def _line(points: Sequence[tuple[float, float | None]]) -> str:
    """An SVG path through the points; a None value breaks the line."""
    d, pen = [], False
    for x, y in points:
        if y is None:
            pen = False
            continue
        d.append(f"{'L' if pen else 'M'}{_f(x)} {_f(y)}")
        pen = True
    return "".join(d)


def _performance_svg(metric: str, points: list[PerformancePoint]) -> str:
    pts = sorted(points, key=lambda p: (_parse_time(p["window_start"]) or 0.0, p["window_start"]))
    values = [
        v for p in pts for v in (p["delayed"], p["estimated"], p["lo"], p["hi"]) if v is not None
    ]
    x0, x1, y0, y1 = PAD_L, W - PAD_R, PAD_T, H - PAD_B
    if not values:
        empty_parts = _axes(1.0, "value")
        _no_data(empty_parts, "no values in any window")
        return _svg(empty_parts, f"{metric} over time: no data", "perf-chart", {"metric": metric})
    v_lo, v_hi = min(values), max(values)
    span = (v_hi - v_lo) or max(abs(v_hi), 1.0) * 0.1
    v_lo, v_hi = v_lo - 0.1 * span, v_hi + 0.1 * span
    parts: list[str] = []
    for i in range(5):
        v = v_lo + (v_hi - v_lo) * i / 4
        y = y1 - (y1 - y0) * i / 4
        parts.append(f'<path d="M{x0} {_f(y)}H{x1}" stroke="#e3e3e3" stroke-width="1"/>')
        parts.append(
            f'<text x="{x0 - 4}" y="{_f(y + 3)}" text-anchor="end" class="tick">{_e(_fmt(v))}</text>'
        )
    parts.append(f'<path d="M{x0} {y0}V{y1}H{x1}" stroke="#888" fill="none" stroke-width="1"/>')

    n = len(pts)

    def sx(i: int) -> float:
        return (x0 + x1) / 2 if n == 1 else x0 + 8 + (x1 - x0 - 16) * i / (n - 1)

    def sy(v: float | None) -> float | None:
        return None if v is None else y1 - (y1 - y0) * (v - v_lo) / (v_hi - v_lo)

    # The interval band: one polygon per run of windows that have both bounds.
    run: list[tuple[float, float, float]] = []
    runs: list[list[tuple[float, float, float]]] = []
    for i, p in enumerate(pts):
        lo_y, hi_y = sy(p["lo"]), sy(p["hi"])
        if lo_y is None or hi_y is None:
            if run:
                runs.append(run)
            run = []
            continue
        run.append((sx(i), lo_y, hi_y))
    if run:
        runs.append(run)
    for r in runs:
        if len(r) == 1:
            bx, b_lo, b_hi = r[0]
            d = f"M{_f(bx - 3)} {_f(b_hi)}H{_f(bx + 3)}V{_f(b_lo)}H{_f(bx - 3)}Z"
        else:
            top = "".join(
                f"{'M' if j == 0 else 'L'}{_f(x)} {_f(hi)}" for j, (x, _, hi) in enumerate(r)
            )
            bottom = "".join(f"L{_f(x)} {_f(lo)}" for x, lo, _ in reversed(r))
            d = top + bottom + "Z"
        parts.append(
            f'<path class="band" d="{d}" fill="{ESTIMATED_COLOR}" fill-opacity="0.15" stroke="none"/>'
        )
    series = (
        ("estimated", ESTIMATED_COLOR, ' stroke-dasharray="5 3"', [p["estimated"] for p in pts]),
        ("delayed", DELAYED_COLOR, "", [p["delayed"] for p in pts]),
    )
    for key, color, dash, vals in series:
        coords = [(sx(i), sy(v)) for i, v in enumerate(vals)]
        d = _line(coords)
        if d:
            parts.append(
                f'<path class="{key}-line" d="{d}" fill="none" stroke="{color}" stroke-width="2"{dash}/>'
            )
        for px, py in coords:
            if py is not None:
                parts.append(f'<circle cx="{_f(px)}" cy="{_f(py)}" r="2.5" fill="{color}"/>')
    ticks = sorted({0, n // 2, n - 1}) if n > 1 else [0]
    midnight = all(p["window_start"][11:16] in ("", "00:00") for p in pts)
    for i in ticks:
        label = pts[i]["window_start"][: 10 if midnight else 16].replace("T", " ")
        anchor = "start" if i == 0 and n > 1 else "end" if i == n - 1 and n > 1 else "middle"
        parts.append(
            f'<text x="{_f(sx(i))}" y="{y1 + 14}" text-anchor="{anchor}" class="tick">{_e(label)}</text>'
        )
    return _svg(
        parts,
        f"{metric} over time: delayed, estimated and interval",
        "perf-chart",
        {"metric": metric},
    )


# -- the page -----------------------------------------------------------------------------------------------

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;color:#222;
margin:0;padding:24px 32px;background:#fafafa}
h1{font-size:22px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #ddd;
padding-bottom:4px}.meta{color:#555;margin:0 0 12px}
.banner{padding:10px 14px;border-radius:4px;margin:12px 0;font-weight:600}
.banner.empty{background:#fff3cd;border:1px solid #e0c36c;color:#6b5200}
.banner.drift{background:#fde2e1;border:1px solid #e5a3a0;color:#7d1d18}
.banner.ok{background:#e3f4e6;border:1px solid #9fd0a8;color:#1f5b2b}
.notes li{color:#444}
.grid{display:flex;flex-wrap:wrap;gap:16px}
.card{background:#fff;border:1px solid #ddd;border-radius:4px;padding:8px 10px}
.card h3{font-size:14px;margin:0 0 4px}.card .sub{color:#666;font-size:12px}
table{border-collapse:collapse;background:#fff;margin:6px 0}
th,td{border:1px solid #ddd;padding:4px 8px;text-align:right}th{background:#f0f0f0}
td.name,th.name{text-align:left}
tr.drifted td{background:#fde2e1}td.decision.drifted{color:#a01d16;font-weight:700}
td.decision.stable{color:#1f6b2f}
.legend{font-size:12px;color:#444;margin:4px 0}
.sw{display:inline-block;width:12px;height:10px;margin:0 4px 0 10px;vertical-align:middle}
svg text.tick{font-size:10px;fill:#555}svg text.nodata{font-size:13px;fill:#999}
"""


def _legend(items: Sequence[tuple[str, str, str]]) -> str:
    spans = []
    for label, color, style in items:
        spans.append(f'<span class="sw" style="background:{color};{style}"></span>{_e(label)}')
    return f'<div class="legend">{"".join(spans)}</div>'


def _drift_table(rows: list[DriftRow]) -> str:
    if not rows:
        return '<p class="none">No drift tests were run.</p>'
    out = [
        '<table class="drift"><thead><tr><th class="name">feature</th><th class="name">test</th>'
        "<th>score</th><th>p-value</th><th>adjusted p</th><th>threshold</th><th>decision</th>"
        "</tr></thead><tbody>"
    ]
    for r in rows:
        decision = "drifted" if r["drifted"] else "stable"
        cls = "drift-row drifted" if r["drifted"] else "drift-row"
        out.append(
            f'<tr class="{cls}" data-feature="{_e(r["feature"])}" data-test="{_e(r["test"])}">'
            f'<td class="name">{_e(r["feature"])}</td><td class="name">{_e(r["test"])}</td>'
            f"<td>{_e(_fmt(r['statistic']))}</td><td>{_e(_fmt(r['p_value']))}</td>"
            f"<td>{_e(_fmt(r['adjusted_p_value']))}</td><td>{_e(_fmt(r['threshold']))}</td>"
            f'<td class="decision {decision}">{decision}</td></tr>'
        )
    out.append("</tbody></table>")
    return "".join(out)


def _quality_table(rows: list[QualityRow]) -> str:
    if not rows:
        return '<p class="none">No data-quality checks were run.</p>'
    out = [
        '<table class="quality"><thead><tr><th class="name">feature</th><th>missing</th>'
        "<th>out of range</th><th>cardinality</th><th>new categories</th></tr></thead><tbody>"
    ]
    for r in rows:
        out.append(
            f'<tr class="quality-row" data-feature="{_e(r["feature"])}"><td class="name">{_e(r["feature"])}</td>'
            f"<td>{_pct(r['missing_rate'])}</td><td>{_pct(r['out_of_range_rate'])}</td>"
            f"<td>{_e(_fmt(r['cardinality']))}</td><td>{_pct(r['new_category_rate'])}</td></tr>"
        )
    out.append("</tbody></table>")
    return "".join(out)


def _features_section(summary: ReportSummary) -> str:
    cards = []
    ref_name, cur_name = summary["reference"]["name"], summary["current"]["name"]
    for name, fs in summary["features"].items():
        svg = _numeric_svg(name, fs) if fs["kind"] == "numeric" else _categorical_svg(name, fs)
        cards.append(
            f'<div class="card feature" data-feature="{_e(name)}"><h3>{_e(name)} '
            f'<span class="sub">{_e(fs["kind"])}</span></h3>{svg}</div>'
        )
    legend = _legend(
        [
            (f"{ref_name} (bars)", REF_COLOR, "opacity:.6"),
            (f"{cur_name} (outline / bars)", CUR_COLOR, ""),
        ]
    )
    if not cards:
        return '<p class="none">No features in the schema.</p>'
    return legend + f'<div class="grid">{"".join(cards)}</div>'


def _performance_section(points: list[PerformancePoint]) -> str:
    if not points:
        return '<p class="none">No performance windows: no delayed labels or estimates yet.</p>'
    by_metric: dict[str, list[PerformancePoint]] = {}
    for p in points:
        by_metric.setdefault(p["metric"], []).append(p)
    cards = [
        f'<div class="card perf" data-metric="{_e(m)}"><h3>{_e(m)}</h3>{_performance_svg(m, pts)}</div>'
        for m, pts in by_metric.items()
    ]
    legend = _legend(
        [
            ("delayed (labels arrived)", DELAYED_COLOR, ""),
            ("estimated (no labels yet)", ESTIMATED_COLOR, ""),
            ("estimate interval", ESTIMATED_COLOR, "opacity:.2"),
        ]
    )
    return legend + f'<div class="grid">{"".join(cards)}</div>'


def _banners(summary: ReportSummary) -> str:
    out = []
    ref, cur = summary["reference"], summary["current"]
    for w in (ref, cur):
        if w["rows"] == 0:
            out.append(
                f'<div class="banner empty" data-empty="{_e(w["name"])}">The {_e(w["name"])} window is empty '
                "(0 rows): its distributions, drift tests and quality rates are not meaningful.</div>"
            )
    if summary["empty"] and not out:
        out.append(
            '<div class="banner empty" data-empty="window">A window is empty (0 rows).</div>'
        )
    if not summary["empty"]:
        drifted = sorted({r["feature"] for r in summary["drift"] if r["drifted"]})
        if drifted:
            out.append(
                f'<div class="banner drift">Drift detected in {len(drifted)} of {len(summary["features"])} '
                f"features: {_e(', '.join(drifted))}.</div>"
            )
        elif summary["drift"]:
            out.append('<div class="banner ok">No feature drifted.</div>')
    return "".join(out)


def render_html(summary: ReportSummary) -> str:
    """The report page as one self-contained HTML string (inline CSS and SVG, no scripts, no URLs)."""
    ref, cur = summary["reference"], summary["current"]
    notes = "".join(f"<li>{_e(n)}</li>" for n in summary["notes"])
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(summary['title'])}</title><style>{CSS}</style></head><body>"
        f"<h1>{_e(summary['title'])}</h1>"
        f'<p class="meta">Generated {_e(summary["generated_at"])} · {_e(ref["name"])}: '
        f'<b class="rows" data-window="reference">{ref["rows"]}</b> rows · {_e(cur["name"])}: '
        f'<b class="rows" data-window="current">{cur["rows"]}</b> rows</p>'
        f"{_banners(summary)}"
        + (f'<ul class="notes">{notes}</ul>' if notes else "")
        + '<h2 id="drift">Drift</h2>'
        + _drift_table(summary["drift"])
        + '<h2 id="distributions">Distributions</h2>'
        + _features_section(summary)
        + '<h2 id="quality">Data quality</h2>'
        + _quality_table(summary["quality"])
        + '<h2 id="performance">Performance over time</h2>'
        + _performance_section(summary["performance"])
        + "</body></html>\n"
    )


def _jsonable(x: Any) -> Any:
    """Replace NaN/inf by None and numpy scalars by Python ones, recursively."""
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, bool | np.bool_):
        return bool(x)
    if isinstance(x, int | np.integer):
        return int(x)
    if isinstance(x, float | np.floating):
        return _num(x)
    return x


def render_report(
    summary: ReportSummary | Mapping[str, Any], out_html: Path, out_json: Path
) -> None:
    """Write the self-contained HTML report and the JSON summary (parent directories are created)."""
    clean = cast(ReportSummary, _jsonable(summary))
    # Optional lists default to empty, so a hand-written summary needs only what it shows.
    for key in ("drift", "quality", "performance", "notes"):
        clean.setdefault(key, [])  # type: ignore[misc]
    clean.setdefault("features", {})
    if "empty" not in clean:
        clean["empty"] = clean["reference"]["rows"] == 0 or clean["current"]["rows"] == 0
    out_html, out_json = Path(out_html), Path(out_json)
    out_html.parent.mkdir(parents=True, exist_ok=True)
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_html.write_text(render_html(clean), encoding="utf-8")
    out_json.write_text(json.dumps(clean, indent=2, allow_nan=False) + "\n", encoding="utf-8")
