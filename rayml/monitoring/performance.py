"""Model performance with and without labels: label shift, CBPE, delayed-label metrics and rules.

Conventions (for every function here):

* Binary labels: ``labels`` is 0/1 (or bool), 1 = positive (a click). ``scores`` are P(y = 1 | x)
  from the model; a row is *predicted positive* when ``score > threshold`` (strictly greater).
* *Reference* = a window where the model is known to be good and labels are in (its training or
  validation period); *current* = the window being monitored, whose labels may not have arrived.
* Priors are P(y = 1); class vectors are ordered ``[negative, positive]``.
* Intervals are two-sided with coverage ``confidence`` (default 0.95).
* Daily series are in day order, oldest first; ``NaN`` marks a day without a value.

Label-free estimates rest on assumptions that the data cannot check by themselves:
BBSE assumes label shift (p(x | y) unchanged), CBPE assumes the scores stay calibrated, i.e.
p(y | x) unchanged (covariate shift at most). :func:`calibration_check` says when CBPE's
calibration assumption holds on the reference where the served scores lie.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import statsmodels.api as sm
from scipy.optimize import nnls
from scipy.stats import chi2, norm

from rayml.monitoring.metrics import ndcg_at_k, roc_auc

LOWER_IS_BETTER = frozenset(
    {"rmse", "mae", "pinball", "quantile_loss", "log_loss", "logloss", "ece", "brier"}
)


def _z(confidence: float) -> float:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    return float(norm.ppf(0.5 + confidence / 2))


def _binary(labels: np.ndarray | Sequence[Any]) -> np.ndarray:
    y = np.asarray(labels)
    if y.dtype != bool:
        if y.size and not np.isin(y, (0, 1)).all():
            raise ValueError("labels must be 0/1 or bool")
        y = y.astype(bool)
    return y


def _scores(scores: np.ndarray | Sequence[float]) -> np.ndarray:
    return np.asarray(scores, dtype=np.float64)


@dataclass(frozen=True)
class Interval:
    """A point estimate with a two-sided interval and (where it is normal-based) its std error."""

    value: float
    low: float
    high: float
    std: float = float("nan")

    def contains(self, x: float) -> bool:
        return self.low <= x <= self.high


# ---------------------------------------------------------------------------------------- priors


def label_prior(labels: np.ndarray | Sequence[Any]) -> float:
    """Share of positives, P(y = 1). NaN for an empty window."""
    y = _binary(labels)
    return float(y.mean()) if y.size else float("nan")


def prediction_prior(scores: np.ndarray | Sequence[float], threshold: float = 0.5) -> float:
    """Share of predicted positives, P(score > threshold). NaN for an empty window."""
    s = _scores(scores)
    return float((s > threshold).mean()) if s.size else float("nan")


@dataclass(frozen=True)
class WindowPrior:
    """Priors of one window: of the labels (if given), of the predictions and the mean score."""

    window: Hashable
    n: int
    label_prior: float  # NaN without labels
    predicted_prior: float  # NaN without scores
    mean_score: float  # NaN without scores; the CBPE estimate of the label prior


def priors_by_window(
    windows: np.ndarray | Sequence[Hashable],
    *,
    labels: np.ndarray | Sequence[Any] | None = None,
    scores: np.ndarray | Sequence[float] | None = None,
    threshold: float = 0.5,
) -> list[WindowPrior]:
    """Label prior and prediction prior per window (e.g. ``windows`` = the day of each row).

    Rows are grouped by the value of ``windows``; the result is sorted by window.
    """
    w = np.asarray(windows)
    y = None if labels is None else _binary(labels)
    s = None if scores is None else _scores(scores)
    for name, arr in (("labels", y), ("scores", s)):
        if arr is not None and len(arr) != len(w):
            raise ValueError(f"{name} has {len(arr)} rows, windows has {len(w)}")
    out = []
    for value in np.unique(w):
        rows = w == value
        out.append(
            WindowPrior(
                window=value.item() if hasattr(value, "item") else value,
                n=int(rows.sum()),
                label_prior=label_prior(y[rows]) if y is not None else float("nan"),
                predicted_prior=prediction_prior(s[rows], threshold)
                if s is not None
                else float("nan"),
                mean_score=float(s[rows].mean()) if s is not None else float("nan"),
            )
        )
    return out


# ------------------------------------------------------------------------------------------ BBSE


@dataclass(frozen=True)
class LabelShiftEstimate:
    """Black-box shift estimate (Lipton et al. 2018) of the current label prior.

    Attributes:
        prior: estimated P(y = 1) on the current window, with a bootstrap percentile interval.
        reference_prior: P(y = 1) on the reference.
        weights: importance weights ``w_y = p_current(y) / p_reference(y)``, ``[w0, w1]``.
        confusion: ``C[i, j] = P(ŷ = i, y = j)`` on the reference (joint, sums to 1).
        predicted: ``q[i] = P(ŷ = i)`` on the current window.
        separation: TPR − FPR of the thresholded score on the reference; BBSE's error scales
            with 1 / separation, so a value near 0 makes the estimate useless.
    """

    prior: Interval
    reference_prior: float
    weights: np.ndarray
    confusion: np.ndarray
    predicted: np.ndarray
    separation: float
    n_reference: int
    n_current: int
    threshold: float

    @property
    def shift(self) -> float:
        """Estimated current prior minus the reference prior."""
        return self.prior.value - self.reference_prior


def _bbse_prior(joint: np.ndarray, predicted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Solve ``C w = q`` with w ≥ 0 (non-negative least squares). → (weights, new prior)."""
    weights, _ = nnls(joint, predicted)
    prior = weights * joint.sum(axis=0)
    total = prior.sum()
    return weights, (prior / total if total > 0 else np.full(len(prior), np.nan))


