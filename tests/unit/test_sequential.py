"""Always-valid inference for the gates: mSPRT, delta method, SRM (vs savvi), latency histogram."""

from __future__ import annotations

import math
import sys
import types

import numpy as np
import pytest
from scipy.optimize import brentq

from rayml.rollout import sequential as sq

pytestmark = pytest.mark.unit


# --- mSPRT ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("estimate", "var", "tau", "alpha"),
    [
        (0.0, 1e-4, 0.02, 0.03),
        (-0.05, 4e-5, 0.02, 0.03),
        (0.3, 0.01, 0.1, 0.05),
        (1.0, 2.0, 0.5, 0.001),
    ],
)
def test_ci_is_the_numeric_inversion_of_lambda(estimate, var, tau, alpha):
    """The closed-form interval's ends are exactly where Λ(θ0) = 1/α."""

    def excess(theta0: float) -> float:
        return float(sq.msprt_log_lambda(estimate, var, tau, theta0)) - math.log(1 / alpha)

    span = 100 * math.sqrt(var)
    lower = brentq(excess, estimate - span, estimate, xtol=1e-14)
    upper = brentq(excess, estimate, estimate + span, xtol=1e-14)
    lo, hi = sq.msprt_ci(estimate, var, tau, alpha)
    assert lo == pytest.approx(lower, abs=1e-10) and hi == pytest.approx(upper, abs=1e-10)
    # p-value = min(1, 1/Λ): at most α exactly outside the interval
    assert (
        sq.msprt_p_value(estimate, var, tau, hi + 1e-6)
        < alpha
        < sq.msprt_p_value(estimate, var, tau, hi - 1e-6)
    )
    assert sq.msprt_p_value(estimate, var, tau, estimate) == 1.0


def test_radius_edge_cases_and_broadcasting():
    assert sq.msprt_radius(0.0, 0.02, 0.05) == 0.0
    assert sq.msprt_radius(np.inf, 0.02, 0.05) == np.inf or np.isnan(
        sq.msprt_radius(np.inf, 0.02, 0.05)
    )
    r = sq.msprt_radius(np.array([1e-4, 1e-5]), 0.02, 0.03)
    assert r.shape == (2,) and r[0] > r[1] > 0
    # wider than the fixed-horizon interval at the same α: the price of looking at any time
    _, hi = sq.fixed_horizon_ci(0.0, 1e-4, 0.03)
    assert r[0] > hi


def test_always_valid_ci_covers_under_continuous_monitoring():
    """500 Gaussian streams × 200 looks: the sequence misses the mean at any look in ≤ α of them."""
    rng = np.random.default_rng(7)
    alpha, mu, looks, paths = 0.05, 0.3, 200, 500
    x = rng.normal(mu, 1.0, (paths, looks))
    n = np.arange(1, looks + 1)
    estimate = np.cumsum(x, axis=1) / n
    var = 1.0 / n
    lo, hi = sq.msprt_ci(estimate, var, 0.5, alpha)
    missed = ((lo > mu) | (hi < mu)).any(axis=1).mean()
    assert missed <= alpha
    naive_lo, naive_hi = sq.fixed_horizon_ci(estimate, var, alpha)
    naive_missed = ((naive_lo > mu) | (naive_hi < mu)).any(axis=1).mean()
    assert (
        naive_missed > 3 * alpha
    )  # the plain interval checked at every look does not hold its level


# --- delta method ---------------------------------------------------------------------------------


def _clustered_users(rng: np.random.Generator, users: int, lift: float = 1.0) -> np.ndarray:
    """Per-user (clicks, impressions): heterogeneous visits (gamma) and propensities (beta), repeat
    visits."""
    n = 10 * (1 + rng.poisson(rng.gamma(1.0, 8.0, users)))
    p = rng.beta(1.0, 19.0, users) * lift
    return np.stack([rng.binomial(n, p), n]).astype(np.float64)


def _sums(cn: np.ndarray) -> tuple[float, ...]:
    c, n = cn
    return (len(c), c.sum(), n.sum(), (c * c).sum(), (n * n).sum(), (c * n).sum())


