"""Settings read from the environment, in one typed place, and the one way rayml starts Ray."""

from __future__ import annotations

import os

from pydantic import Field, ValidationError

from rayml.config.base import ConfigError, StrictModel

ENV_PREFIX = "RAYML_"


class Settings(StrictModel):
    """Environment settings (``RAYML_<FIELD>``, upper case)."""

    object_store_mb: int = Field(500, ge=75, le=1_000_000, description="Object store of a Ray started locally.")
    num_cpus: int | None = Field(None, ge=1, le=100_000, description="CPUs of a Ray started locally (default: all).")
    dashboard: bool = Field(
        True, description="Start the Ray dashboard with a local Ray (needed by Ray Train's state checks)."
    )


def load_settings(environ: dict[str, str] | None = None) -> Settings:
    """Read ``RAYML_*`` variables; errors name the variable."""
    env = os.environ if environ is None else environ
    raw = {name: env[ENV_PREFIX + name.upper()] for name in Settings.model_fields if ENV_PREFIX + name.upper() in env}
    try:
        return Settings.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{ENV_PREFIX}{str(e['loc'][0]).upper()}: {e['msg']} (got {e.get('input')!r})" for e in exc.errors())
        raise ConfigError(f"environment: {problems}") from None


def init_ray() -> None:
    """Connect to the cluster in ``RAY_ADDRESS`` (as under ``ray job submit``), else start a small local Ray.

    ``address="local"`` matters: a bare ``ray.init()`` would attach to any ``ray start --head`` cluster on the
    machine and then refuse the resource arguments.
    """
    import ray

    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init()
        return
    settings = load_settings()
    ray.init(
        address="local",
        num_cpus=settings.num_cpus,
        object_store_memory=settings.object_store_mb * 1024 * 1024,
        include_dashboard=settings.dashboard,
    )
