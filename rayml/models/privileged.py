"""Privileged features for the teacher: point-in-time aggregates of the impression log.

The teacher may use information that the served student never sees (learning with privileged information,
Lopez-Paz et al. 2016): here, what the user did before and how the candidate item fared with everyone before,
aggregates that need the event log (a streaming aggregation pipeline to serve). For an impression at time ``t``
they are computed from impressions with timestamp ``< t`` only, so an impression's own click, a click at the
same instant and every later event are excluded. For ranking at an evaluation time ``as_of`` they are computed
from the impressions before ``as_of``.

Columns (``PRIVILEGED_COLUMNS`` then the item encoder's columns), for a (user, candidate item) pair:

- ``log_impressions``, ``log_clicks``: log1p of the user's prior impression and click counts;
- ``ctr``: the user's prior click-through, shrunk towards ``PRIOR_CTR`` with ``PRIOR_WEIGHT`` pseudo-impressions;
- ``category_log_impressions``, ``category_log_clicks``, ``category_ctr``: the same, restricted to prior
  impressions of items in the candidate's category;
- ``item_log_impressions``, ``item_ctr_logit``: the candidate item's prior impressions (all users) and the
  log-odds of its shrunk click-through;
- ``clicked_mean.<item column>``: the mean encoded features of the items the user clicked before (zeros before
  the first click). Categories are one-hot in the item encoding, so this includes the user's click share per
  category.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

if TYPE_CHECKING:
    from rayml.models.data import TrainingData

PRIOR_CTR = 0.2
PRIOR_WEIGHT = 5.0
PRIVILEGED_COLUMNS = ("log_impressions", "log_clicks", "ctr", "category_log_impressions", "category_log_clicks",
                      "category_ctr", "item_log_impressions", "item_ctr_logit")


def _shrunk_ctr(clicks: np.ndarray, impressions: np.ndarray) -> np.ndarray:
    return (clicks + PRIOR_CTR * PRIOR_WEIGHT) / (impressions + PRIOR_WEIGHT)


def assemble(impressions: np.ndarray, clicks: np.ndarray, category_impressions: np.ndarray,
             category_clicks: np.ndarray, item_impressions: np.ndarray, item_clicks: np.ndarray,
             clicked_sum: np.ndarray) -> np.ndarray:
    """Privileged feature matrix [n, 8 + Fi] from prior counts [n] and the sum of clicked items' features [n, Fi]."""
    mean = clicked_sum / np.maximum(clicks, 1.0)[:, None]
    item_ctr = _shrunk_ctr(item_clicks, item_impressions)
    return np.concatenate([
        np.stack([np.log1p(impressions), np.log1p(clicks), _shrunk_ctr(clicks, impressions),
                  np.log1p(category_impressions), np.log1p(category_clicks),
                  _shrunk_ctr(category_clicks, category_impressions),
                  np.log1p(item_impressions), np.log(item_ctr / (1 - item_ctr))], axis=1),
        mean,
    ], axis=1).astype(np.float32)


def strictly_before_sums(group: np.ndarray, ts: np.ndarray, values: np.ndarray) -> np.ndarray:
    """For each row, the sum of ``values`` over rows of the same ``group`` with a strictly smaller ``ts``.

    Args:
        group: [E] integer group key (e.g. user id).
        ts: [E] timestamps (any orderable dtype).
        values: [E, k] values to sum.

    Returns:
        [E, k] float64, in the input order. Rows that share a (group, ts) get the same sum, which includes none
        of them.
    """
    n = len(group)
    values = np.asarray(values, np.float64).reshape(n, -1)
    if n == 0:
        return values.copy()
    order = np.lexsort((ts, group))
    g, t, v = group[order], ts[order], values[order]
    inclusive = np.cumsum(v, axis=0)
    exclusive = inclusive - v  # sum over earlier rows of the whole sorted array
    index = np.arange(n)
    group_start = np.r_[True, g[1:] != g[:-1]]
    tie_start = group_start | np.r_[True, t[1:] != t[:-1]]
    first_of_group = np.maximum.accumulate(np.where(group_start, index, 0))
    first_of_tie = np.maximum.accumulate(np.where(tie_start, index, 0))
    # earlier rows of the same group, as seen from the first row of this (group, ts) block
    before = exclusive[first_of_tie] - exclusive[first_of_group]
    out = np.empty_like(before)
    out[order] = before
    return out


