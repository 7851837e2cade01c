"""The monitor's series on Ray's real Prometheus endpoint as model versions churn: the monitor deployment's class
runs in a Ray worker (the process a Serve replica is), windows of versions v1..v5 are fed with ``max_versions=2``,
and ``GET /metrics`` shows only the last two versions, at most ``max_versions × features × tests`` drift series,
and keeps showing them for longer than Ray's gauge TTL (the monitor re-sets them; Ray forgets what is not)."""

from __future__ import annotations

import re
import time
import urllib.request
import uuid
from typing import Any

import numpy as np
import pytest

from tests.conftest import MEASURED

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MAX_VERSIONS = 2
FEATURES = ("age", "income", "region")  # two numeric (KS and PSI), one categorical (χ²)
TESTS = ("ks", "psi", "chi2")
BOUND = MAX_VERSIONS * len(FEATURES) * len(TESTS)
MONITOR_GAUGES = ("rayml_drift_score", "rayml_drift_p_value", "rayml_data_quality", "rayml_monitor_rows")
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def _report_interval_s() -> float:
    import ray

    return max(ray._config.metrics_report_interval_ms(), 1000) / 1000  # the emitter's floor (Ray's stats.h)


@pytest.fixture(scope="module")
def monitor(ray_session, tmp_path_factory):
    """(actor, version prefix unique to this run, metrics URL)."""
    import ray

    from rayml.serving.monitor_app import MonitorDeployment

    node = ray._private.worker.global_worker.node
    port = node.metrics_export_port if node is not None else None
    assert port, "the shared Ray has no metrics export port"
    args = {"monitor": {"window_s": 1.0, "grace_s": 0.0, "baseline_windows": 1, "min_rows": 50, "reservoir": 500,
                        "state_dir": str(tmp_path_factory.mktemp("monitor-cardinality"))},
            "tick_s": 0.2, "max_versions": MAX_VERSIONS}
    remote: Any = ray.remote(num_cpus=0)(MonitorDeployment)
    actor = remote.remote(args)
    ray.get(actor.status.remote(), timeout=60)
    yield actor, f"card{uuid.uuid4().hex[:6]}", f"http://127.0.0.1:{port}/metrics"
    ray.kill(actor)


def _feed(actor, prefix: str, versions: range, base: float) -> None:
    """For each version: a baseline window, then a tested one (event time in the past, so both close now)."""
    import ray

    rng = np.random.default_rng(7)
    n = 200
    for k in versions:
        for w in range(2):
            start = base + 2 * k + w
            columns = {"ts": (start + rng.random(n) * 0.99).tolist(), "version": [f"{prefix}:v{k}"] * n,
                       "age": rng.normal(40, 10, n).tolist(), "income": rng.lognormal(3, 0.5, n).tolist(),
                       "region": rng.choice(["n", "s", "e", "w"], n).tolist()}
            assert ray.get(actor.ingest.remote({"replica": "it", "columns": columns}), timeout=30) == n


def _scrape(url: str, prefix: str) -> dict[str, set[tuple[tuple[str, str], ...]]]:
    """The monitor's series of this run on the endpoint: gauge → {rayml's tags}, Ray's process labels left out."""
    body = urllib.request.urlopen(url, timeout=10).read().decode()
    out: dict[str, set[tuple[tuple[str, str], ...]]] = {name: set() for name in MONITOR_GAUGES}
    for line in body.splitlines():
        for name in MONITOR_GAUGES:
            if line.startswith(f"ray_{name}{{"):
                labels = dict(LABEL.findall(line[:line.rindex("}")]))
                if labels.get("version", "").startswith(f"{prefix}:"):
                    keep = ("version", "feature", "test", "check")
                    out[name].add(tuple(sorted((k, v) for k, v in labels.items() if k in keep)))
    return out


def _versions(series: dict[str, set[tuple[tuple[str, str], ...]]]) -> set[str]:
    return {dict(tags)["version"] for tagged in series.values() for tags in tagged}


def _wait_for(url: str, prefix: str, expected: set[str], timeout_s: float) -> dict:
    deadline = time.monotonic() + timeout_s
    series = _scrape(url, prefix)
    while _versions(series) != expected and time.monotonic() < deadline:
        time.sleep(1)
        series = _scrape(url, prefix)
    assert _versions(series) == expected, (sorted(_versions(series)), sorted(expected))
    return series


def test_churned_versions_leave_the_endpoint_and_the_series_stay_within_the_bound(monitor):
    actor, prefix, url = monitor
    import ray

    interval = _report_interval_s()
    ttl = 2 * interval  # the agent keeps a gauge's tag set this long after its last report
    base = float(int(time.time()) - 60)
    names = {k: f"{prefix}:v{k}" for k in range(1, 6)}

    _feed(actor, prefix, range(1, 3), base)
    first = _wait_for(url, prefix, {names[1], names[2]}, timeout_s=3 * interval + 10)
    assert len(first["rayml_drift_score"]) == 2 * 5  # per version: age, income × (ks, psi), region × chi2

    _feed(actor, prefix, range(3, 6), base)
    fed = time.monotonic()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        status = ray.get(actor.status.remote(), timeout=30)
        if status["exported"]["versions"] == [names[5], names[4]]:
            break
        time.sleep(0.2)
    assert status["exported"]["versions"] == [names[5], names[4]], status["exported"]
    series = _wait_for(url, prefix, {names[4], names[5]}, timeout_s=ttl + 2 * interval + 15)
    gone_after = time.monotonic() - fed
    MEASURED["monitor: evicted version's series gone from Ray's /metrics after"] = (
        f"{gone_after:.1f}s (report interval {interval:.0f}s, gauge TTL {ttl:.0f}s)")

    # longer than the TTL: the kept series are re-set by the monitor, so they stay; the dropped ones never return
    watch_until = time.monotonic() + ttl + interval + 2
    scrapes = 0
    while time.monotonic() < watch_until:
        series = _scrape(url, prefix)
        scrapes += 1
        assert _versions(series) == {names[4], names[5]}, sorted(_versions(series))
        drift = series["rayml_drift_score"]
        assert len(drift) == 2 * 5 <= BOUND
        assert {dict(t)["feature"] for t in drift} == set(FEATURES)
        assert {dict(t)["test"] for t in drift} <= set(TESTS)
        assert len(series["rayml_drift_p_value"]) == 2 * 3  # PSI has no p-value
        assert 0 < len(series["rayml_data_quality"]) <= MAX_VERSIONS * len(FEATURES) * 4
        assert len(series["rayml_monitor_rows"]) == MAX_VERSIONS
        time.sleep(2)
    assert scrapes >= 5
    status = ray.get(actor.status.remote(), timeout=30)
    MEASURED["monitor: one metrics refresh"] = (
        f"{status['exported']['series']} series in {1000 * status['exported']['refresh_s']:.2f} ms")