def test_delta_method_variance_matches_simulation_of_clustered_users():
    rng = np.random.default_rng(3)
    estimates, variances = [], []
    for _ in range(400):
        log_r, var = sq.ratio_log_variance(*_sums(_clustered_users(rng, 2000)))
        estimates.append(log_r)
        variances.append(var)
    empirical = np.var(estimates, ddof=1)
    assert np.mean(variances) == pytest.approx(empirical, rel=0.15)
    # treating impressions as independent (binomial) would understate it several-fold
    cn = _clustered_users(rng, 2000)
    r = cn[0].sum() / cn[1].sum()
    assert np.mean(variances) > 3 * (1 - r) / (r * cn[1].sum())


def test_ratio_variance_formula_equals_the_sample_covariance_form():
    c, n = _clustered_users(np.random.default_rng(1), 500)
    k, r = len(c), c.sum() / c.sum() * c.sum() / n.sum()
    s_c, s_n, s_cn = np.var(c, ddof=1), np.var(n, ddof=1), np.cov(c, n, ddof=1)[0, 1]
    textbook = (s_c - 2 * r * s_cn + r * r * s_n) / (k * n.mean() ** 2) / r**2
    log_r, var = sq.ratio_log_variance(*_sums(np.stack([c, n])))
    assert var == pytest.approx(textbook, rel=1e-9) and log_r == pytest.approx(math.log(r))


def test_ratio_variance_degenerate_inputs():
    _, var = sq.ratio_log_variance(1, 1, 10, 1, 100, 10)
    assert np.isnan(var)  # one user: no variance estimate
    log_r, var = sq.ratio_log_variance(10, 0, 100, 0, 1000, 0)
    assert log_r == -np.inf and var == np.inf
    theta, v = sq.log_lift((100, 50, 1000, 30, 10000, 600), (100, 50, 1000, 30, 10000, 600))
    assert theta == 0 and v == pytest.approx(
        2 * sq.ratio_log_variance(100, 50, 1000, 30, 10000, 600)[1]
    )


def test_fixed_horizon_sample_size_matches_statsmodels():
    power_mod = pytest.importorskip("statsmodels.stats.power")
    n = sq.fixed_horizon_users_per_arm(0.0202, 1.8, 0.03, 0.8)
    d = 0.0202 / math.sqrt(1.8)
    expected = power_mod.NormalIndPower().solve_power(
        effect_size=d, alpha=0.03, power=0.8, ratio=1.0
    )
    assert n == pytest.approx(expected, rel=1e-3)
    assert sq.fixed_horizon_users_per_arm(0.0, 1.8, 0.03) == math.inf


# --- shares ---------------------------------------------------------------------------------------


def test_share_variance_is_floored():
    share, var = sq.bernoulli_share(0, 10)
    assert share == 0 and var > 0
    _, lo, _ = sq.share_bounds(1, 1, 0.05, 0.01)
    assert lo < 0.05  # one slow request out of one never says "surely above 5 %"
    share, var = sq.bernoulli_share(0, 0)
    assert np.isnan(share) and var == np.inf


def test_one_sided_share_bound_holds_under_monitoring():
    """Requests above a threshold with true share 5 %: the lower bound exceeds 5 % in ≤ α of 400
    streams."""
    rng = np.random.default_rng(11)
    alpha, p = 0.01, 0.05
    counts = np.cumsum(rng.binomial(500, p, (400, 100)), axis=1)
    trials = 500 * np.arange(1, 101)
    _, lo, _ = sq.share_bounds(counts, trials, p, alpha)
    assert (lo > p).any(axis=1).mean() <= alpha
    # a real excess is found: share 8 %
    counts = np.cumsum(rng.binomial(500, 0.08, (50, 100)), axis=1)
    _, lo, _ = sq.share_bounds(counts, trials, p, alpha)
    assert (lo[:, -1] > p).all()


def test_share_difference_bounds():
    diff, lo, hi = sq.share_difference_bounds(300, 10_000, 20, 10_000, 0.005, 0.01)
    assert diff == pytest.approx(0.028) and lo > 0.005 and hi > diff
    _, lo, _ = sq.share_difference_bounds(25, 10_000, 20, 10_000, 0.005, 0.01)
    assert lo < 0.005


