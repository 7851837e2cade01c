"""Local multi-node rehearsal: a head and a ``spot`` worker on this machine, serving and batch at once, and the
worker lost mid-job.

What it runs, all real processes (:mod:`rayml.deploy.rehearsal_cluster`):

1. ``ray start --head`` and ``ray start --address=…`` of a worker advertising ``spot``, each node with its own
   ports and ingress folder.
2. ``serve deploy`` of the shipped recommender config laid over two nodes (``proxy_location: HeadOnly``, one
   replica a node: :mod:`rayml.deploy.rehearsal_serve`); Ray's state API says where each replica runs.
3. ``ray job submit`` of ``batch_jobs/score_entities.py``, its actors pinned to ``spot``
   (:mod:`rayml.deploy.rehearsal_batch`).
4. Once some shards are committed and a scoring actor works on the worker, the worker node is SIGKILLed (its
   process group and its raylet's tree, by PID) while ``/recommend`` is probed; a replacement spot node joins, as
   a cloud autoscaler would start one, and Ray restarts the pinned actors and the lost replica there.
5. The job must succeed, every input id be scored exactly once (none lost, none twice), and serving be back on
   two nodes. Then every process is killed by PID, and none may be left.

Run ``python -m rayml.deploy.rehearsal --config configs/rehearsal/local.yaml`` from the repository root after
``make demo-data``; it prints one JSON summary line and exits 1 when a check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field

from rayml.batch.config import ScoreJobConfig
from rayml.config import ConfigError, StrictModel, load_config
from rayml.deploy.rehearsal_batch import (
    absolute,
    committed,
    exactly_once,
    spot_job,
    tile_entities,
    write_job,
)
from rayml.deploy.rehearsal_cluster import RAY, SPOT, LocalCluster, Node, free_port
from rayml.deploy.rehearsal_serve import Prober, read_token, two_node_config, wait_serving


class Entities(StrictModel):
    shards: int = Field(16, ge=2, le=1_000, description="Input files (the job's units of work and of commit).")
    rows: int = Field(640_000, ge=2, le=100_000_000, description="Entities in all, tiled from the world's users.")


class Timeouts(StrictModel):
    serve_s: float = Field(240, gt=0, le=3600, description="Until /recommend answers with a replica on each node.")
    kill_s: float = Field(240, gt=0, le=3600, description="Until enough shards are committed to kill the worker.")
    job_s: float = Field(300, gt=0, le=7200, description="From the kill until the job has finished.")


class RehearsalConfig(StrictModel):
    """``configs/rehearsal/*.yaml``: what the rehearsal serves and scores, and how big each node is.

    Paths to config files are relative to the repository root; paths inside them to the working directory
    (``--workdir``), as for ``serve run`` and ``batch_jobs/*``.
    """

    serve_config: str = Field("serve_apps/recommender.yaml", description="The shipped Serve config to lay over two nodes.")
    score_config: str = Field("configs/batch/score_users.yaml", description="The batch scoring job (its model and id column).")
    entities: Entities = Entities()
    spot_pin: dict[str, float] = Field({SPOT: 0.01}, description="Custom resources each scoring actor needs: only spot nodes.")
    head_cpus: int = Field(2, ge=1, le=256, description="Logical CPUs of the head (replicas, the job's driver).")
    worker_cpus: int = Field(2, ge=1, le=256, description="Logical CPUs of each spot worker (actors, one replica).")
    object_store_mb: int = Field(300, ge=100, le=100_000, description="Object store of each node.")
    replicas: int = Field(2, ge=2, le=16, description="Recommender replicas, at most one per node.")
    replica_cpus: float = Field(0.25, gt=0, le=64, description="CPUs reserved per recommender replica.")
    kill_after_shards: int = Field(3, ge=1, le=1_000, description="Committed shards before the worker is killed.")
    timeouts: Timeouts = Timeouts()


def cluster_env(project: Path, state: Path) -> dict[str, str]:
    """What every node and CLI call runs with: this venv first on PATH, the project importable, token auth.

    On a fresh machine nothing has created a token yet and ``ray start --head`` does not: one is written into
    ``state`` and named by ``RAY_AUTH_TOKEN_PATH``, also in this process (the state API and job client read it).
    """
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(project), env.get("PYTHONPATH", "")) if p)
    env |= {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token"}
    if not env.get("RAY_AUTH_TOKEN") and not env.get("RAY_AUTH_TOKEN_PATH"):
        token = state / "auth_token"
        token.write_text(secrets.token_hex(32))
        token.chmod(0o600)
        env["RAY_AUTH_TOKEN_PATH"] = os.environ["RAY_AUTH_TOKEN_PATH"] = str(token)
        os.environ["RAY_AUTH_MODE"] = "token"
    return env


def _run(cmd: list[str], env: dict[str, str], cwd: Path, timeout_s: float = 180) -> str:
    result = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout_s)
    if result.returncode != 0:
        raise RuntimeError(f"`{' '.join(cmd)}` failed ({result.returncode}):\n{(result.stdout + result.stderr)[-3000:]}")
    return result.stdout + result.stderr


def _tokens(serve: dict[str, Any], workdir: Path) -> str | None:
    """The read token of the recommender's auth (demo tokens written where none exist yet, as `rayml serve` does)."""
    from rayml.serving.auth import write_demo_tokens

    for app in serve["applications"]:
        auth = (app.get("args") or {}).get("auth") or {}
        if auth.get("enabled") and auth.get("tokens_file"):
            path = Path(absolute(auth["tokens_file"], workdir))
            if not path.exists():
                write_demo_tokens(path)
            return read_token(path)
    return None


class Rehearsal:
    """One run: :meth:`run` returns the summary; the cluster is always torn down by PID."""

    def __init__(self, config: RehearsalConfig, project: Path, workdir: Path, out: Path,
                 state: Path | None = None) -> None:
        self.config, self.project, self.workdir, self.out = config, project, workdir, out
        # Short (Ray's unix socket paths have a length limit) and this run's own: every process names it.
        self.state = state or Path(tempfile.mkdtemp(prefix="/tmp/rr"))
        self.env = cluster_env(project, self.state)
        self.cluster = LocalCluster(self.state, self.env, workdir, config.head_cpus, config.worker_cpus,
                                    config.object_store_mb)
        self.names: dict[str, str] = {}  # Ray node id → head, worker-1, worker-2
        self.ids: dict[str, str] = {}  # and back
        self.summary: dict[str, Any] = {"ok": False}

    def run(self) -> dict[str, Any]:
        started = time.perf_counter()
        try:
            self._rehearse()
        except Exception as exc:  # reported in the summary: the run still tears down and says what it saw
            self.summary["error"] = f"{type(exc).__name__}: {exc}"
        finally:
            killed = self.cluster.stop()
            left = self.cluster.alive(killed)
            self.summary["teardown"] = {"killed_pids": len(killed), "left_pids": sorted(left), "left": left}
            shutil.rmtree(self.state, ignore_errors=True)
            self.summary["seconds_total"] = round(time.perf_counter() - started, 1)
        self.summary["ok"] = self.summary.get("ok", False) and not left
        return self.summary

    def _node(self, name: str) -> Node:
        node = self.cluster.start_head() if name == "head" else self.cluster.start_worker(name)
        if name == "head":
            self.cluster.wait_dashboard()
        self.ids[name] = self.cluster.wait_node(node)
        self.names[self.ids[name]] = name
        return node

    def _where(self, node_ids: list[str]) -> list[str]:
        return [self.names.get(n, n[:8]) for n in node_ids]

    def _rehearse(self) -> None:
        cfg, out = self.config, self.out
        out.mkdir(parents=True, exist_ok=True)
        job = load_config(self.project / cfg.score_config, ScoreJobConfig)
        t = time.perf_counter()
        entities = out / "entities"
        shutil.rmtree(entities, ignore_errors=True)
        rows = tile_entities(job, self.workdir, entities, cfg.entities.shards, cfg.entities.rows)
        output = out / "scores"
        shutil.rmtree(output, ignore_errors=True)
        spec = spot_job(job, self.workdir, entities, output, cfg.spot_pin)
        write_job(spec, out / "job.yaml")  # kept, for the reader
        job_file = write_job(spec, self.state / "job.yaml")  # the driver's command line names the state folder:
        # teardown finds it by PID even when the job is still running
        self.summary["entities"] = {"rows": rows, "shards": cfg.entities.shards, "seconds": round(time.perf_counter() - t, 1)}

        head, worker = self._node("head"), self._node("worker-1")
        self.summary["start_s"] = {"head": head.started_s, "worker-1": worker.started_s}

        t = time.perf_counter()
        shipped = yaml.safe_load((self.project / cfg.serve_config).read_text())
        serve = two_node_config(shipped, self.cluster.http_port, free_port(), cfg.replicas, cfg.replica_cpus,
                                self.cluster.head_marker)
        token = _tokens(serve, self.workdir)
        (out / "serve.yaml").write_text(yaml.safe_dump(serve, sort_keys=False))
        _run([str(Path(RAY).parent / "serve"), "deploy", str(out / "serve.yaml"), "--address", self.cluster.dashboard],
             self.env, self.workdir)
        placed = wait_serving(self.cluster.http_port, token, self.cluster.dashboard,
                              {self.ids["head"], self.ids["worker-1"]}, cfg.timeouts.serve_s)
        self.summary["serve"] = {"ready_s": round(time.perf_counter() - t, 1), "port": self.cluster.http_port,
                                 "replica_nodes": self._where(placed)}

        from ray.job_submission import JobStatus, JobSubmissionClient

        client = JobSubmissionClient(self.cluster.dashboard)
        job_id = f"rehearsal-{secrets.token_hex(4)}"
        t_job = time.perf_counter()
        _run([RAY, "job", "submit", "--address", self.cluster.dashboard, "--no-wait", "--submission-id", job_id, "--",
              "python", str(self.project / "batch_jobs" / "score_entities.py"), "--config", str(job_file)],
             self.env, self.project)
        worker_id = self.ids["worker-1"]
        deadline = time.monotonic() + cfg.timeouts.kill_s
        while not (committed(output) >= cfg.kill_after_shards and worker_id in self._scorer_nodes()):
            if client.get_job_status(job_id).is_terminal():
                raise RuntimeError(f"job {job_id} ended before the kill ({client.get_job_status(job_id)}): raise "
                                   f"entities.rows\n{client.get_job_logs(job_id)[-3000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{cfg.kill_after_shards} shards not committed within {cfg.timeouts.kill_s:.0f} s")
            time.sleep(0.25)

        with Prober(self.cluster.http_port, token) as probe:
            raylet = self.cluster.kill_node(worker)
            at_kill = committed(output)
            t_kill = time.perf_counter()
            self.summary["kill"] = {"node": "worker-1", "raylet_pid": raylet, "committed_shards": at_kill,
                                    "after_job_s": round(t_kill - t_job, 1)}
            replacement = self._node("worker-2")
            self.summary["start_s"]["worker-2"] = replacement.started_s
            deadline = time.monotonic() + cfg.timeouts.job_s
            while not client.get_job_status(job_id).is_terminal() and time.monotonic() < deadline:
                time.sleep(0.5)
            status, t_done = client.get_job_status(job_id), time.perf_counter()
            placed = wait_serving(self.cluster.http_port, token, self.cluster.dashboard,
                                  {self.ids["head"], self.ids["worker-2"]}, cfg.timeouts.serve_s)
            recovered_s = round(time.perf_counter() - t_kill, 1)
        logs = client.get_job_logs(job_id)
        (out / "job.log").write_text(logs)
        info = client.get_job_info(job_id)
        job_summary: dict[str, Any] = next(
            (json.loads(line) for line in reversed(logs.splitlines()) if line.startswith('{"output"')), {})
        self.summary["job"] = {
            "id": job_id, "status": str(status.value), "seconds": round(t_done - t_job, 1),
            "driver_node": self.names.get(str(getattr(info, "driver_node_id", "")), "unknown"),
            "shards": job_summary.get("shards"), "shards_skipped": job_summary.get("shards_skipped"),
            "scored_on": sorted(set(self._where([s["node_id"] for s in self._manifest(output)]))),
        }
        self.summary["serve"] |= {"replica_nodes_after": self._where(placed), "recovered_s": recovered_s,
                                  "probe_during_loss": {str(k): v for k, v in sorted(probe.counts.items())}}
        if status != JobStatus.SUCCEEDED:
            self.summary["job"]["log_tail"] = logs[-2000:]
        self.summary["exactly_once"] = counts = exactly_once(entities, output, job.id_column)
        self.summary["ok"] = (status == JobStatus.SUCCEEDED and counts["lost"] == counts["duplicates"] == 0
                              and counts["unknown"] == 0)

    def _scorer_nodes(self) -> set[str]:
        from ray.util.state import list_actors

        actors = list_actors(address=self.cluster.dashboard, filters=[("state", "=", "ALIVE")], limit=1000,
                             raise_on_missing_output=False)
        return {str(a.node_id) for a in actors if "MapWorker" in str(a.class_name)}

    @staticmethod
    def _manifest(output: Path) -> list[dict[str, Any]]:
        manifest = output / "_manifest.json"
        return json.loads(manifest.read_text()).get("per_shard", []) if manifest.is_file() else []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rayml.deploy.rehearsal", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=Path("configs/rehearsal/local.yaml"), help="Rehearsal config YAML.")
    parser.add_argument("--project", type=Path, default=Path.cwd(), help="Repository root (serve_apps/, batch_jobs/).")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="Where the configs' relative data paths resolve (default: --project).")
    parser.add_argument("--out", type=Path, default=None, help="Results folder (default: <workdir>/.rayml/rehearsal).")
    parser.add_argument("--state", type=Path, default=None,
                        help="An empty, short folder for Ray's and HAProxy's files, removed at the end (default: a new "
                             "/tmp/rr*); every process of the run names it, so a caller can kill leftovers by PID.")
    args = parser.parse_args(argv)
    project = args.project.resolve()
    workdir = (args.workdir or project).resolve()
    try:
        config = load_config(args.config, RehearsalConfig)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = (args.out or workdir / ".rayml" / "rehearsal").resolve()
    summary = Rehearsal(config, project, workdir, out, args.state.resolve() if args.state else None).run()
    print(json.dumps(summary))
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
