"""Benchmark: a replica's memory after 1M `POST /events` events with random ids (the embedded window store).

    python benchmarks/events_memory.py [--events 1000000]

Ingests ``--events`` events in batches of 10,000 (the largest `POST /events` body) through the same
``OnlineFeatures.ingest`` the endpoint calls, with the shipped demo feature repo, every id random. Prints the RSS
growth (target: ≤ 50 MB) and how many entities the store kept and evicted.
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import numpy as np

from rayml.features.definitions import load_feature_repo
from rayml.features.realtime import EmbeddedWindowStore, Events


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--features", default="configs/features/demo.yaml")
    args = parser.parse_args()
    repo = load_feature_repo(args.features, check_sources=False)
    assert repo.realtime is not None
    store = EmbeddedWindowStore(repo.realtime)
    keys = [(entity, repo.entities[entity].key) for entity in repo.realtime.entities]
    rng = np.random.default_rng(0)
    before = rss_mb()
    started = time.perf_counter()
    now = time.time()
    for _ in range(args.events // 10_000):
        batch = Events(rng.integers(0, 2**62, 10_000), rng.integers(0, 2**62, 10_000),
                       now - rng.uniform(0, 3000, 10_000), rng.random(10_000) < 0.2)
        for n, (entity, key) in enumerate(keys):
            store.ingest(entity, batch.entity_ids(key), batch, track_recent_clicks=n == 0)
    after = rss_mb()
    print(json.dumps({"bench": "events_memory", "events": args.events, "rss_before_mb": round(before, 1),
                      "rss_after_mb": round(after, 1), "growth_mb": round(after - before, 1),
                      "max_entities": repo.realtime.max_entities,
                      "kept": {e: len(store._counts[e]) for e, _ in keys}, "users_with_clicks": len(store._clicks),
                      "evicted": store.evicted, "events_per_s": round(args.events / (time.perf_counter() - started))}))


if __name__ == "__main__":
    main()
