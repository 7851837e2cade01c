"""The hybrid recommender: batch candidates, looked-up features, real-time ONNX ranking.

:class:`RecommenderCore` holds all logic and needs no Ray; :mod:`rayml.serving.app` wraps it in Serve.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from rayml.features import FeatureEncoder, resolve_snapshot
from rayml.models.export import ort_session
from rayml.registry import ModelRegistry, RegistryError
from rayml.serving.config import RecommenderArgs


class UnknownUserError(KeyError):
    """The user has no features or no candidates."""


@dataclass(frozen=True)
class Recommendation:
    user_id: int
    items: list[int]
    scores: list[float]
    model_version: str


def _sorted_ids(table: pa.Table, column: str) -> tuple[pa.Table, np.ndarray]:
    table = table.take(pc.sort_indices(table, [(column, "ascending")]))
    return table, table[column].to_numpy()


@dataclass(frozen=True)
class LoadedRanker:
    """One ranker version, ready to score: its ONNX session and the features encoded its way."""

    model_version: str
    artifact: str
    session: ort.InferenceSession
    user_x: np.ndarray  # [U, Fu]
    item_x: np.ndarray  # [I, Fi]


class RecommenderCore:
    """Loads the ranker, features and candidates once; answers requests from memory.

    :meth:`swap_ranker` replaces the ranker atomically; when the new version fails to load
    (missing, corrupt, failed parity) the current one keeps serving.
    """

    def __init__(self, args: RecommenderArgs) -> None:
        self.args = args
        self.registry = ModelRegistry(args.registry)
        self.users, self.user_ids = _sorted_ids(pq.read_table(resolve_snapshot(args.users)), "user_id")
        self.items, self.item_ids = _sorted_ids(pq.read_table(resolve_snapshot(args.items)), "item_id")
        self.ranker = self._load_ranker(args.ranker_alias)
        self.reload_error: str | None = None
        cands, self.cand_user_ids = _sorted_ids(pq.read_table(args.candidates, columns=["user_id", "items"]), "user_id")
        items_type = cands.schema.field("items").type
        if not pa.types.is_fixed_size_list(items_type):
            raise ValueError(f"candidates {args.candidates}: column 'items' is {items_type}, expected a fixed-size list")
        cand_items = cands["items"].combine_chunks().flatten().to_numpy().reshape(-1, items_type.list_size)  # [Uc, K]
        rows = np.minimum(np.searchsorted(self.item_ids, cand_items), len(self.item_ids) - 1)
        if not np.array_equal(self.item_ids[rows], cand_items):
            raise ValueError(
                f"candidates {args.candidates} name items missing from items {args.items}: were they built from another world?"
            )
        self.cand_rows = rows  # [Uc, K] rows of item_x

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
        return LoadedRanker(
            model_version=version.label,
            artifact=artifact,
            session=ort_session(version.file(artifact), threads=1),
            user_x=user_encoder.transform(self.users),
            item_x=item_encoder.transform(self.items),
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

    @staticmethod
    def _find(ids: np.ndarray, user_id: int) -> int | None:
        pos = int(np.searchsorted(ids, user_id))
        return pos if pos < len(ids) and ids[pos] == user_id else None

    def recommend(self, user_id: int, k: int) -> Recommendation:
        """Rank the user's batch candidates with the ONNX ranker and return the top ``k``."""
        cand_pos = self._find(self.cand_user_ids, user_id)
        user_pos = self._find(self.user_ids, user_id)
        if cand_pos is None or user_pos is None:
            raise UnknownUserError(user_id)
        ranker = self.ranker  # read once: a concurrent swap cannot mix two versions in one answer
        rows = self.cand_rows[cand_pos]  # [C]
        n_user = ranker.user_x.shape[1]
        features = np.empty((len(rows), n_user + ranker.item_x.shape[1]), np.float32)
        features[:, :n_user] = ranker.user_x[user_pos]
        features[:, n_user:] = ranker.item_x[rows]
        scores = ranker.session.run(["score"], {"features": features})[0]  # [C]
        top = np.argsort(-scores, kind="stable")[:k]
        return Recommendation(
            user_id=user_id,
            items=self.item_ids[rows[top]].tolist(),
            scores=scores[top].astype(float).tolist(),
            model_version=ranker.model_version,
        )
