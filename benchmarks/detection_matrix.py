"""The detection matrix: detector × scenario over several seeds of each scenario world, with delays.

    python benchmarks/detection_matrix.py [--seeds 10] [--window 5000] [--reference-rows 30000]
        [--concept-rates 10,20,30,45,60]

Each scenario of ``configs/world/scenarios/`` is built once per seed (its own seed replaced by 1000 + i)
and streamed through :mod:`rayml.monitoring.scenarios`. Printed, one JSON line each:

- per scenario × detector: how often it alarmed in the first full window after onset and within the
  targets (covariate ≤ 1 window of 5k, label prior ≤ 2 windows, concept ≤ 1 day), the median delay in
  days, and its false-alarm rate per window before onset (and over the no-drift world);
- seasonal: alarm rates over the second cycle with the seasonal baseline off and on, with 95 % intervals;
- the concept detector's median delay against the rotation speed of the concept scenario.

Then the matrix as a Markdown table for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import binomtest

from rayml.config import load_config
from rayml.monitoring.scenarios import (
    DETECTORS,
    DetectorOutcome,
    count_windows,
    seasonal_windows,
    summarize,
    world_stream,
)
from rayml.world import World, WorldConfig, build_world

SCENARIOS = Path(__file__).resolve().parents[1] / "configs" / "world" / "scenarios"
DRIFTS = ("none", "covariate", "label_shift", "concept", "intercept", "seasonal")
OWN = {"covariate": "covariate", "label_shift": "label_prior", "concept": "concept", "intercept": "concept"}
TARGET = {"covariate": ("windows", 1), "label_prior": ("windows", 2), "concept": ("days", 1.0)}


def emit(record: dict[str, Any]) -> None:
    print(json.dumps(record), flush=True)


def build(name: str, seed: int, root: Path, **drift: Any) -> World:
    config = load_config(SCENARIOS / f"{name}.yaml", WorldConfig).model_dump()
    config["seed"] = seed
    for key, value in drift.items():
        kind, field = key.split("__")
        config["drift"][kind][field] = value
    out = root / f"{name}-{seed}-{'-'.join(f'{k}{v}' for k, v in drift.items())}"
    build_world(WorldConfig.model_validate(config), out)
    return World(out)


def within_target(cell: DetectorOutcome) -> bool:
    unit, bound = TARGET[cell.detector]
    if cell.first_alarm_window is None:
        return False
    if unit == "windows":
        return cell.first_alarm_window <= bound
    return cell.delay_days is not None and cell.delay_days <= bound


def interval(k: int, n: int) -> list[float]:
    ci = binomtest(k, n).proportion_ci(0.95, method="exact") if n else None
    return [round(ci.low, 4), round(ci.high, 4)] if ci else [float("nan")] * 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--window", type=int, default=5_000)
    parser.add_argument("--reference-rows", type=int, default=30_000)
    parser.add_argument("--concept-rates", default="10,20,30,45,60")
    args = parser.parse_args()
    started = time.perf_counter()
    cells: dict[tuple[str, str], list[DetectorOutcome]] = defaultdict(list)
    seasonal = {"windows": 0, "off": 0, "on": 0}
    with tempfile.TemporaryDirectory(prefix="rayml-matrix-") as tmp:
        root = Path(tmp)
        for seed in range(1000, 1000 + args.seeds):
            for name in DRIFTS:
                stream = world_stream(build(name, seed, root))
                windows = count_windows(stream, args.window, args.reference_rows)
                for cell in summarize(name, stream.onset_day, windows):
                    cells[(name, cell.detector)].append(cell)
                if name == "seasonal":
                    outcome = seasonal_windows(stream, period_days=7.0, window_hours=12.0)
                    seasonal["windows"] += outcome.windows
                    seasonal["off"] += outcome.alarms_baseline_off
                    seasonal["on"] += outcome.alarms_baseline_on
        rows = []
        for (name, detector), runs in cells.items():
            after = [c for c in runs if c.windows_after]
            delays = [c.delay_days for c in after if c.delay_days is not None]
            fa_k, fa_n = sum(c.alarms_before for c in runs), sum(c.windows_before for c in runs)
            row = {
                "scenario": name, "detector": detector, "seeds": len(runs),
                "own": OWN.get(name) == detector,
                "first_window_rate": sum(c.first_alarm_window == 0 for c in after) / len(after) if after else None,
                "within_target_rate": (sum(within_target(c) for c in after) / len(after)) if after and detector in TARGET else None,
                "median_delay_days": round(float(np.median(delays)), 3) if delays else None,
                "detected_runs": len(delays),
                "false_alarms_before": fa_k, "windows_before": fa_n,
                "false_alarm_rate_before": round(fa_k / fa_n, 4) if fa_n else None,
                "false_alarm_ci95": interval(fa_k, fa_n),
            }
            rows.append(row)
            emit(row)
        emit({"seasonal": True, "windows": seasonal["windows"],
              "rate_baseline_off": round(seasonal["off"] / seasonal["windows"], 4),
              "ci95_off": interval(seasonal["off"], seasonal["windows"]),
              "rate_baseline_on": round(seasonal["on"] / seasonal["windows"], 4),
              "ci95_on": interval(seasonal["on"], seasonal["windows"])})
        for rate in [float(r) for r in args.concept_rates.split(",") if r]:
            delays, firsts = [], 0
            for seed in range(1000, 1000 + args.seeds):
                stream = world_stream(build("concept", seed, root, concept__degrees_per_day=rate))
                windows = count_windows(stream, args.window, args.reference_rows)
                cell = next(c for c in summarize("concept", stream.onset_day, windows) if c.detector == "concept")
                firsts += cell.delay_days is not None and cell.delay_days <= 1.0
                delays.append(cell.delay_days if cell.delay_days is not None else float("inf"))
            emit({"concept_rate_deg_per_day": rate, "within_1_day_rate": firsts / args.seeds,
                  "median_delay_days": round(float(np.median(delays)), 3)})
    print("\n| scenario | " + " | ".join(DETECTORS) + " |")
    print("|---|" + "---|" * len(DETECTORS))
    for name in DRIFTS:
        parts = []
        for detector in DETECTORS:
            row = next(r for r in rows if r["scenario"] == name and r["detector"] == detector)
            if row["within_target_rate"] is None or name in ("none", "seasonal"):
                parts.append(f"false alarms {row['false_alarms_before']}/{row['windows_before']}")
            else:
                mark = "**" if row["own"] else ""
                delay = row["median_delay_days"]
                parts.append(f"{mark}{row['detected_runs']}/{row['seeds']} detected, in target "
                             f"{row['within_target_rate']:.0%}, median {delay if delay is not None else '–'} d{mark}")
        print(f"| {name} | " + " | ".join(parts) + " |")
    emit({"elapsed_s": round(time.perf_counter() - started, 1)})


if __name__ == "__main__":
    main()
