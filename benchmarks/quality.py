"""Quality of the recommender against the world's ground truth: NDCG@10 served vs random vs oracle.

Runs the same `RecommenderCore` the Serve replica runs, in-process, on the demo data (`make demo-data` first):

    python benchmarks/quality.py [--users 1000] [--serve-yaml serve_apps/recommender.yaml] [--world .rayml/demo/world]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import yaml

from rayml.monitoring import ndcg_at_k
from rayml.serving import RecommenderArgs, RecommenderCore
from rayml.serving.config import load_serving_repo
from rayml.world import World


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--serve-yaml", default="serve_apps/recommender.yaml")
    parser.add_argument("--world", default=".rayml/demo/world")
    parser.add_argument("--k", type=int, default=10)
    args = parser.parse_args()
    app_args = RecommenderArgs.model_validate(yaml.safe_load(Path(args.serve_yaml).read_text())["applications"][0]["args"])
    app_args = app_args.model_copy(update={"feature_log": None, "event_log": None})
    core = RecommenderCore(app_args, load_serving_repo(app_args))
    world = World(args.world)
    users = np.random.default_rng(0).choice(world.n_users, args.users, replace=False)
    truth = world.relevance(users, np.arange(world.n_items))  # [U, I] true click probabilities
    served = np.array([core.recommend(int(u), args.k).items for u in users])
    rng = np.random.default_rng(1)
    random_items = np.stack([rng.choice(world.n_items, args.k, replace=False) for _ in users])
    retrieval = core.retrieval
    candidates_only = retrieval.items[np.searchsorted(retrieval.user_ids, users)][:, : args.k]  # retriever's order
    result = {
        "benchmark": "quality", "users": args.users, "k": args.k, "model_version": core.model_version,
        "ndcg_served": ndcg_at_k(np.take_along_axis(truth, served, 1), truth, args.k).mean(),
        "ndcg_retriever_only": ndcg_at_k(np.take_along_axis(truth, candidates_only, 1), truth, args.k).mean(),
        "ndcg_random": ndcg_at_k(np.take_along_axis(truth, random_items, 1), truth, args.k).mean(),
    }
    result["ratio_served_to_random"] = result["ndcg_served"] / result["ndcg_random"]
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in result.items()}))


if __name__ == "__main__":
    main()
