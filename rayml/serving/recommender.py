"""The hybrid recommender: batch candidates, looked-up features, real-time ONNX ranking.

:class:`RecommenderCore` holds all logic and needs no Ray; :mod:`rayml.serving.app` wraps it in Serve.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from rayml.features import FeatureEncoder, resolve_snapshot
from rayml.models.export import ort_session
from rayml.registry import ModelRegistry
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


class RecommenderCore:
    """Loads the ranker, encoders, features and candidates once; answers requests from memory."""

    def __init__(self, args: RecommenderArgs) -> None:
        self.args = args
        version = ModelRegistry(args.registry).get(args.ranker_model, args.ranker_alias)
        self.model_version = version.label
        self.session = ort_session(version.file("model.onnx"), threads=1)
        user_encoder = FeatureEncoder.load(version.file("user_encoder.json"))
        item_encoder = FeatureEncoder.load(version.file("item_encoder.json"))
        users, self.user_ids = _sorted_ids(pq.read_table(resolve_snapshot(args.users)), "user_id")
        items, self.item_ids = _sorted_ids(pq.read_table(resolve_snapshot(args.items)), "item_id")
        self.user_x = user_encoder.transform(users)  # [U, Fu]
        self.item_x = item_encoder.transform(items)  # [I, Fi]
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
        self.n_user_features = self.user_x.shape[1]

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
        rows = self.cand_rows[cand_pos]  # [C]
        features = np.empty((len(rows), self.n_user_features + self.item_x.shape[1]), np.float32)
        features[:, : self.n_user_features] = self.user_x[user_pos]
        features[:, self.n_user_features :] = self.item_x[rows]
        scores = self.session.run(["score"], {"features": features})[0]  # [C]
        top = np.argsort(-scores, kind="stable")[:k]
        return Recommendation(
            user_id=user_id,
            items=self.item_ids[rows[top]].tolist(),
            scores=scores[top].astype(float).tolist(),
            model_version=self.model_version,
        )
