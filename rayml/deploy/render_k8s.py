"""KubeRay v1.7 manifests from a :class:`~rayml.deploy.spec.DeploySpec`: RayService, RayJobs, PDB, NetworkPolicy.

Every object is a plain mapping, dumped by :mod:`rayml.deploy.render`. Field choices are explained in
``docs/deploy.md`` ("What each manifest field is for").
"""

from __future__ import annotations

import posixpath
from typing import Any

from rayml.deploy.checks import JOB_ENTRYPOINTS, Needs
from rayml.deploy.spec import DeploySpec, HeadGroup, Job, Pod, WorkerGroup
from rayml.serving.ingress import IngressPorts, ingress_env
from rayml.serving.launcher import SHUTDOWN_BOUND_S

# Fixed in a real cluster (one pod per node): Ray's own defaults, so Ray's docs apply unchanged.
CLUSTER_PORTS = IngressPorts(haproxy_stats=8404, haproxy_metrics=9101, fallback_http=8500, fallback_grpc=9500,
                             direct_http_min=30000, direct_grpc_min=40000, direct_span=64)
DASHBOARD_PORT = 8265
GCS_PORT = 6379
DASHBOARD_AGENT_PORT = 52365
METRICS_PORT = 8080  # Ray's metrics export port, KubeRay's default (cluster/prometheus rules read these series)
NODE_HEALTH_PATH = "/api/healthz"  # Ray >= 2.53's node health on the agent port: KubeRay v1.7's default probe
READINESS_PATH = "/v2/health/live"  # rayml.serving.health_routes; why not /readyz: PodBuilder.probes
GRACE_MARGIN_S = 10  # on top of the edge's SIGTERM bound, so the kubelet never SIGKILLs a draining node
UPGRADE_TYPES = ("NewCluster", "NewClusterWithIncrementalUpgrade", "None")  # the operator's accepted values
UPGRADE_TYPE = "NewCluster"  # why not NewClusterWithIncrementalUpgrade: docs/deploy.md, "Upgrades"
OPERATOR_NAMESPACE = "kuberay-system"
SUBMISSION_MODE = "SidecarMode"  # the submitter runs beside the head: no extra pod, dashboard on localhost
LABEL_APP = "app.kubernetes.io/name"
LABEL_GROUP = "rayml.io/group"


def grace_period_s(serve_raw: dict[str, Any]) -> int:
    """The pods' terminationGracePeriodSeconds: the edge's SIGTERM bound (or a longer replica shutdown) + 10 s."""
    longest = max((float(d.get("graceful_shutdown_timeout_s") or 0) + float(d.get("graceful_shutdown_wait_loop_s") or 0)
                   for app in serve_raw.get("applications") or [] for d in app.get("deployments") or []), default=0)
    return int(max(SHUTDOWN_BOUND_S, longest)) + GRACE_MARGIN_S


def _labels(spec: DeploySpec, group: str) -> dict[str, str]:
    return {LABEL_APP: spec.name, LABEL_GROUP: group}


def _resources(pod: Pod) -> dict[str, Any]:
    amounts: dict[str, Any] = {"cpu": str(pod.cpu), "memory": f"{pod.memory_gib}Gi"}
    if pod.gpus:
        amounts["nvidia.com/gpu"] = str(pod.gpus)
    return {"requests": dict(amounts), "limits": dict(amounts)}  # Guaranteed QoS: requests = limits


def _secret_env(spec: DeploySpec, tokens_env: str | None) -> list[dict[str, Any]]:
    env = [{"name": spec.redis.password_env, "valueFrom": {"secretKeyRef": {
        "name": spec.secrets.redis_password.secret, "key": spec.secrets.redis_password.key}}}]
    if tokens_env:
        env.append({"name": tokens_env, "valueFrom": {"secretKeyRef": {
            "name": spec.secrets.api_tokens.secret, "key": spec.secrets.api_tokens.key}}})
    return env


