"""Sharded, exactly-once batch output on any pyarrow filesystem.

Every input file is a shard. Its output has a deterministic name derived from the input's relative path, and is
committed atomically: written to a temporary name and renamed on a local filesystem, written in one PUT on an
object store (where an object only appears once complete). A restarted job skips shards whose output exists, so
a job killed at any point and run again writes each shard exactly once.
"""

from __future__ import annotations

import json
import os
import re
import resource
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from rayml.registry import ModelRegistry, ModelVersion, RegistryError

LOCAL = pafs.LocalFileSystem()


def resolve_fs(location: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path) of a local path or a URI (``s3://``, ``gs://``, ``file://``, ``mock://`` …)."""
    if "://" in location:
        return pafs.FileSystem.from_uri(location)
    return pafs.LocalFileSystem(), str(Path(location).expanduser().resolve())


@dataclass(frozen=True)
class Shard:
    path: str  # on the input filesystem
    shard_id: str  # deterministic, filesystem-safe: the relative path with separators replaced

    @property
    def output_name(self) -> str:
        return f"part-{self.shard_id}.parquet"


def list_shards(fs: pafs.FileSystem, root: str) -> list[Shard]:
    """Parquet files under ``root`` (or ``root`` itself), sorted; hidden and ``_`` files are skipped."""
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"input {root} does not exist")
    if info.type == pafs.FileType.File:
        return [Shard(root, _safe_id(Path(root).name))]
    files = fs.get_file_info(pafs.FileSelector(root, recursive=True))
    shards = []
    for f in files:
        rel = f.path[len(root.rstrip("/")) + 1 :]
        if f.type != pafs.FileType.File or not rel.endswith(".parquet"):
            continue
        if any(part.startswith((".", "_")) for part in rel.split("/")):
            continue
        shards.append(Shard(f.path, _safe_id(rel)))
    if not shards:
        raise FileNotFoundError(f"input {root} holds no Parquet files")
    return sorted(shards, key=lambda s: s.shard_id)


def _safe_id(relative: str) -> str:
    return re.sub(r"[^A-Za-z0-9=._-]", "__", relative.removesuffix(".parquet"))


def committed_outputs(fs: pafs.FileSystem, root: str) -> set[str]:
    """Names of the committed ``part-*.parquet`` files in ``root`` (none when it does not exist)."""
    if fs.get_file_info(root).type == pafs.FileType.NotFound:
        return set()
    return {f.base_name for f in fs.get_file_info(pafs.FileSelector(root)) if f.base_name.startswith("part-")
            and f.base_name.endswith(".parquet")}


_TEMPORARY = re.compile(r"^\..+\.[0-9a-f]{8}\.tmp$")  # AtomicParquetWriter's names on a local filesystem


def remove_stale_temporaries(fs: pafs.FileSystem, root: str) -> int:
    """Delete the temporaries a killed attempt left under ``root`` (a writer SIGKILLed mid-shard never renames or
    removes its file); returns how many. Call it when a job starts, before any writer of this attempt opens one:
    the job owns its output. Object stores write in one PUT and leave none."""
    if not isinstance(fs, pafs.LocalFileSystem) or fs.get_file_info(root).type == pafs.FileType.NotFound:
        return 0
    stale = [f.path for f in fs.get_file_info(pafs.FileSelector(root, recursive=True))
             if f.type == pafs.FileType.File and _TEMPORARY.match(f.base_name)]
    for path in stale:
        fs.delete_file(path)
    return len(stale)


class AtomicParquetWriter:
    """Stream record batches to ``path``; nothing is visible there until :meth:`commit`."""

    def __init__(self, fs: pafs.FileSystem, path: str, schema: pa.Schema) -> None:
        self.fs, self.path = fs, path
        self.local = isinstance(fs, pafs.LocalFileSystem)
        parent = path.rsplit("/", 1)[0]
        fs.create_dir(parent, recursive=True)
        self.tmp = f"{parent}/.{path.rsplit('/', 1)[1]}.{uuid.uuid4().hex[:8]}.tmp" if self.local else path
        self._stream = fs.open_output_stream(self.tmp)
        self._writer = pq.ParquetWriter(self._stream, schema)
        self.rows = 0

    def write(self, table: pa.Table) -> None:
        self._writer.write_table(table)
        self.rows += table.num_rows

    def commit(self) -> None:
        self._writer.close()
        self._stream.close()
        if self.local:
            self.fs.move(self.tmp, self.path)  # rename(2): atomic on one filesystem

    def abort(self) -> None:
        try:
            self._writer.close()
            self._stream.close()
        finally:
            self.fs.delete_file(self.tmp)  # on an object store the stream's close uploaded it: remove it again


def _in_job_working_dir() -> bool:
    """True in a `ray job submit --working-dir` driver, whose cwd is a temporary copy of that dir."""
    raw = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")
    if not raw:
        return False
    try:
        return bool(json.loads(raw).get("runtime_env", {}).get("working_dir"))
    except (ValueError, AttributeError):
        return False


