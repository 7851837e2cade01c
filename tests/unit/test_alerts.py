"""Alert rules: k of n, dedup, resolve, silence, persistence, and a webhook that never blocks the monitor."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from pydantic import ValidationError

from rayml.monitoring.alerts import AlertManager, AlertRule, WebhookConfig

pytestmark = pytest.mark.unit
RULE = AlertRule(name="psi", signal="drift.psi", op=">", threshold=0.2, k=3, n=4)


def _psi(value: float, feature: str = "age") -> dict:
    return {"drift.psi": [({"feature": feature}, value)]}


def test_fires_at_k_of_n_once_then_resolves(tmp_path):
    alerts = AlertManager([RULE], tmp_path)
    values = [0.3, 0.1, 0.3, 0.3, 0.3, 0.05, 0.05]
    events = [alerts.observe(float(t), _psi(v)) for t, v in enumerate(values)]
    kinds = [[e.status for e in evs] for evs in events]
    assert kinds == [[], [], [], ["firing"], [], [], ["resolved"]]  # 3 of 4 at t=3; dedup; < 3 of 4 at t=6
    assert [e["status"] for e in alerts.events()] == ["firing", "resolved"]


def test_keys_are_per_feature_and_state_survives_a_restart(tmp_path):
    alerts = AlertManager([RULE], tmp_path)
    for t in range(2):
        alerts.observe(float(t), {"drift.psi": [({"feature": "a"}, 0.5), ({"feature": "b"}, 0.0)]})
    again = AlertManager([RULE], tmp_path)  # a restarted monitor remembers the two windows that held
    [event] = again.observe(2.0, {"drift.psi": [({"feature": "a"}, 0.5), ({"feature": "b"}, 0.0)]})
    assert event.labels == {"feature": "a"} and event.status == "firing"
    assert again.firing_by_rule() == {"psi": 1}


def test_a_slow_webhook_never_blocks_and_is_retried(tmp_path):
    calls: list[bytes] = []
    release = threading.Event()

    def post(url: str, body: bytes, timeout_s: float) -> None:
        calls.append(body)
        if len(calls) == 1:
            release.wait(5)
            raise TimeoutError("receiver too slow")

    rule = AlertRule(name="fam", signal="drift.family", op=">=", threshold=1)
    alerts = AlertManager([rule], tmp_path, WebhookConfig(url="http://127.0.0.1:9/", backoff_s=0.01), post=post)
    started = time.perf_counter()
    alerts.observe(0.0, {"drift.family": [({}, 1.0)]})
    assert time.perf_counter() - started < 0.5  # the POST happens on the webhook's own thread
    release.set()
    deadline = time.monotonic() + 5
    while alerts.webhook.sent == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert alerts.webhook.sent == 1 and len(calls) == 2  # first try timed out, the retry went through
    assert json.loads(calls[1])["rule"] == "fam"


def test_a_real_http_receiver_gets_the_event(tmp_path):
    got: list[dict] = []

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self):
            got.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        rule = AlertRule(name="fam", signal="drift.family", op=">=", threshold=1)
        url = f"http://127.0.0.1:{server.server_address[1]}/hook"
        alerts = AlertManager([rule], tmp_path, WebhookConfig(url=url))
        alerts.observe(0.0, {"drift.family": [({"version": "ranker:v1"}, 1.0)]})
        deadline = time.monotonic() + 5
        while not got and time.monotonic() < deadline:
            time.sleep(0.01)
        assert got and got[0]["status"] == "firing" and got[0]["labels"] == {"version": "ranker:v1"}
    finally:
        server.shutdown()


def test_silence_keeps_evaluating_but_sends_nothing(tmp_path):
    sent: list[bytes] = []
    rule = AlertRule(name="fam", signal="drift.family", op=">=", threshold=1)
    alerts = AlertManager([rule], tmp_path, WebhookConfig(url="http://127.0.0.1:9/"),
                          post=lambda u, b, t: sent.append(b))
    alerts.silence("fam", until=time.time() + 60)
    [event] = alerts.observe(0.0, {"drift.family": [({}, 1.0)]})
    assert event.status == "firing" and alerts.firing_by_rule() == {"fam": 1}
    time.sleep(0.2)
    assert sent == []
    with pytest.raises(ValueError, match="rule: unknown 'nope'"):
        alerts.silence("nope", 0)


def test_rule_config_errors_name_the_field():
    with pytest.raises(ValidationError, match="k"):
        AlertRule(name="x", signal="s", threshold=1, k=3, n=2)
    with pytest.raises(ValidationError, match="url"):
        WebhookConfig(url="ftp://x")
    with pytest.raises(ValueError, match="duplicate names"):
        AlertManager([RULE, RULE])
