"""Schema of ``configs/models/distill.yaml``: teacher, soft labels, student, compression, Ray Train scaling."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from rayml.batch.config import ActorPool
from rayml.config import StrictModel
from rayml.models.config import Split, TrainLoop


class Scaling(StrictModel):
    """Ray Train workers. ``use_gpu: auto`` uses GPUs when the cluster has any."""

    num_workers: int = Field(1, ge=1, le=4096, description="Training workers (data-parallel).")
    use_gpu: Literal["auto"] | bool = Field("auto", description="auto = True when the cluster has GPUs.")
    resources_per_worker: dict[str, float] = Field(
        default_factory=lambda: {"CPU": 1.0},
        description="Per-worker resources; e.g. {CPU: 4, spot: 1} pins workers to spot CPU nodes, {GPU: 1} to GPU nodes.",
    )
    max_failures: int = Field(2, ge=-1, le=1000, description="Worker failures recovered from the last checkpoint.")


class TeacherConfig(StrictModel):
    """The large ranker: cross term + deep MLP with dropout."""

    cross_dim: int = Field(128, ge=1, le=4096, description="Width of the user ⊙ item cross term.")
    hidden: tuple[int, ...] = Field((1024, 512, 256), min_length=1, max_length=8, description="Deep MLP widths.")
    dropout: float = Field(0.2, ge=0, lt=1, description="Dropout after each hidden layer.")
    privileged: bool = Field(
        True,
        description="Also feed the teacher offline-only, point-in-time aggregates of each user's earlier "
        "impressions (rayml.models.privileged); the student never sees them, only the teacher's soft labels.",
    )
    train: TrainLoop = TrainLoop(epochs=6, lr=2e-3, weight_decay=1e-4)


class StudentConfig(StrictModel):
    """The small ranker served in production: a plain MLP that int8 quantization speeds up."""

    hidden: tuple[int, ...] = Field((256, 128), min_length=1, max_length=8, description="MLP widths.")
    temperature: float = Field(2.0, gt=0, le=100, description="Softening of teacher and student logits.")
    alpha: float = Field(0.7, ge=0, le=1, description="Weight of the soft-label loss (1 - alpha on hard labels).")
    transfer_items: int = Field(
        1, ge=0, le=16,
        description="Unshown items (uniform) paired with each training impression's user and time, labelled by "
        "the teacher alone: a larger transfer set for the student; 0 = distil on the impressions only.",
    )
    train: TrainLoop = TrainLoop(epochs=4, lr=3e-3)


class SoftLabels(StrictModel):
    """Teacher scoring of the training set on Ray Data."""

    batch_size: int = Field(8192, ge=1, le=10_000_000, description="Rows per map_batches call.")
    actors: ActorPool = ActorPool(min_size=1, max_size=1, num_cpus=0.5)


class Quantization(StrictModel):
    mode: Literal["static", "dynamic"] = Field(
        "static",
        description="static: int8 weights and activations calibrated on the world's impressions (QDQ); "
        "dynamic: int8 weights, activation ranges per call.",
    )
    calibration_rows: int = Field(4096, ge=16, le=1_000_000, description="Training impressions used to calibrate.")
    max_abs_diff: float = Field(0.05, gt=0, le=1, description="Largest int8-vs-fp32 score difference accepted.")


class DistillConfig(StrictModel):
    """Train a teacher, distil it into a student, compress the student, register all of it."""

    world: str = Field(description="World directory to train on.")
    registry: str = Field(description="Registry root (path or pyarrow URI).")
    storage_path: str = Field(description="Ray Train checkpoint storage (absolute path or URI; relative resolves to cwd).")
    run_name: str = Field("distill", pattern=r"^[A-Za-z0-9_.-]+$", description="Runs are <run_name>-teacher/-student.")
    alias: str | None = Field("production", description="Alias pointed at the new student ranker; null for none.")
    split: Split = Split()
    scaling: Scaling = Scaling()
    teacher: TeacherConfig = TeacherConfig()
    student: StudentConfig = StudentConfig()
    soft_labels: SoftLabels = SoftLabels()
    quantization: Quantization = Quantization()
    baseline: bool = Field(True, description="Also train the student on hard labels only, for the report.")
    eval_users: int = Field(500, ge=2, le=1_000_000, description="Held-out users ranked over all items in the report.")
