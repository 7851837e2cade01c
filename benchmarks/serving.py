"""Benchmark: the full recommender against a Serve echo deployment, same box, same HTTP load generator.

    python benchmarks/serving.py [--seconds 8]      (after `make demo-data`)

Starts a local Ray and Serve on free ports, deploys a trivial echo deployment and the recommender with the shipped
`serve_apps/recommender.yaml` args (one replica each, the same CPU share), and drives each with the same
asyncio + httpx load generator at concurrency 1, 8 and 32. Prints one JSON line per (target, concurrency) with
req/s, p50, p95, p99 and errors, then the ratios the targets are stated in. With `--split` the `split` plan
(ingress + Ranker deployment, one handle hop per batch) is measured too, for comparison.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

import numpy as np
import yaml

from rayml.ports import free_port


async def drive(url: str, bodies: list[dict], concurrency: int, seconds: float) -> dict:
    """``concurrency`` workers post bodies back to back for ``seconds`` (after a 2 s warm-up)."""
    import httpx

    latencies: list[float] = []
    errors = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:
        async def worker(index: int, until: float, record: bool) -> None:
            nonlocal errors
            i = index
            while time.perf_counter() < until:
                started = time.perf_counter()
                response = await client.post(url, json=bodies[i % len(bodies)])
                i += concurrency
                if record:
                    latencies.append(time.perf_counter() - started)
                    errors += response.status_code != 200

        warm = time.perf_counter() + 2
        await asyncio.gather(*(worker(i, warm, False) for i in range(concurrency)))
        started = time.perf_counter()
        await asyncio.gather(*(worker(i, started + seconds, True) for i in range(concurrency)))
        elapsed = time.perf_counter() - started
    ms = np.array(latencies) * 1e3
    return {"requests": len(ms), "req_per_s": round(len(ms) / elapsed, 1), "p50_ms": round(float(np.percentile(ms, 50)), 2),
            "p95_ms": round(float(np.percentile(ms, 95)), 2), "p99_ms": round(float(np.percentile(ms, 99)), 2),
            "errors": errors}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--config", default="serve_apps/recommender.yaml")
    parser.add_argument("--split", action="store_true", help="also measure the split composition plan")
    args = parser.parse_args()

    import pyarrow.parquet as pq
    import ray
    from ray import serve

    from rayml.serving import RecommenderArgs
    from rayml.serving.app import build_recommender

    app_args = RecommenderArgs.model_validate(yaml.safe_load(Path(args.config).read_text())["applications"][0]["args"])
    app_args = app_args.model_copy(update={"feature_log": None, "event_log": None})
    users = pq.read_table(app_args.candidates, columns=["user_id"])["user_id"].to_numpy()
    rng = np.random.default_rng(0)
    rec_bodies = [{"user_id": int(u), "k": 10} for u in rng.choice(users, 2000)]
    echo_bodies = [{"user_id": b["user_id"], "k": 10} for b in rec_bodies]

    @serve.deployment(ray_actor_options={"num_cpus": 0.5}, max_ongoing_requests=32)
    class Echo:
        async def __call__(self, request) -> dict:
            return await request.json()

    ray.init(num_cpus=2, object_store_memory=400 * 1024 * 1024, include_dashboard=False)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(Echo.bind(), name="echo", route_prefix="/echo")  # type: ignore[attr-defined]
    # The deployments' defaults: one replica, 0.5 CPU, max_ongoing_requests 32 (the Ranker: 0.5 CPU too).
    serve.run(build_recommender(app_args), name="recommender", route_prefix="/")
    base = f"http://127.0.0.1:{port}"
    targets = [("echo", f"{base}/echo", echo_bodies), ("recommend", f"{base}/recommend", rec_bodies)]
    if args.split:
        serve.run(build_recommender(app_args.model_copy(update={"plan": "split"})), name="split", route_prefix="/split")
        targets.append(("recommend_split", f"{base}/split/recommend", rec_bodies))
    results: dict[tuple[str, int], dict] = {}
    try:
        for concurrency in (1, 8, 32):
            for name, url, bodies in targets:
                result = asyncio.run(drive(url, bodies, concurrency, args.seconds))
                results[(name, concurrency)] = result
                print(json.dumps({"benchmark": "serving", "target": name, "concurrency": concurrency, **result}))
    finally:
        serve.shutdown()
        ray.shutdown()
    echo, rec = (lambda c: results[("echo", c)]), (lambda c: results[("recommend", c)])
    print(json.dumps({
        "benchmark": "serving_ratios",
        "req_per_s_at_32_vs_echo": round(rec(32)["req_per_s"] / echo(32)["req_per_s"], 3), "target_req_per_s": ">= 0.7",
        "p50_at_1_vs_echo": round(rec(1)["p50_ms"] / echo(1)["p50_ms"], 3), "target_p50": "<= 1.5",
        "p99_at_8_vs_echo": round(rec(8)["p99_ms"] / echo(8)["p99_ms"], 3), "target_p99": "<= 1.5",
        "errors": sum(r["errors"] for r in results.values()),
    }))


if __name__ == "__main__":
    main()
