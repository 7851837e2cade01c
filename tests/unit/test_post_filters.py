"""Post-ranking business rules: excluded items and a per-category cap, in ranked order."""

from __future__ import annotations

import numpy as np
import pytest

from rayml.config import ConfigError
from rayml.serving import RecommenderArgs
from rayml.serving.config import load_serving_repo
from rayml.serving.filters import PostFilters, pick

pytestmark = pytest.mark.unit

ITEMS = np.array([10, 11, 12, 13, 14, 15])
CATS = np.array(["a", "a", "b", "a", "b", "c"], dtype=object)
ORDER = np.array([0, 1, 2, 3, 4, 5])  # already best first


def test_no_rules_is_the_ranking():
    assert pick(ORDER, ITEMS, CATS, 3, PostFilters()).tolist() == [0, 1, 2]


def test_excluded_items_are_skipped():
    assert pick(ORDER, ITEMS, CATS, 3, PostFilters(exclude_items=[10, 12])).tolist() == [1, 3, 4]


def test_category_cap_keeps_rank_order():
    assert pick(ORDER, ITEMS, CATS, 4, PostFilters(max_per_category=1)).tolist() == [0, 2, 5]  # only 3 categories
    assert pick(ORDER, ITEMS, CATS, 4, PostFilters(max_per_category=2, exclude_items=[11])).tolist() == [0, 2, 3, 4]


def test_a_cap_on_a_feature_the_view_lacks_is_a_config_error(tmp_path):
    repo = tmp_path / "features.yaml"
    repo.write_text("entities: {user: {key: user_id}, item: {key: item_id}}\n"
                    "views: {user_profile: {entity: user, source: u, features: [age]},\n"
                    "        item_catalog: {entity: item, source: i, timestamp: null, features: [price]}}\n")
    args = RecommenderArgs(registry="r", candidates="c", features=str(repo), feature_state="s",
                           filters={"max_per_category": 2})
    with pytest.raises(ConfigError, match=r"args.filters.category_feature: view 'item_catalog' .* has no feature 'category'"):
        load_serving_repo(args)


def test_recently_clicked_items_are_skipped_only_when_asked():
    clicked = np.array([11, 14])
    assert pick(ORDER, ITEMS, CATS, 3, PostFilters(), clicked).tolist() == [0, 1, 2]
    assert pick(ORDER, ITEMS, CATS, 3, PostFilters(exclude_clicked=True), clicked).tolist() == [0, 2, 3]
    rules = PostFilters(exclude_clicked=True, exclude_items=[10], max_per_category=1)
    assert pick(ORDER, ITEMS, CATS, 3, rules, clicked).tolist() == [2, 3, 5]
