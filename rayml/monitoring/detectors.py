"""Drift detectors: one small frozen pydantic parameter model per test, plus ``run(reference, current)``.

Conventions (fixed; ``docs/monitoring-statistics.md`` repeats them):

==================  ==========================================================================
KS                  two-sample Kolmogorov–Smirnov, ``scipy.stats.ks_2samp`` (two-sided). The
                    default ``method="asymp"`` (``kstwo.sf(D, round(n·m/(n+m)))``) is what
                    :func:`ks_many` computes, so a single KS and the vectorised one agree.
PSI                 10 bins at the reference deciles (``np.quantile`` default "linear" method),
                    inner edges only (9 edges), the outer two bins open. A value ``x`` falls in
                    bin ``i`` when ``edge[i-1] <= x < edge[i]`` (``np.searchsorted(edges, x,
                    side="right")``). Shares are counts / n; an EMPTY bin's share is replaced
                    by ε = 1e-4 (non-empty shares are left as they are, no renormalisation).
                    PSI = Σ (cur − ref) · ln(cur / ref), natural log. Categorical: the same
                    formula on category shares over the union of categories.
Jensen–Shannon      DISTANCE (square root of the divergence), base 2, so in [0, 1]:
                    ``scipy.spatial.distance.jensenshannon(ref, cur, base=2)`` on the same 10
                    reference-quantile bins (raw shares, no ε) for numerics, on category shares
                    over the union of categories for categoricals.
Wasserstein         ``scipy.stats.wasserstein_distance`` (W1). ``statistic`` is the NORMED
                    value, raw / std(reference) (``np.std``, ddof=0); the raw value is in
                    ``extra["raw"]``. A constant reference (std 0) normalises by 1.
χ²                  homogeneity test on the 2×k table (reference row, current row) of counts
                    over the union of categories, ``scipy.stats.chi2_contingency(...,
                    correction=False)``; a category seen only in current is a column with a
                    zero reference count. Fewer than 2 categories → statistic 0, p 1.
==================  ==========================================================================

Missing values (NaN / None; for numerics also ±inf is kept as a value only by KS, the distances
drop non-finite values) are dropped before testing and counted in ``extra["n_missing_reference"]``
/ ``extra["n_missing_current"]``. Categorical results also carry ``extra["new_category_rate"]``:
the share of current (non-missing) rows whose category never occurs in the reference.

p-values of distances (PSI, JS, Wasserstein): by PERMUTATION. The pooled sample is split at
random ``n_permutations`` times (``numpy.random.default_rng(seed)``) into a pseudo-reference of
size n_ref and a pseudo-current of size n_cur, the statistic is recomputed exactly as above
(bins re-derived from the pseudo-reference; for Wasserstein on the RAW distance), and
``p = (1 + #{perm ≥ observed}) / (1 + n_permutations)``. The smallest attainable p-value is
therefore 1 / (n_permutations + 1) (≈ 0.005 at the default 200): under a Holm/BH correction over
many features a distance alone can rarely carry the family decision, which is one reason the
shipped preset uses KS / χ² (see :mod:`rayml.monitoring.presets`). ``n_permutations=0`` gives
``p_value=None``.

``drifted`` of a single :class:`DriftResult` is the detector's own rule: ``p_value < threshold``
for KS and χ² (``threshold`` is the per-test α), ``statistic >= threshold`` for the distances
(Evidently-style thresholds: PSI 0.2, JS 0.1, Wasserstein normed 0.1). The preset runner replaces
this with the multiplicity-corrected decision.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Annotated, Any, ClassVar, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter
from scipy import stats
from scipy.spatial.distance import jensenshannon

PSI_EPS = 1e-4
N_BINS = 10

Kind = Literal["numeric", "categorical"]


@dataclass
class DriftResult:
    """Outcome of one detector on one feature. ``p_value`` is None for a distance without one."""

    feature: str
    test: str
    statistic: float
    p_value: float | None
    threshold: float
    drifted: bool
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict: numpy scalars become Python numbers, NaN/inf become None."""
        return _json_safe(asdict(self))


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return [_json_safe(v) for v in value.tolist()]
    if isinstance(value, np.bool_ | bool):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating | float):
        f = float(value)
        return f if math.isfinite(f) else None
    if value is None or isinstance(value, int | str):
        return value
    return str(value)


