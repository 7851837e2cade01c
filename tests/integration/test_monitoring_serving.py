"""Monitoring through the real Serve app: 100 % sampling, small windows; the requests' users switch to an older
population (covariate drift in what is served), and the alert fires and the drift metric moves on Ray's
Prometheus endpoint. The clients click with the answers' ``request_id``, so the monitor joins delayed labels from
the outcome log and exports performance (delayed and estimated) and the model's freshness."""

from __future__ import annotations

import functools
import re
import threading
import time
import urllib.request

import numpy as np
import pytest
import requests

from tests.clients import run_clients

pytestmark = pytest.mark.integration
WINDOW_S = 4.0
DEPLOY: dict = {}  # the fixture's deploy(user_config), for the live-reconfigure test


@pytest.fixture(scope="module")
def monitored(serve_url, recommender_args, tmp_path_factory):
    from ray import serve

    from rayml.monitoring.alerts import AlertRule
    from rayml.serving.app import Recommender
    from rayml.serving.config import MonitoringServing, RolloutServing, load_serving_repo
    from rayml.serving.monitor_app import MonitorArgs, build_monitor

    state = tmp_path_factory.mktemp("monitor")
    outcomes = str(tmp_path_factory.mktemp("outcomes"))
    rules = [AlertRule(name="feature-drift", signal="drift.family", op=">=", threshold=1, k=2, n=3)]
    performance = {"outcomes": outcomes, "attribution_window_s": 2.0, "min_impressions": 20, "threshold": 0.2}
    serve.run(build_monitor(MonitorArgs(monitor={
        "window_s": WINDOW_S, "grace_s": 1.0, "baseline_windows": 2, "min_rows": 50, "reservoir": 2000,
        "rules": rules, "state_dir": str(state), "performance": performance}, tick_s=0.5,
        registry=recommender_args.registry)), name="it-monitor", route_prefix=None)
    args = recommender_args.model_copy(update={
        "event_log": None, "feature_log": None, "rollout": RolloutServing(outcomes=outcomes, flush_s=0.5),
        "monitoring": MonitoringServing(sample_rate=1.0, app="it-monitor", deployment="Monitor", send_every_s=0.5,
                                        outcome_sample=1.0)})
    def deploy(user_config: dict | None = None) -> None:
        options = {"ray_actor_options": {"num_cpus": 0.25}} | ({"user_config": user_config} if user_config else {})
        serve.run(Recommender.options(**options).bind(args.model_dump(), load_serving_repo(args).model_dump()),
                  name="monitored", route_prefix="/monitored")

    deploy()
    DEPLOY["deploy"] = deploy
    yield f"{serve_url}/monitored"
    serve.delete("monitored")
    serve.delete("it-monitor")


def _drive(url: str, users: np.ndarray, seconds: float) -> int:
    sent = [0]

    def loop(stop: threading.Event, seed: int) -> None:
        rng = np.random.default_rng(seed)
        with requests.Session() as session:
            while not stop.is_set():
                user = int(rng.choice(users))
                r = session.post(f"{url}/recommend", json={"user_id": user, "k": 5}, timeout=10)
                assert r.status_code == 200, r.text
                sent[0] += 1
                answer = r.json()
                if rng.random() < 0.3:  # a click on the top item, sent back with the answer's request_id
                    click = {"user_id": user, "item_id": answer["items"][0], "clicked": True,
                             "request_id": answer["request_id"]}
                    assert session.post(f"{url}/events", json={"events": [click]}, timeout=10).status_code == 200

    run_clients([functools.partial(loop, seed=i) for i in range(3)], seconds)
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
    # the replica's pre-aggregated profiles cover every row of the window; their quantiles see the older users
    assert status["status"]["profiles"]["merged"] > 0, status["status"]["profiles"]
    assert status["status"]["profiles"]["bad"] == status["status"]["profiles"]["unaligned"] == 0
    assert latest["profile_rows"] == latest["rows"], latest
    assert latest["profile"]["age"]["p50"] >= users["age"].quantile(0.7) - 1e-9, latest["profile"]["age"]
    assert latest["profile"]["age"]["missing_rate"] == 0.0
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


def test_delayed_labels_and_freshness_reach_the_metrics(monitored):
    """After the drive above: windows are mature (2 s attribution), so performance came from the joined clicks."""
    status = requests.get(f"{monitored}/admin/monitor", timeout=10).json()
    delayed = [r for r in status["results"] if r["kind"] == "performance" and r["status"] == "ok"]
    estimated = [r for r in status["results"] if r["kind"] == "estimated" and r["status"] == "ok"]
    assert delayed and estimated, [(r["kind"], r.get("status")) for r in status["results"]]
    ctr = delayed[-1]["metrics"]["ctr"]
    assert 0.01 < ctr < 0.2, delayed[-1]  # ~0.3 of the requests click 1 of 5 items
    version = delayed[-1]["version"]
    deadline = time.monotonic() + 40
    seen: dict[str, float | None] = {}
    while time.monotonic() < deadline:
        seen = {
            "delayed": _metric("rayml_model_performance", {"metric": "ctr", "source": "delayed", "version": version}),
            "estimated": _metric("rayml_model_performance", {"metric": "ctr", "source": "estimated"}),
            "age": _metric("rayml_model_age_seconds", {"version": version}),
        }
        if all(v is not None for v in seen.values()):
            break
        time.sleep(1)
    assert all(v is not None for v in seen.values()), seen
    assert seen["age"] is not None and seen["age"] > 0


def test_the_sample_rate_changes_live_through_user_config(monitored, tiny_world):
    """``user_config.monitor_sample_rate`` pauses and resumes sampling (``reconfigure``: a config whose only change
    is its user_config updates the running replicas)."""
    users = tiny_world.user_features_table()["user_id"].to_numpy()

    def tap() -> dict:
        return requests.get(f"{monitored}/admin/monitor", timeout=10).json()["tap"]

    DEPLOY["deploy"]({"monitor_sample_rate": 0.0})
    time.sleep(1.0)  # the tap's last buffered rows go out (send_every_s 0.5)
    paused = tap()["sent_rows"]
    assert _drive(monitored, users, 2.0) > 20
    time.sleep(1.5)
    assert tap()["sent_rows"] == paused
    DEPLOY["deploy"]({"monitor_sample_rate": 1.0})
    served = _drive(monitored, users, 2.0)
    time.sleep(1.5)
    assert tap()["sent_rows"] >= paused + served
