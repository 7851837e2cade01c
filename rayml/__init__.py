"""rayml: run ML models in production at scale on Ray.

Stages (one subpackage each, dependencies point down):
world → features → models → registry → batch → serving (→ rollout, monitoring, retraining).

Importing ``rayml`` is cheap and starts nothing: public names load their module on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "ConfigError": "rayml.config",
    "load_config": "rayml.config",
    "init_ray": "rayml.config",
    "World": "rayml.world",
    "WorldConfig": "rayml.world",
    "build_world": "rayml.world",
    "FeatureEncoder": "rayml.features",
    "ModelsConfig": "rayml.models",
    "train_and_publish": "rayml.models",
    "ModelRegistry": "rayml.registry",
    "RegistryError": "rayml.registry",
    "CandidateJobConfig": "rayml.batch",
    "generate_candidates": "rayml.batch",
    "RecommenderArgs": "rayml.serving",
    "RecommenderCore": "rayml.serving",
    "ndcg_at_k": "rayml.monitoring",
    "roc_auc": "rayml.monitoring",
}

__all__ = [*sorted(_EXPORTS), "__version__"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'rayml' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
