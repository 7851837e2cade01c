"""Benchmark: candidates as an online-store view (Redis) against the in-memory candidate table, same run, same box.

    python benchmarks/candidates_store.py [--users 1000000 3000000] [--seconds 8]     (after `make demo-data`)

Builds candidate-job outputs at each user count by tiling the demo's real candidates (user u gets demo user
u mod 20,000's 100 items), starts its own redis-server on a free port, and measures:

1. **Materialization** (``rayml.batch.candidate_store``, one process, MSET of 6-byte candidates): rows/s, and as a
   ratio to the floor, ``redis-benchmark`` SET of the same value size on one pipelined connection (the C client's
   ingest rate into the same server). Redis ``used_memory`` after each size (``keep_runs: 1``: only that run is
   held), and its growth per user.
2. **Replica RSS** (``/proc/<pid>/status`` VmRSS of the Serve replica, after warm-up requests) at each user count,
   with Redis candidates and with the in-memory table, both on the Redis feature store.
3. **/recommend latency** through the shipped HAProxy ingress, one 0.5-CPU replica each, wrk at the same
   connections: ``embedded`` (embedded store, in-memory candidates: the demo default), ``redis`` (Redis features
   and candidates) and ``redis-features`` (Redis features, in-memory candidates, for reference). First each one's
   closed-loop peak; then all at 50 % of the slower of embedded and redis, paced per connection (wrk ``delay()``),
   ``--repeats`` interleaved runs, median p99.

Prints one JSON line per measurement, then the ratios. wrk and Redis share the 2 cores with the server.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from edge import emit, free_port, script, shipped_deployment, start_cluster, stop_cluster, wrk


def tiled_candidates(demo: Path, users: int, out: Path, chunk: int = 200_000) -> Path:
    """A candidate-job output for ``users`` users: demo user (u mod n)'s candidates for user u."""
    table = pq.read_table(demo, columns=["user_id", "items", "scores"])
    table = table.take(np.argsort(table["user_id"].to_numpy()))
    n = table.num_rows
    k = table.schema.field("items").type.list_size
    items = table["items"].combine_chunks().flatten().to_numpy().reshape(n, k)
    scores = table["scores"].combine_chunks().flatten().to_numpy().reshape(n, k)
    out.mkdir(parents=True)
    schema = pa.schema([("user_id", pa.int64()), ("items", pa.list_(pa.int64(), k)), ("scores", pa.list_(pa.float32(), k))])
    with pq.ParquetWriter(out / "part-00000.parquet", schema, compression="lz4") as writer:
        for lo in range(0, users, chunk):
            ids = np.arange(lo, min(lo + chunk, users), dtype=np.int64)
            rows = ids % n
            writer.write_table(pa.table({
                "user_id": ids,
                "items": pa.FixedSizeListArray.from_arrays(pa.array(items[rows].ravel()), k),
                "scores": pa.FixedSizeListArray.from_arrays(pa.array(scores[rows].ravel()), k),
            }, schema=schema))
    (out / "_manifest.json").write_text(json.dumps({"model_version": "retriever:v1", "rows": users, "top_k": k,
                                                    "users_path": f"tiled demo x{users}"}))
    return out


def start_redis(folder: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    process = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                "--appendonly", "no", "--dir", str(folder)], stdout=subprocess.DEVNULL)
    import redis

    client = redis.Redis(port=port)
    for _ in range(200):
        try:
            client.ping()
            return process, port
        except redis.ConnectionError:
            time.sleep(0.05)
    raise RuntimeError(f"redis-server did not start on port {port}")


def set_floor(port: int, value_bytes: int, n: int = 500_000) -> float:
    """SET/s of redis-benchmark (C), one connection pipelining 100, values of ``value_bytes``, into db 9."""
    out = subprocess.run(["redis-benchmark", "-p", str(port), "--dbnum", "9", "-t", "set", "-n", str(n), "-r", str(n),
                          "-d", str(value_bytes), "-c", "1", "-P", "100", "--csv"], capture_output=True, text=True,
                         check=True).stdout
    import redis

    line = next(row for row in out.splitlines() if row.startswith('"SET"'))
    redis.Redis(port=port, db=9).flushdb()
    return float(line.split(",")[1].strip('"'))


