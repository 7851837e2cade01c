"""Batch jobs on Ray Data: candidate generation (scoring at scale arrives with the batch stage)."""

from __future__ import annotations

from rayml.batch.candidates import (
    CandidateScorer,
    CandidateSummary,
    generate_candidates,
    read_manifest,
)
from rayml.batch.config import ActorPool, CandidateJobConfig

__all__ = ["ActorPool", "CandidateJobConfig", "CandidateScorer", "CandidateSummary", "generate_candidates", "read_manifest"]
