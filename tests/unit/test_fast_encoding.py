"""The numpy encoding path (transform_columns) and precomputed item rows equal the pyarrow transform exactly."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rayml.features import FeatureEncoder
from rayml.features.encoding import CategoricalVocab, NumericStats
from rayml.features.online import EmbeddedOnlineStore, Lookup
from rayml.serving.item_rows import EncodedItems

pytestmark = pytest.mark.unit

LABELS = ["a", "b", "c", "d", "zz", ""]
numbers = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.just(np.nan), st.just(np.inf))
labels = st.one_of(st.none(), st.sampled_from(LABELS))


def arrow_table(ids: np.ndarray, columns: dict[str, np.ndarray]) -> pa.Table:
    """The table serving built before transform_columns existed (Lookup.to_arrow)."""
    return Lookup(columns, np.ones(len(ids), bool)).to_arrow("id", ids)


@st.composite
def encoders_and_columns(draw):
    """A random encoder (vocabularies may be empty or miss labels) and columns in the online stores' form."""
    n = draw(st.integers(0, 12))
    numeric = [
        NumericStats(f"x{j}", draw(st.floats(-1e3, 1e3)), draw(st.floats(1e-3, 1e3)))
        for j in range(draw(st.integers(0, 3)))
    ]
    categorical = [
        CategoricalVocab(f"c{j}", sorted(draw(st.sets(st.sampled_from(LABELS[:5]), max_size=4))))
        for j in range(draw(st.integers(0, 3)))
    ]
    columns: dict[str, np.ndarray] = {}
    for stats in numeric:
        kind = draw(st.sampled_from(["float64", "float32", "int64", "bool"]))
        if kind == "int64":
            columns[stats.name] = np.array(draw(st.lists(st.integers(-2**40, 2**40), min_size=n, max_size=n)),
                                           dtype=np.int64)
        elif kind == "bool":
            columns[stats.name] = np.array(draw(st.lists(st.booleans(), min_size=n, max_size=n)), dtype=bool)
        else:
            values = draw(st.lists(numbers, min_size=n, max_size=n))
            with np.errstate(over="ignore"):
                columns[stats.name] = np.array(values, dtype=np.float64).astype(kind)
    for vocab in categorical:
        columns[vocab.name] = np.array(draw(st.lists(labels, min_size=n, max_size=n)), dtype=object)
    return FeatureEncoder("id", numeric, categorical), columns, n


@settings(max_examples=300, deadline=None)
@given(encoders_and_columns())
def test_transform_columns_equals_transform_bit_for_bit(case):
    encoder, columns, n = case
    with np.errstate(over="ignore"):  # huge values overflow float32 to inf on both paths alike
        expected = encoder.transform(arrow_table(np.arange(n), columns))
        got = encoder.transform_columns(columns, n=n)
    assert got.dtype == np.float32 and got.shape == (n, encoder.width)
    np.testing.assert_array_equal(got.view(np.uint32), expected.view(np.uint32))


def test_transform_columns_matches_a_fitted_encoder_on_store_lookups():
    train = pa.table({"id": [1, 2, 3, 4], "x": [1.0, 3.0, None, 5.0], "n": [1, 2, 3, 4],
                      "c": ["a", "b", "a", None]})
    encoder = FeatureEncoder.fit(train, "id")
    store = EmbeddedOnlineStore()
    store.write("v", train, "id")
    ids = np.array([3, 99, 1, 1, 4])  # unknown and repeated ids come back NaN / None
    lookup = store.lookup("v", ids)
    np.testing.assert_array_equal(encoder.transform_columns(lookup.columns),
                                  encoder.transform(lookup.to_arrow("id", ids)))


def test_transform_columns_takes_the_arrow_path_for_other_dtypes():
    encoder = FeatureEncoder("id", [NumericStats("x", 1.0, 2.0)], [CategoricalVocab("c", ["1", "a", "nan"])])
    cases = [  # numbers in object arrays, numpy strings, a float column where strings were expected
        {"x": np.array([1, None, 2.5], dtype=object), "c": np.array([1, None, 3], dtype=object)},
        {"x": np.array([True, None, False], dtype=object), "c": np.array(["a", "1", "b"])},
        {"x": np.array([0.0, 1.0, 2.0]), "c": np.array([np.nan, 1.0, np.nan])},
        {"x": np.array([0.0, 1.0, 2.0]), "c": np.array([np.nan, np.nan, np.nan])},  # Redis: strings all missing
        {"x": np.array([0, 1, 2], dtype=np.uint8), "c": np.array([np.str_("a"), None, "1"], dtype=object)},
    ]
    for columns in cases:
        np.testing.assert_array_equal(encoder.transform_columns(columns),
                                      encoder.transform(arrow_table(np.arange(3), columns)))
    all_nan = {"x": np.zeros(2), "c": np.full(2, np.nan)}
    without_nan = FeatureEncoder("id", encoder.numeric, [CategoricalVocab("c", ["a"])])
    np.testing.assert_array_equal(without_nan.transform_columns(all_nan),
                                  without_nan.transform(arrow_table(np.arange(2), all_nan)))