def replica_rss_mb(app: str) -> float:
    """VmRSS of the Serve replica of ``app`` (its process title is ``ray::ServeReplica:<app>:Recommender``)."""
    needle = f"ServeReplica:{app}:Recommender".encode()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if needle in Path(f"/proc/{pid}/cmdline").read_bytes():
                status = Path(f"/proc/{pid}/status").read_text()
                return int(next(line for line in status.splitlines() if line.startswith("VmRSS")).split()[1]) / 1024
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    raise RuntimeError(f"no replica process of app {app!r}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, nargs="+", default=[1_000_000, 3_000_000])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--config", default="serve_apps/recommender.yaml")
    parser.add_argument("--parquet-max-users", type=int, default=3_000_000,
                        help="no in-memory-table replica above this (its load peaks near 3x the 12 B x K x users table)")
    args = parser.parse_args()
    for tool in ("wrk", "redis-server", "redis-benchmark"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed: `make wrk redis-server`")
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(143))
    work = Path(tempfile.mkdtemp(prefix="rmc-", dir=os.environ.get("RAYML_BENCH_DIR")))
    redis_proc, redis_port = start_redis(work)
    private = None
    try:
        private, _ports, app_args, tokens, sample, _port = start_cluster(args.config)
        run(args, work, redis_port, private, app_args, tokens["read"], sample, _port)
    finally:
        if private is not None:
            stop_cluster(private)
        redis_proc.terminate()
        redis_proc.wait(30)
        shutil.rmtree(work, ignore_errors=True)


def run(args, work: Path, redis_port: int, private: Path, app_args, token: str, sample: list[int], port: int) -> None:
    from ray import serve

    from rayml.batch.candidate_store import (
        CandidateStoreJobConfig,
        materialize_candidates,
        used_memory,
    )
    from rayml.features.definitions import load_feature_repo
    from rayml.features.redis_store import RedisOnlineStore

    # Redis feature repo: the shipped one with `type: redis` on our server, loaded from the embedded snapshots.
    raw = yaml.safe_load(Path(app_args.features).read_text())
    raw["online_store"] = {"type": "redis", "port": redis_port, "timeout_s": 1.0}
    (work / "features.yaml").write_text(yaml.safe_dump(raw))
    repo = load_feature_repo(work / "features.yaml", check_sources=False)
    store = RedisOnlineStore(port=redis_port)
    for view in repo.views:
        key = repo.entities[repo.views[view].entity].key
        store.write(view, pq.read_table(Path(app_args.feature_state) / f"{view}.parquet"), key=key)
    base_memory = used_memory(store)
    demo = Path(app_args.candidates)
    k = pq.read_schema(next(demo.glob("*.parquet"))).field("items").type.list_size
    floor = set_floor(redis_port, 6 * k)
    emit({"bench": "candidates_store", "what": "floor", "tool": "redis-benchmark -c 1 -P 100", "value_bytes": 6 * k,
          "set_per_s": floor})
    redis_args = app_args.model_copy(update={"features": str(work / "features.yaml"), "feature_log": None})
    tag = f"cs{os.getpid()}"
    results: dict[str, dict] = {}
    for users in args.users:
        out = tiled_candidates(demo, users, work / f"cands-{users}")
        summary = materialize_candidates(CandidateStoreJobConfig(candidates=str(out), features=str(work / "features.yaml"),
                                                                 keep_runs=1), repo)
        row = emit({"bench": "candidates_store", "what": "materialize", "users": users, "top_k": summary.top_k,
                    "seconds": summary.seconds, "rows_per_s": summary.rows_per_s,
                    "vs_floor": round(summary.rows_per_s / floor, 3),
                    "used_memory_mb": round(summary.used_memory_bytes / 2**20, 1),
                    "candidates_mb": round((summary.used_memory_bytes - base_memory) / 2**20, 1),
                    "bytes_per_user": round((summary.used_memory_bytes - base_memory) / users, 1)})
        results[f"materialize@{users}"] = row
        modes = ("online", "parquet") if users <= args.parquet_max_users else ("online",)
        for mode in modes:
            app = f"{tag}-{mode}-{users}"
            update = {"candidates_store": "online", "candidates": None} if mode == "online" else {"candidates": str(out)}
            mode_args = redis_args.model_copy(update=update)
            started = time.perf_counter()
            serve.run(shipped_deployment(args.config, mode_args), name=app, route_prefix=f"/{app}")
            ready_s = time.perf_counter() - started
            warm = script(private, app, sample, token)
            wrk(f"http://127.0.0.1:{port}/{app}/recommend", warm, 4, 3)  # warm-up: every path touched
            rss = replica_rss_mb(app)
            results[f"rss_{mode}@{users}"] = emit({"bench": "candidates_store", "what": "replica_rss", "users": users,
                                                   "candidates_store": mode, "rss_mb": round(rss, 1),
                                                   "deploy_s": round(ready_s, 1)})
            serve.delete(app)
        shutil.rmtree(out)
    latency(args, private, port, token, sample, app_args, redis_args, tag, results)
    lo, hi = args.users[0], args.users[-1]
    emit({"bench": "candidates_store", "ratios": {
        f"materialize_rows_per_s@{hi}": results[f"materialize@{hi}"]["rows_per_s"],
        f"materialize_vs_floor@{hi}": results[f"materialize@{hi}"]["vs_floor"],
        "used_memory_growth_bytes_per_user": round(
            (results[f"materialize@{hi}"]["candidates_mb"] - results[f"materialize@{lo}"]["candidates_mb"]) * 2**20 / (hi - lo), 1),
        f"rss_online_{hi}_vs_{lo}": round(results[f"rss_online@{hi}"]["rss_mb"] / results[f"rss_online@{lo}"]["rss_mb"], 3),
        **{f"rss_parquet_{b}_vs_{lo}": round(results[f"rss_parquet@{b}"]["rss_mb"] / results[f"rss_parquet@{lo}"]["rss_mb"], 3)
           for b in args.users[1:] if f"rss_parquet@{b}" in results},
        "p99_redis_vs_embedded@half_peak": results["p99_ratio"], "target": "<= 1.5",
    }})


