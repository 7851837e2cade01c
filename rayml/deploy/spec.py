"""Schema of ``configs/deploy/*.yaml``: the one source of the Ray cluster YAML and the KubeRay manifests.

A deployment names its node groups (head, CPU serving workers, a GPU group, a spot CPU group), the image, the
shared storage, the HAProxy ingress, Redis (GCS fault tolerance and the online store), the Kubernetes Secrets
by *name* (never a value) and the batch jobs. The Serve config and the jobs' own configs are referenced by path
and validated through their own schemas when rendered (:mod:`rayml.deploy.checks`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field, field_validator, model_validator

from rayml.config import ConfigError, StrictModel, load_config

_DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"  # a Kubernetes object name (RFC 1123 label)
_ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
GroupRole = Literal["serve", "gpu", "spot"]


class Toleration(StrictModel):
    """A Kubernetes toleration: lets a pod onto nodes tainted for GPUs or spot capacity."""

    key: str = Field(min_length=1, max_length=253, description="Taint key, e.g. nvidia.com/gpu.")
    operator: Literal["Exists", "Equal"] = "Exists"
    value: str | None = Field(None, max_length=63, description="Taint value (operator Equal only).")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] = "NoSchedule"


class AwsNode(StrictModel):
    """The EC2 side of one node type of the Ray cluster launcher."""

    instance_type: str = Field(min_length=1, max_length=64, description="EC2 instance type, e.g. m6i.4xlarge.")
    market: Literal["on-demand", "spot"] = Field("on-demand", description="spot: EC2 spot capacity (reclaimable).")
    max_spot_price: float | None = Field(
        None, gt=0, le=1000, description="USD an hour; null: pay the spot price, capped at on-demand."
    )
    disk_gib: int = Field(100, ge=8, le=16_384, description="Root EBS volume.")

    @model_validator(mode="after")
    def _price_needs_spot(self) -> AwsNode:
        if self.max_spot_price is not None and self.market != "spot":
            raise ValueError(f"max_spot_price is set but market is {self.market!r}; it applies to spot only")
        return self


class Pod(StrictModel):
    """Requests and limits of a Ray pod's container; requests equal limits (Guaranteed QoS), as KubeRay advises."""

    cpu: int = Field(ge=1, le=512, description="CPUs (request = limit = Ray's num-cpus).")
    memory_gib: int = Field(ge=1, le=8192, description="Memory in GiB (request = limit).")
    gpus: int = Field(0, ge=0, le=16, description="nvidia.com/gpu; > 0 only in the gpu group.")
    node_selector: dict[str, str] = Field({}, description="Kubernetes node labels the pod must land on.")
    tolerations: list[Toleration] = Field([], max_length=16, description="Taints the pod tolerates.")


class HeadGroup(StrictModel):
    """The Ray head: GCS, dashboard, autoscaler, Serve controller. It runs no replicas and no job actors."""

    pod: Pod
    aws: AwsNode


class WorkerGroup(StrictModel):
    """One autoscaled worker group (a KubeRay workerGroupSpec, a cluster launcher node type)."""

    name: str = Field(pattern=_DNS_LABEL, max_length=40, description="Group and node type name.")
    role: GroupRole = Field(
        description="serve: CPU workers for the Serve replicas; gpu: training, distillation and the GPU ranker; "
        "spot: reclaimable CPU workers for batch jobs (advertise the custom resource `spot`)."
    )
    min_workers: int = Field(ge=0, le=10_000, description="Autoscaler lower bound.")
    max_workers: int = Field(ge=1, le=10_000, description="Autoscaler upper bound.")
    pod: Pod
    aws: AwsNode

    @model_validator(mode="after")
    def _consistent(self) -> WorkerGroup:
        if self.max_workers < self.min_workers:
            raise ValueError(f"max_workers={self.max_workers} must be >= min_workers={self.min_workers}")
        if (self.role == "gpu") != (self.pod.gpus > 0):
            raise ValueError(f"role {self.role!r} with pod.gpus={self.pod.gpus}: GPUs belong to the gpu group only")
        if (self.role == "spot") != (self.aws.market == "spot"):
            raise ValueError(f"role {self.role!r} with aws.market={self.aws.market!r}: spot nodes are the spot group")
        return self