# --------------------------------------------------------------------------- cleaning helpers


def clean_numeric(values: Any, *, keep_inf: bool = False) -> tuple[np.ndarray, int]:
    """→ (float64 values without NaN [and without ±inf unless ``keep_inf``], number dropped).

    Values that are not numbers (strings, None) count as missing; never raises.
    """
    arr = pd.to_numeric(pd.Series(np.asarray(values, dtype=object).ravel()), errors="coerce")
    x = arr.to_numpy(dtype=np.float64, na_value=np.nan)
    keep = ~np.isnan(x) if keep_inf else np.isfinite(x)
    return x[keep], int((~keep).sum())


def clean_categorical(values: Any) -> tuple[np.ndarray, int]:
    """→ (non-missing values as strings, number of missing). NaN / None are missing."""
    s = pd.Series(np.asarray(values, dtype=object).ravel())
    missing = s.isna().to_numpy()
    return s[~missing].astype(str).to_numpy(dtype=object), int(missing.sum())


def category_counts(reference: np.ndarray, current: np.ndarray) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Counts over the union of categories (reference order first, then new ones, sorted)."""
    ref_vc = pd.Series(reference).value_counts(sort=False)
    cur_vc = pd.Series(current).value_counts(sort=False)
    cats = sorted(ref_vc.index.tolist()) + sorted(set(cur_vc.index) - set(ref_vc.index))
    ref_c = ref_vc.reindex(cats, fill_value=0).to_numpy(dtype=np.float64)
    cur_c = cur_vc.reindex(cats, fill_value=0).to_numpy(dtype=np.float64)
    return cats, ref_c, cur_c


def new_category_rate(reference: np.ndarray, current: np.ndarray) -> float:
    """Share of current rows whose category never occurs in the reference (0 for empty current)."""
    if len(current) == 0:
        return 0.0
    return float(np.mean(~pd.Series(current).isin(set(reference)).to_numpy()))


def quantile_edges(reference: np.ndarray, n_bins: int = N_BINS) -> np.ndarray:
    """The n_bins − 1 inner edges at reference quantiles k / n_bins (np.quantile default method)."""
    return np.quantile(reference, np.arange(1, n_bins) / n_bins)


def binned_shares(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Share of ``values`` per bin; bin i holds edge[i-1] <= x < edge[i], outer bins open."""
    idx = np.searchsorted(edges, values, side="right")
    return np.bincount(idx, minlength=len(edges) + 1).astype(np.float64) / max(len(values), 1)


def psi_from_shares(ref_share: np.ndarray, cur_share: np.ndarray, eps: float = PSI_EPS) -> float:
    """Σ (c − r) ln(c / r) with ε replacing the share of empty bins."""
    r = np.where(ref_share == 0, eps, ref_share)
    c = np.where(cur_share == 0, eps, cur_share)
    return float(np.sum((c - r) * np.log(c / r)))


# --------------------------------------------------------------------------- statistics


def psi_numeric(reference: np.ndarray, current: np.ndarray, n_bins: int = N_BINS) -> float:
    edges = quantile_edges(reference, n_bins)
    return psi_from_shares(binned_shares(reference, edges), binned_shares(current, edges))


def psi_categorical(reference: np.ndarray, current: np.ndarray) -> float:
    _, r, c = category_counts(reference, current)
    return psi_from_shares(r / r.sum(), c / c.sum())


