"""What the committed Grafana dashboard and Prometheus rules ask of the metrics: series names, label matchers and the
labels they group by. Shared by the unit check of the files (tests/unit/test_monitor_dashboards.py) and the check
against a real scrape (tests/integration/test_dashboard_scrape.py)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import yaml

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "cluster" / "grafana" / "rayml-dashboard.json"
METRICS_MD = ROOT / "cluster" / "grafana" / "METRICS.md"
RULES = ROOT / "cluster" / "prometheus" / "rayml-alerts.yaml"

PROMQL_WORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool",
    "and", "or", "unless", "inf", "nan", "atan2",
}  # fmt: skip
_STRING = r'"(?:[^"\\]|\\.)*"'
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_SELECTOR = re.compile(r"(?<![\w:.])([A-Za-z_:][A-Za-z0-9_:]*)\s*\{((?:[^}\"]|" + _STRING + r")*)\}")
_MATCHER = re.compile(r"([A-Za-z_]\w*)\s*(=~|!~|!=|=)\s*(" + _STRING + ")")
_VARIABLE = re.compile(r"\$\{?\w+\}?")
_TEMPLATE_LABEL = re.compile(r"\{\{\s*\.?(\w+)\s*\}\}|\$labels\.(\w+)")


def metric_names(expr: str) -> set[str]:
    """Series names a PromQL expression selects (functions, keywords, labels and Grafana variables removed)."""
    e = re.sub(_STRING, '""', expr)
    e = _VARIABLE.sub("", e)
    e = re.sub(r"\{[^}]*\}", "", e)
    e = re.sub(r"\[[^\]]*\]", "", e)
    e = _GROUPING.sub("", e)
    names = set()
    for m in re.finditer(r"(?<![\w:.])([A-Za-z_:][A-Za-z0-9_:]*)(\s*\()?", e):
        token, call = m.group(1), m.group(2)
        if call or token.lower() in PROMQL_WORDS:
            continue
        names.add(token)
    return names


@dataclass(frozen=True)
class Matcher:
    """One label matcher of a selector; a Grafana variable in the value matches anything (the "All" choice)."""

    label: str
    op: str
    value: str

    def matches(self, labels: dict[str, str]) -> bool:
        got = labels.get(self.label, "")
        if _VARIABLE.search(self.value):
            return self.label in labels
        if self.op in ("=~", "!~"):
            hit = re.fullmatch(self.value, got) is not None
            return hit if self.op == "=~" else not hit
        return (got == self.value) if self.op == "=" else (got != self.value)


def selectors(expr: str) -> list[tuple[str, tuple[Matcher, ...]]]:
    """Each ``name{matchers}`` of an expression: (series name, its matchers)."""
    out = []
    for m in _SELECTOR.finditer(expr):
        matchers = tuple(Matcher(label, op, json.loads(value)) for label, op, value in _MATCHER.findall(m.group(2)))
        out.append((m.group(1), matchers))
    return out


def grouping_labels(expr: str) -> set[str]:
    """Labels named in ``by``/``without``/``on``/``ignoring``/``group_*`` clauses."""
    return {label.strip() for clause in _GROUPING.findall(expr) for label in clause.split(",") if label.strip()}


def template_labels(text: str) -> set[str]:
    """Labels a Grafana legend (``{{arm}}``) or an alert template (``$labels.arm``) prints."""
    return {a or b for a, b in _TEMPLATE_LABEL.findall(text)}


@dataclass(frozen=True)
class Query:
    """One expression of the dashboard or the rules, with what it needs of the series it reads."""

    where: str  # "panel 'Model age'", "alert RaymlModelStale", ...
    expr: str
    labels: frozenset[str]  # grouped by, joined on or printed: every series the expression reads must carry them


def dashboard_panels(dash: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for p in dash["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))
    return out


def dashboard_queries() -> list[Query]:
    """Every panel target and every template variable of the dashboard."""
    dash = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    out = []
    for p in dashboard_panels(dash):
        for t in p.get("targets", []):
            labels = grouping_labels(t["expr"]) | template_labels(t.get("legendFormat", ""))
            out.append(Query(f"panel {p['title']!r}", t["expr"], frozenset(labels)))
    for var in dash["templating"]["list"]:
        m = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", var["query"]["query"])
        if m is None:
            raise ValueError(f"variable {var['name']}: not label_values(series, label): {var['query']['query']}")
        out.append(Query(f"variable {var['name']!r}", m.group(1), frozenset({m.group(2)})))
    return out


def rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    return [r for g in doc["groups"] for r in g["rules"]]


def rule_queries() -> list[Query]:
    """Every rule's expression; an alert's labels include those its summary and description print."""
    out = []
    for r in rules():
        templates = " ".join(str(v) for v in (r.get("annotations") or {}).values())
        labels = grouping_labels(r["expr"]) | template_labels(templates)
        where = f"alert {r['alert']}" if "alert" in r else f"record {r['record']}"
        out.append(Query(where, r["expr"], frozenset(labels)))
    return out


def recorded_series() -> dict[str, str]:
    """Recording rule output → its expression (these are computed by Prometheus, never scraped)."""
    return {r["record"]: r["expr"] for r in rules() if "record" in r}


def scraped_names(expr: str) -> set[str]:
    """The scraped series an expression reads, through the recording rules it uses."""
    recorded = recorded_series()
    out: set[str] = set()
    for name in metric_names(expr):
        out |= scraped_names(recorded[name]) if name in recorded else {name}
    return out


class Contract(NamedTuple):
    """One row of METRICS.md's table."""

    type: str  # "counter", "histogram (ms)", "gauge"
    series: set[str]  # the exported Prometheus series
    tags: set[str]  # rayml's tag keys (Ray adds its own labels, and `le` on `_bucket`)


def contract_series() -> dict[str, Contract]:
    """From METRICS.md's table: ray.util.metrics name → its row."""
    out = {}
    for line in METRICS_MD.read_text(encoding="utf-8").splitlines():
        if not line.startswith("| `rayml_"):
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        name = cells[0].strip("`")
        tags = set(re.findall(r"`(\w+)`", re.sub(r"\(.*?\)", "", cells[3])))
        out[name] = Contract(cells[1].lower(), set(re.findall(r"`(ray_rayml_\w+)`", cells[2])), tags)
    return out
