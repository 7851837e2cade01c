"""Alerts: rules from config, k-of-n firing, dedup, resolve, silence, persistence, and a webhook that never blocks.

A rule watches one *signal* the monitor computes per closed window, e.g. ``drift.psi`` (per feature),
``drift.family`` (1 when the preset's corrected family decision says drifted), ``performance.auc_drop`` or
``latency.p99_ms``. It fires when the condition held in at least ``k`` of the last ``n`` windows for a key (the
rule plus the signal's labels, e.g. the feature), and resolves when it no longer does. One firing is one alert
event however many windows it lasts (dedup); a silenced rule still evaluates but emits nothing until the silence
ends. Each event is a log line, a row in ``alerts.jsonl`` (kept for the retraining trigger), the
``rayml_alerts_firing`` gauge (set by the monitor) and, if configured, a webhook POST sent from a bounded queue by
its own thread, with a time-out and retries, so a slow or dead receiver never blocks the monitor.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
import urllib.request
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from rayml.config import StrictModel

logger = logging.getLogger(__name__)


class AlertRule(StrictModel):
    name: str = Field(min_length=1, max_length=64, description="Unique rule name (the alert's identity).")
    signal: str = Field(description="Signal the monitor computes per window, e.g. drift.psi, drift.family.")
    op: Literal[">", ">=", "<", "<="] = Field(">", description="Comparison of the signal with the threshold.")
    threshold: float
    k: int = Field(1, ge=1, description="Fires when the condition held in at least k ...")
    n: int = Field(1, ge=1, description="... of the last n windows.")
    severity: Literal["info", "warning", "critical"] = "warning"

    @model_validator(mode="after")
    def _k_le_n(self) -> AlertRule:
        if self.k > self.n:
            raise ValueError(f"k: {self.k} is more than n={self.n}")
        return self

    def holds(self, value: float) -> bool:
        return {">": value > self.threshold, ">=": value >= self.threshold, "<": value < self.threshold,
                "<=": value <= self.threshold}[self.op]


class WebhookConfig(StrictModel):
    url: str = Field(pattern=r"^https?://", description="Receives each alert event as a JSON POST.")
    timeout_s: float = Field(2.0, gt=0, le=60)
    retries: int = Field(3, ge=0, le=20)
    backoff_s: float = Field(0.5, ge=0, le=60)
    queue_size: int = Field(1000, ge=1, description="Events waiting at most; beyond, dropped and counted.")


DEFAULT_RULES = [  # the article's thresholds, shipped
    AlertRule(name="psi-drift", signal="drift.psi", op=">", threshold=0.2, k=3, n=4),
    AlertRule(name="feature-drift", signal="drift.family", op=">=", threshold=1, k=2, n=3),
    AlertRule(name="auc-drop-7d", signal="performance.auc_drop", op=">", threshold=0.02, k=1, n=1,
              severity="critical"),
    AlertRule(name="concept-drift", signal="performance.recalibration_p", op="<", threshold=0.001, k=2, n=3,
              severity="critical"),
]


@dataclass
class AlertEvent:
    rule: str
    key: str
    status: Literal["firing", "resolved"]
    at: float
    value: float
    labels: dict[str, str]
    severity: str
    evidence: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Webhook:
    """Posts events from a bounded queue on its own thread; never blocks the caller."""

    def __init__(self, config: WebhookConfig, post: Callable[[str, bytes, float], None] | None = None) -> None:
        self.config = config
        self._post = post or _post_json
        self._queue: queue.Queue[dict[str, Any]] = queue.Queue(config.queue_size)
        self.sent = self.failed = self.dropped = 0
        threading.Thread(target=self._run, name="alert-webhook", daemon=True).start()

    def send(self, event: dict[str, Any]) -> None:
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            self.dropped += 1

    def _run(self) -> None:
        while True:
            event = self._queue.get()
            body = json.dumps(event).encode()
            for attempt in range(self.config.retries + 1):
                try:
                    self._post(self.config.url, body, self.config.timeout_s)
                    self.sent += 1
                    break
                except Exception as exc:
                    if attempt == self.config.retries:
                        self.failed += 1
                        logger.error("alert webhook: giving up on %s after %d tries (%s)", event["rule"],
                                     attempt + 1, exc)
                    else:
                        time.sleep(self.config.backoff_s * (2 ** attempt))


def _post_json(url: str, body: bytes, timeout_s: float) -> None:
    request = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        response.read()


class AlertManager:
    """Evaluates rules on each closed window's signals; persists state and events under ``state_dir``."""

    def __init__(self, rules: list[AlertRule], state_dir: str | Path | None = None,
                 webhook: WebhookConfig | None = None, post: Callable[[str, bytes, float], None] | None = None,
                 ) -> None:
        names = [r.name for r in rules]
        if len(set(names)) != len(names):
            raise ValueError(f"rules: duplicate names {sorted({n for n in names if names.count(n) > 1})}")
        self.rules = rules
        self.dir = Path(state_dir) if state_dir is not None else None
        self.webhook = Webhook(webhook, post) if webhook is not None else None
        self.history: dict[str, deque[bool]] = {}
        self.firing: dict[str, AlertEvent] = {}
        self.silenced: dict[str, float] = {}  # rule → until (epoch s)
        self._load()

    def silence(self, rule: str, until: float) -> None:
        if rule not in {r.name for r in self.rules}:
            raise ValueError(f"rule: unknown {rule!r}; rules: {[r.name for r in self.rules]}")
        self.silenced[rule] = until
        self._save()

    def observe(self, at: float, signals: dict[str, list[tuple[dict[str, str], float]]]) -> list[AlertEvent]:
        """One window's signals (signal → [(labels, value)]); returns the events it caused (fired, resolved)."""
        events: list[AlertEvent] = []
        for rule in self.rules:
            for labels, value in signals.get(rule.signal, []):
                key = rule.name + "".join(f"|{k}={v}" for k, v in sorted(labels.items()))
                window = self.history.setdefault(key, deque(maxlen=rule.n))
                window.append(rule.holds(value))
                active = sum(window) >= rule.k
                if active and key not in self.firing:
                    event = AlertEvent(rule.name, key, "firing", at, float(value), labels, rule.severity,
                                       {"held": sum(window), "of": len(window), "k": rule.k, "n": rule.n,
                                        "op": rule.op, "threshold": rule.threshold})
                    self.firing[key] = event
                    events.append(event)
                elif not active and key in self.firing:
                    del self.firing[key]
                    events.append(AlertEvent(rule.name, key, "resolved", at, float(value), labels, rule.severity))
        for event in events:
            self._emit(event)
        self._save()  # the k-of-n history too: a restarted monitor counts the windows it already saw
        return events

    def _emit(self, event: AlertEvent) -> None:
        if self.dir is not None:
            self.dir.mkdir(parents=True, exist_ok=True)
            with open(self.dir / "alerts.jsonl", "a") as fh:
                fh.write(json.dumps(event.to_dict()) + "\n")
        if self.silenced.get(event.rule, 0) > time.time():
            return
        logger.warning("alert %s %s: %s=%s (%s)", event.status, event.rule, event.labels, event.value,
                       event.evidence)
        if self.webhook is not None:
            self.webhook.send(event.to_dict())

    def firing_by_rule(self) -> dict[str, int]:
        counts = {r.name: 0 for r in self.rules}
        for event in self.firing.values():
            counts[event.rule] += 1
        return counts

    def events(self) -> list[dict[str, Any]]:
        if self.dir is None or not (self.dir / "alerts.jsonl").exists():
            return []
        return [json.loads(line) for line in (self.dir / "alerts.jsonl").read_text().splitlines() if line]

    def _save(self) -> None:
        if self.dir is None:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        state = {"history": {k: list(v) for k, v in self.history.items()},
                 "firing": {k: e.to_dict() for k, e in self.firing.items()}, "silenced": self.silenced}
        tmp = self.dir / ".alert_state.json.tmp"
        tmp.write_text(json.dumps(state))
        tmp.replace(self.dir / "alert_state.json")

    def _load(self) -> None:
        if self.dir is None or not (self.dir / "alert_state.json").exists():
            return
        state = json.loads((self.dir / "alert_state.json").read_text())
        maxlen = {r.name: r.n for r in self.rules}
        for key, values in state["history"].items():
            rule = key.split("|", 1)[0]
            if rule in maxlen:
                self.history[key] = deque(values, maxlen=maxlen[rule])
        self.firing = {k: AlertEvent(**e) for k, e in state["firing"].items() if e["rule"] in maxlen}
        self.silenced = state.get("silenced", {})
