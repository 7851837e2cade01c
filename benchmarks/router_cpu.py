"""CPU µs per request of the rollout router, timed where each part runs, in one process: the arm assignment, the
outcome log (its row, and the Parquet writes amortized), and the extra ONNX call when a batch holds both arms.
A companion to `rollout_overhead.py --only router`, whose end-to-end ratio this box's noise blurs.

    python benchmarks/router_cpu.py [--canary-pct 5 50] [--batch 4 8 16]   (after `make demo-data`)

The ONNX part scores the same encoded rows of ``batch`` requests as one call (one version in the batch) and as two
calls of the canary's and production's shares (both arms' models have the shipped architecture; one session
stands in for both). One JSON line per canary weight.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from stage_cpu import serve_calls, shipped_core

from rayml.rollout.outcomes import OutcomeLogger
from rayml.rollout.router import CanaryWeights, Router
from rayml.serving.recommender import Prepared, RecommendCall, RecommenderCore


def onnx_split_us(core: RecommenderCore, users: np.ndarray, batch: int, canary_pct: float, repeats: int) -> float:
    """Extra CPU µs per request when ``batch`` requests split into the canary's share and production's."""
    prepared = [p for p in core.prepare_many([RecommendCall(int(u), 10) for u in users[:batch]])
                if isinstance(p, Prepared)]
    ranker = prepared[0].ranker
    rows: list[np.ndarray] = [p.features for p in prepared]
    n_canary = round(batch * canary_pct / 100)
    if n_canary in (0, batch):
        return 0.0  # every batch of this size is one version: no second call
    whole = np.concatenate(rows)
    parts = [np.concatenate(rows[:n_canary]), np.concatenate(rows[n_canary:])]
    spent = {"one": 0, "two": 0}
    for r in range(repeats):
        for mode in (("one", "two") if r % 2 == 0 else ("two", "one")):
            t = time.process_time_ns()
            if mode == "one":
                core.ranking.score(ranker, whole)
            else:
                for part in parts:
                    core.ranking.score(ranker, part)
            spent[mode] += time.process_time_ns() - t
    return (spent["two"] - spent["one"]) / repeats / batch / 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--canary-pct", type=float, nargs="+", default=[5.0, 50.0])
    parser.add_argument("--batch", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--calls", type=int, default=50_000)
    parser.add_argument("--config", default="serve_apps/recommender.yaml")
    a = parser.parse_args()
    core = shipped_core(a.config)
    users = np.random.default_rng(0).choice(core.retrieval.user_ids, a.calls)
    core_us = _core_us(core, users[:2000])
    items, scores = list(range(10)), [0.5] * 10
    for pct in a.canary_pct:
        router = Router()
        now = time.time()
        router.update(CanaryWeights("canary", 2, pct, "bench-salt", now, 3600.0, log_sample=0.1), {"canary": 2})
        t = time.process_time_ns()
        assignments = [router.assign(int(u), now) for u in users]
        assign_us = (time.process_time_ns() - t) / len(users) / 1e3
        with tempfile.TemporaryDirectory() as folder:
            log = OutcomeLogger(folder, flush_rows=10**9)
            t = time.process_time_ns()
            for i, (u, assignment) in enumerate(zip(users, assignments, strict=True)):
                if assignment.logged:
                    log.served(f"r{i}", now, "bench", int(u), assignment.arm, "ranker:v2", 200, 2.0, items, scores)
                if i % 1000 == 999:  # the poll thread's flush, once a second at about 1,000 req/s
                    log.flush()
            log.flush()
            outcome_us = (time.process_time_ns() - t) / len(users) / 1e3
        logged = sum(x.logged for x in assignments) / len(assignments)
        canary = sum(x.arm == "canary" for x in assignments) / len(assignments)
        split = {str(b): round(onnx_split_us(core, users, b, pct, 400), 2) for b in a.batch}
        worst = max(split.values())
        added = assign_us + outcome_us + worst
        print(json.dumps({
            "bench": "router_cpu", "canary_pct": pct, "canary_share": round(canary, 4), "logged_share": round(logged, 4),
            "us_per_request": {"assign": round(assign_us, 2), "outcome_log": round(outcome_us, 2),
                               "onnx_second_call_by_batch": split},
            "core_us_per_request": round(core_us, 1),
            "added_us_per_request_worst_batch": round(added, 2), "added_vs_core": round(added / core_us, 4),
        }))


def _core_us(core: RecommenderCore, users: np.ndarray) -> float:
    """The recommender's own CPU µs per request (one at a time), as stage_cpu measures it."""
    t = time.process_time_ns()
    serve_calls(core, users)
    return (time.process_time_ns() - t) / len(users) / 1e3


if __name__ == "__main__":
    main()
