"""Bodies of the recommender's HTTP API: strict request models (``"5"`` is not an int) and response models."""

# No `from __future__ import annotations`: FastAPI must see the real classes.

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

MAX_ID = 2**63 - 1  # ids are int64 everywhere


class RecommendRequest(BaseModel):
    """Body of ``POST /recommend``. Strict: ``"5"`` is not an int, unknown fields are refused."""

    model_config = ConfigDict(extra="forbid", strict=True)

    user_id: int = Field(ge=0, le=MAX_ID, description="User to recommend for.")
    k: int | None = Field(None, ge=1, description="Number of items; default and maximum come from the app config.")
    explain: bool = Field(False, description="Also return the raw online features behind the answer.")
    model_alias: str | None = Field(None, max_length=64, description="Ranker alias (e.g. canary); default: the app's.")


class RecommendResponse(BaseModel):
    user_id: int
    items: list[int]
    scores: list[float]
    model_version: str
    feature_missing: int = Field(description="Entities of this request the online store did not know (defaults used).")
    degraded: bool = Field(description="True when the online store was down: batch candidates in retrieval order.")
    features: dict[str, dict[str, list]] | None = None
    candidates: str = Field(description="batch: precomputed candidates; realtime: two-tower retrieval at request time.")
    request_id: str = Field(description="Send it back with the clicks (POST /events) to attribute them to this answer.")
    arm: str = Field(description="production or canary: the rollout arm that served the answer.")
    experiment_arm: str | None = Field(None, description="The A/B experiment's arm of the user; null: none running.")


class Event(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    user_id: int = Field(ge=0, le=MAX_ID)
    item_id: int = Field(ge=0, le=MAX_ID)
    clicked: bool
    ts: float | None = Field(None, ge=0, allow_inf_nan=False, description="Event time, epoch seconds; default: now.")
    request_id: str | None = Field(
        None, min_length=1, max_length=128, description="The answer (POST /recommend request_id) the item was in.")


class EventsRequest(BaseModel):
    """Body of ``POST /events``: impressions (clicked or not) that feed the real-time windows."""

    model_config = ConfigDict(extra="forbid", strict=True)

    events: list[Event] = Field(min_length=1, max_length=10_000)


class EventsResponse(BaseModel):
    accepted: int


class ScoreRequest(BaseModel):
    """Body of ``POST /score``: score these items for this user (any items, not only its candidates)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    user_id: int = Field(ge=0, le=MAX_ID)
    item_ids: list[Annotated[int, Field(ge=0, le=MAX_ID)]] = Field(min_length=1, max_length=10_000)


class ScoreResponse(BaseModel):
    user_id: int
    items: list[int]
    scores: list[float]
    model_version: str
    feature_missing: int
