"""A/B experiment statistics and the ``rayml experiment`` CLI, checked against statsmodels/scipy."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import statsmodels.formula.api as smf
import typer
from scipy import stats
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import NormalIndPower
from statsmodels.stats.proportion import proportion_effectsize
from typer.testing import CliRunner

from rayml.cli_experiment import experiment_app
from rayml.rollout.experiment import (
    InvalidArgument,
    MissingColumn,
    analyze,
    cuped,
    sample_size,
    sample_size_means,
    srm_check,
    two_proportion_test,
    welch_test,
)

pytestmark = pytest.mark.unit

ROOT = typer.Typer()
ROOT.add_typer(experiment_app, name="experiment")
runner = CliRunner()
ARTICLE_FIGURE = 752_684  # 5 % -> 5.1 %, alpha 0.05, power 0.8, two-sided, per arm


def cli(*args: str):
    return runner.invoke(ROOT, ["experiment", *args], catch_exceptions=False, terminal_width=400)


def simulated_users(
    n: int = 20_000,
    seed: int = 0,
    corr: float = 0.7,
    effect: float = 0.1,
    ctr_a: float = 0.05,
    ctr_b: float = 0.05,
) -> pd.DataFrame:
    """Two arms; ``revenue`` has a pre-period covariate with correlation ``corr``."""
    rng = np.random.default_rng(seed)
    arm = rng.integers(0, 2, n)
    pre = rng.normal(0, 1, n)
    revenue = 10 + 2 * (corr * pre + math.sqrt(1 - corr**2) * rng.normal(0, 1, n)) + effect * arm
    return pd.DataFrame(
        {
            "arm": np.where(arm == 1, "treatment", "control"),
            "revenue": revenue,
            "revenue_pre": 10 + 2 * pre,
            "ctr": (rng.random(n) < np.where(arm == 1, ctr_b, ctr_a)).astype(int),
            "latency": rng.gamma(2.0, 50.0, n),
            "errors": (rng.random(n) < 0.01).astype(int),
            "depth": rng.poisson(3, n).astype(float),
        }
    )


# ---------------------------------------------------------------------------------- sample size


def test_sample_size_equals_statsmodels_rounded_up():
    result = sample_size(0.05, 0.051, alpha=0.05, power=0.8)
    direct = NormalIndPower().solve_power(
        effect_size=proportion_effectsize(0.051, 0.05),
        alpha=0.05,
        power=0.8,
        ratio=1.0,
        alternative="two-sided",
    )
    assert result.control == result.treatment == math.ceil(direct) == ARTICLE_FIGURE
    assert result.total == 2 * ARTICLE_FIGURE
    assert result.control > 4 * 157_000  # the article's figure is far too small
    # the classic pooled-variance formula lands within 0.01 %
    z_a, z_b = stats.norm.ppf(0.975), stats.norm.ppf(0.8)
    p_bar = 0.0505
    classic = (
        z_a * math.sqrt(2 * p_bar * (1 - p_bar)) + z_b * math.sqrt(0.05 * 0.95 + 0.051 * 0.949)
    ) ** 2 / 0.001**2
    assert result.control == pytest.approx(classic, rel=1e-4)


def test_unequal_allocation():
    result = sample_size(0.05, 0.051, ratio=0.25)
    direct = NormalIndPower().solve_power(
        effect_size=proportion_effectsize(0.051, 0.05), alpha=0.05, power=0.8, ratio=0.25
    )
    assert result.control == math.ceil(direct)
    assert result.treatment == math.ceil(direct * 0.25)
    assert result.total > sample_size(0.05, 0.051).total  # an uneven split costs users


def test_one_sided_needs_fewer_users():
    two = sample_size(0.05, 0.051)
    larger = sample_size(0.05, 0.051, alternative="larger")
    smaller = sample_size(0.05, 0.049, alternative="smaller")
    assert larger.control < two.control
    assert smaller.control < sample_size(0.05, 0.049).control
    with pytest.raises(InvalidArgument, match="alternative"):
        sample_size(0.05, 0.049, alternative="larger")


def test_sample_size_means():
    result = sample_size_means(delta=0.5, sd=10.0)
    direct = NormalIndPower().solve_power(effect_size=0.05, alpha=0.05, power=0.8)
    assert result.control == result.treatment == math.ceil(direct)
    # z approximation vs the closed form 2 * ((z_a + z_b) sd / delta)^2
    z = stats.norm.ppf(0.975) + stats.norm.ppf(0.8)
    assert result.control == math.ceil(2 * (z * 10.0 / 0.5) ** 2)


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"baseline": 1.5}, "baseline"),
        ({"baseline": 0.0}, "baseline"),
        ({"target": 1.0}, "target"),
        ({"target": 0.05}, "target"),
        ({"alpha": 0.0}, "alpha"),
        ({"power": 1.0}, "power"),
        ({"ratio": 0.0}, "ratio"),
        ({"alternative": "both"}, "alternative"),
    ],
)
def test_sample_size_rejects_bad_input(kwargs, argument):
    args = {"baseline": 0.05, "target": 0.051, **kwargs}
    with pytest.raises(ValueError, match=f"^{argument} ") as info:
        sample_size(**args)
    assert isinstance(info.value, InvalidArgument) and info.value.argument == argument
    if argument == "baseline" and kwargs["baseline"] == 1.5:
        assert str(info.value) == "baseline must be in (0, 1), got 1.5"


# ---------------------------------------------------------------------------------------- tests


def test_two_proportion_z_matches_hand_formula():
    s_a, n_a, s_b, n_b = 500, 10_000, 570, 10_000
    res = two_proportion_test(s_a, n_a, s_b, n_b, alpha=0.05)
    p_a, p_b, pooled = s_a / n_a, s_b / n_b, (s_a + s_b) / (n_a + n_b)
    z = (p_b - p_a) / math.sqrt(pooled * (1 - pooled) * (1 / n_a + 1 / n_b))
    assert res.statistic == pytest.approx(z, rel=1e-9)
    assert res.p_value == pytest.approx(2 * stats.norm.sf(abs(z)), rel=1e-9)
    se = math.sqrt(p_a * (1 - p_a) / n_a + p_b * (1 - p_b) / n_b)
    assert (res.ci_low, res.ci_high) == pytest.approx(
        (p_b - p_a - 1.959964 * se, p_b - p_a + 1.959964 * se), rel=1e-6
    )
    # lift CI: delta method on log(p_b / p_a)
    se_log = math.sqrt((1 - p_a) / s_a + (1 - p_b) / s_b)
    assert res.relative_lift == pytest.approx(0.14)
    assert res.lift_ci_low == pytest.approx(1.14 * math.exp(-1.959964 * se_log) - 1, rel=1e-6)
    assert res.lift_ci_high == pytest.approx(1.14 * math.exp(1.959964 * se_log) - 1, rel=1e-6)
    assert res.p_value < 0.05 and res.ci_low > 0


def test_two_proportion_rejects_bad_counts():
    with pytest.raises(InvalidArgument, match="successes_a"):
        two_proportion_test(11, 10, 5, 10)
    with pytest.raises(InvalidArgument, match="n_b"):
        two_proportion_test(1, 10, 0, 0)


def test_welch_matches_scipy():
    rng = np.random.default_rng(1)
    a, b = rng.normal(10, 2, 400), rng.normal(10.5, 5, 300)
    res = welch_test(a, b, alpha=0.1)
    ref = stats.ttest_ind(b, a, equal_var=False)
    ci = ref.confidence_interval(0.9)
    assert res.statistic == pytest.approx(ref.statistic, rel=1e-12)
    assert res.p_value == pytest.approx(ref.pvalue, rel=1e-12)
    assert (res.ci_low, res.ci_high) == pytest.approx((ci.low, ci.high), rel=1e-12)
    assert res.difference == pytest.approx(b.mean() - a.mean())
    assert res.relative_lift == pytest.approx(b.mean() / a.mean() - 1)
    assert res.lift_ci_low < res.relative_lift < res.lift_ci_high


def test_srm_detects_52_48_and_passes_fair_split():
    bad = srm_check([52_000, 48_000], [0.5, 0.5])
    assert bad.mismatch and bad.statistic == pytest.approx(160.0) and bad.p_value < 1e-30
    fair = srm_check({"control": 50_100, "treatment": 49_900}, {"control": 50, "treatment": 50})
    assert not fair.mismatch and fair.p_value == pytest.approx(stats.chi2.sf(0.4, 1))
    assert not srm_check([90_150, 9_850], [90, 10]).mismatch
    with pytest.raises(ValueError, match="expected_weights"):
        srm_check([50, 50], [0.5, 0.4])


# ---------------------------------------------------------------------------------------- CUPED


def test_cuped_matches_ols_ancova():
    users = simulated_users(corr=0.7)
    arm = (users["arm"] == "treatment").astype(int)
    res = cuped(users["revenue"], users["revenue_pre"], arm)
    ols = smf.ols(
        "y ~ arm + x_pre",
        data=pd.DataFrame({"y": users["revenue"], "arm": arm, "x_pre": users["revenue_pre"]}),
    ).fit()
    assert res.difference == pytest.approx(ols.params["arm"], rel=1e-6)
    assert res.std_error == pytest.approx(ols.bse["arm"], rel=0.01)
    assert res.theta == pytest.approx(ols.params["x_pre"], rel=1e-9)
    assert res.variance_reduction is not None and res.variance_reduction > 0.3
    plain = welch_test(users.loc[arm == 0, "revenue"], users.loc[arm == 1, "revenue"])
    assert res.std_error < 0.8 * plain.std_error
    assert res.ci_low < 0.1 < res.ci_high


# ------------------------------------------------------------------------------------- analysis


def test_analyze_corrects_secondaries_with_holm_and_bh():
    users = simulated_users(ctr_b=0.06)
    for correction in ("holm", "fdr_bh"):
        result = analyze(
            users, "ctr", ["revenue", "latency", "depth"], ["errors"], correction=correction
        )
        secondaries = [result.metric(m) for m in ("revenue", "latency", "depth")]
        raw = [m.test.p_value for m in secondaries]
        reject, expected, _, _ = multipletests(raw, alpha=0.05, method=correction)
        assert [m.p_adjusted for m in secondaries] == pytest.approx(list(expected), rel=1e-12)
        assert [m.significant for m in secondaries] == list(reject)
        assert result.corrected_family == ["revenue", "latency", "depth"]
        primary = result.metric("ctr")
        assert primary.p_adjusted == primary.test.p_value  # primary at alpha alone
        assert result.metric("errors").p_adjusted == result.metric("errors").test.p_value


def test_analyze_picks_tests_and_marks_who_can_block():
    users = simulated_users(ctr_b=0.06)
    result = analyze(users, "ctr", ["revenue", "latency"], ["errors"])
    assert (result.control, result.treatment) == ("control", "treatment")
    methods = {m.metric: m.test.method for m in result.metrics}
    assert methods == {
        "ctr": "two-proportion z",
        "revenue": "cuped welch t",
        "latency": "welch t",
        "errors": "two-proportion z",
    }
    assert {m.metric for m in result.metrics if m.can_block} == {"ctr", "errors"}
    assert result.metric("revenue").pre_column == "revenue_pre"
    assert result.metric("ctr").significant and "ctr" in result.blocking
    assert not result.srm.mismatch
    swapped = analyze(users, "ctr", control="treatment")
    assert swapped.metric("ctr").test.difference == pytest.approx(
        -result.metric("ctr").test.difference
    )
    payload = json.loads(json.dumps(result.to_dict()))
    assert payload["metrics"][0]["can_block"] is True and "srm" in payload


def test_analyze_rejects_bad_frames():
    users = simulated_users(n=200)
    with pytest.raises(MissingColumn, match="no column 'xyz'"):
        analyze(users, "xyz")
    three = users.assign(arm=np.resize(["a", "b", "c"], len(users)))
    with pytest.raises(InvalidArgument, match="exactly two arms"):
        analyze(three, "ctr")
    with pytest.raises(InvalidArgument, match="control"):
        analyze(users, "ctr", control="nope")
    with pytest.raises(InvalidArgument, match="correction"):
        analyze(users, "ctr", correction="bonferroni")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------ CLI


def test_cli_sample_size_text_and_json():
    out = cli(
        "sample-size",
        "--baseline",
        "0.05",
        "--target",
        "0.051",
        "--alpha",
        "0.05",
        "--power",
        "0.8",
    )
    assert out.exit_code == 0, out.output
    assert (
        f"users per arm: control {ARTICLE_FIGURE:,}  treatment {ARTICLE_FIGURE:,}  "
        f"(total {2 * ARTICLE_FIGURE:,})"
    ) in out.output
    out = cli("sample-size", "--baseline", "0.05", "--target", "0.051", "--ratio", "0.25", "--json")
    assert out.exit_code == 0, out.output
    payload = json.loads(out.output)
    expected = sample_size(0.05, 0.051, ratio=0.25)
    assert payload["control"] == expected.control and payload["treatment"] == expected.treatment
    assert payload["total"] == expected.total


def test_cli_sample_size_bad_baseline_exits_2():
    out = cli("sample-size", "--baseline", "1.5", "--target", "0.051")
    assert out.exit_code == 2
    assert "error: --baseline must be in (0, 1), got 1.5" in out.output


def test_cli_analyze_table_and_json(tmp_path):
    path = tmp_path / "users.parquet"
    simulated_users(ctr_b=0.06).to_parquet(path)
    out = cli(
        "analyze",
        str(path),
        "--primary",
        "ctr",
        "--secondary",
        "revenue,latency",
        "--guardrail",
        "errors",
        "--correction",
        "fdr_bh",
    )
    assert out.exit_code == 0, out.output
    for text in (
        "ctr (primary)",
        "revenue (secondary)",
        "latency",
        "errors (guardrail)",
        "adjusted p",
        "can block",
        "SRM:",
        "CUPED revenue",
        "variance reduction",
        "fdr_bh",
    ):
        assert text in out.output
    csv = tmp_path / "users.csv"
    simulated_users(n=2_000).to_csv(csv, index=False)
    out = cli("analyze", str(csv), "--primary", "revenue", "--control", "treatment", "--json")
    assert out.exit_code == 0, out.output
    payload = json.loads(out.output)
    assert payload["control"] == "treatment" and payload["metrics"][0]["metric"] == "revenue"


def test_cli_analyze_missing_column_and_file_exit_2(tmp_path):
    path = tmp_path / "users.csv"
    simulated_users(n=100).to_csv(path, index=False)
    out = cli("analyze", str(path), "--primary", "xyz")
    assert out.exit_code == 2
    assert f"error: {path}: no column 'xyz' (columns: arm, revenue" in out.output
    out = cli("analyze", str(path), "--primary", "ctr", "--arm-column", "variant")
    assert out.exit_code == 2 and "no column 'variant'" in out.output
    missing = tmp_path / "nope.parquet"
    out = cli("analyze", str(missing), "--primary", "ctr")
    assert out.exit_code == 2 and f"error: {missing}: no such file" in out.output
    out = cli("analyze", str(path), "--primary", "ctr", "--alpha", "2")
    assert out.exit_code == 2 and "--alpha must be in (0, 1), got 2.0" in out.output


def test_cli_analyze_other_bad_input_names_the_option_or_column(tmp_path):
    path = tmp_path / "users.csv"
    simulated_users(n=300).assign(label="x").to_csv(path, index=False)
    out = cli("analyze", str(path), "--primary", "ctr", "--weights", "60,60")
    assert out.exit_code == 2 and "--weights must be positive and sum to 1 or 100" in out.output
    out = cli("analyze", str(path), "--primary", "ctr", "--correction", "bonferroni")
    assert out.exit_code == 2 and "--correction must be one of holm, fdr_bh" in out.output
    out = cli("analyze", str(path), "--primary", "label")
    assert out.exit_code == 2 and "column 'label' must be numeric" in out.output
    out = cli("analyze", str(path), "--primary", "ctr", "--weights", "90,10")
    assert out.exit_code == 0 and "MISMATCH" in out.output


def test_cli_choices_match_the_library():
    from rayml import cli_experiment
    from rayml.rollout import experiment

    assert cli_experiment.ALTERNATIVES == experiment.ALTERNATIVES
    assert cli_experiment.CORRECTIONS == experiment.CORRECTIONS
