"""Performance without labels (BBSE, CBPE, calibration), delayed-label metrics, rules, seasons."""

from __future__ import annotations

import datetime as dt
import itertools
import math
from pathlib import Path

import numpy as np
import pytest

from rayml.config import load_config
from rayml.monitoring.performance import (
    PerformanceDropRule,
    bbse,
    calibration_check,
    cbpe,
    classification_metrics,
    expected_calibration_error,
    hosmer_lemeshow,
    label_prior,
    mrr,
    pinball_loss,
    prediction_prior,
    priors_by_window,
    ranking_metrics,
    regression_metrics,
    seasonal_baseline,
    spiegelhalter_z,
)
from rayml.world import World, WorldConfig, build_world

pytestmark = pytest.mark.unit
SCENARIOS = Path(__file__).resolve().parents[2] / "configs" / "world" / "scenarios"


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


# ------------------------------------------------------------------------------------- priors


def test_priors_by_window():
    windows = np.array([2, 1, 1, 2, 2, 1])
    labels = np.array([1, 0, 1, 0, 0, 0])
    scores = np.array([0.9, 0.2, 0.7, 0.6, 0.1, 0.3])
    a, b = priors_by_window(windows, labels=labels, scores=scores, threshold=0.5)
    assert (a.window, a.n, b.window, b.n) == (1, 3, 2, 3)
    assert a.label_prior == pytest.approx(1 / 3) and a.predicted_prior == pytest.approx(1 / 3)
    assert b.label_prior == pytest.approx(1 / 3) and b.predicted_prior == pytest.approx(2 / 3)
    assert a.mean_score == pytest.approx(0.4)
    assert math.isnan(priors_by_window(windows, scores=scores)[0].label_prior)
    assert label_prior([True, False, False, False]) == 0.25 and prediction_prior([0.5, 0.51]) == 0.5
    with pytest.raises(ValueError, match="labels has 2 rows"):
        priors_by_window(windows, labels=[0, 1])


# --------------------------------------------------------------------------------------- BBSE


def label_shift_sample(rng, n: int, prior: float, mu: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    """y ~ Bernoulli(prior), x | y ~ N(mu·y, 1): p(x | y) is fixed, only the prior moves."""
    y = rng.random(n) < prior
    return y, rng.normal(mu * y, 1.0)


def reference_posterior(x: np.ndarray, prior: float, mu: float = 2.0) -> np.ndarray:
    """P(y = 1 | x) under the reference prior: the calibrated score of a model fitted there."""
    return sigmoid(mu * x - mu**2 / 2 + math.log(prior / (1 - prior)))


@pytest.mark.parametrize("new_prior", [0.05, 0.2, 0.35, 0.6])
def test_bbse_recovers_a_known_prior(new_prior):
    rng = np.random.default_rng(1)
    ref_y, ref_x = label_shift_sample(rng, 50_000, 0.2)
    cur_y, cur_x = label_shift_sample(rng, 50_000, new_prior)
    est = bbse(
        ref_y, reference_posterior(ref_x, 0.2), reference_posterior(cur_x, 0.2), threshold=0.5
    )
    assert abs(est.prior.value - new_prior) < 0.01, est.prior
    assert abs(est.prior.value - cur_y.mean()) < 0.01
    assert est.prior.contains(new_prior) and est.prior.high - est.prior.low < 0.03
    assert est.reference_prior == pytest.approx(ref_y.mean())
    assert est.weights[1] == pytest.approx(est.prior.value / est.reference_prior, rel=1e-6)
    assert est.confusion.sum() == pytest.approx(1) and est.separation > 0.5


def test_bbse_without_shift_and_with_an_uninformative_score():
    rng = np.random.default_rng(2)
    ref_y, ref_x = label_shift_sample(rng, 50_000, 0.3)
    _, cur_x = label_shift_sample(rng, 50_000, 0.3)
    est = bbse(ref_y, reference_posterior(ref_x, 0.3), reference_posterior(cur_x, 0.3))
    assert abs(est.shift) < 0.01 and est.prior.contains(0.3)
    noise = bbse(ref_y, rng.random(50_000), rng.random(50_000))
    assert (
        abs(noise.separation) < 0.02 and noise.prior.high - noise.prior.low > 0.2
    )  # says it cannot tell
    with pytest.raises(ValueError, match="both classes"):
        bbse(np.zeros(10), np.zeros(10), np.zeros(10))


def _label_shift_world_events(tmp_path) -> tuple[World, dict[str, np.ndarray]]:
    """The label_shift scenario with 20k users and a sharper click model (so the true click
    probability separates the classes well enough for ±0.01), built in about a second."""
    config = load_config(SCENARIOS / "label_shift.yaml", WorldConfig).model_dump()
    config.update(n_users=20_000, click={**config["click"], "taste_scale": 4.0})
    world_config = WorldConfig.model_validate(config)
    build_world(world_config, tmp_path / "ls")
    world = World(tmp_path / "ls")
    events = world.events_dataset().to_table(columns=["user_id", "item_id", "ts", "clicked"])
    day = (events["ts"].to_numpy() - np.datetime64(world_config.start_date)) // np.timedelta64(
        1, "D"
    )
    users, items = events["user_id"].to_numpy(), events["item_id"].to_numpy()
    score = world.relevance(np.arange(world.n_users), np.arange(world.n_items))[users, items]
    return world, {
        "day": day,
        "clicked": events["clicked"].to_numpy(zero_copy_only=False),
        "score": score,
    }


