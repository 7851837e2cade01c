"""What ``rayml deploy render`` refuses before it writes anything: configs that cannot work on the cluster.

- A Serve config that Ray's own ``ServeDeploySchema`` rejects (or whose recommender args do not validate).
- A GPU deployment (``num_gpus > 0`` in the Serve config) or a GPU job with no worker group of role ``gpu``.
- A job pinned to spot capacity (custom resource ``spot``) with no worker group of role ``spot``; a Serve
  deployment pinned to spot at all (serving never runs on reclaimable nodes).
- Candidates read from Redis (``candidates_store: online``) that no ``candidates_store`` job writes.
- A secret written in plain text: in the deploy spec (:class:`~rayml.deploy.spec.Secrets` refuses it) or as an
  environment variable with a secret-like name in the Serve config's ``runtime_env``.

Every error names the file and the key, and says what is allowed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from rayml.batch.candidate_store import CandidateStoreJobConfig
from rayml.batch.config import CandidateJobConfig, ScoreJobConfig
from rayml.config import ConfigError, format_validation_error, load_config
from rayml.deploy.spec import DeploySpec, GroupRole, Job
from rayml.models.distill_config import DistillConfig
from rayml.serving.launcher import CONTROLLER_IMPORT_PATH, RECOMMENDER_IMPORT_PATH

JOB_SCHEMAS: dict[str, type[BaseModel]] = {
    "score": ScoreJobConfig,
    "candidates": CandidateJobConfig,
    "candidates_store": CandidateStoreJobConfig,
    "distill": DistillConfig,
}
JOB_ENTRYPOINTS = {  # the thin script each kind of job runs (batch_jobs/*.py)
    "score": "batch_jobs/score_entities.py",
    "candidates": "batch_jobs/generate_candidates.py",
    "candidates_store": "batch_jobs/materialize_candidates.py",
    "distill": "batch_jobs/distill.py",
}
_SECRET_NAME = re.compile(r"(TOKEN|PASSWORD|PASSWD|SECRET|API_KEY|PRIVATE_KEY|CREDENTIAL)", re.IGNORECASE)


@dataclass(frozen=True)
class Needs:
    """Which worker groups a workload needs, with the key that asks for each (for the error message)."""

    gpu: str | None = None
    spot: str | None = None

    def asks(self) -> list[tuple[GroupRole, str]]:
        """(role, the key that asks for it) for each group needed."""
        pairs: list[tuple[GroupRole, str | None]] = [("gpu", self.gpu), ("spot", self.spot)]
        return [(role, key) for role, key in pairs if key is not None]

    def roles(self) -> list[GroupRole]:
        return [role for role, _ in self.asks()]


def load_serve_config(spec: DeploySpec, spec_path: Path, repo: Path) -> tuple[Path, str, dict[str, Any]]:
    """The Serve config's path, text and parsed mapping, after Ray's ``ServeDeploySchema`` accepted it.

    Raises:
        ConfigError: the file is missing, or Ray's schema or the recommender's args reject it (file and key named).
    """
    from ray.serve.schema import ServeDeploySchema

    path = repo / spec.serve_config
    if not path.is_file():
        raise ConfigError(f"{spec_path}: key 'serve_config': {spec.serve_config} is not a file")
    text = path.read_text()
    try:
        raw = yaml.safe_load(text) or {}
        schema = ServeDeploySchema.model_validate(raw)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{spec.serve_config}: not valid YAML: {exc}") from None
    except ValidationError as exc:
        raise ConfigError(format_validation_error(spec.serve_config, ServeDeploySchema, exc)) from None
    _refuse_unknown_keys(raw, spec.serve_config)
    port = (raw.get("http_options") or {}).get("port", 8000)
    if port != spec.http_port:
        raise ConfigError(f"{spec.serve_config}: key 'http_options.port': Serve listens on {port}, but {spec_path} "
                          f"(key 'http_port') exposes {spec.http_port}; make them equal")
    for i, app in enumerate(schema.applications):
        args_model = _app_args().get(app.import_path)
        if args_model is None:
            raise ConfigError(f"{spec.serve_config}: key 'applications.{i}.import_path': {app.import_path!r} is not "
                              f"one of rayml's apps: {', '.join(sorted(_app_args()))}")
        try:
            args_model.model_validate(app.args)
        except ValidationError as exc:
            where = f"{spec.serve_config}: applications.{i}.args"
            raise ConfigError(format_validation_error(where, args_model, exc)) from None
    _refuse_plain_text_env(raw, spec.serve_config)
    return path, text, raw


def _app_args() -> dict[str, type[BaseModel]]:
    """The args model of each builder under serve_apps/ (Ray validates ``args`` against it at deploy time)."""
    from rayml.serving.config import RecommenderArgs
    from rayml.serving.monitor_app import MonitorArgs
    from rayml.serving.rollout_app import ControllerArgs

    return {RECOMMENDER_IMPORT_PATH: RecommenderArgs,
            CONTROLLER_IMPORT_PATH: ControllerArgs,
            "serve_apps.monitor:app_builder": MonitorArgs}


def _refuse_unknown_keys(raw: dict[str, Any], source: str) -> None:
    """Ray's Serve schemas ignore unknown keys, so a misspelt option (``max_ongoing_request``) would silently
    not apply; refused here against the same schemas' own field names."""
    from ray.serve.schema import (
        DeploymentSchema,
        RayActorOptionsSchema,
        ServeApplicationSchema,
        ServeDeploySchema,
    )

    def check(node: Any, model: type[BaseModel], key: str) -> None:
        extra = sorted(set(node) - set(model.model_fields)) if isinstance(node, dict) else []
        if extra:
            where = f"{key}.{extra[0]}" if key else extra[0]
            raise ConfigError(f"{source}: unknown key '{where}' (Ray's {model.__name__} would ignore it); "
                              f"allowed keys: {', '.join(sorted(model.model_fields))}")

    check(raw, ServeDeploySchema, "")
    for i, app in enumerate(raw.get("applications") or []):
        check(app, ServeApplicationSchema, f"applications.{i}")
        for j, dep in enumerate(app.get("deployments") or []):
            check(dep, DeploymentSchema, f"applications.{i}.deployments.{j}")
            check(dep.get("ray_actor_options"), RayActorOptionsSchema,
                  f"applications.{i}.deployments.{j}.ray_actor_options")


