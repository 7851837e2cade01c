"""The recommender's stages, each a class usable on its own: retrieval → feature lookup → ranking → post-filtering.

:class:`rayml.serving.recommender.RecommenderCore` chains them in one process (the ``fused`` plan). In the
``split`` plan the ranking stage keeps only the encoders and the ONNX sessions live in their own Serve deployment
(:mod:`rayml.serving.ranker`), e.g. on a GPU node.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from rayml.features import FeatureEncoder
from rayml.features.candidates import RedisCandidates
from rayml.features.online import Lookup
from rayml.features.service import OnlineFeatures
from rayml.inference import ort_session
from rayml.registry import ModelRegistry, RegistryError
from rayml.registry.follow import AliasFollower
from rayml.registry.store import ModelVersion
from rayml.serving.filters import PostFilters, pick
from rayml.serving.item_rows import EncodedItems


class UnknownUserError(KeyError):
    """Neither the batch candidates nor the real-time retriever know the user."""


class UnknownAliasError(KeyError):
    """A request named a model alias this app does not serve."""


# ----- retrieval -----


@dataclass(frozen=True)
class Candidates:
    """One user's candidates: ``source`` is ``batch`` (precomputed by the candidate job) or ``realtime``.

    ``user``: the user's row of the user view when it was fetched together with the candidates (the online
    candidate view: one round trip for both), so the feature lookup does not fetch it again.
    """

    item_ids: np.ndarray
    retrieval_scores: np.ndarray
    source: str
    user: Lookup | None = None


@dataclass(frozen=True)
class LoadedRetriever:
    """The retriever's user tower (encoded user features → embedding with a trailing 1) and its item table."""

    model_version: str
    session: ort.InferenceSession
    user_encoder: FeatureEncoder
    item_emb: np.ndarray  # [I, E+1], bias in the last column
    item_ids: np.ndarray  # [I]


class CandidateTable:
    """The candidate job's output in memory, sorted by user id: [Uc, K] items and scores (``parquet`` store)."""

    def __init__(self, path: str) -> None:
        """Raises: FileNotFoundError (naming ``path``), ValueError (not the job's schema)."""
        if not Path(path).exists():
            raise FileNotFoundError(f"candidates {path} does not exist (args.candidates); run "
                                    "batch_jobs/generate_candidates.py first")
        table = pq.read_table(path, columns=["user_id", "items", "scores"])
        table = table.take(pc.sort_indices(table, [("user_id", "ascending")]))
        items_type = table.schema.field("items").type
        if not pa.types.is_fixed_size_list(items_type):
            raise ValueError(f"candidates {path}: column 'items' is {items_type}, expected a fixed-size list")
        self.size = items_type.list_size
        self.user_ids = table["user_id"].to_numpy()
        self.items = table["items"].combine_chunks().flatten().to_numpy().reshape(-1, self.size)  # [Uc, K]
        self.scores = table["scores"].combine_chunks().flatten().to_numpy().reshape(-1, self.size)  # [Uc, K]

    def get(self, user_id: int) -> tuple[np.ndarray, np.ndarray] | None:
        pos = int(np.searchsorted(self.user_ids, user_id))
        if pos >= len(self.user_ids) or self.user_ids[pos] != user_id:
            return None
        return self.items[pos], self.scores[pos]

    def item_ids(self) -> np.ndarray:
        return np.unique(self.items)


