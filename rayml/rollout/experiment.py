"""A/B experiment statistics: sample size, tests, SRM, CUPED and multiple-metric correction.

Pure functions on numbers, arrays and one pandas frame; no Ray, no serving.

Conventions
-----------
* Arm "a" is **control**, arm "b" is **treatment**. Every difference is ``treatment - control``
  and every relative lift is ``treatment / control - 1``.
* ``alternative`` follows statsmodels: ``"two-sided"``, ``"larger"`` (treatment > control) or
  ``"smaller"`` (treatment < control).
* ``ratio`` is ``n_treatment / n_control`` (unequal allocation, e.g. ``0.25`` for an 80/20 split).
* Sample sizes are users **per arm**, each rounded up with :func:`math.ceil`.

Choices
-------
* **Sample size for proportions** uses Cohen's h (``proportion_effectsize``: the difference of
  ``2 * arcsin(sqrt(p))``) with statsmodels' ``NormalIndPower``. For 5 % -> 5.1 % (a 2 % relative
  lift) at alpha 0.05 and power 0.8, two-sided, that is 752,684 users per arm, about 1.5 million
  in all. A 0.1-point absolute change on a 5 % base is tiny; the variance ``p (1 - p)`` barely
  moves, so the classic ``(z_a + z_b)^2 * 2 p q / delta^2`` formula gives the same figure.
* **Sample size for means** uses ``NormalIndPower`` on ``delta / sd`` (a z approximation). At the
  sizes where experiments live (thousands of users per arm) it differs from ``TTestIndPower`` by
  a user or two; the z version has a closed form and no convergence trouble.
* **Two proportions**: the p-value is the pooled z test (``proportions_ztest``); the CI of the
  difference is the unpooled Wald interval and the CI of the relative lift is the delta method on
  the log ratio (statsmodels ``confint_proportions_2indep(compare="ratio", method="log")``, the
  Katz interval).
* **Means**: Welch's t test (``scipy.stats.ttest_ind(equal_var=False)``) with the Welch CI of the
  difference; the lift CI is the delta method on the ratio of means.
* **CUPED** regresses the metric on the user's pre-experiment value of it: ``theta`` is the pooled
  within-arm slope ``sum_arm cov_arm(y, x) / sum_arm var_arm(x)`` (the slope an ANCOVA fits, so
  the estimate equals the OLS ``y ~ arm + x_pre`` treatment coefficient exactly), the adjusted
  metric is ``y - theta * (x - mean(x))`` and Welch's test runs on it. The SE ignores the
  uncertainty in ``theta`` (an O(1/n) effect). Variance reduction is ``1 - var(adj) / var(y)``,
  about ``corr(y, x)^2``.
* **SRM** (sample ratio mismatch) is a chi-squared goodness of fit of the arm counts against the
  configured weights, at alpha 0.001 by default: with that much data a real mismatch gives a
  tiny p-value, and a strict alpha keeps false alarms rare when it is checked daily.
* **Multiple metrics**: test 20 metrics at 5 % each and, when nothing changed, the chance that at
  least one comes out "significant" is ``1 - 0.95**20 = 64 %``. :func:`analyze` therefore tests
  the one **primary** metric at ``alpha`` alone, corrects the **secondary** metrics as one family
  (Holm by default, controlling the family-wise error rate; or Benjamini-Hochberg, controlling
  the false discovery rate), and tests each **guardrail** at ``alpha`` uncorrected (a missed
  harm costs more than a false alarm). Only the primary and guardrails *can block* a rollout;
  secondaries are for learning.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
from scipy import stats
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import NormalIndPower
from statsmodels.stats.proportion import (
    confint_proportions_2indep,
    proportion_effectsize,
    proportions_ztest,
)

Alternative = Literal["two-sided", "larger", "smaller"]
Correction = Literal["holm", "fdr_bh"]
Role = Literal["primary", "secondary", "guardrail"]
ALTERNATIVES: tuple[str, ...] = ("two-sided", "larger", "smaller")
CORRECTIONS: tuple[str, ...] = ("holm", "fdr_bh")
PRE_SUFFIX = "_pre"


class InvalidArgument(ValueError):
    """A bad input; ``argument`` names the parameter, ``problem`` says what is wrong with it."""

    def __init__(self, argument: str, problem: str) -> None:
        self.argument = argument
        self.problem = problem
        super().__init__(f"{argument} {problem}")


class MissingColumn(ValueError):
    """A column the analysis needs is not in the frame."""

    def __init__(self, column: str, columns: Sequence[str]) -> None:
        self.column = column
        self.columns = list(columns)
        super().__init__(f"no column {column!r} (columns: {', '.join(map(str, columns))})")


# ----------------------------------------------------------------------------------- validation


def _check_open_unit(name: str, value: float) -> None:
    if not (isinstance(value, int | float) and 0.0 < value < 1.0):
        raise InvalidArgument(name, f"must be in (0, 1), got {value}")


def _check_positive(name: str, value: float) -> None:
    if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
        raise InvalidArgument(name, f"must be > 0, got {value}")


def _check_alternative(alternative: str) -> None:
    if alternative not in ALTERNATIVES:
        raise InvalidArgument(
            "alternative", f"must be one of {', '.join(ALTERNATIVES)}, got {alternative!r}"
        )


def _check_direction(alternative: str, effect: float, what: str) -> None:
    if alternative == "larger" and effect <= 0:
        raise InvalidArgument("alternative", f"'larger' needs {what} > 0 (treatment above control)")
    if alternative == "smaller" and effect >= 0:
        raise InvalidArgument(
            "alternative", f"'smaller' needs {what} < 0 (treatment below control)"
        )


def _z(alpha: float) -> float:
    """Two-sided normal critical value for a ``1 - alpha`` interval."""
    return float(stats.norm.ppf(1.0 - alpha / 2.0))


# ---------------------------------------------------------------------------------- sample size


@dataclass(frozen=True)
class SampleSize:
    """Users needed per arm; ``control`` and ``treatment`` are each rounded up."""

    control: int
    treatment: int
    effect_size: float
    alpha: float
    power: float
    alternative: str
    ratio: float
    inputs: dict[str, float] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return self.control + self.treatment

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "total": self.total}


def _solve(
    effect: float,
    alpha: float,
    power: float,
    alternative: str,
    ratio: float,
    inputs: dict[str, float],
) -> SampleSize:
    n_control = float(
        NormalIndPower().solve_power(
            effect_size=effect, alpha=alpha, power=power, ratio=ratio, alternative=alternative
        )
    )
    return SampleSize(
        control=math.ceil(n_control),
        treatment=math.ceil(n_control * ratio),
        effect_size=effect,
        alpha=alpha,
        power=power,
        alternative=alternative,
        ratio=ratio,
        inputs=inputs,
    )


def _check_design(alpha: float, power: float, alternative: str, ratio: float) -> None:
    _check_open_unit("alpha", alpha)
    _check_open_unit("power", power)
    _check_alternative(alternative)
    _check_positive("ratio", ratio)


def sample_size(
    baseline: float,
    target: float,
    alpha: float = 0.05,
    power: float = 0.8,
    alternative: Alternative = "two-sided",
    ratio: float = 1.0,
) -> SampleSize:
    """Users per arm to detect a conversion rate moving from ``baseline`` to ``target``.

    Cohen's h (``proportion_effectsize(target, baseline)``) solved with ``NormalIndPower``;
    ``ratio`` is ``n_treatment / n_control``.
    """
    _check_open_unit("baseline", baseline)
    _check_open_unit("target", target)
    if target == baseline:
        raise InvalidArgument("target", f"must differ from baseline, got {target}")
    _check_design(alpha, power, alternative, ratio)
    _check_direction(alternative, target - baseline, "target - baseline")
    effect = float(proportion_effectsize(target, baseline))
    return _solve(
        effect, alpha, power, alternative, ratio, {"baseline": baseline, "target": target}
    )


def sample_size_means(
    delta: float,
    sd: float,
    alpha: float = 0.05,
    power: float = 0.8,
    alternative: Alternative = "two-sided",
    ratio: float = 1.0,
) -> SampleSize:
    """Users per arm to detect a change of ``delta`` in a mean with standard deviation ``sd``.

    Effect size ``delta / sd`` solved with ``NormalIndPower`` (z approximation, see module doc).
    """
    if not (isinstance(delta, int | float) and math.isfinite(delta) and delta != 0):
        raise InvalidArgument("delta", f"must be a non-zero number, got {delta}")
    _check_positive("sd", sd)
    _check_design(alpha, power, alternative, ratio)
    _check_direction(alternative, delta, "delta")
    return _solve(delta / sd, alpha, power, alternative, ratio, {"delta": delta, "sd": sd})


# ---------------------------------------------------------------------------------------- tests


@dataclass(frozen=True)
class TestResult:
    """One treatment-vs-control comparison; differences are treatment - control."""

    __test__ = False  # not a pytest class

    method: str
    n_control: int
    n_treatment: int
    control_mean: float
    treatment_mean: float
    difference: float
    std_error: float
    ci_low: float
    ci_high: float
    statistic: float
    p_value: float
    relative_lift: float
    lift_ci_low: float
    lift_ci_high: float
    alpha: float
    theta: float | None = None
    variance_reduction: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _check_count(name: str, successes: int, n: int) -> None:
    if n <= 0:
        raise InvalidArgument(f"n_{name}", f"must be > 0, got {n}")
    if not 0 <= successes <= n:
        raise InvalidArgument(f"successes_{name}", f"must be in [0, n_{name}], got {successes}")


def two_proportion_test(
    successes_a: int, n_a: int, successes_b: int, n_b: int, alpha: float = 0.05
) -> TestResult:
    """Pooled two-proportion z test of b (treatment) against a (control).

    The difference CI is unpooled Wald; the lift CI is the delta method on the log ratio
    (statsmodels' ``compare="ratio", method="log"``). Lift is NaN when control has no successes.
    """
    _check_count("a", successes_a, n_a)
    _check_count("b", successes_b, n_b)
    _check_open_unit("alpha", alpha)
    p_a, p_b = successes_a / n_a, successes_b / n_b
    se = math.sqrt(p_a * (1 - p_a) / n_a + p_b * (1 - p_b) / n_b)
    if 0 < successes_a + successes_b < n_a + n_b:
        stat, p_value = (
            float(v) for v in proportions_ztest([successes_b, successes_a], [n_b, n_a])
        )
    else:  # all zeros or all ones: no variance, no evidence
        stat, p_value = 0.0, 1.0
    z = _z(alpha)
    lift, lift_lo, lift_hi = math.nan, math.nan, math.nan
    if successes_a > 0 and successes_b > 0:
        lo, hi = confint_proportions_2indep(
            successes_b, n_b, successes_a, n_a, method="log", compare="ratio", alpha=alpha
        )
        lift, lift_lo, lift_hi = p_b / p_a - 1, float(lo) - 1, float(hi) - 1
    return TestResult(
        method="two-proportion z",
        n_control=n_a,
        n_treatment=n_b,
        control_mean=p_a,
        treatment_mean=p_b,
        difference=p_b - p_a,
        std_error=se,
        ci_low=p_b - p_a - z * se,
        ci_high=p_b - p_a + z * se,
        statistic=stat,
        p_value=p_value,
        relative_lift=lift,
        lift_ci_low=lift_lo,
        lift_ci_high=lift_hi,
        alpha=alpha,
    )


def _as_array(name: str, values: Any) -> np.ndarray:
    arr = np.asarray(values, dtype=float)
    if arr.ndim != 1 or arr.size < 2:
        raise InvalidArgument(
            name, f"needs a 1-d array of at least 2 values, got shape {arr.shape}"
        )
    if not np.isfinite(arr).all():
        raise InvalidArgument(name, "has NaN or infinite values")
    return arr


def _ratio_lift(
    mean_a: float, se_a: float, mean_b: float, se_b: float, z: float
) -> tuple[float, float, float]:
    """``mean_b / mean_a - 1`` with a delta-method CI; NaN when the control mean is 0."""
    if mean_a == 0:
        return math.nan, math.nan, math.nan
    ratio = mean_b / mean_a
    se = abs(1 / mean_a) * math.sqrt(se_b**2 + ratio**2 * se_a**2)
    return ratio - 1, ratio - 1 - z * se, ratio - 1 + z * se


def welch_test(x_a: Any, x_b: Any, alpha: float = 0.05, method: str = "welch t") -> TestResult:
    """Welch's t test of b (treatment) against a (control) with the Welch CI of the difference."""
    a, b = _as_array("x_a", x_a), _as_array("x_b", x_b)
    _check_open_unit("alpha", alpha)
    var_a, var_b = float(a.var(ddof=1)), float(b.var(ddof=1))
    se_a, se_b = math.sqrt(var_a / a.size), math.sqrt(var_b / b.size)
    se = math.hypot(se_a, se_b)
    mean_a, mean_b = float(a.mean()), float(b.mean())
    lift = _ratio_lift(mean_a, se_a, mean_b, se_b, _z(alpha))
    if se == 0:  # constant in both arms
        same = mean_a == mean_b
        stat, p_value = (0.0, 1.0) if same else (math.copysign(math.inf, mean_b - mean_a), 0.0)
        lo = hi = mean_b - mean_a
    else:
        res = stats.ttest_ind(b, a, equal_var=False)
        ci = res.confidence_interval(confidence_level=1 - alpha)
        stat, p_value, lo, hi = (
            float(res.statistic),
            float(res.pvalue),
            float(ci.low),
            float(ci.high),
        )
    return TestResult(
        method=method,
        n_control=int(a.size),
        n_treatment=int(b.size),
        control_mean=mean_a,
        treatment_mean=mean_b,
        difference=mean_b - mean_a,
        std_error=se,
        ci_low=lo,
        ci_high=hi,
        statistic=stat,
        p_value=p_value,
        relative_lift=lift[0],
        lift_ci_low=lift[1],
        lift_ci_high=lift[2],
        alpha=alpha,
    )


def _treatment_mask(arm: Any, n: int) -> np.ndarray:
    mask = np.asarray(arm)
    if mask.shape != (n,):
        raise InvalidArgument("arm", f"must have one entry per user ({n}), got shape {mask.shape}")
    if mask.dtype != bool:
        if not np.isin(mask, [0, 1]).all():
            raise InvalidArgument("arm", "must be boolean or 0/1 (1 = treatment)")
        mask = mask.astype(bool)
    if mask.all() or not mask.any():
        raise InvalidArgument("arm", "needs users in both arms")
    return mask


def cuped_theta(y: np.ndarray, x: np.ndarray, treated: np.ndarray) -> float:
    """Pooled within-arm slope of ``y`` on ``x`` (the ANCOVA slope)."""
    cross = sxx = 0.0
    for mask in (treated, ~treated):
        dx = x[mask] - x[mask].mean()
        cross += float(dx @ (y[mask] - y[mask].mean()))
        sxx += float(dx @ dx)
    return cross / sxx if sxx > 0 else 0.0


def cuped(y: Any, x_pre: Any, arm: Any, alpha: float = 0.05) -> TestResult:
    """CUPED-adjusted difference of means; ``arm`` is boolean or 0/1 with 1 = treatment.

    ``theta`` is the pooled within-arm slope of ``y`` on ``x_pre``; the adjusted metric
    ``y - theta * (x_pre - mean(x_pre))`` keeps the overall mean, and Welch's test runs on it.
    The result's ``variance_reduction`` is ``1 - var(adjusted) / var(y)``.
    """
    yv, xv = _as_array("y", y), _as_array("x_pre", x_pre)
    if xv.shape != yv.shape:
        raise InvalidArgument("x_pre", f"must match y in length ({yv.size}), got {xv.size}")
    treated = _treatment_mask(arm, yv.size)
    theta = cuped_theta(yv, xv, treated)
    adjusted = yv - theta * (xv - xv.mean())
    var_y = float(yv.var(ddof=1))
    reduction = 1 - float(adjusted.var(ddof=1)) / var_y if var_y > 0 else 0.0
    res = welch_test(adjusted[~treated], adjusted[treated], alpha, method="cuped welch t")
    return TestResult(**{**res.to_dict(), "theta": theta, "variance_reduction": reduction})


# ------------------------------------------------------------------------------------------ SRM


@dataclass(frozen=True)
class SRMResult:
    """Chi-squared goodness of fit of arm counts against the expected split."""

    arms: list[str]
    observed: list[int]
    expected: list[float]
    statistic: float
    p_value: float
    alpha: float
    mismatch: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def srm_check(
    observed_counts: Sequence[int] | Mapping[str, int],
    expected_weights: Sequence[float] | Mapping[str, float],
    alpha: float = 0.001,
) -> SRMResult:
    """Sample ratio mismatch: chi-squared test of counts against weights summing to 1 or 100.

    Mappings are matched by arm name; sequences by position. ``mismatch`` is ``p < alpha``.
    """
    if isinstance(observed_counts, Mapping):
        arms = [str(k) for k in observed_counts]
        counts = [int(v) for v in observed_counts.values()]
        if isinstance(expected_weights, Mapping):
            missing = [a for a in observed_counts if a not in expected_weights]
            if missing or len(expected_weights) != len(arms):
                raise InvalidArgument(
                    "expected_weights", f"must name the arms {arms}, got {list(expected_weights)}"
                )
            weights = [float(expected_weights[a]) for a in observed_counts]
        else:
            weights = [float(w) for w in expected_weights]
    else:
        counts = [int(v) for v in observed_counts]
        arms = [str(i) for i in range(len(counts))]
        if isinstance(expected_weights, Mapping):
            raise InvalidArgument(
                "expected_weights", "must be a sequence when counts are a sequence"
            )
        weights = [float(w) for w in expected_weights]
    _check_open_unit("alpha", alpha)
    if len(counts) < 2 or len(weights) != len(counts):
        raise InvalidArgument(
            "expected_weights",
            f"needs one weight per arm ({len(counts)} arms, >= 2), got {len(weights)}",
        )
    if any(c < 0 for c in counts) or sum(counts) == 0:
        raise InvalidArgument(
            "observed_counts", f"must be non-negative with a positive total, got {counts}"
        )
    total_w = sum(weights)
    if any(w <= 0 for w in weights) or not any(
        math.isclose(total_w, t, rel_tol=1e-6) for t in (1.0, 100.0)
    ):
        raise InvalidArgument(
            "expected_weights",
            f"must be positive and sum to 1 or 100, got {weights} (sum {total_w:g})",
        )
    n = sum(counts)
    expected = [n * w / total_w for w in weights]
    stat, p_value = stats.chisquare(counts, expected)
    return SRMResult(
        arms=arms,
        observed=counts,
        expected=expected,
        statistic=float(stat),
        p_value=float(p_value),
        alpha=alpha,
        mismatch=bool(p_value < alpha),
    )


# ------------------------------------------------------------------------------------- analysis


@dataclass(frozen=True)
class MetricResult:
    """One metric's test in an experiment, with its role and multiple-testing outcome.

    ``p_adjusted`` is the raw p for the primary and guardrails and the corrected p for
    secondaries; ``significant`` is ``p_adjusted < alpha``.
    """

    metric: str
    role: str
    test: TestResult
    p_adjusted: float
    significant: bool
    can_block: bool
    pre_column: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "role": self.role,
            "p_adjusted": self.p_adjusted,
            "significant": self.significant,
            "can_block": self.can_block,
            "pre_column": self.pre_column,
            **self.test.to_dict(),
        }


