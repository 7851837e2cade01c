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
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field

from rayml.config import StrictModel
from rayml.features.online import Lookup


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
        self._tables: list[pa.Table] = []
        self._rows = 0
        self.files_written = 0
        self.dropped_rows = 0  # rows lost to a failed write (counted, logged; the requests still succeed)

    def sampled(self) -> bool:
        return self._rng.random() < self.config.sample_rate

    def log(self, ts: float, keys: dict[str, np.ndarray], lookups: dict[str, Lookup]) -> None:
        """Log one request: ``keys`` are entity-key columns aligned by row; each lookup is prefixed by its name."""
        n = len(next(iter(keys.values())))
        columns: dict[str, pa.Array] = {
            "request_id": pa.array([uuid.uuid4().hex] * n),
            "ts": pa.array([dt.datetime.fromtimestamp(ts, dt.UTC).replace(tzinfo=None)] * n, pa.timestamp("us")),
        }
        columns.update({key: pa.array(np.asarray(ids, np.int64)) for key, ids in keys.items()})
        for prefix, lookup in lookups.items():
            for name, values in lookup.columns.items():
                values = np.repeat(values, n) if len(values) == 1 and n > 1 else values
                array = pa.array(values, from_pandas=True)
                # All missing (e.g. Redis returns NaN for a string feature nobody has): the null type, which
                # concatenation promotes to whatever type the other requests' values have.
                columns[f"{prefix}.{name}"] = pa.nulls(len(array)) if array.null_count == len(array) else array
        table = pa.table(columns)
        with self._lock:
            self._tables.append(table)
            self._rows += n
            if self._rows >= self.config.flush_rows:
                buffered = self._rows
                try:
                    self._write_locked()
                except (OSError, pa.ArrowException) as exc:  # the log is best effort: never fail the request
                    self.dropped_rows += buffered
                    self._tables, self._rows = [], 0
                    logger.error("served-feature log: dropped a buffer (%s: %s)", type(exc).__name__, exc)

    def flush(self) -> None:
        with self._lock:
            self._write_locked()

    def _write_locked(self) -> None:
        if not self._tables:
            return
        table = pa.concat_tables(self._tables, promote_options="default")
        self._tables, self._rows = [], 0
        day = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")
        folder = self.path / f"date={day}"
        folder.mkdir(parents=True, exist_ok=True)
        name = f"part-{uuid.uuid4().hex}.parquet"
        tmp = folder / f".{name}.tmp"
        pq.write_table(table, tmp)
        os.replace(tmp, folder / name)
        self.files_written += 1
