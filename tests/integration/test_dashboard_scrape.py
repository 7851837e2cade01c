"""The Grafana dashboard and the Prometheus rules against a real scrape: real traffic through the serving apps
(recommend, clicks on /events, OIP infer, 5xx answers while an app's Redis is down) and the online monitor, then
Ray's own ``/metrics``. Every series a panel, a template variable or a rule reads is there (recording-rule outputs
come from the rules file, so their inputs are checked instead), with every label the query groups by, joins on or
prints, and every selector finds at least one series (``test="psi"``, ``source="delayed", metric="auc"``, ...).
METRICS.md's table is checked the same way: each exported series is scraped with its tag keys."""

from __future__ import annotations

import functools
import shutil
import threading
import time
import urllib.request
from collections import defaultdict

import numpy as np
import pyarrow.parquet as pq
import pytest
import requests
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.clients import run_clients
from tests.conftest import MEASURED, RedisServer
from tests.integration.conftest import write_feature_repo
from tests.integration.test_monitoring_serving import WINDOW_S, monitored  # noqa: F401 (a fixture)
from tests.promql import (
    contract_series,
    dashboard_queries,
    recorded_series,
    rule_queries,
    scraped_names,
    selectors,
)

pytestmark = pytest.mark.integration
ERRORS = 5  # 503 answers the Redis-backed app gives while its Redis is down
Scrape = dict[str, list[tuple[dict[str, str], float]]]  # series name → (labels, value) of each sample


def scrape() -> Scrape:
    """rayml's series on the shared Ray's metrics export port (Ray's per-node metrics agent)."""
    import ray

    node = ray._private.worker.global_worker.node
    assert node is not None and node.metrics_export_port, "the shared Ray has no metrics export port"
    body = urllib.request.urlopen(f"http://127.0.0.1:{node.metrics_export_port}/metrics", timeout=10).read().decode()
    out: Scrape = defaultdict(list)
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            if sample.name.startswith("ray_rayml_"):
                out[sample.name].append((dict(sample.labels), float(sample.value)))
    return out


def label_names(series: Scrape, name: str) -> set[str]:
    return {label for labels, _ in series.get(name, []) for label in labels}


def errors_since(before: Scrape, after: Scrape, model_version: str) -> float:
    """Errors counted between two scrapes, per series (a process's series that left the endpoint counts nothing)."""
    def counts(series: Scrape) -> dict[tuple[tuple[str, str], ...], float]:
        return {tuple(sorted(labels.items())): value for labels, value in series.get("ray_rayml_arm_errors_total", [])
                if labels.get("model_version") == model_version}

    earlier = counts(before)
    return sum(value - earlier.get(key, 0.0) for key, value in counts(after).items())


@pytest.fixture(scope="module")
def redis_app(serve_url, recommender_args, tiny_world, feature_repo, candidates, tmp_path_factory):
    """A recommender whose features and candidates are in a Redis of its own: stopping that Redis makes /recommend
    answer 503 (no candidates without the store), the 5xx the error panels and RaymlErrorRateHigh count.
    Yields (url, that Redis)."""
    from ray import serve

    from rayml.batch.candidate_store import load_candidate_store_job, materialize_candidates
    from rayml.features.redis_store import RedisOnlineStore
    from rayml.serving.app import Recommender
    from rayml.serving.config import load_serving_repo

    if shutil.which("redis-server") is None:
        raise RuntimeError("redis-server is not installed: run `make redis-server` (make test does)")
    root = tmp_path_factory.mktemp("scrape-redis")
    redis = RedisServer(root)
    redis.start()
    repo = write_feature_repo(root / "features.yaml", tiny_world.path,
                              {"type": "redis", "port": redis.port, "timeout_s": 0.2})
    _, state_dir = feature_repo
    store = RedisOnlineStore(port=redis.port)
    store.write("user_profile", pq.read_table(state_dir / "user_profile.parquet"), key="user_id")
    store.write("item_catalog", pq.read_table(state_dir / "item_catalog.parquet"), key="item_id")
    config, _ = candidates
    job = root / "job.yaml"
    job.write_text(yaml.safe_dump({"candidates": config.output, "features": str(repo), "batch_rows": 700}))
    materialize_candidates(*load_candidate_store_job(job))
    args = recommender_args.model_copy(update={"features": str(repo), "candidates_store": "online", "candidates": None,
                                               "event_log": None, "feature_log": None})
    serve.run(Recommender.options(ray_actor_options={"num_cpus": 0.25}).bind(
        args.model_dump(), load_serving_repo(args).model_dump()), name="scrape-redis", route_prefix="/scrape-redis")
    try:
        yield f"{serve_url}/scrape-redis", redis
    finally:
        serve.delete("scrape-redis")
        redis.stop()