def latency(args, private: Path, port: int, token: str, sample: list[int], app_args, redis_args, tag: str,
            results: dict) -> None:
    """Peaks closed-loop, then every config paced to 50 % of the slower peak of embedded and redis."""
    from ray import serve

    configs = {"embedded": app_args.model_copy(update={"feature_log": None}),
               "redis": redis_args.model_copy(update={"candidates_store": "online", "candidates": None}),
               "redis-features": redis_args}
    urls = {}
    for name, config in configs.items():
        app = f"{tag}-{name}"
        serve.run(shipped_deployment(args.config, config), name=app, route_prefix=f"/{app}")
        urls[name] = f"http://127.0.0.1:{port}/{app}/recommend"
    time.sleep(3)
    closed = script(private, "closed", sample, token)
    for url in urls.values():
        wrk(url, closed, 4, 3)  # warm-up: first requests, HAProxy reloads
    c = args.connections
    peaks = {name: emit({"bench": "candidates_store", "what": "peak", "config": name, **wrk(url, closed, c, args.seconds)})
             for name, url in urls.items()}
    target = 0.5 * min(peaks["embedded"]["req_per_s"], peaks["redis"]["req_per_s"])
    cycle_ms = 1000 * c / target  # each connection's time per request at the target rate
    paced: dict[str, list[dict]] = {name: [] for name in urls}
    delays = {}
    for name, url in urls.items():  # calibration: subtract the latency at this load from the cycle
        probe = wrk(url, script(private, f"probe-{name}", sample, token, pause_ms=cycle_ms), c, 3)
        delays[name] = max(0.0, cycle_ms - probe["p50_ms"])
    for repeat in range(args.repeats):
        for name, url in urls.items():
            row = wrk(url, script(private, f"paced-{name}", sample, token, pause_ms=delays[name]), c, args.seconds)
            paced[name].append(emit({"bench": "candidates_store", "what": "half_peak", "config": name, "repeat": repeat,
                                     "target_req_per_s": round(target, 1), "delay_ms": round(delays[name], 1), **row}))
    medians = {name: float(np.median([r["p99_ms"] for r in rows])) for name, rows in paced.items()}
    emit({"bench": "candidates_store", "what": "half_peak_median", "connections": c, "repeats": args.repeats,
          "target_req_per_s": round(target, 1), "p99_ms": medians,
          "req_per_s": {n: float(np.median([r["req_per_s"] for r in rows])) for n, rows in paced.items()},
          "p50_ms": {n: float(np.median([r["p50_ms"] for r in rows])) for n, rows in paced.items()}})
    results["p99_ratio"] = round(medians["redis"] / medians["embedded"], 3)
    results["p99_redis_vs_redis_features"] = round(medians["redis"] / medians["redis-features"], 3)
    for name in urls:
        serve.delete(f"{tag}-{name}")


if __name__ == "__main__":
    main()
