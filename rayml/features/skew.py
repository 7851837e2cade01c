"""Train/serve skew check: recompute logged served features offline and count per-feature mismatches.

Input is the served-feature log (:mod:`rayml.features.feature_log`): each row holds the entity ids, the request
time and the raw values serving used. Batch views are recomputed with the offline store's point-in-time join at
the request time (what training would have seen); real-time windows are recomputed from the event log. A value
matches when both are missing, or both are equal (numbers within ``rtol``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from rayml.features.definitions import FeatureRepo, FeatureView
from rayml.features.event_log import read_events
from rayml.features.offline import get_historical_features, read_history
from rayml.features.realtime import offline_window_features


@dataclass(frozen=True)
class FeatureSkew:
    feature: str
    rows: int
    mismatches: int
    served_example: Any = None
    offline_example: Any = None

    @property
    def rate(self) -> float:
        return self.mismatches / self.rows if self.rows else 0.0


@dataclass
class SkewReport:
    rows: int
    requests: int
    features: list[FeatureSkew] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    @property
    def max_rate(self) -> float:
        return max((f.rate for f in self.features), default=0.0)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for row, skew in zip(out["features"], self.features, strict=True):
            row["rate"] = round(skew.rate, 6)
        out["max_rate"] = round(self.max_rate, 6)
        return out


def _same(served: pd.Series, offline: pd.Series, rtol: float) -> np.ndarray:
    both_missing = served.isna().to_numpy() & offline.isna().to_numpy()
    if pd.api.types.is_numeric_dtype(served) and pd.api.types.is_numeric_dtype(offline):
        a, b = served.to_numpy(np.float64), offline.to_numpy(np.float64)
        with np.errstate(invalid="ignore"):
            equal = np.isclose(a, b, rtol=rtol, atol=1e-9)
    else:
        equal = (served.astype(object).to_numpy() == offline.astype(object).to_numpy())
    return both_missing | equal


def _offline_view(view: FeatureView, key: str, ids: pd.Series, ts: pd.Series, features: list[str]) -> pd.DataFrame:
    """Feature values of ``ids`` as of ``ts`` (a static view: its only values), in the input order."""
    if view.timestamp is None:
        source = pq.read_table(view.source, columns=[key, *features]).to_pandas().drop_duplicates(key, keep="last")
        return pd.DataFrame({key: ids.to_numpy()}).merge(source, on=key, how="left")
    history = read_history(view.source, key, view.timestamp)
    ttl = None if view.ttl_days is None else np.timedelta64(int(view.ttl_days * 86_400), "s")
    entity_df = pd.DataFrame({key: ids.to_numpy(), "event_timestamp": ts.to_numpy()})
    return get_historical_features(entity_df, history, key=key, timestamp=view.timestamp, features=features, ttl=ttl)


def _compare(report: SkewReport, prefix: str, served: pd.DataFrame, offline: pd.DataFrame, rtol: float) -> None:
    for name in offline.columns:
        column = f"{prefix}.{name}"
        if column not in served.columns:
            continue
        same = _same(served[column].reset_index(drop=True), offline[name].reset_index(drop=True), rtol)
        bad = np.flatnonzero(~same)
        example = (served[column].iloc[bad[0]], offline[name].iloc[bad[0]]) if len(bad) else (None, None)
        report.features.append(FeatureSkew(column, len(same), len(bad), *map(_plain, example)))


def _plain(value: Any) -> Any:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    return value.item() if hasattr(value, "item") else value


def skew_report(repo: FeatureRepo, log_path: str | Path, events_path: str | Path | None = None,
                rtol: float = 1e-6) -> SkewReport:
    """Per-feature mismatch counts between the served-feature log and offline recomputation."""
    log = ds.dataset(str(log_path), format="parquet", partitioning="hive").to_table().to_pandas()
    if log.empty:
        raise ValueError(f"{log_path}: the served-feature log is empty")
    ts = log["ts"].astype("datetime64[us]")
    report = SkewReport(rows=len(log), requests=int(log["request_id"].nunique()))
    for name, view in repo.views.items():
        key = repo.entities[view.entity].key
        features = [f for f in view.features if f"{name}.{f}" in log.columns]
        if features:
            report_view = _offline_view(view, key, log[key], ts, features)
            _compare(report, name, log, report_view[features], rtol)
    realtime = repo.realtime
    rt_entities = [e for e in (realtime.entities if realtime else []) if any(c.startswith(f"rt.{e}.") for c in log)]
    if rt_entities and events_path is None:
        report.skipped += [f"rt.{e}.* (no event log given)" for e in rt_entities]
    elif rt_entities and realtime is not None:
        events = read_events(events_path)  # type: ignore[arg-type]
        at = ts.to_numpy().astype("datetime64[us]").astype(np.int64) / 1e6
        for entity in rt_entities:
            key = repo.entities[entity].key
            offline = offline_window_features(realtime, events.entity_ids(key), events.ts, events.clicked,
                                              log[key].to_numpy(), at)
            _compare(report, f"rt.{entity}", log, pd.DataFrame(offline), rtol)
    return report


def write_prometheus(report: SkewReport, path: str | Path) -> None:
    """Write the mismatch rates in Prometheus text format (for node_exporter's textfile collector)."""
    from prometheus_client import CollectorRegistry, Gauge, write_to_textfile

    registry = CollectorRegistry()
    rate = Gauge("rayml_feature_skew_mismatch_rate", "Share of logged served values that differ offline.",
                 ["feature"], registry=registry)
    for skew in report.features:
        rate.labels(feature=skew.feature).set(skew.rate)
    Gauge("rayml_feature_skew_rows", "Served-feature rows checked.", registry=registry).set(report.rows)
    write_to_textfile(str(path), registry)
