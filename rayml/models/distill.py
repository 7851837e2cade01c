"""Distillation pipeline: teacher on Ray Train → soft labels on Ray Data → student on Ray Train → ONNX + int8 → registry."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rayml.models.data import TrainingData, load_training_data
from rayml.models.distill_config import DistillConfig
from rayml.models.evaluate import (
    EvalRow,
    PairedGap,
    evaluate_ranker,
    holdout_set,
    markdown_table,
    paired_gap,
    user_ndcg10,
)
from rayml.models.export import export_onnx, quantize_int8
from rayml.models.networks import ScoreHead, parameter_count
from rayml.models.privileged import (
    PRIVILEGED_COLUMNS,
    PrivilegedFeatures,
    load_pair_privileged,
    load_privileged,
)
from rayml.models.publish import RANKER, TEACHER, world_lineage
from rayml.models.ray_train import TransferPairs, train_on_ray
from rayml.models.soft_labels import teacher_logits
from rayml.registry import ModelRegistry, ModelVersion, RegistryError
from rayml.world import World


@dataclass
class DistillReport:
    teacher: str
    student: str
    rows: list[EvalRow] = field(default_factory=list)
    training: dict[str, Any] = field(default_factory=dict)
    teacher_minus_hard: PairedGap | None = None  # per-user NDCG@10, same held-out users

    def table(self) -> str:
        return markdown_table(self.rows)

    def to_dict(self) -> dict[str, Any]:
        gap = self.teacher_minus_hard.to_dict() if self.teacher_minus_hard else None
        return {"teacher": self.teacher, "student": self.student, "rows": [r.to_dict() for r in self.rows],
                "training": self.training, "teacher_minus_hard_ndcg10": gap}


def world_privileged(world: World, data: TrainingData) -> PrivilegedFeatures:
    """The teacher's privileged features for ``data``: per impression, and per user at the end of the log."""
    return load_privileged(data, world.item_features_table(), np.datetime64(world.end_date, "us"))


def _export(model, data: TrainingData, path: Path, privileged: PrivilegedFeatures | None = None) -> Any:
    rows = np.flatnonzero(data.is_holdout)[:2048]
    sample = data.pairs(rows)
    if privileged is not None:
        sample = np.concatenate([sample, privileged.per_event[rows]], axis=1)
    return export_onnx(ScoreHead(model), sample, path, "features", "score")


def _register(registry: ModelRegistry, name: str, files: dict[str, Path], meta: dict[str, Any]) -> ModelVersion:
    for parity_key in ("parity", "int8_parity"):
        if parity_key in meta and not meta[parity_key]["passed"]:
            raise RegistryError(f"{name}: {parity_key} failed ({meta[parity_key]['max_abs_diff']:.2e}); not registered")
    return registry.register(name, files, meta)


def evaluate_registered(world: World, registry: ModelRegistry, teacher_ref: str, student_ref: str,
                        max_users: int = 500) -> list[EvalRow]:
    """The evaluation table for registered versions: teacher, student fp32 and (when present) student int8.

    Uses the student's own encoders and the held-out split recorded in its lineage.
    """
    from rayml.features import FeatureEncoder

    student = registry.get(RANKER, student_ref)
    teacher = registry.get(TEACHER, teacher_ref)
    split = student.metadata.get("lineage", {}).get("split", {"holdout_users": 0.1, "seed": 0})
    encoders = (FeatureEncoder.load(student.file("user_encoder.json")), FeatureEncoder.load(student.file("item_encoder.json")))
    data = load_training_data(world, split["holdout_users"], split["seed"], encoders)
    holdout = holdout_set(world, data, max_users)
    privileged = world_privileged(world, data) if teacher.metadata.get("privileged_features") else None
    rows = [evaluate_ranker("teacher", teacher.label, teacher.file("model.onnx"), data, holdout, privileged),
            evaluate_ranker("student fp32", student.label, student.file("model.onnx"), data, holdout)]
    if "model.int8.onnx" in student.metadata["files"]:
        rows.append(evaluate_ranker("student int8", student.label + " (int8)", student.file("model.int8.onnx"), data, holdout))
    return rows


