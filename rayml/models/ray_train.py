"""Train teacher and student rankers with Ray Train (`TorchTrainer`): per-epoch checkpoints, resume, GPU when present.

Workers receive the encoded feature matrices (small) and the impression indices, and each takes every
``world_size``-th impression. Re-running with the same ``RunConfig(name, storage_path)`` after the driver
was killed resumes from the last checkpoint (Ray Train V2 semantics); the reported ``resumed_from`` says where.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from rayml.models.config import TrainLoop
from rayml.models.data import TrainingData
from rayml.models.networks import Student, Teacher

STATE_FILE = "state.pt"


def make_network(kind: str, spec: dict[str, Any], user_dim: int, item_dim: int) -> nn.Module:
    """Build a ``teacher`` or ``student`` network from its config dict (``privileged_dim``: teacher's extra inputs)."""
    if kind == "teacher":
        return Teacher(user_dim, item_dim, spec["cross_dim"], tuple(spec["hidden"]), spec["dropout"],
                       spec.get("privileged_dim", 0))
    if kind == "student":
        return Student(user_dim + item_dim, tuple(spec["hidden"]))
    raise ValueError(f"unknown network kind {kind!r}")


def distillation_loss(
    logit: torch.Tensor, hard: torch.Tensor, teacher_logit: torch.Tensor | None, temperature: float, alpha: float
) -> torch.Tensor:
    """(1 - α)·BCE(logit, click) + α·T²·BCE(logit / T, sigmoid(teacher_logit / T)); plain BCE without a teacher.

    Rows whose ``hard`` label is NaN are transfer pairs the teacher scored but nobody was shown: they get the soft
    term alone, at full weight. The loss is the mean over rows.
    """
    bce = nn.functional.binary_cross_entropy_with_logits
    labeled = ~torch.isnan(hard)
    if teacher_logit is None or alpha == 0:
        if not bool(labeled.all()):
            raise ValueError("rows without a click label need teacher logits and alpha > 0")
        return bce(logit, hard)
    soft_target = torch.sigmoid(teacher_logit / temperature)
    soft = bce(logit / temperature, soft_target, reduction="none") * temperature**2  # [B]
    hard_row = bce(logit, torch.where(labeled, hard, torch.zeros_like(hard)), reduction="none")  # [B]
    per_row = torch.where(labeled, alpha * soft + (1 - alpha) * hard_row, soft)
    return per_row.mean()


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker."""
    import ray.train
    import ray.train.torch

    loop = TrainLoop.model_validate(config["loop"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    user_x, item_x = config["user_x"], config["item_x"]
    ev_user, ev_item, label = config["event_user"], config["event_item"], config["label"]
    soft = config.get("teacher_logit")
    privileged = config.get("privileged")  # [E, P] teacher-only inputs, or None
    rows = config["rows"][rank::world]
    device = ray.train.torch.get_device()
    torch.manual_seed(loop.seed)
    model = make_network(config["kind"], config["spec"], user_x.shape[1], item_x.shape[1])
    model = ray.train.torch.prepare_model(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=loop.lr, weight_decay=loop.weight_decay)
    steps_per_epoch = max(len(rows) // loop.batch_size, 1)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, loop.lr, total_steps=loop.epochs * steps_per_epoch)
    start = 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as ckpt_dir:
            state = torch.load(Path(ckpt_dir) / STATE_FILE, map_location=device, weights_only=False)
        unwrapped(model).load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        start = state["epoch"] + 1
    for epoch in range(start, loop.epochs):
        model.train()
        order = np.random.default_rng(loop.seed + epoch).permutation(rows)
        total = 0.0
        for batch in np.array_split(order, steps_per_epoch):
            parts = [user_x[ev_user[batch]], item_x[ev_item[batch]]]
            if privileged is not None:
                parts.append(privileged[batch])
            x = np.concatenate(parts, axis=1)  # [B, Fu + Fi (+ P)]
            logit = model(torch.from_numpy(x).to(device))
            teacher_logit = torch.from_numpy(soft[batch]).to(device) if soft is not None else None
            loss = distillation_loss(logit, torch.from_numpy(label[batch]).to(device), teacher_logit,
                                     config["temperature"], config["alpha"])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            total += float(loss.detach()) * len(batch)
        metrics = {"epoch": epoch, "loss": total / len(order), "resumed_from": start, "device": str(device)}
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = None
            if rank == 0:
                torch.save(
                    {"model": unwrapped(model).state_dict(), "optimizer": optimizer.state_dict(),
                     "schedule": schedule.state_dict(), "epoch": epoch},
                    Path(tmp) / STATE_FILE,
                )
                ckpt = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(metrics, checkpoint=ckpt)


def unwrapped(model: nn.Module) -> nn.Module:
    """The network inside a DistributedDataParallel wrapper, or the model itself."""
    inner = getattr(model, "module", model)
    return inner if isinstance(inner, nn.Module) else model


@dataclass(frozen=True)
class TransferPairs:
    """Extra (user, item) pairs for distillation that were never shown: the teacher labels them, nobody else.

    Attributes:
        source: [N] impression each pair was drawn from (its user, user-feature snapshot and time).
        user_row: [N] row of ``TrainingData.user_x``; item_row: [N] row of ``item_x``.
    """

    source: np.ndarray
    user_row: np.ndarray
    item_row: np.ndarray

    def __len__(self) -> int:
        return len(self.source)

    @classmethod
    def sample(cls, data: TrainingData, rows: np.ndarray, per_impression: int, seed: int = 0) -> TransferPairs:
        """``per_impression`` pairs for each impression in ``rows``: its user with items drawn uniformly, so the
        student also learns the teacher's view of items the logging policy rarely shows."""
        rng = np.random.default_rng([seed, 17])
        source = np.repeat(rows, per_impression)
        return cls(source, data.event_user[source], rng.integers(0, len(data.item_ids), len(source)))


@dataclass
class RayTrainResult:
    model: nn.Module
    metrics: dict[str, Any]
    checkpoint_path: str


def cluster_has_gpus() -> bool:
    import ray

    return ray.cluster_resources().get("GPU", 0) > 0


def train_on_ray(
    kind: str,
    spec: dict[str, Any],
    loop: TrainLoop,
    data: TrainingData,
    rows: np.ndarray,
    *,
    name: str,
    storage_path: str,
    scaling: dict[str, Any],
    teacher_logit: np.ndarray | None = None,
    temperature: float = 1.0,
    alpha: float = 0.0,
    privileged: np.ndarray | None = None,
    transfer: TransferPairs | None = None,
) -> RayTrainResult:
    """Fit a network with ``TorchTrainer`` and return it (on CPU, eval mode) with the last reported metrics.

    ``privileged`` ([E, P], aligned with ``data.label``) is appended to every input row: a teacher's offline-only
    features; its spec must then carry ``privileged_dim = P``. ``transfer``: unlabeled pairs trained on the
    teacher's soft labels alone; ``teacher_logit`` then covers the impressions, then these pairs ([E + N]).
    """
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    use_gpu = scaling["use_gpu"]
    if use_gpu == "auto":
        use_gpu = cluster_has_gpus()
    storage = storage_path if "://" in storage_path else str(Path(storage_path).expanduser().resolve())
    event_user, event_item, label = data.event_user, data.event_item, data.label
    if transfer is not None:
        if teacher_logit is None or len(teacher_logit) != len(label) + len(transfer):
            raise ValueError(f"transfer pairs need teacher logits for {len(label)} impressions + {len(transfer)} pairs")
        event_user = np.concatenate([event_user, transfer.user_row])
        event_item = np.concatenate([event_item, transfer.item_row])
        label = np.concatenate([label, np.full(len(transfer), np.nan, np.float32)])
        rows = np.concatenate([rows, len(data.label) + np.arange(len(transfer))])
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "kind": kind, "spec": spec, "loop": loop.model_dump(mode="json"),
            "user_x": data.user_x, "item_x": data.item_x, "event_user": event_user,
            "event_item": event_item, "label": label, "rows": rows,
            "teacher_logit": teacher_logit, "temperature": temperature, "alpha": alpha, "privileged": privileged,
        },
        scaling_config=ScalingConfig(
            num_workers=scaling["num_workers"], use_gpu=bool(use_gpu),
            resources_per_worker=dict(scaling["resources_per_worker"]),
        ),
        run_config=RunConfig(
            name=name, storage_path=storage,
            failure_config=FailureConfig(max_failures=scaling["max_failures"]),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
        ),
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"Ray Train run {name!r} reported no checkpoint")
    with result.checkpoint.as_directory() as ckpt_dir:
        state = torch.load(Path(ckpt_dir) / STATE_FILE, map_location="cpu", weights_only=False)
    model = make_network(kind, spec, data.user_x.shape[1], data.item_x.shape[1])
    model.load_state_dict(state["model"])
    return RayTrainResult(model.eval(), dict(result.metrics or {}), result.checkpoint.path)
