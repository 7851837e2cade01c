"""The Grafana dashboard and the Prometheus rules: valid, and using only the metric names of the contract
(cluster/grafana/METRICS.md); `promtool check rules` and a `promtool test rules` run of the alert logic."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.promql import (
    DASHBOARD,
    RULES,
    Matcher,
    contract_series,
    dashboard_panels,
    grouping_labels,
    metric_names,
    rules,
    selectors,
    template_labels,
)

pytestmark = pytest.mark.unit

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None,
    reason="promtool is not on PATH (apt-get install -y prometheus) — rule checks skipped",
)

# The ray.util.metrics names of the contract, and what each must be on the dashboard.
CONTRACT = {
    "rayml_arm_requests": "counter",
    "rayml_arm_errors": "counter",
    "rayml_arm_latency_ms": "histogram",
    "rayml_drift_score": "gauge",
    "rayml_drift_p_value": "gauge",
    "rayml_data_quality": "gauge",
    "rayml_model_performance": "gauge",
    "rayml_model_age_seconds": "gauge",
    "rayml_training_data_age_seconds": "gauge",
    "rayml_alerts_firing": "gauge",
    "rayml_monitor_rows": "gauge",
}


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def test_expression_parser() -> None:
    assert metric_names(
        'histogram_quantile(0.99, sum by (le, arm) (rate(ray_rayml_arm_latency_ms_bucket{arm=~"$arm"}'
        "[$__rate_interval])))"
    ) == {"ray_rayml_arm_latency_ms_bucket"}
    assert metric_names("(a:b:c offset 7d - x_total) / a:b:c offset 7d > bool 1e-3") == {
        "a:b:c",
        "x_total",
    }
    assert metric_names("count_over_time((m > 0.2)[4h:1h]) >= 3 and on (f) n") == {"m", "n"}


def test_selector_and_label_parsers() -> None:
    expr = ('max by (version, check) (q{version=~"$version", check=~".*_rate"}) '
            'and on (version) p{source="delayed", metric!="a}b"}')
    (q, q_matchers), (p, p_matchers) = selectors(expr)
    assert (q, p) == ("q", "p")
    assert p_matchers == (Matcher("source", "=", "delayed"), Matcher("metric", "!=", "a}b"))
    assert grouping_labels(expr) == {"version", "check"}
    assert template_labels("{{arm}} {{ model_version }} and {{ $labels.rule }}, $labels.feature") == {
        "arm", "model_version", "rule", "feature"}
    version, rate = q_matchers
    assert version.matches({"version": "7"}) and not version.matches({"feature": "x"})  # a variable: any value
    assert rate.matches({"check": "missing_rate"}) and not rate.matches({"check": "cardinality"})
    assert p_matchers[1].matches({"metric": "auc"}) and not p_matchers[1].matches({"metric": "a}b"})


def test_metrics_md_lists_the_contract_with_ray_names() -> None:
    table = contract_series()
    assert set(table) == set(CONTRACT)
    for name, kind in CONTRACT.items():
        declared, series, _ = table[name]
        assert declared.startswith(kind), name
        if kind == "counter":
            assert series == {f"ray_{name}_total"}
        elif kind == "histogram":
            assert series == {f"ray_{name}_bucket", f"ray_{name}_sum", f"ray_{name}_count"}
        else:
            assert series == {f"ray_{name}"}


def test_dashboard_is_importable(dashboard: dict[str, Any]) -> None:
    assert dashboard["schemaVersion"] >= 38
    assert dashboard["uid"] and dashboard["title"]
    inputs = {i["name"]: i for i in dashboard["__inputs"]}
    assert (
        inputs["DS_PROMETHEUS"]["type"] == "datasource"
        and inputs["DS_PROMETHEUS"]["pluginId"] == "prometheus"
    )
    ids = [p["id"] for p in dashboard_panels(dashboard)]
    assert len(ids) == len(set(ids))
    for p in dashboard_panels(dashboard):
        if p["type"] == "row":
            continue
        assert p["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}, p["title"]
        assert p["targets"], p["title"]
        for t in p["targets"]:
            assert t["datasource"]["uid"] == "${DS_PROMETHEUS}"
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24, p["title"]


def test_dashboard_uses_only_contract_metrics(dashboard: dict[str, Any]) -> None:
    allowed = set().union(*(row.series for row in contract_series().values()))
    used: set[str] = set()
    for p in dashboard_panels(dashboard):
        for t in p.get("targets", []):
            names = metric_names(t["expr"])
            assert names, (p["title"], t["expr"])
            assert names <= allowed, (p["title"], names - allowed)
            used |= names
    for var in dashboard["templating"]["list"]:
        m = re.match(r"label_values\((\w+),", var["query"]["query"])
        assert m and m.group(1) in allowed, var["name"]
    # Every metric of the contract has a panel.
    for name, (_, series, _) in contract_series().items():
        assert used & series, f"no panel shows {name}"
    assert any(
        "histogram_quantile(0.99" in t["expr"]
        for p in dashboard_panels(dashboard)
        for t in p.get("targets", [])
    )


def test_rules_use_only_contract_metrics_and_recorded_series() -> None:
    all_rules = rules()
    recorded = {r["record"] for r in all_rules if "record" in r}
    allowed = set().union(*(row.series for row in contract_series().values())) | recorded
    for r in all_rules:
        names = metric_names(r["expr"])
        assert names and names <= allowed, (r.get("alert") or r.get("record"), names - allowed)
    alerts = {r["alert"] for r in all_rules if "alert" in r}
    assert {
        "RaymlFeatureDriftPSI", "RaymlAUCDrop7d", "RaymlLatencyP99OverSLO", "RaymlErrorRateHigh",
        "RaymlModelStale", "RaymlTrainingDataStale", "RaymlMonitorAlertFiring",
    } <= alerts  # fmt: skip


@needs_promtool
def test_promtool_check_rules() -> None:
    assert PROMTOOL is not None
    proc = subprocess.run(
        [PROMTOOL, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


PROMTOOL_TESTS = """
rule_files: [{rules}]
evaluation_interval: 5m
tests:
  # PSI per 5-minute window. hot: 0.1 0.3 0.1 0.3 0.3 → 3 of the last 4 above 0.2 → fires.
  # warm: 0.3 0.3 0.1 0.1 0.3 → 2 of the last 4 → quiet. Two worker series per feature: max is taken.
  - interval: 1m
    input_series:
      - series: 'ray_rayml_drift_score{{test="psi",feature="hot",version="7",WorkerId="a"}}'
        values: '0.1x4 0.3x4 0.1x4 0.3x4 0.3x4'
      - series: 'ray_rayml_drift_score{{test="psi",feature="hot",version="7",WorkerId="b"}}'
        values: '0x24'
      - series: 'ray_rayml_drift_score{{test="psi",feature="warm",version="7",WorkerId="a"}}'
        values: '0.3x4 0.3x4 0.1x4 0.1x4 0.3x4'
      - series: 'ray_rayml_drift_score{{test="ks",feature="warm",version="7",WorkerId="a"}}'
        values: '0.9x24'
    alert_rule_test:
      - eval_time: 20m
        alertname: RaymlFeatureDriftPSI
        exp_alerts:
          - exp_labels: {{severity: ticket, version: "7", feature: hot}}
            exp_annotations:
              summary: "PSI > 0.2 on hot in 3 of the last 4 windows (model 7)"
              description: 'ray_rayml_drift_score{{test="psi"}} above 0.2 in at least 3 of the last 4 monitor windows (5 minutes each).'
      - eval_time: 15m
        alertname: RaymlFeatureDriftPSI
        exp_alerts: []
  # Delayed AUC: version 7 drops 0.80 → 0.78 (2.5 %) after day 7, version 8 drops 1 %.
  # (Sampled every 5 minutes like the rule evaluation, so the 5-minute lookback always finds a sample.)
  - interval: 5m
    input_series:
      - series: 'ray_rayml_model_performance{{source="delayed",metric="auc",version="7"}}'
        values: '0.8x2015 0.78x300'
      - series: 'ray_rayml_model_performance{{source="delayed",metric="auc",version="8"}}'
        values: '0.8x2015 0.792x300'
      - series: 'ray_rayml_model_performance{{source="estimated",metric="auc",version="8"}}'
        values: '0.8x2015 0.5x300'
    alert_rule_test:
      - eval_time: 8d
        alertname: RaymlAUCDrop7d
        exp_alerts:
          - exp_labels: {{severity: ticket, version: "7"}}
            exp_annotations:
              summary: "AUC of model 7 fell 2.5% in 7 days"
              description: 'ray_rayml_model_performance{{source="delayed",metric="auc"}} vs offset 7d: more than a 2 % relative drop.'
  # Serving: canary 5 % errors at 10 req/min → fires; production 0 errors. p99 ~ 150 ms on the canary.
  - interval: 1m
    input_series:
      - series: 'ray_rayml_arm_requests_total{{arm="canary",model_version="8"}}'
        values: '0+600x30'
      - series: 'ray_rayml_arm_errors_total{{arm="canary",model_version="8"}}'
        values: '0+30x30'
      - series: 'ray_rayml_arm_requests_total{{arm="production",model_version="7"}}'
        values: '0+600x30'
      - series: 'ray_rayml_arm_errors_total{{arm="production",model_version="7"}}'
        values: '0x30'
      - series: 'ray_rayml_arm_latency_ms_bucket{{arm="canary",model_version="8",le="50.0"}}'
        values: '0+100x30'
      - series: 'ray_rayml_arm_latency_ms_bucket{{arm="canary",model_version="8",le="100.0"}}'
        values: '0+300x30'
      - series: 'ray_rayml_arm_latency_ms_bucket{{arm="canary",model_version="8",le="200.0"}}'
        values: '0+600x30'
      - series: 'ray_rayml_arm_latency_ms_bucket{{arm="canary",model_version="8",le="+Inf"}}'
        values: '0+600x30'
      - series: 'ray_rayml_arm_latency_ms_bucket{{arm="production",model_version="7",le="50.0"}}'
        values: '0+590x30'
      - series: 'ray_rayml_arm_latency_ms_bucket{{arm="production",model_version="7",le="100.0"}}'
        values: '0+600x30'
      - series: 'ray_rayml_arm_latency_ms_bucket{{arm="production",model_version="7",le="200.0"}}'
        values: '0+600x30'
      - series: 'ray_rayml_arm_latency_ms_bucket{{arm="production",model_version="7",le="+Inf"}}'
        values: '0+600x30'
      - series: 'ray_rayml_alerts_firing{{rule="psi_drift",WorkerId="m"}}'
        values: '0x10 1x20'
      - series: 'ray_rayml_model_age_seconds{{version="7"}}'
        values: '864000x150'
      - series: 'ray_rayml_training_data_age_seconds{{version="7"}}'
        values: '86400x150'
    alert_rule_test:
      - eval_time: 20m
        alertname: RaymlErrorRateHigh
        exp_alerts:
          - exp_labels: {{severity: page, arm: canary, model_version: "8"}}
            exp_annotations:
              summary: "5% of requests fail (canary, model 8)"
              description: "ray_rayml_arm_errors_total / ray_rayml_arm_requests_total over 5 minutes is above 1 %."
      - eval_time: 20m
        alertname: RaymlLatencyP99OverSLO
        exp_alerts:
          - exp_labels: {{severity: page, arm: canary, model_version: "8"}}
            exp_annotations:
              summary: "p99 latency 198 ms > 100 ms (canary, model 8)"
              description: "histogram_quantile(0.99) over 5 minutes of ray_rayml_arm_latency_ms, above the 100 ms SLO for 10 minutes."
      - eval_time: 20m
        alertname: RaymlMonitorAlertFiring
        exp_alerts:
          - exp_labels: {{severity: ticket, rule: psi_drift}}
            exp_annotations:
              summary: "rayml monitor rule psi_drift is firing"
              description: "See the monitor's alerts.jsonl and the offline report for the evidence."
      - eval_time: 5m
        alertname: RaymlMonitorAlertFiring
        exp_alerts: []
      - eval_time: 2h
        alertname: RaymlModelStale
        exp_alerts:
          - exp_labels: {{severity: ticket, version: "7"}}
            exp_annotations:
              summary: "model 7 was trained 10d 0h 0m 0s ago (> 7 days)"
      - eval_time: 2h
        alertname: RaymlTrainingDataStale
        exp_alerts: []
"""


@needs_promtool
def test_promtool_rule_unit_tests(tmp_path: Path) -> None:
    assert PROMTOOL is not None
    spec = tmp_path / "rayml-alerts.test.yaml"
    spec.write_text(PROMTOOL_TESTS.format(rules=json.dumps(str(RULES))), encoding="utf-8")
    yaml.safe_load(spec.read_text(encoding="utf-8"))
    proc = subprocess.run(
        [PROMTOOL, "test", "rules", str(spec)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