@dataclass(frozen=True)
class ExperimentResult:
    """Everything :func:`analyze` found; ``corrected_family`` lists the corrected metrics."""

    control: str
    treatment: str
    alpha: float
    correction: str
    corrected_family: list[str]
    metrics: list[MetricResult]
    srm: SRMResult

    def metric(self, name: str) -> MetricResult:
        for m in self.metrics:
            if m.metric == name:
                return m
        raise KeyError(name)

    @property
    def blocking(self) -> list[str]:
        """Metrics that can block and came out significant (either direction)."""
        return [m.metric for m in self.metrics if m.can_block and m.significant]

    def to_dict(self) -> dict[str, Any]:
        return {
            "control": self.control,
            "treatment": self.treatment,
            "alpha": self.alpha,
            "correction": self.correction,
            "corrected_family": self.corrected_family,
            "family_note": "primary at alpha alone; secondaries corrected as one family; "
            "guardrails at alpha each",
            "blocking": self.blocking,
            "srm": self.srm.to_dict(),
            "metrics": [m.to_dict() for m in self.metrics],
        }


def _is_binary(values: pd.Series) -> bool:
    return bool(values.isin([0, 1]).all())


def _split_arms(frame: pd.DataFrame, arm_column: str, control: str | None) -> tuple[Any, Any]:
    arms = sorted(frame[arm_column].dropna().unique().tolist(), key=str)
    if len(arms) != 2:
        raise InvalidArgument(arm_column, f"must hold exactly two arms, got {len(arms)}: {arms}")
    if control is None:
        return arms[0], arms[1]
    by_name = {str(a): a for a in arms}
    if str(control) not in by_name:
        raise InvalidArgument(
            "control", f"must be one of the arms {[str(a) for a in arms]}, got {control!r}"
        )
    ctrl = by_name[str(control)]
    return ctrl, next(a for a in arms if a != ctrl)