def event_features(user: np.ndarray, ts: np.ndarray, clicked: np.ndarray, item_row: np.ndarray,
                   item_category: np.ndarray, item_x: np.ndarray) -> np.ndarray:
    """Privileged features of every impression, from strictly earlier impressions. [E, 8 + Fi].

    Args:
        user: [E] user id; ts: [E] impression time; clicked: [E] bool or 0/1.
        item_row: [E] row of the shown item in ``item_x`` / ``item_category``.
        item_category: [I] integer category code per item row; item_x: [I, Fi] encoded item features.
    """
    user = np.asarray(user, np.int64)
    click = np.asarray(clicked, np.float64)
    per_user = strictly_before_sums(user, ts, np.stack([np.ones_like(click), click], axis=1))
    category = item_category[item_row].astype(np.int64)
    per_category = strictly_before_sums(user * (int(item_category.max()) + 1) + category, ts,
                                        np.stack([np.ones_like(click), click], axis=1))
    per_item = strictly_before_sums(np.asarray(item_row, np.int64), ts, np.stack([np.ones_like(click), click], axis=1))
    clicked_sum = strictly_before_sums(user, ts, item_x[item_row] * click[:, None])
    return assemble(per_user[:, 0], per_user[:, 1], per_category[:, 0], per_category[:, 1], per_item[:, 0],
                    per_item[:, 1], clicked_sum)


@dataclass(frozen=True)
class LogHistory:
    """Users' and items' impression history up to one instant, for scoring any (user, item) pair at that instant.

    Attributes:
        user_ids: [U] sorted user ids covered.
        impressions, clicks: [U] prior counts.
        category_impressions, category_clicks: [U, C] prior counts per item category.
        clicked_sum: [U, Fi] sum of the encoded features of the items clicked.
        item_impressions, item_clicks: [I] prior counts per item row, over all users (not only ``user_ids``).
    """

    user_ids: np.ndarray
    impressions: np.ndarray
    clicks: np.ndarray
    category_impressions: np.ndarray
    category_clicks: np.ndarray
    clicked_sum: np.ndarray
    item_impressions: np.ndarray
    item_clicks: np.ndarray

    @classmethod
    def as_of(cls, user_ids: np.ndarray, as_of: np.datetime64, user: np.ndarray, ts: np.ndarray,
              clicked: np.ndarray, item_row: np.ndarray, item_category: np.ndarray,
              item_x: np.ndarray) -> LogHistory:
        """Histories of ``user_ids`` and of every item from the impressions with ``ts < as_of`` (same arguments
        as :func:`event_features`)."""
        user_ids = np.unique(np.asarray(user_ids, np.int64))
        n_categories = int(item_category.max()) + 1
        before = ts < as_of
        all_click = np.asarray(clicked, np.float64)[before]
        pos = np.searchsorted(user_ids, user)
        keep = before & (pos < len(user_ids))
        keep[keep] = user_ids[pos[keep]] == user[keep]
        u, rows, click = pos[keep], item_row[keep], np.asarray(clicked, np.float64)[keep]
        cells = u * n_categories + item_category[rows]
        size = len(user_ids) * n_categories
        clicked_sum = np.zeros((len(user_ids), item_x.shape[1]))
        np.add.at(clicked_sum, u, item_x[rows] * click[:, None])
        return cls(
            user_ids=user_ids,
            impressions=np.bincount(u, minlength=len(user_ids)).astype(np.float64),
            clicks=np.bincount(u, click, minlength=len(user_ids)),
            category_impressions=np.bincount(cells, minlength=size).reshape(len(user_ids), n_categories).astype(np.float64),
            category_clicks=np.bincount(cells, click, minlength=size).reshape(len(user_ids), n_categories),
            clicked_sum=clicked_sum,
            item_impressions=np.bincount(item_row[before], minlength=len(item_x)).astype(np.float64),
            item_clicks=np.bincount(item_row[before], all_click, minlength=len(item_x)),
        )

    def features(self, user_id: int, item_category: np.ndarray) -> np.ndarray:
        """Privileged features of ``user_id`` paired with every item row (``item_category``: [I] codes). [I, 8 + Fi]."""
        i = int(np.searchsorted(self.user_ids, user_id))
        if i >= len(self.user_ids) or self.user_ids[i] != user_id:
            raise KeyError(f"user {user_id} is not in this history ({len(self.user_ids)} users)")
        n = len(item_category)
        return assemble(np.full(n, self.impressions[i]), np.full(n, self.clicks[i]),
                        self.category_impressions[i, item_category], self.category_clicks[i, item_category],
                        self.item_impressions, self.item_clicks, np.repeat(self.clicked_sum[i : i + 1], n, axis=0))


