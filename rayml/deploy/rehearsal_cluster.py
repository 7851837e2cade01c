"""A head and ``spot`` worker nodes on one machine, started with ``ray start`` and stopped by PID.

Each ``ray start`` runs in its own session, so every daemon it leaves behind (GCS, raylet, log monitor, agents,
workers) shares that session's process group: a worker node is "reclaimed" by one ``killpg`` of its group, and the
raylet's descendants are killed by PID too in case one left the group. Every node shares the head's short
``--temp-dir`` (Ray puts a worker node's session files under the head's), so teardown kills every process whose
command line names that folder, plus each node's process group (Ray's worker processes rewrite their command
lines to ``ray::…``, so only their group finds them); nothing is ever matched by process name, and ``ray stop``
(which stops every Ray on the machine) is never run.

Ports and ingress files are per node (:func:`rayml.serving.ingress.ingress_env` with a folder and ports of the
node's own). Serve runs with ``proxy_location: HeadOnly``, so only the head runs HAProxy on the HTTP port.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from rayml.ports import free_port
from rayml.serving.ingress import Ingress, IngressPorts, ingress_env

RAY = str(Path(sys.executable).parent / "ray")  # this interpreter's CLI, whatever PATH says
SPOT = "spot"  # the custom resource that batch jobs pin to (configs/batch: actors.resources)


@dataclass
class Node:
    """One ``ray start`` of this cluster: its process group and, for a worker, the resource naming it."""

    name: str
    pgid: int
    marker: str  # a custom resource only this node advertises: finds its raylet by PID and its Ray node id
    started_s: float

    def raylet_pid(self) -> int:
        pids = [p for p in _pids_naming(self.marker) if b"raylet" in _cmdline(p).split(b" ", 1)[0]]
        if len(pids) != 1:
            raise RuntimeError(f"{self.name}: expected one raylet advertising {self.marker}, found {pids}")
        return pids[0]


@dataclass
class LocalCluster:
    """``ray start --head`` plus worker nodes advertising ``spot``, each with its own ports and ingress folder.

    Args:
        state: a short folder of this run (Ray's unix socket paths have a length limit: keep it under /tmp).
        env: the environment every node starts with (PATH, token auth, PYTHONPATH).
    """

    state: Path
    env: dict[str, str]
    cwd: Path  # where the nodes start: Ray workers (Serve replicas) resolve relative paths against it
    head_cpus: int = 1
    worker_cpus: int = 1
    object_store_mb: int = 300
    ingress: Ingress = "haproxy"
    gcs_port: int = field(default_factory=free_port)
    dashboard_port: int = field(default_factory=free_port)
    http_port: int = field(default_factory=free_port)
    nodes: list[Node] = field(default_factory=list)

    @property
    def head_marker(self) -> str:
        """A resource only this cluster's head advertises (pins work to the head; finds it in Ray's node list)."""
        return f"rehearsal_head_{os.getpid()}_{self.gcs_port}"

    @property
    def temp_dir(self) -> Path:
        return self.state / "ray"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def node_env(self, name: str) -> dict[str, str]:
        """This node's environment: the shared one plus an ingress with its own ports and HAProxy folder."""
        # Short: HAProxy refuses unix socket paths over 97 characters, and Ray nests a 56-character folder in it.
        folder = self.state / ("ih" if name == "head" else f"i{name.rsplit('-', 1)[-1]}")
        folder.mkdir(parents=True, exist_ok=True)
        return self.env | ingress_env(self.ingress, folder, IngressPorts.free())

    def start_head(self) -> Node:
        cmd = [RAY, "start", "--head", f"--port={self.gcs_port}", f"--dashboard-port={self.dashboard_port}",
               "--dashboard-host=127.0.0.1", "--node-ip-address=127.0.0.1", f"--temp-dir={self.temp_dir}",
               f"--ray-client-server-port={free_port()}", f"--num-cpus={self.head_cpus}",
               f"--resources={json.dumps({self.head_marker: 1})}"]
        return self._start("head", cmd, self.head_marker)

    def start_worker(self, name: str) -> Node:
        """A worker node advertising ``spot`` (and a marker resource of its own)."""
        marker = f"rehearsal_{name}_{os.getpid()}_{self.gcs_port}"
        cmd = [RAY, "start", f"--address={self.address}", "--node-ip-address=127.0.0.1",
               f"--num-cpus={self.worker_cpus}", f"--resources={json.dumps({SPOT: 1, marker: 1})}"]
        return self._start(name, cmd, marker)

    def _start(self, name: str, cmd: list[str], marker: str) -> Node:
        cmd += [f"--object-store-memory={self.object_store_mb * 1024 * 1024}", "--disable-usage-stats",
                f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
                f"--runtime-env-agent-port={free_port()}", f"--metrics-export-port={free_port()}"]
        started = time.perf_counter()
        log = self.state / f"ray-start-{name}.log"
        with log.open("w") as out:
            process = subprocess.Popen(cmd, env=self.node_env(name), cwd=self.cwd, stdout=out,
                                       stderr=subprocess.STDOUT, start_new_session=True)  # its daemons keep this group: killpg reaches them
            node = Node(name, process.pid, marker, 0.0)
            self.nodes.append(node)
            if process.wait(timeout=180) != 0:
                raise RuntimeError(f"`{' '.join(cmd)}` failed:\n{log.read_text()[-3000:]}")
        node.started_s = round(time.perf_counter() - started, 2)
        return node

    def kill_node(self, node: Node) -> int:
        """SIGKILL a worker node as a reclaimed spot instance dies: its raylet, the raylet's descendants and its
        process group, at once. Returns the raylet's PID."""
        if node.name == "head":
            raise ValueError("the head is not a spot node")
        raylet = node.raylet_pid()
        victims = [raylet, *_descendants(raylet)]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(node.pgid, signal.SIGKILL)
        _kill(victims, grace_s=0)
        return raylet

    def alive_nodes(self) -> list[tuple[str, dict[str, float]]]:
        """Ray's live nodes, (node id, total resources), through the dashboard's state API."""
        from ray.util.state import list_nodes

        nodes = list_nodes(address=self.dashboard, filters=[("state", "=", "ALIVE")], raise_on_missing_output=False)
        return [(n.node_id, dict(n.resources_total or {})) for n in nodes]

    def node_id(self, node: Node) -> str:
        for node_id, resources in self.alive_nodes():
            if node.marker in resources:
                return node_id
        raise RuntimeError(f"{node.name} ({node.marker}) is not alive in Ray")

    def wait_node(self, node: Node, timeout_s: float = 60) -> str:
        """Until Ray lists ``node`` alive (the dashboard may still be starting). Returns its Ray node id."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                return self.node_id(node)
            except Exception:
                if time.monotonic() > deadline:
                    raise
            time.sleep(0.5)

    def wait_dashboard(self, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.dashboard}/api/version", timeout=2):
                    return
            except urllib.error.HTTPError:  # it answers (token auth may refuse an anonymous request): it is up
                return
            except OSError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"the dashboard at {self.dashboard} did not answer within {timeout_s:.0f} s")

    def stop(self) -> list[int]:
        """Kill every process of this cluster by PID: those naming its state folder (Ray's temp dir, HAProxy's
        config), each node's group and marker. Returns them."""
        pids = set(_pids_naming(str(self.state)))
        for node in self.nodes:
            pids |= set(_pids_naming(node.marker)) | set(_group(node.pgid))
        pids.discard(os.getpid())
        _kill(sorted(pids), grace_s=10)
        return sorted(pids)

    @staticmethod
    def alive(pids: list[int], wait_s: float = 5) -> dict[int, str]:
        """Those of ``pids`` still running (zombies aside) after up to ``wait_s``, with their command lines."""
        deadline = time.monotonic() + wait_s
        while True:
            left = {p: _cmdline(p).decode(errors="replace")[:200] for p in pids if _stat(p)[:1] not in ([], ["Z"])}
            if not left or time.monotonic() > deadline:
                return left
            time.sleep(0.2)


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        return b""


def _pids_naming(marker: str) -> list[int]:
    """PIDs whose command line contains ``marker``, never matched by process name."""
    return [int(e.name) for e in Path("/proc").iterdir()
            if e.name.isdigit() and int(e.name) != os.getpid() and marker.encode() in _cmdline(int(e.name))]


def _stat(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return []


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat(int(entry.name))):
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _group(pgid: int) -> list[int]:
    """Live processes in process group ``pgid`` (field 5 of /proc/PID/stat)."""
    return [int(e.name) for e in Path("/proc").iterdir()
            if e.name.isdigit() and (fields := _stat(int(e.name))) and int(fields[2]) == pgid]


def _kill(pids: list[int], grace_s: float) -> None:
    """SIGTERM (or at once SIGKILL when ``grace_s`` is 0), wait up to ``grace_s``, then SIGKILL what is left."""
    if grace_s:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() and _stat(p)[:1] != ["Z"] for p in pids):
            time.sleep(0.2)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
