"""CPU µs per request of online monitoring, in one process: the recommender's own work, and what a 10 % sample
adds in the replica (the row, the once-a-second message with its profiles, its serialization) and in the monitor
(ingest). A companion to `rollout_overhead.py --only monitoring`, whose end-to-end ratio this box's noise blurs.

    python benchmarks/monitor_tap_cpu.py [--calls 3000 --rounds 6 --rate 0.1 --per-message 1000]   (after `make demo-data`)

``--per-message``: requests a replica answers between two messages (one second at about 1,000 req/s). Rounds
alternate off/on (ABBA) so that a drift of the box biases neither side; the overhead itself is timed where it
runs (the tap per request, the flush, the serialization, the ingest), since the off/on difference of whole rounds
moves by several percent on this box. One JSON line.
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from stage_cpu import serve_calls, shipped_core

from rayml.monitoring.online import Monitor, MonitorConfig
from rayml.monitoring.tap import MonitorTap
from rayml.serving.recommender import Prepared, RecommendCall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--rate", type=float, default=0.1)
    parser.add_argument("--per-message", type=int, default=1000)
    parser.add_argument("--config", default="serve_apps/recommender.yaml")
    a = parser.parse_args()
    core = shipped_core(a.config)
    users = np.random.default_rng(0).choice(core.retrieval.user_ids, a.calls)
    messages: list[dict] = []
    tap = MonitorTap(a.rate, messages.append, send_every_s=1e9)  # flushed by hand: one message per --per-message
    view = core.args.user_view

    def sample(p) -> None:  # what the replica's monitor tap does per request
        if tap.sampled() and p.scores is not None and len(p.scores):
            tap.add(p.monitor_row(view))

    serve_calls(core, users[:300])  # warm-up
    spent: dict[str, list[float]] = {"off": [], "on": []}
    flush_ns = serialize_ns = ingest_ns = 0
    sent = 0
    with tempfile.TemporaryDirectory() as state:
        monitor = Monitor(MonitorConfig(window_s=300, grace_s=5, state_dir=state, rules=[]))
        for r in range(a.rounds):
            for mode in (("off", "on") if r % 2 == 0 else ("on", "off")):
                if mode == "on":
                    core.taps["monitor"] = sample
                else:
                    core.taps.pop("monitor", None)
                t = time.process_time_ns()
                for start in range(0, len(users), a.per_message):
                    serve_calls(core, users[start:start + a.per_message])
                    if mode == "on":
                        f0 = time.process_time_ns()
                        tap.flush()  # columns and profiles, on the tap's thread in service
                        f1 = time.process_time_ns()
                        flush_ns += f1 - f0
                spent[mode].append((time.process_time_ns() - t) / len(users) / 1e3)
                for message in messages:  # outside the timed loop: the handle's serialization, the monitor's ingest
                    s0 = time.process_time_ns()
                    pickle.dumps(message, protocol=5)
                    s1 = time.process_time_ns()
                    monitor.ingest(message)
                    ingest_ns += time.process_time_ns() - s1
                    serialize_ns += s1 - s0
                sent += len(messages)
                messages.clear()
        tap.stop()
    on_requests = a.rounds * len(users)
    # The tap's share of a request, in a tight loop over one scored request (timing each call would cost more
    # than the tap): the sampling draw, and for the sampled share the row and the buffer append.
    scored = core.prepare_many([RecommendCall(int(users[0]), 10)])
    for batch in core.ranking_batches(scored):
        batch.set_scores(core.ranking.score(batch.ranker, batch.features))
    loop_tap = MonitorTap(a.rate, lambda message: None, send_every_s=1e9, max_rows=10**9)
    first = scored[0]
    assert isinstance(first, Prepared), first
    t = time.process_time_ns()
    for _ in range(50_000):
        if loop_tap.sampled():
            loop_tap.add(first.monitor_row(view))
    tap_us = (time.process_time_ns() - t) / 50_000 / 1e3
    loop_tap.stop()
    off, on = float(np.median(spent["off"])), float(np.median(spent["on"]))
    pairs = [b / a_ for a_, b in zip(spent["off"], spent["on"], strict=True)]
    replica = {"request_path_us": round(tap_us, 2),
               "flush_and_profiles_us": round(flush_ns / on_requests / 1e3, 2),
               "serialize_us": round(serialize_ns / on_requests / 1e3, 2)}
    ingest_us = ingest_ns / on_requests / 1e3
    added = sum(replica.values()) + ingest_us
    print(json.dumps({
        "bench": "monitor_tap_cpu", "rate": a.rate, "requests_per_message": a.per_message, "messages": sent,
        "rows_per_message": round(tap.sent_rows / max(sent, 1), 1),
        "cpu_us_per_request": {"off": round(off, 1), "on_including_flush": round(on, 1),
                               "pair_ratios": [round(x, 3) for x in pairs]},  # differential: noisy, for reference
        "replica_us_per_request": replica,
        "flush_ms_per_message": round(flush_ns / max(sent, 1) / 1e6, 3),
        "monitor_ingest_us_per_request": round(ingest_us, 2),
        "monitor_ingest_ms_per_message": round(ingest_ns / max(sent, 1) / 1e6, 3),
        "added_us_per_request": round(added, 2),
        "added_vs_core_off": round(added / off, 4),  # timed where it runs: the share of the core's own CPU
    }))


if __name__ == "__main__":
    main()
