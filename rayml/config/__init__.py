"""Config schemas, YAML loading and environment settings."""

from __future__ import annotations

from rayml.config.base import ConfigError, StrictModel, format_validation_error, load_config
from rayml.config.settings import Settings, init_ray, load_settings

__all__ = ["ConfigError", "Settings", "StrictModel", "format_validation_error", "init_ray", "load_config", "load_settings"]
