"""``rayml experiment``: size an A/B test and analyze its per-user results.

Errors print one line, ``error: ...`` naming the option, file or column, and exit with code 2,
like the rest of the CLI.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, cast

import typer
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:  # the statistics stack (scipy, statsmodels) loads only when a command runs
    import pandas as pd

    from rayml.rollout.experiment import (
        Alternative,
        Correction,
        ExperimentResult,
        InvalidArgument,
        MetricResult,
        SampleSize,
    )

ALTERNATIVES = ("two-sided", "larger", "smaller")  # as in rayml.rollout.experiment
CORRECTIONS = ("holm", "fdr_bh")

experiment_app = typer.Typer(
    help="A/B experiments: sample size and analysis.", no_args_is_help=True
)
console = Console(soft_wrap=True)


def _fail(message: str) -> typer.Exit:
    console.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True, markup=True)
    return typer.Exit(2)


def _option(exc: InvalidArgument) -> str:
    """``baseline must be ...`` as the CLI spells it: ``--baseline must be ...``."""
    return f"--{exc.argument.replace('_', '-')} {exc.problem}"


def _csv(value: str | None) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


def _finite(value: Any) -> Any:
    """NaN and infinities become ``null`` so the output is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _echo_json(payload: dict[str, Any]) -> None:
    typer.echo(json.dumps(_finite(payload), indent=1, default=str, allow_nan=False))


# ---------------------------------------------------------------------------------- sample size


def _sample_size_line(result: SampleSize) -> str:
    return (
        f"users per arm: control {result.control:,}  treatment {result.treatment:,}  "
        f"(total {result.total:,})"
    )


