"""Teacher soft labels for every impression, computed on Ray Data actors (GPU actors when asked for)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from rayml.batch.config import ActorPool
from rayml.models.data import TrainingData
from rayml.models.ray_train import TransferPairs, make_network


class TeacherScorer:
    """Ray Data actor: holds the teacher and the encoded feature matrices; scores impression ids."""

    def __init__(self, kind: str, spec: dict[str, Any], state: dict[str, Any], user_x: np.ndarray,
                 item_x: np.ndarray, event_user: np.ndarray, event_item: np.ndarray,
                 privileged: np.ndarray | None = None) -> None:
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model = make_network(kind, spec, user_x.shape[1], item_x.shape[1])
        self.model.load_state_dict(state)
        self.model.to(self.device).eval()
        self.user_x, self.item_x = user_x, item_x
        self.event_user, self.event_item = event_user, event_item
        self.privileged = privileged  # [E, P] or None

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = batch["id"]
        parts = [self.user_x[self.event_user[rows]], self.item_x[self.event_item[rows]]]
        if self.privileged is not None:
            parts.append(self.privileged[rows])
        x = np.concatenate(parts, axis=1)  # [B, Fu + Fi (+ P)]
        with torch.no_grad():
            logit = self.model(torch.from_numpy(x).to(self.device)).cpu().numpy()
        return {"id": rows, "teacher_logit": logit.astype(np.float32)}


def teacher_logits(
    teacher: torch.nn.Module, kind: str, spec: dict[str, Any], data: TrainingData, batch_size: int, pool: ActorPool,
    privileged: np.ndarray | None = None,
    transfer: TransferPairs | None = None,
    transfer_privileged: np.ndarray | None = None,
) -> np.ndarray:
    """Teacher logit of every impression in ``data`` (aligned with ``data.label``), then of every ``transfer``
    pair. [E (+ N)] float32.

    ``privileged``, ``transfer_privileged``: the teacher's offline-only inputs ([E, P], [N, P]) appended to rows.

    Runs ``map_batches`` on an actor pool with fractional CPUs (2-core boxes never deadlock) and
    ``pool.num_gpus`` GPUs per actor when set.
    """
    import ray
    from ray.data import ActorPoolStrategy

    event_user, event_item = data.event_user, data.event_item
    if transfer is not None:
        event_user = np.concatenate([event_user, transfer.user_row])
        event_item = np.concatenate([event_item, transfer.item_row])
        if privileged is not None:
            if transfer_privileged is None or len(transfer_privileged) != len(transfer):
                raise ValueError(f"a privileged teacher needs privileged features for all {len(transfer)} transfer pairs")
            privileged = np.concatenate([privileged, transfer_privileged])
    n = len(event_user)
    blocks = max(1, min(64, n // batch_size))
    ds = ray.data.range(n, override_num_blocks=blocks).map_batches(
        TeacherScorer,
        fn_constructor_kwargs={
            "kind": kind, "spec": spec, "state": {k: v.cpu() for k, v in teacher.state_dict().items()},
            "user_x": data.user_x, "item_x": data.item_x,
            "event_user": event_user, "event_item": event_item, "privileged": privileged,
        },
        batch_size=batch_size,
        batch_format="numpy",
        compute=ActorPoolStrategy(min_size=pool.min_size, max_size=pool.max_size),
        num_cpus=pool.num_cpus,
        num_gpus=pool.num_gpus or None,
    )
    out = np.empty(n, np.float32)
    seen = np.zeros(n, bool)
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        out[batch["id"]] = batch["teacher_logit"]
        seen[batch["id"]] = True
    if not seen.all():
        raise RuntimeError(f"soft labels missing for {int((~seen).sum())} of {n} impressions")
    return out