def bbse(
    reference_labels: np.ndarray | Sequence[Any],
    reference_scores: np.ndarray | Sequence[float],
    current_scores: np.ndarray | Sequence[float],
    *,
    threshold: float = 0.5,
    confidence: float = 0.95,
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> LabelShiftEstimate:
    """Estimate the current label prior from unlabelled current scores (black-box shift estimation).

    Under label shift, ``q = C w`` with C the joint confusion matrix of the thresholded score on
    the reference and q the predicted-class distribution on the current window. ``w`` is solved
    by non-negative least squares and the new prior is ``w ⊙ reference prior``, normalised.
    The interval is a bootstrap percentile interval: the reference's four confusion cells and
    the current two predicted-class counts are redrawn from multinomials (the exact
    row-bootstrap of these counts), which covers the sampling error of both windows.
    The score need not be calibrated, only the same function on both windows.
    """
    y = _binary(reference_labels)
    ref = _scores(reference_scores) > threshold
    cur = _scores(current_scores) > threshold
    if len(y) != len(ref):
        raise ValueError(f"reference_labels has {len(y)} rows, reference_scores has {len(ref)}")
    if not len(y) or not len(cur):
        raise ValueError("BBSE needs a non-empty reference and current window")
    if y.all() or not y.any():
        raise ValueError("BBSE needs both classes in the reference labels")
    counts = np.array(
        [[np.sum(~ref & ~y), np.sum(~ref & y)], [np.sum(ref & ~y), np.sum(ref & y)]], float
    )
    cur_counts = np.array([np.sum(~cur), np.sum(cur)], float)
    joint, predicted = counts / counts.sum(), cur_counts / cur_counts.sum()
    weights, prior = _bbse_prior(joint, predicted)
    rng = np.random.default_rng(seed)
    boot_joint = rng.multinomial(len(y), joint.ravel(), n_bootstrap).reshape(
        n_bootstrap, 2, 2
    ) / len(y)
    boot_cur = rng.multinomial(len(cur), predicted, n_bootstrap) / len(cur)
    boot = np.array([_bbse_prior(boot_joint[b], boot_cur[b])[1][1] for b in range(n_bootstrap)])
    boot = boot[np.isfinite(boot)]
    alpha = (1 - confidence) / 2
    low, high = np.quantile(boot, [alpha, 1 - alpha]) if boot.size else (np.nan, np.nan)
    tpr = counts[1, 1] / counts[:, 1].sum()
    fpr = counts[1, 0] / counts[:, 0].sum()
    return LabelShiftEstimate(
        prior=Interval(
            float(prior[1]),
            float(low),
            float(high),
            float(boot.std()) if boot.size else float("nan"),
        ),
        reference_prior=float(y.mean()),
        weights=weights,
        confusion=joint,
        predicted=predicted,
        separation=float(tpr - fpr),
        n_reference=len(y),
        n_current=len(cur),
        threshold=threshold,
    )


# ------------------------------------------------------------------------------------------ CBPE


@dataclass(frozen=True)
class CBPEEstimate:
    """Label-free expected performance at ``threshold`` from calibrated scores.

    Each interval is for the *realised* metric once labels arrive, given the scores: labels are
    independent Bernoulli(p_i), so the counts are Poisson-binomial and the ratios get a
    normal (delta-method) approximation. It does not include error in the calibration itself.
    """

    n: int
    threshold: float
    ctr: Interval
    precision: Interval
    recall: Interval
    f1: Interval
    expected_confusion: dict[str, float]  # tp, fp, fn, tn (expected counts)
    n_predicted_positive: int


def _normal(value: float, var: float, z: float, lo: float = 0.0, hi: float = 1.0) -> Interval:
    std = math.sqrt(max(var, 0.0))
    return Interval(value, max(lo, value - z * std), min(hi, value + z * std), std)


def cbpe(
    scores: np.ndarray | Sequence[float], *, threshold: float = 0.5, confidence: float = 0.95
) -> CBPEEstimate:
    """Confidence-based performance estimation (CBPE) on an unlabelled window.

    With calibrated ``p_i``: expected CTR = mean p_i; expected TP = Σ p_i over predicted
    positives, FP = Σ (1 − p_i) over them, FN = Σ p_i over predicted negatives. Precision =
    TP / (TP + FP), recall = TP / (TP + FN), F1 = 2TP / (2TP + FP + FN) (ratios of expectations).
    """
    p = _scores(scores)
    if not p.size:
        raise ValueError("CBPE needs a non-empty window")
    if ((p < 0) | (p > 1)).any():
        raise ValueError("CBPE needs probabilities in [0, 1]")
    z = _z(confidence)
    pos = p > threshold
    n_pos = int(pos.sum())
    var = p * (1 - p)
    tp, var_tp = float(p[pos].sum()), float(var[pos].sum())  # A = realised TP
    fn, var_fn = float(p[~pos].sum()), float(var[~pos].sum())  # B = realised FN
    fp, tn = n_pos - tp, float(len(p) - n_pos) - fn
    n = len(p)
    ctr = _normal(float(p.mean()), float(var.sum()) / n**2, z)
    precision = (
        _normal(tp / n_pos, var_tp / n_pos**2, z) if n_pos else Interval(*(float("nan"),) * 4)
    )
    positives = tp + fn
    if positives > 0:
        r = tp / positives
        var_r = (fn**2 * var_tp + tp**2 * var_fn) / positives**4
        recall = _normal(r, var_r, z)
        d = tp + n_pos + fn
        f1 = 2 * tp / d
        var_f1 = (2 * (n_pos + fn) / d**2) ** 2 * var_tp + (2 * tp / d**2) ** 2 * var_fn
        f1_est = _normal(f1, var_f1, z)
    else:
        recall = f1_est = Interval(*(float("nan"),) * 4)
    return CBPEEstimate(
        n=n,
        threshold=threshold,
        ctr=ctr,
        precision=precision,
        recall=recall,
        f1=f1_est,
        expected_confusion={"tp": tp, "fp": fp, "fn": fn, "tn": tn},
        n_predicted_positive=n_pos,
    )


# ----------------------------------------------------------------------------------- calibration


@dataclass(frozen=True)
class ReliabilityCurve:
    """Equal-width score bins on [0, 1]: row count, mean score and positive rate per bin."""

    edges: np.ndarray  # [n_bins + 1]
    count: np.ndarray  # [n_bins]
    mean_score: np.ndarray  # [n_bins], NaN for empty bins
    positive_rate: np.ndarray  # [n_bins], NaN for empty bins


def _bin_index(scores: np.ndarray, n_bins: int) -> np.ndarray:
    return np.clip((scores * n_bins).astype(np.int64), 0, n_bins - 1)


def reliability_curve(
    labels: np.ndarray | Sequence[Any], scores: np.ndarray | Sequence[float], n_bins: int = 10
) -> ReliabilityCurve:
    """Reliability diagram data; bin b holds scores in [b/n_bins, (b+1)/n_bins), 1.0 in the last."""
    y, s = _binary(labels).astype(np.float64), _scores(scores)
    idx = _bin_index(s, n_bins)
    count = np.bincount(idx, minlength=n_bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_score = np.bincount(idx, s, n_bins) / count
        positive_rate = np.bincount(idx, y, n_bins) / count
    return ReliabilityCurve(
        np.linspace(0, 1, n_bins + 1), count.astype(np.int64), mean_score, positive_rate
    )


def expected_calibration_error(
    labels: np.ndarray | Sequence[Any], scores: np.ndarray | Sequence[float], n_bins: int = 10
) -> float:
    """ECE: Σ_b (n_b / n) · |positive rate_b − mean score_b| over equal-width bins."""
    curve = reliability_curve(labels, scores, n_bins)
    filled = curve.count > 0
    gap = np.abs(curve.positive_rate[filled] - curve.mean_score[filled])
    return float((curve.count[filled] * gap).sum() / curve.count.sum())


def spiegelhalter_z(
    labels: np.ndarray | Sequence[Any], scores: np.ndarray | Sequence[float]
) -> tuple[float, float]:
    """Spiegelhalter's test: z of Σ (y − p)(1 − 2p) under perfect calibration → (z, 2-sided p)."""
    y, p = _binary(labels).astype(np.float64), _scores(scores)
    num = float(np.sum((y - p) * (1 - 2 * p)))
    den = math.sqrt(float(np.sum((1 - 2 * p) ** 2 * p * (1 - p))))
    z = num / den if den > 0 else 0.0
    return z, float(2 * norm.sf(abs(z)))


def hosmer_lemeshow(
    labels: np.ndarray | Sequence[Any], scores: np.ndarray | Sequence[float], n_groups: int = 10
) -> tuple[float, float]:
    """Hosmer–Lemeshow statistic over ``n_groups`` score-quantile groups (χ², g − 2 df) → (H, p)."""
    y, p = _binary(labels).astype(np.float64), _scores(scores)
    order = np.argsort(p, kind="stable")
    stat = 0.0
    groups = [g for g in np.array_split(order, n_groups) if g.size]
    for g in groups:
        observed, expected, n = y[g].sum(), p[g].sum(), len(g)
        var = expected * (1 - expected / n)
        if var > 0:
            stat += (observed - expected) ** 2 / var
    df = max(len(groups) - 2, 1)
    return float(stat), float(chi2.sf(stat, df))


@dataclass(frozen=True)
class CalibrationCheck:
    """Whether CBPE can be trusted on the current (served) window.

    Attributes:
        ece_reference: ECE on the labelled reference.
        ece_served: the reference reliability gaps weighted by the *served* score distribution:
            Σ_b q_b · |positive rate_b − mean score_b|, q_b the share of current rows in bin
            b — the calibration error where the current traffic lies.
        uncovered: share of current rows in bins with fewer than ``min_bin_count`` reference rows.
        spiegelhalter: (z, p) on the reference; hosmer_lemeshow: (H, p) on the reference.
        trusted: all gates passed; ``reason`` says which failed, or what is still assumed.
    """

    ece_reference: float
    ece_served: float
    uncovered: float
    spiegelhalter: tuple[float, float]
    hosmer_lemeshow: tuple[float, float]
    trusted: bool
    reason: str


def calibration_check(
    reference_labels: np.ndarray | Sequence[Any],
    reference_scores: np.ndarray | Sequence[float],
    current_scores: np.ndarray | Sequence[float],
    *,
    n_bins: int = 10,
    max_ece: float = 0.02,
    alpha: float = 0.001,
    min_bin_count: int = 50,
    max_uncovered: float = 0.05,
) -> CalibrationCheck:
    """Decide whether label-free CBPE estimates on ``current_scores`` can be trusted.

    Gates: served-weighted ECE ≤ ``max_ece``; Spiegelhalter p ≥ ``alpha`` on the reference (a
    significant miscalibration); at most ``max_uncovered`` of the served rows in score bins the
    reference barely covers. Hosmer–Lemeshow is reported but does not gate: at monitoring
    sample sizes it rejects calibration errors far too small to matter. Even when trusted,
    CBPE assumes p(y | x) has not changed since the reference (no concept drift).
    """
    curve = reliability_curve(reference_labels, reference_scores, n_bins)
    cur = _scores(current_scores)
    served = np.bincount(_bin_index(cur, n_bins), minlength=n_bins) / max(len(cur), 1)
    gap = np.nan_to_num(np.abs(curve.positive_rate - curve.mean_score), nan=0.0)
    covered = curve.count >= min_bin_count
    ece_served = float((served * gap * covered).sum() / max(float((served * covered).sum()), 1e-12))
    uncovered = float(served[~covered].sum())
    spiegel = spiegelhalter_z(reference_labels, reference_scores)
    hl = hosmer_lemeshow(reference_labels, reference_scores, n_bins)
    problems = []
    if ece_served > max_ece:
        problems.append(f"served-weighted ECE {ece_served:.4f} > {max_ece}")
    if spiegel[1] < alpha:
        problems.append(
            f"reference miscalibrated (Spiegelhalter z={spiegel[0]:.2f}, "
            f"p={spiegel[1]:.2g} < {alpha})"
        )
    if uncovered > max_uncovered:
        problems.append(
            f"{uncovered:.1%} of served rows in score bins with < {min_bin_count} reference rows"
        )
    reason = (
        "; ".join(problems)
        if problems
        else (
            f"calibrated where the traffic is (served ECE {ece_served:.4f}, "
            f"Spiegelhalter z={spiegel[0]:.2f}); "
            "assumes p(y|x) unchanged since the reference"
        )
    )
    return CalibrationCheck(
        ece_reference=expected_calibration_error(reference_labels, reference_scores, n_bins),
        ece_served=ece_served,
        uncovered=uncovered,
        spiegelhalter=spiegel,
        hosmer_lemeshow=hl,
        trusted=not problems,
        reason=reason,
    )


# ---------------------------------------------------------------------- metrics (delayed labels)


def mrr(relevant: np.ndarray) -> float:
    """Mean reciprocal rank of the first relevant item; rows are slates in served order. [n, k].

    A slate without a relevant item contributes 0.
    """
    rel = np.asarray(relevant).astype(bool)
    first = rel.argmax(axis=1)
    rr = np.where(rel.any(axis=1), 1.0 / (first + 1), 0.0)
    return float(rr.mean()) if rr.size else float("nan")


def ranking_metrics(gains: np.ndarray, k: int) -> dict[str, float]:
    """NDCG@k, MRR@k and CTR@k of served slates with delayed labels.

    Args:
        gains: [n_slates, m] observed gain (1 = clicked) of each served item in served order.
            The ideal ranking for NDCG is the same slate re-sorted by gain (what the user saw).
        k: cut-off.
    """
    g = np.asarray(gains, dtype=np.float64)
    top = g[:, :k]
    return {
        f"ndcg@{k}": float(ndcg_at_k(g, g, k).mean()),
        f"mrr@{k}": mrr(top > 0),
        f"ctr@{k}": float((top > 0).mean()),
    }


def classification_metrics(
    labels: np.ndarray | Sequence[Any], scores: np.ndarray | Sequence[float], threshold: float = 0.5
) -> dict[str, float]:
    """Precision, recall, F1, accuracy at ``threshold``, AUC, label prior and prediction prior.

    A ratio with a zero denominator is NaN; AUC is NaN when one class is absent.
    """
    y, s = _binary(labels), _scores(scores)
    pred = s > threshold
    tp, fp = int(np.sum(pred & y)), int(np.sum(pred & ~y))
    fn = int(np.sum(~pred & y))
    nan = float("nan")
    precision = tp / (tp + fp) if tp + fp else nan
    recall = tp / (tp + fn) if tp + fn else nan
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else nan
    auc = roc_auc(y, s) if 0 < y.sum() < len(y) else nan
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "accuracy": float(np.mean(pred == y)) if len(y) else nan,
        "auc": auc,
        "label_prior": label_prior(y),
        "predicted_prior": prediction_prior(s, threshold),
    }


def pinball_loss(
    y: np.ndarray | Sequence[float], pred: np.ndarray | Sequence[float], quantile: float
) -> float:
    """Quantile (pinball) loss: mean of max(q·(y − ŷ), (q − 1)·(y − ŷ))."""
    if not 0 < quantile < 1:
        raise ValueError(f"quantile must be in (0, 1), got {quantile}")
    diff = np.asarray(y, np.float64) - np.asarray(pred, np.float64)
    return float(np.mean(np.maximum(quantile * diff, (quantile - 1) * diff)))


def regression_metrics(
    y: np.ndarray | Sequence[float],
    pred: np.ndarray | Sequence[float],
    quantiles: Mapping[float, np.ndarray | Sequence[float]] | None = None,
) -> dict[str, float]:
    """RMSE, MAE and, for each ``quantile → predictions`` given, ``pinball@q``."""
    diff = np.asarray(y, np.float64) - np.asarray(pred, np.float64)
    out = {"rmse": float(np.sqrt(np.mean(diff**2))), "mae": float(np.mean(np.abs(diff)))}
    for q, qpred in (quantiles or {}).items():
        out[f"pinball@{q:g}"] = pinball_loss(y, qpred, q)
    return out


# ------------------------------------------------------------------------ recalibration (concept)


def recalibration(clicked: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cox's recalibration fit ``logit P(y) = a + b·logit(p)`` → ((a, b), their covariance)."""
    p = np.clip(score, 1e-9, 1 - 1e-9)
    design = sm.add_constant(np.log(p) - np.log1p(-p))
    fit = sm.Logit(clicked.astype(np.float64), design).fit(disp=0)
    return np.asarray(fit.params), np.asarray(fit.cov_params())


def recalibration_change(reference: tuple[np.ndarray, np.ndarray], clicked: np.ndarray,
                         score: np.ndarray) -> tuple[float, float]:
    """Wald χ² (2 df) of the window's recalibration (a, b) against the reference's → (χ², p-value)."""
    params, cov = recalibration(clicked, score)
    diff = params - reference[0]
    chi2_stat = float(diff @ np.linalg.solve(cov + reference[1], diff))
    return chi2_stat, float(chi2.sf(chi2_stat, df=2))


# -------------------------------------------------------------------------------- drop rule


@dataclass(frozen=True)
class RuleResult:
    """Outcome of a rule: whether it fired, and the numbers behind the decision."""

    fired: bool
    evidence: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PerformanceDropRule:
    """Concept-drift alarm: a delayed-label metric dropped by more than ``max_relative_drop``.

    The current value is the mean of the last ``window_days`` daily values; the baseline is a
    configured value or the mean of the first ``window_days`` days of the series. The relative
    drop is ``(baseline − current) / |baseline|``, sign-flipped for metrics where lower is better
    (``higher_is_better`` is inferred from the name: rmse, mae, pinball, log_loss, ece, brier
    are lower-is-better). Days with NaN are skipped; a window needs ``min_days`` valid days
    (default: more than half of ``window_days``), else the rule does not fire and says why.
    """

    metric: str = "auc"
    max_relative_drop: float = 0.02
    window_days: int = 7
    baseline: float | None = None
    higher_is_better: bool | None = None
    min_days: int | None = None

    def __post_init__(self) -> None:
        if self.window_days < 1:
            raise ValueError("window_days must be ≥ 1")
        if self.max_relative_drop < 0:
            raise ValueError("max_relative_drop must be ≥ 0")

    @property
    def _higher_is_better(self) -> bool:
        if self.higher_is_better is not None:
            return self.higher_is_better
        return self.metric.split("@")[0].lower() not in LOWER_IS_BETTER

    def evaluate(
        self,
        series: Mapping[dt.date, float] | Sequence[float] | np.ndarray,
        *,
        baseline: float | None = None,
    ) -> RuleResult:
        """Evaluate on a daily series (a ``{date: value}`` mapping or values in day order)."""
        if isinstance(series, Mapping):
            days: list[Any] = sorted(series)
            values = np.array([series[d] for d in days], dtype=np.float64)
        else:
            values = np.asarray(series, dtype=np.float64)
            days = list(range(len(values)))
        need = self.min_days or self.window_days // 2 + 1
        base = baseline if baseline is not None else self.baseline
        evidence: dict[str, Any] = {
            "metric": self.metric,
            "window_days": self.window_days,
            "max_relative_drop": self.max_relative_drop,
        }
        if base is None:
            if len(values) < 2 * self.window_days:
                return RuleResult(
                    False,
                    evidence
                    | {
                        "reason": f"need {2 * self.window_days} days "
                        f"(baseline + current window), have {len(values)}"
                    },
                )
            head = values[: self.window_days]
            if np.isfinite(head).sum() < need:
                return RuleResult(
                    False, evidence | {"reason": "too few valid days in the baseline window"}
                )
            base = float(np.nanmean(head))
            evidence["baseline_days"] = (days[0], days[self.window_days - 1])
        tail = values[-self.window_days :]
        if len(tail) < self.window_days or np.isfinite(tail).sum() < need:
            return RuleResult(
                False,
                evidence | {"baseline": base, "reason": "too few valid days in the current window"},
            )
        current = float(np.nanmean(tail))
        change = (base - current) / abs(base) if base else float("nan")
        drop = change if self._higher_is_better else -change
        fired = bool(drop > self.max_relative_drop)
        evidence |= {
            "baseline": base,
            "current": current,
            "relative_drop": drop,
            "current_days": (days[-self.window_days], days[-1]),
            "reason": (
                f"{self.metric} {current:.4g} vs baseline {base:.4g}: "
                f"{drop:+.2%} relative drop {'>' if fired else '≤'} {self.max_relative_drop:.0%}"
            ),
        }
        return RuleResult(fired, evidence)


# ------------------------------------------------------------------------------ seasonality


@dataclass(frozen=True)
class SeasonalComparison:
    """The current window against the same phase ``period`` steps earlier."""

    current: float
    baseline: float
    deviation: float  # current − baseline
    relative_deviation: float  # deviation / |baseline|
    z: float
    std: float  # std of the deviation under "no change"
    period: int
    window: int


def seasonal_baseline(
    series: Sequence[float] | np.ndarray,
    period: int,
    *,
    window: int = 1,
    counts: Sequence[float] | np.ndarray | None = None,
) -> SeasonalComparison:
    """Compare the last ``window`` values with the same ``window`` one ``period`` earlier.

    ``period = window`` is the naive previous-window comparison. With ``counts`` (the series is
    a rate such as daily CTR and counts its denominators) the windows are count-weighted and the
    z-score uses the binomial variance of both windows. Without counts the std is the empirical
    std of the same lag-``period`` window differences over the earlier history (≥ 3 needed).
    """
    x = np.asarray(series, dtype=np.float64)
    if period < 1 or window < 1:
        raise ValueError("period and window must be ≥ 1")
    if window > period:
        raise ValueError(f"window={window} > period={period}: the two windows would overlap")
    if len(x) < period + window:
        raise ValueError(f"need ≥ period + window = {period + window} values, have {len(x)}")
    cur_sl, base_sl = (
        slice(len(x) - window, len(x)),
        slice(len(x) - period - window, len(x) - period),
    )
    if counts is not None:
        n = np.asarray(counts, dtype=np.float64)
        if len(n) != len(x):
            raise ValueError(f"counts has {len(n)} values, series has {len(x)}")
        nc, nb = n[cur_sl].sum(), n[base_sl].sum()
        current = float((x[cur_sl] * n[cur_sl]).sum() / nc)
        baseline = float((x[base_sl] * n[base_sl]).sum() / nb)
        std = math.sqrt(current * (1 - current) / nc + baseline * (1 - baseline) / nb)
    else:
        current, baseline = float(x[cur_sl].mean()), float(x[base_sl].mean())
        means = np.convolve(
            x, np.ones(window) / window, mode="valid"
        )  # means[t] = mean x[t:t+window]
        history = means[period : len(means) - 1] - means[: len(means) - 1 - period]
        history = history[np.isfinite(history)]
        if len(history) < 3:
            raise ValueError(
                "too little history for an empirical std; pass counts or a longer series"
            )
        std = float(history.std(ddof=1))
    deviation = current - baseline
    return SeasonalComparison(
        current=current,
        baseline=baseline,
        deviation=deviation,
        relative_deviation=deviation / abs(baseline) if baseline else float("nan"),
        z=deviation / std if std > 0 else float("nan"),
        std=std,
        period=period,
        window=window,
    )
