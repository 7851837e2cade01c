"""Serve entry point of the canary controller (an application of its own in the serve config).

No ``from __future__ import annotations`` here: Ray inspects the real annotation class.
"""

from ray.serve import Application

from rayml.serving.rollout_app import ControllerArgs, build_controller


def app_builder(args: ControllerArgs) -> Application:
    return build_controller(args)