class CandidateRetrieval:
    """Batch candidates (in memory, or the online store's candidate view); two-tower retrieval at request time
    for users they miss.

    ``candidates``: the candidate job's output directory (loaded into memory here, the ``parquet`` store), or a
    :class:`rayml.features.candidates.RedisCandidates` view (the ``online`` store: each retrieval reads the
    user's candidates and user-view row in one Redis round trip, and nothing here grows with the users).
    """

    def __init__(self, candidates: str | RedisCandidates, features: OnlineFeatures, user_view: str,
                 retriever: AliasFollower[LoadedRetriever] | None) -> None:
        self.table = CandidateTable(candidates) if isinstance(candidates, str) else None
        self.online = None if isinstance(candidates, str) else candidates
        self.features = features
        self.user_view = user_view
        self.follower = retriever

    @property
    def size(self) -> int:
        """K, the candidates a user has (and real-time retrieval returns)."""
        return self.table.size if self.table is not None else self._online.top_k

    @property
    def user_ids(self) -> np.ndarray:
        return self._table.user_ids

    @property
    def items(self) -> np.ndarray:
        return self._table.items

    @property
    def scores(self) -> np.ndarray:
        return self._table.scores

    @property
    def _table(self) -> CandidateTable:
        if self.table is None:
            raise AttributeError("candidates live in the online store (candidates_store: online); no table here")
        return self.table

    @property
    def _online(self) -> RedisCandidates:
        assert self.online is not None
        return self.online

    @property
    def retriever(self) -> LoadedRetriever | None:
        return None if self.follower is None else self.follower.value

    @staticmethod
    def load_retriever(registry: ModelRegistry, model: str | None,
                       alias: str) -> AliasFollower[LoadedRetriever] | None:
        """The retriever ``alias`` names, following the registry like the ranker (None: no retriever)."""
        if model is None:
            return None

        def load(number: int) -> LoadedRetriever:
            version = registry.get(model, number)
            return LoadedRetriever(
                version.label, ort_session(version.file("user_tower.onnx"), threads=1),
                FeatureEncoder.load(version.file("user_encoder.json")),
                np.load(version.file("item_embeddings.npy")), np.load(version.file("item_ids.npy")),
            )

        return AliasFollower(registry, model, alias, load)

    def item_ids(self) -> np.ndarray:
        """Every item the batch candidates hold (sorted, unique), e.g. to pre-encode their rows.

        Raises:
            OnlineStoreUnavailable: the store is down (online view).
        """
        if self.table is not None:
            return self.table.item_ids()
        return self.features._guarded(self._online.item_ids)

    def batch(self, user_id: int) -> Candidates | None:
        """The user's batch candidates; None when the candidate job did not cover the user.

        Raises:
            OnlineStoreUnavailable: the store is down (online view).
            CandidateEncodingError: the stored value is malformed (online view; the message names the key).
        """
        found = self._fetch(user_id)
        return found if found is not None and found.source == "batch" else None

    def _fetch(self, user_id: int) -> Candidates | None:
        """Batch candidates, or (online view, user not in it) an empty ``realtime`` shell carrying the user's row."""
        if self.table is not None:
            row = self.table.get(user_id)
            return None if row is None else Candidates(row[0], row[1], "batch")
        view = self._online
        row, user = self.features._guarded(lambda: view.fetch(user_id, self.user_view))
        if row is None:
            return Candidates(np.empty(0, np.int64), np.empty(0, np.float32), "realtime", user)
        return Candidates(row[0], row[1], "batch", user)

    def realtime(self, user_id: int, k: int, user: Lookup | None = None) -> Candidates:
        """Top-``k`` items by two-tower score on the user's online features (``user``: its row, when fetched).

        Raises:
            UnknownUserError: no retriever is served, or the feature store does not know the user either.
            OnlineStoreUnavailable: the store is down.
        """
        retriever = self.retriever
        if retriever is None:
            raise UnknownUserError(user_id)
        if user is None:
            user = self.features.get(self.user_view, np.array([user_id]))
        if user.missing:
            raise UnknownUserError(user_id)
        x = retriever.user_encoder.transform_columns(user.columns, n=1)
        scores = (retriever.session.run(None, {"user_features": x})[0] @ retriever.item_emb.T)[0]  # [I]
        k = min(k, len(scores))
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.argsort(-scores[top], kind="stable")]
        return Candidates(retriever.item_ids[top], scores[top], "realtime", user)

    def retrieve(self, user_id: int) -> Candidates:
        """The user's batch candidates, or real-time ones for a user the batch job missed (e.g. a new user)."""
        found = self._fetch(user_id)
        if found is not None and found.source == "batch":
            return found
        return self.realtime(user_id, self.size, None if found is None else found.user)


