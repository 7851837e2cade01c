"""Feature encoding defined once and shared by training, batch and serving (no train/serve skew).

Numeric columns are standardised with a missing-value indicator; string columns are one-hot over a
vocabulary learned at fit time, with one extra slot for unknown or missing values.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
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
