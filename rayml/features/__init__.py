"""Features: one encoding shared by training, batch and serving, and snapshot lookup."""

from __future__ import annotations

from rayml.features.encoding import FeatureEncoder
from rayml.features.snapshots import resolve_snapshot

__all__ = ["FeatureEncoder", "resolve_snapshot"]
