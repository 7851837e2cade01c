"""`rayml serve`: check a Serve config, run ``serve run`` in the foreground, say when it answers, stop cleanly.

``serve run`` with a config file never exits on a failed deploy, and an ``args:`` typo only shows up as a
traceback in the controller's log; so the config is validated here first, with errors naming file and key.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml
from pydantic import ValidationError

from rayml.config import ConfigError, format_validation_error
from rayml.serving.config import RecommenderArgs, load_serving_repo

RECOMMENDER_IMPORT_PATH = "serve_apps.recommender:app_builder"
PATH_ARGS = ("registry", "candidates", "features", "feature_state")
STOP_TIMEOUT_S = 60


def check_serve_config(config_path: str | Path) -> tuple[str, int]:
    """Validate a Serve config (Ray's schema, then the recommender's args and paths); return (host, port).

    Raises:
        ConfigError: one line per problem, naming the file and the key.
    """
    from ray.serve.schema import ServeDeploySchema

    path = Path(config_path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
        schema = ServeDeploySchema.model_validate(raw)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    except ValidationError as exc:
        raise ConfigError(format_validation_error(str(path), ServeDeploySchema, exc)) from None
    problems = []
    for i, app in enumerate(schema.applications):
        if app.import_path != RECOMMENDER_IMPORT_PATH:
            continue
        try:
            args = RecommenderArgs.model_validate(app.args)
        except ValidationError as exc:
            problems.append(format_validation_error(f"{path}: applications.{i}.args", RecommenderArgs, exc))
            continue
        for key in PATH_ARGS:
            if not Path(getattr(args, key)).exists():
                problems.append(
                    f"{path}: key 'applications.{i}.args.{key}': {app.args[key]} does not exist "
                    "(build the demo data with `make demo-data`)"
                )
        if Path(args.features).is_file():
            try:
                load_serving_repo(args)
            except ConfigError as exc:
                problems.append(str(exc))
    if problems:
        raise ConfigError("\n".join(problems))
    host = schema.http_options.host
    return ("127.0.0.1" if host in ("0.0.0.0", "::") else host), schema.http_options.port


def wait_healthy(url: str, process: subprocess.Popen, timeout_s: float) -> bool:
    """Poll ``url`` until it answers 200, the process exits, or the time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return True
        except (OSError, ValueError):  # URLError, connection resets, HTTP errors while deploying
            pass
        time.sleep(1)
    return False


def _stop(process: subprocess.Popen) -> None:
    """One SIGINT (what `serve run` handles: it shuts Serve and its Ray down), then escalate by PID."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGINT)
    try:
        process.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def serve_foreground(config_path: str | Path, example_body: str, timeout_s: float = 300) -> int:
    """Run ``serve run CONFIG``; print a ready-to-paste curl once ``/healthz`` answers.

    Returns 0 after Ctrl-C (or SIGTERM/SIGHUP) and a clean stop, 1 when the app never answered,
    else the exit code of ``serve run``.
    """
    host, port = check_serve_config(config_path)
    serve_bin = Path(sys.executable).with_name("serve")
    if not serve_bin.exists():
        found = shutil.which("serve")
        if found is None:
            raise ConfigError("the `serve` command (ray[serve]) is not installed in this environment")
        serve_bin = Path(found)
    # Own session: a terminal's Ctrl-C reaches only us, and we forward exactly one SIGINT.
    process = subprocess.Popen([str(serve_bin), "run", str(config_path)], start_new_session=True)
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _interrupt)
    try:
        if not wait_healthy(f"http://{host}:{port}/healthz", process, timeout_s):
            if process.poll() is None:
                print(f"serve did not answer on http://{host}:{port}/healthz within {timeout_s:.0f}s; "
                      "see the Serve log above; stopping", file=sys.stderr, flush=True)
                return 1
            return process.returncode or 1
        print(
            "\n=== rayml recommender is ready. Try:\n"
            f"curl -s -X POST http://{host}:{port}/recommend -H 'content-type: application/json' "
            f"-d '{example_body}'\n=== Ctrl-C stops it.\n",
            flush=True,
        )
        return process.wait()
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the shutdown short
        _stop(process)
        print("stopped", flush=True)
        return 0
    finally:
        _stop(process)
