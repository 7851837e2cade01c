"""The default drift preset, and running a preset over a reference and a current window.

Shipped preset (:func:`default_preset`), overridable per feature:

* numeric feature → two-sample KS (``method="asymp"``, computed for all numeric features at once
  by :func:`~rayml.monitoring.detectors.ks_many`), at ANY reference size;
* categorical feature → χ² homogeneity test (2×k table, no continuity correction).

Every test yields a p-value; :func:`run_preset` corrects them as ONE family (all tests of all
features; Holm by default, or Benjamini–Hochberg, via ``statsmodels.stats.multitest.
multipletests``) at ``alpha`` (default 0.01). A feature drifted when any of its tests is
rejected after correction; the window (the family) drifted when any feature did.

How this differs from Evidently's ``DataDriftPreset``: Evidently picks KS for numerics with
n ≤ 1000 and normed Wasserstein (threshold 0.1) above, χ² / Z-test for categoricals with
n ≤ 1000 and Jensen–Shannon (threshold 0.1) above, each test at its own level (p < 0.05 or the
distance threshold) and no multiplicity correction, and it calls the whole DATASET drifted when
≥ 50 % of the columns drift (``drift_share=0.5``). That rule has no stated false-alarm rate, and
with a single drifted feature out of 64 it never fires. Here the family decision is "any feature
drifted after Holm/BH at α", whose family-wise false-alarm rate is ≤ α by construction (KS-asymp
and χ² p-values are valid or conservative at these sizes), and whose power for a one-feature
shift is measured in ``benchmarks/drift_power.py`` (see ``docs/monitoring-statistics.md``).
:func:`evidently_preset` builds Evidently's per-feature selection for comparison.

Missing values per feature are counted (reference and current) and dropped before testing. A
feature whose test could not run (no values on one side) has no p-value and is left out of the
family; so are distance tests configured with ``n_permutations=0`` (their own threshold
decision is reported as ``uncorrected_drifted``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, field_validator, model_validator
from statsmodels.stats.multitest import multipletests

from rayml.monitoring.detectors import (
    KS,
    ChiSquare,
    Detector,
    DriftResult,
    JensenShannon,
    Kind,
    Wasserstein,
    _json_safe,
    ks_many,
    parse_detector,
    run_detector,
)

Correction = Literal["holm", "fdr_bh"]
EMPTY_WINDOW = "empty window"


class SchemaMismatch(ValueError):
    """Reference and current (or the preset) disagree on columns."""

    def __init__(self, missing: list[str], extra: list[str], what: str = "current") -> None:
        self.missing = sorted(missing)
        self.extra = sorted(extra)
        super().__init__(
            f"schema mismatch: columns missing from {what}: {self.missing}; "
            f"extra columns in {what}: {self.extra}"
        )


class FeatureTest(BaseModel):
    """One feature of a preset: its kind and the detectors run on it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    feature: str
    kind: Kind
    detectors: list[Detector]

    @field_validator("detectors", mode="before")
    @classmethod
    def _parse(cls, value: Any) -> Any:
        return [parse_detector(d) for d in value]

    @model_validator(mode="after")
    def _fits_kind(self) -> FeatureTest:
        for d in self.detectors:
            if not d.applies_to(self.kind):
                raise ValueError(f"detector {d.test!r} does not apply to {self.kind} feature {self.feature!r}")
        if not self.detectors:
            raise ValueError(f"feature {self.feature!r} has no detectors")
        return self


Preset = list[FeatureTest]


def default_preset(
    schema: dict[str, Kind],
    n_reference: int,
    overrides: dict[str, list[dict[str, Any]]] | None = None,
) -> Preset:
    """The shipped preset: KS for numerics (any ``n_reference``), χ² for categoricals.

    ``n_reference`` is accepted for the Evidently-style size rule, which the shipped preset
    deliberately does not apply (see the module docstring). ``overrides`` maps a feature to its
    detectors' dict forms, e.g. ``{"price": [{"test": "psi"}, {"test": "ks"}]}``, replacing the
    default for that feature; an override naming a feature not in ``schema`` raises ValueError.
    """
    if n_reference < 0:
        raise ValueError("n_reference must be ≥ 0")
    overrides = overrides or {}
    unknown = sorted(set(overrides) - set(schema))
    if unknown:
        raise ValueError(f"overrides for features not in the schema: {unknown}")
    preset: Preset = []
    for feature, kind in schema.items():
        if feature in overrides:
            detectors: list[Any] = [parse_detector(d) for d in overrides[feature]]
        else:
            detectors = [KS() if kind == "numeric" else ChiSquare()]
        preset.append(FeatureTest(feature=feature, kind=kind, detectors=detectors))
    return preset


