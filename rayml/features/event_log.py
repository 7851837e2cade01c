"""The offline side of the event stream: ingested events appended as Parquet, same layout as the world's log.

Each ingested batch becomes ``<path>/date=YYYY-MM-DD/part-<uuid>.parquet`` (written then renamed) before the
ingestion call returns, so an acknowledged event is never lost and the skew check and retraining can replay it.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from rayml.features.realtime import Events

SCHEMA = pa.schema([("user_id", pa.int64()), ("item_id", pa.int64()), ("ts", pa.timestamp("us")), ("clicked", pa.bool_())])


def append_events(path: str | Path, events: Events) -> list[Path]:
    """Write ``events`` into their date partitions under ``path``; returns the files written."""
    ts_us = np.round(np.asarray(events.ts, np.float64) * 1e6).astype("datetime64[us]")
    table = pa.table({"user_id": events.user_id, "item_id": events.item_id, "ts": ts_us, "clicked": events.clicked},
                     schema=SCHEMA)
    days = ts_us.astype("datetime64[D]").astype(str)
    written = []
    for day in np.unique(days):
        folder = Path(path) / f"date={day}"
        folder.mkdir(parents=True, exist_ok=True)
        name = f"part-{uuid.uuid4().hex}.parquet"
        tmp = folder / f".{name}.tmp"
        pq.write_table(table.filter(pa.array(days == day)), tmp)
        os.replace(tmp, folder / name)
        written.append(folder / name)
    return written


def read_events(path: str | Path) -> Events:
    """Every event under ``path`` (an ingestion log or a world's ``events/``), as epoch seconds."""
    table = ds.dataset(str(path), format="parquet", partitioning="hive").to_table(columns=list(SCHEMA.names))
    ts = table["ts"].cast(pa.timestamp("us")).to_numpy().astype("datetime64[us]").astype(np.int64) / 1e6
    return Events(
        user_id=table["user_id"].to_numpy(),
        item_id=table["item_id"].to_numpy(),
        ts=ts,
        clicked=table["clicked"].to_numpy(zero_copy_only=False),
    )