def refuse_relative_paths_in_job(paths: dict[str, str]) -> None:
    """Under `ray job submit --working-dir`, relative paths point into a temporary copy: refuse them up front."""
    if not _in_job_working_dir():
        return
    relative = [k for k, v in paths.items() if "://" not in v and not Path(v).is_absolute()]
    if relative:
        raise ValueError(
            f"keys {relative} are relative paths; under `ray job submit` they would point into the job's "
            "temporary working_dir copy (and the output would be lost): pass absolute paths or URIs"
        )


class ShardWorker:
    """Base of a Ray Data actor that processes whole shards: stream the input's record batches through
    :meth:`process`, write the results to the shard's output, commit it, and return one stats row per shard.

    Subclasses set ``output_schema``, ``columns`` (input columns read) and implement :meth:`process`; they may
    override :meth:`before_commit` to commit side outputs (e.g. rejects) just before the shard's own commit.
    """

    output_schema: pa.Schema
    columns: list[str]

    def __init__(self, input_uri: str, output_uri: str, batch_size: int) -> None:
        self.in_fs, _ = resolve_fs(input_uri)
        self.out_fs, self.out_root = resolve_fs(output_uri)
        self.batch_size = batch_size

    def process(self, table: pa.Table, shard: Shard) -> pa.Table:
        raise NotImplementedError

    def before_commit(self, shard: Shard) -> dict[str, int]:
        return {}

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        stats = [self.run_shard(Shard(str(p), str(s))) for p, s in zip(batch["path"], batch["shard_id"], strict=True)]
        return {key: np.array([row[key] for row in stats]) for key in stats[0]}

    def run_shard(self, shard: Shard) -> dict[str, Any]:
        started = time.perf_counter()
        out = AtomicParquetWriter(self.out_fs, f"{self.out_root}/{shard.output_name}", self.output_schema)
        rows_in = 0
        try:
            with self.in_fs.open_input_file(shard.path) as handle:
                for record_batch in pq.ParquetFile(handle).iter_batches(self.batch_size, columns=self.columns):
                    table = pa.Table.from_batches([record_batch])
                    rows_in += table.num_rows
                    out.write(self.process(table, shard))
            extra = self.before_commit(shard)
            out.commit()  # the shard's commit point
        except BaseException:
            out.abort()
            raise
        return {"shard_id": shard.shard_id, "rows_in": rows_in, "rows_out": out.rows, **extra,
                "seconds": time.perf_counter() - started,
                "worker_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "node_id": _node_id()}


def _node_id() -> str:
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""


def worker_error(exc: BaseException, *kinds: type[Exception]) -> Exception | None:
    """The first error of one of ``kinds`` behind ``exc``: raised here, or in a Ray worker (then Ray wraps it, and
    only its ``Name: message`` line survives in the wrapper's text). None when the job stopped for another reason."""
    seen: BaseException | None = exc
    while seen is not None:
        for kind in kinds:
            if isinstance(seen, kind):
                return seen
        message = str(seen)
        for kind in kinds:
            if f"{kind.__name__}: " in message:
                return kind(message.split(f"{kind.__name__}: ", 1)[-1].strip().splitlines()[0])
        seen = seen.__cause__ or seen.__context__
    return None


def load_model(registry: str, model: str, version: int) -> ModelVersion:
    """A verified model version for a worker, read through ``registry`` (its location: a URI or an absolute path).

    On a remote registry the files are downloaded into this node's cache. A worker that cannot read the registry
    (a local path that exists only on the driver's machine) raises a RegistryError naming the node.
    """
    try:
        return ModelRegistry(registry).get(model, version)
    except RegistryError as exc:
        import ray

        where = f"Ray node {ray.util.get_node_ip_address()} ({_node_id()})" if ray.is_initialized() else "this worker"
        raise RegistryError(f"{where} cannot load {model} v{version}: {exc}") from None


def run_sharded(worker: type[ShardWorker], kwargs: dict[str, Any], shards: list[Shard], pool: Any) -> tuple[
    list[dict[str, Any]], str
]:
    """Run ``worker`` over ``shards`` on a Ray Data actor pool (``pool``: an ``ActorPool`` config).

    Only shard names travel through Ray; the rows stay in the actors. Returns per-shard stats and ``ds.stats()``.
    """
    import ray
    from ray.data import ActorPoolStrategy

    ds = ray.data.from_items([{"path": s.path, "shard_id": s.shard_id} for s in shards], override_num_blocks=len(shards))
    done = ds.map_batches(
        worker,
        fn_constructor_kwargs=kwargs,
        batch_size=1,
        compute=ActorPoolStrategy(min_size=min(pool.min_size, len(shards)), max_size=min(pool.max_size, len(shards))),
        num_cpus=pool.num_cpus,
        num_gpus=pool.num_gpus or None,
        resources=pool.resources or None,
    )
    rows = [{k: (v.item() if hasattr(v, "item") else v) for k, v in r.items()} for r in done.take_all()]
    return rows, done.stats()