def evidently_preset(schema: dict[str, Kind], n_reference: int) -> Preset:
    """Evidently's size rule, for comparison: n ≤ 1000 → KS / χ²; n > 1000 → normed
    Wasserstein (0.1) / Jensen–Shannon (0.1). Not shipped; its false-alarm rate is not controlled."""
    small = n_reference <= 1000
    preset: Preset = []
    for feature, kind in schema.items():
        if kind == "numeric":
            det: Detector = KS() if small else Wasserstein(threshold=0.1)
        else:
            det = ChiSquare() if small else JensenShannon(threshold=0.1)
        preset.append(FeatureTest(feature=feature, kind=kind, detectors=[det]))
    return preset


@dataclass
class FeatureDrift:
    """Per-feature outcome: raw results, their corrected p-values, and the corrected decision."""

    feature: str
    kind: str
    results: list[DriftResult]
    adjusted_p_values: list[float | None]
    drifted: bool
    n_missing_reference: int
    n_missing_current: int
    segment: str | None = None
    uncorrected_drifted: bool = False

    def to_dict(self) -> dict[str, Any]:
        return _json_safe({
            "feature": self.feature, "kind": self.kind, "segment": self.segment,
            "drifted": self.drifted, "uncorrected_drifted": self.uncorrected_drifted,
            "n_missing_reference": self.n_missing_reference,
            "n_missing_current": self.n_missing_current,
            "adjusted_p_values": self.adjusted_p_values,
            "results": [r.to_dict() for r in self.results],
        })


@dataclass
class DriftReport:
    """A window's drift report. ``drifted`` is the family decision (any feature after correction)."""

    status: str
    alpha: float
    correction: str
    n_reference: int
    n_current: int
    features: list[FeatureDrift] = field(default_factory=list)
    drifted: bool = False
    n_tests: int = 0
    segments: dict[str, str] = field(default_factory=dict)

    @property
    def drifted_features(self) -> list[str]:
        return [f.feature if f.segment is None else f"{f.segment}/{f.feature}" for f in self.features if f.drifted]

    def to_dict(self) -> dict[str, Any]:
        return _json_safe({
            "status": self.status, "alpha": self.alpha, "correction": self.correction,
            "n_reference": self.n_reference, "n_current": self.n_current,
            "drifted": self.drifted, "n_tests": self.n_tests,
            "drifted_features": self.drifted_features, "segments": self.segments,
            "features": [f.to_dict() for f in self.features],
        })


def check_schema(preset: Preset, reference: pd.DataFrame, current: pd.DataFrame, ignore: tuple[str, ...] = ()) -> None:
    """Raise :class:`SchemaMismatch` when the frames' columns differ or lack a preset feature."""
    ref_cols, cur_cols = set(reference.columns) - set(ignore), set(current.columns) - set(ignore)
    if ref_cols != cur_cols:
        raise SchemaMismatch(missing=list(ref_cols - cur_cols), extra=list(cur_cols - ref_cols))
    absent = [ft.feature for ft in preset if ft.feature not in ref_cols]
    if absent:
        raise SchemaMismatch(missing=absent, extra=[], what="reference and current (named by the preset)")


def _raw_results(
    preset: Preset, reference: pd.DataFrame, current: pd.DataFrame, segment: str | None = None,
) -> list[FeatureDrift]:
    """Uncorrected results for every feature; the numeric KS tests run batched in one ks_many."""
    ks_feats = [ft.feature for ft in preset if any(isinstance(d, KS) and d.method == "asymp" for d in ft.detectors)]
    ks_stats: dict[str, tuple[float, float]] = {}
    if ks_feats and len(reference) and len(current):
        d, p = ks_many(_numeric_matrix(reference, ks_feats), _numeric_matrix(current, ks_feats))
        ks_stats = {f: (float(d[i]), float(p[i])) for i, f in enumerate(ks_feats)}
    out = []
    for ft in preset:
        ref_col, cur_col = reference[ft.feature].to_numpy(), current[ft.feature].to_numpy()
        n_mr, n_mc = _n_missing(reference[ft.feature], ft.kind), _n_missing(current[ft.feature], ft.kind)
        results = []
        for det in ft.detectors:
            if isinstance(det, KS) and det.method == "asymp" and ft.feature in ks_stats:
                results.append(_ks_result(det, ft.feature, *ks_stats[ft.feature], n_mr, n_mc))
            else:
                results.append(run_detector(det, ref_col, cur_col, ft.feature, ft.kind))
        out.append(FeatureDrift(ft.feature, ft.kind, results, [None] * len(results), False, n_mr, n_mc, segment))
    return out


def _n_missing(column: pd.Series, kind: Kind) -> int:
    """Missing values of a column; for numerics, values that are not numbers count as missing."""
    if kind == "numeric" and not pd.api.types.is_numeric_dtype(column):
        column = pd.to_numeric(column, errors="coerce")
    return int(column.isna().sum())


def _numeric_matrix(frame: pd.DataFrame, columns: list[str]) -> np.ndarray:
    """[n, len(columns)] float64; non-numeric values become NaN (counted as missing)."""
    sub = frame[columns]
    if not all(pd.api.types.is_numeric_dtype(t) for t in sub.dtypes):
        sub = sub.apply(pd.to_numeric, errors="coerce")
    return sub.to_numpy(dtype=np.float64, na_value=np.nan)


