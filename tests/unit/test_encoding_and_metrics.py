"""Feature encoding (shared by training and serving) and quality metrics checked against scipy."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import mannwhitneyu

from rayml.features import FeatureEncoder, resolve_snapshot
from rayml.monitoring import dcg_at_k, ndcg_at_k, roc_auc

pytestmark = pytest.mark.unit


def table(**cols):
    return pa.table(cols)


def test_encoder_standardises_flags_missing_and_one_hots(tmp_path):
    train = table(id=[1, 2, 3, 4], x=[1.0, 3.0, None, 5.0], c=["a", "b", "a", None])
    enc = FeatureEncoder.fit(train, "id")
    assert enc.feature_names == ["x", "x__missing", "c=a", "c=b", "c=<unknown>"]
    out = enc.transform(table(id=[9, 9], x=[3.0, float("nan")], c=["b", "zzz"]))
    np.testing.assert_allclose(out, [[0.0, 0.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, 0.0, 1.0]], atol=1e-6)
    enc.save(tmp_path / "e.json")
    again = FeatureEncoder.load(tmp_path / "e.json")
    assert again == enc
    np.testing.assert_array_equal(again.transform(train), enc.transform(train))


def test_encoder_names_missing_columns():
    enc = FeatureEncoder.fit(table(id=[1], x=[1.0], c=["a"]), "id")
    with pytest.raises(KeyError, match=r"lacks columns \['c'\]"):
        enc.transform(table(id=[1], x=[1.0]))


def test_resolve_snapshot_picks_latest(tmp_path):
    for d in ("2026-01-01", "2026-01-08"):
        (tmp_path / f"valid_from={d}").mkdir()
    assert resolve_snapshot(tmp_path).name == "valid_from=2026-01-08"
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_snapshot(tmp_path / "nope")


def test_ndcg_known_values():
    all_gains = np.array([[3.0, 2.0, 1.0, 0.0]])
    assert ndcg_at_k(np.array([[3.0, 2.0, 1.0]]), all_gains, 3)[0] == pytest.approx(1.0)
    worst = ndcg_at_k(np.array([[0.0, 1.0, 2.0]]), all_gains, 3)[0]
    expected = (1 / np.log2(3) + 2 / np.log2(4)) / (3 + 2 / np.log2(3) + 1 / np.log2(4))
    assert worst == pytest.approx(expected)
    assert dcg_at_k(np.array([[1.0, 1.0]]), 1)[0] == 1.0


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 5)), min_size=2, max_size=60))
def test_auc_matches_scipy_mann_whitney(pairs):
    labels = np.array([p[0] for p in pairs])
    scores = np.array([p[1] for p in pairs], dtype=float)
    if labels.all() or not labels.any():
        with pytest.raises(ValueError):
            roc_auc(labels, scores)
        return
    u = mannwhitneyu(scores[labels], scores[~labels]).statistic
    assert roc_auc(labels, scores) == pytest.approx(u / (labels.sum() * (~labels).sum()))