def js_numeric(reference: np.ndarray, current: np.ndarray, n_bins: int = N_BINS) -> float:
    edges = quantile_edges(reference, n_bins)
    return float(jensenshannon(binned_shares(reference, edges), binned_shares(current, edges), base=2))


def js_categorical(reference: np.ndarray, current: np.ndarray) -> float:
    _, r, c = category_counts(reference, current)
    return float(jensenshannon(r / r.sum(), c / c.sum(), base=2))


def wasserstein_raw(reference: np.ndarray, current: np.ndarray) -> float:
    return float(stats.wasserstein_distance(reference, current))


def permutation_p_value(
    statistic: Callable[[np.ndarray, np.ndarray], float],
    reference: np.ndarray,
    current: np.ndarray,
    observed: float,
    n_permutations: int,
    seed: int,
) -> float | None:
    """(1 + #{perm stat ≥ observed}) / (1 + n_permutations); None when n_permutations == 0."""
    if n_permutations <= 0:
        return None
    rng = np.random.default_rng(seed)
    pooled = np.concatenate([reference, current])
    n_ref = len(reference)
    tol = 1e-12 * max(1.0, abs(observed))
    hits = 0
    for _ in range(n_permutations):
        perm = rng.permutation(pooled)
        hits += statistic(perm[:n_ref], perm[n_ref:]) >= observed - tol
    return (1 + hits) / (1 + n_permutations)


# --------------------------------------------------------------------------- detectors