def run_distillation(config: DistillConfig) -> DistillReport:
    """Run the whole pipeline on the current Ray (started locally when none is given) and register the results."""
    from rayml.config import init_ray

    init_ray()
    world = World(config.world)
    registry = ModelRegistry(config.registry)
    data = load_training_data(world, config.split.holdout_users, config.split.seed)
    rows = np.flatnonzero(~data.is_holdout)
    privileged = world_privileged(world, data) if config.teacher.privileged else None
    lineage = world_lineage(world) | {"split": config.split.model_dump(mode="json")}
    scaling = config.scaling.model_dump(mode="json")
    storage = config.storage_path
    teacher_spec = config.teacher.model_dump(mode="json", exclude={"train", "privileged"})
    teacher_spec["privileged_dim"] = privileged.width if privileged is not None else 0
    per_event = privileged.per_event if privileged is not None else None
    student_spec = config.student.model_dump(mode="json", include={"hidden"})

    teacher = train_on_ray("teacher", teacher_spec, config.teacher.train, data, rows,
                           name=f"{config.run_name}-teacher", storage_path=storage, scaling=scaling,
                           privileged=per_event)
    transfer = None
    transfer_privileged = None
    if config.student.transfer_items:
        transfer = TransferPairs.sample(data, rows, config.student.transfer_items, config.split.seed)
        if privileged is not None:
            transfer_privileged = load_pair_privileged(data, privileged.item_category, transfer.source,
                                                       transfer.item_row)
    logits = teacher_logits(teacher.model, "teacher", teacher_spec, data, config.soft_labels.batch_size,
                            config.soft_labels.actors, per_event, transfer, transfer_privileged)
    del transfer_privileged  # [N, P] float32, about 100 MB on the demo world; scored, no longer needed
    student = train_on_ray("student", student_spec, config.student.train, data, rows,
                           name=f"{config.run_name}-student", storage_path=storage, scaling=scaling,
                           teacher_logit=logits, temperature=config.student.temperature, alpha=config.student.alpha,
                           transfer=transfer)
    hard = None
    if config.baseline:
        hard = train_on_ray("student", student_spec, config.student.train, data, rows,
                            name=f"{config.run_name}-student-hard", storage_path=storage, scaling=scaling)

    holdout = holdout_set(world, data, config.eval_users)
    gap = None
    with tempfile.TemporaryDirectory() as tmp:
        tmpdir = Path(tmp)
        data.user_encoder.save(tmpdir / "user_encoder.json")
        data.item_encoder.save(tmpdir / "item_encoder.json")
        encoders = {f: tmpdir / f for f in ("user_encoder.json", "item_encoder.json")}
        teacher_parity = _export(teacher.model, data, tmpdir / "teacher.onnx", privileged)
        teacher_v = _register(registry, TEACHER, {"model.onnx": tmpdir / "teacher.onnx", **encoders}, {
            "kind": "teacher", "params": teacher_spec | {"train": config.teacher.train.model_dump(mode="json")},
            "parameter_count": parameter_count(teacher.model), "parity": teacher_parity.to_dict(),
            "privileged_features": list(PRIVILEGED_COLUMNS) + [f"clicked_mean.{c}" for c in data.item_encoder.feature_names]
            if privileged is not None else [],
            "training": teacher.metrics, "lineage": lineage,
        })
        student_parity = _export(student.model, data, tmpdir / "student.onnx")
        calibration = np.random.default_rng(0).choice(rows, min(len(rows), config.quantization.calibration_rows), replace=False)
        int8_parity = quantize_int8(tmpdir / "student.onnx", tmpdir / "student.int8.onnx",
                                    data.pairs(np.sort(calibration)), "features", "score",
                                    config.quantization.max_abs_diff, config.quantization.mode)
        teacher_ndcg = user_ndcg10(tmpdir / "teacher.onnx", data, holdout, privileged)
        rows_out = [evaluate_ranker("teacher", teacher_v.label, tmpdir / "teacher.onnx", data, holdout, privileged,
                                    teacher_ndcg)]
        if hard is not None:
            _export(hard.model, data, tmpdir / "hard.onnx")
            hard_ndcg = user_ndcg10(tmpdir / "hard.onnx", data, holdout)
            gap = paired_gap(teacher_ndcg, hard_ndcg)
            rows_out.append(evaluate_ranker("student, hard labels only", "-", tmpdir / "hard.onnx", data, holdout,
                                            per_user_ndcg=hard_ndcg))
        student_row = evaluate_ranker("student fp32 (distilled)", "", tmpdir / "student.onnx", data, holdout)
        int8_row = evaluate_ranker("student int8 (distilled)", "", tmpdir / "student.int8.onnx", data, holdout)
        student_v = _register(registry, RANKER, {
            "model.onnx": tmpdir / "student.onnx", "model.int8.onnx": tmpdir / "student.int8.onnx", **encoders,
        }, {
            "kind": "ranker", "distilled": True,
            "params": student_spec | {"temperature": config.student.temperature, "alpha": config.student.alpha,
                                      "transfer_items": config.student.transfer_items,
                                      "train": config.student.train.model_dump(mode="json")},
            "parameter_count": parameter_count(student.model),
            "parity": student_parity.to_dict(),
            "int8_parity": int8_parity.to_dict() | {"mode": config.quantization.mode},
            "metrics": {"holdout_auc": student_row.auc, "ndcg10": student_row.ndcg10,
                        "int8_ndcg10": int8_row.ndcg10, "int8_auc": int8_row.auc},
            "training": student.metrics,
            "lineage": lineage | {"teacher_version": teacher_v.label},
        })
    rows_out += [
        EvalRow(**{**student_row.to_dict(), "version": student_v.label}),
        EvalRow(**{**int8_row.to_dict(), "version": student_v.label + " (model.int8.onnx)"}),
    ]
    if config.alias:
        registry.set_alias(TEACHER, config.alias, teacher_v.version, reason="distillation run")
        registry.set_alias(RANKER, config.alias, student_v.version, reason=f"distilled from {teacher_v.label}")
    report = DistillReport(teacher_v.label, student_v.label, rows_out, {
        "teacher": teacher.metrics, "student": student.metrics, "hard": hard.metrics if hard else None,
    }, gap)
    return report
