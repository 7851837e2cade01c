"""The teacher's privileged features: point-in-time correct (no label or later event leaks), and consistent
between training rows and ranking at evaluation time."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rayml.models.data import load_training_data
from rayml.models.distill import world_privileged
from rayml.models.evaluate import paired_gap
from rayml.models.networks import Teacher
from rayml.models.privileged import (
    PRIOR_CTR,
    PRIOR_WEIGHT,
    PRIVILEGED_COLUMNS,
    LogHistory,
    event_features,
    pair_features,
    strictly_before_sums,
)
from rayml.models.ray_train import TransferPairs, distillation_loss

pytestmark = pytest.mark.unit

T0 = np.datetime64("2026-01-01T00:00:00", "us")


def ts(*seconds: int) -> np.ndarray:
    return T0 + np.array(seconds, dtype="timedelta64[s]")


# A crafted log for users 7 and 3, out of time order. Items 0, 1 are in category 0, item 2 in category 1.
ITEM_CATEGORY = np.array([0, 0, 1])
ITEM_X = np.array([[1.0, 0.0], [0.0, 1.0], [5.0, 5.0]], dtype=np.float32)
USER = np.array([7, 7, 3, 7, 7, 7])
TIME = ts(30, 10, 10, 20, 20, 40)
CLICKED = np.array([1, 1, 1, 0, 1, 0])
ITEM = np.array([1, 0, 2, 1, 2, 0])


def test_strictly_before_sums_exclude_the_row_its_ties_and_later_rows():
    sums = strictly_before_sums(USER, TIME, np.stack([np.ones(6), CLICKED], axis=1))
    # user 7 in time order: t10 (click), t20 (no click), t20 (click), t30 (click), t40
    np.testing.assert_array_equal(sums[:, 0], [3, 0, 0, 1, 1, 4])
    np.testing.assert_array_equal(sums[:, 1], [2, 0, 0, 1, 1, 3])


def test_event_features_use_only_strictly_earlier_impressions():
    features = event_features(USER, TIME, CLICKED, ITEM, ITEM_CATEGORY, ITEM_X)
    assert features.shape == (6, len(PRIVILEGED_COLUMNS) + ITEM_X.shape[1])
    col = {name: i for i, name in enumerate(PRIVILEGED_COLUMNS)}
    # row 0: user 7 at t30 shown item 1 (cat 0); before it: t10 item 0 click, t20 item 1 no click, t20 item 2 click
    assert np.isclose(features[0, col["log_impressions"]], np.log1p(3))
    assert np.isclose(features[0, col["log_clicks"]], np.log1p(2))
    assert np.isclose(features[0, col["ctr"]], (2 + PRIOR_CTR * PRIOR_WEIGHT) / (3 + PRIOR_WEIGHT))
    assert np.isclose(features[0, col["category_log_impressions"]], np.log1p(2))  # items 0 and 1
    assert np.isclose(features[0, col["category_log_clicks"]], np.log1p(1))
    np.testing.assert_allclose(features[0, len(col):], (ITEM_X[0] + ITEM_X[2]) / 2)  # clicked items 0 and 2
    # item 1 before t30: shown once (user 7 at t20, not clicked)
    shrunk = (0 + PRIOR_CTR * PRIOR_WEIGHT) / (1 + PRIOR_WEIGHT)
    assert np.isclose(features[0, col["item_log_impressions"]], np.log1p(1))
    assert np.isclose(features[0, col["item_ctr_logit"]], np.log(shrunk / (1 - shrunk)))
    # item 2 at t20 (row 4) counts user 3's click at t10: item history spans users
    assert np.isclose(features[4, col["item_log_impressions"]], np.log1p(1))
    assert features[4, col["item_ctr_logit"]] > features[0, col["item_ctr_logit"]]
    # rows 3 and 4 share t20: neither sees the other's click, only t10's
    for row in (3, 4):
        assert np.isclose(features[row, col["log_impressions"]], np.log1p(1))
        np.testing.assert_allclose(features[row, len(col):], ITEM_X[0])
    # a user's first impression has an empty history, whatever its label
    for row in (1, 2):
        assert np.isclose(features[row, col["log_impressions"]], 0) and not features[row, len(col):].any()


def test_no_leak_flipping_a_label_changes_only_strictly_later_rows_of_its_user_or_item():
    base = event_features(USER, TIME, CLICKED, ITEM, ITEM_CATEGORY, ITEM_X)
    for row in range(len(USER)):
        flipped = CLICKED.copy()
        flipped[row] = 1 - flipped[row]
        changed = np.any(event_features(USER, TIME, flipped, ITEM, ITEM_CATEGORY, ITEM_X) != base, axis=1)
        may_change = ((USER[row] == USER) | (ITEM[row] == ITEM)) & (TIME[row] < TIME)
        assert not changed[~may_change].any(), f"flipping row {row} changed rows {np.flatnonzero(changed)}"
        assert changed[may_change].all()


def test_history_as_of_matches_the_features_of_an_impression_at_that_time():
    history = LogHistory.as_of(np.array([3, 7, 9]), ts(30)[0], USER, TIME, CLICKED, ITEM, ITEM_CATEGORY, ITEM_X)
    per_item = history.features(7, ITEM_CATEGORY)  # [3 items, P]
    row0 = event_features(USER, TIME, CLICKED, ITEM, ITEM_CATEGORY, ITEM_X)[0]  # user 7, t30, item 1
    np.testing.assert_allclose(per_item[1], row0, rtol=1e-6)
    assert np.isclose(history.features(9, ITEM_CATEGORY)[:, 0], 0).all()  # a user with no impressions
    np.testing.assert_array_equal(history.item_impressions, [1, 1, 2])  # all users, before t30
    with pytest.raises(KeyError, match="user 4 is not in this history"):
        history.features(4, ITEM_CATEGORY)


def test_world_privileged_features_line_up_with_training_rows(tiny_world):
    data = load_training_data(tiny_world)
    privileged = world_privileged(tiny_world, data)
    assert privileged.per_event.shape == (len(data.label), len(PRIVILEGED_COLUMNS) + data.item_x.shape[1])
    assert np.isfinite(privileged.per_event).all()
    # ranking time sees every impression of the user; the user's last impression saw all but its own block
    user = int(data.user_ids[data.event_user[0]])
    mine = np.flatnonzero(data.user_ids[data.event_user] == user)
    at_end = privileged.for_all_items(user)
    assert at_end.shape == (len(data.item_ids), privileged.width)
    assert np.isclose(at_end[0, 0], np.log1p(len(mine)))
    assert privileged.per_event[mine, 0].max() <= np.log1p(len(mine) - 1) + 1e-6


def test_teacher_reads_privileged_columns_and_the_student_width_is_unchanged():
    torch.manual_seed(0)
    teacher = Teacher(3, 2, cross_dim=4, hidden=(8,), dropout=0.0, privileged_dim=5).eval()
    x = torch.randn(6, 3 + 2 + 5)
    moved = x.clone()
    moved[:, 5:] += 1.0
    assert teacher(x).shape == (6,) and not torch.allclose(teacher(x), teacher(moved))


def test_paired_gap_matches_scipy_and_covers_the_true_difference():
    from scipy import stats

    rng = np.random.default_rng(0)
    b = rng.uniform(0.6, 0.9, 400)
    a = b + 0.01 + rng.normal(0, 0.02, 400)
    gap = paired_gap(a, b)
    assert gap.low < 0.01 < gap.high and gap.low < gap.mean < gap.high and gap.users == 400
    assert np.isclose(gap.p_value, stats.ttest_rel(a, b).pvalue)
    with pytest.raises(ValueError, match="got shapes"):
        paired_gap(a, b[:10])


def test_pair_features_of_logged_pairs_equal_event_features_and_unshown_pairs_see_only_the_past():
    logged = pair_features(USER, TIME, CLICKED, ITEM, ITEM_CATEGORY, ITEM_X, USER, ITEM, TIME)
    np.testing.assert_array_equal(logged, event_features(USER, TIME, CLICKED, ITEM, ITEM_CATEGORY, ITEM_X))
    # user 3 never saw item 0; at t20 item 0 had one impression (user 7, t10, clicked)
    unshown = pair_features(USER, TIME, CLICKED, ITEM, ITEM_CATEGORY, ITEM_X, np.array([3]), np.array([0]), ts(20))
    col = {name: i for i, name in enumerate(PRIVILEGED_COLUMNS)}
    assert np.isclose(unshown[0, col["log_impressions"]], np.log1p(1))  # user 3's t10 impression
    assert np.isclose(unshown[0, col["category_log_impressions"]], 0)  # it was item 2, category 1
    assert np.isclose(unshown[0, col["item_log_impressions"]], np.log1p(1))
    np.testing.assert_allclose(unshown[0, len(col):], ITEM_X[2])


def test_transfer_rows_train_on_soft_labels_alone():
    logit = torch.tensor([0.3, -1.2, 2.0])
    teacher = torch.tensor([1.0, -0.5, 0.2])
    hard = torch.tensor([1.0, float("nan"), 0.0])
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    soft = bce(logit / 2.0, torch.sigmoid(teacher / 2.0), reduction="none") * 4.0
    labeled = 0.7 * soft + 0.3 * bce(logit, torch.nan_to_num(hard), reduction="none")
    expected = torch.stack([labeled[0], soft[1], labeled[2]]).mean()
    assert torch.isclose(distillation_loss(logit, hard, teacher, 2.0, 0.7), expected)
    with pytest.raises(ValueError, match="need teacher logits"):
        distillation_loss(logit, hard, None, 2.0, 0.7)


def test_transfer_pairs_keep_the_user_and_time_of_their_impression(tiny_world):
    data = load_training_data(tiny_world)
    rows = np.flatnonzero(~data.is_holdout)
    pairs = TransferPairs.sample(data, rows, 2)
    assert len(pairs) == 2 * len(rows)
    np.testing.assert_array_equal(pairs.source, np.repeat(rows, 2))
    np.testing.assert_array_equal(pairs.user_row, data.event_user[pairs.source])
    assert pairs.item_row.min() >= 0 and pairs.item_row.max() < len(data.item_ids)
    assert len(np.unique(pairs.item_row)) > 0.5 * len(data.item_ids)  # uniform over items, not the logged ones
