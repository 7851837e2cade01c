"""Model registry: immutable versions with checksums, aliases and their history."""

from __future__ import annotations

from rayml.registry.store import (
    ArtifactCorruptError,
    ModelRegistry,
    ModelVersion,
    RegistryError,
    display_uri,
)

__all__ = ["ArtifactCorruptError", "ModelRegistry", "ModelVersion", "RegistryError", "display_uri"]
