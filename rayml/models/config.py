"""Schemas for model training configs (``configs/models/*.yaml``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from rayml.config import StrictModel


class TrainLoop(StrictModel):
    """Optimisation settings shared by every model."""

    epochs: int = Field(3, ge=1, le=1000)
    batch_size: int = Field(1024, ge=1, le=1_000_000)
    lr: float = Field(3e-3, gt=0, le=1)
    weight_decay: float = Field(1e-6, ge=0, le=1)
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto = cuda when available.")
    seed: int = Field(0, ge=0)
    holdout_users: float = Field(0.1, gt=0, lt=1, description="Share of users kept out for evaluation.")


class RankerConfig(StrictModel):
    cross_dim: int = Field(32, ge=1, le=4096)
    hidden: tuple[int, ...] = Field((128, 64), min_length=1, max_length=8)
    train: TrainLoop = TrainLoop()


class RetrieverConfig(StrictModel):
    embedding_dim: int = Field(32, ge=2, le=4096)
    hidden: int = Field(64, ge=1, le=8192)
    train: TrainLoop = TrainLoop()


class ModelsConfig(StrictModel):
    """Which models to train for a world, and how."""

    ranker: RankerConfig = RankerConfig()
    retriever: RetrieverConfig = RetrieverConfig()
