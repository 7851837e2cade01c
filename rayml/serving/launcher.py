"""`rayml serve`: check a Serve config, run ``serve run`` in the foreground, say when it answers, stop cleanly.

``serve run`` with a config file never exits on a failed deploy, and an ``args:`` typo only shows up as a
traceback in the controller's log; so the config is validated here first, with errors naming file and key.

``serve run`` starts with the chosen ingress's environment (:mod:`rayml.serving.ingress`: HAProxy by default)
and a private ``RAY_TMPDIR``. SIGTERM, SIGINT or SIGHUP stops the whole tree within :data:`SHUTDOWN_BOUND_S`:
``serve run`` gets one SIGINT (it shuts Serve and its Ray down, letting in-flight requests finish), then SIGTERM,
then every process left whose command line names this run's private folders gets SIGKILL.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml
from pydantic import ValidationError

from rayml.config import ConfigError, format_validation_error
from rayml.serving.auth import write_demo_tokens
from rayml.serving.autoscaling import LatencySLOPolicy
from rayml.serving.config import RecommenderArgs, load_serving_repo
from rayml.serving.ingress import Ingress, chosen_ingress, with_ingress

CONTROLLER_IMPORT_PATH = "serve_apps.rollout_controller:app_builder"
RECOMMENDER_IMPORT_PATH = "serve_apps.recommender:app_builder"
PATH_ARGS = ("registry", "candidates", "features", "feature_state")
SHUTDOWN_BOUND_S = 25  # SIGTERM → every process gone; container and KubeRay grace periods derive from it
GRACEFUL_S = 15  # of which `serve run` gets this long to shut Serve down itself (in-flight requests finish)
TERM_S = 5  # then SIGTERM to its process group, then SIGKILL by PID


def check_serve_config(config_path: str | Path) -> tuple[str, int, list[RecommenderArgs]]:
    """Validate a Serve config (Ray's schema, then the recommender's args and paths).

    Returns:
        (host, port, the recommender apps' args).

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
    apps: list[RecommenderArgs] = []
    for i, app in enumerate(schema.applications):
        if app.import_path == CONTROLLER_IMPORT_PATH:
            from rayml.serving.rollout_app import ControllerArgs

            try:
                ControllerArgs.model_validate(app.args)
            except ValidationError as exc:
                problems.append(format_validation_error(f"{path}: applications.{i}.args", ControllerArgs, exc))
            continue
        if app.import_path != RECOMMENDER_IMPORT_PATH:
            continue
        try:
            args = RecommenderArgs.model_validate(app.args)
        except ValidationError as exc:
            problems.append(format_validation_error(f"{path}: applications.{i}.args", RecommenderArgs, exc))
            continue
        apps.append(args)
        problems += [f"{path}: {problem}" for problem in overload_problems(i, args, raw["applications"][i])]
        for key in PATH_ARGS:
            value = getattr(args, key)
            if value is not None and "://" not in str(value) and not Path(value).exists():
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
    return ("127.0.0.1" if host in ("0.0.0.0", "::") else host), schema.http_options.port, apps


DEFAULT_BATCH = 8  # the ingress's @serve.batch max_batch_size when user_config leaves it out


def overload_problems(index: int, args: RecommenderArgs, app: dict) -> list[str]:
    """Overload settings of the recommender's ingress that cannot work, each naming its key.

    - ``max_ongoing_requests`` below the batch size: Serve never lets a full batch into the replica.
    - ``args.max_in_flight`` below the batch size, or not below ``max_ongoing_requests`` (Serve hands the app at most
      that many; the rest wait in Serve's queue, never seen by the guard): batches never fill, or the guard never
      fires.
    - ``args.overload.in_flight`` below the batch size: while overloaded, batches could never fill.
    - the latency-SLO policy's ``saturated_ongoing`` above ``max_ongoing_requests``: a replica's ongoing count
      never exceeds that, so the saturation rule could never fire.
    """
    problems = []
    for j, deployment in enumerate(app.get("deployments") or []):
        if deployment.get("name") != "Recommender":
            continue
        where = f"applications.{index}.deployments.{j}"
        batch = (deployment.get("user_config") or {}).get("max_batch_size", DEFAULT_BATCH)
        ongoing = deployment.get("max_ongoing_requests")
        if ongoing is not None and ongoing < batch:
            problems.append(f"key '{where}.max_ongoing_requests': {ongoing} is below the batch size {batch} "
                            "(user_config.max_batch_size): a batch could never fill")
        if args.max_in_flight and args.max_in_flight < batch:
            problems.append(f"key 'applications.{index}.args.max_in_flight': {args.max_in_flight} is below the "
                            f"batch size {batch}: a batch could never fill; raise it or set 0")
        if args.overload is not None and args.overload.in_flight < batch:
            problems.append(f"key 'applications.{index}.args.overload.in_flight': {args.overload.in_flight} is "
                            f"below the batch size {batch}: while overloaded a batch could never fill")
        if args.max_in_flight and ongoing is not None and args.max_in_flight >= ongoing:
            problems.append(f"key 'applications.{index}.args.max_in_flight': {args.max_in_flight} is not below what "
                            f"Serve lets into the app ({where}.max_ongoing_requests: {ongoing}): it would never "
                            "shed; lower it or set 0")
        policy = (deployment.get("autoscaling_config") or {}).get("policy") or {}
        kwargs = policy.get("policy_kwargs") or {}
        if policy.get("policy_function") != "rayml.serving.autoscaling:LatencySLOPolicy":
            continue
        try:  # what Serve would construct at deploy time, refused here with its key instead
            LatencySLOPolicy(**kwargs)
        except (TypeError, ValueError) as exc:
            problems.append(f"key '{where}.autoscaling_config.policy.policy_kwargs': {exc}")
        saturated = kwargs.get("saturated_ongoing")
        if isinstance(saturated, int | float) and ongoing is not None and saturated > ongoing:
            problems.append(f"key '{where}.autoscaling_config.policy.policy_kwargs.saturated_ongoing': {saturated} "
                            f"is above {where}.max_ongoing_requests ({ongoing}), the most a replica ever has "
                            "ongoing: it could never fire; set it a little below")
    return problems


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


def pids_naming(marker: str) -> list[int]:
    """PIDs whose command line contains ``marker`` (this run's private folder), never matched by process name."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if marker.encode() in (entry / "cmdline").read_bytes():
                pids.append(int(entry.name))
    return pids


def stop_tree(process: subprocess.Popen, marker: str) -> None:
    """Stop ``serve run`` and everything it started within :data:`SHUTDOWN_BOUND_S`."""
    deadline = time.monotonic() + SHUTDOWN_BOUND_S
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGINT)  # what `serve run` handles: serve.shutdown(), then its Ray
        try:
            process.wait(GRACEFUL_S)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(TERM_S)
    while time.monotonic() < deadline - 1 and pids_naming(marker):  # Ray's and HAProxy's own exits
        time.sleep(0.2)
    for pid in pids_naming(marker):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    if process.poll() is None:
        process.kill()
        process.wait()


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _tokens_line(apps: list[RecommenderArgs]) -> tuple[str, str]:
    """Demo tokens: written (mode 0600) where an app's auth expects them and none exist yet. Returns the lines to
    print and the curl header that goes with a read."""
    for args in apps:
        auth = args.auth
        if not auth.enabled or auth.tokens_file is None:
            continue
        path = Path(auth.tokens_file)
        if not path.exists():
            write_demo_tokens(path)
        tokens = yaml.safe_load(path.read_text()) or {}
        first = {role: (tokens.get(role) or [None])[0] for role in ("read", "ingest", "admin")}
        lines = "".join(f"  {role}: {token}\n" for role, token in first.items() if token)
        read = first["read"] or first["admin"]
        header = f" -H 'authorization: Bearer {read}'" if read and auth.protect_reads else ""
        return f"=== API tokens by role (from {path}; rotate by rewriting it):\n{lines}", header
    return "", ""


def serve_foreground(config_path: str | Path, example_body: str, timeout_s: float = 300,
                     ingress: Ingress | str | None = None) -> int:
    """Run ``serve run CONFIG`` with the chosen ingress; print a ready-to-paste curl once ``/healthz`` answers.

    Returns 0 after Ctrl-C (or SIGTERM/SIGHUP) and a clean stop, 1 when the app never answered,
    else the exit code of ``serve run``.
    """
    host, port, apps = check_serve_config(config_path)
    kind = chosen_ingress(ingress)
    serve_bin = Path(sys.executable).with_name("serve")
    if not serve_bin.exists():
        found = shutil.which("serve")
        if found is None:
            raise ConfigError("the `serve` command (ray[serve]) is not installed in this environment")
        serve_bin = Path(found)
    tokens, auth_header = _tokens_line(apps)
    private = tempfile.mkdtemp(prefix="rmi-")  # short: Ray and HAProxy put unix sockets under it
    env = with_ingress(kind, Path(private) / "haproxy")
    env.setdefault("RAY_TMPDIR", str(Path(private) / "ray"))
    Path(env["RAY_TMPDIR"]).mkdir(parents=True, exist_ok=True)
    # Own session: a terminal's Ctrl-C reaches only us, and we forward exactly one SIGINT.
    process = subprocess.Popen([str(serve_bin), "run", str(config_path)], start_new_session=True, env=env)
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
            f"\n=== rayml recommender is ready on http://{host}:{port} (ingress: {kind}). Try:\n"
            f"curl -s -X POST http://{host}:{port}/recommend -H 'content-type: application/json'{auth_header} "
            f"-d '{example_body}'\n{tokens}=== Ctrl-C (or SIGTERM) stops it within {SHUTDOWN_BOUND_S}s.\n",
            flush=True,
        )
        return process.wait()
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the shutdown short
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stop_tree(process, private)
        print("stopped", flush=True)
        return 0
    finally:
        stop_tree(process, private)
        shutil.rmtree(private, ignore_errors=True)
