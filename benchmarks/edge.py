"""Benchmark: the serving edge with wrk (a C load generator), HAProxy ingress, peers in the same run.

    python benchmarks/edge.py [--seconds 8] [--redis-port N] [--overload]     (after `make demo-data`)

One local Ray with the shipped ingress (:mod:`rayml.serving.ingress`: HAProxy in front of direct-ingress replicas)
serves a trivial echo deployment and the recommender with the shipped ``serve_apps/recommender.yaml`` args (auth
on, one replica each at the same CPU share). ``wrk`` drives, in the same run:

- echo and ``/recommend`` through HAProxy (the shipped path) at 1 and 32 connections;
- ``/recommend`` through the Serve proxy (still running as HAProxy's fallback) and straight at the replica's
  own port (direct ingress), as reference rows;
- with ``--redis-port``, ``/recommend`` on the Redis online store (a second app);
- with ``--overload``, the overload ladder of ``docs/benchmarks.md``: C* is the smallest connection count in
  1, 2, 4 … 512 reaching 95 % of the best req/s (each point the median of three 3 s runs); then C*, 2C*, 5C* and max(10C*, 320) connections with a 2 s
  time-out, hammering (plain wrk) and polite (each connection waits Retry-After before resending).

Prints one JSON line per measurement, then the ratios the targets are stated in. wrk shares the 2 cores with the
server; the echo peer suffers the same, which is why targets are ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from rayml.ports import free_port

LUA = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
{auth}
local users = {{{users}}}
local polite = {polite}
local pause = {pause_ms}
local counter = 0
local threads = {{}}
function setup(thread) table.insert(threads, thread) end
function init(args) statuses = {{}}; wait = 0 end
function request()
  counter = counter + 1
  return wrk.format(nil, nil, nil, '{{"user_id": ' .. users[(counter % #users) + 1] .. ', "k": 10}}')
end
function delay() local d = wait; wait = 0; return d + pause end
function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
  if polite and status >= 400 then
    local after = tonumber(headers["Retry-After"] or headers["retry-after"] or "1") or 1
    wait = after * 1000
  end
end
function done(summary, latency, requests)
  local all = {{}}
  for _, t in ipairs(threads) do
    for code, n in pairs(t:get("statuses")) do all[code] = (all[code] or 0) + n end
  end
  local parts = {{}}
  for code, n in pairs(all) do table.insert(parts, '"' .. code .. '": ' .. n) end
  io.write("STATUSES {{" .. table.concat(parts, ", ") .. "}}\\n")
  io.write(string.format("LAT p50=%d p99=%d timeouts=%d\\n", latency:percentile(50), latency:percentile(99),
                         summary.errors.timeout))
end
"""


def wrk(url: str, script: Path, connections: int, seconds: float, timeout_s: float = 10,
        threads: int | None = None) -> dict:
    """One wrk run; req/s, latency percentiles, statuses and client time-outs.

    ``threads``: wrk threads (default: 2, or 1 at one connection). A polite script runs one connection per thread:
    wrk's Lua state, and so the Retry-After wait its ``response`` sets, is per thread, and its ``delay`` hook is not
    told which connection asks. With many connections on a thread, the wait of a rejected connection went to
    whichever connection of the thread wrote next (while the rejected one resent at once).
    """
    threads = threads or min(2, connections)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(["wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, round(seconds))}s", f"--timeout={timeout_s}s",
                          "--latency", "-s", str(script), url], capture_output=True, text=True, check=True).stdout
    found = re.search(r"STATUSES (\{.*\})", out)
    lat = re.search(r"LAT p50=(\d+) p99=(\d+) timeouts=(\d+)", out)
    if found is None or lat is None:
        raise RuntimeError(f"wrk printed no summary (is {script} a script of this module?):\n{out}")
    statuses = json.loads(found.group(1))
    total = sum(statuses.values())
    ok = sum(n for code, n in statuses.items() if code.startswith("2"))
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    client_cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"connections": connections, "req_per_s": round(total / seconds, 1), "goodput": round(ok / seconds, 1),
            "p50_ms": int(lat.group(1)) / 1e3, "p99_ms": int(lat.group(2)) / 1e3, "statuses": statuses,
            "timeouts": int(lat.group(3)),
            # wrk's own CPU, as a share of the machine's: the load generator shares the cores with the server
            "client_cpu_share": round(client_cpu_s / (max(1, round(seconds)) * (os.cpu_count() or 1)), 3)}


