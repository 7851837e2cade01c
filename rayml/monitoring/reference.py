"""Drift references versioned with the model: the training profile and the served baseline of a version.

Two references per model version, both stored in the registry beside the version (``<model>/profiles/<N>/``,
checksummed; see :meth:`rayml.registry.ModelRegistry.save_profile`):

* ``training``: the profile of the features the version was trained on, saved when the version is published
  (or later by ``batch_jobs/profile_features.py --kind training``). Drift against it is train/serve drift.
* ``served``: the profile of the features serving actually used for this version during a *baseline window*
  (e.g. its first day in production), read from the served-feature log
  (:mod:`rayml.features.feature_log`). Drift against it is drift in production, with train/serve differences
  (encoding, defaults, sampling) already in the baseline, so it alarms on change rather than on skew.

Rebuilding a reference writes a new file and moves the version's ``current.json`` to it; the older builds stay
on disk. Served-log columns are named ``<view>.<feature>``; ``strip_prefix=True`` renames them to the bare
feature name so they line up with a training profile built from the training frame.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from rayml.monitoring.sketches import DEFAULT_K, Profile, ProfileError
from rayml.registry import ModelRegistry

TRAINING = "training"
SERVED = "served"
LOG_META_COLUMNS = ("request_id", "ts")


def save_reference(registry: ModelRegistry, name: str, version: str | int, kind: str, profile: Profile,
                   meta: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Store ``profile`` as the current ``kind`` reference of a version; returns the registry entry."""
    info = {"rows": profile.rows, "features": len(profile.features), "k": profile.k,
            "rank_error": profile.rank_error, **dict(meta or {})}
    return registry.save_profile(name, version, kind, profile.serialize(), info)


def save_training_profile(registry: ModelRegistry, name: str, version: str | int, profile: Profile,
                          meta: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Store the training reference of a version (call when publishing it)."""
    return save_reference(registry, name, version, TRAINING, profile, meta)


def load_reference(registry: ModelRegistry, name: str, version: str | int, kind: str = TRAINING) -> Profile:
    """The current ``kind`` reference of a version, checksum verified (ArtifactCorruptError otherwise)."""
    return Profile.deserialize(registry.load_profile(name, version, kind))


def references(registry: ModelRegistry, name: str, version: str | int) -> dict[str, Profile]:
    """Every reference a version has (``training`` and/or ``served``), loaded and verified."""
    return {kind: load_reference(registry, name, version, kind) for kind in registry.profiles(name, version)}


def serving_windows(registry: ModelRegistry, name: str, version: str | int,
                    alias: str = "production") -> list[tuple[dt.datetime, dt.datetime | None]]:
    """When ``alias`` pointed at the version, from the alias history: ``[(start, end or None if still)]``.

    Times are naive UTC (the served-feature log's ``ts`` convention).
    """
    number = registry.resolve(name, version)
    windows: list[tuple[dt.datetime, dt.datetime | None]] = []
    start: dt.datetime | None = None
    for move in registry.alias_history(name):
        if move["alias"] != alias:
            continue
        at = dt.datetime.fromisoformat(move["at"]).astimezone(dt.UTC).replace(tzinfo=None)
        if move["to"] == number and start is None:
            start = at
        elif move["to"] != number and start is not None:
            windows.append((start, at))
            start = None
    if start is not None:
        windows.append((start, None))
    return windows


def read_served_features(log_path: str | Path, start: dt.datetime, end: dt.datetime | None = None, *,
                         version: int | None = None, version_column: str = "model_version",
                         columns: Sequence[str] | None = None, strip_prefix: bool = False) -> pa.Table:
    """Served-feature log rows with ``start <= ts < end`` (naive UTC), only the feature columns.

    Feature columns are those named ``<prefix>.<feature>`` unless ``columns`` lists them. When the log has a
    ``version_column`` and ``version`` is given, only that version's rows are kept; otherwise the window is
    trusted to be one the version served alone (see :func:`serving_windows`).
    """
    dataset = pads.dataset(str(log_path), format="parquet", partitioning="hive")
    ts = pads.field("ts")
    condition = ts >= pa.scalar(start, pa.timestamp("us"))
    if end is not None:
        condition = condition & (ts < pa.scalar(end, pa.timestamp("us")))
    names = dataset.schema.names
    if version is not None and version_column in names:
        condition = condition & (pads.field(version_column) == version)
    chosen = list(columns) if columns is not None else [n for n in names if "." in n and n not in LOG_META_COLUMNS]
    table = dataset.to_table(columns=chosen, filter=condition)
    if strip_prefix:
        renamed = [n.split(".", 1)[1] if "." in n else n for n in table.column_names]
        if len(set(renamed)) != len(renamed):
            raise ProfileError(f"strip_prefix: feature names collide across views ({table.column_names})")
        table = table.rename_columns(renamed)
    return table


def build_served_baseline(registry: ModelRegistry, name: str, version: str | int, log_path: str | Path,
                          start: dt.datetime, end: dt.datetime, *, schema: Mapping[str, str] | None = None,
                          version_column: str = "model_version", columns: Sequence[str] | None = None,
                          strip_prefix: bool = False, k: int = DEFAULT_K, save: bool = True) -> Profile:
    """Profile the features served for a version in ``[start, end)`` and (``save``) store it as the version's
    ``served`` reference. ``schema`` defaults to the training reference's kinds where one exists."""
    number = registry.resolve(name, version)
    table = read_served_features(log_path, start, end, version=number, version_column=version_column,
                                 columns=columns, strip_prefix=strip_prefix)
    if table.num_rows == 0:
        raise ProfileError(f"{name} v{number}: no served features in {log_path} between {start} and {end}")
    if schema is None and TRAINING in registry.profiles(name, number):
        trained = load_reference(registry, name, number, TRAINING).schema or {}
        schema = {c: trained[c] for c in table.column_names if c in trained} or None
    table = _drop_null_typed(table)
    profile = Profile(schema, k=k).update(table)
    if save:
        save_reference(registry, name, number, SERVED, profile, {
            "source": str(log_path), "window": [start.isoformat(), end.isoformat()],
            "filtered_by": version_column if version_column in _log_columns(log_path) else "window",
        })
    return profile


def _log_columns(log_path: str | Path) -> list[str]:
    return pads.dataset(str(log_path), format="parquet", partitioning="hive").schema.names


def _drop_null_typed(table: pa.Table) -> pa.Table:
    """A column logged as all-null (Arrow null type) carries no kind: cast it to float64 (all missing)."""
    for i, field in enumerate(table.schema):
        if pa.types.is_null(field.type):
            table = table.set_column(i, field.name, pc.cast(table[field.name], pa.float64()))
    return table


__all__ = [
    "SERVED", "TRAINING", "build_served_baseline", "load_reference",
    "read_served_features", "references", "save_reference", "save_training_profile", "serving_windows",
]