class _Detector(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kinds: ClassVar[tuple[Kind, ...]] = ("numeric", "categorical")

    def applies_to(self, kind: Kind) -> bool:
        """Whether this detector can test a feature of ``kind``."""
        return kind in self.kinds


def _empty_result(feature: str, test: str, threshold: float, n_miss_ref: int, n_miss_cur: int) -> DriftResult:
    return DriftResult(
        feature, test, float("nan"), None, threshold, False,
        {"empty": True, "n_missing_reference": n_miss_ref, "n_missing_current": n_miss_cur},
    )


class KS(_Detector):
    """Two-sample Kolmogorov–Smirnov on a numeric feature; drifted when p < ``threshold``."""

    test: Literal["ks"] = "ks"
    threshold: float = Field(default=0.05, gt=0, lt=1)
    method: Literal["asymp", "auto", "exact"] = "asymp"
    kinds: ClassVar[tuple[Kind, ...]] = ("numeric",)

    def run(self, reference: np.ndarray, current: np.ndarray, feature: str = "") -> DriftResult:
        ref, mr = clean_numeric(reference, keep_inf=True)
        cur, mc = clean_numeric(current, keep_inf=True)
        if len(ref) == 0 or len(cur) == 0:
            return _empty_result(feature, self.test, self.threshold, mr, mc)
        res = stats.ks_2samp(ref, cur, method=self.method)
        p = float(res.pvalue)
        return DriftResult(
            feature, self.test, float(res.statistic), p, self.threshold, p < self.threshold,
            {"n_missing_reference": mr, "n_missing_current": mc, "method": self.method},
        )


class ChiSquare(_Detector):
    """χ² homogeneity on the 2×k (reference, current) table; drifted when p < ``threshold``."""

    test: Literal["chi2"] = "chi2"
    threshold: float = Field(default=0.05, gt=0, lt=1)
    kinds: ClassVar[tuple[Kind, ...]] = ("categorical",)

    def run(self, reference: np.ndarray, current: np.ndarray, feature: str = "") -> DriftResult:
        ref, mr = clean_categorical(reference)
        cur, mc = clean_categorical(current)
        if len(ref) == 0 or len(cur) == 0:
            return _empty_result(feature, self.test, self.threshold, mr, mc)
        cats, r, c = category_counts(ref, cur)
        if len(cats) < 2:
            statistic, p, dof = 0.0, 1.0, 0
        else:
            res = stats.chi2_contingency(np.vstack([r, c]), correction=False)
            statistic, p, dof = float(res.statistic), float(res.pvalue), int(res.dof)
        return DriftResult(
            feature, self.test, statistic, p, self.threshold, p < self.threshold,
            {
                "n_missing_reference": mr, "n_missing_current": mc, "dof": dof,
                "n_categories": len(cats), "new_category_rate": new_category_rate(ref, cur),
            },
        )


class _Distance(_Detector):
    n_permutations: int = Field(default=200, ge=0)
    seed: int = 0

    def _statistic(self, kind: Kind) -> Callable[[np.ndarray, np.ndarray], float]:
        raise NotImplementedError

    def _finish(self, stat: float, ref: np.ndarray, cur: np.ndarray, kind: Kind) -> dict[str, Any]:
        return {}

    def run(
        self, reference: np.ndarray, current: np.ndarray, feature: str = "", kind: Kind = "numeric",
    ) -> DriftResult:
        """Distance, permutation p-value (or None), drifted when statistic ≥ ``threshold``."""
        clean = clean_numeric if kind == "numeric" else clean_categorical
        ref, mr = clean(reference)
        cur, mc = clean(current)
        test = str(getattr(self, "test"))  # noqa: B009 - set on every subclass
        threshold = float(getattr(self, "threshold"))  # noqa: B009
        if len(ref) == 0 or len(cur) == 0:
            return _empty_result(feature, test, threshold, mr, mc)
        fn = self._statistic(kind)
        raw = fn(ref, cur)
        extra: dict[str, Any] = {"n_missing_reference": mr, "n_missing_current": mc}
        extra.update(self._finish(raw, ref, cur, kind))
        stat = float(extra.pop("_statistic", raw))
        if kind == "categorical":
            extra["new_category_rate"] = new_category_rate(ref, cur)
        p = permutation_p_value(fn, ref, cur, raw, self.n_permutations, self.seed)
        extra["n_permutations"] = self.n_permutations
        return DriftResult(feature, test, stat, p, threshold, stat >= threshold, extra)


class PSI(_Distance):
    """Population stability index (decile bins, ε = 1e-4 on empty bins, natural log)."""

    test: Literal["psi"] = "psi"
    threshold: float = Field(default=0.2, gt=0)

    def _statistic(self, kind: Kind) -> Callable[[np.ndarray, np.ndarray], float]:
        return psi_numeric if kind == "numeric" else psi_categorical


class JensenShannon(_Distance):
    """Jensen–Shannon distance, base 2, on decile bins (numeric) or category shares."""

    test: Literal["jensen_shannon"] = "jensen_shannon"
    threshold: float = Field(default=0.1, gt=0, le=1)

    def _statistic(self, kind: Kind) -> Callable[[np.ndarray, np.ndarray], float]:
        return js_numeric if kind == "numeric" else js_categorical


class Wasserstein(_Distance):
    """W1 distance; ``statistic`` = raw / std(reference), raw in ``extra["raw"]``."""

    test: Literal["wasserstein"] = "wasserstein"
    threshold: float = Field(default=0.1, gt=0)
    kinds: ClassVar[tuple[Kind, ...]] = ("numeric",)

    def _statistic(self, kind: Kind) -> Callable[[np.ndarray, np.ndarray], float]:
        return wasserstein_raw

    def _finish(self, stat: float, ref: np.ndarray, cur: np.ndarray, kind: Kind) -> dict[str, Any]:
        sd = float(np.std(ref))
        scale = sd if sd > 0 else 1.0
        return {"raw": stat, "reference_std": sd, "_statistic": stat / scale}


Detector = Annotated[KS | ChiSquare | PSI | JensenShannon | Wasserstein, Field(discriminator="test")]
_DETECTOR_ADAPTER: TypeAdapter[Detector] = TypeAdapter(Detector)


def parse_detector(spec: dict[str, Any] | Detector) -> Detector:
    """A detector from its dict form, e.g. ``{"test": "psi", "threshold": 0.25}``."""
    if isinstance(spec, _Detector):
        return spec
    return _DETECTOR_ADAPTER.validate_python(spec)


def run_detector(detector: Detector, reference: Any, current: Any, feature: str, kind: Kind) -> DriftResult:
    """Run any detector on one feature's two columns."""
    if not detector.applies_to(kind):
        raise ValueError(f"detector {detector.test!r} does not apply to a {kind} feature {feature!r}")
    if isinstance(detector, _Distance):
        return detector.run(reference, current, feature=feature, kind=kind)
    return detector.run(reference, current, feature=feature)


# --------------------------------------------------------------------------- vectorised KS


def nan_counts(reference: np.ndarray, current: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-column NaN counts of two [n, F] arrays → ([F], [F])."""
    ref, cur = _as_2d(reference, current)
    return np.isnan(ref).sum(axis=0), np.isnan(cur).sum(axis=0)


def _as_2d(reference: np.ndarray, current: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ref = np.asarray(reference, dtype=np.float64)
    cur = np.asarray(current, dtype=np.float64)
    ref = ref.reshape(-1, 1) if ref.ndim == 1 else ref
    cur = cur.reshape(-1, 1) if cur.ndim == 1 else cur
    if ref.ndim != 2 or cur.ndim != 2 or ref.shape[1] != cur.shape[1]:
        raise ValueError(f"ks_many needs [n_ref, F] and [n_cur, F], got {ref.shape} and {cur.shape}")
    return ref, cur


def ks_many(reference: np.ndarray, current: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two-sided two-sample KS for every column at once → (statistics [F], p_values [F]).

    One merged sort per call: both samples are stacked, argsorted along axis 0 (stable), and the
    two empirical CDFs are cumulative counts of each sample's rows (columns transposed to contiguous rows); the statistic is the largest
    |F_ref − F_cur| taken at the LAST row of each run of tied values (what ``searchsorted(...,
    side="right")`` gives in ``ks_2samp``), so it equals ``ks_2samp``'s statistic bit for bit.
    p-values: ``scipy.stats.distributions.kstwo.sf(D, round(n·m / (n + m)))``, i.e. exactly
    ``ks_2samp(..., method="asymp")``. NaNs are dropped per column (they sort last and are masked;
    see :func:`nan_counts`); a column with no values on either side gets NaN, NaN.
    """
    ref, cur = _as_2d(reference, current)
    n1 = (~np.isnan(ref)).sum(axis=0).astype(np.float64)
    n2 = (~np.isnan(cur)).sum(axis=0).astype(np.float64)
    data = np.concatenate([ref.T, cur.T], axis=1)  # [F, n_ref + n_cur], rows contiguous
    order = np.argsort(data, axis=1)  # order inside a tie run is irrelevant (see above)
    values = np.take_along_axis(data, order, axis=1)
    valid = ~np.isnan(values)
    # NaNs sort last, so at every valid position the counts only include valid values:
    # c1 = reference values ≤ here, c2 = (all values ≤ here) − c1.
    c1 = np.cumsum(order < ref.shape[0], axis=1, dtype=np.int64)
    c2 = np.arange(1, values.shape[1] + 1, dtype=np.int64)[None, :] - c1
    last_of_tie = np.ones(values.shape, dtype=bool)
    last_of_tie[:, :-1] = values[:, 1:] != values[:, :-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        diff = np.abs(c1 / n1[:, None] - c2 / n2[:, None])
        diff[~(last_of_tie & valid)] = 0.0
        d = diff.max(axis=1) if values.shape[1] else np.zeros(ref.shape[1])
        m = np.maximum(n1, n2)
        n = np.minimum(n1, n2)
        en = np.round(m * n / (m + n))
        ok = (n1 > 0) & (n2 > 0)
        p = np.full(d.shape, np.nan)
        p[ok] = np.clip(stats.distributions.kstwo.sf(d[ok], en[ok]), 0, 1)
    d = np.where(ok, d, np.nan)
    return d, p
