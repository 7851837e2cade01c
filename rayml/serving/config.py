"""Arguments of the recommender application (the ``args:`` block of a Serve config)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from rayml.config import StrictModel


class RecommenderArgs(StrictModel):
    """Validated by Ray itself when ``serve run`` builds the app. Relative paths resolve against the cwd."""

    registry: str = Field(description="Registry root directory.")
    ranker_model: str = Field("ranker", description="Registry model name of the ranker.")
    ranker_alias: str = Field("production", description="Version or alias of the ranker to serve at start.")
    precision: Literal["auto", "fp32", "int8"] = Field(
        "auto", description="auto = the version's int8 artifact when it has one, else fp32."
    )
    candidates: str = Field(description="Output directory of the candidate job.")
    users: str = Field(description="User-feature Parquet (latest valid_from=… snapshot is used).")
    items: str = Field(description="Item-feature Parquet.")
    default_k: int = Field(10, ge=1, le=10_000, description="k when a request omits it.")
    max_k: int = Field(100, ge=1, le=10_000, description="Largest k a request may ask for.")

    @field_validator("registry", "candidates", "users", "items")
    @classmethod
    def _absolute(cls, value: str) -> str:
        return str(Path(value).expanduser().resolve())

    @model_validator(mode="after")
    def _k_order(self) -> RecommenderArgs:
        if self.default_k > self.max_k:
            raise ValueError(f"default_k={self.default_k} must be <= max_k={self.max_k}")
        return self