@experiment_app.command("sample-size")
def sample_size_cmd(
    baseline: Annotated[float, typer.Option(help="Control conversion rate, e.g. 0.05.")],
    target: Annotated[float, typer.Option(help="Treatment rate to detect, e.g. 0.051.")],
    alpha: Annotated[float, typer.Option(help="False-positive rate.")] = 0.05,
    power: Annotated[
        float, typer.Option(help="Chance of detecting the change when it is real.")
    ] = 0.8,
    alternative: Annotated[
        str, typer.Option(help=f"One of {', '.join(ALTERNATIVES)}.")
    ] = "two-sided",
    ratio: Annotated[float, typer.Option(help="n_treatment / n_control (0.25 for 80/20).")] = 1.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Users per arm to detect a conversion rate moving from BASELINE to TARGET (rounded up)."""
    from rayml.rollout.experiment import InvalidArgument, sample_size

    try:
        result = sample_size(
            baseline, target, alpha, power, cast("Alternative", alternative), ratio
        )
    except InvalidArgument as exc:
        raise _fail(_option(exc)) from None
    if as_json:
        _echo_json(result.to_dict())
        return
    lift = target / baseline - 1
    console.print(
        f"{baseline:.4g} → {target:.4g} ({lift:+.2%} relative), alpha {alpha:g}, "
        f"power {power:g}, {alternative}, ratio {ratio:g}",
        highlight=False,
    )
    console.print(_sample_size_line(result), highlight=False)


# ------------------------------------------------------------------------------------- analysis


def _read(path: Path) -> pd.DataFrame:
    import pandas as pd

    if not path.is_file():
        raise _fail(f"{path}: no such file")
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            return pd.read_parquet(path)
        if suffix == ".csv":
            return pd.read_csv(path)
    except Exception as exc:  # a corrupt or unreadable file: one line, not a traceback
        raise _fail(f"{path}: cannot read: {exc}") from None
    raise _fail(f"{path}: expected a .parquet or .csv file")


def _weights(value: str | None, arms: list[str]) -> dict[str, float] | None:
    """``--weights 90,10`` as {control: 90, treatment: 10}; None when not given."""
    parts = _csv(value)
    if not parts or len(arms) != 2:
        return None
    try:
        numbers = [float(p) for p in parts]
    except ValueError:
        raise _fail(f"--weights must be numbers like 50,50, got {value!r}") from None
    if len(numbers) != 2:
        raise _fail(f"--weights needs two numbers (control,treatment), got {value!r}")
    return dict(zip(arms, numbers, strict=True))


def _fmt(value: float | None, spec: str = ".4g") -> str:
    return "—" if value is None or not math.isfinite(value) else format(value, spec)


def _metric_table(m: MetricResult) -> Table:
    """One metric as a two-column table: narrow enough for an 80-column terminal."""
    t = m.test
    rate = t.method.startswith("two-proportion")
    spec = ".3%" if rate else ".4g"

    def diff(v: float) -> str:  # a difference of rates is in percentage points
        return _fmt(v * 100, "+.3f") + " pp" if rate and math.isfinite(v) else _fmt(v, "+.4g")

    table = Table(
        title=f"{m.metric} ({m.role}) — {t.method}", show_header=False, title_justify="left"
    )
    table.add_column("field", style="bold")
    table.add_column("value")
    rows = [
        ("control", f"{_fmt(t.control_mean, spec)}  (n {t.n_control:,})"),
        ("treatment", f"{_fmt(t.treatment_mean, spec)}  (n {t.n_treatment:,})"),
        ("estimate", f"{diff(t.difference)}  CI [{diff(t.ci_low)}, {diff(t.ci_high)}]"),
        (
            "relative lift",
            f"{_fmt(t.relative_lift, '+.2%')}  CI [{_fmt(t.lift_ci_low, '+.2%')}, "
            f"{_fmt(t.lift_ci_high, '+.2%')}]",
        ),
        ("p", _fmt(t.p_value, ".3g")),
        ("adjusted p", _fmt(m.p_adjusted, ".3g")),
        ("significant", "yes" if m.significant else "no"),
        ("can block", "yes" if m.can_block else "no"),
    ]
    for name, value in rows:
        table.add_row(name, value)
    return table


def _print_result(result: ExperimentResult, path: Path) -> None:
    console.print(f"{path}: {result.treatment} vs {result.control} (control)", highlight=False)
    for m in result.metrics:
        console.print(_metric_table(m))
    srm = result.srm
    split = "  ".join(
        f"{a} {o:,} (expected {e:,.0f})"
        for a, o, e in zip(srm.arms, srm.observed, srm.expected, strict=True)
    )
    verdict = "MISMATCH: do not trust these results" if srm.mismatch else "ok"
    console.print(
        f"SRM: {split}  chi2 {srm.statistic:.3g}  p {srm.p_value:.3g} "
        f"(alpha {srm.alpha:g})  {verdict}",
        highlight=False,
    )
    for m in result.metrics:
        if m.test.variance_reduction is not None:
            console.print(
                f"CUPED {m.metric} (covariate {m.pre_column}): variance reduction "
                f"{m.test.variance_reduction:.1%}, theta {m.test.theta:.4g}",
                highlight=False,
            )
    family = ", ".join(result.corrected_family) or "none"
    console.print(
        f"alpha {result.alpha:g}: primary alone; secondaries corrected with "
        f"{result.correction} as one family ({family}); guardrails uncorrected",
        highlight=False,
    )


@experiment_app.command("analyze")
def analyze_cmd(
    users: Annotated[
        Path, typer.Argument(help="Per-user results: .parquet or .csv with an arm column.")
    ],
    primary: Annotated[str, typer.Option(help="Primary metric column (can block).")],
    secondary: Annotated[
        str | None, typer.Option(help="Comma-separated secondary metrics.")
    ] = None,
    guardrail: Annotated[
        str | None, typer.Option(help="Comma-separated guardrails (can block).")
    ] = None,
    alpha: Annotated[float, typer.Option(help="Significance level.")] = 0.05,
    correction: Annotated[
        str, typer.Option(help=f"Secondary-family correction: {' or '.join(CORRECTIONS)}.")
    ] = "holm",
    control: Annotated[
        str | None, typer.Option(help="Control arm (default: first in sorted order).")
    ] = None,
    arm_column: Annotated[str, typer.Option(help="Column naming each user's arm.")] = "arm",
    weights: Annotated[
        str | None,
        typer.Option(help="Expected split control,treatment for SRM, e.g. 90,10 (default equal)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Test each metric, correct the secondaries, check SRM; CUPED where <metric>_pre exists."""
    from rayml.rollout.experiment import InvalidArgument, MissingColumn, analyze

    frame = _read(users)
    if arm_column not in frame.columns:
        raise _fail(f"{users}: {MissingColumn(arm_column, list(frame.columns))}")
    arms = sorted(map(str, frame[arm_column].dropna().unique()))
    ordered = (
        [control, *(a for a in arms if a != control)]
        if control is not None and control in arms
        else arms
    )
    try:
        result = analyze(
            frame,
            primary,
            _csv(secondary),
            _csv(guardrail),
            alpha=alpha,
            correction=cast("Correction", correction),
            control=control,
            arm_column=arm_column,
            expected_weights=_weights(weights, ordered),
        )
    except MissingColumn as exc:
        raise _fail(f"{users}: {exc}") from None
    except InvalidArgument as exc:
        flag = {
            "alpha": "alpha",
            "correction": "correction",
            "control": "control",
            "expected_weights": "weights",
        }.get(exc.argument)
        if flag:
            message = f"--{flag} {exc.problem}"
        elif exc.argument in frame.columns:
            message = f"column {exc.argument!r} {exc.problem}"
        else:
            message = str(exc)
        raise _fail(f"{users}: {message}") from None
    if as_json:
        _echo_json({"file": str(users), **result.to_dict()})
        return
    _print_result(result, users)


@experiment_app.command("export")
def export_cmd(
    outcomes: Annotated[Path, typer.Option(help="The outcome log directory (the recommender's rollout.outcomes).")],
    experiment: Annotated[str, typer.Option(help="Experiment name (rollout.experiment.name).")],
    out: Annotated[Path, typer.Option(help="Per-user results to write: .parquet or .csv.")],
    attribution_window_s: Annotated[
        float, typer.Option(help="A click counts within this long of its request; younger requests wait.")
    ] = 1800.0,
    before: Annotated[
        float | None, typer.Option(help="Epoch seconds of the cut-off (default: now).")
    ] = None,
) -> None:
    """Per-user results of a served experiment from the outcome log: arm, requests, errors, impressions, clicks,
    ctr. Mature requests only, so every click has had time to arrive. The input of `rayml experiment analyze`."""
    import time

    from rayml.rollout.outcomes import OutcomeLog

    if not (outcomes / "requests").is_dir():
        raise _fail(f"--outcomes {outcomes}: no outcome log here (no requests/ folder)")
    if out.suffix not in (".parquet", ".csv"):
        raise _fail(f"--out {out}: must end in .parquet or .csv")
    try:
        users = OutcomeLog(outcomes).experiment_users(experiment, time.time() if before is None else before,
                                                      attribution_window_s)
    except ValueError as exc:
        raise _fail(f"--outcomes {outcomes}: {exc}") from None
    if users.empty:
        raise _fail(f"--outcomes {outcomes}: no mature requests of experiment {experiment!r}")
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".csv":
        users.to_csv(out, index=False)
    else:
        users.to_parquet(out, index=False)
    counts = users.groupby("arm")["user_id"].count().to_dict()
    console.print(f"wrote {out}: {len(users):,} users ({', '.join(f'{a} {n:,}' for a, n in counts.items())}); "
                  f"next: rayml experiment analyze {out} --primary ctr --guardrail errors", highlight=False)
