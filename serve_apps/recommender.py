"""Serve entry point: ``serve run serve_apps/recommender.yaml``.

Ray validates the YAML ``args:`` against :class:`RecommenderArgs` before building the app.
No ``from __future__ import annotations`` here: Ray inspects the real annotation class.
"""

from ray.serve import Application

from rayml.serving import RecommenderArgs
from rayml.serving.app import build_recommender


def app_builder(args: RecommenderArgs) -> Application:
    return build_recommender(args)