# ----- feature lookup -----


class FeatureLookup:
    """The online features one request needs: the user's and the candidates' batch views, real-time windows on
    demand, and the user's recently clicked items for the post-filters.

    Everything :meth:`lookup` reads is one :meth:`OnlineFeatures.read` (one round trip on Redis), and the item
    view's rows are kept in this process between materializations. The recent clicks ride along once the caller
    has asked for them (:meth:`recently_clicked` right after :meth:`lookup` then answers without a round trip).
    """

    CLICKS_FRESH_S = 1.0  # clicks a lookup read answer this thread's next recently_clicked for this long

    def __init__(self, features: OnlineFeatures, user_view: str, item_view: str) -> None:
        self.features = features
        self.user_view, self.item_view = user_view, item_view
        self.user_key = features.key_of_view(user_view)
        self.item_key = features.key_of_view(item_view)
        features.cache_view(item_view)  # item rows change only when materialized (bounded by the catalog)
        self.wants_clicks = False  # set by the first recently_clicked: from then on lookups read them too

    def lookup(self, user_id: int, item_ids: np.ndarray, now: float, realtime: bool = True,
               user: Lookup | None = None, clicks: bool | None = None) -> dict[str, Lookup]:
        """Batch views always; with ``realtime`` the windows too (the ranker does not read them yet: they are
        fetched for the served-feature log and ``explain``). ``user``: the user's row when retrieval already
        fetched it (not fetched again). ``clicks``: read the user's recent clicks in the same round trip, for the
        :meth:`recently_clicked` that follows (default: once the caller has asked for them).

        Raises:
            OnlineStoreUnavailable: the store is down.
        """
        rows = {self.item_view: item_ids}
        if user is None:
            rows = {self.user_view: np.array([user_id]), **rows}
        windows = {}
        config = self.features.repo.realtime
        for entity in config.entities if config and realtime else []:
            key = self.features.repo.entities[entity].key
            windows[entity] = np.array([user_id]) if key == self.user_key else item_ids
        with_clicks = (self.wants_clicks if clicks is None else clicks) and config is not None
        read = self.features.read(rows, windows, now, user_id if with_clicks else None)
        lookups = {self.user_view: user if user is not None else read.rows[self.user_view],
                   self.item_view: read.rows[self.item_view]}
        for entity, counters in read.windows.items():
            lookups[f"rt.{entity}"] = counters
        return lookups

    def recently_clicked(self, user_id: int) -> np.ndarray:
        """Items the user clicked lately (from the ingested events), newest first."""
        self.wants_clicks = True
        return self.features.recent_clicks(user_id, fresh_s=self.CLICKS_FRESH_S)


# ----- ranking -----


@dataclass(frozen=True)
class LoadedRanker:
    """One ranker version: the encoders of its inputs and, where this process scores, its ONNX session."""

    model_version: str
    artifact: str
    user_encoder: FeatureEncoder
    item_encoder: FeatureEncoder
    session: ort.InferenceSession | None
    items: EncodedItems | None = None  # every item's encoded row, when the ranking stage keeps them

    @property
    def width(self) -> int:
        return self.user_encoder.width + self.item_encoder.width


def ranker_artifact(version: ModelVersion, precision: str) -> str:
    """The file a ranker version serves: int8 unless ``fp32`` is asked or the version has none.

    Raises:
        RegistryError: the version failed its parity check, or ``int8`` was asked and it has none.
    """
    if not version.metadata.get("parity", {}).get("passed", False):
        raise RegistryError(f"{version.label} failed its ONNX parity check; refusing to serve it")
    has_int8 = "model.int8.onnx" in version.metadata["files"]
    if precision == "int8" and not has_int8:
        raise RegistryError(f"{version.label} has no int8 artifact (precision: int8)")
    return "model.int8.onnx" if precision != "fp32" and has_int8 else "model.onnx"


