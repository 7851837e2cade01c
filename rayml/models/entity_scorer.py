"""Entity scorers: one score per entity from that entity's own features (what the batch scoring job runs).

A version holds ``model.onnx`` (``features`` [N, F] → ``score`` [N]) and ``encoder.json`` (the
:class:`FeatureEncoder` that turns the raw columns into ``features``). The demo's scorer is a user
propensity model: P(click | user) learned from the world's impressions.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from rayml.features import FeatureEncoder
from rayml.models.config import TrainLoop
from rayml.models.data import load_training_data
from rayml.models.export import export_onnx
from rayml.models.networks import ScoreHead, mlp
from rayml.models.training import TrainReport, fit_binary
from rayml.monitoring import roc_auc
from rayml.registry import ModelRegistry, ModelVersion, RegistryError
from rayml.world import World

KIND = "entity_scorer"
PROPENSITY = "user_propensity"


class MLPScorer(nn.Module):
    """Encoded features [N, F] → logit [N]."""

    def __init__(self, in_dim: int, hidden: tuple[int, ...] = (64, 32)):
        super().__init__()
        self.net = mlp([in_dim, *hidden, 1])

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features).squeeze(1)


def publish_entity_scorer(
    registry: ModelRegistry, name: str, model: nn.Module, encoder: FeatureEncoder, sample: np.ndarray,
    metadata: dict[str, Any],
) -> ModelVersion:
    """Export ``model`` (logits) as a probability scorer, check parity on ``sample`` and register it."""
    with tempfile.TemporaryDirectory() as tmp:
        tmpdir = Path(tmp)
        parity = export_onnx(ScoreHead(model), sample, tmpdir / "model.onnx", "features", "score")
        if not parity.passed:
            raise RegistryError(f"{name}: ONNX parity failed ({parity.max_abs_diff:.2e} > {parity.tolerance})")
        encoder.save(tmpdir / "encoder.json")
        meta = {"kind": KIND, "inputs": {"features": [None, encoder.width]}, "outputs": {"score": [None]},
                "id_column": encoder.id_column, "parity": parity.to_dict(), **metadata}
        return registry.register(name, {f: tmpdir / f for f in ("model.onnx", "encoder.json")}, meta)


def train_user_propensity(world: World, loop: TrainLoop, hidden: tuple[int, ...] = (64, 32)) -> tuple[
    MLPScorer, FeatureEncoder, TrainReport, np.ndarray
]:
    """Fit P(click | user features) on non-holdout impressions; AUC on held-out users' impressions.

    Returns the model, the user encoder, the report and a sample of encoded rows (for export parity).
    """
    data = load_training_data(world)
    model = MLPScorer(data.user_x.shape[1], hidden)

    def batch(rows: np.ndarray, device: torch.device):
        x = torch.from_numpy(data.user_x[data.event_user[rows]]).to(device)
        return (x,), torch.from_numpy(data.label[rows]).to(device)

    report = fit_binary(model, batch, np.flatnonzero(~data.is_holdout), loop)
    held = np.flatnonzero(data.is_holdout)
    with torch.no_grad():
        scores = model(torch.from_numpy(data.user_x[data.event_user[held]])).numpy()
    report.holdout_auc = roc_auc(data.label[held], scores)
    return model, data.user_encoder, report, data.user_x[: min(2048, len(data.user_x))]
