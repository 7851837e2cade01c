"""Train the ranker and the two-tower retriever on logged clicks (GPU when present, else CPU)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from rayml.models.config import RankerConfig, RetrieverConfig, TrainLoop
from rayml.models.data import TrainingData
from rayml.models.networks import Ranker, TwoTower
from rayml.monitoring import roc_auc

BatchFn = Callable[[np.ndarray, torch.device], tuple[tuple[torch.Tensor, ...], torch.Tensor]]


def resolve_device(choice: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU; ``cuda`` without a GPU is an error."""
    if choice == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("key 'train.device': cuda was requested but torch.cuda.is_available() is False")
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(choice)


@dataclass
class TrainReport:
    """What training measured: loss per epoch and AUC on held-out users' impressions."""

    device: str
    epochs: int
    train_rows: int
    loss: list[float] = field(default_factory=list)
    holdout_auc: float = float("nan")

    def to_dict(self) -> dict:
        return {
            "device": self.device,
            "epochs": self.epochs,
            "train_rows": self.train_rows,
            "loss": self.loss,
            "holdout_auc": self.holdout_auc,
        }


def fit_binary(model: nn.Module, batch_fn: BatchFn, rows: np.ndarray, loop: TrainLoop) -> TrainReport:
    """Minimise click log-loss over impressions ``rows`` with Adam."""
    device = resolve_device(loop.device)
    torch.manual_seed(loop.seed)
    rng = np.random.default_rng(loop.seed)
    model.to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=loop.lr, weight_decay=loop.weight_decay)
    loss_fn = nn.BCEWithLogitsLoss()
    report = TrainReport(device=str(device), epochs=loop.epochs, train_rows=len(rows))
    for _ in range(loop.epochs):
        order = rng.permutation(rows)
        total = 0.0
        for lo in range(0, len(order), loop.batch_size):
            inputs, target = batch_fn(order[lo : lo + loop.batch_size], device)
            loss = loss_fn(model(*inputs), target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(target)
        report.loss.append(total / max(len(order), 1))
    model.eval().cpu()
    return report


def _holdout_auc(model: nn.Module, batch_fn: BatchFn, rows: np.ndarray, labels: np.ndarray) -> float:
    cpu = torch.device("cpu")
    scores = []
    with torch.no_grad():
        for lo in range(0, len(rows), 65_536):
            inputs, _ = batch_fn(rows[lo : lo + 65_536], cpu)
            scores.append(model(*inputs).numpy())
    return roc_auc(labels, np.concatenate(scores))


def _tensor(x: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x)).to(device)


def train_ranker(data: TrainingData, config: RankerConfig) -> tuple[Ranker, TrainReport]:
    """Fit a :class:`Ranker` on non-holdout impressions; report AUC on holdout ones."""
    model = Ranker(data.user_x.shape[1], data.item_x.shape[1], config.cross_dim, tuple(config.hidden))

    def batch(rows: np.ndarray, device: torch.device):
        return (_tensor(data.pairs(rows), device),), _tensor(data.label[rows], device)

    train_rows = np.flatnonzero(~data.is_holdout)
    report = fit_binary(model, batch, train_rows, config.train)
    held = np.flatnonzero(data.is_holdout)
    report.holdout_auc = _holdout_auc(model, batch, held, data.label[held])
    return model, report


class InBatchSoftmax(nn.Module):
    """Sampled-softmax objective for a :class:`TwoTower`: each clicked pair's item against the batch's items.

    ``logit[i, j] = user_i · item_j + bias_j − log q_j``, where ``q_j`` is item j's share of clicks (the
    logQ correction removes the popularity bias of in-batch sampling). Target: the diagonal.
    """

    def __init__(self, model: TwoTower, log_q: torch.Tensor):
        super().__init__()
        self.model = model
        self.log_q: torch.Tensor
        self.register_buffer("log_q", log_q)

    def forward(self, user_x: torch.Tensor, item_x: torch.Tensor, item_rows: torch.Tensor) -> torch.Tensor:
        user = self.model.user(user_x)  # [B, E]
        item = self.model.item(item_x)  # [B, E + 1], bias last
        logits = user @ item[:, :-1].T + item[:, -1][None, :] - self.log_q[item_rows][None, :]  # [B, B]
        same = item_rows[:, None] == item_rows[None, :]
        logits = logits.masked_fill(same & ~torch.eye(len(item_rows), dtype=torch.bool, device=logits.device), -1e9)
        return nn.functional.cross_entropy(logits, torch.arange(len(item_rows), device=logits.device))


def _fit_in_batch(model: TwoTower, data: TrainingData, rows: np.ndarray, loop: TrainLoop) -> TrainReport:
    device = resolve_device(loop.device)
    clicks = np.bincount(data.event_item[rows], minlength=len(data.item_ids)).astype(np.float64) + 1.0
    objective = InBatchSoftmax(model, torch.from_numpy(np.log(clicks / clicks.sum()).astype(np.float32)))
    torch.manual_seed(loop.seed)
    rng = np.random.default_rng(loop.seed)
    objective.to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=loop.lr, weight_decay=loop.weight_decay)
    report = TrainReport(device=str(device), epochs=loop.epochs, train_rows=len(rows))
    for _ in range(loop.epochs):
        order = rng.permutation(rows)
        total = 0.0
        for lo in range(0, len(order) - 1, loop.batch_size):
            batch = order[lo : lo + loop.batch_size]
            loss = objective(_tensor(data.user_x[data.event_user[batch]], device),
                             _tensor(data.item_x[data.event_item[batch]], device),
                             _tensor(data.event_item[batch], device))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(batch)
        report.loss.append(total / max(len(order), 1))
    objective.eval().cpu()
    return report


def train_retriever(data: TrainingData, config: RetrieverConfig) -> tuple[TwoTower, TrainReport]:
    """Fit a :class:`TwoTower` on non-holdout impressions (in-batch softmax over clicks, or pointwise);
    report AUC of its scores on holdout impressions."""
    model = TwoTower(data.user_x.shape[1], data.item_x.shape[1], config.embedding_dim, config.hidden)

    def batch(rows: np.ndarray, device: torch.device):
        user = _tensor(data.user_x[data.event_user[rows]], device)
        item = _tensor(data.item_x[data.event_item[rows]], device)
        return (user, item), _tensor(data.label[rows], device)

    train_rows = np.flatnonzero(~data.is_holdout)
    if config.loss == "in_batch_softmax":
        report = _fit_in_batch(model, data, train_rows[data.label[train_rows] > 0], config.train)
    else:
        report = fit_binary(model, batch, train_rows, config.train)
    held = np.flatnonzero(data.is_holdout)
    report.holdout_auc = _holdout_auc(model, batch, held, data.label[held])
    return model, report