def _test_metric(
    frame: pd.DataFrame, metric: str, treated: pd.Series, alpha: float
) -> tuple[TestResult, str | None]:
    pre = metric + PRE_SUFFIX
    pre_col = pre if pre in frame.columns else None
    cols = [metric] + ([pre] if pre_col else [])
    for col in cols:
        if not (
            pd.api.types.is_numeric_dtype(frame[col]) or pd.api.types.is_bool_dtype(frame[col])
        ):
            raise InvalidArgument(col, f"must be numeric, got dtype {frame[col].dtype}")
    keep = frame[cols].notna().all(axis=1)
    y, t = frame.loc[keep, metric].astype(float), treated[keep]
    if _is_binary(y):
        s_a, n_a = int(y[~t].sum()), int((~t).sum())
        s_b, n_b = int(y[t].sum()), int(t.sum())
        return two_proportion_test(s_a, n_a, s_b, n_b, alpha), None
    if pre_col:
        x = frame.loc[keep, pre].astype(float)
        return cuped(y.to_numpy(), x.to_numpy(), t.to_numpy(), alpha), pre_col
    return welch_test(y[~t].to_numpy(), y[t].to_numpy(), alpha), None


def _adjust(pvalues: list[float], alpha: float, correction: str) -> list[float]:
    """Corrected p-values over the finite entries; NaN stays NaN."""
    finite = [i for i, p in enumerate(pvalues) if math.isfinite(p)]
    out = [math.nan] * len(pvalues)
    if finite:
        _, corrected, _, _ = multipletests(
            [pvalues[i] for i in finite], alpha=alpha, method=correction
        )
        for i, p in zip(finite, corrected, strict=True):
            out[i] = float(p)
    return out


