"""The hybrid recommender: batch candidates, looked-up features, real-time ONNX ranking, post-filters.

:class:`RecommenderCore` chains the stages of :mod:`rayml.serving.stages` and needs no Ray;
:mod:`rayml.serving.app` wraps it in Serve.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rayml.features.candidates import RedisCandidates
from rayml.features.definitions import FeatureRepo
from rayml.features.encoding import FeatureEncoder
from rayml.features.event_log import append_events
from rayml.features.feature_log import FeatureLogger
from rayml.features.online import Lookup
from rayml.features.realtime import Events
from rayml.features.redis_store import OnlineStoreUnavailable, RedisOnlineStore
from rayml.features.service import OnlineFeatures
from rayml.registry import ModelRegistry
from rayml.serving.config import RecommenderArgs
from rayml.serving.item_rows import EncodedItems
from rayml.serving.stages import (
    CandidateRetrieval,
    FeatureLookup,
    LoadedRanker,
    PostFiltering,
    Ranking,
    UnknownAliasError,
    UnknownUserError,
    split_rows,
)

__all__ = ["RecommendCall", "Recommendation", "RecommenderCore", "UnknownAliasError", "UnknownUserError"]


@dataclass(frozen=True)
class Recommendation:
    user_id: int
    items: list[int]
    scores: list[float]
    model_version: str
    feature_missing: int = 0
    degraded: bool = False
    features: dict[str, dict[str, list]] | None = None
    candidates: str = "batch"  # batch: precomputed by the candidate job; realtime: two-tower at request time


@dataclass(frozen=True)
class RecommendCall:
    user_id: int
    k: int
    explain: bool = False
    alias: str | None = None


@dataclass
class Prepared:
    """A request between feature lookup and scoring."""

    call: RecommendCall
    ranker: LoadedRanker
    now: float
    source: str  # batch | realtime
    item_ids: np.ndarray
    lookups: dict[str, Lookup]
    clicked: np.ndarray | None
    features: np.ndarray
    logged: bool  # sampled for the served-feature log
    scores: np.ndarray | None = None
    error: Exception | None = None

    def monitor_row(self, user_view: str) -> dict[str, Any]:
        """What the monitor samples of a scored request: event time, version, the user's raw online features,
        the top and mean score (the replica adds no per-item rows: the sketches stay per request)."""
        assert self.scores is not None
        row: dict[str, Any] = {"ts": self.now, "version": self.ranker.model_version,
                               "score_max": float(self.scores.max()), "score_mean": float(self.scores.mean())}
        for name, values in self.lookups[user_view].columns.items():
            value = values[0]
            row[name] = value.item() if isinstance(value, np.generic) else value
        return row


@dataclass
class RankingBatch:
    """Prepared requests of one ranker version, scored by one model call."""

    ranker: LoadedRanker
    members: list[Prepared] = field(default_factory=list)

    @property
    def features(self) -> np.ndarray:
        return np.concatenate([p.features for p in self.members]) if len(self.members) > 1 else self.members[0].features

    def set_scores(self, scores: np.ndarray) -> None:
        for p, part in zip(self.members, split_rows(scores, [len(p.item_ids) for p in self.members]), strict=True):
            p.scores = part

    def fail(self, error: Exception) -> None:
        for p in self.members:
            p.error = error


class RecommenderCore:
    """Retrieval → feature lookup → ranking → post-filtering, for one request or a batch of them.

    When the online store is down the answer is the batch candidates' retrieval order, flagged ``degraded``.
    With ``args.plan == "split"`` the ranking stage holds encoders only: the caller scores each
    :class:`RankingBatch` remotely between :meth:`prepare_many` and :meth:`finish_many`.
    """

    def __init__(self, args: RecommenderArgs, repo: FeatureRepo) -> None:
        self.args = args
        registry = ModelRegistry(args.registry)
        self.features = OnlineFeatures(repo, args.feature_state, views=[args.user_view, args.item_view])
        self.lookup = FeatureLookup(self.features, args.user_view, args.item_view)
        retriever = CandidateRetrieval.load_retriever(registry, args.retriever_model, args.retriever_alias)
        self.retrieval = CandidateRetrieval(self._candidates(), self.features, args.user_view, retriever)
        self.ranking = Ranking(
            registry, args.ranker_model, args.ranker_alias, args.ranker_aliases, args.precision,
            {v: repo.views[v].features for v in (args.user_view, args.item_view)}, sessions=args.plan == "fused",
            encode_items=self._encode_items,
        )
        self.filtering = PostFiltering(args.filters)
        self.logger = FeatureLogger(args.feature_log) if args.feature_log else None
        self.largest_batch = 0  # most requests answered by one recommend_many call (dynamic batching)
        self.taps: dict[str, Callable[[Prepared], None]] = {}  # see every scored request (shadow, monitoring)

    def _candidates(self) -> str | RedisCandidates:
        """Where batch candidates come from (``args.candidates_store``): the job's output, or the store's view."""
        if self.args.candidates_store == "parquet":
            assert self.args.candidates is not None  # RecommenderArgs checks it
            return self.args.candidates
        store = self.features.store
        assert isinstance(store, RedisOnlineStore)  # load_serving_repo checks it
        return RedisCandidates(store, self.args.candidates_view)

    def _encode_items(self, encoder: FeatureEncoder) -> EncodedItems | None:
        """Every candidate item's encoded row for ``encoder`` (items retrieval can return: the batch candidates'
        and the retriever's); None while the online store is down (requests then encode their own rows)."""
        try:
            sources = [self.retrieval.item_ids()]
            if self.retrieval.retriever is not None:
                sources.append(self.retrieval.retriever.item_ids)
            ids = np.unique(np.concatenate(sources).astype(np.int64))
            lookup = self.features.get(self.args.item_view, ids, encoder.columns)
        except OnlineStoreUnavailable:
            return None
        return EncodedItems.from_lookup(encoder, ids, lookup)

    @property
    def ranker(self) -> LoadedRanker:
        return self.ranking.default

    @property
    def model_version(self) -> str:
        return self.ranking.default.model_version

    def recommend(self, user_id: int, k: int, explain: bool = False, alias: str | None = None) -> Recommendation:
        """The user's top ``k``: candidates ranked on their online features, then filtered."""
        result = self.recommend_many([RecommendCall(user_id, k, explain, alias)])[0]
        if isinstance(result, Exception):
            raise result
        return result

    def recommend_many(self, calls: list[RecommendCall]) -> list[Recommendation | Exception]:
        """Answer several requests with one ONNX call per ranker version, in this process (the fused plan)."""
        prepared = self.prepare_many(calls)
        for batch in self.ranking_batches(prepared):
            batch.set_scores(self.ranking.score(batch.ranker, batch.features))
        return self.finish_many(prepared)

    def prepare_many(self, calls: list[RecommendCall]) -> list[Prepared | Recommendation | Exception]:
        """Retrieval and feature lookup of each call; a request's error is kept in its place, not raised."""
        self.largest_batch = max(self.largest_batch, len(calls))
        prepared: list[Prepared | Recommendation | Exception] = []
        for call in calls:
            try:
                prepared.append(self._prepare(call))
            except Exception as exc:  # one request's error must not fail its batch-mates
                prepared.append(exc)
        return prepared

    @staticmethod
    def ranking_batches(prepared: list[Prepared | Recommendation | Exception]) -> list[RankingBatch]:
        batches: dict[int, RankingBatch] = {}
        for p in prepared:
            if isinstance(p, Prepared):
                batches.setdefault(id(p.ranker), RankingBatch(p.ranker)).members.append(p)
        return list(batches.values())

    def finish_many(self, prepared: list[Prepared | Recommendation | Exception]) -> list[Recommendation | Exception]:
        return [self._finish(p) if isinstance(p, Prepared) else p for p in prepared]

    def _prepare(self, call: RecommendCall) -> Prepared | Recommendation:
        ranker = self.ranking.ranker_for(call.alias)  # read once: a concurrent swap cannot mix two versions
        now = round(time.time(), 6)  # one clock reading: windows and the feature log agree (µs, as logged)
        candidates = self.retrieval.retrieve(call.user_id)
        item_ids = candidates.item_ids
        try:
            logged = self.logger is not None and self.logger.sampled()
            lookups = self.lookup.lookup(call.user_id, item_ids, now, realtime=logged or call.explain,
                                         user=candidates.user)
            clicked = self.lookup.recently_clicked(call.user_id) if self.filtering.needs_clicks else None
        except OnlineStoreUnavailable:
            if candidates.source != "batch":
                raise
            top = np.arange(min(call.k, len(item_ids)))  # batch-only: the retriever's precomputed order
            return Recommendation(call.user_id, item_ids[top].tolist(), candidates.retrieval_scores[top].astype(float).tolist(),
                                  ranker.model_version, degraded=True)
        features = self.ranking.encode(ranker, call.user_id, lookups[self.args.user_view], self.lookup.user_key,
                                       item_ids, lookups[self.args.item_view], self.lookup.item_key)
        return Prepared(call, ranker, now, candidates.source, item_ids, lookups, clicked, features, logged)

    def _finish(self, p: Prepared) -> Recommendation | Exception:
        if p.error is not None:
            return p.error
        assert p.scores is not None
        user, items = p.lookups[self.args.user_view], p.lookups[self.args.item_view]
        top = self.filtering.apply(p.scores, p.item_ids, items, p.clicked, p.call.k)
        for tap in self.taps.values():
            tap(p)
        if p.logged and self.logger is not None:
            ids = {self.lookup.user_key: np.full(len(p.item_ids), p.call.user_id), self.lookup.item_key: p.item_ids}
            self.logger.log(p.now, ids, p.lookups)
        return Recommendation(
            user_id=p.call.user_id,
            items=p.item_ids[top].tolist(),
            scores=p.scores[top].astype(float).tolist(),
            model_version=p.ranker.model_version,
            feature_missing=user.missing + items.missing,
            features=_explain(p.lookups, top) if p.call.explain else None,
            candidates=p.source,
        )

    def score_inputs(self, user_id: int, item_ids: np.ndarray) -> tuple[LoadedRanker, np.ndarray, int]:
        """The default ranker, its input rows for ``user_id`` × ``item_ids`` (any items), and how many entities
        the store did not know. For ``POST /score``."""
        ranker = self.ranking.default
        lookups = self.lookup.lookup(user_id, item_ids, round(time.time(), 6), realtime=False)
        user, items = lookups[self.args.user_view], lookups[self.args.item_view]
        features = self.ranking.encode(ranker, user_id, user, self.lookup.user_key, item_ids, items,
                                       self.lookup.item_key)
        return ranker, features, user.missing + items.missing

    def score(self, user_id: int, item_ids: np.ndarray) -> Recommendation:
        """Scores of given items for a user, in this process (the fused plan)."""
        ranker, features, missing = self.score_inputs(user_id, item_ids)
        scores = self.ranking.score(ranker, features)
        return Recommendation(user_id, item_ids.tolist(), scores.astype(float).tolist(), ranker.model_version,
                              feature_missing=missing)

    def ingest(self, events: Events) -> None:
        """Update the real-time windows, then append the events to the event log (when configured)."""
        self.features.ingest(events)
        if self.args.event_log:
            append_events(self.args.event_log, events)

    def close(self) -> None:
        if self.logger is not None:
            self.logger.flush()


def _explain(lookups: dict[str, Lookup], top: np.ndarray) -> dict[str, dict[str, list]]:
    """The raw feature values behind an answer: the user's row, and the returned items' rows in answer order."""
    out = {}
    for name, lookup in lookups.items():
        rows = slice(0, 1) if len(lookup.found) == 1 else top
        out[name] = {f: [None if isinstance(v, float) and v != v else v for v in values[rows].tolist()]
                     for f, values in lookup.columns.items()}
    return out