def script(folder: Path, name: str, users: list[int], token: str | None, polite: bool = False,
           pause_ms: float = 0.0) -> Path:
    """The wrk script: ``POST /recommend`` for ``users`` in turn, statuses counted; ``polite``: wait Retry-After
    after a rejection; ``pause_ms``: each connection also waits that long before every request (pacing)."""
    auth = f'wrk.headers["Authorization"] = "Bearer {token}"' if token else ""
    path = folder / f"{name}.lua"
    path.write_text(LUA.format(auth=auth, users=", ".join(map(str, users)), polite="true" if polite else "false",
                               pause_ms=round(pause_ms, 2)))
    return path


def echo_app():
    from fastapi import FastAPI
    from ray import serve

    app = FastAPI()

    @serve.deployment(name="Echo", ray_actor_options={"num_cpus": 0.5}, max_ongoing_requests=32)
    @serve.ingress(app)
    class Echo:
        @app.post("/")
        async def echo(self, body: dict) -> dict:  # builtin annotation: resolvable under postponed evaluation
            return body

    return Echo.bind()  # type: ignore[attr-defined]  # serve.deployment's class gains bind()


def replica_port(lo: int, hi: int, taken: set[int]) -> int | None:
    """A listening port in the direct-ingress range that is not one already known."""
    for port in range(lo, hi):
        if port in taken:
            continue
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return port
    return None


def emit(record: dict) -> dict:
    print(json.dumps(record), flush=True)
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--config", default="serve_apps/recommender.yaml")
    parser.add_argument("--redis-port", type=int, default=None)
    parser.add_argument("--overload", action="store_true")
    parser.add_argument("--overload-only", action="store_true", help="the overload ladder and loads, nothing else")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: `make wrk` (Debian package wrk)")

    private, ports, app_args, tokens, sample, port = start_cluster(args.config)
    from ray import serve

    from rayml.serving.app import build_recommender

    rec = script(private, "recommend", sample, tokens["read"])
    polite = script(private, "polite", sample, tokens["read"], polite=True)
    echo = script(private, "echo", sample, None)
    try:
        serve.run(echo_app(), name="echo", route_prefix="/echo")
        echo_port = replica_port(ports.direct_http_min, ports.direct_http_min + ports.direct_span, set())
        serve.run(shipped_deployment(args.config, app_args), name="recommender", route_prefix="/")
        rec_port = replica_port(ports.direct_http_min, ports.direct_http_min + ports.direct_span,
                                {echo_port} if echo_port is not None else set())
        base = f"http://127.0.0.1:{port}"
        time.sleep(3)
        for target in (f"{base}/echo/", f"{base}/recommend"):  # warm-up: first requests and HAProxy reloads
            wrk(target, echo if "echo" in target else rec, 4, 3)
        if not args.overload_only:
            rows: dict[str, dict] = {}
            for c in (1, 32):
                rows[f"echo@{c}"] = emit({"bench": "edge", "target": "echo", "ingress": "haproxy",
                                          **wrk(f"{base}/echo/", echo, c, args.seconds)})
                rows[f"rec@{c}"] = emit({"bench": "edge", "target": "recommend", "ingress": "haproxy",
                                         **wrk(f"{base}/recommend", rec, c, args.seconds)})
                fallback = f"http://127.0.0.1:{ports.fallback_http}"
                rows[f"proxy@{c}"] = emit({"bench": "edge", "target": "recommend", "ingress": "serve-proxy",
                                           **wrk(f"{fallback}/recommend", rec, c, args.seconds)})
                if rec_port is not None:
                    rows[f"direct@{c}"] = emit({"bench": "edge", "target": "recommend", "ingress": "direct",
                                                **wrk(f"http://127.0.0.1:{rec_port}/recommend", rec, c, args.seconds)})
            if args.redis_port is not None:
                import pyarrow.parquet as pq

                from rayml.features.definitions import load_feature_repo
                from rayml.features.redis_store import RedisOnlineStore

                repo_yaml = yaml.safe_load(Path(app_args.features).read_text())
                repo_yaml["online_store"] = {"type": "redis", "port": args.redis_port}
                (private / "features.yaml").write_text(yaml.safe_dump(repo_yaml))
                repo = load_feature_repo(private / "features.yaml", check_sources=False)
                store = RedisOnlineStore(port=args.redis_port)  # the materialized snapshots, as the job writes them
                for view in repo.views:
                    key = repo.entities[repo.views[view].entity].key
                    store.write(view, pq.read_table(Path(app_args.feature_state) / f"{view}.parquet"), key=key)
                redis_args = app_args.model_copy(update={"features": str(private / "features.yaml")})
                serve.run(build_recommender(redis_args), name="redis", route_prefix="/redis")
                time.sleep(2)
                wrk(f"{base}/redis/recommend", rec, 4, 3)
                for c in (1, 32):
                    rows[f"redis@{c}"] = emit({"bench": "edge", "target": "recommend", "ingress": "haproxy",
                                               "store": "redis", **wrk(f"{base}/redis/recommend", rec, c, args.seconds)})
                serve.delete("redis")
            ratios = {
                "rec_vs_echo_req_s@32": round(rows["rec@32"]["req_per_s"] / rows["echo@32"]["req_per_s"], 3),
                "rec_req_s@32": rows["rec@32"]["req_per_s"], "rec_p50_ms@1": rows["rec@1"]["p50_ms"],
                "rec_p99_ms@32": rows["rec@32"]["p99_ms"],
                "haproxy_vs_proxy_req_s@32": round(rows["rec@32"]["req_per_s"] / rows["proxy@32"]["req_per_s"], 3),
            }
            if "redis@32" in rows:
                ratios["redis_vs_embedded_req_s@32"] = round(rows["redis@32"]["req_per_s"] / rows["rec@32"]["req_per_s"], 3)
            emit({"bench": "edge", "ratios": ratios})
        if args.overload or args.overload_only:
            overload(f"{base}/recommend", rec, polite, args.seconds, HAProxyLog(private / "haproxy"))
    finally:
        stop_cluster(private)