def _volumes(spec: DeploySpec, tokens_file: str | None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    volumes: list[dict[str, Any]] = [{"name": "shared", "persistentVolumeClaim": {"claimName": spec.storage.claim}}]
    mounts: list[dict[str, Any]] = [{"name": "shared", "mountPath": spec.storage.mount_path}]
    if tokens_file:
        ref = spec.secrets.api_tokens
        volumes.append({"name": "api-tokens", "secret": {"secretName": ref.secret, "defaultMode": 0o440, "items": [
            {"key": ref.key, "path": posixpath.basename(tokens_file)}]}})
        # A directory mount (no subPath): Kubernetes swaps the file on rotation and the TokenStore re-reads it.
        mounts.append({"name": "api-tokens", "mountPath": posixpath.dirname(tokens_file), "readOnly": True})
    return volumes, mounts


class PodBuilder:
    """Pod templates of one deployment's Ray nodes; ``serving`` adds the ingress env, probes and secrets."""

    def __init__(self, spec: DeploySpec, grace_s: int, tokens_file: str | None, tokens_env: str | None) -> None:
        self.spec, self.grace_s, self.tokens_file, self.tokens_env = spec, grace_s, tokens_file, tokens_env

    def env(self, serving: bool) -> list[dict[str, Any]]:
        env: list[dict[str, Any]] = []
        if serving:
            values = ingress_env(self.spec.ingress.type, self.spec.ingress.state_dir, CLUSTER_PORTS,
                                 threads=self.spec.ingress.threads)
            env += [{"name": k, "value": v} for k, v in values.items()]
        env.append({"name": "PYTHONPATH", "value": self.spec.workdir})  # serve_apps.* and batch_jobs import from here
        env.append({"name": "RAY_USAGE_STATS_ENABLED", "value": "0"})
        return env + _secret_env(self.spec, self.tokens_env if serving else None)

    def probes(self, serving: bool, head: bool) -> dict[str, Any]:
        # Liveness is the Ray node's own health (the GCS on the head, the raylet on a worker): restarting a pod for
        # an app fault would kill every replica on it, and Serve already replaces a failing replica (check_health).
        # Readiness of a serving worker is OIP live (/v2/health/live: 503 while no replica answers or one is
        # failing), not /readyz: /readyz is 503 while the *shared* Redis is down, and probing it would pull every
        # pod out of the Service at once, turning degraded answers into refused connections (docs/deploy.md).
        # The head takes no client traffic (excludeHeadPodFromServeSvc).
        timing = {"initialDelaySeconds": 30, "periodSeconds": 10, "timeoutSeconds": 5, "failureThreshold": 6}
        node = {"httpGet": {"path": NODE_HEALTH_PATH, "port": DASHBOARD_AGENT_PORT}, **timing}
        if head:
            return {"livenessProbe": node, "readinessProbe": dict(node)}
        probes: dict[str, Any] = {"livenessProbe": node}
        if serving:
            probes["readinessProbe"] = {"httpGet": {"path": READINESS_PATH, "port": self.spec.http_port},
                                        "initialDelaySeconds": 10, "periodSeconds": 5, "timeoutSeconds": 3,
                                        "failureThreshold": 3, "successThreshold": 1}
        return probes

    def template(self, name: str, pod: Pod, image: str, serving: bool, head: bool) -> dict[str, Any]:
        tokens_file = self.tokens_file if serving else None
        volumes, mounts = _volumes(self.spec, tokens_file)
        ports = [{"name": "serve", "containerPort": self.spec.http_port}] if serving and not head else []
        if head:
            ports = [{"name": "gcs-server", "containerPort": GCS_PORT},
                     {"name": "dashboard", "containerPort": DASHBOARD_PORT}, *ports]
        container: dict[str, Any] = {
            "name": "ray-head" if head else "ray-worker",
            "image": image,
            "imagePullPolicy": "IfNotPresent",
            "workingDir": self.spec.workdir,
            "ports": ports,
            "env": self.env(serving),
            "resources": _resources(pod),
            "volumeMounts": mounts,
            **self.probes(serving, head),
            "securityContext": {"allowPrivilegeEscalation": False, "runAsNonRoot": True, "runAsUser": 1000},
        }
        if not container["ports"]:
            del container["ports"]
        spec: dict[str, Any] = {
            "terminationGracePeriodSeconds": self.grace_s,
            "securityContext": {"runAsUser": 1000, "runAsGroup": 100, "fsGroup": 100},
            "containers": [container],
            "volumes": volumes,
        }
        if pod.node_selector:
            spec["nodeSelector"] = dict(pod.node_selector)
        if pod.tolerations:
            spec["tolerations"] = [t.model_dump(exclude_none=True) for t in pod.tolerations]
        if serving and not head:
            # Spread Serve workers over nodes: one node lost takes few replicas with it (the PDB caps voluntary loss).
            spec["affinity"] = {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{
                "weight": 100, "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname", "labelSelector": {
                    "matchLabels": _labels(self.spec, name)}}}]}}
        return {"metadata": {"labels": _labels(self.spec, name)}, "spec": spec}

    def head(self, head: HeadGroup, serving: bool) -> dict[str, Any]:
        return {
            # num-cpus 0: the head runs the GCS, dashboard, autoscaler and Serve controller, never replicas or actors.
            "rayStartParams": {"num-cpus": "0", "dashboard-host": "0.0.0.0"},
            "template": self.template("head", head.pod, self.spec.image, serving=serving, head=True),
        }

    def worker(self, group: WorkerGroup) -> dict[str, Any]:
        serving = group.role in ("serve", "gpu")  # the GPU group hosts the Ranker replicas
        out: dict[str, Any] = {
            "groupName": group.name,
            "replicas": group.min_workers,
            "minReplicas": group.min_workers,
            "maxReplicas": group.max_workers,
            "rayStartParams": {},
            "template": self.template(group.name, group.pod, self.spec.gpu_image if group.pod.gpus else self.spec.image,
                                      serving=serving, head=False),
        }
        if group.role == "spot":
            out["resources"] = {"spot": "1"}  # what batch actors pin to: actors.resources: {spot: 0.01}
        out["labels"] = {"rayml.io/pool": group.role}  # Ray node labels, for label_selector in Serve configs
        return out


