"""Drift detectors, the default preset, data quality and k-of-n false-alarm control."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError
from scipy import stats
from scipy.spatial.distance import jensenshannon
from statsmodels.stats.multitest import multipletests

from rayml.monitoring.alarms import (
    KOfN,
    _simulate,
    binomial_tail,
    false_alarm_rate_per_day,
    markov_expected,
    stationary_rates,
)
from rayml.monitoring.detectors import (
    KS,
    PSI,
    ChiSquare,
    DriftResult,
    JensenShannon,
    Wasserstein,
    ks_many,
    nan_counts,
    parse_detector,
)
from rayml.monitoring.presets import (
    EMPTY_WINDOW,
    SchemaMismatch,
    default_preset,
    evidently_preset,
    run_preset,
    run_segmented,
)
from rayml.monitoring.quality import quality_report

pytestmark = pytest.mark.unit


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


# ----------------------------------------------------------------- independent reference PSI


def psi_reference(reference: np.ndarray, current: np.ndarray) -> float:
    """Explicit-loop PSI: deciles of the reference (linear), bin i = [e_{i-1}, e_i), outer bins
    open, ε = 1e-4 for empty bins, natural log."""
    qs = [np.quantile(reference, k / 10) for k in range(1, 10)]

    def bin_of(x: float) -> int:
        b = 0
        for e in qs:
            if x >= e:
                b += 1
        return b

    ref_counts = [0] * 10
    cur_counts = [0] * 10
    for x in reference:
        ref_counts[bin_of(x)] += 1
    for x in current:
        cur_counts[bin_of(x)] += 1
    total = 0.0
    for rc, cc in zip(ref_counts, cur_counts, strict=True):
        r = rc / len(reference) if rc else 1e-4
        c = cc / len(current) if cc else 1e-4
        total += (c - r) * math.log(c / r)
    return total


def bins_reference(values: np.ndarray, reference: np.ndarray) -> np.ndarray:
    qs = [np.quantile(reference, k / 10) for k in range(1, 10)]
    counts = np.zeros(10)
    for x in values:
        counts[sum(x >= e for e in qs)] += 1
    return counts / len(values)


# ----------------------------------------------------------------- detectors


def test_ks_equals_scipy(rng: np.random.Generator) -> None:
    ref, cur = rng.normal(size=700), rng.normal(0.1, 1.1, size=400)
    for method in ("asymp", "auto", "exact"):
        res = KS(method=method).run(ref, cur, feature="f")
        sp = stats.ks_2samp(ref, cur, method=method)
        assert res.statistic == pytest.approx(sp.statistic, abs=1e-9)
        assert res.p_value == pytest.approx(sp.pvalue, abs=1e-9)
        assert res.drifted == (sp.pvalue < 0.05)


def test_chi2_equals_scipy_with_new_category() -> None:
    ref = np.array(["a"] * 50 + ["b"] * 30 + ["c"] * 20, dtype=object)
    cur = np.array(["a"] * 30 + ["b"] * 30 + ["c"] * 25 + ["d"] * 15, dtype=object)
    res = ChiSquare().run(ref, cur, feature="cat")
    table = np.array([[50, 30, 20, 0], [30, 30, 25, 15]])
    sp = stats.chi2_contingency(table, correction=False)
    assert res.statistic == pytest.approx(sp.statistic, abs=1e-9)
    assert res.p_value == pytest.approx(sp.pvalue, abs=1e-9)
    assert res.extra["new_category_rate"] == pytest.approx(0.15)
    assert res.extra["n_categories"] == 4


def test_chi2_single_category_is_no_drift() -> None:
    res = ChiSquare().run(np.array(["a"] * 5, dtype=object), np.array(["a"] * 3, dtype=object))
    assert (res.statistic, res.p_value, res.drifted) == (0.0, 1.0, False)


def test_ks_many_equals_ks_2samp_per_column(rng: np.random.Generator) -> None:
    ref = rng.normal(size=(900, 12))
    cur = rng.normal(size=(600, 12)) + np.linspace(0, 0.3, 12)
    ref[:, 3] = np.round(ref[:, 3] * 2)  # ties inside and across samples
    cur[:, 3] = np.round(cur[:, 3] * 2)
    ref[rng.random(900) < 0.1, 5] = np.nan
    cur[rng.random(600) < 0.2, 6] = np.nan
    cur[:, 7] = np.where(rng.random(600) < 0.05, np.inf * np.sign(cur[:, 7]), cur[:, 7])  # ±inf kept
    assert np.isinf(cur[:, 7]).any()
    d, p = ks_many(ref, cur)
    for j in range(12):
        a, b = ref[:, j][~np.isnan(ref[:, j])], cur[:, j][~np.isnan(cur[:, j])]
        sp = stats.ks_2samp(a, b, method="asymp")
        assert abs(d[j] - sp.statistic) <= 1e-12
        assert abs(p[j] - sp.pvalue) <= 1e-9
    n_ref_nan, n_cur_nan = nan_counts(ref, cur)
    assert n_ref_nan[5] == np.isnan(ref[:, 5]).sum() > 0
    assert n_cur_nan[6] == np.isnan(cur[:, 6]).sum() > 0


def test_ks_many_empty_column_and_shape_check(rng: np.random.Generator) -> None:
    ref, cur = rng.normal(size=(50, 2)), rng.normal(size=(40, 2))
    cur[:, 1] = np.nan
    d, p = ks_many(ref, cur)
    assert np.isfinite(d[0]) and np.isnan(d[1]) and np.isnan(p[1])
    with pytest.raises(ValueError):
        ks_many(ref, rng.normal(size=(40, 3)))


def test_ks_detector_matches_ks_many(rng: np.random.Generator) -> None:
    ref, cur = rng.normal(size=(300, 1)), rng.normal(size=(200, 1))
    d, p = ks_many(ref, cur)
    res = KS().run(ref[:, 0], cur[:, 0])
    assert res.statistic == d[0]
    assert res.p_value == pytest.approx(p[0], abs=1e-12)


def test_psi_equals_reference_loop(rng: np.random.Generator) -> None:
    ref, cur = rng.normal(size=1000), rng.normal(0.3, 1.2, size=700)
    res = PSI(n_permutations=0).run(ref, cur)
    assert res.statistic == pytest.approx(psi_reference(ref, cur), abs=1e-12)
    assert res.p_value is None
    # empty bins: all current mass above the reference maximum
    cur_far = ref.max() + 1 + rng.random(100)
    assert PSI(n_permutations=0).run(ref, cur_far).statistic == pytest.approx(psi_reference(ref, cur_far), abs=1e-12)
    # discrete reference with duplicate edges
    ref_d, cur_d = rng.integers(0, 4, 500).astype(float), rng.integers(0, 5, 300).astype(float)
    assert PSI(n_permutations=0).run(ref_d, cur_d).statistic == pytest.approx(psi_reference(ref_d, cur_d), abs=1e-12)


def test_psi_categorical_and_drift_rule() -> None:
    ref = np.array(["a"] * 60 + ["b"] * 40, dtype=object)
    cur = np.array(["a"] * 20 + ["b"] * 60 + ["c"] * 20, dtype=object)
    res = PSI(n_permutations=0).run(ref, cur, kind="categorical")
    r, c = np.array([0.6, 0.4, 1e-4]), np.array([0.2, 0.6, 0.2])
    assert res.statistic == pytest.approx(float(np.sum((c - r) * np.log(c / r))), abs=1e-12)
    assert res.drifted
    assert res.extra["new_category_rate"] == pytest.approx(0.2)


def test_js_equals_scipy_on_same_bins(rng: np.random.Generator) -> None:
    ref, cur = rng.normal(size=800), rng.normal(0.2, 1.0, size=500)
    res = JensenShannon(n_permutations=0).run(ref, cur)
    expected = jensenshannon(bins_reference(ref, ref), bins_reference(cur, ref), base=2)
    assert res.statistic == pytest.approx(expected, abs=1e-12)
    ref_c = np.array(list("aaabbc"), dtype=object)
    cur_c = np.array(list("abbbcd"), dtype=object)
    res_c = JensenShannon(n_permutations=0).run(ref_c, cur_c, kind="categorical")
    exp_c = jensenshannon([3 / 6, 2 / 6, 1 / 6, 0], [1 / 6, 3 / 6, 1 / 6, 1 / 6], base=2)
    assert res_c.statistic == pytest.approx(exp_c, abs=1e-12)
    assert res_c.extra["new_category_rate"] == pytest.approx(1 / 6)


def test_wasserstein_raw_and_normed(rng: np.random.Generator) -> None:
    ref, cur = rng.normal(0, 2.0, size=600), rng.normal(1.0, 2.0, size=400)
    res = Wasserstein(n_permutations=0).run(ref, cur)
    raw = stats.wasserstein_distance(ref, cur)
    assert res.extra["raw"] == pytest.approx(raw, abs=1e-12)
    assert res.statistic == pytest.approx(raw / np.std(ref), abs=1e-12)
    assert res.drifted  # ≈ 0.5 σ ≥ 0.1


def test_permutation_p_value_is_seeded_and_sensible(rng: np.random.Generator) -> None:
    ref, cur = rng.normal(size=300), rng.normal(size=200)
    a = Wasserstein(n_permutations=50, seed=7).run(ref, cur)
    b = Wasserstein(n_permutations=50, seed=7).run(ref, cur)
    assert a.p_value == b.p_value and a.p_value is not None and 1 / 51 <= a.p_value <= 1
    shifted = PSI(n_permutations=50).run(ref, cur + 2)
    assert shifted.p_value == pytest.approx(1 / 51)


def test_nan_rows_counted_not_crashing(rng: np.random.Generator) -> None:
    ref, cur = rng.normal(size=100), rng.normal(size=80)
    ref[:7], cur[:3] = np.nan, np.nan
    for det in (KS(), PSI(n_permutations=5), JensenShannon(n_permutations=5), Wasserstein(n_permutations=5)):
        res = det.run(ref, cur)
        assert res.extra["n_missing_reference"] == 7 and res.extra["n_missing_current"] == 3
        assert np.isfinite(res.statistic)
    all_nan = KS().run(ref, np.full(10, np.nan))
    assert all_nan.p_value is None and not all_nan.drifted and all_nan.extra["empty"]
    cat = ChiSquare().run(np.array(["a", None, "b"], dtype=object), np.array([np.nan, "a"], dtype=object))
    assert cat.extra["n_missing_reference"] == 1 and cat.extra["n_missing_current"] == 1


def test_drift_result_to_dict_is_json_safe() -> None:
    r = DriftResult(
        "f", "psi", np.float64(np.nan), None, 0.2, np.bool_(True),  # type: ignore[arg-type]
        {"k": np.int64(3), "a": np.ones(2)},
    )
    d = r.to_dict()
    json.dumps(d, allow_nan=False)
    assert d["statistic"] is None and d["drifted"] is True and d["extra"] == {"k": 3, "a": [1.0, 1.0]}


def test_detector_models_are_strict() -> None:
    with pytest.raises(ValidationError):
        parse_detector({"test": "ks", "bogus": 1})
    with pytest.raises(ValidationError):
        parse_detector({"test": "nope"})
    det = parse_detector({"test": "wasserstein", "threshold": 0.2})
    assert isinstance(det, Wasserstein) and det.threshold == 0.2
    with pytest.raises(ValidationError):
        det.threshold = 0.3  # type: ignore[misc]


# ----------------------------------------------------------------- preset


def _frames(rng: np.random.Generator, n_ref: int = 600, n_cur: int = 400, shift: float = 0.0) -> tuple[pd.DataFrame, pd.DataFrame]:
    ref = pd.DataFrame({
        "x": rng.normal(size=n_ref), "y": rng.normal(size=n_ref),
        "c": rng.choice(["a", "b", "c"], n_ref), "seg": rng.choice(["s1", "s2"], n_ref),
    })
    cur = pd.DataFrame({
        "x": rng.normal(size=n_cur) + shift, "y": rng.normal(size=n_cur),
        "c": rng.choice(["a", "b", "c"], n_cur), "seg": rng.choice(["s1", "s2"], n_cur),
    })
    return ref, cur


SCHEMA = {"x": "numeric", "y": "numeric", "c": "categorical"}


def test_default_preset_selection_and_override() -> None:
    for n in (100, 5000):
        preset = default_preset(SCHEMA, n)  # type: ignore[arg-type]
        assert [(ft.feature, ft.kind, [d.test for d in ft.detectors]) for ft in preset] == [
            ("x", "numeric", ["ks"]), ("y", "numeric", ["ks"]), ("c", "categorical", ["chi2"]),
        ]
    preset = default_preset(SCHEMA, 5000, overrides={"x": [{"test": "psi", "threshold": 0.25}, {"test": "ks"}]})  # type: ignore[arg-type]
    assert [d.test for d in preset[0].detectors] == ["psi", "ks"] and preset[0].detectors[0].threshold == 0.25
    with pytest.raises(ValueError, match="not in the schema"):
        default_preset(SCHEMA, 10, overrides={"nope": [{"test": "ks"}]})  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        default_preset(SCHEMA, 10, overrides={"c": [{"test": "ks"}]})  # type: ignore[arg-type]
    ev = evidently_preset(SCHEMA, 5000)  # type: ignore[arg-type]
    assert [d.test for ft in ev for d in ft.detectors] == ["wasserstein", "wasserstein", "jensen_shannon"]
    assert [d.test for ft in evidently_preset(SCHEMA, 1000) for d in ft.detectors] == ["ks", "ks", "chi2"]  # type: ignore[arg-type]


def test_run_preset_detects_and_corrects(rng: np.random.Generator) -> None:
    ref, cur = _frames(rng, shift=1.0)
    ref, cur = ref.drop(columns="seg"), cur.drop(columns="seg")
    preset = default_preset(SCHEMA, len(ref))  # type: ignore[arg-type]
    report = run_preset(preset, ref, cur, alpha=0.01, correction="holm")
    assert report.status == "ok" and report.drifted and report.drifted_features == ["x"]
    raw = [f.results[0].p_value for f in report.features]
    _, adj, _, _ = multipletests(raw, alpha=0.01, method="holm")
    assert [f.adjusted_p_values[0] for f in report.features] == pytest.approx(list(adj))
    assert report.features[0].results[0].statistic == stats.ks_2samp(ref["x"], cur["x"]).statistic
    bh = run_preset(preset, ref, cur, correction="fdr_bh")
    _, adj_bh, _, _ = multipletests(raw, alpha=0.01, method="fdr_bh")
    assert [f.adjusted_p_values[0] for f in bh.features] == pytest.approx(list(adj_bh))
    json.dumps(report.to_dict(), allow_nan=False)


def test_run_preset_no_drift(rng: np.random.Generator) -> None:
    ref, cur = _frames(rng)
    report = run_preset(default_preset(SCHEMA, 600), ref.drop(columns="seg"), cur.drop(columns="seg"))  # type: ignore[arg-type]
    assert not report.drifted and report.n_tests == 3


def test_schema_mismatch_names_columns(rng: np.random.Generator) -> None:
    ref, cur = _frames(rng)
    preset = default_preset(SCHEMA, 600)  # type: ignore[arg-type]
    with pytest.raises(SchemaMismatch) as exc:
        run_preset(preset, ref.drop(columns="seg"), cur.drop(columns=["seg", "y"]).assign(zz=1.0))
    assert exc.value.missing == ["y"] and exc.value.extra == ["zz"]
    assert "'y'" in str(exc.value) and "'zz'" in str(exc.value)
    assert isinstance(exc.value, ValueError)


def test_empty_window(rng: np.random.Generator) -> None:
    ref, cur = _frames(rng)
    ref, cur = ref.drop(columns="seg"), cur.drop(columns="seg")
    report = run_preset(default_preset(SCHEMA, 600), ref, cur.iloc[:0])  # type: ignore[arg-type]
    assert report.status == EMPTY_WINDOW == "empty window" and not report.drifted and report.features == []
    assert report.to_dict()["status"] == "empty window"


def test_preset_counts_nan_and_bad_values(rng: np.random.Generator) -> None:
    ref, cur = _frames(rng)
    ref, cur = ref.drop(columns="seg"), cur.drop(columns="seg")
    cur.loc[:9, "x"] = np.nan
    cur.loc[:4, "c"] = None
    ref.loc[:2, "y"] = np.nan
    report = run_preset(default_preset(SCHEMA, 600), ref, cur)  # type: ignore[arg-type]
    by = {f.feature: f for f in report.features}
    assert by["x"].n_missing_current == 10 and by["y"].n_missing_reference == 3 and by["c"].n_missing_current == 5
    assert all(r.p_value is not None for f in report.features for r in f.results)
    cur["y"] = cur["y"].astype(object)
    cur.loc[:1, "y"] = "garbage"  # a non-number in a numeric column: missing, no crash
    report = run_preset(default_preset(SCHEMA, 600), ref, cur)  # type: ignore[arg-type]
    assert report.features[1].n_missing_current == 2 and report.features[1].results[0].p_value is not None
    cur["x"] = np.nan  # a feature with no current values: no test, not in the family
    report = run_preset(default_preset(SCHEMA, 600), ref, cur)  # type: ignore[arg-type]
    assert report.n_tests == 2 and report.features[0].results[0].p_value is None


def test_segments_one_family(rng: np.random.Generator) -> None:
    ref, cur = _frames(rng, n_ref=1200, n_cur=800)
    cur.loc[cur["seg"] == "s2", "x"] += 1.0
    preset = default_preset(SCHEMA, 1200)  # type: ignore[arg-type]
    report = run_segmented(preset, ref, cur, "seg", alpha=0.01)
    assert report.segments == {"s1": "ok", "s2": "ok"}
    assert report.n_tests == 6 and report.drifted and report.drifted_features == ["s2/x"]
    raw = [f.results[0].p_value for f in report.features]
    _, adj, _, _ = multipletests(raw, alpha=0.01, method="holm")
    assert [f.adjusted_p_values[0] for f in report.features] == pytest.approx(list(adj))
    cur_only_s1 = cur[cur["seg"] == "s1"]
    r2 = run_segmented(preset, ref[ref["seg"] == "s1"], pd.concat([cur_only_s1, cur[cur["seg"] == "s2"].head(5)]), "seg")
    assert r2.segments["s2"] == "no reference" and r2.n_tests == 3
    with pytest.raises(SchemaMismatch):
        run_segmented(preset, ref.drop(columns="seg"), cur, "seg")


# ----------------------------------------------------------------- quality


def test_quality_metrics_on_constructed_data() -> None:
    n = 200
    t = np.linspace(-1, 1, n)
    ref = pd.DataFrame({"a": t, "b": np.sin(7 * t), "c": ["x", "y"] * (n // 2), "gone": 1.0})
    cur = pd.DataFrame({"a": t.copy(), "b": t.copy(), "c": ["x", "y", "z", "x"] * (n // 4), "new": 2.0})
    cur.loc[0, "a"] = np.nan
    cur.loc[1, "a"] = np.inf
    cur.loc[2, "a"] = 5.0  # out of range
    cur.loc[3, "a"] = -5.0  # out of range
    cur.loc[4, "c"] = None
    q = quality_report(ref, cur)
    a, c = q.features["a"], q.features["c"]
    assert (a.n_nan, a.n_inf, a.n_out_of_range, a.n_missing) == (1, 1, 2, 1)
    assert a.missing_rate == pytest.approx(1 / n) and a.out_of_range_rate == pytest.approx(2 / n)
    assert (a.reference_min, a.reference_max) == (-1.0, 1.0)
    assert c.cardinality == 3 and c.cardinality_reference == 2 and c.n_missing == 1
    z_rows = sum(v == "z" for v in cur["c"])
    assert c.new_category_rate == pytest.approx(z_rows / (n - 1))
    assert q.missing_columns == ["gone"] and q.extra_columns == ["new"]
    finite = np.isfinite(cur["a"].to_numpy())
    r_ref = np.corrcoef(ref["a"], ref["b"])[0, 1]
    r_cur = np.corrcoef(cur["a"][finite], cur["b"][finite])[0, 1]
    assert q.correlation_pair == ("a", "b")
    assert q.max_abs_correlation_change == pytest.approx(abs(r_cur - r_ref), abs=1e-12)
    json.dumps(q.to_dict(), allow_nan=False)


def test_quality_never_raises_on_bad_values() -> None:
    ref = pd.DataFrame({"a": [1.0, 2.0, 3.0], "b": ["x", "y", None]})
    cur = pd.DataFrame({"a": ["oops", None, np.inf, -np.inf], "b": [None, None, None, None]}, dtype=object)
    q = quality_report(ref, cur, schema={"a": "numeric", "b": "categorical"})
    assert q.features["a"].n_non_numeric == 1 and q.features["a"].n_inf == 2 and q.features["a"].n_nan == 1
    assert q.features["b"].missing_rate == 1.0 and q.features["b"].new_category_rate == 0.0
    empty = quality_report(ref.iloc[:0], cur.iloc[:0])
    assert empty.features["a"].missing_rate == 0.0 and empty.max_abs_correlation_change is None


# ----------------------------------------------------------------- alarms


def test_k_of_n_logic() -> None:
    alarm = KOfN(2, 3)
    assert alarm.run([True, False, False, True, True, False, False, False]) == [
        False, False, False, False, True, True, False, False,
    ]
    alarm.reset()
    assert [alarm.update_onset(d) for d in [True, True, True, False, False, True]] == [
        False, True, False, False, False, False,
    ]
    assert KOfN(1, 1).run([False, True]) == [False, True]
    with pytest.raises(ValueError):
        KOfN(4, 3)


def test_false_alarm_rate_simulation_matches_exact() -> None:
    assert binomial_tail(3, 2, 0.01) == pytest.approx(3 * 0.01**2 * 0.99 + 0.01**3)
    fire, onset = stationary_rates(0.01, 2, 3)
    assert fire == pytest.approx(2.9800e-4, rel=1e-3) and onset == pytest.approx(1.960e-4, rel=2e-3)
    exact_fire, exact_onset = markov_expected(0.01, 2, 3, 10_000)
    assert exact_fire == pytest.approx(10_000 * fire, rel=1e-3) and exact_onset == pytest.approx(10_000 * onset, rel=1e-3)
    est = false_alarm_rate_per_day(alpha=0.2, k=2, n=3, windows_per_day=24, days=30, runs=300, seed=1)
    assert abs(est.simulated_firing_per_day - est.exact_firing_per_day) < 4 * est.simulated_firing_stderr
    assert abs(est.simulated_onsets_per_day - est.exact_onsets_per_day) < 4 * est.simulated_onsets_stderr
    # the simulation equals feeding KOfN one decision at a time
    r = np.random.default_rng(5)
    decisions = r.random(500) < 0.3
    alarm = KOfN(2, 3)
    fires = sum(alarm.run(decisions.tolist()))
    f_sim, _ = _simulate(0.3, 2, 3, 500, 1, 5)
    assert f_sim[0] == fires


def test_holm_equals_statsmodels():
    from rayml.monitoring.presets import holm

    rng = np.random.default_rng(5)
    for m in (1, 2, 7, 64, 300):
        raw = np.concatenate([rng.uniform(0, 1, m - m // 3), rng.uniform(0, 1e-4, m // 3)])
        raw[: m // 5] = raw[-1]  # ties
        reject, adjusted = holm(raw, alpha=0.01)
        expected_reject, expected, _, _ = multipletests(raw, alpha=0.01, method="holm")
        assert np.allclose(adjusted, expected, rtol=0, atol=1e-15) and (reject == expected_reject).all()
