"""The rollout's HTTP harness: simulated users who click what the world says they like, on the real Serve app.

Each simulated visit asks ``POST /recommend`` for a user (repeat visits: users drawn with heterogeneous rates),
then clicks each served item with the world's *true* click probability for that (user, item)
(:meth:`rayml.world.World.relevance`) and sends the clicks back on ``POST /events`` with the answer's
``request_id``. So a worse model really gets fewer clicks, and the canary's gates see it.

Used by ``tests/integration/test_rollout_canary.py`` (bad candidate rolled back, good one promoted) and as a
benchmark: ``python benchmarks/rollout_http.py --url http://127.0.0.1:8000 --token … --seconds 30`` prints the
request rate it reached.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import requests

from rayml.registry import ModelRegistry
from rayml.world import World


def register_inverted(registry: ModelRegistry, ref: str, model: str = "ranker") -> int:
    """A copy of ``ref`` whose ONNX scores are negated (it ranks the least relevant first): a truly bad
    candidate. Only the fp32 artifact is kept, so serve it with ``precision: fp32``."""
    import onnx
    from onnx import helper

    source = registry.get(model, ref)
    graph_model = onnx.load(str(source.file("model.onnx")))
    graph = graph_model.graph
    out = graph.output[0]
    raw = f"{out.name}_raw"
    for node in graph.node:
        node.output[:] = [raw if o == out.name else o for o in node.output]
    graph.node.append(helper.make_node("Neg", [raw], [out.name], name="invert"))
    path = Path(tempfile.mkdtemp()) / "model.onnx"
    onnx.save(graph_model, str(path))
    meta = {k: v for k, v in source.metadata.items()
            if k not in ("name", "version", "files", "created_at", "writer", "int8")}
    files = {name: source.file(name) for name in source.metadata["files"] if "int8" not in name}
    files["model.onnx"] = path
    version = registry.register(model, files, meta | {"note": f"v{source.version} inverted (a bad candidate)"})
    path.unlink()
    return version.version


@dataclass
class Traffic:
    requests: Counter = field(default_factory=Counter)  # (arm, model_version) → answers
    clicks: Counter = field(default_factory=Counter)
    impressions: Counter = field(default_factory=Counter)
    statuses: Counter = field(default_factory=Counter)
    sent: int = 0

    def ctr(self, version: str) -> float:
        imps = sum(v for (a, m), v in self.impressions.items() if m == version)
        return sum(v for (a, m), v in self.clicks.items() if m == version) / max(imps, 1)


def drive(url: str, token: str, world: World, stop: threading.Event, traffic: Traffic, seed: int = 0,
          k: int = 10, rate_shape: float = 1.0) -> None:
    """One client loop until ``stop``: visit, click by the world's truth, report clicks."""
    rng = np.random.default_rng(seed)
    rates = rng.gamma(rate_shape, 1.0, world.n_users)
    p = rates / rates.sum()
    headers = {"Authorization": f"Bearer {token}"}
    with requests.Session() as session:
        while not stop.is_set():
            user = int(rng.choice(world.n_users, p=p))
            try:
                response = session.post(f"{url}/recommend", json={"user_id": user, "k": k}, headers=headers,
                                        timeout=10)
            except requests.RequestException:
                traffic.statuses["error"] += 1
                continue
            traffic.statuses[response.status_code] += 1
            traffic.sent += 1
            if response.status_code != 200:
                continue
            body = response.json()
            items = np.asarray(body["items"], np.int64)
            key = (body["arm"], body["model_version"])
            traffic.requests[key] += 1
            traffic.impressions[key] += len(items)
            if not len(items):
                continue
            clicked = rng.random(len(items)) < world.relevance(np.array([user]), items)[0]
            traffic.clicks[key] += int(clicked.sum())
            if clicked.any():
                events = [{"user_id": user, "item_id": int(i), "clicked": True, "request_id": body["request_id"]}
                          for i in items[clicked]]
                session.post(f"{url}/events", json={"events": events}, headers=headers, timeout=10)


def run(url: str, token: str, world: World, clients: int, seconds: float) -> tuple[Traffic, float]:
    traffic, stop = Traffic(), threading.Event()
    threads = [threading.Thread(target=drive, args=(url, token, world, stop, traffic, i), daemon=True)
               for i in range(clients)]
    started = time.monotonic()
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join(timeout=15)
    return traffic, traffic.sent / (time.monotonic() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--token", required=True, help="A token with the ingest role (clicks) and read.")
    parser.add_argument("--world", default=".rayml/demo/world")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=30)
    a = parser.parse_args()
    traffic, rate = run(a.url, a.token, World(a.world), a.clients, a.seconds)
    print(json.dumps({"bench": "rollout_http", "clients": a.clients, "seconds": a.seconds,
                      "requests_per_s": round(rate, 1), "statuses": {str(k): v for k, v in traffic.statuses.items()},
                      "arms": {f"{arm} {v}": n for (arm, v), n in traffic.requests.items()}}))


if __name__ == "__main__":
    main()