def _autoscaler(spec: DeploySpec) -> dict[str, Any]:
    amounts = {"cpu": "500m", "memory": "512Mi"}
    return {"upscalingMode": "Default", "idleTimeoutSeconds": spec.idle_timeout_s,
            "resources": {"requests": dict(amounts), "limits": dict(amounts)}}


def rayservice(spec: DeploySpec, builder: PodBuilder, serve_text: str) -> dict[str, Any]:
    """The RayService: the serving cluster, its Serve config, GCS fault tolerance on Redis, upgrades."""
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": {"name": spec.name, "namespace": spec.namespace, "labels": {LABEL_APP: spec.name}},
        "spec": {
            "upgradeStrategy": {"type": UPGRADE_TYPE},
            "excludeHeadPodFromServeSvc": True,
            "serveService": {
                "metadata": {"name": f"{spec.name}-serve", "labels": {LABEL_APP: spec.name}},
                "spec": {"type": "ClusterIP", "ports": [{"name": "serve", "port": spec.http_port,
                                                         "targetPort": spec.http_port, "protocol": "TCP"}]},
            },
            "serveConfigV2": serve_text,
            "rayClusterConfig": {
                "rayVersion": spec.ray_version,
                "enableInTreeAutoscaling": True,
                "autoscalerOptions": _autoscaler(spec),
                "gcsFaultToleranceOptions": {
                    "redisAddress": spec.redis.address,
                    "redisPassword": {"valueFrom": {"secretKeyRef": {
                        "name": spec.secrets.redis_password.secret, "key": spec.secrets.redis_password.key}}},
                },
                "headGroupSpec": builder.head(spec.head, serving=True),
                "workerGroupSpecs": [builder.worker(g) for g in spec.workers if g.role in ("serve", "gpu")],
            },
        },
    }