def _ks_result(det: KS, feature: str, d: float, p: float, n_mr: int, n_mc: int) -> DriftResult:
    extra = {"n_missing_reference": n_mr, "n_missing_current": n_mc, "method": "asymp"}
    if not np.isfinite(p):
        return DriftResult(feature, "ks", float("nan"), None, det.threshold, False, {**extra, "empty": True})
    return DriftResult(feature, "ks", d, p, det.threshold, p < det.threshold, extra)


def holm(pvals: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Holm's step-down correction → (reject, adjusted p-values), equal to statsmodels' ``multipletests(…,
    method="holm")``, which runs a full ``gc.collect()`` on every call (0.2 s per window in a busy process)."""
    order = np.argsort(pvals, kind="stable")
    m = len(pvals)
    stepped = np.maximum.accumulate(np.minimum(1.0, pvals[order] * np.arange(m, 0, -1)))
    adjusted = np.empty(m, dtype=np.float64)
    adjusted[order] = stepped
    return adjusted <= alpha, adjusted


def _correct(features: list[FeatureDrift], alpha: float, correction: Correction) -> tuple[bool, int]:
    """Correct every p-value of ``features`` as one family, in place → (family drifted, n tests)."""
    index = [(i, j) for i, f in enumerate(features) for j, r in enumerate(f.results) if r.p_value is not None]
    for f in features:
        f.uncorrected_drifted = any(r.drifted for r in f.results)
    if not index:
        return False, 0
    pvals = np.array([features[i].results[j].p_value for i, j in index], dtype=np.float64)
    if correction == "holm":
        reject, adjusted = holm(pvals, alpha)
    else:
        reject, adjusted, _, _ = multipletests(pvals, alpha=alpha, method=correction)
    for (i, j), rej, adj in zip(index, reject, adjusted, strict=True):
        features[i].adjusted_p_values[j] = float(adj)
        features[i].drifted = features[i].drifted or bool(rej)
    return bool(reject.any()), len(index)


def _validate(alpha: float, correction: str) -> None:
    if not 0 < alpha < 1:
        raise ValueError("alpha must be in (0, 1)")
    if correction not in ("holm", "fdr_bh"):
        raise ValueError("correction must be 'holm' or 'fdr_bh'")


def run_preset(
    preset: Preset,
    reference: pd.DataFrame,
    current: pd.DataFrame,
    alpha: float = 0.01,
    correction: Correction = "holm",
) -> DriftReport:
    """Run ``preset`` on one window → :class:`DriftReport` (family decision at ``alpha``).

    Raises :class:`SchemaMismatch` when the frames' columns differ. An empty ``current`` gives
    ``status="empty window"`` with no results and ``drifted=False``.
    """
    _validate(alpha, correction)
    check_schema(preset, reference, current)
    report = DriftReport("ok", alpha, correction, len(reference), len(current))
    if len(current) == 0:
        report.status = EMPTY_WINDOW
        return report
    report.features = _raw_results(preset, reference, current)
    report.drifted, report.n_tests = _correct(report.features, alpha, correction)
    return report


def run_segmented(
    preset: Preset,
    reference: pd.DataFrame,
    current: pd.DataFrame,
    segment_column: str,
    alpha: float = 0.01,
    correction: Correction = "holm",
) -> DriftReport:
    """Run ``preset`` per value of ``segment_column``, correcting over (features × segments) as
    ONE family. Segments are the values seen in either frame (missing values form no segment);
    a segment empty in current is ``"empty window"``, one empty in reference ``"no reference"``
    (both contribute no tests). ``report.segments`` maps each segment to its status.
    """
    _validate(alpha, correction)
    for frame, what in ((reference, "reference"), (current, "current")):
        if segment_column not in frame.columns:
            raise SchemaMismatch(missing=[segment_column], extra=[], what=what)
    check_schema(preset, reference, current)
    if any(ft.feature == segment_column for ft in preset):
        raise ValueError(f"the segment column {segment_column!r} cannot also be a tested feature")
    report = DriftReport("ok", alpha, correction, len(reference), len(current))
    if len(current) == 0:
        report.status = EMPTY_WINDOW
        return report
    ref_seg = reference[segment_column].astype("string")
    cur_seg = current[segment_column].astype("string")
    values = sorted(set(ref_seg.dropna()) | set(cur_seg.dropna()))
    for value in values:
        ref_part, cur_part = reference[(ref_seg == value).fillna(False).to_numpy()], current[(cur_seg == value).fillna(False).to_numpy()]
        if len(cur_part) == 0:
            report.segments[value] = EMPTY_WINDOW
        elif len(ref_part) == 0:
            report.segments[value] = "no reference"
        else:
            report.segments[value] = "ok"
            report.features.extend(_raw_results(preset, ref_part, cur_part, segment=value))
    report.drifted, report.n_tests = _correct(report.features, alpha, correction)
    return report
