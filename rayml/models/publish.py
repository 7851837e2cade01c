"""Export trained models to ONNX and publish them, with encoders and lineage, to the registry."""

from __future__ import annotations

import hashlib
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rayml.models.data import TrainingData
from rayml.models.export import export_onnx
from rayml.models.networks import Ranker, ScoreHead, TwoTower, UserTowerExport
from rayml.models.training import TrainReport
from rayml.registry import ModelRegistry, ModelVersion, RegistryError
from rayml.world import World

RANKER = "ranker"
RETRIEVER = "retriever"
TEACHER = "teacher"


def code_revision() -> str:
    """Git commit of the running code, or ``unknown`` outside a checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def world_lineage(world: World) -> dict[str, Any]:
    """Training-data snapshot: where the world is, a hash of its config and counts, and the end of its log (the
    monitor's training-data age)."""
    digest = hashlib.sha256((world.path / "world.json").read_bytes()).hexdigest()[:16]
    return {"world_path": str(world.path.resolve()), "world_digest": digest, "code_revision": code_revision(),
            "data_end": world.end_date.isoformat()}


def _sample_rows(data: TrainingData, n: int = 2048) -> np.ndarray:
    return np.flatnonzero(data.is_holdout)[:n]


def publish_ranker(
    registry: ModelRegistry, model: Ranker, data: TrainingData, report: TrainReport,
    params: dict[str, Any], lineage: dict[str, Any],
) -> ModelVersion:
    """Register ``model.onnx`` (features [N, Fu+Fi] → score [N]) with both encoders."""
    with tempfile.TemporaryDirectory() as tmp:
        tmpdir = Path(tmp)
        parity = export_onnx(ScoreHead(model), data.pairs(_sample_rows(data)), tmpdir / "model.onnx", "features", "score")
        if not parity.passed:
            raise RegistryError(f"{RANKER}: ONNX parity failed ({parity.max_abs_diff:.2e} > {parity.tolerance})")
        data.user_encoder.save(tmpdir / "user_encoder.json")
        data.item_encoder.save(tmpdir / "item_encoder.json")
        files = {f: tmpdir / f for f in ("model.onnx", "user_encoder.json", "item_encoder.json")}
        meta = {
            "kind": "ranker",
            "inputs": {"features": [None, data.user_x.shape[1] + data.item_x.shape[1]]},
            "outputs": {"score": [None]},
            "metrics": {"holdout_auc": report.holdout_auc},
            "training": report.to_dict(),
            "params": params,
            "parity": parity.to_dict(),
            "lineage": lineage,
        }
        return registry.register(RANKER, files, meta)


def publish_retriever(
    registry: ModelRegistry, model: TwoTower, data: TrainingData, report: TrainReport,
    params: dict[str, Any], lineage: dict[str, Any],
) -> ModelVersion:
    """Register the user tower (``user_tower.onnx``) and precomputed item embeddings with bias column."""
    with tempfile.TemporaryDirectory() as tmp:
        tmpdir = Path(tmp)
        sample = data.user_x[: min(2048, len(data.user_x))]
        parity = export_onnx(UserTowerExport(model), sample, tmpdir / "user_tower.onnx", "user_features", "embedding")
        if not parity.passed:
            raise RegistryError(f"{RETRIEVER}: ONNX parity failed ({parity.max_abs_diff:.2e} > {parity.tolerance})")
        with torch.no_grad():
            item_emb = model.item(torch.from_numpy(data.item_x)).numpy().astype(np.float32)  # [I, E+1]
        np.save(tmpdir / "item_embeddings.npy", item_emb)
        np.save(tmpdir / "item_ids.npy", data.item_ids.astype(np.int64))
        data.user_encoder.save(tmpdir / "user_encoder.json")
        files = {f: tmpdir / f for f in ("user_tower.onnx", "item_embeddings.npy", "item_ids.npy", "user_encoder.json")}
        meta = {
            "kind": "retriever",
            "inputs": {"user_features": [None, data.user_x.shape[1]]},
            "outputs": {"embedding": [None, item_emb.shape[1]]},
            "metrics": {"holdout_auc": report.holdout_auc},
            "training": report.to_dict(),
            "params": params,
            "parity": parity.to_dict(),
            "lineage": lineage,
        }
        return registry.register(RETRIEVER, files, meta)
