"""Benchmark: what a running canary and a shadow cost the recommender, measured with wrk on the shipped edge.

    python benchmarks/rollout_overhead.py [--seconds 8] [--pairs 5]      (after `make demo-data`)

One local Ray with the HAProxy ingress serves the shipped recommender (one replica) on a copy of the demo
registry. The rollout is switched on and off *without a redeploy*, the way operators do it: ``start`` writes the
controller's weights (canary at 50 %, every request routed, the canary's and a 10 % sample of production's
outcomes logged), ``abort`` removes them; replicas pick the change up at their next alias poll. Likewise the shadow
(10 % of requests mirrored to a ``shadow`` alias).

- **Router + outcome logging:** req/s at 32 connections, ``--pairs`` interleaved off/on runs; the median ratio
  on/off, and machine CPU µs per request (``/proc/stat``) beside it. Target: ≥ 0.97.
- **Shadow at 10 %:** p99 at the connection count that gives about half of the peak, interleaved off/on;
  the median ratio on/off. Target: ≤ 1.05.
- **Monitoring at 10 %:** the recommender redeployed with monitoring configured; its sampling switched live
  between 0 and 10 % (``user_config.monitor_sample_rate``, no restart), req/s at 32 connections, interleaved.
  Target: ≥ 0.97 (the Monitoring issue's overhead bound). ``--monitor-aa`` samples 0 % in both modes (a control).

Pairs run in ABBA order and each summary gives the median of the per-pair ratios with their quartiles.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path
from statistics import median, quantiles
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from edge import emit, script, shipped_deployment, start_cluster, stop_cluster, wrk
from replica_failure import replica_pids

CONFIG = "serve_apps/recommender.yaml"


def cpu_jiffies() -> int:
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    idle = int(fields[3]) + int(fields[4])
    return sum(int(f) for f in fields) - idle


def process_jiffies(pids: list[int]) -> int:
    """User + system CPU of ``pids`` (0 for one that is gone), in USER_HZ ticks."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of proc(5))
    return total


def measured(url: str, lua: Path, connections: int, seconds: float) -> dict:
    """wrk's figures plus CPU µs per request: the machine's (``/proc/stat``) and the recommender replica's own."""
    replicas = replica_pids("recommender")
    before, replica_before = cpu_jiffies(), process_jiffies(replicas)
    result = wrk(url, lua, connections, seconds)
    used_s = (cpu_jiffies() - before) / 100  # USER_HZ
    replica_s = (process_jiffies(replicas) - replica_before) / 100
    total = max(sum(result["statuses"].values()), 1)
    return {**result, "cpu_us_per_request": round(used_s / total * 1e6, 1),
            "replica_cpu_us_per_request": round(replica_s / total * 1e6, 1)}


def spread(ratios: list[float]) -> dict[str, Any]:
    """The median on/off ratio and its quartiles over the pairs (the box's own noise shows in their distance)."""
    q1, _, q3 = quantiles(ratios, n=4) if len(ratios) > 1 else (ratios[0],) * 3
    return {"median_ratio": round(median(ratios), 3), "quartiles": [round(q1, 3), round(q3, 3)], "pairs": len(ratios)}


