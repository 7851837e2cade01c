"""Offline store: feature history from Parquet and point-in-time correct joins.

A history table has one row per (entity, valid_from): the value an entity's features took from that time on.
A point-in-time join gives each event the latest row whose ``valid_from <= event time`` (never a later one),
optionally no older than a TTL.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.dataset as ds


def read_history(source: str | Path, key: str, timestamp: str = "valid_from") -> pd.DataFrame:
    """A feature history from Parquet: a hive-partitioned ``timestamp=YYYY-MM-DD`` directory or a file/dir with
    a ``timestamp`` column. Returns a frame with ``timestamp`` as datetime64, sorted by (timestamp, key)."""
    dataset = ds.dataset(str(source), format="parquet", partitioning="hive")
    frame = dataset.to_table().to_pandas()
    if timestamp not in frame.columns:
        raise KeyError(f"{source}: no column or partition {timestamp!r} holding validity times")
    frame[timestamp] = pd.to_datetime(frame[timestamp].astype(str) if frame[timestamp].dtype == object
                                      or isinstance(frame[timestamp].dtype, pd.CategoricalDtype) else frame[timestamp])
    frame[key] = frame[key].astype(np.int64)
    return frame.sort_values([timestamp, key], kind="stable").reset_index(drop=True)


def _as_us(values: np.ndarray) -> np.ndarray:
    """Timestamps at one resolution (merge_asof refuses mixed ``[s]`` and ``[us]`` keys)."""
    return np.asarray(pd.to_datetime(values)).astype("datetime64[us]")


def point_in_time_rows(
    history_keys: np.ndarray,
    history_ts: np.ndarray,
    event_keys: np.ndarray,
    event_ts: np.ndarray,
    ttl: np.timedelta64 | None = None,
) -> np.ndarray:
    """For each event, the index of the history row valid at its time, or -1 when there is none. [E] int64.

    A row is valid for an event when its key matches, ``row_ts <= event_ts`` and (with ``ttl``)
    ``event_ts - row_ts <= ttl``. Among valid rows the latest wins.
    """
    history = pd.DataFrame({"key": np.asarray(history_keys, np.int64), "ts": _as_us(history_ts),
                            "row": np.arange(len(history_keys), dtype=np.int64)})
    events = pd.DataFrame({"key": np.asarray(event_keys, np.int64), "ts": _as_us(event_ts),
                           "order": np.arange(len(event_keys), dtype=np.int64)})
    history = history.sort_values("ts", kind="stable")
    events = events.sort_values("ts", kind="stable")
    joined = pd.merge_asof(
        events, history, on="ts", by="key", direction="backward", allow_exact_matches=True,
        tolerance=pd.Timedelta(ttl) if ttl is not None else None,
    )
    out = np.full(len(event_keys), -1, np.int64)
    matched = joined["row"].notna().to_numpy()
    out[joined["order"].to_numpy()[matched]] = joined["row"].to_numpy()[matched].astype(np.int64)
    return out


def get_historical_features(
    entity_df: pd.DataFrame,
    history: pd.DataFrame,
    *,
    key: str,
    event_timestamp: str = "event_timestamp",
    timestamp: str = "valid_from",
    features: list[str] | None = None,
    ttl: np.timedelta64 | None = None,
) -> pd.DataFrame:
    """``entity_df`` (key, event time, ...) with each row's features as of its event time, in the input order.

    Events with no valid history row get missing values (NaN / None) and ``feature_missing = True``.
    """
    for column in (key, event_timestamp):
        if column not in entity_df.columns:
            raise KeyError(f"entity_df lacks column {column!r}")
    features = features or [c for c in history.columns if c not in (key, timestamp)]
    unknown = [f for f in features if f not in history.columns]
    if unknown:
        raise KeyError(f"unknown features {unknown}; the history has {sorted(set(history.columns) - {key, timestamp})}")
    rows = point_in_time_rows(history[key].to_numpy(), history[timestamp].to_numpy(),
                              entity_df[key].to_numpy(), entity_df[event_timestamp].to_numpy(), ttl)
    found = rows >= 0
    picked = history[features].iloc[np.where(found, rows, 0)].reset_index(drop=True)
    picked = picked.mask(np.repeat(~found[:, None], len(features), axis=1)) if len(picked) else picked
    out = entity_df.reset_index(drop=True).copy()
    for name in features:
        out[name] = picked[name].to_numpy()
    out["feature_missing"] = ~found
    return out
