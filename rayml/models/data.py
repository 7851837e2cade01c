"""Training data for the slice: encoded user/item matrices plus the impression log as indices."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from rayml.features import FeatureEncoder
from rayml.features.offline import point_in_time_rows, read_history
from rayml.world import World


def holdout_mask(user_ids: np.ndarray, fraction: float, seed: int = 0) -> np.ndarray:
    """Deterministic per-user split: True for users kept out of training."""
    mixed = (np.asarray(user_ids, dtype=np.uint64) * np.uint64(2654435761) + np.uint64(seed)) % np.uint64(10_000)
    return mixed < np.uint64(int(fraction * 10_000))


@dataclass(frozen=True)
class TrainingData:
    """Everything a model in the slice trains on.

    Attributes:
        user_ids: [H] user id of each user-feature row (one row per snapshot and user).
        user_x: [H, Fu] encoded user features.
        item_ids: [I] sorted item ids; row j of ``item_x`` belongs to ``item_ids[j]``.
        item_x: [I, Fi] encoded item features.
        event_user: [E] row index into ``user_x`` of each impression (the snapshot valid at its time).
        event_item: [E] row index into ``item_x``.
        event_ts: [E] impression time, datetime64[us].
        label: [E] 1.0 when the impression was clicked.
        is_holdout: [E] True when the impression's user is held out for evaluation.
    """

    user_encoder: FeatureEncoder
    item_encoder: FeatureEncoder
    user_ids: np.ndarray
    user_x: np.ndarray
    item_ids: np.ndarray
    item_x: np.ndarray
    event_user: np.ndarray
    event_item: np.ndarray
    event_ts: np.ndarray
    label: np.ndarray
    is_holdout: np.ndarray

    def pairs(self, rows: np.ndarray) -> np.ndarray:
        """Ranker input [n, Fu + Fi] for the impressions at ``rows``."""
        return np.concatenate([self.user_x[self.event_user[rows]], self.item_x[self.event_item[rows]]], axis=1)


def load_training_data(
    world: World,
    holdout_fraction: float = 0.1,
    seed: int = 0,
    encoders: tuple[FeatureEncoder, FeatureEncoder] | None = None,
) -> TrainingData:
    """Index the impression log against encoded features: encoders fitted on the world, or given (a model's own).

    User features are joined point-in-time: each impression gets the user-feature snapshot that was valid
    when it happened (``valid_from <= ts``), never a later one. ``user_x`` holds one row per (snapshot, user).
    """
    history = read_history(world.path / "users", "user_id")  # sorted by (valid_from, user_id)
    users = pa.Table.from_pandas(history.drop(columns=["valid_from"]), preserve_index=False)
    items = world.item_features_table()
    if encoders is None:
        encoders = FeatureEncoder.fit(users, "user_id"), FeatureEncoder.fit(items, "item_id")
    user_encoder, item_encoder = encoders
    user_ids = users["user_id"].to_numpy()
    item_ids = items["item_id"].to_numpy()
    events = world.events_dataset().to_table(columns=["user_id", "item_id", "ts", "clicked"])
    ev_users = events["user_id"].to_numpy()
    event_user = point_in_time_rows(user_ids, history["valid_from"].to_numpy(), ev_users, events["ts"].to_numpy())
    if (event_user < 0).any():
        raise ValueError(f"{world.path}: {int((event_user < 0).sum())} impressions precede every user snapshot")
    return TrainingData(
        user_encoder=user_encoder,
        item_encoder=item_encoder,
        user_ids=user_ids,
        user_x=user_encoder.transform(users),
        item_ids=item_ids,
        item_x=item_encoder.transform(items),
        event_user=event_user,
        event_item=np.searchsorted(item_ids, events["item_id"].to_numpy()),
        event_ts=events["ts"].to_numpy().astype("datetime64[us]"),
        label=events["clicked"].to_numpy(zero_copy_only=False).astype(np.float32),
        is_holdout=holdout_mask(ev_users, holdout_fraction, seed),
    )
