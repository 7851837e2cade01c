"""Profile: a py-spy flame graph of the recommender replica under wrk load, on the shipped edge.

    python benchmarks/profile_recommend.py [--seconds 15] [--connections 32] [--out docs/profile-recommend.svg]
                                           (after `make demo-data` and `make wrk`)

One local Ray with the HAProxy ingress serves the shipped ``serve_apps/recommender.yaml`` app (one replica), as in
:mod:`edge`. wrk drives ``POST /recommend`` while ``py-spy record`` samples the replica's process (100 Hz, idle
frames left out, so the graph shows where the replica's CPU goes). Writes the SVG, and prints one JSON line with
the samples' top frames (own and inclusive share) from a second, raw record of the same load.
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from edge import emit, script, shipped_deployment, start_cluster, stop_cluster, wrk
from replica_failure import replica_pids

CONFIG = "serve_apps/recommender.yaml"


def py_spy(pid: int, seconds: float, out: Path, fmt: str) -> None:
    exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    subprocess.run([exe, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", "100",
                    "--format", fmt, "--output", str(out), "--nonblocking"], check=True, capture_output=True)


def top_frames(raw: Path, n: int = 12) -> dict:
    """Own and inclusive sample shares of the hottest functions in py-spy's collapsed-stack output."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        samples = int(count)
        frames = [f.split(" (")[0] for f in stack.split(";")]
        total += samples
        own[frames[-1]] += samples
        for frame in set(frames):
            inclusive[frame] += samples
    share = lambda c: {k: round(v / max(total, 1), 3) for k, v in c.most_common(n)}  # noqa: E731
    return {"samples": total, "own": share(own), "inclusive": share(inclusive)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--out", default="docs/profile-recommend.svg")
    a = parser.parse_args()
    from ray import serve

    private, _, app_args, tokens, users, port = start_cluster(CONFIG)
    try:
        serve.run(shipped_deployment(CONFIG, app_args), name="recommender", route_prefix="/")
        url = f"http://127.0.0.1:{port}/recommend"
        lua = script(private, "recommend", users, tokens["read"])
        wrk(url, lua, a.connections, 4)  # warm up
        pids = replica_pids("recommender")
        if len(pids) != 1:
            raise SystemExit(f"expected one recommender replica process, found {pids}")
        for fmt, out in (("flamegraph", Path(a.out)), ("raw", private / "profile.txt")):
            load: dict = {}
            driver = threading.Thread(target=lambda into=load: into.update(wrk(url, lua, a.connections,
                                                                                 a.seconds + 1)))
            driver.start()
            py_spy(pids[0], a.seconds, out, fmt)
            driver.join()
            emit({"bench": "profile_recommend", "format": fmt, "output": str(out), **load})
        emit({"bench": "profile_recommend", "top": top_frames(private / "profile.txt")})
    finally:
        stop_cluster(private)


if __name__ == "__main__":
    main()
