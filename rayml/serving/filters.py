"""Post-ranking business rules, from config: what may be shown, applied after the ranker ordered the candidates."""

from __future__ import annotations

import numpy as np
from pydantic import Field

from rayml.config import StrictModel


class PostFilters(StrictModel):
    """The ``filters:`` block of the recommender's args."""

    exclude_items: list[int] = Field([], description="Item ids never recommended (e.g. withdrawn, out of stock).")
    max_per_category: int | None = Field(
        None, ge=1, description="At most this many items of one category in an answer (diversity); null: no cap."
    )
    category_feature: str = Field("category", description="Item feature that holds the category.")
    exclude_clicked: bool = Field(
        False, description="Never recommend what the user clicked lately (the feature repo's `realtime.recent_clicks`)."
    )


def pick(order: np.ndarray, item_ids: np.ndarray, categories: np.ndarray | None, k: int,
         rules: PostFilters, clicked: np.ndarray | None = None) -> np.ndarray:
    """The first ``k`` positions of ``order`` (best first) that the rules allow; ``clicked``: the user's recently
    clicked items, excluded when ``rules.exclude_clicked``."""
    excluded = set(rules.exclude_items)
    if rules.exclude_clicked and clicked is not None:
        excluded.update(clicked.tolist())
    cap = rules.max_per_category
    if not excluded and (cap is None or categories is None):
        return order[:k]
    chosen: list[int] = []
    per_category: dict[object, int] = {}
    for position in order:
        if int(item_ids[position]) in excluded:
            continue
        if cap is not None and categories is not None:
            category = categories[position]
            if per_category.get(category, 0) >= cap:
                continue
            per_category[category] = per_category.get(category, 0) + 1
        chosen.append(int(position))
        if len(chosen) == k:
            break
    return np.asarray(chosen, dtype=np.int64)
