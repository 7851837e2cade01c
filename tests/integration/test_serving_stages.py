"""The pipeline's stages used on their own, without Ray: composed by hand they answer as the core does, and the
split plan's ranker sessions load by version label."""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import pytest

from rayml.features import FeatureEncoder
from rayml.features.definitions import FeatureRepo
from rayml.features.service import OnlineFeatures
from rayml.registry import ModelRegistry
from rayml.serving import RecommenderCore
from rayml.serving.config import load_serving_repo
from rayml.serving.filters import PostFilters
from rayml.serving.ranker import RankerSessions
from rayml.serving.recommender import RecommendCall
from rayml.serving.stages import (
    CandidateRetrieval,
    FeatureLookup,
    PostFiltering,
    Ranking,
    UnknownUserError,
)
from tests.integration.test_serving_swap import copy_version

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def serving_parts(recommender_args):
    args = recommender_args.model_copy(update={"feature_log": None, "event_log": None})
    repo: FeatureRepo = load_serving_repo(args)
    return args, repo


def test_stages_composed_by_hand_answer_as_the_core(serving_parts):
    args, repo = serving_parts
    registry = ModelRegistry(args.registry)
    features = OnlineFeatures(repo, args.feature_state, views=[args.user_view, args.item_view])
    retrieval = CandidateRetrieval(args.candidates, features, args.user_view,
                                   CandidateRetrieval.load_retriever(registry, args.retriever_model, args.retriever_alias))
    lookup = FeatureLookup(features, args.user_view, args.item_view)
    ranking = Ranking(registry, args.ranker_model, args.ranker_alias, [], "auto",
                      {v: repo.views[v].features for v in (args.user_view, args.item_view)})
    filtering = PostFiltering(PostFilters(max_per_category=2))
    core = RecommenderCore(args.model_copy(update={"filters": PostFilters(max_per_category=2)}), repo)

    for user in (1, 8, 30):
        candidates = retrieval.retrieve(user)
        assert candidates.source == "batch" and len(candidates.item_ids) == retrieval.size
        rows = lookup.lookup(user, candidates.item_ids, time.time(), realtime=False)
        x = ranking.encode(ranking.default, user, rows[args.user_view], lookup.user_key, candidates.item_ids,
                           rows[args.item_view], lookup.item_key)
        scores = ranking.score(ranking.default, x)
        top = filtering.apply(scores, candidates.item_ids, rows[args.item_view], None, 10)
        answer = core.recommend(user, 10)
        assert candidates.item_ids[top].tolist() == answer.items
        np.testing.assert_allclose(scores[top], answer.scores, rtol=1e-6)
        categories = rows[args.item_view].columns["category"][top]
        assert max(np.unique(categories, return_counts=True)[1]) <= 2
    with pytest.raises(UnknownUserError):
        retrieval.retrieve(10**12)  # neither batch candidates nor the feature store know it
    core.close()


def test_split_plan_core_holds_encoders_only(serving_parts):
    args, repo = serving_parts
    core = RecommenderCore(args.model_copy(update={"plan": "split"}), repo)
    assert core.ranker.session is None and core.ranker.width > 0
    prepared = core.prepare_many([RecommendCall(3, 5)])
    (batch,) = core.ranking_batches(prepared)
    sessions = RankerSessions(args.registry, args.ranker_model, args.precision, gpu=False)
    (scores,) = sessions.score([batch.ranker.model_version], [batch.features])
    batch.set_scores(scores)
    (answer,) = core.finish_many(prepared)
    fused = RecommenderCore(args, repo).recommend(3, 5)
    assert answer.items == fused.items and answer.model_version == fused.model_version


def test_ranker_sessions_load_by_label_evict_and_refuse_other_models(serving_parts, trained):
    args, _ = serving_parts
    registry, _ = trained
    labels = [f"ranker:v{copy_version(registry, '1', f'lru {i}')}" for i in range(3)]
    sessions = RankerSessions(args.registry, "ranker", "auto", gpu=False, max_versions=2)
    rows = np.zeros((4, sessions.session("ranker:v1").get_inputs()[0].shape[1]), np.float32)
    out = sessions.score(["ranker:v1", labels[0], "ranker:v1"], [rows, rows[:2], rows[:1]])
    assert [len(s) for s in out] == [4, 2, 1]
    np.testing.assert_allclose(out[0][:1], out[2])
    sessions.score([labels[1]], [rows])
    assert sessions.loaded == [labels[0], labels[1]]  # the least recently used (v1) was evicted
    for bad in ("retriever:v1", "ranker:vlatest", "ranker"):
        with pytest.raises(KeyError, match="not one of model 'ranker'"):
            sessions.session(bad)


def test_versions_with_equal_item_encoders_share_one_copy_of_item_rows(serving_parts, trained, tmp_path):
    """A canary or shadow whose item encoder equals production's (its int8 twin, a retrain that kept the encoder)
    holds the same item rows, not a second copy; one with refitted statistics gets its own, and answers by them."""
    args, repo = serving_parts
    registry, _ = trained
    twin = copy_version(registry, "1", "same encoders")
    source = registry.get("ranker", "1")
    fitted = FeatureEncoder.load(source.file("item_encoder.json"))
    first = fitted.numeric[0]
    refitted = replace(fitted, numeric=[replace(first, mean=first.mean + 1.0), *fitted.numeric[1:]])
    refitted.save(tmp_path / "item_encoder.json")
    meta = {k: v for k, v in source.metadata.items() if k not in ("name", "version", "files", "created_at", "writer")}
    files = {name: source.file(name) for name in source.metadata["files"]} | {"item_encoder.json": tmp_path / "item_encoder.json"}
    refit = registry.register("ranker", files, meta | {"note": "refitted item encoder"}).version
    registry.set_alias("ranker", "twin", twin)
    registry.set_alias("ranker", "refit", refit)
    core = RecommenderCore(args.model_copy(update={"ranker_aliases": ["twin", "refit"]}), repo)
    encoded: list[FeatureEncoder] = []
    build = core.ranking.encode_items
    assert build is not None
    core.ranking.encode_items = lambda encoder: (encoded.append(encoder), build(encoder))[1]
    try:
        default, aliases = core.ranking.default, core.ranking.aliases
        assert default.items is not None
        assert aliases["twin"].items is default.items  # one copy for the equal encoder
        assert aliases["refit"].items is not None and aliases["refit"].items is not default.items
        assert not np.array_equal(aliases["refit"].items.matrix, default.items.matrix)
        for alias in (None, "twin", "refit"):  # the shared and the own rows encode as each version's encoder does
            ranker = core.ranking.ranker_for(alias)
            prepared = core.prepare_many([RecommendCall(3, 5, alias=alias)])
            (batch,) = core.ranking_batches(prepared)
            p = batch.members[0]
            users = p.lookups[args.user_view]
            direct = np.hstack([
                np.repeat(ranker.user_encoder.transform_columns(users.columns, n=1), len(p.item_ids), axis=0),
                ranker.item_encoder.transform_columns(p.lookups[args.item_view].columns, n=len(p.item_ids))])
            np.testing.assert_array_equal(p.features, direct)
        core.ranking.refresh_items()  # after a materialization: once per distinct encoder, shared again
        assert encoded == [fitted, refitted]
        assert core.ranking.aliases["twin"].items is core.ranking.default.items
        assert core.ranking.aliases["refit"].items is not core.ranking.default.items
    finally:
        core.close()