# --- SRM ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def savvi_multinomial():
    """savvi's Multinomial; savvi.utils imports matplotlib for plots only, stubbed when absent."""
    try:
        import matplotlib.pyplot  # noqa: F401
    except ImportError:
        sys.modules.setdefault("matplotlib", types.ModuleType("matplotlib"))
        sys.modules.setdefault("matplotlib.pyplot", types.ModuleType("matplotlib.pyplot"))
    module = pytest.importorskip("savvi.multinomial")
    return module.Multinomial


@pytest.mark.parametrize(
    ("probs", "batches", "k"),
    [
        ([0.5, 0.5], [[30, 20], [12, 9], [100, 140]], 100.0),
        ([0.0625, 0.9375], [[9, 91], [30, 400], [3, 50]], 100.0),
        ([0.25, 0.25, 0.5], [[10, 20, 30], [5, 5, 40], [60, 70, 100]], 30.0),
    ],
)
def test_srm_bayes_factor_matches_savvi(savvi_multinomial, probs, batches, k):
    p0 = np.array(probs)
    test = savvi_multinomial(0.05, p0, k)
    total = np.zeros(len(probs))
    for batch in batches:
        test.update(np.array(batch))
        total += batch
        assert sq.srm_log_bayes_factor(total, p0, k) == pytest.approx(math.log(test.odds), abs=1e-6)
    p_value = min(1.0, math.exp(-sq.srm_log_bayes_factor(total, p0, k)))
    assert p_value == pytest.approx(min(1.0, test.calculate_p_value()), rel=1e-6)


def test_srm_rejects_a_mismatch_and_rarely_a_correct_split():
    rng = np.random.default_rng(5)
    share, alpha = 0.0917, 0.005
    # 300 correct assignments, each watched user by user up to 5,000 users
    canary = np.cumsum(rng.random((300, 5000)) < share, axis=1)
    counts = np.stack([canary, np.arange(1, 5001) - canary], axis=-1)
    _, reject = sq.srm_test(counts, [share, 1 - share], alpha)
    assert reject.any(axis=1).mean() <= 2 * alpha
    # canary gets 20 % fewer users than expected
    _, reject = sq.srm_test(
        [0.8 * share * 20_000, (1 - 0.8 * share) * 20_000], [share, 1 - share], alpha
    )
    assert reject


# --- latency histogram ----------------------------------------------------------------------------


def test_latency_edges():
    edges = sq.LATENCY_EDGES_MS
    assert edges[0] == 0.05 and edges[-1] >= 120_000 > edges[-2]
    assert np.allclose(edges[1:] / edges[:-1], 1.05)
    assert len(edges) + 1 == sq.LATENCY_BUCKETS
    assert list(sq.latency_bucket([0.01, 0.05, 0.053, 1e9])) == [0, 1, 2, len(edges)]
    with pytest.raises(ValueError):
        edges[0] = 1.0


def test_quantile_is_never_below_the_sample_quantile():
    rng = np.random.default_rng(2)
    values = rng.lognormal(np.log(25), 0.5, 100_000)
    hist = sq.latency_histogram(values)
    assert hist.sum() == len(values)
    for q in (0.5, 0.95, 0.99):
        exact = np.quantile(values, q)
        got = float(sq.quantile_from_hist(hist, q))
        assert exact <= got < 1.05 * exact
    assert np.isnan(sq.quantile_from_hist(np.zeros(sq.LATENCY_BUCKETS), 0.95))
    overflow = np.zeros(sq.LATENCY_BUCKETS)
    overflow[-1] = 10
    assert sq.quantile_from_hist(overflow, 0.5) == np.inf


def test_count_above_never_overcounts():
    rng = np.random.default_rng(4)
    values = rng.lognormal(np.log(25), 0.5, 100_000)
    hist = sq.latency_histogram(values)
    for threshold in (10.0, 37.3, 60.0, 200.0):
        got = float(sq.count_above(hist, threshold))
        assert got <= (values >= threshold).sum()
        assert (
            got >= (values >= 1.05 * threshold).sum()
        )  # misses at most the bucket that straddles it
    assert sq.count_above(hist, np.inf) == 0
    both = sq.count_above(np.stack([hist, hist]), np.array([10.0, 60.0]))
    assert both.shape == (2,) and both[0] > both[1]