def _refuse_plain_text_env(raw: dict[str, Any], source: str) -> None:
    """A token or password set as a literal env var in a ``runtime_env`` would sit in the manifest."""
    places: list[tuple[str, Any]] = [("runtime_env", raw.get("runtime_env"))]
    for i, app in enumerate(raw.get("applications") or []):
        places.append((f"applications.{i}.runtime_env", app.get("runtime_env")))
        for j, dep in enumerate(app.get("deployments") or []):
            places.append((f"applications.{i}.deployments.{j}.ray_actor_options.runtime_env",
                           (dep.get("ray_actor_options") or {}).get("runtime_env")))
    for key, runtime_env in places:
        for name, value in ((runtime_env or {}).get("env_vars") or {}).items():
            if _SECRET_NAME.search(name) and value:
                raise ConfigError(
                    f"{source}: key '{key}.env_vars.{name}': a secret written in plain text; serve configs end up "
                    "in manifests and logs: mount it from a Kubernetes Secret (configs/deploy: secrets) instead"
                )


def serve_needs(raw: dict[str, Any], source: str) -> Needs:
    """GPU and spot needs of the Serve config's deployments."""
    gpu = spot = None
    for i, app in enumerate(raw.get("applications") or []):
        for j, dep in enumerate(app.get("deployments") or []):
            options = dep.get("ray_actor_options") or {}
            key = f"{source}: key 'applications.{i}.deployments.{j}.ray_actor_options"
            if gpu is None and float(options.get("num_gpus") or 0) > 0:
                gpu = f"{key}.num_gpus' (deployment {dep.get('name')!r} asks for {options['num_gpus']} GPU)"
            if spot is None and float((options.get("resources") or {}).get("spot") or 0) > 0:
                spot = f"{key}.resources.spot' (deployment {dep.get('name')!r})"
    return Needs(gpu=gpu, spot=spot)


