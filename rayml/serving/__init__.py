"""Online serving on Ray Serve: the hybrid recommender (batch candidates + real-time ranking).

Import :mod:`rayml.serving.app` for the Serve application; this package imports no Ray.
"""

from __future__ import annotations

from rayml.serving.config import RecommenderArgs
from rayml.serving.recommender import Recommendation, RecommenderCore, UnknownUserError

__all__ = ["Recommendation", "RecommenderArgs", "RecommenderCore", "UnknownUserError"]
