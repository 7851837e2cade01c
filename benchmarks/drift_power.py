"""Power and false alarms of the shipped drift preset (KS / χ², Holm over all features at 1 %).

    python benchmarks/drift_power.py [--features 64] [--n-current 5000] [--n-reference 5000]
        [--runs 200] [--fa-windows 2000] [--seed 0]

Every window draws a FRESH reference (n_reference rows) and a fresh current (n_current rows) of
``--features`` independent standard gaussians and runs ``run_preset(default_preset(...))`` at
α = 0.01, Holm (the KS tests run as one vectorised ``ks_many``).

(a) POWER. A shift is applied to ONE feature of the current window; "detected" means that
    feature is rejected after Holm over all features. Minimum detectable mean shift (in σ) at
    80 % power by bisection (common random numbers across points, ``--runs`` runs per point;
    target ≤ 0.12σ); power for a variance change (σ × 1.2); and, with that one feature replaced
    by a 5-category feature tested by χ² (reference shares 0.30/0.25/0.20/0.15/0.10), the
    minimum detectable share δ moved from the first to the last category (total variation δ).
(b) FALSE ALARMS. ``--fa-windows`` windows with no drift: observed family-wise false-alarm rate
    (target ≤ 1.5 % at nominal 1 %), with a Clopper–Pearson 95 % interval, and the per-day rate
    of the shipped 2-of-3 alarm policy at that per-window rate.

Prints one JSON line per measurement and a summary line.
"""

from __future__ import annotations

import argparse
import gc
import json
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from rayml.monitoring.alarms import false_alarm_rate_per_day
from rayml.monitoring.detectors import Kind
from rayml.monitoring.presets import Preset, default_preset, run_preset

ALPHA = 0.01
CAT_P = np.array([0.30, 0.25, 0.20, 0.15, 0.10])
CATS = np.array(list("abcde"), dtype=object)


def emit(record: dict[str, Any]) -> None:
    print(json.dumps(record), flush=True)


def _frame(values: np.ndarray, cat: np.ndarray | None = None) -> pd.DataFrame:
    df = pd.DataFrame(values, columns=[f"x{i}" for i in range(values.shape[1])])
    if cat is not None:
        df["x0"] = cat
    return df


def _cat_sample(rng: np.random.Generator, n: int, delta: float) -> np.ndarray:
    p = CAT_P.copy()
    p[0] -= delta
    p[-1] += delta
    return CATS[rng.choice(len(CATS), size=n, p=p)]


def _detected(preset: Preset, ref: pd.DataFrame, cur: pd.DataFrame) -> tuple[bool, bool]:
    """→ (feature x0 drifted after Holm, family drifted)."""
    report = run_preset(preset, ref, cur, alpha=ALPHA, correction="holm")
    return report.features[0].drifted, report.drifted


def power(
    args: argparse.Namespace, kind: str, amount: float, preset: Preset,
) -> float:
    """Share of ``args.runs`` windows where feature x0 is detected (same seed at every point)."""
    rng = np.random.default_rng(args.seed + 1)
    hits = 0
    for _ in range(args.runs):
        ref = rng.standard_normal((args.n_reference, args.features))
        cur = rng.standard_normal((args.n_current, args.features))
        ref_cat = cur_cat = None
        if kind == "mean":
            cur[:, 0] += amount
        elif kind == "scale":
            cur[:, 0] *= amount
        else:
            ref_cat = _cat_sample(rng, args.n_reference, 0.0)
            cur_cat = _cat_sample(rng, args.n_current, amount)
        hits += _detected(preset, _frame(ref, ref_cat), _frame(cur, cur_cat))[0]
    return hits / args.runs


def bisect(fn: Callable[[float], float], lo: float, hi: float, steps: int, target: float = 0.8) -> tuple[float, list[tuple[float, float]]]:
    """Smallest amount with power ≥ target, to within (hi − lo) / 2**steps (upper end returned)."""
    trace = []
    for _ in range(steps):
        mid = (lo + hi) / 2
        pw = fn(mid)
        trace.append((mid, pw))
        if pw >= target:
            hi = mid
        else:
            lo = mid
    return hi, trace


