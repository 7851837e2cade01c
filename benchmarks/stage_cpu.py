"""Per-stage CPU µs of one ``/recommend`` in :class:`RecommenderCore` (one process, no HTTP), shipped demo args.

    python benchmarks/stage_cpu.py [--calls 5000]      (after `make demo-data`)

Stages: retrieval (batch candidates); lookup + encode (online features, pre-encoded item rows, the user's row,
recent clicks, the sampled feature log's windows); ONNX; filters + answer (post-filters, the feature log). CPU time
(``time.process_time_ns``), after a warm-up; one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import yaml

from rayml.serving.config import RecommenderArgs, load_serving_repo
from rayml.serving.recommender import RecommendCall, RecommenderCore


def measure(core: RecommenderCore, users: np.ndarray) -> dict[str, float]:
    spent = {"retrieval": 0, "lookup+encode": 0, "onnx": 0, "filters+answer": 0}
    for user in users:
        call = RecommendCall(int(user), 10)
        t0 = time.process_time_ns()
        core.retrieval.retrieve(call.user_id)
        t1 = time.process_time_ns()
        prepared = core.prepare_many([call])  # retrieval again, then lookup and encode
        t2 = time.process_time_ns()
        for batch in core.ranking_batches(prepared):
            batch.set_scores(core.ranking.score(batch.ranker, batch.features))
        t3 = time.process_time_ns()
        core.finish_many(prepared)
        t4 = time.process_time_ns()
        spent["retrieval"] += t1 - t0
        spent["lookup+encode"] += (t2 - t1) - (t1 - t0)
        spent["onnx"] += t3 - t2
        spent["filters+answer"] += t4 - t3
    return {name: round(ns / len(users) / 1e3, 1) for name, ns in spent.items()}


def serve_calls(core: RecommenderCore, users: np.ndarray) -> None:
    """The in-process request path, one user at a time: prepare (lookup, encode), score, finish (filters, taps, answer)."""
    for user in users:
        prepared = core.prepare_many([RecommendCall(int(user), 10)])
        for batch in core.ranking_batches(prepared):
            batch.set_scores(core.ranking.score(batch.ranker, batch.features))
        core.finish_many(prepared)


def shipped_core(config: str = "serve_apps/recommender.yaml") -> RecommenderCore:
    """The recommender of a shipped serve config, in this process (no event log, auth off)."""
    raw = yaml.safe_load(Path(config).read_text())["applications"][0]["args"]
    raw.update(event_log=None, auth={"enabled": False})
    app_args = RecommenderArgs.model_validate(raw)
    return RecommenderCore(app_args, load_serving_repo(app_args))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--config", default="serve_apps/recommender.yaml")
    args = parser.parse_args()
    core = shipped_core(args.config)
    users = np.random.default_rng(0).choice(core.retrieval.user_ids, args.calls)
    measure(core, users[:300])
    stages = measure(core, users)
    print(json.dumps({"bench": "stage_cpu_us", **stages, "total": round(sum(stages.values()), 1)}))


if __name__ == "__main__":
    main()
