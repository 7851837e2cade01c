"""Synthetic world: users, items, latent tastes, a click model and switchable drift."""

from __future__ import annotations

from rayml.world.config import WorldConfig
from rayml.world.generate import BuildSummary, build_world
from rayml.world.world import World, WorldNotFoundError

__all__ = ["BuildSummary", "World", "WorldConfig", "WorldNotFoundError", "build_world"]