def test_transform_columns_rejects_missing_or_ragged_columns():
    encoder = FeatureEncoder("id", [NumericStats("x", 0.0, 1.0)], [CategoricalVocab("c", ["a"])])
    with pytest.raises(KeyError, match=r"lack \['c'\]"):
        encoder.transform_columns({"x": np.zeros(2)})
    with pytest.raises(ValueError, match="every column must have 2 rows"):
        encoder.transform_columns({"x": np.zeros(2), "c": np.array(["a"], dtype=object)})
    with pytest.raises(ValueError, match="n is required"):
        FeatureEncoder("id").transform_columns({})
    assert FeatureEncoder("id").transform_columns({}, n=3).shape == (3, 0)


def item_world(n: int, seed: int) -> tuple[FeatureEncoder, pa.Table]:
    rng = np.random.default_rng(seed)
    price = rng.lognormal(3, 0.6, n)
    price[rng.random(n) < 0.2] = np.nan
    category = np.array([f"c{c:02d}" for c in rng.integers(0, 12, n)], dtype=object)
    category[rng.random(n) < 0.1] = None
    table = pa.table({"item_id": rng.permutation(np.arange(10, 10 + 3 * n, 3)), "price": price,
                      "quality": rng.normal(size=n), "category": category})
    return FeatureEncoder.fit(table.slice(0, n // 2), "item_id", max_vocab=8), table  # leaves unknown labels


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_encoded_items_equal_encoding_the_looked_up_rows(seed):
    encoder, table = item_world(200, seed)
    store = EmbeddedOnlineStore()
    store.write("items", table, "item_id")
    known = table["item_id"].to_numpy()
    encoded = EncodedItems(encoder, known, {c: table[c].to_numpy(zero_copy_only=False) for c in encoder.columns})
    rng = np.random.default_rng(seed)
    queries = [
        rng.choice(known, 100),  # unsorted, repeats
        np.concatenate([rng.choice(known, 5), [-1, 0, 11, 10 ** 12], known[:3], known[:3]]),  # unknown ids
        np.array([], dtype=np.int64),
        np.array([known.min(), known.max(), known.max() + 1]),
    ]
    for ids in queries:
        lookup = store.lookup("items", ids)
        rows, found = encoded.lookup(ids)
        np.testing.assert_array_equal(found, lookup.found)
        np.testing.assert_array_equal(rows, encoder.transform(lookup.to_arrow("item_id", ids)))
        out = np.full((len(ids), encoder.width + 3), 7.0, np.float32)
        encoded.rows(ids, out=out[:, 3:])
        np.testing.assert_array_equal(out[:, 3:], rows)
        assert (out[:, :3] == 7.0).all()


def test_encoded_items_from_a_lookup_keep_only_found_items_and_the_last_duplicate():
    encoder, table = item_world(50, 3)
    store = EmbeddedOnlineStore()
    store.write("items", table, "item_id")
    known = table["item_id"].to_numpy()
    universe = np.concatenate([known, [-5, -6]])
    encoded = EncodedItems.from_lookup(encoder, universe, store.lookup("items", universe, encoder.columns))
    assert len(encoded) == len(known)
    assert encoded.nbytes == (len(known) + 1) * encoder.width * 4 + len(known) * 8
    _, found = encoded.lookup(np.array([-5, known[0]]))
    np.testing.assert_array_equal(found, [False, True])

    first, last = {"price": np.array([1.0]), "quality": np.array([0.0]), "category": np.array(["c01"], object)}, \
        {"price": np.array([50.0]), "quality": np.array([1.0]), "category": np.array([None], object)}
    dup = EncodedItems(encoder, np.array([7, 7]), {c: np.concatenate([first[c], last[c]]) for c in first})
    np.testing.assert_array_equal(dup.rows(np.array([7])), encoder.transform_columns(last))


def test_encoded_items_with_no_items_give_the_all_missing_row():
    encoder, table = item_world(20, 4)
    empty = EncodedItems(encoder, np.array([], np.int64), {c: table[c].to_numpy(zero_copy_only=False)[:0]
                                                           for c in encoder.columns})
    rows, found = empty.lookup(np.array([1, 2]))
    assert not found.any()
    missing = encoder.transform(pa.table({"price": [None, None], "quality": [None, None],
                                          "category": pa.array([None, None], pa.string())}))
    np.testing.assert_array_equal(rows, missing)
