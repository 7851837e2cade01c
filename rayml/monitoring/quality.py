"""Data quality of a current window against its reference. Never raises on bad values.

Per feature (columns present in both frames; the others are listed as missing / extra):

* ``missing_rate``: share of current rows that are missing (NaN / None / NaT; for numerics also
  values that are not numbers, counted separately as ``n_non_numeric``);
* numeric: ``n_nan``, ``n_inf`` (±inf), ``n_out_of_range`` / ``out_of_range_rate``: finite
  current values outside the reference's finite ``[min, max]`` (rates over all current rows);
* categorical: ``cardinality`` (distinct non-missing values, current and reference) and
  ``new_category_rate`` (share of non-missing current rows whose category the reference lacks).

Correlation change: Pearson r over every pair of numeric features in reference and in current
(pairwise-complete on finite values; a pair with a constant or empty side has r = NaN and is
skipped); ``max_abs_correlation_change`` is the largest |r_cur − r_ref| and ``pair`` names it.
A feature's kind comes from ``schema`` or, when absent, from its reference dtype (numeric dtypes
→ numeric, anything else → categorical).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from rayml.monitoring.detectors import Kind, _json_safe, clean_categorical, new_category_rate


@dataclass
class FeatureQuality:
    """Quality figures of one feature of the current window."""

    feature: str
    kind: str
    n_current: int
    n_missing: int
    missing_rate: float
    n_missing_reference: int = 0
    n_nan: int = 0
    n_inf: int = 0
    n_non_numeric: int = 0
    n_out_of_range: int = 0
    out_of_range_rate: float = 0.0
    reference_min: float | None = None
    reference_max: float | None = None
    cardinality: int | None = None
    cardinality_reference: int | None = None
    new_category_rate: float | None = None


@dataclass
class QualityReport:
    """Per-feature quality plus the largest pairwise correlation change."""

    n_reference: int
    n_current: int
    features: dict[str, FeatureQuality] = field(default_factory=dict)
    missing_columns: list[str] = field(default_factory=list)
    extra_columns: list[str] = field(default_factory=list)
    max_abs_correlation_change: float | None = None
    correlation_pair: tuple[str, str] | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (NaN → None)."""
        return _json_safe({
            "n_reference": self.n_reference, "n_current": self.n_current,
            "missing_columns": self.missing_columns, "extra_columns": self.extra_columns,
            "max_abs_correlation_change": self.max_abs_correlation_change,
            "correlation_pair": list(self.correlation_pair) if self.correlation_pair else None,
            "features": {k: vars(v) for k, v in self.features.items()},
        })


def _as_float(values: pd.Series) -> tuple[np.ndarray, int]:
    """→ (float64 array, number of present values that are not numbers)."""
    coerced = pd.to_numeric(values, errors="coerce")
    n_non_numeric = int((coerced.isna() & values.notna()).sum())
    return coerced.to_numpy(dtype=np.float64, na_value=np.nan), n_non_numeric


def numeric_quality(feature: str, reference: pd.Series, current: pd.Series) -> FeatureQuality:
    """Missing / NaN / inf / out-of-range counts of a numeric feature."""
    ref, _ = _as_float(reference)
    cur, n_bad = _as_float(current)
    n = len(cur)
    n_nan = int(np.isnan(cur).sum()) - n_bad
    n_inf = int(np.isinf(cur).sum())
    finite_ref = ref[np.isfinite(ref)]
    lo = float(finite_ref.min()) if len(finite_ref) else None
    hi = float(finite_ref.max()) if len(finite_ref) else None
    finite_cur = cur[np.isfinite(cur)]
    n_out = int(((finite_cur < lo) | (finite_cur > hi)).sum()) if lo is not None and hi is not None else 0
    n_missing = n_nan + n_bad
    return FeatureQuality(
        feature, "numeric", n, n_missing, n_missing / n if n else 0.0,
        n_missing_reference=int(np.isnan(ref).sum()), n_nan=n_nan, n_inf=n_inf, n_non_numeric=n_bad,
        n_out_of_range=n_out, out_of_range_rate=n_out / n if n else 0.0, reference_min=lo, reference_max=hi,
    )


def categorical_quality(feature: str, reference: pd.Series, current: pd.Series) -> FeatureQuality:
    """Missing rate, cardinality and new-category rate of a categorical feature."""
    ref, n_mr = clean_categorical(reference.to_numpy())
    cur, n_mc = clean_categorical(current.to_numpy())
    n = len(current)
    return FeatureQuality(
        feature, "categorical", n, n_mc, n_mc / n if n else 0.0, n_missing_reference=n_mr, n_nan=n_mc,
        cardinality=len(set(cur)), cardinality_reference=len(set(ref)),
        new_category_rate=new_category_rate(ref, cur),
    )


def _pearson(frame: pd.DataFrame) -> pd.DataFrame:
    finite = frame.apply(pd.to_numeric, errors="coerce").replace([np.inf, -np.inf], np.nan)
    return finite.astype(np.float64).corr(method="pearson")


def correlation_change(
    reference: pd.DataFrame, current: pd.DataFrame, columns: list[str],
) -> tuple[float | None, tuple[str, str] | None]:
    """max |Δ Pearson r| over pairs of ``columns`` and the pair; (None, None) when no pair has r."""
    if len(columns) < 2:
        return None, None
    with np.errstate(all="ignore"):
        delta = (_pearson(current[columns]) - _pearson(reference[columns])).abs().to_numpy()
    iu = np.triu_indices(len(columns), k=1)
    values = delta[iu]
    if not np.isfinite(values).any():
        return None, None
    best = int(np.nanargmax(values))
    return float(values[best]), (columns[iu[0][best]], columns[iu[1][best]])


def _infer_kind(series: pd.Series) -> Kind:
    numeric = pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series)
    return "numeric" if numeric else "categorical"


def quality_report(
    reference: pd.DataFrame, current: pd.DataFrame, schema: dict[str, Kind] | None = None,
) -> QualityReport:
    """Quality of ``current`` against ``reference`` → :class:`QualityReport` (never raises on values)."""
    common = [c for c in reference.columns if c in set(current.columns)]
    report = QualityReport(
        len(reference), len(current),
        missing_columns=sorted(str(c) for c in set(reference.columns) - set(current.columns)),
        extra_columns=sorted(str(c) for c in set(current.columns) - set(reference.columns)),
    )
    numeric: list[str] = []
    for col in common:
        kind = (schema or {}).get(col) or _infer_kind(reference[col])
        if kind == "numeric":
            report.features[col] = numeric_quality(col, reference[col], current[col])
            numeric.append(col)
        else:
            report.features[col] = categorical_quality(col, reference[col], current[col])
    report.max_abs_correlation_change, report.correlation_pair = correlation_change(reference, current, numeric)
    return report