def clopper_pearson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    a = (1 - level) / 2
    lo = 0.0 if k == 0 else float(stats.beta.ppf(a, k, n - k + 1))
    hi = 1.0 if k == n else float(stats.beta.ppf(1 - a, k + 1, n - k))
    return lo, hi


def false_alarms(args: argparse.Namespace, preset: Preset) -> dict[str, Any]:
    rng = np.random.default_rng(args.seed + 2)
    alarms = 0
    t0 = time.perf_counter()
    for _ in range(args.fa_windows):
        ref = rng.standard_normal((args.n_reference, args.features))
        cur = rng.standard_normal((args.n_current, args.features))
        alarms += _detected(preset, _frame(ref), _frame(cur))[1]
    elapsed = time.perf_counter() - t0
    rate = alarms / args.fa_windows
    lo, hi = clopper_pearson(alarms, args.fa_windows)
    policy = false_alarm_rate_per_day(rate, 2, 3, 24, 365, 200, args.seed)
    return {
        "measure": "false_alarms", "windows": args.fa_windows, "features": args.features,
        "nominal": ALPHA, "family_false_alarms": alarms, "rate": rate, "ci95": [lo, hi],
        "target": 0.015, "met": rate <= 0.015, "seconds": round(elapsed, 1),
        "seconds_per_window": round(elapsed / args.fa_windows, 4),
        "policy_2of3_24_per_day": {
            "onsets_per_day_exact": policy.exact_onsets_per_day,
            "firing_windows_per_day_exact": policy.exact_firing_per_day,
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--features", type=int, default=64)
    parser.add_argument("--n-current", type=int, default=5000)
    parser.add_argument("--n-reference", type=int, default=5000)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--fa-windows", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip", default="", help="comma list of: mean,scale,categorical,false_alarms")
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    common = {"features": args.features, "n_current": args.n_current, "n_reference": args.n_reference,
              "runs_per_point": args.runs, "alpha": ALPHA, "correction": "holm"}
    schema: dict[str, Kind] = {f"x{i}": "numeric" for i in range(args.features)}
    numeric = default_preset(schema, args.n_reference)
    categorical = default_preset({**schema, "x0": "categorical"}, args.n_reference)
    summary: dict[str, Any] = dict(common)
    gc.freeze()  # statsmodels' multipletests calls gc.collect(); keep it from rescanning the heap
    t0 = time.perf_counter()
    if "mean" not in skip:
        mds, trace = bisect(lambda s: power(args, "mean", s, numeric), 0.0, 0.24, args.steps)
        rec = {"measure": "min_detectable_mean_shift_sigma", "value": mds, "target": 0.12, "met": mds <= 0.12,
               "power_at_value": dict(trace).get(mds), "trace": trace, **common}
        emit(rec)
        summary["min_detectable_mean_shift_sigma"] = mds
    if "scale" not in skip:
        pw = power(args, "scale", 1.2, numeric)
        emit({"measure": "power_variance_x1.2", "value": pw, **common})
        summary["power_sigma_x1.2"] = pw
    if "categorical" not in skip:
        mdd, trace = bisect(lambda d: power(args, "categorical", d, categorical), 0.0, 0.08, args.steps)
        emit({"measure": "min_detectable_categorical_share_moved", "value": mdd, "trace": trace,
              "categories": CATS.tolist(), "reference_shares": CAT_P.tolist(),
              "shift": "delta moved from 'a' to 'e'", **common})
        summary["min_detectable_categorical_delta"] = mdd
    if "false_alarms" not in skip:
        rec = false_alarms(args, numeric)
        emit(rec)
        summary["false_alarm_rate"] = rec["rate"]
        summary["false_alarm_seconds"] = rec["seconds"]
    summary["total_seconds"] = round(time.perf_counter() - t0, 1)
    emit({"measure": "summary", **summary})


if __name__ == "__main__":
    main()