def shipped_deployment(config: str, app_args, num_replicas: int = 1, user_config: dict | None = None):
    """The recommender with the shipped YAML's deployment options (queue bounds, backpressure, CPU share, health
    checks), at a fixed ``num_replicas`` instead of autoscaling, so every run compares like with like."""
    from rayml.serving.app import Recommender
    from rayml.serving.config import load_serving_repo

    options = dict(yaml.safe_load(Path(config).read_text())["applications"][0]["deployments"][0])
    keep = ("max_ongoing_requests", "max_queued_requests", "backpressure_config", "ray_actor_options",
            "graceful_shutdown_timeout_s", "health_check_period_s", "health_check_timeout_s")
    chosen = {key: options[key] for key in keep if key in options}
    if user_config is not None:
        chosen["user_config"] = user_config
    return Recommender.options(num_replicas=num_replicas, **chosen).bind(app_args.model_dump(),
                                                              load_serving_repo(app_args).model_dump())


def start_cluster(config: str):
    """Ray with the shipped HAProxy ingress on its own ports and Serve on a free port; the recommender's args
    from ``config`` with a fresh tokens file. Returns (folder, ports, args, tokens, user sample, HTTP port)."""
    from rayml.serving.auth import write_demo_tokens
    from rayml.serving.ingress import IngressPorts, with_ingress

    # SIGTERM (a `timeout`, a CI runner) must still reach the `finally` that shuts Serve down: a driver killed
    # outright leaves its HAProxy running, holding the ports.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(143))
    private = Path(tempfile.mkdtemp(prefix="rmb-"))
    ports = IngressPorts.free()
    # HAProxy's access log (`option httplog`) to its stdout, which Ray writes to a file beside the admin socket:
    # per-status latency for the overload table, at C speed (the default target is UDP 127.0.0.1:514).
    os.environ.setdefault("RAY_SERVE_HAPROXY_LOG_TARGET", "stdout")
    os.environ.update(with_ingress("haproxy", private / "haproxy", ports=ports))
    import pyarrow.parquet as pq
    import ray
    from ray import serve

    from rayml.serving import RecommenderArgs

    raw = yaml.safe_load(Path(config).read_text())["applications"][0]["args"]
    tokens = write_demo_tokens(private / "tokens.yaml")
    raw["auth"] = {**raw.get("auth", {}), "tokens_file": str(private / "tokens.yaml")}
    app_args = RecommenderArgs.model_validate(raw).model_copy(update={"event_log": None})
    users = pq.read_table(app_args.candidates, columns=["user_id"])["user_id"].to_numpy()
    sample = [int(u) for u in np.random.default_rng(0).choice(users, 1000)]
    port = free_port()
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=400 * 1024 * 1024)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    return private, ports, app_args, tokens, sample, port


def stop_cluster(private: Path) -> None:
    import ray
    from ray import serve

    serve.shutdown()
    ray.shutdown()
    shutil.rmtree(private, ignore_errors=True)


# accept date, then %TR/%Tw/%Tc/%Tr/%Ta %ST (option httplog)
HTTPLOG = re.compile(rb"\[(\d+/\w+/\d+:\d+:\d+:\d+\.\d+)\] .* -?\d+/-?\d+/-?\d+/-?\d+/(-?\d+) (-?\d+) "
                     rb"-?\d+ \S+ \S+ (\S{4}) ")  # then %B %CC %CS %tsc: the session's termination state


