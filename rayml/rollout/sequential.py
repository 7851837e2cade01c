"""Always-valid (anytime-valid) inference for the canary gates; numpy/scipy only, vectorised.

Every function takes scalars or numpy arrays (broadcast elementwise) and returns numpy values;
callers pass cumulative, *mature* data (impressions whose attribution window has closed). See
``docs/rollout-statistics.md``.

Conventions:

- **Unit of analysis is the user.** A ratio metric (CTR) is summarised per arm by sums over users:
  ``k`` users with ≥ 1 impression, ``Σc``, ``Σn``, ``Σc²``, ``Σn²``, ``Σcn`` (``c``/``n``: a user's
  clicks/impressions).
- **Lift is on the log scale:** ``θ = log R_canary − log R_production``; the relative lift is
  ``exp(θ) − 1``.
- **mSPRT with a normal mixture** (Robbins 1970; Johari, Pekelis & Walsh 2017): for an estimate
  ``θ̂ ~ N(θ, V)`` and mixing distribution ``N(θ0, τ²)`` the likelihood ratio is
  ``Λ = sqrt(V/(V+τ²)) · exp(τ²(θ̂−θ0)² / (2V(V+τ²)))``; by Ville's inequality
  ``P(∃t: Λ_t ≥ 1/α) ≤ α`` under ``θ = θ0``, so ``{θ0: Λ < 1/α}`` is a (1−α) confidence sequence,
  valid at every look however often the caller peeks. ``V`` is the plug-in (CLT) variance.
- **Bounds of a two-sided (1−α) sequence are used one-sided** by the guardrails: each one-sided
  error is at most α (conservative: close to α/2 in practice).
- Degenerate inputs (no users, zero clicks, ``V = ∞``) give ``nan``/infinite bounds, never an
  exception; the gates skip a test whose inputs are degenerate.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.special import gammaln, xlogy
from scipy.stats import norm

FloatArray = NDArray[np.float64]

# --------------------------------------------------------------------------------------------------
# Ratio metric (CTR) per arm: delta method over users
# --------------------------------------------------------------------------------------------------


def ratio_log_variance(
    users: ArrayLike,
    clicks: ArrayLike,
    impressions: ArrayLike,
    clicks_sq: ArrayLike,
    impressions_sq: ArrayLike,
    clicks_impressions: ArrayLike,
) -> tuple[FloatArray, FloatArray]:
    """``(log R̂, Var(log R̂))`` of the ratio ``R̂ = Σc/Σn`` from per-user sums (delta method).

    ``Var(R̂) ≈ (1/k)(s_c² − 2R s_cn + R² s_n²)/n̄²`` with sample (co)variances over the ``k`` users
    and ``n̄ = Σn/k``; ``Var(log R̂) ≈ Var(R̂)/R²``. Because ``c̄ − R n̄ = 0`` this equals
    ``k Σ(c_u − R n_u)² / ((k−1)(Σc)²)``, which is what is computed (fewer cancellations). The
    result is ``nan`` for ``k < 2`` or ``Σn = 0`` and ``inf`` variance for ``Σc = 0``.
    """
    k = np.asarray(users, dtype=np.float64)
    c = np.asarray(clicks, dtype=np.float64)
    n = np.asarray(impressions, dtype=np.float64)
    cc = np.asarray(clicks_sq, dtype=np.float64)
    nn = np.asarray(impressions_sq, dtype=np.float64)
    cn = np.asarray(clicks_impressions, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = c / n
        # Σ(c_u − R n_u)²; rounding can take an exact 0 (identical users) below zero
        resid_sq = np.maximum(cc - 2.0 * ratio * cn + ratio * ratio * nn, 0.0)
        var = np.where(c > 0, k * resid_sq / ((k - 1.0) * c * c), np.inf)
        var = np.where((k >= 2) & (n > 0), var, np.nan)
        log_ratio = np.log(ratio)  # −inf for Σc = 0, nan for Σn = 0
    return log_ratio, var


def log_lift(
    canary: tuple[ArrayLike, ...], production: tuple[ArrayLike, ...]
) -> tuple[FloatArray, FloatArray]:
    """``(θ̂, V)``: log relative lift canary vs production, and its variance (the arms' summed).

    ``canary``/``production`` are the six sums of :func:`ratio_log_variance` in its argument order.
    The arms are treated as independent (disjoint users); a user who moved from production to canary
    adds a positive covariance, so the summed variance is then conservative.
    """
    log_c, var_c = ratio_log_variance(*canary)
    log_p, var_p = ratio_log_variance(*production)
    with np.errstate(invalid="ignore"):
        return log_c - log_p, var_c + var_p


# --------------------------------------------------------------------------------------------------
# Normal-mixture mSPRT
# --------------------------------------------------------------------------------------------------


def msprt_log_lambda(
    estimate: ArrayLike, var: ArrayLike, tau: ArrayLike, theta0: ArrayLike = 0.0
) -> FloatArray:
    """``log Λ`` of the normal-mixture SPRT of ``θ = theta0``.

    The mixture is ``N(theta0, τ²)``, the estimate ``~ N(θ, V)``.
    """
    x = np.asarray(estimate, dtype=np.float64) - np.asarray(theta0, dtype=np.float64)
    v = np.asarray(var, dtype=np.float64)
    t2 = np.asarray(tau, dtype=np.float64) ** 2
    with np.errstate(divide="ignore", invalid="ignore"):
        return 0.5 * np.log(v / (v + t2)) + t2 * x * x / (2.0 * v * (v + t2))


def msprt_p_value(
    estimate: ArrayLike, var: ArrayLike, tau: ArrayLike, theta0: ArrayLike = 0.0
) -> FloatArray:
    """Always-valid p-value of ``θ = theta0`` at this look: ``min(1, 1/Λ)``.

    It is valid at every look; the running minimum over looks (also valid) is the caller's to keep.
    """
    with np.errstate(over="ignore"):
        return np.minimum(1.0, np.exp(-msprt_log_lambda(estimate, var, tau, theta0)))


def msprt_radius(var: ArrayLike, tau: ArrayLike, alpha: ArrayLike) -> FloatArray:
    """Half-width of the (1−α) confidence sequence.

    ``sqrt(V(V+τ²)/τ² · (2 log(1/α) + log((V+τ²)/V)))``, obtained by solving ``Λ(θ0) = 1/α`` for
    ``θ0``. ``V = 0`` gives 0, ``V = ∞`` gives ``∞``.
    """
    v = np.asarray(var, dtype=np.float64)
    t2 = np.asarray(tau, dtype=np.float64) ** 2
    a = np.asarray(alpha, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        inner = v * (v + t2) / t2 * (2.0 * np.log(1.0 / a) + np.log((v + t2) / v))
        return np.where(v > 0, np.sqrt(inner), np.where(v == 0, 0.0, np.nan))


def msprt_ci(
    estimate: ArrayLike, var: ArrayLike, tau: ArrayLike, alpha: ArrayLike
) -> tuple[FloatArray, FloatArray]:
    """Always-valid (1−α) confidence interval ``θ̂ ± msprt_radius(V, τ, α)`` at this look."""
    est = np.asarray(estimate, dtype=np.float64)
    r = msprt_radius(var, tau, alpha)
    return est - r, est + r


def fixed_horizon_ci(
    estimate: ArrayLike, var: ArrayLike, alpha: ArrayLike = 0.05
) -> tuple[FloatArray, FloatArray]:
    """Plain (1−α) Wald interval ``θ̂ ± z_{1−α/2} √V``; NOT valid under peeking (for comparison)."""
    est = np.asarray(estimate, dtype=np.float64)
    half = norm.ppf(1.0 - np.asarray(alpha, dtype=np.float64) / 2.0) * np.sqrt(
        np.asarray(var, dtype=np.float64)
    )
    return est - half, est + half


def fixed_horizon_users_per_arm(
    effect: float, unit_var: float, alpha: float, power: float = 0.8
) -> float:
    """Users per arm of a fixed-horizon two-sided z-test: ``(z_{1−α/2} + z_power)² · 2σ² / Δ²``.

    ``unit_var`` is the per-user variance ``σ²`` of the metric on the test's scale (``k · Var`` of
    one arm's estimate), ``effect`` the distance ``Δ`` to detect. Infinite for ``Δ = 0``.
    """
    if effect == 0:
        return math.inf
    z = norm.ppf(1.0 - alpha / 2.0) + norm.ppf(power)
    return float(z * z * 2.0 * unit_var / (effect * effect))


# --------------------------------------------------------------------------------------------------
# Bernoulli shares (error rate, latency exceedance)
# --------------------------------------------------------------------------------------------------


def bernoulli_share(successes: ArrayLike, trials: ArrayLike) -> tuple[FloatArray, FloatArray]:
    """``(p̂, V)`` of a share ``x/n``: CLT variance ``p̃(1−p̃)/n``, floored by add-one smoothing.

    ``p̃ = (x+1)/(n+2)`` (Laplace) is used *for the variance only*, so ``p̂ = 0`` or ``1`` and small
    ``n`` never give ``V = 0`` (a bound that would fire on one request). ``n = 0`` gives
    ``p̂ = nan``, ``V = ∞``.
    """
    x = np.asarray(successes, dtype=np.float64)
    n = np.asarray(trials, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        share = np.where(n > 0, x / n, np.nan)
        smooth = (x + 1.0) / (n + 2.0)
        var = np.where(n > 0, smooth * (1.0 - smooth) / n, np.inf)
    return share, var


def share_bounds(
    successes: ArrayLike, trials: ArrayLike, tau: ArrayLike, alpha: ArrayLike
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """``(p̂, lower, upper)``: always-valid bounds of one share (e.g. requests above a threshold).

    The normal mixture on the CLT estimate of :func:`bernoulli_share`; use ``lower > p0`` to say
    "surely above ``p0``" with error at most α. ``τ`` is the scale of deviations that should be
    detected fastest (the gates use the nominal share).
    """
    share, var = bernoulli_share(successes, trials)
    lo, hi = msprt_ci(share, var, tau, alpha)
    return share, lo, hi


def share_difference_bounds(
    successes_a: ArrayLike,
    trials_a: ArrayLike,
    successes_b: ArrayLike,
    trials_b: ArrayLike,
    tau: ArrayLike,
    alpha: ArrayLike,
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """``(d̂, lower, upper)`` of ``p_a − p_b`` (e.g. canary − production error rate), always valid.

    Variances of :func:`bernoulli_share` summed (independent arms); ``lower > margin`` says "a is
    surely worse by more than ``margin``" with error at most α.
    """
    pa, va = bernoulli_share(successes_a, trials_a)
    pb, vb = bernoulli_share(successes_b, trials_b)
    diff = pa - pb
    lo, hi = msprt_ci(diff, va + vb, tau, alpha)
    return diff, lo, hi


# --------------------------------------------------------------------------------------------------
# Sample-ratio mismatch: Dirichlet–multinomial Bayes factor (Lindon & Malek 2022)
# --------------------------------------------------------------------------------------------------

SRM_CONCENTRATION = 100.0  # Dirichlet prior α0 = k·p0 with k = 100 (savvi's default)


def _log_beta(a: FloatArray) -> FloatArray:
    """Multivariate log Beta over the last axis: ``Σ log Γ(a_i) − log Γ(Σ a_i)``."""
    return np.sum(gammaln(a), axis=-1) - gammaln(np.sum(a, axis=-1))


def srm_log_bayes_factor(
    counts: ArrayLike, probs: ArrayLike, concentration: float = SRM_CONCENTRATION
) -> FloatArray:
    """``log BF`` of "assignment shares differ from ``probs``" against "they equal ``probs``".

    Lindon & Malek (2022): under the alternative the shares have a ``Dirichlet(k·probs)`` prior, so
    ``BF = B(α0 + x)/B(α0) / Π p0_i^{x_i}`` with ``α0 = k·p0`` and ``B`` the multivariate Beta
    function. It is a nonnegative martingale under the null when the counts grow one unit (here: one
    distinct user) at a time, so rejecting when ``BF ≥ 1/α`` has type-I error ≤ α at any stopping
    time. ``counts``: ``(..., d)``; ``probs``: ``(d,)`` or broadcastable, summing to 1. Equals
    ``log(savvi.multinomial.Multinomial(α, p0, k).odds)``.
    """
    x = np.asarray(counts, dtype=np.float64)
    p0 = np.broadcast_to(np.asarray(probs, dtype=np.float64), x.shape)
    alpha0 = concentration * p0
    return _log_beta(alpha0 + x) - _log_beta(alpha0) - np.sum(xlogy(x, p0), axis=-1)


def srm_test(
    counts: ArrayLike, probs: ArrayLike, alpha: float, concentration: float = SRM_CONCENTRATION
) -> tuple[FloatArray, NDArray[np.bool_]]:
    """``(log BF, reject)``: reject the expected shares when ``BF ≥ 1/α`` (anytime-valid)."""
    log_bf = srm_log_bayes_factor(counts, probs, concentration)
    return log_bf, log_bf >= math.log(1.0 / alpha)


# --------------------------------------------------------------------------------------------------
# Latency histogram
# --------------------------------------------------------------------------------------------------

LATENCY_RATIO = 1.05
LATENCY_MIN_MS = 0.05
LATENCY_MAX_MS = 120_000.0


def _latency_edges() -> FloatArray:
    steps = math.log(LATENCY_MAX_MS / LATENCY_MIN_MS) / math.log(LATENCY_RATIO)
    count = math.ceil(steps - 1e-9) + 1
    edges = LATENCY_MIN_MS * LATENCY_RATIO ** np.arange(count, dtype=np.float64)
    edges.flags.writeable = False
    return edges


LATENCY_EDGES_MS: FloatArray = _latency_edges()
"""Bucket edges ``0.05 · 1.05^i`` ms up to the first ≥ 120,000 ms (303 edges, last ≈ 125,354 ms).

A histogram has ``len(LATENCY_EDGES_MS) + 1`` buckets: bucket 0 is ``[0, 0.05)`` ms (underflow),
bucket ``i`` is ``[e_{i−1}, e_i)`` and the last is ``[e_last, ∞)`` (overflow).
"""
LATENCY_BUCKETS = len(LATENCY_EDGES_MS) + 1
_LOWER_EDGES = np.concatenate([[0.0], LATENCY_EDGES_MS])  # lower edge of each bucket
_UPPER_EDGES = np.concatenate([LATENCY_EDGES_MS, [np.inf]])  # upper edge of each bucket


def latency_bucket(latency_ms: ArrayLike) -> NDArray[np.intp]:
    """Bucket index of each latency (ms): ``e_{i−1} ≤ x < e_i`` goes to bucket ``i``."""
    return np.searchsorted(LATENCY_EDGES_MS, np.asarray(latency_ms, dtype=np.float64), side="right")


def latency_histogram(latency_ms: ArrayLike) -> NDArray[np.int64]:
    """Counts per bucket (length :data:`LATENCY_BUCKETS`) of the given latencies."""
    return np.bincount(latency_bucket(np.ravel(latency_ms)), minlength=LATENCY_BUCKETS).astype(
        np.int64
    )


def quantile_from_hist(counts: ArrayLike, q: float) -> FloatArray:
    """The q-quantile of a histogram: the UPPER edge of the bucket where the cumulative share ≥ q.

    Not interpolated, on purpose: it never under-states the quantile (it overstates it by less than
    one bucket, i.e. by < 5 %), so a threshold built on production's quantile is never too low.
    ``inf`` when the quantile lies in the overflow bucket, ``nan`` for an empty histogram.
    ``counts``: ``(..., LATENCY_BUCKETS)``.
    """
    h = np.asarray(counts, dtype=np.float64)
    cum = np.cumsum(h, axis=-1)
    total = cum[..., -1]
    reached = cum >= q * total[..., None]
    index = np.argmax(reached, axis=-1)
    return np.where(total > 0, _UPPER_EDGES[index], np.nan)


def count_above(counts: ArrayLike, threshold_ms: ArrayLike) -> FloatArray:
    """Requests surely slower than ``threshold_ms``: counts of buckets whose LOWER edge is ≥ it.

    The bucket that straddles the threshold is left out, so the count never exceeds the true count
    (it misses at most that one bucket): a guardrail on it does not fire because of bucketing.
    ``threshold_ms`` broadcasts against ``counts``' leading axes; ``inf``/``nan`` thresholds count
    nothing.
    """
    h = np.asarray(counts, dtype=np.float64)
    thr = np.asarray(threshold_ms, dtype=np.float64)[..., None]
    with np.errstate(invalid="ignore"):
        mask = thr <= _LOWER_EDGES  # bucket lies entirely at or above the threshold
    return np.sum(np.where(mask, h, 0.0), axis=-1)
