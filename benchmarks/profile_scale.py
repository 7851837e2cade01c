"""Feature profiling at scale: 10M rows × 64 features of Parquet profiled by the Ray Data job, in-process.

    .venv/bin/python benchmarks/profile_scale.py [--rows 10000000] [--small 1000000] [--keep DIR]

Generates synthetic Parquet in a temp dir (60 float32 numeric features, 5 % NaN in some, plus 4 categorical:
strings of 10 / 100 / 1000 categories and an int32 code column profiled as categorical), written in chunks of
250k rows per file with pyarrow. Profiles the first ``--small`` rows, then all ``--rows``, with
``rayml.monitoring.profile_job.profile_parquet`` (the job of ``batch_jobs/profile_features.py``) on
``ray.init(num_cpus=2)``, and prints one JSON line per run: wall time, rows/s, peak summed RSS of this cluster's
Ray worker processes (``ray::`` in /proc/<pid>/cmdline and a child of this Ray's raylet; VmRSS and RssAnon polled every 0.2 s), peak object store bytes used (the raylet's
store stats, polled every 0.4 s) and the bytes created in the store during the run (its cumulative counter: an
upper bound on the peak that polling cannot miss), the peak of workers' RSS plus the store sampled together, the
driver's peak RSS, and accuracy checks against numpy on one column. A last line gives the 10M / 1M ratios.
With ``--keep DIR`` the generated data is kept there and reused by later runs.
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
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

N_NUMERIC = 60
CATEGORIES = {"cat_10": 10, "cat_100": 100, "cat_1000": 1000}
CHUNK = 250_000


def generate(folder: Path, rows: int, seed: int = 0) -> float:
    """Write ``rows`` rows as files of CHUNK rows; returns seconds."""
    started = time.perf_counter()
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    dictionaries = {name: pa.array([f"{name}_{i}" for i in range(n)]) for name, n in CATEGORIES.items()}
    for part, start in enumerate(range(0, rows, CHUNK)):
        n = min(CHUNK, rows - start)
        columns: dict[str, pa.Array] = {}
        block = rng.standard_normal((N_NUMERIC, n), dtype=np.float32)
        for j in range(N_NUMERIC):
            values = block[j] * (1 + j % 7) + j
            if j % 10 == 0:
                values[rng.random(n) < 0.05] = np.nan
            columns[f"f{j:02d}"] = pa.array(values)
        for name, n_cat in CATEGORIES.items():
            codes = np.minimum(rng.zipf(1.5, n) - 1, n_cat - 1).astype(np.int32)
            columns[name] = pa.DictionaryArray.from_arrays(codes, dictionaries[name])
        columns["code"] = pa.array(rng.integers(0, 50, n, dtype=np.int32))
        pq.write_table(pa.table(columns), folder / f"part-{part:05d}.parquet")
    return time.perf_counter() - started


class Poller(threading.Thread):
    """Ray worker memory and object store bytes, polled every ``interval`` seconds.

    Worker processes are those whose /proc/<pid>/cmdline holds ``ray::`` (busy ones ``ray::<task>``, idle ones
    ``ray::IDLE``) and whose parent is this Ray's raylet (other Rays may run on the machine). That includes Ray's
    per-node agents (``ray::DashboardAgent``, ``ray::RuntimeEnvAgent``): counted too, conservatively. Reported: the peak
    of the summed VmRSS and RssAnon over all of them (idle workers included), the peak summed over busy workers,
    the largest single worker, the peak of the summed VmRSS plus the object store's bytes in use at the same
    moment (the store's latest poll), and the driver's (this process's) peak VmRSS.
    """

    def __init__(self, interval: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.interval = interval
        self.stop = threading.Event()
        self.peak_rss = self.peak_anon = self.peak_busy_rss = self.peak_store = 0
        self.peak_single_rss = self.peak_single_anon = 0
        self.peak_workers = 0
        self.peak_rss_plus_store = self.peak_driver_rss = 0
        self._store_now = 0
        self._state: Any = None
        self.raylet = _raylet_pid()
        if not self.raylet:
            raise RuntimeError("cannot find this Ray's raylet: refusing to count every ray:: process on the machine")
        self.created_before = self.store_stats().cumulative_created_bytes
        self.spilled_before = self.store_stats().spilled_bytes_total

    def store_stats(self) -> Any:
        """The raylet's object store stats (a protobuf ``ObjectStoreStats``)."""
        import ray
        from ray._private.internal_api import get_memory_info_reply, get_state_from_address

        if self._state is None:
            self._state = get_state_from_address(ray.get_runtime_context().gcs_address)
        return get_memory_info_reply(self._state, timeout_seconds=5).store_stats

    def _store_bytes(self) -> int:
        try:
            return int(self.store_stats().object_store_bytes_used)
        except Exception:
            return -1

    def _sample(self) -> None:
        rss = anon = busy = count = 0
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                if b"ray::" not in cmdline:
                    continue
                if self.raylet and Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1] != self.raylet:
                    continue  # another Ray on the machine (other jobs share this box)
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
            one = int(fields.get("VmRSS", "0 kB").split()[0]) * 1024
            one_anon = int(fields.get("RssAnon", "0 kB").split()[0]) * 1024
            rss, anon, count = rss + one, anon + one_anon, count + 1
            if b"ray::IDLE" not in cmdline:
                busy += one
            self.peak_single_rss = max(self.peak_single_rss, one)
            self.peak_single_anon = max(self.peak_single_anon, one_anon)
        self.peak_rss, self.peak_anon = max(self.peak_rss, rss), max(self.peak_anon, anon)
        self.peak_busy_rss = max(self.peak_busy_rss, busy)
        self.peak_workers = max(self.peak_workers, count)
        self.peak_rss_plus_store = max(self.peak_rss_plus_store, rss + max(self._store_now, 0))
        driver = Path("/proc/self/status").read_text().split("VmRSS:", 1)[1].split()[0]
        self.peak_driver_rss = max(self.peak_driver_rss, int(driver) * 1024)

    def run(self) -> None:
        tick = 0
        while not self.stop.is_set():
            if tick % 2 == 0:  # store stats are an RPC: every 0.4 s
                self._store_now = self._store_bytes()
                self.peak_store = max(self.peak_store, self._store_now)
            self._sample()
            tick += 1
            self.stop.wait(self.interval)


def _raylet_pid() -> str:
    """Our raylet's pid: Ray workers are its children, which tells them from other Rays' on the machine."""
    import ray._private.worker as worker

    node = worker._global_node
    return str(node.all_processes["raylet"][0].process.pid) if node is not None else ""


def floor_cpu_seconds(first: Path) -> float:
    """CPU seconds one process needs to read and profile one file: the work, without Ray.

    Measured in a child process with one BLAS/OpenMP thread, as Ray gives a 1-CPU worker (``OMP_NUM_THREADS``):
    with the default, OpenBLAS's spinning threads about double the CPU time for no gain in wall time. The child
    keeps the driver's RSS free of it. The second of two passes (warm) is the figure.
    """
    env = os.environ | {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, __file__, "--floor", str(first)], env=env, check=True,
                         capture_output=True, text=True).stdout
    return float(out.strip().splitlines()[-1])


