"""Serve entry point of the monitor (an application of its own in the serve config).

No ``from __future__ import annotations`` here: Ray inspects the real annotation class.
"""

from ray.serve import Application

from rayml.serving.monitor_app import MonitorArgs, build_monitor


def app_builder(args: MonitorArgs) -> Application:
    return build_monitor(args)