@dataclass(frozen=True)
class PrivilegedFeatures:
    """The teacher's privileged inputs for one :class:`~rayml.models.data.TrainingData`.

    Attributes:
        per_event: [E, P] features of every impression, from the user's strictly earlier impressions.
        item_category: [I] category code of each item row.
        at_end: every user's history at the end of the log, for ranking all items at evaluation time.
    """

    per_event: np.ndarray
    item_category: np.ndarray
    at_end: LogHistory

    @property
    def width(self) -> int:
        return int(self.per_event.shape[1])

    def for_all_items(self, user_id: int) -> np.ndarray:
        """Features of ``user_id`` paired with every item row, as of the end of the log. [I, P]."""
        return self.at_end.features(user_id, self.item_category)


def item_categories(items: pa.Table, item_ids: np.ndarray) -> np.ndarray:
    """Integer code of each item's ``category`` (nulls share one code), aligned with sorted ``item_ids``. [I]."""
    table = items.take(pc.sort_indices(items, [("item_id", "ascending")]))
    if not np.array_equal(table["item_id"].to_numpy(), item_ids):
        raise ValueError("the item table and the training data list different items")
    names = np.asarray(table["category"].to_pylist(), dtype=object)
    return np.unique(names.astype(str), return_inverse=True)[1].astype(np.int64)


def load_privileged(data: TrainingData, items: pa.Table, end: np.datetime64) -> PrivilegedFeatures:
    """Privileged features of ``data``'s impressions, plus every user's history before ``end`` (the log's end)."""
    category = item_categories(items, data.item_ids)
    user = data.user_ids[data.event_user]
    per_event = event_features(user, data.event_ts, data.label, data.event_item, category, data.item_x)
    at_end = LogHistory.as_of(data.user_ids, end, user, data.event_ts, data.label, data.event_item, category,
                               data.item_x)
    return PrivilegedFeatures(per_event, category, at_end)


def _sums_before(log_key: np.ndarray, log_ts: np.ndarray, log_values: np.ndarray, key: np.ndarray,
                 ts: np.ndarray) -> np.ndarray:
    """For each query (key, ts), the sum of ``log_values`` [E, k] over log rows with that key and ``log_ts < ts``.

    Timestamps are datetime64[us] or integers; returns [Q, k] float64.
    """
    origin = min(log_ts.min(), ts.min()) if len(log_ts) and len(ts) else 0
    log_t = (log_ts - origin).astype(np.int64)
    query_t = (ts - origin).astype(np.int64)
    span = int(max(log_t.max(initial=0), query_t.max(initial=0))) + 1
    log_code = np.asarray(log_key, np.int64) * span + log_t  # one sortable code per (key, ts)
    order = np.argsort(log_code, kind="stable")
    prefix = np.vstack([np.zeros((1, log_values.shape[1])), np.cumsum(np.asarray(log_values, np.float64)[order], 0)])
    key = np.asarray(key, np.int64)
    return prefix[np.searchsorted(log_code[order], key * span + query_t, side="left")] - \
        prefix[np.searchsorted(log_code[order], key * span, side="left")]


def pair_features(user: np.ndarray, ts: np.ndarray, clicked: np.ndarray, item_row: np.ndarray,
                  item_category: np.ndarray, item_x: np.ndarray, query_user: np.ndarray, query_item: np.ndarray,
                  query_ts: np.ndarray) -> np.ndarray:
    """Privileged features of arbitrary (user, item row, time) pairs against the log (``user`` .. ``item_row``,
    as in :func:`event_features`), from log rows strictly before each pair's time. [Q, 8 + Fi].

    For pairs that are the log's own impressions this equals :func:`event_features`; other pairs (an unshown
    item at the time of a user's impression) make a larger transfer set for distillation.
    """
    user, query_user = np.asarray(user, np.int64), np.asarray(query_user, np.int64)
    click = np.asarray(clicked, np.float64)
    counts = np.stack([np.ones_like(click), click], axis=1)
    n_categories = int(item_category.max()) + 1
    per_user = _sums_before(user, ts, np.hstack([counts, item_x[item_row] * click[:, None]]), query_user, query_ts)
    per_category = _sums_before(user * n_categories + item_category[item_row], ts, counts,
                                query_user * n_categories + item_category[query_item], query_ts)
    per_item = _sums_before(np.asarray(item_row, np.int64), ts, counts, np.asarray(query_item, np.int64), query_ts)
    return assemble(per_user[:, 0], per_user[:, 1], per_category[:, 0], per_category[:, 1], per_item[:, 0],
                    per_item[:, 1], per_user[:, 2:])


def load_pair_privileged(data: TrainingData, item_category: np.ndarray, source: np.ndarray,
                         item_row: np.ndarray) -> np.ndarray:
    """Privileged features of unshown pairs: the user and time of impression ``source`` [N], item ``item_row``
    [N]; from the log strictly before that time. [N, P]."""
    user = data.user_ids[data.event_user]
    return pair_features(user, data.event_ts, data.label, data.event_item, item_category, data.item_x,
                         user[source], item_row, data.event_ts[source])
