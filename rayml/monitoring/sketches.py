"""Mergeable feature profiles on Apache DataSketches: per-batch partials that merge into one profile.

A :class:`Profile` holds one :class:`FeatureProfile` per feature, the rows it has seen and its schema
(feature → ``"numeric"`` | ``"categorical"``). Profiles of disjoint parts of a dataset merge into the profile of
the whole: moments exactly (Chan's parallel Welford update), the rest as sketch merges. They serialize to bytes
(each sketch's own format inside a msgpack envelope), so a Ray Data batch can return one as a row.

Conventions:

* **Numeric** features: a value is *missing* when it is null/None or NaN, *non-finite* when it is ±inf. Moments
  (count, mean, M2, min, max) and the KLL quantile sketch cover the finite values only; ``rows`` counts all of
  them (finite + missing + non-finite). Integers are numeric unless the schema says ``categorical``.
* **Categorical** features (strings, booleans, dictionary arrays, or integers the schema names categorical):
  a null/None/NaN is *missing*; every other value is counted under its string form (``3`` and ``"3"`` are the
  same category). Frequencies come from a frequent-items sketch (``lg_max_k``), the distinct count from an HLL
  sketch (``lg_k``).
* A feature absent from a frame that is profiled counts that frame's rows as missing.
* Query results for a feature with no finite values are NaN (quantiles, cdf, mean, std) or empty.

Error bounds (see :func:`kll_rank_error`): KLL quantiles/cdf/histograms are accurate to ±ε in *rank*
(normalized, single query, 99 % confidence): ε = 0.00278 at the default ``k = 1000``, an order of magnitude
under the 1 % two-sample KS critical value at n = m = 5000 (1.628·sqrt(2/5000) ≈ 0.0326), so a drift test on the
sketch is not dominated by sketch error. Category frequencies are within ``frequent_items_epsilon(lg_max_k)`` ×
the total weight (0.0034 at ``lg_max_k = 10``); the HLL distinct estimate has a relative standard error of about
1.04/sqrt(2^lg_k) (1.6 % at ``lg_k = 12``).

Updates are vectorised: a numeric column goes to the sketch as one numpy array; a categorical column is counted
first (``value_counts``) and each *distinct* value updates the sketches once with its count as weight, so the
Python work per batch scales with the number of distinct categories, never with rows.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final, Literal

import datasketches as dsk
import msgpack
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

NUMERIC: Final = "numeric"
CATEGORICAL: Final = "categorical"
Kind = Literal["numeric", "categorical"]
FORMAT = "rayml-profile"
FORMAT_VERSION = 1

DEFAULT_K = 1000  # KLL: normalized rank error 0.00278 (single query, 99 % confidence)
DEFAULT_LG_MAX_K = 10  # frequent items: up to 768 tracked categories, frequency error 0.0034 × weight
DEFAULT_LG_K = 12  # HLL: ~1.6 % relative standard error on the distinct count
_HLL_TYPE = dsk.tgt_hll_type.HLL_8


class ProfileError(ValueError):
    """A profile cannot be built, merged or read; the message names the feature."""


def kll_rank_error(k: int = DEFAULT_K, pmf: bool = False) -> float:
    """Normalized rank error ε of a KLL sketch with parameter ``k`` (99 % confidence).

    ``pmf=False``: one rank/quantile/cdf query; ``pmf=True``: all bins of a histogram at once (double-sided).
    """
    return float(dsk.kll_doubles_sketch.get_normalized_rank_error(k, pmf))


def frequent_items_epsilon(lg_max_k: int = DEFAULT_LG_MAX_K) -> float:
    """Maximum frequency error of a category, as a share of the total weight, for ``lg_max_k``."""
    return float(dsk.frequent_strings_sketch.get_epsilon_for_lg_size(lg_max_k))


def infer_kind(dtype: pa.DataType) -> Kind | None:
    """The default kind of an Arrow type: numbers are numeric, strings/bools/dictionaries categorical,
    anything else (timestamps, lists, …) None, i.e. not profiled unless the schema names it."""
    if pa.types.is_boolean(dtype) or pa.types.is_string(dtype) or pa.types.is_large_string(dtype):
        return CATEGORICAL
    if pa.types.is_dictionary(dtype):
        return CATEGORICAL
    if pa.types.is_integer(dtype) or pa.types.is_floating(dtype) or pa.types.is_decimal(dtype):
        return NUMERIC
    if pa.types.is_null(dtype):
        return None
    return None


class FeatureProfile:
    """Profile of one feature. ``rows`` counts every value seen, ``missing`` the null/None/NaN ones."""

    kind: Kind

    def __init__(self) -> None:
        self.rows = 0
        self.missing = 0

    @property
    def missing_rate(self) -> float:
        return self.missing / self.rows if self.rows else 0.0

    def update(self, column: pa.ChunkedArray | pa.Array) -> None:
        raise NotImplementedError

    def add_missing(self, rows: int) -> None:
        """``rows`` values of this feature were absent."""
        self.rows += rows
        self.missing += rows

    def merge(self, other: FeatureProfile) -> None:
        raise NotImplementedError

    def to_state(self) -> dict[str, Any]:
        raise NotImplementedError

    @staticmethod
    def from_state(state: Mapping[str, Any]) -> FeatureProfile:
        if state["kind"] == NUMERIC:
            return NumericProfile.from_state(state)
        if state["kind"] == CATEGORICAL:
            return CategoricalProfile.from_state(state)
        raise ProfileError(f"unknown feature kind {state['kind']!r}")

    def copy(self) -> FeatureProfile:
        return FeatureProfile.from_state(self.to_state())


class NumericProfile(FeatureProfile):
    """KLL quantile sketch + exact moments of the finite values; missing and non-finite counts."""

    kind: Kind = NUMERIC

    def __init__(self, k: int = DEFAULT_K) -> None:
        super().__init__()
        self.k = k
        self.kll = dsk.kll_doubles_sketch(k)
        self.nonfinite = 0
        self.count = 0  # finite values
        self.mean = 0.0
        self.m2 = 0.0  # sum of squared deviations from the mean
        self.min = math.inf
        self.max = -math.inf

    def update(self, column: pa.ChunkedArray | pa.Array) -> None:
        values = _float64(column)
        self.update_numpy(values)

    def update_numpy(self, values: np.ndarray) -> None:
        """Add a float64 array (NaN = missing, ±inf = non-finite)."""
        self.rows += len(values)
        finite = np.isfinite(values)
        if not finite.all():
            nan = int(np.isnan(values).sum())
            self.missing += nan
            self.nonfinite += len(values) - int(finite.sum()) - nan
            values = values[finite]
        n = len(values)
        if n == 0:
            return
        mean = float(values.mean())
        dev = values - mean
        self._combine(n, mean, float(dev @ dev), float(values.min()), float(values.max()))
        self.kll.update(values)

    def _combine(self, n: int, mean: float, m2: float, lo: float, hi: float) -> None:
        """Chan et al.'s pairwise update: exact up to rounding, in any order of merges."""
        if n == 0:
            return
        total = self.count + n
        delta = mean - self.mean
        self.mean += delta * n / total
        self.m2 += m2 + delta * delta * self.count * n / total
        self.count = total
        self.min = min(self.min, lo)
        self.max = max(self.max, hi)

    def merge(self, other: FeatureProfile) -> None:
        if not isinstance(other, NumericProfile):
            raise ProfileError(f"cannot merge a {other.kind} profile into a numeric one")
        self.rows += other.rows
        self.missing += other.missing
        self.nonfinite += other.nonfinite
        self._combine(other.count, other.mean, other.m2, other.min, other.max)
        self.kll.merge(other.kll)

    def variance(self, ddof: int = 0) -> float:
        return self.m2 / (self.count - ddof) if self.count > ddof else math.nan

    def std(self, ddof: int = 0) -> float:
        return math.sqrt(self.variance(ddof))

    @property
    def rank_error(self) -> float:
        return kll_rank_error(self.k)

    def quantiles(self, qs: Sequence[float] | np.ndarray) -> np.ndarray:
        if self.kll.is_empty():
            return np.full(len(qs), np.nan)
        return np.asarray(self.kll.get_quantiles([float(q) for q in qs]), dtype=np.float64)

    def cdf(self, points: Sequence[float] | np.ndarray, inclusive: bool = True) -> np.ndarray:
        """Share of finite values ``<= point`` (``< point`` when ``inclusive=False``), ±ε in rank."""
        if self.kll.is_empty():
            return np.full(len(points), np.nan)
        out = self.kll.get_cdf([float(p) for p in points], inclusive)
        return np.asarray(out[:-1], dtype=np.float64)

    def histogram(self, edges: Sequence[float] | np.ndarray) -> np.ndarray:
        """Shares of the finite values in the ``len(edges) + 1`` bins ``(-inf, e0), [e0, e1), …, [e_last, inf)``.

        The bins are numpy's: equal to ``np.histogram(x, [-inf, *edges, inf])[0] / len(x)``, each within ε
        (``kll_rank_error(k, pmf=True)`` for all bins at once). ``edges`` must be strictly increasing.
        """
        edges = np.asarray(edges, dtype=np.float64)
        if len(edges) and np.any(np.diff(edges) <= 0):
            raise ProfileError("histogram edges must be strictly increasing")
        if self.kll.is_empty():
            return np.full(len(edges) + 1, np.nan)
        return np.asarray(self.kll.get_pmf(edges.tolist(), False), dtype=np.float64)

    def to_state(self) -> dict[str, Any]:
        return {
            "kind": NUMERIC, "rows": self.rows, "missing": self.missing, "nonfinite": self.nonfinite,
            "k": self.k, "count": self.count, "mean": self.mean, "m2": self.m2,
            "min": self.min, "max": self.max, "kll": self.kll.serialize(),
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> NumericProfile:
        out = cls(int(state["k"]))
        out.rows, out.missing, out.nonfinite = int(state["rows"]), int(state["missing"]), int(state["nonfinite"])
        out.count, out.mean, out.m2 = int(state["count"]), float(state["mean"]), float(state["m2"])
        out.min, out.max = float(state["min"]), float(state["max"])
        out.kll = dsk.kll_doubles_sketch.deserialize(bytes(state["kll"]))
        return out


class CategoricalProfile(FeatureProfile):
    """Frequent-items sketch of the categories (string form), HLL distinct count, missing count."""

    kind: Kind = CATEGORICAL

    def __init__(self, lg_max_k: int = DEFAULT_LG_MAX_K, lg_k: int = DEFAULT_LG_K) -> None:
        super().__init__()
        self.lg_max_k, self.lg_k = lg_max_k, lg_k
        self.items = dsk.frequent_strings_sketch(lg_max_k)
        self.hll = dsk.hll_sketch(lg_k, _HLL_TYPE)

    def update(self, column: pa.ChunkedArray | pa.Array) -> None:
        if isinstance(column, pa.ChunkedArray):
            column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
        if pa.types.is_dictionary(column.type):
            column = column.dictionary_decode()
        n = len(column)
        valid = column.drop_null()
        if pa.types.is_floating(valid.type):
            valid = pc.filter(valid, pc.invert(pc.is_nan(valid)))
        self.rows += n
        self.missing += n - len(valid)
        if len(valid) == 0:
            return
        counts = pc.value_counts(valid)
        values = counts.field("values").to_pylist()
        weights = counts.field("counts").to_pylist()
        self.update_counts(values, weights)

    def update_counts(self, values: Iterable[Any], weights: Iterable[int]) -> None:
        """Add pre-counted categories (no missing values among them)."""
        items, hll = self.items, self.hll
        for value, weight in zip(values, weights, strict=True):
            text = value if isinstance(value, str) else _category(value)
            items.update(text, int(weight))
            hll.update(text)

    def merge(self, other: FeatureProfile) -> None:
        if not isinstance(other, CategoricalProfile):
            raise ProfileError(f"cannot merge a {other.kind} profile into a categorical one")
        self.rows += other.rows
        self.missing += other.missing
        self.items.merge(other.items)
        union = dsk.hll_union(max(self.lg_k, other.lg_k))
        union.update(self.hll)
        union.update(other.hll)
        self.hll = union.get_result(_HLL_TYPE)
        self.lg_k = self.hll.lg_config_k

    @property
    def total_weight(self) -> int:
        """Non-missing values seen."""
        return int(self.items.total_weight)

    @property
    def frequency_error(self) -> float:
        """Maximum error of a category's frequency (share of :attr:`total_weight`)."""
        return float(self.items.epsilon)

    def top(self, n: int = 10) -> list[tuple[str, float]]:
        """Up to ``n`` most frequent categories with their estimated share of the non-missing values."""
        total = self.total_weight
        if total == 0:
            return []
        found = self.items.get_frequent_items(dsk.frequent_items_error_type.NO_FALSE_NEGATIVES)
        found.sort(key=lambda row: (-row[1], row[0]))
        return [(item, estimate / total) for item, estimate, _lo, _hi in found[:n]]

    def frequency(self, category: Any) -> float:
        """Estimated share of the non-missing values equal to ``category`` (0 for one never seen)."""
        total = self.total_weight
        return self.items.get_estimate(_category(category)) / total if total else 0.0

    def frequency_upper_bound(self, category: Any) -> float:
        total = self.total_weight
        return self.items.get_upper_bound(_category(category)) / total if total else 0.0

    def distinct(self) -> float:
        return float(self.hll.get_estimate())

    def distinct_bounds(self, std_devs: int = 2) -> tuple[float, float]:
        return float(self.hll.get_lower_bound(std_devs)), float(self.hll.get_upper_bound(std_devs))

    def to_state(self) -> dict[str, Any]:
        return {
            "kind": CATEGORICAL, "rows": self.rows, "missing": self.missing, "lg_max_k": self.lg_max_k,
            "lg_k": self.lg_k, "items": self.items.serialize(), "hll": self.hll.serialize_compact(),
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> CategoricalProfile:
        out = cls(int(state["lg_max_k"]), int(state["lg_k"]))
        out.rows, out.missing = int(state["rows"]), int(state["missing"])
        out.items = dsk.frequent_strings_sketch.deserialize(bytes(state["items"]))
        out.hll = dsk.hll_sketch.deserialize(bytes(state["hll"]))
        return out


class Profile:
    """Profiles of a set of features: mergeable, serializable, queryable by feature name.

    ``schema`` maps feature → kind. When it is not given, the first frame profiled fixes it (see
    :func:`infer_kind`); columns outside the schema are ignored from then on.
    """

    def __init__(self, schema: Mapping[str, str] | None = None, k: int = DEFAULT_K,
                 lg_max_k: int = DEFAULT_LG_MAX_K, lg_k: int = DEFAULT_LG_K) -> None:
        self.k, self.lg_max_k, self.lg_k = k, lg_max_k, lg_k
        self.rows = 0
        self.features: dict[str, FeatureProfile] = {}
        self.schema: dict[str, str] | None = None
        if schema is not None:
            self._set_schema(schema)

    def _set_schema(self, schema: Mapping[str, str]) -> None:
        for name, kind in schema.items():
            if kind not in (NUMERIC, CATEGORICAL):
                raise ProfileError(f"feature {name!r}: kind must be {NUMERIC!r} or {CATEGORICAL!r}, got {kind!r}")
        self.schema = dict(schema)
        self.features = {name: self._new(kind) for name, kind in self.schema.items()}

    def _new(self, kind: str) -> FeatureProfile:
        if kind == NUMERIC:
            return NumericProfile(self.k)
        return CategoricalProfile(self.lg_max_k, self.lg_k)

    @classmethod
    def from_frame(cls, frame: pd.DataFrame | pa.Table, schema: Mapping[str, str] | None = None,
                   **params: int) -> Profile:
        profile = cls(schema, **params)
        profile.update(frame)
        return profile

    # -- building ----------------------------------------------------------------------------------
    def update(self, frame: pd.DataFrame | pa.Table | pa.RecordBatch) -> Profile:
        """Add every row of ``frame`` (whole columns at a time); returns self."""
        table = _as_table(frame)
        if self.schema is None:
            inferred: dict[str, str] = {}
            for field in table.schema:
                kind = infer_kind(field.type)
                if kind is not None:
                    inferred[field.name] = kind
            self._set_schema(inferred)
        n = table.num_rows
        names = set(table.column_names)
        for name, feature in self.features.items():
            if name not in names:
                feature.add_missing(n)
                continue
            try:
                feature.update(table[name])
            except (pa.ArrowException, TypeError, ValueError) as exc:
                raise ProfileError(f"feature {name!r} ({feature.kind}, {table[name].type}): {exc}") from exc
        self.rows += n
        return self

    def merge(self, other: Profile) -> Profile:
        """Fold ``other`` into this profile (self is modified; returns self). Moments merge exactly, sketches
        by their own merge; features only in ``other`` are copied, and kinds must agree."""
        if self.schema is None:
            self.schema = {}
        for name, feature in other.features.items():
            mine = self.features.get(name)
            if mine is None:
                self.features[name] = feature.copy()
                self.schema[name] = feature.kind
                continue
            if mine.kind != feature.kind:
                raise ProfileError(f"feature {name!r}: cannot merge {feature.kind} into {mine.kind}")
            mine.merge(feature)
        self.rows += other.rows
        return self

    @classmethod
    def merge_all(cls, parts: Iterable[Profile | bytes]) -> Profile:
        """One profile from many partials (profiles or their serialized bytes)."""
        out: Profile | None = None
        for part in parts:
            profile = cls.deserialize(part) if isinstance(part, bytes | bytearray | memoryview) else part
            out = profile if out is None else out.merge(profile)
        return out if out is not None else cls({})

    # -- serialization -----------------------------------------------------------------------------
    def serialize(self) -> bytes:
        """msgpack envelope ``{format, version, rows, k, lg_max_k, lg_k, schema, features}``; each sketch in
        its own DataSketches binary format."""
        return msgpack.packb({
            "format": FORMAT, "version": FORMAT_VERSION, "rows": self.rows, "k": self.k,
            "lg_max_k": self.lg_max_k, "lg_k": self.lg_k, "schema": self.schema,
            "features": {name: feature.to_state() for name, feature in self.features.items()},
        }, use_bin_type=True)

    @classmethod
    def deserialize(cls, data: bytes | bytearray | memoryview) -> Profile:
        try:
            state = msgpack.unpackb(bytes(data), raw=False)
        except (ValueError, msgpack.UnpackException) as exc:
            raise ProfileError(f"not a serialized profile ({exc})") from None
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            raise ProfileError("not a serialized profile (no rayml-profile envelope)")
        if state["version"] > FORMAT_VERSION:
            raise ProfileError(f"profile format version {state['version']} is newer than {FORMAT_VERSION}")
        out = cls(None, k=state["k"], lg_max_k=state["lg_max_k"], lg_k=state["lg_k"])
        out.rows = int(state["rows"])
        out.schema = dict(state["schema"]) if state["schema"] is not None else None
        out.features = {name: FeatureProfile.from_state(s) for name, s in state["features"].items()}
        return out

    # -- queries -------------------------------------------------------------------------------------
    def __getitem__(self, name: str) -> FeatureProfile:
        try:
            return self.features[name]
        except KeyError:
            raise ProfileError(f"no feature {name!r} in the profile (have {sorted(self.features)})") from None

    def __contains__(self, name: object) -> bool:
        return name in self.features

    def numeric(self, name: str) -> NumericProfile:
        feature = self[name]
        if not isinstance(feature, NumericProfile):
            raise ProfileError(f"feature {name!r} is {feature.kind}, not numeric")
        return feature

    def categorical(self, name: str) -> CategoricalProfile:
        feature = self[name]
        if not isinstance(feature, CategoricalProfile):
            raise ProfileError(f"feature {name!r} is {feature.kind}, not categorical")
        return feature

    @property
    def rank_error(self) -> float:
        """KLL normalized rank error of this profile's numeric sketches (single query)."""
        return kll_rank_error(self.k)

    def quantiles(self, name: str, qs: Sequence[float] | np.ndarray) -> np.ndarray:
        return self.numeric(name).quantiles(qs)

    def quantile_edges(self, name: str, bins: int = 10) -> np.ndarray:
        """Interior edges of ``bins`` equal-mass bins (deduplicated): the reference bins for PSI/JS."""
        edges = self.quantiles(name, np.arange(1, bins) / bins)
        return np.unique(edges[np.isfinite(edges)])

    def cdf(self, name: str, points: Sequence[float] | np.ndarray, inclusive: bool = True) -> np.ndarray:
        return self.numeric(name).cdf(points, inclusive)

    def histogram(self, name: str, edges: Sequence[float] | np.ndarray) -> np.ndarray:
        return self.numeric(name).histogram(edges)

    def mean(self, name: str) -> float:
        feature = self.numeric(name)
        return feature.mean if feature.count else math.nan

    def std(self, name: str, ddof: int = 0) -> float:
        return self.numeric(name).std(ddof)

    def missing_rate(self, name: str) -> float:
        return self[name].missing_rate

    def top_categories(self, name: str, n: int = 10) -> list[tuple[str, float]]:
        return self.categorical(name).top(n)

    def distinct(self, name: str) -> float:
        return self.categorical(name).distinct()

    def summary(self) -> dict[str, Any]:
        """JSON-friendly overview: rows, schema, and per feature its headline figures."""
        out: dict[str, Any] = {"rows": self.rows, "k": self.k, "rank_error": self.rank_error, "features": {}}
        for name, feature in self.features.items():
            row: dict[str, Any] = {"kind": feature.kind, "rows": feature.rows, "missing_rate": feature.missing_rate}
            if isinstance(feature, NumericProfile):
                row.update(count=feature.count, nonfinite=feature.nonfinite,
                           mean=feature.mean if feature.count else None,
                           std=feature.std() if feature.count else None,
                           min=feature.min if feature.count else None, max=feature.max if feature.count else None,
                           quantiles=dict(zip(("p01", "p50", "p99"),
                                              feature.quantiles([0.01, 0.5, 0.99]).tolist(), strict=True)))
            elif isinstance(feature, CategoricalProfile):
                row.update(distinct=feature.distinct(), top=feature.top(5))
            out["features"][name] = row
        return out


def new_categories(reference: Profile, current: Profile, name: str, min_share: float = 0.01) -> list[tuple[str, float]]:
    """Categories frequent in ``current`` (share ≥ ``min_share``) that ``reference`` never saw (its upper
    bound on their share is under the reference sketch's error, i.e. indistinguishable from zero)."""
    ref = reference.categorical(name)
    floor = ref.frequency_error
    return [(item, share) for item, share in current.categorical(name).top(1 << 20)
            if share >= min_share and ref.frequency_upper_bound(item) <= floor]


def _category(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool | np.bool_):
        return str(bool(value))
    if isinstance(value, float | np.floating) and float(value).is_integer():
        return str(int(value))  # 3.0 from a pandas int column with NaN is category "3"
    if isinstance(value, np.generic):
        return str(value.item())
    return str(value)


def _float64(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Values as float64 with nulls as NaN (one copy at most)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    if pa.types.is_dictionary(column.type):
        column = column.dictionary_decode()
    if not pa.types.is_floating(column.type) or pa.types.is_float16(column.type):
        column = column.cast(pa.float64())
    values = np.asarray(column.to_numpy(zero_copy_only=False), dtype=np.float64)  # nulls → NaN
    # DataSketches' nanobind binding refuses read-only arrays, which zero-copy Arrow buffers are.
    return values if values.flags.writeable else values.copy()


def _as_table(frame: pd.DataFrame | pa.Table | pa.RecordBatch) -> pa.Table:
    if isinstance(frame, pa.Table):
        return frame
    if isinstance(frame, pa.RecordBatch):
        return pa.Table.from_batches([frame])
    if isinstance(frame, pd.DataFrame):
        try:
            return pa.Table.from_pandas(frame, preserve_index=False)
        except (pa.ArrowException, TypeError, ValueError) as exc:
            raise ProfileError(f"cannot convert the frame to Arrow (mixed-type column?): {exc}") from exc
    raise ProfileError(f"cannot profile a {type(frame).__name__}: pass a pandas DataFrame or a pyarrow Table")
