"""The rehearsal's serving half: the shipped Serve config laid over two nodes, where its replicas run, and a
prober that counts answers while a node is lost.

The config is the shipped one (``serve_apps/recommender.yaml``) with only what a two-node rehearsal needs changed:
``proxy_location: HeadOnly`` (one HAProxy, on the head, owns the HTTP port), this run's free ports, and the
recommender at a fixed ``num_replicas`` with ``max_replicas_per_node: 1``, so Serve places one replica per node.
"""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

RECOMMENDER = "serve_apps.recommender:app_builder"
CONTROLLER = "serve_apps.rollout_controller:app_builder"


def two_node_config(shipped: dict[str, Any], http_port: int, grpc_port: int, replicas: int, replica_cpus: float,
                    head_marker: str) -> dict[str, Any]:
    """``shipped`` with one HTTP entry on the head and the recommender spread one replica a node.

    Raises:
        ValueError: ``shipped`` has no recommender application.
    """
    from ray.serve.schema import ServeDeploySchema

    config = yaml.safe_load(yaml.safe_dump(shipped))  # a deep copy
    config["proxy_location"] = "HeadOnly"
    config["http_options"] = config.get("http_options", {}) | {"host": "127.0.0.1", "port": http_port}
    config["grpc_options"] = config.get("grpc_options", {}) | {"port": grpc_port}
    apps = {app["import_path"]: app for app in config["applications"]}
    if RECOMMENDER not in apps:
        raise ValueError(f"the serve config has no application with import_path {RECOMMENDER}")
    for deployment in apps[RECOMMENDER].get("deployments", []):
        deployment.pop("autoscaling_config", None)  # a fixed count: one replica on each node
        deployment |= {"num_replicas": replicas, "max_replicas_per_node": 1}
        deployment["ray_actor_options"] = deployment.get("ray_actor_options", {}) | {"num_cpus": replica_cpus}
    for deployment in apps.get(CONTROLLER, {}).get("deployments", []):  # one leader, on the node that stays
        options = deployment.setdefault("ray_actor_options", {})
        options["resources"] = options.get("resources", {}) | {head_marker: 0.01}
    ServeDeploySchema.model_validate(config)
    return config


def replica_nodes(dashboard: str, app: str = "recommender") -> list[str]:
    """Node ids of ``app``'s live replicas (Serve's replica actors, from Ray's state API)."""
    from ray.util.state import list_actors

    actors = list_actors(address=dashboard, filters=[("state", "=", "ALIVE")], limit=1000,
                         raise_on_missing_output=False)
    return sorted(str(a.node_id) for a in actors if str(a.class_name).startswith(f"ServeReplica:{app}:"))


def recommend(port: int, token: str | None, user_id: int = 3, timeout_s: float = 5) -> int:
    """POST /recommend once; the HTTP status (0 when nothing answered)."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/recommend", data=f'{{"user_id": {user_id}, "k": 4}}'.encode(), method="POST",
        headers={"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def wait_serving(port: int, token: str | None, dashboard: str, nodes: set[str], timeout_s: float) -> list[str]:
    """Until /recommend answers 200 and the live replicas sit exactly on ``nodes`` (Ray node ids), one each.

    Returns the replicas' node ids.
    """
    deadline = time.monotonic() + timeout_s
    placed: list[str] = []
    while time.monotonic() < deadline:
        if recommend(port, token) == 200:
            placed = replica_nodes(dashboard)
            if sorted(placed) == sorted(nodes):
                return placed
        time.sleep(1)
    raise RuntimeError(f"replicas on {sorted(nodes)} expected within {timeout_s:.0f} s; they are on {placed}")


class Prober:
    """A thread that POSTs /recommend every ``period_s`` and counts the answers by status (0: no answer)."""

    def __init__(self, port: int, token: str | None, period_s: float = 0.2) -> None:
        self.port, self.token, self.period_s = port, token, period_s
        self.counts: Counter[int] = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rehearsal-prober", daemon=True)

    def __enter__(self) -> Prober:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        user = 0
        while not self._stop.is_set():
            self.counts[recommend(self.port, self.token, user % 100, timeout_s=10)] += 1
            user += 1
            self._stop.wait(self.period_s)


def read_token(tokens_file: Path) -> str | None:
    """The first ``read`` (else ``admin``) token of a tokens file, None when there is none."""
    tokens = yaml.safe_load(tokens_file.read_text()) or {}
    for role in ("read", "admin"):
        if tokens.get(role):
            return str(tokens[role][0])
    return None
