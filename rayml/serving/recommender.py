"""The hybrid recommender: batch candidates, looked-up features, real-time ONNX ranking.

:class:`RecommenderCore` holds all logic and needs no Ray; :mod:`rayml.serving.app` wraps it in Serve.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from rayml.features import FeatureEncoder
from rayml.features.definitions import FeatureRepo
from rayml.features.event_log import append_events
from rayml.features.feature_log import FeatureLogger
from rayml.features.online import Lookup
from rayml.features.realtime import Events
from rayml.features.redis_store import OnlineStoreUnavailable
from rayml.features.service import OnlineFeatures
from rayml.inference import ort_session
from rayml.registry import ModelRegistry, RegistryError
from rayml.serving.config import RecommenderArgs
from rayml.serving.filters import pick


class UnknownUserError(KeyError):
    """The user has no batch candidates."""


class UnknownAliasError(KeyError):
    """A request named a model alias this app does not serve."""


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


def _sorted_ids(table: pa.Table, column: str) -> tuple[pa.Table, np.ndarray]:
    table = table.take(pc.sort_indices(table, [(column, "ascending")]))
    return table, table[column].to_numpy()


@dataclass(frozen=True)
class LoadedRanker:
    """One ranker version, ready to score: its ONNX session and the encoders of its inputs."""

    model_version: str
    artifact: str
    session: ort.InferenceSession
    user_encoder: FeatureEncoder
    item_encoder: FeatureEncoder


@dataclass(frozen=True)
class RecommendCall:
    user_id: int
    k: int
    explain: bool = False
    alias: str | None = None


@dataclass
class _Prepared:
    """A request between feature lookup and scoring."""

    call: RecommendCall
    ranker: LoadedRanker
    now: float
    pos: int | None  # row in the batch candidates; None: real-time candidates
    item_ids: np.ndarray
    lookups: dict[str, Lookup]
    features: np.ndarray
    logged: bool  # sampled for the served-feature log
    scores: np.ndarray | None = None


@dataclass(frozen=True)
class LoadedRetriever:
    """The retriever's user tower (encoded user features → embedding with a trailing 1) and its item table."""

    model_version: str
    session: ort.InferenceSession
    user_encoder: FeatureEncoder
    item_emb: np.ndarray  # [I, E+1], bias in the last column
    item_ids: np.ndarray  # [I]