def job_groups(spec: DeploySpec, needs: Needs) -> list[WorkerGroup]:
    """The worker groups of a job's own cluster: those it needs, else the spot group, else a serve group."""
    groups = [g for role in needs.roles() if (g := spec.group(role)) is not None]
    if not groups:
        fallback = spec.group("spot") or spec.group("serve")
        groups = [fallback] if fallback is not None else []
    return groups


def rayjob(spec: DeploySpec, builder: PodBuilder, job: Job, needs: Needs) -> dict[str, Any]:
    """A RayJob on its own cluster, deleted after the job (TTL), retried on a new cluster (backoffLimit)."""
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayJob",
        "metadata": {"name": job.name, "namespace": spec.namespace,
                     "labels": {LABEL_APP: spec.name, "rayml.io/job": job.kind},
                     **({"annotations": {"rayml.io/schedule": job.schedule_note}} if job.schedule_note else {})},
        "spec": {
            # From the image's WORKDIR: the job configs' relative paths (configs/features/...) resolve there.
            "entrypoint": f"cd {spec.workdir} && python {JOB_ENTRYPOINTS[job.kind]} --config {job.config}",
            "submissionMode": SUBMISSION_MODE,
            "shutdownAfterJobFinishes": True,
            "ttlSecondsAfterFinished": job.ttl_seconds_after_finished,
            "backoffLimit": job.backoff_limit,
            "activeDeadlineSeconds": job.active_deadline_seconds,
            "rayClusterSpec": {
                "rayVersion": spec.ray_version,
                "enableInTreeAutoscaling": True,
                "autoscalerOptions": _autoscaler(spec),
                "headGroupSpec": builder.head(spec.head, serving=False),
                "workerGroupSpecs": [builder.worker(g) | {"template": builder.template(
                    g.name, g.pod, spec.gpu_image if g.pod.gpus else spec.image, serving=False, head=False)}
                    for g in job_groups(spec, needs)],
            },
        },
    }


def pod_disruption_budget(spec: DeploySpec) -> dict[str, Any]:
    serve = spec.group("serve")
    assert serve is not None  # DeploySpec requires a serve group
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {"name": f"{spec.name}-serve", "namespace": spec.namespace, "labels": {LABEL_APP: spec.name}},
        "spec": {"minAvailable": spec.serve_min_available,
                 "selector": {"matchLabels": _labels(spec, serve.name)}},
    }


def network_policy(spec: DeploySpec) -> dict[str, Any]:
    """Clients reach only the HTTP port; Ray's own ports are open between the cluster's pods and to the operator."""
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": spec.name, "namespace": spec.namespace, "labels": {LABEL_APP: spec.name}},
        "spec": {
            "podSelector": {"matchLabels": {LABEL_APP: spec.name}},
            "policyTypes": ["Ingress"],
            "ingress": [
                {"from": [{"namespaceSelector": {"matchLabels": dict(spec.clients_namespace_label)}}],
                 "ports": [{"protocol": "TCP", "port": spec.http_port}]},
                {"from": [{"namespaceSelector": {"matchLabels": dict(spec.metrics_namespace_label)}}],
                 "ports": [{"protocol": "TCP", "port": METRICS_PORT}]},
                # Ray nodes talk on many ports (GCS, raylets, object transfer, direct ingress): all, between them.
                {"from": [{"podSelector": {"matchLabels": {LABEL_APP: spec.name}}}]},
                # The operator deploys serveConfigV2 and reads Serve status through the dashboard (kubelet probes
                # are not subject to NetworkPolicy).
                {"from": [{"namespaceSelector": {"matchLabels": {
                    "kubernetes.io/metadata.name": OPERATOR_NAMESPACE}}}],
                 "ports": [{"protocol": "TCP", "port": DASHBOARD_PORT},
                           {"protocol": "TCP", "port": spec.http_port}]},  # it checks the head's proxy health too
            ],
        },
    }