def drive(monitored_url: str, serve_url: str, users: np.ndarray, seconds: float) -> dict[str, int]:
    """Three clients on the monitored app (recommend, a click on 30 % of the answers with their request_id) and
    one on OIP infer of the default app, for ``seconds``."""
    sent: dict[str, int] = defaultdict(int)

    def recommend(stop: threading.Event, seed: int) -> None:
        rng = np.random.default_rng(seed)
        with requests.Session() as session:
            while not stop.is_set():
                user = int(rng.choice(users))
                r = session.post(f"{monitored_url}/recommend", json={"user_id": user, "k": 5}, timeout=10)
                assert r.status_code == 200, f"/recommend {r.status_code}: {r.text[:200]}"
                sent["recommend"] += 1
                if rng.random() < 0.3:
                    click = {"user_id": user, "item_id": r.json()["items"][0], "clicked": True,
                             "request_id": r.json()["request_id"]}
                    e = session.post(f"{monitored_url}/events", json={"events": [click]}, timeout=10)
                    assert e.status_code == 200, f"/events {e.status_code}: {e.text[:200]}"
                    sent["events"] += 1

    def infer(stop: threading.Event) -> None:
        width = requests.get(f"{serve_url}/v2/models/ranker", timeout=10).json()["inputs"][0]["shape"][1]
        x = np.random.default_rng(0).random((4, width)).astype(np.float32)
        body = {"inputs": [{"name": "features", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}
        with requests.Session() as session:
            while not stop.is_set():
                r = session.post(f"{serve_url}/v2/models/ranker/infer", json=body, timeout=10)
                assert r.status_code == 200, f"/v2/models/ranker/infer {r.status_code}: {r.text[:200]}"
                sent["infer"] += 1
                time.sleep(0.2)

    run_clients([*(functools.partial(recommend, seed=i) for i in range(3)), infer], seconds)
    return dict(sent)


def missing(series: Scrape) -> list[str]:
    """What the dashboard, the rules and METRICS.md ask of the scrape and it lacks; empty when everything is there."""
    recorded = set(recorded_series())
    problems = []
    for query in [*dashboard_queries(), *rule_queries()]:
        for name in sorted(scraped_names(query.expr)):
            if not series.get(name):
                problems.append(f"{query.where}: no series {name}")
                continue
            for label in sorted(query.labels - label_names(series, name)):
                problems.append(f"{query.where}: {name} has no label {label!r}")
        for name, matchers in selectors(query.expr):
            if name in recorded or not series.get(name):
                continue  # recorded: checked through its own rule; absent: reported above
            if not any(all(m.matches(labels) for m in matchers) for labels, _ in series[name]):
                wanted = ", ".join(f"{m.label}{m.op}{m.value!r}" for m in matchers)
                problems.append(f"{query.where}: no {name} series matches {{{wanted}}}")
    for metric, row in contract_series().items():
        for name in sorted(row.series):
            if not series.get(name):
                problems.append(f"METRICS.md {metric}: no series {name}")
                continue
            tags = row.tags | ({"le"} if name.endswith("_bucket") else set())
            for label in sorted(tags - label_names(series, name)):
                problems.append(f"METRICS.md {metric}: {name} has no label {label!r}")
    return problems


def test_every_series_and_label_the_dashboard_and_rules_read_is_on_rays_metrics_endpoint(
    monitored, redis_app, serve_url, tiny_world  # noqa: F811 (monitored: the imported fixture)
):
    started = time.monotonic()
    users = tiny_world.user_features_table()["user_id"].to_numpy()
    base, redis = redis_app
    first = requests.post(f"{base}/recommend", json={"user_id": 7, "k": 5}, timeout=10).json()
    assert first["candidates"] == "batch", first  # served from the Redis candidates view
    before = scrape()

    # The monitor: two baseline windows, then a tested one (drift, quality); clicks join as delayed labels.
    time.sleep(WINDOW_S - time.time() % WINDOW_S)
    sent = drive(monitored, serve_url, users, 3 * WINDOW_S + 1)
    assert sent["recommend"] > 150 and sent["events"] > 20 and sent["infer"] > 5, sent
    redis.stop()
    for user in range(ERRORS):
        down = requests.post(f"{base}/recommend", json={"user_id": user, "k": 5}, timeout=10)
        assert down.status_code == 503, (down.status_code, down.text)

    deadline = time.monotonic() + 60  # windows mature (2 s attribution), then Ray's agent exports
    series = scrape()
    problems = missing(series)
    while (problems or errors_since(before, series, first["model_version"]) < ERRORS) and time.monotonic() < deadline:
        time.sleep(1)
        series = scrape()
        problems = missing(series)
    assert problems == [], "\n".join(problems)
    # the check is not vacuous: a series or a label the scrape lacked would have been named
    no_errors = {name: samples for name, samples in series.items() if name != "ray_rayml_arm_errors_total"}
    assert "alert RaymlErrorRateHigh: no series ray_rayml_arm_errors_total" in missing(no_errors)
    no_arm = {**series, "ray_rayml_arm_requests_total": [
        ({k: v for k, v in labels.items() if k != "arm"}, value) for labels, value in series["ray_rayml_arm_requests_total"]]}
    assert "variable 'model_version': ray_rayml_arm_requests_total has no label 'arm'" not in missing(no_arm)
    assert "panel 'Request rate by arm / model version': ray_rayml_arm_requests_total has no label 'arm'" in missing(no_arm)
    no_psi = {**series, "ray_rayml_drift_score": [s for s in series["ray_rayml_drift_score"] if s[0]["test"] != "psi"]}
    assert "record rayml:drift_psi:max: no ray_rayml_drift_score series matches {test='psi'}" in missing(no_psi)
    assert errors_since(before, series, first["model_version"]) == ERRORS  # each 503 counted once
    MEASURED["dashboard/rules vs Ray's /metrics: every series present after"] = (
        f"{time.monotonic() - started:.1f}s ({sum(sent.values())} requests)")