def abba(pair: int, modes: tuple[Any, Any]) -> tuple[Any, Any]:
    """Off then on in even pairs, on then off in odd ones: a box that drifts (it does, by up to 20 % over a few
    minutes here) then biases neither side of the ratio."""
    return modes if pair % 2 == 0 else (modes[1], modes[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--only", choices=("router", "shadow", "monitoring"), action="append",
                        help="run only these parts (repeatable); default: all three")
    parser.add_argument("--canary-pct", type=float, default=50.0,
                        help="the canary's weight while the router is on (the plan's first stage)")
    parser.add_argument("--monitor-aa", action="store_true",
                        help="A/A control: the 'on' mode samples 0 %% too, so the ratio shows the noise")
    a = parser.parse_args()

    from ray import serve

    from rayml.config import load_config
    from rayml.registry import ModelRegistry
    from rayml.rollout.controller import command, start
    from rayml.rollout.plan import RolloutPlan
    from rayml.rollout.state import RolloutStore
    from rayml.serving.config import RolloutServing

    private, _, app_args, tokens, users, port = start_cluster(CONFIG)
    try:
        root = private / "registry"
        shutil.copytree(app_args.registry, root, ignore=shutil.ignore_patterns("_rollout"))
        registry = ModelRegistry(root)
        source = registry.get("ranker", "production")
        meta = {k: v for k, v in source.metadata.items()
                if k not in ("name", "version", "files", "created_at", "writer")}
        candidate = registry.register("ranker", {n: source.file(n) for n in source.metadata["files"]},
                                      meta | {"note": "overhead benchmark candidate"}).version
        registry.set_alias("ranker", "shadow", candidate)
        args = app_args.model_copy(update={"registry": str(root), "alias_poll_s": 1.0,
                                           "rollout": RolloutServing(outcomes=str(private / "outcomes"))})
        serve.run(shipped_deployment(CONFIG, args), name="recommender", route_prefix="/")
        url = f"http://127.0.0.1:{port}/recommend"
        lua = script(private, "recommend", users, tokens["read"])
        plan = load_config("configs/rollout/production.yaml", RolloutPlan).model_copy(
            update={"stages": [{"weight_pct": a.canary_pct, "min_samples": 100, "min_duration_s": 1e9},
                               {"weight_pct": 100, "min_samples": 100, "min_duration_s": 1e9}],
                    "weights_ttl_s": 3600.0})
        plan = RolloutPlan.model_validate(plan.model_dump())
        store = RolloutStore(root, "ranker")
        wrk(url, lua, 32, 4)  # warm up

        def rollout(on: bool) -> None:
            active = (state := store.read()) is not None and state.active
            if on == active:  # ABBA order: the second run of a pair keeps the first's setting
                return
            if on:
                start(root, plan, str(candidate))
            else:
                command(root, "ranker", "abort")
            time.sleep(2.5)  # > alias_poll_s: every replica re-read the weights
            # A start makes the replica load the candidate (its ONNX session and item rows) and an abort drop it;
            # that load is a rollout's one-off cost, not the router's per request: keep it out of the measurement.
            wrk(url, lua, 32, 3)

        parts = set(a.only or ("router", "shadow", "monitoring"))
        router: dict[str, list[dict]] = {"off": [], "on": []}
        for i in range(a.pairs if "router" in parts else 0):
            for mode in abba(i, ("off", "on")):
                rollout(mode == "on")
                router[mode].append(emit({"bench": "rollout_overhead", "what": "router+outcome log", "mode": mode,
                                          **measured(url, lua, 32, a.seconds)}))
        if router["on"]:
            ratios = [on["req_per_s"] / off["req_per_s"] for off, on in zip(router["off"], router["on"], strict=True)]
            cpu = [on["cpu_us_per_request"] / off["cpu_us_per_request"]
                   for off, on in zip(router["off"], router["on"], strict=True)]
            replica_cpu = [on["replica_cpu_us_per_request"] / max(off["replica_cpu_us_per_request"], 1e-9)
                           for off, on in zip(router["off"], router["on"], strict=True)]
            emit({"bench": "rollout_overhead", "summary": "router+outcome log", "canary_pct": a.canary_pct,
                  "throughput": spread(ratios), "cpu_per_request": spread(cpu),
                  "cpu_us_off": median(r["cpu_us_per_request"] for r in router["off"]),
                  "cpu_us_on": median(r["cpu_us_per_request"] for r in router["on"]),
                  "replica_cpu_per_request": spread(replica_cpu),
                  "replica_cpu_us_off": median(r["replica_cpu_us_per_request"] for r in router["off"]),
                  "replica_cpu_us_on": median(r["replica_cpu_us_per_request"] for r in router["on"]), "target": ">= 0.97"})
        if "shadow" in parts:
            shadow_overhead(a, url, lua, store, router["off"])
        if "monitoring" in parts:
            monitoring_overhead(a, args, private, port, url, lua)
    finally:
        stop_cluster(private)


def shadow_overhead(a: argparse.Namespace, url: str, lua: Path, store: Any, router_off: list[dict]) -> None:
    peak = max(r["req_per_s"] for r in router_off) if router_off else measured(url, lua, 32, a.seconds)["req_per_s"]
    ladder = [measured(url, lua, c, a.seconds / 2) for c in (1, 2, 4)]
    half = min(ladder, key=lambda r: abs(r["req_per_s"] - peak / 2))
    c = half["connections"]
    emit({"bench": "rollout_overhead", "what": "half load", "peak": peak, "connections": c,
          "req_per_s": half["req_per_s"]})
    shadow: dict[str, list[dict]] = {"off": [], "on": []}
    for i in range(a.pairs):
        for mode in abba(i, ("off", "on")):
            store.set_shadow({"alias": "shadow", "config": {"fraction": 0.1}} if mode == "on" else None)
            time.sleep(2.5)
            shadow[mode].append(emit({"bench": "rollout_overhead", "what": "shadow 10%", "mode": mode,
                                      **measured(url, lua, c, a.seconds)}))
    ratios = [on["p99_ms"] / off["p99_ms"] for off, on in zip(shadow["off"], shadow["on"], strict=True)]
    reports = store.shadow_reports()
    compared = sum(((r or {}).get("report") or {}).get("current", {}).get("requests", 0) or 0
                   for r in reports.values())
    emit({"bench": "rollout_overhead", "summary": "shadow 10%", "connections": c,
          "p99": spread(ratios), "p99_off_ms": median(r["p99_ms"] for r in shadow["off"]),
          "p99_on_ms": median(r["p99_ms"] for r in shadow["on"]), "compared_in_last_window": compared,
          "target": "<= 1.05"})


def monitoring_overhead(a: argparse.Namespace, args: Any, private: Path, port: int, url: str, lua: Path) -> None:
    """One app, monitoring configured; sampling switched between 0 and 10 % live (``user_config``), so both modes
    run in the same replica. With ``--monitor-aa`` the "on" mode samples 0 % too (a control)."""
    from ray import serve

    from rayml.serving.config import MonitoringServing
    from rayml.serving.monitor_app import MonitorArgs, build_monitor

    serve.run(build_monitor(MonitorArgs(monitor={"window_s": 60, "state_dir": str(private / "monitor")})),
              name="monitor", route_prefix=None)
    monitored = args.model_copy(update={"rollout": None, "monitoring": MonitoringServing(sample_rate=0.1)})
    rates = {"off": 0.0, "on": 0.0 if a.monitor_aa else 0.1}

    def sample(mode: str) -> None:
        serve.run(shipped_deployment(CONFIG, monitored, user_config={"monitor_sample_rate": rates[mode]}),
                  name="recommender", route_prefix="/")
        wrk(url, lua, 32, 2)  # a redeploy from Python may start a new replica: warm it before measuring

    sample("on")
    wrk(url, lua, 32, 4)
    monitoring: dict[str, list[dict]] = {"off": [], "on": []}
    current = "on"
    for i in range(a.pairs):
        for mode in abba(i, ("off", "on")):
            if mode != current:
                sample(mode)
                current = mode
            monitoring[mode].append(emit({"bench": "rollout_overhead", "what": "monitoring 10%", "mode": mode,
                                          "sample_rate": rates[mode], **measured(url, lua, 32, a.seconds)}))
    ratios = [on["req_per_s"] / off["req_per_s"] for off, on in zip(monitoring["off"], monitoring["on"], strict=True)]
    cpu = [on["cpu_us_per_request"] / off["cpu_us_per_request"]
           for off, on in zip(monitoring["off"], monitoring["on"], strict=True)]
    emit({"bench": "rollout_overhead", "summary": "monitoring A/A (0%)" if a.monitor_aa else "monitoring 10%",
          "throughput": spread(ratios), "cpu_per_request": spread(cpu),
          "cpu_us_off": median(r["cpu_us_per_request"] for r in monitoring["off"]),
          "cpu_us_on": median(r["cpu_us_per_request"] for r in monitoring["on"]), "target": ">= 0.97"})


if __name__ == "__main__":
    main()
