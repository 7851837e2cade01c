"""Served-feature logging: a sample of the exact raw feature values serving used, for the skew check.

Rows are ``request_id, ts, <entity keys>, <view>.<feature>…, rt.<entity>.<feature>…``, one per (request, item),
buffered and written as ``<path>/date=YYYY-MM-DD/part-<uuid>.parquet`` (write then rename, so readers never see a
partial file). Sampling is per request, so a logged request keeps all of its candidates.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import random
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field

from rayml.config import StrictModel
from rayml.features.online import Lookup

MAX_PENDING_WRITES = 2  # buffers waiting for the writer thread before new ones are dropped


class FeatureLogConfig(StrictModel):
    path: str = Field(description="Directory of the served-feature log (date-partitioned Parquet).")
    sample_rate: float = Field(0.01, ge=0, le=1, description="Share of requests whose features are logged.")
    flush_rows: int = Field(10_000, ge=1, description="Rows buffered before a file is written.")


logger = logging.getLogger(__name__)


class FeatureLogger:
    """Thread-safe sampled logger; call :meth:`flush` on shutdown."""

    def __init__(self, config: FeatureLogConfig, seed: int | None = None) -> None:
        self.config = config
        self.path = Path(config.path)
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._requests: list[tuple[str, float, int, dict[str, np.ndarray]]] = []  # (request id, ts, rows, columns)
        self._rows = 0
        self.files_written = 0
        self.dropped_rows = 0  # rows lost to a failed write (counted, logged; the requests still succeed)
        self._pending = 0  # writes submitted and not finished
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="feature-log")  # one file at a time

    def sampled(self) -> bool:
        return self._rng.random() < self.config.sample_rate

    def log(self, ts: float, keys: dict[str, np.ndarray], lookups: dict[str, Lookup]) -> None:
        """Log one request: ``keys`` are entity-key columns aligned by row; each lookup is prefixed by its name.

        The request's arrays are only buffered here (copied, so a later in-place update of a window cannot change
        them); the Arrow table is built once per flush, a column at a time, not once per request.
        """
        n = len(next(iter(keys.values())))
        columns: dict[str, np.ndarray] = {key: np.asarray(ids, np.int64).copy() for key, ids in keys.items()}
        for prefix, lookup in lookups.items():
            for name, values in lookup.columns.items():
                values = np.asarray(values)
                columns[f"{prefix}.{name}"] = np.repeat(values, n) if len(values) == 1 and n > 1 else values.copy()
        with self._lock:
            self._requests.append((uuid.uuid4().hex, ts, n, columns))
            self._rows += n
            if self._rows < self.config.flush_rows:
                return
            requests, rows = self._take_locked()
            if self._pending >= MAX_PENDING_WRITES:  # the disk is far behind: drop rather than grow or block
                self.dropped_rows += rows
                logger.error("served-feature log: %d writes pending, dropped a buffer of %d rows", self._pending, rows)
                return
            self._pending += 1
        self._writer.submit(self._write, requests, rows)  # off the request path: the response never waits

    def flush(self) -> None:
        """Write what is buffered and wait for every pending write (shutdown, tests). Never raises."""
        with self._lock:
            requests, rows = self._take_locked()
            self._pending += 1
        self._writer.submit(self._write, requests, rows).result()

    def _take_locked(self) -> tuple[list[tuple[str, float, int, dict[str, np.ndarray]]], int]:
        requests, rows = self._requests, self._rows
        self._requests, self._rows = [], 0
        return requests, rows

    def _write(self, requests: list[tuple[str, float, int, dict[str, np.ndarray]]], rows: int) -> None:
        """On the writer thread: one Parquet file; a failure drops the buffer (counted, logged)."""
        try:
            if not requests:
                return
            table = buffered_table(requests)
            day = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")
            folder = self.path / f"date={day}"
            folder.mkdir(parents=True, exist_ok=True)
            name = f"part-{uuid.uuid4().hex}.parquet"
            tmp = folder / f".{name}.tmp"
            pq.write_table(table, tmp)
            os.replace(tmp, folder / name)
            with self._lock:
                self.files_written += 1
        except (OSError, pa.ArrowException, ValueError) as exc:  # best effort: never fail a request
            with self._lock:
                self.dropped_rows += rows
            logger.error("served-feature log: dropped a buffer (%s: %s)", type(exc).__name__, exc)
        finally:
            with self._lock:
                self._pending -= 1


def buffered_table(requests: list[tuple[str, float, int, dict[str, np.ndarray]]]) -> pa.Table:
    """One table of buffered requests: ``request_id``, ``ts``, then every column in first-seen order.

    A column a request lacks is null in its rows. Missing values (None, NaN) are null, and a column no request has
    a value of is of the null type; a string feature that one request got as all-NaN floats (what Redis answers
    when no entity has it) is still a string column, with nulls there.
    """
    sizes = np.array([n for _, _, n, _ in requests])
    micros = np.round(np.array([ts for _, ts, _, _ in requests]) * 1e6).astype(np.int64)
    out: dict[str, pa.Array] = {
        "request_id": pa.array(np.repeat(np.array([rid for rid, _, _, _ in requests], dtype=object), sizes)),
        "ts": pa.array(np.repeat(micros, sizes), pa.int64()).cast(pa.timestamp("us")),
    }
    names = list(dict.fromkeys(name for _, _, _, columns in requests for name in columns))
    for name in names:
        parts = [columns[name] if name in columns else np.full(n, None, dtype=object)
                 for _, _, n, columns in requests]
        kinds = {part.dtype.kind for part in parts}
        if (len(kinds) == 1 and "O" not in kinds) or kinds <= {"i", "u", "f"}:
            values = np.concatenate(parts)
        else:  # strings, or a mix: one object column (NaN and None become nulls)
            values = np.concatenate([part.astype(object) for part in parts])
        array = pa.array(values, from_pandas=True)
        out[name] = pa.nulls(len(array)) if array.null_count == len(array) else array
    return pa.table(out)
