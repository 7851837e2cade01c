"""The embedded online store: batch lookups, defaults and a missing count for unknown ids."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from rayml.features.online import EmbeddedOnlineStore

pytestmark = pytest.mark.unit


def store() -> EmbeddedOnlineStore:
    s = EmbeddedOnlineStore()
    s.write("users", pa.table({"user_id": [3, 1, 2, 3], "spend": [1.0, 2.0, None, 9.0], "tier": ["a", "b", None, "c"]}),
            key="user_id")
    return s


def test_batch_lookup_in_request_order_with_latest_duplicate():
    result = store().lookup("users", np.array([3, 1, 2]))
    assert result.found.tolist() == [True, True, True] and result.missing == 0
    assert result.columns["spend"][:2].tolist() == [9.0, 2.0] and np.isnan(result.columns["spend"][2])
    assert result.columns["tier"].tolist() == ["c", "b", None]


def test_unknown_ids_get_defaults_and_are_counted():
    result = store().lookup("users", np.array([7, 1, -5, 100]), ["spend"])
    assert result.found.tolist() == [False, True, False, False] and result.missing == 3
    assert np.isnan(result.columns["spend"][[0, 2, 3]]).all() and result.columns["spend"][1] == 2.0
    table = result.to_arrow("user_id", np.array([7, 1, -5, 100]))
    assert table.column_names == ["user_id", "spend"]


def test_unknown_view_or_feature_is_named():
    with pytest.raises(KeyError, match="no view 'items'"):
        store().lookup("items", np.array([1]))
    with pytest.raises(KeyError, match="no feature 'age'"):
        store().lookup("users", np.array([1]), ["age"])
