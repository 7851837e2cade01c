"""Feature encoding defined once and shared by training, batch and serving (no train/serve skew).

Numeric columns are standardised with a missing-value indicator; string columns are one-hot over a
vocabulary learned at fit time, with one extra slot for unknown or missing values.

:meth:`FeatureEncoder.transform` reads a pyarrow table (training, batch); :meth:`FeatureEncoder.transform_columns`
gives the same matrix bit for bit straight from numpy columns, the form online lookups return (serving).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


@dataclass(frozen=True)
class NumericStats:
    name: str
    mean: float
    std: float


@dataclass(frozen=True)
class CategoricalVocab:
    name: str
    values: list[str]


@dataclass(frozen=True)
class _Plan:
    """What :meth:`FeatureEncoder.transform_columns` precomputes once per encoder."""

    width: int
    numeric: list[str]
    mean: np.ndarray  # [k, 1] float64
    std: np.ndarray  # [k, 1] float64
    # per categorical column: name, value → output column, output column of <unknown>, the vocabulary as arrow
    categorical: list[tuple[str, dict[str | None, int], int, pa.Array]]


@dataclass(frozen=True)
class FeatureEncoder:
    """Turns a feature table into a dense float32 matrix. Fit once, then serialise with the model."""

    id_column: str
    numeric: list[NumericStats] = field(default_factory=list)
    categorical: list[CategoricalVocab] = field(default_factory=list)

    @classmethod
    def fit(cls, table: pa.Table, id_column: str, max_vocab: int = 1000) -> FeatureEncoder:
        """Learn statistics from ``table``: float/int columns are numeric, string columns categorical."""
        numeric, categorical = [], []
        for name in table.column_names:
            if name == id_column:
                continue
            col = table[name]
            if pa.types.is_floating(col.type) or pa.types.is_integer(col.type):
                values = col.to_numpy(zero_copy_only=False).astype(np.float64)
                finite = values[np.isfinite(values)]
                mean = float(finite.mean()) if len(finite) else 0.0
                std = float(finite.std()) if len(finite) else 1.0
                numeric.append(NumericStats(name, mean, std if std > 1e-12 else 1.0))
            elif pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
                counts = pc.value_counts(col.drop_null()).to_pylist()
                counts.sort(key=lambda c: (-c["counts"], c["values"]))
                categorical.append(CategoricalVocab(name, sorted(c["values"] for c in counts[:max_vocab])))
        return cls(id_column=id_column, numeric=numeric, categorical=categorical)

    @property
    def columns(self) -> list[str]:
        """Source columns the encoder reads."""
        return [s.name for s in self.numeric] + [v.name for v in self.categorical]

    @property
    def feature_names(self) -> list[str]:
        """Names of the output matrix columns, in order."""
        names = [s.name for s in self.numeric] + [f"{s.name}__missing" for s in self.numeric]
        for vocab in self.categorical:
            names += [f"{vocab.name}={v}" for v in vocab.values] + [f"{vocab.name}=<unknown>"]
        return names

    @property
    def width(self) -> int:
        return len(self.numeric) * 2 + sum(len(v.values) + 1 for v in self.categorical)

    def transform(self, table: pa.Table) -> np.ndarray:
        """Encode ``table`` (must hold every source column). Returns float32 [rows, width]."""
        missing_cols = [c for c in self.columns if c not in table.column_names]
        if missing_cols:
            raise KeyError(f"feature table lacks columns {missing_cols}")
        n = table.num_rows
        out = np.zeros((n, self.width), dtype=np.float32)
        k = len(self.numeric)
        for j, stats in enumerate(self.numeric):
            values = table[stats.name].to_numpy(zero_copy_only=False).astype(np.float64)
            nan = ~np.isfinite(values)
            out[:, j] = np.where(nan, 0.0, (values - stats.mean) / stats.std)
            out[:, k + j] = nan
        offset = 2 * k
        for vocab in self.categorical:
            lookup = pa.array(vocab.values, pa.string())
            codes = pc.index_in(table[vocab.name].cast(pa.string()), value_set=lookup)
            idx = codes.to_numpy(zero_copy_only=False)
            idx = np.where(np.isnan(idx.astype(np.float64)), len(vocab.values), idx).astype(np.int64)
            out[np.arange(n), offset + idx] = 1.0
            offset += len(vocab.values) + 1
        return out

    def transform_columns(self, columns: Mapping[str, np.ndarray], n: int | None = None) -> np.ndarray:
        """Encode numpy columns (e.g. ``Lookup.columns``) without pyarrow. Returns float32 [rows, width].

        The result equals ``transform(pa.table({name: pa.array(values), ...}))`` bit for bit. Numeric columns of a
        numeric or bool dtype and string columns of object dtype holding ``str`` or ``None`` (what the online
        stores return) take the fast path; any other column takes the pyarrow path of :meth:`transform`.

        Args:
            columns: source column name → 1-d array, all of one length (extra columns are ignored).
            n: rows; needed only when the encoder reads no columns.

        Raises:
            KeyError: a source column is absent.
            ValueError: the columns differ in length, or ``n`` is missing where it is needed.
        """
        plan = self._plan
        try:
            numeric = [columns[c] for c in plan.numeric]
            categorical = [columns[c] for c, _, _, _ in plan.categorical]
        except KeyError:
            raise KeyError(f"feature columns lack {[c for c in self.columns if c not in columns]}") from None
        lengths = set(map(len, numeric + categorical))
        if n is None:
            if not lengths:
                raise ValueError("n is required when the encoder reads no columns")
            n = len(numeric[0] if numeric else categorical[0])
        if lengths - {n}:
            got = {name: len(columns[name]) for name in self.columns}
            raise ValueError(f"got columns of lengths {got}; every column must have {n} rows")
        k = len(numeric)
        out = np.zeros((n, plan.width), dtype=np.float32)
        if k:
            try:  # numbers and bools as they are: the casts equal what transform gets from arrow
                x = np.concatenate(numeric, dtype=np.float64, casting="same_kind").reshape(k, n)  # [k, n]
            except TypeError:  # e.g. numbers in object arrays: read them as transform does
                x = np.array([_as_float(np.asarray(values)) for values in numeric], dtype=np.float64)
            nan = ~np.isfinite(x)
            z = (x - plan.mean) / plan.std  # [k, n]; the same float64 arithmetic as transform
            z[nan] = 0.0
            out[:, :k] = z.T
            out[:, k : 2 * k] = nan.T
        if categorical and n:
            flat = np.array([_slots(values, index, unknown, vocab)  # [c, n] output column set to 1
                             for values, (_, index, unknown, vocab) in zip(categorical, plan.categorical, strict=True)],
                            dtype=np.intp)
            if n > 1:
                flat += np.arange(0, n * plan.width, plan.width)  # row offsets into the flat matrix
            out.reshape(-1)[flat] = 1.0
        return out

    @cached_property
    def _plan(self) -> _Plan:
        # cached_property stores into the instance __dict__, which a frozen (non-slots) dataclass still has.
        offset = 2 * len(self.numeric)
        categorical = []
        for vocab in self.categorical:
            index: dict[str | None, int] = {}
            for i, value in enumerate(vocab.values):
                index.setdefault(value, offset + i)  # first occurrence, as pc.index_in
            unknown = offset + len(vocab.values)
            categorical.append((vocab.name, index, unknown, pa.array(vocab.values, pa.string())))
            offset = unknown + 1
        return _Plan(
            width=self.width,
            numeric=[s.name for s in self.numeric],
            mean=np.array([s.mean for s in self.numeric], dtype=np.float64).reshape(-1, 1),
            std=np.array([s.std for s in self.numeric], dtype=np.float64).reshape(-1, 1),
            categorical=categorical,
        )

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> FeatureEncoder:
        return cls(
            id_column=data["id_column"],
            numeric=[NumericStats(**s) for s in data["numeric"]],
            categorical=[CategoricalVocab(**v) for v in data["categorical"]],
        )

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path: str | Path) -> FeatureEncoder:
        return cls.from_dict(json.loads(Path(path).read_text()))


def _as_float(values: np.ndarray) -> np.ndarray:
    """A numeric source column as float64, as ``transform`` reads it from ``pa.array(values)``."""
    if values.dtype.kind in "biuf":
        return values.astype(np.float64)
    return pa.array(values).to_numpy(zero_copy_only=False).astype(np.float64)


def _slots(values: np.ndarray, index: dict[str | None, int], unknown: int, vocab: pa.Array) -> list[int] | np.ndarray:
    """Output column of each value of a categorical source column: its vocabulary slot or ``unknown``."""
    values = np.asarray(values)
    if values.dtype == object:
        get = index.get
        try:
            slots = [get(v, unknown) for v in values]
        except TypeError:  # unhashable values
            slots = None
        # Strings (numpy's too) hash like str, so only values left unknown need a look at their type.
        if slots is not None and (unknown not in slots or all(
                v is None or isinstance(v, str) for v, s in zip(values, slots, strict=True) if s == unknown)):
            return slots
    elif values.dtype.kind == "f" and "nan" not in index and np.isnan(values).all():
        return [unknown] * len(values)  # Redis returns all-missing strings as NaN; arrow would cast them to "nan"
    # Anything else (numbers, numpy string arrays, …) is cast to string by arrow exactly as transform does.
    codes = pc.index_in(pa.array(values).cast(pa.string()), value_set=vocab).to_numpy(zero_copy_only=False)
    codes = np.where(np.isnan(codes.astype(np.float64)), len(vocab), codes).astype(np.int64)
    return unknown - len(vocab) + codes
