"""Profile the features of a Parquet dataset on Ray into one mergeable profile (DataSketches).

A fixed pool of actors reads the files (whole Arrow columns into the sketches, no per-row Python), each folding
its batches into one running profile; the driver merges the pool's few partials, so the worker processes, the
object store and each worker's memory stay flat however many rows and files there are.
The job's entry point is ``batch_jobs/profile_features.py``.
"""

from __future__ import annotations

import ctypes
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs

from rayml.config import ConfigError
from rayml.monitoring.sketches import (
    CATEGORICAL,
    DEFAULT_K,
    DEFAULT_LG_K,
    DEFAULT_LG_MAX_K,
    NUMERIC,
    Profile,
    infer_kind,
)

DEFAULT_BATCH_ROWS = 262_144  # rows per batch read from Parquet: large enough that per-batch Python is noise


@dataclass
class ProfileRun:
    """A finished profiling run: the merged profile, the partials merged (one per actor), the batches and
    fragments (files, or row groups) read, and the wall time."""

    profile: Profile
    partials: int
    batches: int
    fragments: int
    seconds: float
    source: str

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "rows": self.profile.rows, "features": len(self.profile.features),
                "partials": self.partials, "batches": self.batches, "fragments": self.fragments,
                "seconds": round(self.seconds, 3), "k": self.profile.k,
                "rank_error": round(self.profile.rank_error, 6)}


def parquet_dataset(source: str) -> pads.Dataset:
    """The Parquet dataset at ``source`` (a file or directory, local or a pyarrow URI; hive partitions)."""
    return pads.dataset(source, format="parquet", partitioning="hive")


def feature_schema(source: str, columns: Sequence[str] | None = None, categorical: Sequence[str] = (),
                   numeric: Sequence[str] = ()) -> dict[str, str]:
    """Feature → kind for a Parquet dataset, from its metadata: inferred kinds, overridden by ``categorical``
    and ``numeric``; ``columns`` restricts the features. Columns of unsupported types are skipped."""
    arrow_schema = parquet_dataset(source).schema
    names = list(columns) if columns else arrow_schema.names
    unknown = [c for c in [*names, *categorical, *numeric] if c not in arrow_schema.names]
    if unknown:
        raise ConfigError(f"--source {source}: no columns {sorted(set(unknown))} (have {arrow_schema.names})")
    schema: dict[str, str] = {}
    for name in names:
        kind = CATEGORICAL if name in categorical else NUMERIC if name in numeric else infer_kind(
            arrow_schema.field(name).type)
        if kind is not None:
            schema[name] = kind
    if not schema:
        raise ConfigError(f"--source {source}: no column of a numeric or categorical type to profile")
    return schema