def _floor_pass(first: Path) -> float:
    from rayml.monitoring.sketches import Profile

    seconds = 0.0
    for _ in range(2):
        started = time.process_time()
        table = pq.read_table(first)
        schema = {name: "numeric" for name in table.column_names} | dict.fromkeys([*CATEGORIES, "code"], "categorical")
        Profile(schema).update(table).serialize()
        seconds = time.process_time() - started
        del table
    return seconds


def run_once(job, source: str, rows: int, check: Path, floor_per_file: float) -> dict[str, Any]:
    poller = Poller()
    load_before = os.getloadavg()[0]
    poller.start()
    run = job.profile_parquet(source, categorical=["code"])
    poller.stop.set()
    poller.join()
    stats = poller.store_stats()
    created = stats.cumulative_created_bytes - poller.created_before
    spilled = stats.spilled_bytes_total - poller.spilled_before
    profile = run.profile
    assert profile.rows == rows, (profile.rows, rows)
    x = pq.read_table(check, columns=["f01"])["f01"].to_numpy().astype(np.float64)
    qs = [0.01, 0.1, 0.5, 0.9, 0.99]
    est = profile.quantiles("f01", qs)
    # rank error of the estimated quantiles, measured on the first file only (a sample of the same law)
    rank_err = float(np.max(np.abs(np.searchsorted(np.sort(x), est) / len(x) - np.array(qs))))
    return {
        "rows": rows, "features": len(profile.features), "partials": run.partials,
        "batches": run.batches, "fragments": run.fragments,
        "seconds": round(run.seconds, 2), "rows_per_s": round(rows / run.seconds),
        "load_avg_1m_before_after": [round(load_before, 1), round(os.getloadavg()[0], 1)],
        "floor_cpu_s": round(floor_per_file * len(list(Path(source).glob("*.parquet"))), 1),
        "peak_worker_rss_mb": round(poller.peak_rss / 2**20, 1),
        "peak_worker_anon_mb": round(poller.peak_anon / 2**20, 1),
        "peak_busy_worker_rss_mb": round(poller.peak_busy_rss / 2**20, 1),
        "peak_single_worker_rss_mb": round(poller.peak_single_rss / 2**20, 1),
        "peak_single_worker_anon_mb": round(poller.peak_single_anon / 2**20, 1),
        "peak_workers": poller.peak_workers,
        "peak_object_store_mb": round(poller.peak_store / 2**20, 2),
        "object_store_created_mb": round(created / 2**20, 2), "object_store_spilled_mb": round(spilled / 2**20, 2),
        "peak_worker_rss_plus_store_mb": round(poller.peak_rss_plus_store / 2**20, 1),
        "peak_driver_rss_mb": round(poller.peak_driver_rss / 2**20, 1),
        "profile_bytes": len(profile.serialize()), "kll_rank_error_bound": round(profile.rank_error, 5),
        "f01_quantile_rank_err_vs_first_file": round(rank_err, 5),
        "f00_missing_rate": round(profile.missing_rate("f00"), 4),
        "cat_1000_distinct": round(profile.distinct("cat_1000"), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--small", type=int, default=1_000_000)
    parser.add_argument("--keep", type=Path, default=None, help="Reuse/keep generated data in this folder.")
    parser.add_argument("--floor", type=Path, default=None, help=argparse.SUPPRESS)  # floor_cpu_seconds' child
    args = parser.parse_args()
    if args.floor is not None:
        print(_floor_pass(args.floor))
        return

    tmp = Path(tempfile.mkdtemp(prefix="profile-scale-"))
    if not os.environ.get("RAY_AUTH_TOKEN_PATH") and not os.environ.get("RAY_AUTH_TOKEN"):
        token = tmp / "auth_token"  # this run's own token, never ~/.ray/auth_token (as tests/conftest.py)
        token.write_text(secrets.token_hex(32))
        token.chmod(0o600)
        os.environ.update(RAY_AUTH_TOKEN_PATH=str(token), RAY_AUTH_MODE="token")  # before Ray is imported
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    from rayml.monitoring import profile_job as job

    data = args.keep or tmp / "data"
    try:
        full = data / "full"
        if not (full.exists() and len(list(full.glob("*.parquet"))) * CHUNK >= args.rows):
            print(json.dumps({"generate_rows": args.rows, "seconds": round(generate(full, args.rows), 1)}), flush=True)
        small = data / f"small-{args.small}"
        if not small.exists():
            small.mkdir(parents=True)
            for path in sorted(full.glob("*.parquet"))[: args.small // CHUNK]:
                os.link(path, small / path.name)
        first = sorted(full.glob("*.parquet"))[0]
        floor_per_file = floor_cpu_seconds(first)
        ray.init(num_cpus=2, include_dashboard=False, object_store_memory=500 * 2**20)
        try:
            results = []
            for folder, rows in ((small, args.small), (full, args.rows)):
                result = run_once(job, str(folder), rows, first, floor_per_file)
                results.append(result)
                print(json.dumps(result), flush=True)
            lo, hi = results
            print(json.dumps({
                "ratio_rows": hi["rows"] / lo["rows"],
                "ratio_peak_worker_rss": round(hi["peak_worker_rss_mb"] / lo["peak_worker_rss_mb"], 3),
                "ratio_peak_worker_anon": round(hi["peak_worker_anon_mb"] / lo["peak_worker_anon_mb"], 3),
                "ratio_peak_busy_worker_rss": round(hi["peak_busy_worker_rss_mb"] / lo["peak_busy_worker_rss_mb"], 3),
                "ratio_peak_single_worker_rss": round(
                    hi["peak_single_worker_rss_mb"] / lo["peak_single_worker_rss_mb"], 3),
                "ratio_peak_single_worker_anon": round(
                    hi["peak_single_worker_anon_mb"] / lo["peak_single_worker_anon_mb"], 3),
                # polled: the partials live in the store for milliseconds, so a poll may see none (then null)
                "ratio_peak_object_store": round(hi["peak_object_store_mb"] / lo["peak_object_store_mb"], 3)
                if lo["peak_object_store_mb"] > 0 else None,
                "ratio_object_store_created": round(
                    hi["object_store_created_mb"] / max(lo["object_store_created_mb"], 1e-9), 3),
                "ratio_peak_worker_rss_plus_store": round(
                    hi["peak_worker_rss_plus_store_mb"] / lo["peak_worker_rss_plus_store_mb"], 3),
                "ratio_peak_workers": round(hi["peak_workers"] / lo["peak_workers"], 3),
                "target_ratio": 1.2,
                "met_memory": hi["peak_worker_rss_plus_store_mb"] <= 1.2 * lo["peak_worker_rss_plus_store_mb"],
                "target_seconds_10M": 60, "met_seconds": hi["seconds"] <= 60,
            }), flush=True)
        finally:
            ray.shutdown()
    finally:
        if args.keep is None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