class SecretRef(StrictModel):
    """A key of a Kubernetes Secret, created out of band (``kubectl create secret``): never a value."""

    secret: str = Field(pattern=_DNS_LABEL, max_length=253, description="Secret name.")
    key: str = Field(pattern=r"^[-._a-zA-Z0-9]+$", max_length=253, description="Key inside the Secret.")


class Secrets(StrictModel):
    """Where each secret comes from. A value written here is refused: manifests and images never hold one."""

    api_tokens: SecretRef = Field(
        description="The tokens file (role -> tokens) mounted where the Serve config's auth.tokens_file points."
    )
    redis_password: SecretRef = Field(description="Password of the Redis that holds GCS state and the online store.")


class Redis(StrictModel):
    """The Redis outside the Ray cluster: GCS fault tolerance and the online store (made HA by its own chart)."""

    address: str = Field(pattern=r"^[a-z0-9.-]+:[0-9]{1,5}$", description="host:port of the primary (a Service).")
    aws_address: str = Field(
        pattern=r"^[a-z0-9.-]+:[0-9]{1,5}$", description="host:port for the cluster launcher (ElastiCache primary)."
    )
    password_env: str = Field(
        "RAYML_REDIS_PASSWORD", pattern=_ENV_NAME, description="Env var the password is given in, from the Secret."
    )


class Storage(StrictModel):
    """Shared storage every node mounts (registry, candidates, logs): a ReadWriteMany claim (EFS, Filestore)."""

    claim: str = Field(pattern=_DNS_LABEL, max_length=253, description="PersistentVolumeClaim name.")
    mount_path: str = Field(pattern=r"^/", description="Where it is mounted; the Serve config's paths live here.")
    nfs_server: str = Field(
        pattern=r"^[a-z0-9.-]+$", description="NFS/EFS server the cluster launcher's nodes mount at mount_path."
    )


class Ingress(StrictModel):
    """Serve's HTTP ingress on every node (:mod:`rayml.serving.ingress`)."""

    type: Literal["haproxy", "proxy"] = "haproxy"
    state_dir: str = Field("/home/ray/.rayml/haproxy", pattern=r"^/", description="HAProxy's config and sockets.")
    threads: int = Field(4, ge=1, le=64, description="HAProxy threads.")


class Job(StrictModel):
    """A batch job, as a RayJob and as a ``ray job submit`` line for the cluster launcher."""

    name: str = Field(pattern=_DNS_LABEL, max_length=40, description="RayJob name.")
    kind: Literal["score", "candidates", "candidates_store", "distill"] = Field(
        description="What it runs: score = batch_jobs/score_entities.py, candidates = batch_jobs/generate_candidates.py, "
        "candidates_store = batch_jobs/materialize_candidates.py, distill = batch_jobs/distill.py; its config is "
        "validated by that script's schema."
    )
    config: str = Field(description="The job's config, relative to the repository (and the image's workdir).")
    backoff_limit: int = Field(2, ge=0, le=10, description="RayJob retries (a new cluster each time).")
    ttl_seconds_after_finished: int = Field(600, ge=0, le=604_800, description="Cluster kept this long for logs.")
    active_deadline_seconds: int = Field(ge=60, le=604_800, description="The job is failed past this.")
    schedule_note: str = Field(
        "", max_length=200, description="When it runs, for people (the RayJob's rayml.io/schedule annotation)."
    )