class RecommenderCore:
    """Batch candidates in memory; features from the online store per request; ONNX ranking.

    :meth:`swap_ranker` replaces the ranker atomically; when the new version fails to load
    (missing, corrupt, failed parity) the current one keeps serving. When the online store is down the
    answer is the batch candidates' retrieval order, flagged ``degraded``.
    """

    def __init__(self, args: RecommenderArgs, repo: FeatureRepo) -> None:
        self.args = args
        self.registry = ModelRegistry(args.registry)
        self.features = OnlineFeatures(repo, args.feature_state, views=[args.user_view, args.item_view])
        self.user_key = self.features.key_of_view(args.user_view)
        self.item_key = self.features.key_of_view(args.item_view)
        self.view_features = {v: repo.views[v].features for v in (args.user_view, args.item_view)}
        self.ranker = self._load_ranker(args.ranker_alias)
        self.reload_error: str | None = None
        self.largest_batch = 0  # most requests answered by one recommend_many call (dynamic batching)
        self.aliases: dict[str, LoadedRanker] = {}  # extra aliases: canary, shadow, …
        self.alias_errors: dict[str, str] = {}
        self.refresh_aliases()
        cands, self.cand_user_ids = _sorted_ids(
            pq.read_table(args.candidates, columns=["user_id", "items", "scores"]), "user_id"
        )
        items_type = cands.schema.field("items").type
        if not pa.types.is_fixed_size_list(items_type):
            raise ValueError(f"candidates {args.candidates}: column 'items' is {items_type}, expected a fixed-size list")
        k = items_type.list_size
        self.cand_items = cands["items"].combine_chunks().flatten().to_numpy().reshape(-1, k)  # [Uc, K] item ids
        self.cand_scores = cands["scores"].combine_chunks().flatten().to_numpy().reshape(-1, k)  # [Uc, K]
        self.logger = FeatureLogger(args.feature_log) if args.feature_log else None
        self.retriever = self._load_retriever()

    def _load_retriever(self) -> LoadedRetriever | None:
        if self.args.retriever_model is None:
            return None
        version = self.registry.get(self.args.retriever_model, self.args.retriever_alias)
        return LoadedRetriever(
            version.label, ort_session(version.file("user_tower.onnx"), threads=1),
            FeatureEncoder.load(version.file("user_encoder.json")),
            np.load(version.file("item_embeddings.npy")), np.load(version.file("item_ids.npy")),
        )

    def realtime_candidates(self, user_id: int, k: int) -> np.ndarray:
        """Top-``k`` items by two-tower score from the user's online features: for users the batch job missed.

        Raises:
            UnknownUserError: no retriever is served, or the feature store does not know the user either.
            OnlineStoreUnavailable: the store is down.
        """
        retriever = self.retriever
        if retriever is None:
            raise UnknownUserError(user_id)
        user = self.features.get(self.args.user_view, np.array([user_id]))
        if user.missing:
            raise UnknownUserError(user_id)
        x = retriever.user_encoder.transform(user.to_arrow(self.user_key, np.array([user_id])))
        emb = retriever.session.run(None, {"user_features": x})[0]  # [1, E+1]
        scores = (emb @ retriever.item_emb.T)[0]  # [I]
        k = min(k, len(scores))
        top = np.argpartition(-scores, k - 1)[:k]
        return retriever.item_ids[top[np.argsort(-scores[top], kind="stable")]]

    def infer(self, model: str, features: np.ndarray) -> tuple[str, np.ndarray]:
        """Run a served model on an already-encoded batch: ``ranker`` → scores [N], ``retriever`` → embeddings."""
        if model == "ranker":
            ranker = self.ranker
            return ranker.model_version, ranker.session.run(["score"], {"features": features})[0]
        if model == "retriever" and self.retriever is not None:
            return self.retriever.model_version, self.retriever.session.run(None, {"user_features": features})[0]
        raise KeyError(model)

    def score(self, user_id: int, item_ids: np.ndarray) -> Recommendation:
        """Score given items for a user on their online features (any items, not only the user's candidates)."""
        ranker = self.ranker
        lookups = self.lookup(user_id, item_ids, round(time.time(), 6), realtime=False)
        user, items = lookups[self.args.user_view], lookups[self.args.item_view]
        scores = ranker.session.run(["score"], {"features": self._features(ranker, user_id, user, item_ids, items)})[0]
        return Recommendation(user_id, item_ids.tolist(), scores.astype(float).tolist(), ranker.model_version,
                              feature_missing=user.missing + items.missing)

    def _features(self, ranker: LoadedRanker, user_id: int, user: Lookup, item_ids: np.ndarray,
                  items: Lookup) -> np.ndarray:
        n_user = ranker.user_encoder.width
        features = np.empty((len(item_ids), n_user + ranker.item_encoder.width), np.float32)
        features[:, :n_user] = ranker.user_encoder.transform(user.to_arrow(self.user_key, np.array([user_id])))
        features[:, n_user:] = ranker.item_encoder.transform(items.to_arrow(self.item_key, item_ids))
        return features

    @property
    def model_version(self) -> str:
        return self.ranker.model_version

    def _load_ranker(self, ref: str) -> LoadedRanker:
        version = self.registry.get(self.args.ranker_model, ref)  # verifies every checksum
        if not version.metadata.get("parity", {}).get("passed", False):
            raise RegistryError(f"{version.label} failed its ONNX parity check; refusing to serve it")
        has_int8 = "model.int8.onnx" in version.metadata["files"]
        if self.args.precision == "int8" and not has_int8:
            raise RegistryError(f"{version.label} has no int8 artifact (precision: int8)")
        artifact = "model.int8.onnx" if self.args.precision != "fp32" and has_int8 else "model.onnx"
        user_encoder = FeatureEncoder.load(version.file("user_encoder.json"))
        item_encoder = FeatureEncoder.load(version.file("item_encoder.json"))
        for view, encoder in ((self.args.user_view, user_encoder), (self.args.item_view, item_encoder)):
            absent = sorted(set(encoder.columns) - set(self.view_features[view]))
            if absent:
                raise RegistryError(f"{version.label} needs features {absent} that view {view!r} does not serve")
        return LoadedRanker(
            model_version=version.label,
            artifact=artifact,
            session=ort_session(version.file(artifact), threads=1),
            user_encoder=user_encoder,
            item_encoder=item_encoder,
        )

    def swap_ranker(self, ref: str) -> str:
        """Serve ranker ``ref`` from now on; on any load error keep the current one and re-raise."""
        try:
            loaded = self._load_ranker(ref)
        except Exception as exc:
            self.reload_error = f"{self.args.ranker_model} {ref!r}: {exc}"
            raise
        self.ranker = loaded  # one reference assignment: requests see the old or the new ranker, whole
        self.reload_error = None
        return loaded.model_version

    def refresh_aliases(self) -> dict[str, str]:
        """Load every served alias whose registry target changed; a failing one keeps its current version.

        Returns alias → served version label. Called at start and then every ``alias_poll_s`` by the app.
        """
        for alias in self.args.ranker_aliases:
            try:
                number = self.registry.metadata(self.args.ranker_model, alias)["version"]
                current = self.aliases.get(alias)
                if current is None or current.model_version != f"{self.args.ranker_model}:v{number}":
                    self.aliases[alias] = self._load_ranker(str(number))  # one assignment: requests see old or new
                self.alias_errors.pop(alias, None)
            except Exception as exc:  # keep serving what is loaded; report it
                self.alias_errors[alias] = str(exc)
        return {alias: loaded.model_version for alias, loaded in self.aliases.items()}

    def ranker_for(self, alias: str | None) -> LoadedRanker:
        if alias is None or alias == self.args.ranker_alias:
            return self.ranker
        if alias not in self.aliases:
            raise UnknownAliasError(alias)
        return self.aliases[alias]

    def _candidates(self, user_id: int) -> int:
        pos = int(np.searchsorted(self.cand_user_ids, user_id))
        if pos >= len(self.cand_user_ids) or self.cand_user_ids[pos] != user_id:
            raise UnknownUserError(user_id)
        return pos

    def lookup(self, user_id: int, item_ids: np.ndarray, now: float, realtime: bool = True) -> dict[str, Lookup]:
        """The online features of one request: the user's and the items' batch views, and with ``realtime`` their
        real-time windows (the ranker does not read those yet: they are fetched for the feature log and explain).

        Raises:
            OnlineStoreUnavailable: the store is down.
        """
        lookups = {
            self.args.user_view: self.features.get(self.args.user_view, np.array([user_id])),
            self.args.item_view: self.features.get(self.args.item_view, item_ids),
        }
        windows = self.features.repo.realtime
        for entity in windows.entities if windows and realtime else []:
            key = self.features.repo.entities[entity].key
            ids = np.array([user_id]) if key == self.user_key else item_ids
            lookups[f"rt.{entity}"] = self.features.realtime(entity, ids, now)
        return lookups

    def recommend(self, user_id: int, k: int, explain: bool = False, alias: str | None = None) -> Recommendation:
        """Rank the user's candidates on their online features and return the top ``k``."""
        result = self.recommend_many([RecommendCall(user_id, k, explain, alias)])[0]
        if isinstance(result, Exception):
            raise result
        return result

    def recommend_many(self, calls: list[RecommendCall]) -> list[Recommendation | Exception]:
        """Answer several requests with one ONNX call per ranker version (dynamic batching across requests).

        Each answer is what :meth:`recommend` would give alone; a request's error is returned in its place.
        """
        self.largest_batch = max(self.largest_batch, len(calls))
        prepared: list[_Prepared | Recommendation | Exception] = []
        for call in calls:
            try:
                prepared.append(self._prepare(call))
            except Exception as exc:  # one request's error must not fail its batch-mates
                prepared.append(exc)
        groups: dict[int, list[_Prepared]] = {}
        for item in prepared:
            if isinstance(item, _Prepared):
                groups.setdefault(id(item.ranker), []).append(item)
        for group in groups.values():
            features = np.concatenate([p.features for p in group]) if len(group) > 1 else group[0].features
            scores = group[0].ranker.session.run(["score"], {"features": features})[0]
            offset = 0
            for p in group:
                p.scores = scores[offset : offset + len(p.item_ids)]
                offset += len(p.item_ids)
        return [self._finish(item) if isinstance(item, _Prepared) else item for item in prepared]

    def _prepare(self, call: RecommendCall) -> _Prepared | Recommendation:
        ranker = self.ranker_for(call.alias)  # read once: a concurrent swap cannot mix two versions in one answer
        now = round(time.time(), 6)  # one clock reading: windows and the feature log agree (µs, as logged)
        try:
            pos: int | None = self._candidates(call.user_id)
            item_ids = self.cand_items[pos]  # [C] batch candidates
        except UnknownUserError:  # e.g. a user newer than the batch job: retrieve in real time
            pos = None
            item_ids = self.realtime_candidates(call.user_id, self.cand_items.shape[1])
        try:
            logged = self.logger is not None and self.logger.sampled()
            lookups = self.lookup(call.user_id, item_ids, now, realtime=logged or call.explain)
        except OnlineStoreUnavailable:
            if pos is None:
                raise
            top = np.arange(min(call.k, len(item_ids)))  # batch-only: the retriever's precomputed order
            return Recommendation(call.user_id, item_ids[top].tolist(),
                                  self.cand_scores[pos, top].astype(float).tolist(), ranker.model_version,
                                  degraded=True)
        user, items = lookups[self.args.user_view], lookups[self.args.item_view]
        features = self._features(ranker, call.user_id, user, item_ids, items)
        return _Prepared(call, ranker, now, pos, item_ids, lookups, features, logged)

    def _finish(self, p: _Prepared) -> Recommendation:
        assert p.scores is not None
        order = np.argsort(-p.scores, kind="stable")
        items_lookup = p.lookups[self.args.item_view]
        categories = items_lookup.columns.get(self.args.filters.category_feature)
        top = pick(order, p.item_ids, categories, p.call.k, self.args.filters)
        if p.logged and self.logger is not None:
            self.logger.log(p.now, {self.user_key: np.full(len(p.item_ids), p.call.user_id), self.item_key: p.item_ids},
                            p.lookups)
        user, items = p.lookups[self.args.user_view], p.lookups[self.args.item_view]
        return Recommendation(
            user_id=p.call.user_id,
            items=p.item_ids[top].tolist(),
            scores=p.scores[top].astype(float).tolist(),
            model_version=p.ranker.model_version,
            feature_missing=user.missing + items.missing,
            features=_explain(p.lookups, top) if p.call.explain else None,
            candidates="batch" if p.pos is not None else "realtime",
        )

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
