"""The replica side of online monitoring: sample served rows, pre-aggregate them, ship once a second off the
request path.

Each message carries the sampled rows (the monitor's window reservoir, for KS and the other sample tests) and
their **mergeable profiles** (:class:`rayml.monitoring.sketches.Profile`: KLL quantiles, frequent items, HLL
distinct counts, exact moments and missing counts), one per model version and event-time bucket of
``bucket_s``. The monitor merges every replica's profiles into its windows, so a window's quantiles, missing and
out-of-range rates cover every sampled row, not just the reservoir's. Profiles are built on the tap's own thread,
whole columns at a time; the request path only appends a row.

Kept apart from :mod:`rayml.monitoring.online` (the monitor, with its statistics) so that a serving replica's
start does not import scipy and statsmodels: a replacement replica takes traffic sooner. The sketches load on the
first send.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)


class MonitorTap:
    """Samples rows in a replica and ships them as one message per ``send_every_s`` (never on the request path).

    ``send`` gets ``{"replica", "columns": {name: list}, "profiles": [...]}`` (see :func:`bucket_profiles`) and
    must not block (a Serve handle's ``.remote``). ``bucket_s`` must divide the monitor's ``window_s``; with
    ``bucket_s=None`` the messages carry rows only, no profiles.
    """

    def __init__(self, sample_rate: float, send: Callable[[dict[str, Any]], Any], replica: str = "local",
                 send_every_s: float = 1.0, max_rows: int = 10_000,
                 bucket_s: float | None = 1.0) -> None:
        self.sample_rate, self.send, self.replica = sample_rate, send, replica
        self.send_every_s, self.max_rows = send_every_s, max_rows
        self.bucket_s = bucket_s
        self.schema: dict[str, str] | None = None  # each feature's kind, fixed by the first message typing it
        self._rows: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self.sent_rows = self.dropped_rows = self.send_errors = self.profile_errors = 0
        self.last_error: str | None = None
        self._stop = threading.Event()
        threading.Thread(target=self._run, name="monitor-tap", daemon=True).start()

    def sampled(self) -> bool:
        return self.sample_rate >= 1 or random.random() < self.sample_rate

    def add(self, row: dict[str, Any]) -> None:
        with self._lock:
            if len(self._rows) >= self.max_rows:
                self.dropped_rows += 1
                return
            self._rows.append(row)

    def flush(self) -> None:
        with self._lock:
            rows, self._rows = self._rows, []
        if not rows:
            return
        columns = {key: [r.get(key) for r in rows] for key in dict.fromkeys(k for r in rows for k in r)}
        message: dict[str, Any] = {"replica": self.replica, "columns": columns}
        if self.bucket_s is not None:
            try:
                message["profiles"], self.schema = bucket_profiles(columns, self.bucket_s, self.schema)
            except Exception as exc:  # e.g. text in a numeric feature: the rows still go, the monitor counts them
                self.profile_errors += 1
                self.last_error = f"profile: {type(exc).__name__}: {exc}"[:300]
                logger.warning("monitor tap: rows not profiled (%s: %s)", type(exc).__name__, exc)
        try:
            self.send(message)
            self.sent_rows += len(rows)
        except Exception as exc:  # the monitor is down: these rows are lost, counted; serving goes on
            self.send_errors += 1
            self.dropped_rows += len(rows)
            self.last_error = f"{type(exc).__name__}: {exc}"[:300]
            logger.warning("monitor tap: send failed (%s: %s)", type(exc).__name__, exc)

    def _run(self) -> None:
        while not self._stop.wait(self.send_every_s):
            self.flush()

    def stop(self) -> None:
        self._stop.set()


META = ("ts", "version", "request_id")  # columns that are not features


def bucket_profiles(columns: dict[str, list[Any]], bucket_s: float, schema: dict[str, str] | None = None,
                    ) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """One serialized profile per (model version, event-time bucket) of a message's rows.

    Returns ``([{"version", "bucket", "bucket_s", "rows", "profile": bytes}], schema)``: bucket ``b`` holds the
    rows with ``b * bucket_s <= ts < (b + 1) * bucket_s``. ``schema`` (feature → numeric | categorical) is what
    earlier messages fixed, extended by the features these rows are the first to type; pass the returned one back,
    so that a replica profiles a feature the same way in every message (null in one message: missing there).
    """
    import numpy as np
    import pyarrow as pa

    from rayml.monitoring.sketches import Profile, infer_kind

    table = pa.table({name: pa.array(values, from_pandas=True)  # None, NaN: null
                      for name, values in columns.items() if name not in META})
    schema = dict(schema or {})
    for f in table.schema:  # a feature joins once a message has a typed value of it (all-null is no type)
        if f.name not in schema and (kind := infer_kind(f.type)) is not None:
            schema[f.name] = kind
    buckets = np.floor(np.array(columns["ts"], dtype=np.float64) / bucket_s)
    groups: dict[tuple[str, int], list[int]] = {}
    for i, (version, bucket) in enumerate(zip(columns["version"], buckets.tolist(), strict=True)):
        if bucket == bucket:  # not NaN: a row without an event time is the monitor's bad row, not profiled
            groups.setdefault((str(version), int(bucket)), []).append(i)
    out = []
    for (version, bucket), index in sorted(groups.items()):
        profile = Profile.from_frame(table.take(pa.array(index)), schema=schema)
        out.append({"version": version, "bucket": bucket, "bucket_s": bucket_s, "rows": len(index),
                    "profile": profile.serialize()})
    return out, schema


USER_CONFIG_KEY = "monitor_sample_rate"


def sample_rate_update(config: dict[str, Any]) -> float | None:
    """The ``user_config.monitor_sample_rate`` of a live reconfigure, checked; None when absent.

    Raises:
        ValueError: not a number in [0, 1], naming the key.
    """
    rate = config.get(USER_CONFIG_KEY)
    if rate is None:
        return None
    if not isinstance(rate, int | float) or isinstance(rate, bool) or not 0 <= rate <= 1:
        raise ValueError(f"user_config.{USER_CONFIG_KEY}: {rate!r} is not a number in [0, 1]")
    return float(rate)