class DeploySpec(StrictModel):
    """A whole deployment of rayml: ``configs/deploy/production.yaml``."""

    name: str = Field(pattern=_DNS_LABEL, max_length=40, description="RayService and cluster name.")
    namespace: str = Field(pattern=_DNS_LABEL, max_length=63)
    ray_version: str = Field(pattern=r"^[0-9]+\.[0-9]+\.[0-9]+$", description="Ray in the image (KubeRay rayVersion).")
    image: str = Field(pattern=r"^\S+$", description="CPU image, with a tag (never latest) or a digest.")
    gpu_image: str = Field(pattern=r"^\S+$", description="GPU variant of the same build.")
    workdir: str = Field("/opt/rayml", pattern=r"^/", description="The image's WORKDIR: serve_apps/, configs/, batch_jobs/.")
    serve_config: str = Field(description="The Serve config (serveConfigV2), relative to the repository.")
    http_port: int = Field(8000, ge=1, le=65_535, description="Serve's HTTP port: the only one exposed.")
    region: str = Field(pattern=r"^[a-z]{2}-[a-z]+-[0-9]$", description="AWS region of the launcher cluster.")
    max_workers: int = Field(ge=1, le=10_000, description="Cluster-wide autoscaler bound.")
    idle_timeout_s: int = Field(
        300, ge=60, le=86_400, description="The autoscaler removes a worker node idle this long (every group)."
    )
    ingress: Ingress = Ingress()
    storage: Storage
    redis: Redis
    secrets: Secrets
    head: HeadGroup
    workers: list[WorkerGroup] = Field(min_length=1, max_length=16)
    jobs: list[Job] = Field([], max_length=32)
    serve_min_available: int = Field(1, ge=0, le=10_000, description="PodDisruptionBudget of the serve group.")
    clients_namespace_label: dict[str, str] = Field(
        description="Labels of the namespaces allowed to reach the HTTP port (NetworkPolicy)."
    )
    metrics_namespace_label: dict[str, str] = Field(
        description="Labels of the namespace whose Prometheus scrapes Ray's metrics port (NetworkPolicy)."
    )

    @field_validator("image", "gpu_image")
    @classmethod
    def _pinned(cls, value: str) -> str:
        name = value.rsplit("/", 1)[-1]
        tag = name.split(":", 1)[1] if ":" in name and "@" not in name else None
        if "@sha256:" not in value and tag in (None, "", "latest"):
            raise ValueError(f"{value!r} is not pinned; give a version tag (e.g. rayml:0.1.0-cpu) or a digest, "
                             "never latest")
        return value

    @model_validator(mode="after")
    def _unique(self) -> DeploySpec:
        for what, names in (("worker group", [w.name for w in self.workers]), ("job", [j.name for j in self.jobs])):
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:
                raise ValueError(f"{what} names must be unique; repeated: {', '.join(dupes)}")
        if not any(w.role == "serve" for w in self.workers):
            raise ValueError("no worker group has role 'serve': the Serve replicas would have nowhere to run")
        return self

    def group(self, role: GroupRole) -> WorkerGroup | None:
        """The first worker group of ``role``, or None."""
        return next((w for w in self.workers if w.role == role), None)


def load_deploy_spec(path: str | Path) -> DeploySpec:
    """Load and validate a deploy spec; :class:`~rayml.config.ConfigError` names the file and key.

    A secret written in plain text is refused before validation, so its value is never echoed in the error.
    """
    path = Path(path)
    if path.is_file():
        raw = yaml.safe_load(path.read_text())
        secrets = raw.get("secrets") if isinstance(raw, dict) else None
        for name, value in (secrets.items() if isinstance(secrets, dict) else ()):
            if not isinstance(value, dict):
                raise ConfigError(
                    f"{path}: key 'secrets.{name}': a secret written in plain text (value not shown); give "
                    "{secret: <Kubernetes Secret name>, key: <key>} and create the Secret out of band "
                    "(kubectl create secret generic ...)"
                )
    return load_config(path, DeploySpec)