def load_job_config(job: Job, spec_path: Path, repo: Path, index: int) -> BaseModel:
    """The job's own config through its schema (``configs/batch``, ``configs/distill`` schemas)."""
    path = repo / job.config
    if not path.is_file():
        raise ConfigError(f"{spec_path}: key 'jobs.{index}.config': {job.config} is not a file")
    return load_config(path, JOB_SCHEMAS[job.kind])


def job_needs(job: Job, config: BaseModel) -> Needs:
    """GPU and spot needs of one job's config, naming the config file and key that asks for each."""
    pools: list[tuple[str, Any]] = []
    gpu = None
    if isinstance(config, ScoreJobConfig | CandidateJobConfig):
        pools.append(("actors", config.actors))
    elif isinstance(config, DistillConfig):
        pools.append(("soft_labels.actors", config.soft_labels.actors))
        per_worker = config.scaling.resources_per_worker
        if config.scaling.use_gpu is True or per_worker.get("GPU", 0) > 0:
            gpu = f"{job.config}: key 'scaling.use_gpu' / 'scaling.resources_per_worker.GPU'"
        if per_worker.get("spot", 0) > 0:
            return Needs(gpu=gpu, spot=f"{job.config}: key 'scaling.resources_per_worker.spot'")
    spot = None
    for key, pool in pools:
        if gpu is None and pool.num_gpus > 0:
            gpu = f"{job.config}: key '{key}.num_gpus'"
        if spot is None and pool.resources.get("spot", 0) > 0:
            spot = f"{job.config}: key '{key}.resources.spot'"
    return Needs(gpu=gpu, spot=spot)


def refuse_spot_serving(needs: Needs) -> None:
    """Serving is never placed on reclaimable nodes: the RayService has no spot group, by design."""
    if needs.spot is not None:
        raise ConfigError(f"{needs.spot}: a Serve deployment pinned to spot capacity; spot nodes are reclaimed "
                          "without notice, so the serving cluster has no spot group: run it on the serve or gpu group")


def require_candidate_view(serve_raw: dict[str, Any], source: str, jobs: list[tuple[Job, BaseModel]],
                           spec_path: Path) -> None:
    """Replicas with ``candidates_store: online`` read a view that only a ``candidates_store`` job writes."""
    written = {config.view for _, config in jobs if isinstance(config, CandidateStoreJobConfig)}
    for i, app in enumerate(serve_raw.get("applications") or []):
        args = app.get("args") or {}
        if app.get("import_path") == RECOMMENDER_IMPORT_PATH and args.get("candidates_store") == "online":
            view = args.get("candidates_view", "candidates")
            if view not in written:
                raise ConfigError(
                    f"{source}: key 'applications.{i}.args.candidates_view': replicas read the candidate view "
                    f"{view!r} from Redis, but no job in {spec_path} (key 'jobs', kind candidates_store) writes it; "
                    f"written: {', '.join(sorted(written)) or 'none'}"
                )


def require_groups(spec: DeploySpec, spec_path: Path, needs: Needs, what: str) -> None:
    """Refuse a GPU or spot workload the spec has no worker group for."""
    for role, key in needs.asks():
        if spec.group(role) is None:
            hint = ("GPU replicas and GPU jobs need nodes with nvidia.com/gpu" if role == "gpu"
                    else "a job pinned to the custom resource `spot` would stay pending forever")
            raise ConfigError(f"{key}: {what} needs a {role} group, but {spec_path} has no worker group with "
                              f"role '{role}' (key 'workers'); {hint}")
