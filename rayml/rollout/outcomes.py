"""The outcome log: served requests joined to later clicks, per arm, per user.

Two date-partitioned Parquet logs (the feature store's layout: ``<path>/<log>/date=YYYY-MM-DD/part-<uuid>.parquet``,
written to a temp name and renamed):

- ``requests``: one row per answered request of a running rollout: ``request_id, ts, rollout, user_id, arm,
  model_version, status, latency_ms, items, scores`` (the item ids served, in order, and the ranker's click
  probabilities for them; ``scores`` is null in logs written before it existed). The canary's requests are all
  logged; production's for a ``production_log_sample`` share of users (by user hash, so a logged user's totals
  are complete). Failed requests are logged too (no items), for the error guardrail. Outside a rollout the
  monitor's ``outcome_sample`` of users is logged with ``rollout`` empty, for delayed-label performance, and an
  A/B experiment's users with their ``experiment`` and ``experiment_arm`` (null otherwise).
- ``clicks``: ``request_id, ts, user_id, item_id`` from ``POST /events`` clicks that carry a ``request_id``.

:meth:`OutcomeLog.gate_inputs` joins them: a click counts for an impression when it names the request, the item
was served in it, and it came within ``attribution_window_s`` of the request. Only *mature* requests count (older
than the window), so a freshly ramped canary is not judged on impressions whose clicks have not arrived yet.
Clicks naming an unknown ``request_id`` are counted and ignored. The result is a pure function of the log and the
cut-off times, so a restarted controller computes exactly what an uninterrupted one would have.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

if TYPE_CHECKING:  # the gates (and their scipy) load where a controller joins the log, not in a serving replica
    from rayml.rollout.gates import ArmStats, GateInputs

logger = logging.getLogger(__name__)

REQUESTS_SCHEMA = pa.schema([
    ("request_id", pa.string()), ("ts", pa.float64()), ("rollout", pa.string()), ("user_id", pa.int64()),
    ("arm", pa.string()), ("model_version", pa.string()), ("status", pa.int16()), ("latency_ms", pa.float32()),
    ("items", pa.list_(pa.int64())), ("scores", pa.list_(pa.float32())), ("experiment", pa.string()),
    ("experiment_arm", pa.string()),
])
CLICKS_SCHEMA = pa.schema([
    ("request_id", pa.string()), ("ts", pa.float64()), ("user_id", pa.int64()), ("item_id", pa.int64()),
])


class OutcomeLogger:
    """Thread-safe buffered writer of both logs; a buffer is written at ``flush_rows`` rows or when
    :meth:`flush_due` finds it older than ``flush_s`` (the replica's poll thread calls it).

    A request only appends a row under the buffer's lock: the Parquet write happens after the buffer is swapped
    out, under a lock of its own, so a request never waits for a write of the poll thread's.
    """

    def __init__(self, path: str | Path, flush_rows: int = 5_000, flush_s: float = 2.0) -> None:
        self.path = Path(path)
        self.flush_rows, self.flush_s = flush_rows, flush_s
        self._lock = threading.Lock()  # the buffers
        self._write_lock = threading.Lock()  # one writer at a time (files_written, dropped_rows)
        self._rows: dict[str, list[tuple]] = {"requests": [], "clicks": []}
        self._since = time.monotonic()
        self.dropped_rows = 0
        self.files_written = 0

    def served(self, request_id: str, ts: float, rollout: str, user_id: int, arm: str, model_version: str,
               status: int, latency_ms: float, items: list[int], scores: list[float] | None = None,
               experiment: str | None = None, experiment_arm: str | None = None) -> None:
        self._add("requests", (request_id, ts, rollout, int(user_id), arm, model_version, int(status),
                               float(latency_ms), list(items), None if scores is None else list(scores),
                               experiment, experiment_arm))

    def clicked(self, request_id: str, ts: float, user_id: int, item_id: int) -> None:
        self._add("clicks", (request_id, ts, int(user_id), int(item_id)))

    def _add(self, log: str, row: tuple) -> None:
        with self._lock:
            buffer = self._rows[log]
            buffer.append(row)
            if len(buffer) < self.flush_rows:
                return
            self._rows[log] = []
        self._write(log, buffer)  # a full buffer: rare (the poll thread flushes every flush_s)

    def flush_due(self) -> None:
        if time.monotonic() - self._since >= self.flush_s:
            self.flush()

    def flush(self) -> None:
        with self._lock:
            taken = self._rows
            self._rows = {log: [] for log in taken}
            self._since = time.monotonic()
        for log, rows in taken.items():
            self._write(log, rows)

    def _write(self, log: str, rows: list[tuple]) -> None:
        if not rows:
            return
        schema = REQUESTS_SCHEMA if log == "requests" else CLICKS_SCHEMA
        with self._write_lock:
            try:
                columns = zip(*rows, strict=True)  # a column at a time: no dict per row
                table = pa.Table.from_arrays([pa.array(list(values), type=field.type)
                                              for values, field in zip(columns, schema, strict=True)], schema=schema)
                day = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")
                folder = self.path / log / f"date={day}"
                folder.mkdir(parents=True, exist_ok=True)
                name = f"part-{uuid.uuid4().hex}.parquet"
                tmp = folder / f".{name}.tmp"
                pq.write_table(table, tmp)
                os.replace(tmp, folder / name)
                self.files_written += 1
            except (OSError, pa.ArrowException) as exc:  # best effort: never fail the request being answered
                self.dropped_rows += len(rows)
                logger.error("outcome log: dropped %d %s rows (%s: %s)", len(rows), log, type(exc).__name__, exc)


@dataclass(frozen=True)
class JoinReport:
    inputs: GateInputs
    unknown_clicks: int  # clicks whose request_id is in no logged request of this rollout (ignored)
    late_clicks: int  # clicks after the attribution window or for an item not served (ignored)
    requests: int


class OutcomeLog:
    """Reads both logs and builds the gates' inputs for one rollout."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def _read(self, log: str, schema: pa.Schema, flt: ds.Expression) -> pd.DataFrame:
        folder = self.path / log
        if not folder.exists():
            return schema.empty_table().to_pandas()
        dataset = ds.dataset(folder, format="parquet", partitioning="hive", schema=schema,
                             exclude_invalid_files=False, ignore_prefixes=[".", "_"])
        return dataset.to_table(filter=flt, columns=schema.names).to_pandas()

    def requests(self, rollout: str, before: float) -> pd.DataFrame:
        return self._read("requests", REQUESTS_SCHEMA, (ds.field("rollout") == rollout) & (ds.field("ts") < before))

    def impressions(self, since: float, before: float, window_s: float) -> pd.DataFrame:
        """Every served item of the requests answered in [since, before), one row each, with its label: whether
        it was clicked within ``window_s`` (call it only for requests older than ``window_s``, i.e. mature).

        Columns: ``request_id, ts, rollout, arm, model_version, user_id, position, item_id, score`` (NaN where the
        log has no scores) ``, clicked``. Failed requests (no items) give no rows.
        """
        req = self._read("requests", REQUESTS_SCHEMA, (ds.field("ts") >= since) & (ds.field("ts") < before))
        req = req[req["items"].map(len) > 0]
        columns = ["request_id", "ts", "rollout", "arm", "model_version", "user_id", "position", "item_id", "score",
                   "clicked"]
        if req.empty:
            return pd.DataFrame({c: pd.Series(dtype=np.float64 if c in ("ts", "score") else object)
                                 for c in columns})
        lengths = req["items"].map(len).to_numpy()
        scores = [np.full(n, np.nan) if s is None else np.asarray(s, dtype=np.float64)
                  for s, n in zip(req["scores"], lengths, strict=True)]
        rows = pd.DataFrame({
            **{c: np.repeat(req[c].to_numpy(), lengths) for c in ("request_id", "ts", "rollout", "arm",
                                                                   "model_version", "user_id")},
            "position": np.concatenate([np.arange(n) for n in lengths]),
            "item_id": np.concatenate([np.asarray(i, dtype=np.int64) for i in req["items"]]),
            "score": np.concatenate(scores),
        })
        clicks = self._read("clicks", CLICKS_SCHEMA, (ds.field("ts") >= since) & (ds.field("ts") < before + window_s))
        served = rows[["request_id", "item_id", "ts"]].rename(columns={"ts": "served"})
        joined = clicks.merge(served, on=["request_id", "item_id"], how="inner")
        ok = (joined["ts"] >= joined["served"]) & (joined["ts"] <= joined["served"] + window_s)
        hits = set(zip(joined.loc[ok, "request_id"], joined.loc[ok, "item_id"], strict=True))
        rows["clicked"] = [(r, i) in hits for r, i in zip(rows["request_id"], rows["item_id"], strict=True)]
        return rows[columns]

    def experiment_users(self, experiment: str, before: float, window_s: float) -> pd.DataFrame:
        """Per user of ``experiment``, from its mature requests (older than ``window_s`` at ``before``): ``user_id,
        arm, requests, errors, impressions, clicks, ctr`` (the input of ``rayml experiment analyze``)."""
        logged = self._read("requests", REQUESTS_SCHEMA, (ds.field("experiment") == experiment)
                            & (ds.field("ts") < before))
        req = logged[logged["ts"] < before - window_s]
        columns = ["user_id", "arm", "requests", "errors", "impressions", "clicks", "ctr"]
        if req.empty:
            return pd.DataFrame({c: pd.Series(dtype=object if c == "arm" else np.float64) for c in columns})
        since = float(req["ts"].min())
        clicks = self._read("clicks", CLICKS_SCHEMA, (ds.field("ts") >= since) & (ds.field("ts") < before))
        clicked, _ = _attributed(req, clicks[clicks["request_id"].isin(req["request_id"])], window_s)
        req = req.assign(clicks=req["request_id"].map(clicked).fillna(0).astype(np.int64),
                         impressions=req["items"].map(len).astype(np.int64),
                         errors=(req["status"] >= 500).astype(np.int64), requests=1)
        arms = req.groupby("user_id")["experiment_arm"].nunique()
        if (arms > 1).any():  # the hash is stable, so only a changed salt or arm list can do this
            raise ValueError(f"experiment {experiment!r}: {int((arms > 1).sum())} users were served by more than "
                             "one arm (the salt or the arms changed during the experiment)")
        users = req.groupby("user_id").agg(arm=("experiment_arm", "first"), requests=("requests", "sum"),
                                           errors=("errors", "sum"), impressions=("impressions", "sum"),
                                           clicks=("clicks", "sum")).reset_index()
        users["ctr"] = users["clicks"] / users["impressions"].where(users["impressions"] > 0)
        return users[columns]

    def gate_inputs(self, rollout: str, candidate_label: str, started_at: float, stage_started_at: float,
                    now: float, window_s: float) -> JoinReport:
        """The gates' inputs at ``now``: every mature request of ``rollout`` (older than ``window_s``)."""
        logged = self.requests(rollout, now)  # read once: the mature ones judge, all of them name clicks
        req = logged[logged["ts"] < now - window_s]
        req = req[(req["arm"] != "canary") | (req["model_version"] == candidate_label)]
        clicks = self._read("clicks", CLICKS_SCHEMA, (ds.field("ts") >= started_at) & (ds.field("ts") < now))
        known = clicks["request_id"].isin(req["request_id"])
        unknown = int((~clicks["request_id"].isin(logged["request_id"])).sum())
        clicked, late = _attributed(req, clicks[known], window_s)
        req = req.assign(clicks=req["request_id"].map(clicked).fillna(0).astype(np.int64),
                         impressions=req["items"].map(len).astype(np.int64))
        arms = {arm: _arm_stats(req[req["arm"] == arm]) for arm in ("canary", "production")}
        in_stage = req[req["ts"] >= stage_started_at]
        stage_users = tuple(int(in_stage.loc[(in_stage["arm"] == arm) & (in_stage["impressions"] > 0),
                                             "user_id"].nunique()) for arm in ("canary", "production"))
        from rayml.rollout.gates import GateInputs

        inputs = GateInputs(canary=arms["canary"], production=arms["production"],
                            stage_users=(stage_users[0], stage_users[1]), stage_canary_users=stage_users[0])
        return JoinReport(inputs=inputs, unknown_clicks=unknown, late_clicks=late, requests=len(req))


def _attributed(req: pd.DataFrame, clicks: pd.DataFrame, window_s: float) -> tuple[pd.Series, int]:
    """Per request id, the number of distinct served items clicked within the window; and the clicks ignored."""
    if clicks.empty:
        return pd.Series(dtype=np.int64), 0
    served = req[["request_id", "ts", "items"]].explode("items").rename(columns={"items": "item_id", "ts": "served"})
    served = served.dropna(subset=["item_id"]).astype({"item_id": np.int64})
    joined = clicks.merge(served, on=["request_id", "item_id"], how="left")
    ok = joined["served"].notna() & (joined["ts"] >= joined["served"]) & (joined["ts"] <= joined["served"] + window_s)
    hits = joined[ok].drop_duplicates(["request_id", "item_id"])
    return hits.groupby("request_id").size(), int((~ok).sum())


def _arm_stats(req: pd.DataFrame) -> ArmStats:
    from rayml.rollout.gates import ArmStats
    from rayml.rollout.sequential import latency_histogram

    hist = latency_histogram(req["latency_ms"].to_numpy(np.float64))
    errors = int((req["status"] >= 500).sum())
    per_user = req[req["impressions"] > 0].groupby("user_id")[["clicks", "impressions"]].sum()
    c = per_user["clicks"].to_numpy(np.float64)
    n = per_user["impressions"].to_numpy(np.float64)
    return ArmStats(users=len(per_user), clicks=float(c.sum()), impressions=float(n.sum()),
                    clicks_sq=float((c * c).sum()), impressions_sq=float((n * n).sum()),
                    clicks_impressions=float((c * n).sum()), requests=len(req), errors=errors,
                    latency_hist=tuple(int(x) for x in hist))
