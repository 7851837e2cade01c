"""Benchmark: streaming world build. Prints one JSON line: rows, wall time, peak RSS vs the 2 GiB budget.

    python benchmarks/world_build.py [--config configs/world/large.yaml] [--out DIR] [--no-events]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import tempfile
import time
from pathlib import Path

from rayml.config import load_config
from rayml.world import WorldConfig, build_world

BUDGET_MB = 2048


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default="configs/world/large.yaml")
    parser.add_argument("--out", default=None, help="Keep the world here (default: a temp dir, removed after).")
    parser.add_argument("--no-events", action="store_true", help="Users and items only.")
    args = parser.parse_args()
    config = load_config(args.config, WorldConfig)
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="rayml-world-"))
    start = time.perf_counter()
    summary = build_world(config, out / "world", events=not args.no_events)
    seconds = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    size_mb = sum(p.stat().st_size for p in (out / "world").rglob("*") if p.is_file()) / 2**20
    print(json.dumps({
        "benchmark": "world_build", "config": args.config, "users": summary.n_users, "items": summary.n_items,
        "events": summary.n_events, "chunk_users": config.chunk_users, "seconds": round(seconds, 2),
        "users_per_s": round(summary.n_users / seconds), "peak_rss_mb": round(peak_mb),
        "rss_budget_mb": BUDGET_MB, "ratio_rss_to_budget": round(peak_mb / BUDGET_MB, 3), "disk_mb": round(size_mb),
    }))
    if not args.out:
        shutil.rmtree(out)


if __name__ == "__main__":
    main()