class Ranking:
    """Ranker versions by alias: the default one, extra served aliases (canary, shadow, …), swaps and refreshes.

    Every alias follows the registry (:class:`rayml.registry.follow.AliasFollower`): promote and rollback reach
    this process at the next :meth:`refresh_aliases`; a version that fails to load (missing, corrupt, failed
    parity, features the views lack) is refused and the current one keeps serving. With ``sessions=False`` (the
    ``split`` plan) only the encoders load here.
    """

    def __init__(self, registry: ModelRegistry, model: str, alias: str, extra_aliases: list[str], precision: str,
                 view_features: dict[str, list[str]], sessions: bool = True,
                 encode_items: Callable[[FeatureEncoder], EncodedItems | None] | None = None) -> None:
        """``encode_items``: builds every item's encoded rows for an item encoder (None, or it returning None:
        each request encodes its candidates' rows)."""
        self.registry, self.model, self.alias = registry, model, alias
        self.extra_aliases, self.precision = list(extra_aliases), precision
        self.view_features = view_features  # user view, item view → their features, in that order
        self.sessions = sessions
        self.encode_items = encode_items
        self.follower = self._follow(alias)
        self.reload_error: str | None = None
        self.extra: dict[str, AliasFollower[LoadedRanker]] = {}
        self.alias_errors: dict[str, str] = {}
        self.refresh_aliases()

    def _follow(self, ref: str) -> AliasFollower[LoadedRanker]:
        return AliasFollower(self.registry, self.model, ref, lambda number: self.load(str(number)))

    @property
    def default(self) -> LoadedRanker:
        return self.follower.value

    @property
    def aliases(self) -> dict[str, LoadedRanker]:
        """Extra served alias → its loaded version."""
        return {alias: follower.value for alias, follower in self.extra.items()}

    def load(self, ref: str) -> LoadedRanker:
        version = self.registry.get(self.model, ref)  # verifies every checksum
        artifact = ranker_artifact(version, self.precision)
        encoders = [FeatureEncoder.load(version.file(f"{side}_encoder.json")) for side in ("user", "item")]
        for (view, served), encoder in zip(self.view_features.items(), encoders, strict=True):
            absent = sorted(set(encoder.columns) - set(served))
            if absent:
                raise RegistryError(f"{version.label} needs features {absent} that view {view!r} does not serve")
        session = ort_session(version.file(artifact), threads=1) if self.sessions else None
        items = self._shared_items(encoders[1])
        if items is None and self.encode_items is not None:
            items = self.encode_items(encoders[1])
        return LoadedRanker(version.label, artifact, encoders[0], encoders[1], session, items)

    def _served(self) -> list[AliasFollower[LoadedRanker]]:
        """The default's follower and the extra aliases' (none while the constructor loads the default)."""
        default = getattr(self, "follower", None)
        return [*([default] if default is not None else []), *getattr(self, "extra", {}).values()]

    def _shared_items(self, encoder: FeatureEncoder) -> EncodedItems | None:
        """The item rows a served version already holds for an equal item encoder (the same features and fitted
        statistics, e.g. a version's int8 twin or a retrain that kept the encoder): one copy, not one per version."""
        for follower in self._served():
            loaded = follower.value
            if loaded.items is not None and loaded.item_encoder == encoder:
                return loaded.items
        return None

    def refresh_items(self) -> None:
        """Re-encode every served version's item rows (after the item view was materialized again), once per
        distinct item encoder."""
        if self.encode_items is None:
            return
        done: list[tuple[FeatureEncoder, EncodedItems | None]] = []
        for follower in self._served():
            loaded = follower.value
            same = [rows for encoder, rows in done if encoder == loaded.item_encoder]
            items = same[0] if same else self.encode_items(loaded.item_encoder)
            if not same:
                done.append((loaded.item_encoder, items))
            follower.value = replace(loaded, items=items)

    def swap(self, ref: str) -> str:
        """Serve (and follow) ``ref`` as the default from now on; on any load error keep the current one, re-raise."""
        try:
            follower = self._follow(ref)
        except Exception as exc:
            self.reload_error = f"{self.model} {ref!r}: {exc}"
            raise
        self.follower, self.alias = follower, ref
        self.reload_error = None
        return follower.label

    def refresh_aliases(self) -> dict[str, str]:
        """Follow every served alias (the default and the extra ones) to where the registry points it now.

        A version that fails to load is refused and its alias keeps its current version. Returns alias → served
        version label.
        """
        self.follower.refresh()
        for alias in self.extra_aliases:
            try:
                if alias in self.extra:
                    self.extra[alias].refresh()
                else:
                    self.extra[alias] = self._follow(alias)
                self.alias_errors.pop(alias, None)
            except Exception as exc:  # not in the registry yet, or nothing loadable: reported, not fatal
                self.alias_errors[alias] = str(exc)
        return {self.alias: self.follower.label, **{a: f.label for a, f in self.extra.items()}}

    def follow(self, alias: str) -> bool:
        """Serve ``alias`` too from the next :meth:`refresh_aliases` on (a rollout's canary or shadow); True
        when it was not followed yet."""
        if alias == self.alias or alias in self.extra_aliases:
            return False
        self.extra_aliases.append(alias)
        return True

    def versions(self) -> dict[str, int]:
        """Served alias → its loaded version number."""
        return {self.alias: self.follower.version, **{a: f.version for a, f in self.extra.items()}}

    def describe(self) -> dict[str, object]:
        """For ``/healthz``: each alias's served version and refusals."""
        return {self.alias: self.follower.describe(), **{a: f.describe() for a, f in self.extra.items()}}

    def ranker_for(self, alias: str | None) -> LoadedRanker:
        if alias is None or alias == self.alias:
            return self.default
        if alias not in self.extra:
            raise UnknownAliasError(alias)
        return self.extra[alias].value

    @property
    def served_aliases(self) -> list[str]:
        return sorted([self.alias, *self.extra])

    def encode(self, ranker: LoadedRanker, user_id: int, user: Lookup, user_key: str, item_ids: np.ndarray,
               items: Lookup, item_key: str) -> np.ndarray:
        """The ranker's input for one user and its candidates: [C, user width + item width] float32.

        Item rows come from the version's pre-encoded rows when it has them; items those rows miss but the store
        knows (added since they were built) are encoded here, so the answer never depends on the cache.
        """
        n_user = ranker.user_encoder.width
        features = np.empty((len(item_ids), ranker.width), np.float32)
        features[:, :n_user] = ranker.user_encoder.transform_columns(user.columns, n=1)
        if ranker.items is None:
            features[:, n_user:] = ranker.item_encoder.transform_columns(items.columns, n=len(item_ids))
            return features
        _, known = ranker.items.lookup(item_ids, out=features[:, n_user:])
        stale = items.found & ~known
        if stale.any():
            features[stale, n_user:] = ranker.item_encoder.transform_columns(
                {name: values[stale] for name, values in items.columns.items()}, n=int(stale.sum()))
        return features

    @staticmethod
    def score(ranker: LoadedRanker, features: np.ndarray) -> np.ndarray:
        """Scores [N] of encoded rows, in this process (the ``fused`` plan)."""
        assert ranker.session is not None, "this process loaded encoders only (split plan)"
        return ranker.session.run(["score"], {"features": features})[0]


def split_rows(scores: np.ndarray, lengths: list[int]) -> list[np.ndarray]:
    """Scores of rows that several requests concatenated, handed back per request (``lengths``: rows each)."""
    return np.split(scores, np.cumsum(lengths)[:-1])


# ----- post-filtering -----


class PostFiltering:
    """Business rules after ranking: excluded items, the user's recently clicked items, a per-category cap."""

    def __init__(self, rules: PostFilters) -> None:
        self.rules = rules

    @property
    def needs_clicks(self) -> bool:
        return self.rules.exclude_clicked

    def apply(self, scores: np.ndarray, item_ids: np.ndarray, items: Lookup, clicked: np.ndarray | None,
              k: int) -> np.ndarray:
        """Positions of the ``k`` best-scored candidates the rules allow, best first."""
        order = np.argsort(-scores, kind="stable")
        return pick(order, item_ids, items.columns.get(self.rules.category_feature), k, self.rules, clicked)
