"""Online stores: the latest feature values per entity, looked up for a whole batch of ids in one call."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


@dataclass(frozen=True)
class Lookup:
    """Result of one batch lookup.

    Attributes:
        columns: feature name → array aligned with the requested ids (NaN / None where missing).
        found: [n] True where the id is known.
    """

    columns: dict[str, np.ndarray]
    found: np.ndarray

    @property
    def missing(self) -> int:
        return int((~self.found).sum())

    def to_arrow(self, key: str, ids: np.ndarray) -> pa.Table:
        return pa.table({key: ids, **{name: pa.array(values) for name, values in self.columns.items()}})


class EmbeddedOnlineStore:
    """In-process columnar table per view: sorted ids + numpy columns; lookups are one ``searchsorted``.

    Numeric features are float64 with NaN for missing; string features are object arrays with None.
    """

    def __init__(self) -> None:
        self._views: dict[str, tuple[np.ndarray, dict[str, np.ndarray]]] = {}

    def write(self, view: str, table: pa.Table, key: str) -> None:
        """Replace ``view`` with ``table`` (one row per entity; the last row wins for duplicated ids)."""
        order = pc.sort_indices(table, [(key, "ascending")])
        table = table.take(order)
        ids = table[key].to_numpy().astype(np.int64)
        keep = np.ones(len(ids), bool)
        keep[:-1] = ids[1:] != ids[:-1]  # last occurrence of each id
        columns = {}
        for name in table.column_names:
            if name == key:
                continue
            column = table[name]
            if pa.types.is_floating(column.type) or pa.types.is_integer(column.type):
                columns[name] = column.to_numpy(zero_copy_only=False).astype(np.float64)[keep]
            else:
                columns[name] = np.asarray(column.to_pylist(), dtype=object)[keep]
        self._views[view] = (ids[keep], columns)

    def views(self) -> list[str]:
        return sorted(self._views)

    def lookup(self, view: str, ids: np.ndarray, features: list[str] | None = None) -> Lookup:
        """Values of ``features`` (default: all) for ``ids``; unknown ids get NaN/None and ``found=False``."""
        if view not in self._views:
            raise KeyError(f"online store has no view {view!r} (have {self.views()})")
        known, columns = self._views[view]
        ids = np.asarray(ids, dtype=np.int64)
        pos = np.minimum(np.searchsorted(known, ids), max(len(known) - 1, 0))
        found = known[pos] == ids if len(known) else np.zeros(len(ids), bool)
        out = {}
        complete = bool(found.all())
        for name in features or list(columns):
            if name not in columns:
                raise KeyError(f"view {view!r} has no feature {name!r}")
            values = columns[name].take(pos)  # a new array: safe to mask
            if not complete:
                values[~found] = None if values.dtype == object else np.nan
            out[name] = values
        return Lookup(out, found)
