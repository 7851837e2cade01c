"""Schemas for model training configs (``configs/models/*.yaml``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from rayml.config import StrictModel


class TrainLoop(StrictModel):
    """Optimisation settings shared by every model."""

    epochs: int = Field(3, ge=1, le=1000, description="Passes over the training impressions.")
    batch_size: int = Field(1024, ge=1, le=1_000_000, description="Impressions per optimiser step.")
    lr: float = Field(3e-3, gt=0, le=1, description="Adam learning rate.")
    weight_decay: float = Field(1e-6, ge=0, le=1, description="Adam L2 penalty.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto = cuda when available.")
    seed: int = Field(0, ge=0, le=2**32 - 1, description="Seed of initialisation and shuffling.")


class Split(StrictModel):
    """Which users are held out of training for evaluation (the same split for every model)."""

    holdout_users: float = Field(0.1, gt=0, lt=1, description="Share of users kept out for evaluation.")
    seed: int = Field(0, ge=0, le=2**32 - 1, description="Seed of the per-user hash split.")


class RankerConfig(StrictModel):
    cross_dim: int = Field(32, ge=1, le=4096, description="Width of the user ⊙ item cross term.")
    hidden: tuple[int, ...] = Field((128, 64), min_length=1, max_length=8, description="MLP widths after the cross.")
    train: TrainLoop = TrainLoop()


class RetrieverConfig(StrictModel):
    embedding_dim: int = Field(32, ge=2, le=4096, description="Size of user and item embeddings.")
    hidden: int = Field(64, ge=1, le=8192, description="Hidden width of each tower.")
    loss: Literal["pointwise", "in_batch_softmax"] = Field(
        "pointwise",
        description="pointwise: click log-loss on every impression (the logged non-clicks are the sampled "
        "negatives); in_batch_softmax: clicked pairs against the batch's other items, logQ-corrected. "
        "On the demo world pointwise retrieves better (docs/benchmarks.md).",
    )
    train: TrainLoop = TrainLoop()


class ModelsConfig(StrictModel):
    """Which models to train for a world, and how."""

    split: Split = Split()
    ranker: RankerConfig = RankerConfig()
    retriever: RetrieverConfig = RetrieverConfig()
