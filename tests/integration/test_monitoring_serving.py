"""Monitoring through the real Serve app: 100 % sampling, small windows; the requests' users switch to an older
population (covariate drift in what is served), and the alert fires and the drift metric moves on Ray's
Prometheus endpoint."""

from __future__ import annotations

import re
import threading
import time
import urllib.request

import numpy as np
import pytest
import requests

pytestmark = pytest.mark.integration
WINDOW_S = 4.0


@pytest.fixture(scope="module")
def monitored(serve_url, recommender_args, tmp_path_factory):
    from ray import serve

    from rayml.monitoring.alerts import AlertRule
    from rayml.serving.app import Recommender
    from rayml.serving.config import MonitoringServing, load_serving_repo
    from rayml.serving.monitor_app import MonitorArgs, build_monitor

    state = tmp_path_factory.mktemp("monitor")
    rules = [AlertRule(name="feature-drift", signal="drift.family", op=">=", threshold=1, k=2, n=3)]
    serve.run(build_monitor(MonitorArgs(monitor={
        "window_s": WINDOW_S, "grace_s": 1.0, "baseline_windows": 2, "min_rows": 50, "reservoir": 2000,
        "rules": rules, "state_dir": str(state)}, tick_s=0.5)), name="it-monitor", route_prefix=None)
    args = recommender_args.model_copy(update={
        "event_log": None, "feature_log": None,
        "monitoring": MonitoringServing(sample_rate=1.0, app="it-monitor", deployment="Monitor", send_every_s=0.5)})
    serve.run(Recommender.options(ray_actor_options={"num_cpus": 0.25}).bind(
        args.model_dump(), load_serving_repo(args).model_dump()), name="monitored", route_prefix="/monitored")
    yield f"{serve_url}/monitored"
    serve.delete("monitored")
    serve.delete("it-monitor")


def _drive(url: str, users: np.ndarray, seconds: float) -> int:
    stop, sent = threading.Event(), [0]

    def loop(seed: int) -> None:
        rng = np.random.default_rng(seed)
        with requests.Session() as session:
            while not stop.is_set():
                r = session.post(f"{url}/recommend", json={"user_id": int(rng.choice(users)), "k": 5}, timeout=10)
                assert r.status_code == 200, r.text
                sent[0] += 1

    threads = [threading.Thread(target=loop, args=(i,), daemon=True) for i in range(3)]
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join(timeout=15)
    return sent[0]


def _metric(name: str, labels: dict[str, str]) -> float | None:
    import ray

    port = ray._private.worker.global_worker.node.metrics_export_port
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    values = []
    for line in body.splitlines():
        if line.startswith(f"ray_{name}{{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            values.append(float(re.split(r"\s+", line.strip())[-1]))
    return max(values) if values else None


def test_covariate_drift_in_the_requests_fires_the_alert_and_moves_the_metric(monitored, tiny_world):
    users = tiny_world.user_features_table().to_pandas()
    everyone = users["user_id"].to_numpy()
    older = users.loc[users["age"] >= users["age"].quantile(0.7), "user_id"].to_numpy()
    time.sleep(WINDOW_S - time.time() % WINDOW_S)  # start at a window boundary
    assert _drive(monitored, everyone, 3 * WINDOW_S + 1) > 150  # two baseline windows, then a tested one
    status = requests.get(f"{monitored}/admin/monitor", timeout=10).json()
    assert status["tap"]["sent_rows"] > 0 and status["status"]["received"] > 0, status
    quiet = status["status"]["firing"]["feature-drift"]
    assert quiet == 0, status
    _drive(monitored, older, 3 * WINDOW_S)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        status = requests.get(f"{monitored}/admin/monitor", timeout=10).json()
        if status["status"]["firing"]["feature-drift"]:
            break
        time.sleep(0.5)
    assert status["status"]["firing"]["feature-drift"] == 1, status
    latest = [r for r in status["results"] if r["kind"] == "tested"][-1]
    drifted = {f["feature"] for f in latest["drift"]["features"] if f["drifted"]}
    assert "age" in drifted, latest["drift"]
    version = latest["version"]
    deadline = time.monotonic() + 40  # Ray's metrics agent exports every few seconds
    firing = score = None
    while time.monotonic() < deadline:
        firing = _metric("rayml_alerts_firing", {"rule": "feature-drift"})
        score = _metric("rayml_drift_score", {"feature": "age", "test": "ks", "version": version})
        if firing == 1 and score is not None and score > 0.2:
            break
        time.sleep(1)
    assert firing == 1 and score is not None and score > 0.2, (firing, score)
