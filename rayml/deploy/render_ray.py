"""The Ray cluster launcher YAML (AWS) from a :class:`~rayml.deploy.spec.DeploySpec`: ``ray up`` reads it.

AWS because its node config takes spot market options per node type (``InstanceMarketOptions``), and EFS gives
the shared storage the registry and the candidates need. Secrets come from AWS Secrets Manager at boot, into files
on the host that the container mounts; the YAML holds names only.
"""

from __future__ import annotations

import posixpath
import shlex
from typing import Any

from rayml.deploy.render_k8s import CLUSTER_PORTS, DASHBOARD_PORT, GCS_PORT
from rayml.deploy.spec import AwsNode, DeploySpec, Pod, SecretRef
from rayml.serving.ingress import ingress_env

HOST_SECRETS = "/etc/rayml/secrets"  # on the EC2 host; mounted read-only into the container
REDIS_ENV_FILE = f"{HOST_SECRETS}/redis.env"


def secret_id(spec: DeploySpec, ref: SecretRef) -> str:
    """The AWS Secrets Manager id that holds one Kubernetes-style secret key (SecretString = the value)."""
    return f"{spec.name}/{ref.secret}/{ref.key}"


def _node_config(node: AwsNode) -> dict[str, Any]:
    config: dict[str, Any] = {
        "InstanceType": node.instance_type,
        "BlockDeviceMappings": [{"DeviceName": "/dev/sda1", "Ebs": {"VolumeSize": node.disk_gib, "VolumeType": "gp3"}}],
    }
    if node.market == "spot":
        options: dict[str, Any] = {"SpotInstanceType": "one-time", "InstanceInterruptionBehavior": "terminate"}
        if node.max_spot_price is not None:
            options["MaxPrice"] = f"{node.max_spot_price:.4f}"
        config["InstanceMarketOptions"] = {"MarketType": "spot", "SpotOptions": options}
    return config


def _ray_resources(pod: Pod, spot: bool) -> dict[str, int]:
    resources = {"CPU": pod.cpu}
    if pod.gpus:
        resources["GPU"] = pod.gpus
    if spot:
        resources["spot"] = 1  # what batch actors pin to: actors.resources: {spot: 0.01}
    return resources


def _init_commands(spec: DeploySpec, tokens_file: str | None) -> list[str]:
    """Host set-up before Docker: mount EFS, fetch the secrets into root-only files."""
    get = "aws secretsmanager get-secret-value --region {region} --secret-id {id} --query SecretString --output text"
    redis = get.format(region=spec.region, id=secret_id(spec, spec.secrets.redis_password))
    tokens = get.format(region=spec.region, id=secret_id(spec, spec.secrets.api_tokens))
    mount = spec.storage.mount_path
    commands = [
        f"sudo mkdir -p {mount} {HOST_SECRETS}",
        f"mountpoint -q {mount} || sudo mount -t nfs4 -o nfsvers=4.1,rsize=1048576,wsize=1048576,hard,timeo=600 "
        f"{spec.storage.nfs_server}:/ {mount}",
        f"printf '{spec.redis.password_env}=%s\\n' \"$({redis})\" | sudo tee {REDIS_ENV_FILE} >/dev/null",
    ]
    if tokens_file:
        commands.append(f"{tokens} | sudo tee {HOST_SECRETS}/{posixpath.basename(tokens_file)} >/dev/null")
    commands.append(f"sudo chown -R 1000:100 {HOST_SECRETS} && sudo chmod 0750 {HOST_SECRETS}")
    return commands


def cluster_yaml(spec: DeploySpec, tokens_file: str | None) -> dict[str, Any]:
    """The ``ray up`` config: head, the worker node types (GPU, spot CPU, serving CPU), bounds, ingress env."""
    env = ingress_env(spec.ingress.type, spec.ingress.state_dir, CLUSTER_PORTS, threads=spec.ingress.threads)
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    env["PYTHONPATH"] = spec.workdir
    # --entrypoint '': the image's ENTRYPOINT is `rayml serve`; the launcher runs the container with `bash`.
    run_options = ["--entrypoint ''", "--ulimit nofile=65536:65536", f"--env-file {REDIS_ENV_FILE}",
                   f"-v {spec.storage.mount_path}:{spec.storage.mount_path}", f"-w {spec.workdir}"]
    if tokens_file:
        run_options.append(f"-v {HOST_SECRETS}:{posixpath.dirname(tokens_file)}:ro")
    run_options += [f"--env {k}={shlex.quote(v)}" for k, v in env.items()]
    node_types: dict[str, Any] = {
        "head": {"resources": {"CPU": 0}, "node_config": _node_config(spec.head.aws)},
    }
    for group in spec.workers:
        node: dict[str, Any] = {
            "min_workers": group.min_workers,
            "max_workers": group.max_workers,
            "resources": _ray_resources(group.pod, spot=group.role == "spot"),
            "labels": {"rayml.io/pool": group.role},
            "node_config": _node_config(group.aws),
        }
        if group.pod.gpus:
            node["docker"] = {"worker_image": spec.gpu_image, "worker_run_options": ["--gpus all"]}
        node_types[group.name] = node
    redis_host, redis_port = spec.redis.aws_address.rsplit(":", 1)
    password = f'"${spec.redis.password_env}"'
    return {
        "cluster_name": spec.name,
        "max_workers": spec.max_workers,
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": spec.idle_timeout_s / 60,
        "provider": {"type": "aws", "region": spec.region, "cache_stopped_nodes": False},
        "auth": {"ssh_user": "ubuntu"},
        "docker": {"image": spec.image, "container_name": "ray_container", "pull_before_run": True,
                   "run_options": run_options},
        "head_node_type": "head",
        "available_node_types": node_types,
        "initialization_commands": _init_commands(spec, tokens_file),
        "setup_commands": [],
        # GCS fault tolerance on the same external Redis as KubeRay's gcsFaultToleranceOptions.
        "head_start_ray_commands": [
            "ray stop",
            f"ulimit -n 65536; RAY_REDIS_ADDRESS={redis_host}:{redis_port} "
            f"RAY_external_storage_namespace={spec.name} ray start --head --port={GCS_PORT} --dashboard-host=0.0.0.0 "
            f"--dashboard-port={DASHBOARD_PORT} --redis-password={password} "
            "--autoscaling-config=~/ray_bootstrap_config.yaml --disable-usage-stats",
        ],
        "worker_start_ray_commands": [
            "ray stop",
            "ulimit -n 65536; ray start --address=$RAY_HEAD_IP:" + str(GCS_PORT) + " --disable-usage-stats",
        ],
    }