def profile_parquet(source: str, *, columns: Sequence[str] | None = None, categorical: Sequence[str] = (),
                    numeric: Sequence[str] = (), k: int = DEFAULT_K, lg_max_k: int = DEFAULT_LG_MAX_K,
                    lg_k: int = DEFAULT_LG_K, batch_size: int | None = None, num_cpus: float = 1.0,
                    concurrency: int | None = None) -> ProfileRun:
    """Profile ``source`` (a Parquet file or directory, local or a pyarrow URI) on the current Ray.

    A fixed pool of ``concurrency`` actors (``num_cpus`` each; default: as many as the cluster's CPUs hold, at
    most one per file) reads the files, one file per call handed to whichever started actor is free, and folds
    every batch of ``batch_size`` rows into the actor's one running profile. Rows never leave the actor that read
    them; each actor returns its profile once, at the end, and the driver merges those as they arrive. So the
    number of worker processes, the object store (at most ``concurrency`` partials of ~1.4 MB) and each worker's
    memory (one file's row group being read) do not grow with the row count. A file with many row groups is split
    by row group when there are fewer files than actors. ``partials`` in the result counts the actors that got
    work (on a busy cluster, fewer than ``concurrency`` may start in time).
    """
    import ray

    started = time.perf_counter()
    schema = feature_schema(source, columns, categorical, numeric)
    params = {"k": k, "lg_max_k": lg_max_k, "lg_k": lg_k}
    if batch_size is not None and batch_size < 1:
        raise ConfigError(f"batch_size: must be at least 1, got {batch_size}")
    if num_cpus <= 0:
        raise ConfigError(f"num_cpus: must be positive, got {num_cpus}")
    dataset = parquet_dataset(source)
    units: list[pads.Fragment] = list(dataset.get_fragments())
    if concurrency is None:
        concurrency = max(1, int(ray.cluster_resources().get("CPU", 0.0) // num_cpus))
    if concurrency < 1:
        raise ConfigError(f"concurrency: must be at least 1, got {concurrency}")
    if len(units) < concurrency:
        units = [piece for fragment in units for piece in fragment.split_by_row_group()]
    pool = min(concurrency, max(len(units), 1))
    names, dataset_schema, rows_per_batch = list(schema), dataset.schema, batch_size or DEFAULT_BATCH_ROWS

    class ProfileFold:  # defined here: it closes over this run's schema and sketch parameters
        """One running profile; ``fold`` adds a file (or row group) batch by batch, ``result`` returns it."""

        def __init__(self) -> None:
            self.profile = Profile(schema, **params)
            self.batches = 0
            try:
                self.malloc_trim: Any = ctypes.CDLL(None).malloc_trim  # glibc only
            except (OSError, AttributeError):
                self.malloc_trim = None

        def fold(self, unit: pads.Fragment) -> int:
            scanner = pads.Scanner.from_fragment(unit, schema=dataset_schema, columns=names,
                                                 batch_size=rows_per_batch, batch_readahead=1)
            for batch in scanner.to_batches():
                self.profile.update(batch)
                self.batches += 1
                del batch
            del scanner
            # Hand decoded buffers back between files: Arrow's pool, then glibc's heap (numpy's float64
            # copies), which otherwise keeps freed pages and lets a long-lived actor's RSS creep up.
            pa.default_memory_pool().release_unused()
            if self.malloc_trim is not None:
                self.malloc_trim(0)
            return self.batches

        def ready(self) -> bool:
            return True

        def result(self) -> tuple[bytes, int]:
            return self.profile.serialize(), self.batches

    actors: list[Any] = [ray.remote(num_cpus=num_cpus)(ProfileFold).remote() for _ in range(pool)]
    try:
        # Work goes only to actors that have started: on a busy cluster some may wait for a CPU for long, and
        # files queued on them would stall the run. Each started actor holds two calls, so it begins the next
        # file without a round trip; then it gets one more file whenever one finishes.
        queue = deque(units)
        starting = {actor.ready.remote(): actor for actor in actors}
        running: dict[Any, Any] = {}  # fold ref → its actor
        working: list[Any] = []
        while running or (queue and starting):
            [done], _ = ray.wait([*running, *starting], num_returns=1)
            if done in starting:
                actor = starting.pop(done)
                ray.get(done)  # raises if the actor could not start
                if queue:
                    working.append(actor)
                calls = 2
            else:
                actor = running.pop(done)
                ray.get(done)  # raises the actor's error (a ProfileError names the feature)
                calls = 1
            for _ in range(calls):
                if queue:
                    running[actor.fold.remote(queue.popleft())] = actor
        merged = Profile(schema, **params)
        batches = 0
        results = [actor.result.remote() for actor in working]
        while results:  # merged as they arrive, so at most the pool's partials are ever in the object store
            [done], results = ray.wait(results, num_returns=1)
            data, n = ray.get(done)
            merged.merge(Profile.deserialize(data))
            batches += n
            del data, done
    finally:
        for actor in actors:
            ray.kill(actor)  # free the processes now, not when the handles are collected
    return ProfileRun(merged, len(working), batches, len(units), time.perf_counter() - started, source)


def write_profile(profile: Profile, out: str) -> str:
    """Write the serialized profile to a local path or pyarrow URI (write then rename); returns the path."""
    if "://" in out:
        fs, path = pafs.FileSystem.from_uri(out)
    else:
        fs, path = pafs.LocalFileSystem(), str(Path(out).expanduser().resolve())
    parent = path.rsplit("/", 1)[0]
    if parent:
        fs.create_dir(parent, recursive=True)
    tmp = f"{path}.tmp-{time.time_ns()}"
    with fs.open_output_stream(tmp) as fh:
        fh.write(profile.serialize())
    fs.move(tmp, path)
    return out
