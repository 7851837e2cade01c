"""Benchmark: `kill -9` of one of two recommender replicas under load, through the HAProxy ingress.

    python benchmarks/replica_failure.py [--seconds 30] [--kill-at 10] [--connections 16]   (after `make demo-data`)

wrk drives ``/recommend`` in one-second slices; at ``--kill-at`` one replica's process gets SIGKILL. Prints one
JSON line per slice, then the summary: requests lost (non-2xx and client errors) as a share of all, the status
codes that remained, and how long goodput took to come back to 90 % of its median before the kill.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from edge import emit, script, shipped_deployment, start_cluster, stop_cluster, wrk


def replica_pids(app: str = "failure") -> list[int]:
    """PIDs of ``app``'s replicas (Ray titles them ``ray::ServeReplica:<app>:<deployment>``)."""
    pids = []
    prefix = f"ray::ServeReplica:{app}:".encode()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "cmdline").read_bytes().startswith(prefix):
                    pids.append(int(entry.name))
            except OSError:
                continue
    return sorted(pids)


def startup_of(url: str, pid: int | None) -> dict | None:
    """The replacement replica's own startup figures (``/healthz`` ``startup_s``), asked until it answers."""
    import requests

    health = url.rsplit("/", 1)[0] + "/healthz"
    for _ in range(50):
        body = requests.get(health, timeout=5).json()
        if pid is None or (body.get("startup_s") or {}).get("pid") == pid:
            return body.get("startup_s")
        time.sleep(0.05)
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=30)
    parser.add_argument("--kill-at", type=int, default=10)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--config", default="serve_apps/recommender.yaml")
    args = parser.parse_args()
    private, _, app_args, tokens, sample, port = start_cluster(args.config)
    from ray import serve

    try:
        served = app_args.model_copy(update={"feature_log": None})
        serve.run(shipped_deployment(args.config, served, num_replicas=2), name="failure", route_prefix="/")
        url = f"http://127.0.0.1:{port}/recommend"
        rec = script(private, "recommend", sample, tokens["read"])
        wrk(url, rec, 4, 3)
        pids = replica_pids()
        slices, killed, victim, replacement = [], None, None, None
        for second in range(args.seconds):
            if second == args.kill_at:
                victim = pids[0]
                os.kill(victim, signal.SIGKILL)
                killed = time.monotonic()
            row = wrk(url, rec, args.connections, 1, timeout_s=2)
            if killed is not None and replacement is None:
                replacement = next((p for p in replica_pids() if p not in pids), None)
                if replacement is not None:  # its process exists: Serve started it (imports and init follow)
                    row["replacement_pid_seen_s"] = round(time.monotonic() - killed, 1)
            slices.append(row)
            emit({"bench": "replica_failure", "second": second, **row})
        before = float(np.median([r["goodput"] for r in slices[: args.kill_at]]))
        after = slices[args.kill_at:]
        back = next((i for i, r in enumerate(after) if r["goodput"] >= 0.9 * before), None)
        total = sum(sum(r["statuses"].values()) + r["timeouts"] for r in slices)
        lost_codes: dict[str, int] = {}
        for r in slices:
            for code, n in r["statuses"].items():
                if not code.startswith("2"):
                    lost_codes[code] = lost_codes.get(code, 0) + n
        lost = sum(lost_codes.values()) + sum(r["timeouts"] for r in slices)
        emit({"bench": "replica_failure", "replicas": len(pids), "victim": victim, "requests": total, "lost": lost,
              "lost_share": round(lost / max(total, 1), 5), "lost_statuses": lost_codes,
              "timeouts": sum(r["timeouts"] for r in slices), "median_goodput_before": before,
              "seconds_to_90pct": back, "killed_at_s": args.kill_at,
              "wall_s": round(time.monotonic() - killed, 1) if killed is not None else None,
              "replacement_pid_seen_s": next((r["replacement_pid_seen_s"] for r in slices
                                              if "replacement_pid_seen_s" in r), None),
              "replacement_startup_s": startup_of(url, replacement)})
    finally:
        stop_cluster(private)


if __name__ == "__main__":
    main()