def _roles(
    primary: str, secondary: Sequence[str], guardrails: Sequence[str]
) -> list[tuple[str, Role]]:
    roles: list[tuple[str, Role]] = [(primary, "primary")]
    roles += [(m, "secondary") for m in secondary] + [(m, "guardrail") for m in guardrails]
    names = [m for m, _ in roles]
    dupes = sorted({m for m in names if names.count(m) > 1})
    if dupes:
        raise InvalidArgument("metrics", f"must be listed once each, repeated: {', '.join(dupes)}")
    return roles


def analyze(
    frame: pd.DataFrame,
    primary: str,
    secondary: Sequence[str] = (),
    guardrails: Sequence[str] = (),
    alpha: float = 0.05,
    correction: Correction = "holm",
    control: str | None = None,
    arm_column: str = "arm",
    expected_weights: Mapping[str, float] | None = None,
    srm_alpha: float = 0.001,
) -> ExperimentResult:
    """Analyze a two-arm experiment with one row per user.

    * ``arm_column`` holds two arms; control is ``control`` or else the first in sorted order.
    * Binary (0/1) metrics get the two-proportion z test; other metrics get Welch's t test, or
      CUPED when a ``<metric>_pre`` column exists. Rows with a missing value are dropped per
      metric.
    * Family: the primary is tested at ``alpha`` alone; the secondaries are corrected as one
      family with ``correction`` (``"holm"`` or ``"fdr_bh"``); each guardrail is tested at
      ``alpha`` uncorrected. Only the primary and guardrails can block.
    * SRM: arm counts against ``expected_weights`` (arm -> weight, default an equal split).
    """
    _check_open_unit("alpha", alpha)
    if correction not in CORRECTIONS:
        raise InvalidArgument(
            "correction", f"must be one of {', '.join(CORRECTIONS)}, got {correction!r}"
        )
    roles = _roles(primary, secondary, guardrails)
    for col in [arm_column] + [m for m, _ in roles]:
        if col not in frame.columns:
            raise MissingColumn(col, list(frame.columns))
    if arm_column in {m for m, _ in roles}:
        raise InvalidArgument(arm_column, "is the arm column and cannot be a metric")
    ctrl, treat = _split_arms(frame, arm_column, control)
    frame = frame[frame[arm_column].notna()]
    treated = frame[arm_column] == treat
    tests = [_test_metric(frame, m, treated, alpha) for m, _ in roles]
    sec_idx = [i for i, (_, role) in enumerate(roles) if role == "secondary"]
    p_adj = [t.p_value for t, _ in tests]
    for i, p in zip(sec_idx, _adjust([p_adj[i] for i in sec_idx], alpha, correction), strict=True):
        p_adj[i] = p
    metrics = [
        MetricResult(
            metric=m,
            role=role,
            test=t,
            p_adjusted=p,
            significant=bool(p < alpha),
            can_block=role != "secondary",
            pre_column=pre,
        )
        for (m, role), (t, pre), p in zip(roles, tests, p_adj, strict=True)
    ]
    counts = {str(ctrl): int((~treated).sum()), str(treat): int(treated.sum())}
    weights = dict(expected_weights) if expected_weights else {a: 0.5 for a in counts}
    srm = srm_check(counts, weights, alpha=srm_alpha)
    return ExperimentResult(
        control=str(ctrl),
        treatment=str(treat),
        alpha=alpha,
        correction=correction,
        corrected_family=[roles[i][0] for i in sec_idx],
        metrics=metrics,
        srm=srm,
    )
