"""Encoded item rows kept in memory, so a request gathers its candidates' ranker input instead of encoding it.

Item features change only when a view is materialized again, so one encoder's rows for every item are computed
once (at load, and again after each materialization) and a request pays one ``searchsorted`` and one gather.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from rayml.features import FeatureEncoder
from rayml.features.online import Lookup

ENCODE_CHUNK = 65_536  # items encoded at once; bounds the float64 temporaries of transform_columns


class EncodedItems:
    """One encoder's encoded row of every known item: sorted int64 ids and a float32 matrix.

    Memory is ``(items + 1) × encoder.width × 4`` bytes plus 8 bytes an id, e.g. 100k items at width 40 take
    16 MB (+0.8 MB of ids); 1M items at width 40 take 160 MB. Each process that ranks holds its own copy (one per
    served ranker version whose item encoder differs).

    The rows are a snapshot: rebuild this object after the item view is materialized again.
    """

    def __init__(self, encoder: FeatureEncoder, ids: np.ndarray, columns: Mapping[str, np.ndarray]) -> None:
        """Encode the items ``ids`` whose feature values are ``columns`` (aligned with ``ids``).

        Args:
            encoder: the ranker's item encoder.
            ids: [I] item ids, in any order; the last row of a duplicated id wins (as the online stores do).
            columns: feature name → [I] values in the online stores' form (numeric: float64 with NaN; strings:
                object arrays with None). Must hold every column ``encoder`` reads.

        Raises:
            KeyError: a column the encoder reads is absent.
            ValueError: a column's length differs from that of ``ids``.
        """
        ids = np.asarray(ids, dtype=np.int64)
        order = np.argsort(ids, kind="stable")
        sorted_ids = ids[order]
        keep = np.ones(len(ids), dtype=bool)
        keep[:-1] = sorted_ids[1:] != sorted_ids[:-1]  # last occurrence of each id
        rows = order[keep]
        absent = [name for name in encoder.columns if name not in columns]
        if absent:
            raise KeyError(f"item columns lack {absent} (the encoder reads {encoder.columns})")
        wanted = {name: np.asarray(columns[name]) for name in encoder.columns}
        lengths = {name: len(values) for name, values in wanted.items() if len(values) != len(ids)}
        if lengths:
            raise ValueError(f"got {len(ids)} ids but columns of lengths {lengths}")
        self.encoder = encoder
        self.ids = sorted_ids[keep]  # [I] sorted, unique
        self.matrix = np.empty((len(self.ids) + 1, encoder.width), dtype=np.float32)  # [I + 1, W]
        for lo in range(0, len(rows), ENCODE_CHUNK):
            take = rows[lo : lo + ENCODE_CHUNK]
            chunk = {name: values[take] for name, values in wanted.items()}
            self.matrix[lo : lo + len(take)] = encoder.transform_columns(chunk, n=len(take))
        self.matrix[-1] = encoder.transform_columns(all_missing(encoder), n=1)[0]

    @classmethod
    def from_lookup(cls, encoder: FeatureEncoder, ids: np.ndarray, lookup: Lookup) -> EncodedItems:
        """From an online-store lookup of ``ids`` (e.g. every item the retrieval can return); ids the store
        did not find are left out, so :meth:`lookup` reports them missing."""
        ids = np.asarray(ids, dtype=np.int64)
        found = np.asarray(lookup.found, dtype=bool)
        return cls(encoder, ids[found], {name: values[found] for name, values in lookup.columns.items()})

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def width(self) -> int:
        return self.matrix.shape[1]

    @property
    def nbytes(self) -> int:
        return self.matrix.nbytes + self.ids.nbytes

    def lookup(self, item_ids: np.ndarray, out: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Encoded rows [N, width] float32 of ``item_ids`` (any order, repeats allowed) and found [N] bool.

        An unknown id gets the row of an item with every feature missing, which is what the encoder gives for
        the NaN/None values a store lookup returns for it. ``out``, if given, is a float32 [N, width] array
        (a slice of a wider matrix is fine) that receives the rows and is returned.
        """
        item_ids = np.asarray(item_ids, dtype=np.int64)
        known = len(self.ids)
        pos = np.searchsorted(self.ids, item_ids)  # [N] in [0, I]
        if known:
            np.minimum(pos, known - 1, out=pos)
            found = self.ids[pos] == item_ids
        else:
            found = np.zeros(len(item_ids), dtype=bool)
        pos[~found] = known  # the all-missing row
        rows = self.matrix.take(pos, axis=0)  # [N, W]; take beats fancy indexing on small N
        if out is None:
            return rows, found
        out[...] = rows
        return out, found

    def rows(self, item_ids: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Encoded rows [N, width] float32 of ``item_ids``; see :meth:`lookup`."""
        return self.lookup(item_ids, out)[0]


def all_missing(encoder: FeatureEncoder) -> dict[str, np.ndarray]:
    """One entity with every value missing, as a store lookup returns an unknown id: NaN numbers, None strings."""
    missing = {stats.name: np.array([np.nan]) for stats in encoder.numeric}
    return missing | {vocab.name: np.array([None], dtype=object) for vocab in encoder.categorical}
