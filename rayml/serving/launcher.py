"""Run ``serve run CONFIG`` in the foreground, say when it answers, and stop it cleanly on Ctrl-C."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml


def http_address(config_path: str | Path) -> tuple[str, int]:
    """Host and port from a Serve config's ``http_options`` (Serve's defaults when absent)."""
    options = (yaml.safe_load(Path(config_path).read_text()) or {}).get("http_options") or {}
    host = options.get("host", "127.0.0.1")
    return ("127.0.0.1" if host in ("0.0.0.0", "::") else host), int(options.get("port", 8000))


def wait_healthy(url: str, process: subprocess.Popen, timeout_s: float) -> bool:
    """Poll ``url`` until it answers 200, the process exits, or the time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return True
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(1)
    return False


def serve_foreground(config_path: str | Path, example_body: str, timeout_s: float = 180) -> int:
    """Start ``serve run``; print a ready-to-paste curl once ``/healthz`` answers; return its exit code."""
    host, port = http_address(config_path)
    serve_bin = Path(sys.executable).with_name("serve")
    process = subprocess.Popen([str(serve_bin), "run", str(config_path)])
    try:
        if wait_healthy(f"http://{host}:{port}/healthz", process, timeout_s):
            print(
                "\n=== rayml recommender is ready. Try:\n"
                f"curl -s -X POST http://{host}:{port}/recommend -H 'content-type: application/json' "
                f"-d '{example_body}'\n=== Ctrl-C stops it.\n",
                flush=True,
            )
        elif process.poll() is None:
            print(f"serve did not answer on http://{host}:{port}/healthz within {timeout_s:.0f}s", file=sys.stderr)
        return process.wait()
    except KeyboardInterrupt:
        # The terminal sent SIGINT to the whole group; `serve run` shuts Serve down on it. Wait for that,
        # ignoring further Ctrl-C so the shutdown is not cut short.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
        process.wait()
        print("stopped", flush=True)
        return 0