class HAProxyLog:
    """Per-status counts, latency (``%Ta``, ms) and termination states of the requests HAProxy logged since
    :meth:`mark`."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.offsets: dict[Path, int] = {}

    def files(self) -> list[Path]:
        return sorted(self.folder.rglob("admin.sock.*.stdout.log"))  # under a per-cluster hash folder

    def mark(self) -> None:
        self.offsets = {f: f.stat().st_size for f in self.files()}

    def since_mark(self, window: tuple[float, float] | None = None) -> dict[str, dict]:
        """``window``: (start, end) in ``time.time()`` seconds; only requests HAProxy accepted within it count,
        and each status then also gets its rate (``per_s``) over the window."""
        latencies: dict[str, list[int]] = {}
        endings: dict[str, Counter[str]] = defaultdict(Counter)  # per status: termination states, e.g. "CH--"
        for f in self.files():
            with f.open("rb") as handle:
                handle.seek(self.offsets.get(f, 0))
                for line in handle:
                    if b"/recommend" not in line:
                        continue
                    match = HTTPLOG.search(line)
                    if not match:
                        continue
                    if window is not None:
                        accepted = datetime.strptime(match.group(1).decode(), "%d/%b/%Y:%H:%M:%S.%f").timestamp()
                        if not window[0] <= accepted < window[1]:
                            continue
                    status = match.group(3).decode()
                    latencies.setdefault(status, []).append(int(match.group(2)))
                    endings[status][match.group(4).decode()] += 1
        out: dict[str, dict[str, Any]] = {
            status: {"n": len(ms), "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
                     "endings": dict(endings[status])}
            for status, ms in sorted(latencies.items())}
        if window is not None:
            for row in out.values():
                row["per_s"] = round(row["n"] / (window[1] - window[0]), 1)
        return out


def overload(url: str, hammer: Path, polite: Path, seconds: float, log: HAProxyLog | None = None,
             warmup_s: float = 2.0) -> None:
    """The ladder, then C*, 2C*, 5C*, max(10C*, 320) for both kinds of client, then recovery after the load.

    Each load point runs ``warmup_s + seconds``. wrk opens all its connections at once, so a point's first second
    is a connection storm (HAProxy opens one replica connection per client connection; the replica accepts and
    parses them all before it sheds any); wrk's own figures cover the whole run, storm included. HAProxy's log
    gives the steady state apart: the requests it accepted after ``warmup_s``, their goodput and each status's
    latency (``steady``), and the storm's own (``storm``)."""
    ladder = {}
    for c in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512):  # each point: the median of 3 runs (this box moves ±20 %)
        runs = sorted((wrk(url, hammer, c, 3, timeout_s=2) for _ in range(3)), key=lambda r: r["goodput"])
        ladder[c] = {**runs[1], "goodput_runs": [r["goodput"] for r in runs]}
        emit({"bench": "overload", "phase": "ladder", **ladder[c]})
    peak = max(r["goodput"] for r in ladder.values())
    c_star = min(c for c, r in ladder.items() if r["goodput"] >= 0.95 * peak)
    at_c_star: dict[str, dict] = {}
    for kind, path in (("hammering", hammer), ("polite", polite)):
        for factor, c in (("1x", c_star), ("2x", 2 * c_star), ("5x", 5 * c_star), ("10x", max(10 * c_star, 320))):
            if log is not None:
                log.mark()
            began = time.time()
            row = {"bench": "overload", "client": kind, "load": factor, "c_star": c_star, "peak": peak,
                   **wrk(url, path, c, warmup_s + seconds, timeout_s=2, threads=c if kind == "polite" else None)}
            if log is not None:  # HAProxy's own view: accepted requests' latency apart from the rejections'
                row["storm"] = log.since_mark((began, began + warmup_s))
                row["steady"] = log.since_mark((began + warmup_s, began + warmup_s + seconds))
            emit(row)
            if factor == "1x":
                at_c_star[kind] = row
                continue
            summary = {"bench": "overload", "client": kind, "load": factor, "connections": c,
                       "goodput_vs_peak": round(row["goodput"] / peak, 3),
                       "p99_vs_c_star": round(row["p99_ms"] / max(at_c_star[kind]["p99_ms"], 1e-3), 2)}
            if log is not None:
                accepted, base = row["steady"].get("200", {}), at_c_star[kind]["steady"].get("200", {})
                summary["steady_goodput_vs_peak"] = round(accepted.get("per_s", 0.0) / peak, 3)
                if accepted and base:
                    summary["steady_accepted_p99_vs_c_star"] = round(accepted["p99_ms"] / max(base["p99_ms"], 1), 2)
            emit(summary)
    after = wrk(url, hammer, c_star, 5, timeout_s=2)  # recovery: back to peak once the load drops
    emit({"bench": "overload", "phase": "after", **after, "vs_peak": round(after["goodput"] / peak, 3)})


if __name__ == "__main__":
    main()