def test_bbse_on_the_label_shift_world(tmp_path):
    world, ev = _label_shift_world_events(tmp_path)
    start = world.config.drift.label_shift.start_day
    ref, cur = ev["day"] < start, ev["day"] >= start
    realised = ev["clicked"][cur].mean()
    assert abs(realised - world.config.drift.label_shift.new_prior) < 0.01
    assert realised - ev["clicked"][ref].mean() > 0.05  # the prior did move
    est = bbse(ev["clicked"][ref], ev["score"][ref], ev["score"][cur], threshold=0.3)
    assert abs(est.prior.value - realised) < 0.01, (est.prior, realised)
    assert est.prior.contains(realised)
    # the scores are calibrated on the reference, but CBPE (which assumes p(y|x) kept) misses the
    # prior move that BBSE sees: label shift changes p(y|x)
    assert abs(cbpe(ev["score"][ref]).ctr.value - ev["clicked"][ref].mean()) < 0.01
    assert realised - cbpe(ev["score"][cur]).ctr.value > 0.03


# --------------------------------------------------------------------------------------- CBPE


def covariate_shift_sample(seed: int = 3) -> dict[str, np.ndarray]:
    """Reference rows with calibrated scores, and a current window drawn from them by
    importance resampling ∝ exp(0.8 x): p(x) moves, p(y | x) is kept (pure covariate shift).
    The pool is large so that few rows are drawn twice (CBPE's interval wants independent rows)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 1, 1_000_000)
    p = sigmoid(-1.5 + 1.5 * x)
    y = rng.random(len(x)) < p
    w = np.exp(0.8 * x)
    rows = rng.choice(len(x), 50_000, p=w / w.sum())
    return {"ref_y": y, "ref_p": p, "cur_y": y[rows], "cur_p": p[rows]}


def test_cbpe_matches_realised_metrics_under_covariate_shift():
    d = covariate_shift_sample()
    est = cbpe(d["cur_p"], threshold=0.5)
    real = classification_metrics(d["cur_y"], d["cur_p"], threshold=0.5)
    assert abs(d["cur_y"].mean() - d["ref_y"].mean()) > 0.1  # the shift is large
    assert abs(est.ctr.value - d["cur_y"].mean()) < 0.02
    assert abs(est.precision.value - real["precision"]) < 0.02
    assert abs(est.recall.value - real["recall"]) < 0.02
    assert abs(est.f1.value - real["f1"]) < 0.02
    for name in ("ctr", "precision", "recall", "f1"):
        interval = getattr(est, name)
        realised = d["cur_y"].mean() if name == "ctr" else real[name]
        assert interval.contains(realised), (name, interval, realised)
    check = calibration_check(d["ref_y"], d["ref_p"], d["cur_p"])
    assert check.trusted, check.reason
    assert check.ece_served < 0.01 and check.uncovered == 0


def test_cbpe_by_hand():
    est = cbpe([0.9, 0.6, 0.4, 0.1], threshold=0.5)
    tp, fp, fn = 1.5, 0.5, 0.5
    assert est.expected_confusion == pytest.approx({"tp": tp, "fp": fp, "fn": fn, "tn": 1.5})
    assert est.ctr.value == pytest.approx(0.5)
    assert est.precision.value == pytest.approx(tp / (tp + fp))
    assert est.recall.value == pytest.approx(tp / (tp + fn))
    assert est.f1.value == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert est.ctr.std == pytest.approx(math.sqrt(0.09 + 0.24 + 0.24 + 0.09) / 4)
    assert est.precision.std == pytest.approx(math.sqrt(0.09 + 0.24) / 2)


def test_miscalibrated_scores_are_not_trusted():
    d = covariate_shift_sample()
    over = sigmoid(np.log(d["ref_p"] / (1 - d["ref_p"])) + 0.5)
    check = calibration_check(
        d["ref_y"], over, sigmoid(np.log(d["cur_p"] / (1 - d["cur_p"])) + 0.5)
    )
    assert not check.trusted and "ECE" in check.reason and "Spiegelhalter" in check.reason
    # served scores where the reference has (almost) no rows
    narrow = np.clip(d["ref_p"], 0, 0.69)
    check = calibration_check(d["ref_y"], narrow, np.full(1000, 0.95))
    assert not check.trusted and "reference rows" in check.reason


def test_calibration_statistics_by_hand():
    labels, scores = np.array([1, 0, 1, 0]), np.array([0.95, 0.15, 0.15, 0.85])
    # bins: 0.15 → bin 1 (rate 1/2, mean 0.15); 0.85, 0.95 → bins 8, 9
    assert expected_calibration_error(labels, scores) == pytest.approx(
        (2 * abs(0.5 - 0.15) + abs(0 - 0.85) + abs(1 - 0.95)) / 4
    )
    z, p = spiegelhalter_z(labels, scores)
    num = sum((y - s) * (1 - 2 * s) for y, s in zip(labels, scores, strict=True))
    den = math.sqrt(sum((1 - 2 * s) ** 2 * s * (1 - s) for s in scores))
    assert z == pytest.approx(num / den) and 0 < p < 1
    rng = np.random.default_rng(4)
    s = rng.random(20_000)
    y = rng.random(20_000) < s
    assert abs(spiegelhalter_z(y, s)[0]) < 3 and hosmer_lemeshow(y, s)[1] > 0.001
    assert hosmer_lemeshow(y, np.clip(s + 0.1, 0, 1))[1] < 1e-6


# ------------------------------------------------------------------------------------ metrics


def test_classification_metrics_by_hand():
    labels = np.array([1, 1, 0, 0, 1, 0, 0, 1])
    scores = np.array([0.9, 0.4, 0.6, 0.2, 0.7, 0.1, 0.5, 0.3])
    m = classification_metrics(labels, scores, threshold=0.5)
    tp, fp, fn = 2, 1, 2  # predicted positive: 0.9, 0.6, 0.7 (0.5 is not > 0.5)
    assert m["precision"] == pytest.approx(tp / (tp + fp))
    assert m["recall"] == pytest.approx(tp / (tp + fn))
    assert m["f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert m["accuracy"] == pytest.approx(5 / 8)
    pos, neg = scores[labels == 1], scores[labels == 0]
    pairs = [1.0 if a > b else 0.5 if a == b else 0.0 for a, b in itertools.product(pos, neg)]
    assert m["auc"] == pytest.approx(np.mean(pairs))
    assert m["label_prior"] == 0.5 and m["predicted_prior"] == pytest.approx(3 / 8)
    assert math.isnan(classification_metrics([0, 0], [0.1, 0.2])["auc"])


def test_ranking_metrics_by_hand():
    gains = np.array([[0, 1, 0, 1], [1, 0, 0, 0], [0, 0, 0, 0]])
    assert mrr(gains > 0) == pytest.approx((1 / 2 + 1 + 0) / 3)
    m = ranking_metrics(gains, k=3)
    ndcg_0 = (1 / math.log2(3)) / (1 + 1 / math.log2(3))  # ideal slate [1, 1, 0, 0]
    assert m["ndcg@3"] == pytest.approx((ndcg_0 + 1 + 0) / 3)
    assert m["mrr@3"] == pytest.approx((1 / 2 + 1) / 3)
    assert m["ctr@3"] == pytest.approx(2 / 9)


def test_regression_metrics_by_hand():
    y, pred = np.array([1.0, 2.0, 4.0]), np.array([2.0, 2.0, 1.0])
    q90 = np.array([3.0, 3.0, 3.0])
    m = regression_metrics(y, pred, quantiles={0.9: q90})
    assert m["rmse"] == pytest.approx(math.sqrt((1 + 0 + 9) / 3))
    assert m["mae"] == pytest.approx(4 / 3)
    # pinball at 0.9: under-prediction costs 0.9 per unit, over-prediction 0.1
    assert m["pinball@0.9"] == pytest.approx((0.1 * 2 + 0.1 * 1 + 0.9 * 1) / 3)
    assert pinball_loss(y, y, 0.5) == 0
    with pytest.raises(ValueError):
        pinball_loss(y, y, 1.0)


# ---------------------------------------------------------------------------------- drop rule


def test_performance_drop_rule():
    rule = PerformanceDropRule(metric="auc", max_relative_drop=0.02, window_days=7)
    start = dt.date(2026, 1, 1)
    days = [start + dt.timedelta(days=i) for i in range(14)]
    dropped = dict(zip(days, [0.80] * 7 + [0.78] * 7, strict=True))  # -2.5 %
    result = rule.evaluate(dropped)
    assert result.fired and result.evidence["relative_drop"] == pytest.approx(0.025)
    assert result.evidence["baseline"] == pytest.approx(0.80) and result.evidence[
        "current"
    ] == pytest.approx(0.78)
    assert result.evidence["current_days"] == (days[7], days[13])
    assert not rule.evaluate([0.80] * 7 + [0.79] * 7).fired  # -1.25 %
    assert not rule.evaluate([0.80] * 7 + [0.85] * 7).fired  # got better
    assert rule.evaluate([0.80] * 3 + [0.77] * 7, baseline=0.80).fired  # configured baseline
    too_short = rule.evaluate([0.80] * 10)
    assert not too_short.fired and "need 14 days" in too_short.evidence["reason"]
    rmse = PerformanceDropRule(metric="rmse", window_days=2)
    assert (
        rmse.evaluate([1.0, 1.0, 1.1, 1.1]).fired and not rmse.evaluate([1.0, 1.0, 0.9, 0.9]).fired
    )
    nan_days = rule.evaluate([0.80] * 7 + [0.78, np.nan] * 3 + [0.78])
    assert nan_days.fired and nan_days.evidence["current"] == pytest.approx(0.78)


# ---------------------------------------------------------------------------------- seasonal


def test_seasonal_baseline_on_a_synthetic_series():
    t = np.arange(28)
    ctr = 0.2 + 0.03 * np.sin(2 * np.pi * t / 7)
    counts = np.full(28, 1e6)
    seasonal = seasonal_baseline(ctr, period=7, counts=counts)
    naive = seasonal_baseline(ctr, period=1, counts=counts)
    assert abs(seasonal.z) < 1e-6 and abs(naive.z) > 10
    week = seasonal_baseline(ctr, period=7, window=7)  # empirical std of earlier week-on-week moves
    assert week.deviation == pytest.approx(0, abs=1e-12)
    bumped = ctr.copy()
    bumped[-1] += 0.02
    hit = seasonal_baseline(bumped, period=7, counts=counts)
    assert hit.deviation == pytest.approx(0.02) and hit.z > 10
    with pytest.raises(ValueError, match="period"):
        seasonal_baseline(ctr[:5], period=7)


def test_seasonal_world_naive_comparison_alarms_seasonal_baseline_does_not(tmp_path):
    config = load_config(SCENARIOS / "seasonal.yaml", WorldConfig)
    build_world(config, tmp_path / "season")
    events = World(tmp_path / "season").events_dataset().to_table(columns=["ts", "clicked"])
    day = (events["ts"].to_numpy() - np.datetime64(config.start_date)) // np.timedelta64(1, "D")
    clicked = events["clicked"].to_numpy(zero_copy_only=False)
    counts = np.bincount(day, minlength=config.days).astype(float)
    ctr = np.bincount(day, clicked, minlength=config.days) / counts
    period = round(config.drift.seasonality.period_days)
    days = range(period, config.days)
    naive = [seasonal_baseline(ctr[: d + 1], period=1, counts=counts[: d + 1]).z for d in days]
    seasonal = [
        seasonal_baseline(ctr[: d + 1], period=period, counts=counts[: d + 1]).z for d in days
    ]
    naive_alarms = sum(abs(z) > 3 for z in naive)
    seasonal_alarms = sum(abs(z) > 3 for z in seasonal)
    assert naive_alarms >= len(days) // 2, np.round(naive, 1)
    assert seasonal_alarms == 0, np.round(seasonal, 1)
