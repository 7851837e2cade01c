"""``rayml rollout …`` and ``rayml shadow …``: operator commands over the recommender's admin endpoints.

They need the ``admin`` token: ``--token`` or ``RAYML_TOKEN``. ``--url`` (or ``RAYML_URL``) is the app's HTTP
address, e.g. ``http://127.0.0.1:8000``.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from rayml.config import ConfigError, load_config
from rayml.rollout.plan import RolloutPlan

rollout_app = typer.Typer(help="Canary rollouts: start, watch, pause, resume, abort, promote, roll back.",
                          no_args_is_help=True)
shadow_app = typer.Typer(help="Shadow traffic: mirror production requests to a model and compare.",
                         no_args_is_help=True)
console = Console(soft_wrap=True)

Url = Annotated[str, typer.Option("--url", envvar="RAYML_URL", help="The recommender's base URL.")]
Token = Annotated[str, typer.Option("--token", envvar="RAYML_TOKEN", help="An admin token.")]
AsJson = Annotated[bool, typer.Option("--json", help="Print the raw JSON answer.")]
DEFAULT_URL = "http://127.0.0.1:8000"


class AdminError(RuntimeError):
    def __init__(self, status: int, body: Any) -> None:
        detail = body.get("detail", body) if isinstance(body, dict) else body
        super().__init__(f"HTTP {status}: {detail}")
        self.status, self.body = status, body


def call(url: str, token: str, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    """One admin request; raises :class:`AdminError` with the server's detail on a non-2xx answer."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url.rstrip("/") + path, data=data, method=method,
                                     headers={"Authorization": f"Bearer {token}",
                                              "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            parsed: Any = json.loads(raw)
        except ValueError:
            parsed = raw.decode(errors="replace")
        raise AdminError(exc.code, parsed) from None
    except urllib.error.URLError as exc:
        raise AdminError(0, f"cannot reach {url}: {exc.reason}") from None


def _fail(message: str) -> typer.Exit:
    console.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(2)


def _run(url: str, token: str, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    try:
        return call(url, token, method, path, body)
    except AdminError as exc:
        if exc.status == 409 and isinstance(exc.body, dict) and exc.body.get("rollout"):
            _print_state(exc.body["rollout"])
        raise _fail(str(exc)) from None


def _print_state(state: dict[str, Any] | None) -> None:
    if not state:
        console.print("no rollout")
        return
    plan = state["plan"]
    stages = " → ".join(f"{s['weight_pct']:g}%" for s in plan["stages"])
    console.print(f"rollout {state['id']}  [bold]{state['status']}[/bold]  {plan['model']} "
                  f"v{state['candidate_version']} vs production v{state['production_version']}"
                  f"{'  (dry run)' if state.get('dry_run') else ''}")
    console.print(f"stage {state['stage_index'] + 1}/{len(plan['stages'])} ({stages}): canary "
                  f"{state['weight_pct']:g} %, production {100 - state['weight_pct']:g} %   reason: {state['reason']}")
    latest = state.get("latest") or {}
    evidence = latest.get("evidence") or {}
    if evidence:
        table = Table("gate", "value")
        for key, value in evidence.items():
            table.add_row(str(key), json.dumps(value, default=str)[:120])
        console.print(f"latest evaluation: {latest.get('action')} ({latest.get('reason')})")
        console.print(table)
    for d in state.get("decisions", [])[-10:]:
        console.print(f"  {d['action']:<9} stage {d['stage'] + 1} at {d['weight_pct']:g} %: {d['reason']}"
                      f"{'  evidence ' + d['evidence'] if d.get('evidence') else ''}")


@rollout_app.command("start")
def rollout_start(
    plan: Annotated[Path, typer.Argument(help="Rollout plan YAML (configs/rollout/*.yaml).")],
    candidate: Annotated[str, typer.Option(help="Candidate version number or alias.")],
    dry_run: Annotated[bool, typer.Option(help="Compute decisions without acting.")] = False,
    url: Url = DEFAULT_URL, token: Token = "", as_json: AsJson = False,
) -> None:
    """Start a canary; refused (409, with the current state) while another runs."""
    try:
        cfg = load_config(plan, RolloutPlan)
    except ConfigError as exc:
        raise _fail(str(exc)) from None
    out = _run(url, token, "POST", "/admin/rollout",
               {"candidate": candidate, "plan": cfg.model_dump(mode="json"), "dry_run": dry_run})
    console.print_json(data=out) if as_json else _print_state(out["rollout"])


@rollout_app.command("status")
def rollout_status(url: Url = DEFAULT_URL, token: Token = "", as_json: AsJson = False) -> None:
    """Stage, split, decisions and the latest gate evidence (Argo's Progressing/Paused/Healthy/Degraded/Aborted)."""
    out = _run(url, token, "GET", "/admin/rollout")
    console.print_json(data=out) if as_json else _print_state(out["rollout"])


def _command(action: str):
    def run(url: Url = DEFAULT_URL, token: Token = "", as_json: AsJson = False) -> None:
        out = _run(url, token, "POST", f"/admin/rollout/{action}")
        console.print_json(data=out) if as_json else _print_state(out["rollout"])

    run.__doc__ = {"pause": "Hold the current weight; the gates stop acting.",
                   "resume": "Continue a paused (or halted) rollout.",
                   "abort": "Stop: canary to 0 %, its alias back to production's version.",
                   "promote": "Go to the next stage now (the last: the production alias moves).",
                   "rollback": "Roll back now."}[action]
    return run


for _action in ("pause", "resume", "abort", "promote", "rollback"):
    rollout_app.command(_action)(_command(_action))


@shadow_app.command("start")
def shadow_start(
    alias: Annotated[str, typer.Argument(help="The shadow model's alias.")],
    fraction: Annotated[float, typer.Option(help="Share of production requests mirrored.")] = 0.1,
    k: Annotated[int, typer.Option(help="overlap@k cut-off.")] = 10,
    window_s: Annotated[float, typer.Option(help="Report window, seconds.")] = 60.0,
    url: Url = DEFAULT_URL, token: Token = "",
) -> None:
    out = _run(url, token, "POST", "/admin/shadow",
               {"alias": alias, "config": {"fraction": fraction, "k": k, "window_s": window_s}})
    console.print_json(data=out)


@shadow_app.command("stop")
def shadow_stop(url: Url = DEFAULT_URL, token: Token = "") -> None:
    console.print_json(data=_run(url, token, "DELETE", "/admin/shadow"))


@shadow_app.command("report")
def shadow_report(url: Url = DEFAULT_URL, token: Token = "") -> None:
    """Per replica: overlap@k, Kendall τ, score-delta quantiles, shadow errors, latency and drops."""
    console.print_json(data=_run(url, token, "GET", "/admin/shadow"))


