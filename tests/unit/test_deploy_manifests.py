"""The committed cluster files, checked by their own schemas and tools: Ray's cluster schema, the KubeRay v1.7 CRDs,
kubernetes-validate, Ray's ServeDeploySchema; and the properties the schemas leave free."""

from __future__ import annotations

import copy
import json
import shlex
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import ray
import yaml
from ray.serve.schema import ServeDeploySchema

from rayml.deploy import render_k8s
from rayml.deploy.spec import load_deploy_spec
from rayml.serving.launcher import SHUTDOWN_BOUND_S

pytestmark = pytest.mark.unit
REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "cluster" / "k8s"
CRD_DATA = REPO / "tests" / "data" / "kuberay"
SPEC = load_deploy_spec(REPO / "configs" / "deploy" / "production.yaml")
K8S_VERSION = kubernetes_validate.latest_version()
NEVER_EXPOSED = {8265, 8404, 9101}  # dashboard, HAProxy stats, HAProxy metrics


@cache
def load(name: str) -> dict[str, Any]:  # cached: tests deep-copy before they change anything
    return yaml.safe_load((K8S / name).read_text())


@cache
def rayjobs() -> tuple[dict[str, Any], ...]:
    return tuple(yaml.safe_load(p.read_text()) for p in sorted(K8S.glob("rayjob-*.yaml")))


def _strict(node: Any) -> Any:
    """Close every object schema that lists properties, as the API server's strict field validation does."""
    if isinstance(node, dict):
        node = {k: _strict(v) for k, v in node.items()}
        if "properties" in node and not node.get("x-kubernetes-preserve-unknown-fields"):
            node.setdefault("additionalProperties", False)
        return node
    if isinstance(node, list):
        return [_strict(v) for v in node]
    return node


@cache
def crd_validator(kind: str) -> jsonschema.protocols.Validator:
    schema = _strict(json.loads((CRD_DATA / f"{kind}.v1.schema.json").read_text()))
    return jsonschema.Draft7Validator(schema)


def crd_errors(kind: str, manifest: dict[str, Any]) -> list[str]:
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in crd_validator(kind).iter_errors(manifest)]


def pod_templates(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    cluster = manifest["spec"].get("rayClusterConfig") or manifest["spec"]["rayClusterSpec"]
    return [cluster["headGroupSpec"]["template"], *(g["template"] for g in cluster["workerGroupSpecs"])]


# --- Ray cluster launcher YAML ------------------------------------------------------------------------------------

def test_ray_cluster_yaml_validates_against_rays_own_schema():
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    config = yaml.safe_load((REPO / "cluster" / "ray-cluster.aws.yaml").read_text())
    jsonschema.validate(config, schema)
    assert config["provider"]["type"] == "aws"


def test_ray_cluster_yaml_spot_gpu_and_head_node_types():
    """Ray's schema leaves node_config and custom resources free: market options and resources, checked here."""
    config = yaml.safe_load((REPO / "cluster" / "ray-cluster.aws.yaml").read_text())
    types = config["available_node_types"]
    assert types[config["head_node_type"]]["resources"] == {"CPU": 0}  # the head runs no replicas or actors
    spot = [t for t in types.values() if t["resources"].get("spot")]
    assert len(spot) == 1 and spot[0]["resources"]["spot"] == 1 and "GPU" not in spot[0]["resources"]
    market = spot[0]["node_config"]["InstanceMarketOptions"]
    assert market["MarketType"] == "spot"
    assert market["SpotOptions"] == {"SpotInstanceType": "one-time", "InstanceInterruptionBehavior": "terminate"}
    for name, node in types.items():
        if node is not spot[0]:
            assert "InstanceMarketOptions" not in node["node_config"], f"{name} must be on-demand"
    gpu = [t for t in types.values() if t["resources"].get("GPU")]
    assert len(gpu) == 1 and gpu[0]["docker"]["worker_image"] == SPEC.gpu_image
    for node in types.values():
        if node is not types["head"]:
            assert 0 <= node["min_workers"] <= node["max_workers"] <= config["max_workers"]
    assert sum(t.get("max_workers", 0) for t in types.values()) <= config["max_workers"]


def test_ray_cluster_yaml_has_the_haproxy_ingress_env_and_no_secret_values():
    config = yaml.safe_load((REPO / "cluster" / "ray-cluster.aws.yaml").read_text())
    options = config["docker"]["run_options"]
    env = dict(shlex.split(o)[1].split("=", 1) for o in options if o.startswith("--env "))
    assert env["RAY_SERVE_ENABLE_HA_PROXY"] == "1" and env["RAY_SERVE_ENABLE_DIRECT_INGRESS"] == "1"
    assert env["RAY_SERVE_HAPROXY_STATS_PORT"] == "8404"
    text = (REPO / "cluster" / "ray-cluster.aws.yaml").read_text()
    assert "aws secretsmanager get-secret-value" in text  # secrets arrive at boot, by name
    assert "--redis-password=\"$RAYML_REDIS_PASSWORD\"" in text


# --- KubeRay CRDs ---------------------------------------------------------------------------------------------------

def test_rayservice_validates_against_the_kuberay_crd():
    assert crd_errors("rayservice", load("rayservice.yaml")) == []


@pytest.mark.parametrize("manifest", rayjobs(), ids=lambda m: m["metadata"]["name"])
def test_rayjobs_validate_against_the_kuberay_crd(manifest):
    assert crd_errors("rayjob", manifest) == []


def test_the_crd_check_catches_a_misspelled_field():
    broken = copy.deepcopy(load("rayservice.yaml"))
    broken["spec"]["rayClusterConfig"]["enableInTreeAutoscalling"] = True
    assert any("enableInTreeAutoscalling" in e for e in crd_errors("rayservice", broken))


def test_upgrade_strategy_is_one_of_the_operators_three_values():
    """The CRD leaves upgradeStrategy.type a free string; the operator accepts only these."""
    assert render_k8s.UPGRADE_TYPES == ("NewCluster", "NewClusterWithIncrementalUpgrade", "None")
    strategy = load("rayservice.yaml")["spec"]["upgradeStrategy"]
    assert strategy["type"] in render_k8s.UPGRADE_TYPES
    assert strategy["type"] == "NewCluster"  # why: docs/deploy.md, "Upgrades"
    typo = copy.deepcopy(load("rayservice.yaml"))
    typo["spec"]["upgradeStrategy"]["type"] = "NewClusterWithIncrementalUpgrades"
    assert crd_errors("rayservice", typo) == []  # the schema alone misses it ...
    assert typo["spec"]["upgradeStrategy"]["type"] not in render_k8s.UPGRADE_TYPES  # ... this check does not


def test_serve_config_v2_is_the_production_serve_config_and_rays_schema_accepts_it():
    text = load("rayservice.yaml")["spec"]["serveConfigV2"]
    assert text == (REPO / SPEC.serve_config).read_text()
    schema = ServeDeploySchema.model_validate(yaml.safe_load(text))
    assert {a.name for a in schema.applications} >= {"recommender"}


# --- serving pods ---------------------------------------------------------------------------------------------------

def groups(manifest: dict[str, Any]) -> dict[str, dict[str, Any]]:
    cluster = manifest["spec"].get("rayClusterConfig") or manifest["spec"]["rayClusterSpec"]
    return {g["groupName"]: g for g in cluster["workerGroupSpecs"]}


def test_gpu_group_requests_gpus_and_tolerates_the_gpu_taint():
    gpu = groups(load("rayservice.yaml"))["gpu"]["template"]["spec"]
    (container,) = gpu["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert container["resources"]["requests"] == container["resources"]["limits"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in gpu["tolerations"]
    assert container["image"] == SPEC.gpu_image


def test_spot_group_advertises_spot_with_node_selector_and_toleration():
    job = {m["metadata"]["name"]: m for m in rayjobs()}["score-users"]
    spot = groups(job)["spot"]
    assert spot["resources"] == {"spot": "1"}
    pod = spot["template"]["spec"]
    assert pod["nodeSelector"] == {"karpenter.sh/capacity-type": "spot"}
    assert {"key": "rayml.io/spot", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert "spot" not in groups(load("rayservice.yaml"))  # serving never lands on reclaimable nodes


def test_every_pod_has_requests_equal_limits_and_a_grace_period_above_the_edge_bound():
    for manifest in [load("rayservice.yaml"), *rayjobs()]:
        for template in pod_templates(manifest):
            spec = template["spec"]
            assert spec["terminationGracePeriodSeconds"] >= SHUTDOWN_BOUND_S + 10
            for container in spec["containers"]:
                assert container["resources"]["requests"] == container["resources"]["limits"]


def test_serving_workers_probe_the_real_health_endpoints_and_carry_the_ingress_env():
    from rayml.serving import health_routes

    serve = groups(load("rayservice.yaml"))["serve"]["template"]["spec"]
    (container,) = serve["containers"]
    assert container["readinessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": SPEC.http_port}
    assert '@api.get("/v2/health/live"' in Path(health_routes.__file__).read_text()  # the route the probe hits
    assert container["livenessProbe"]["httpGet"] == {"path": "/api/healthz", "port": 52365}  # the Ray node's health
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["RAY_SERVE_ENABLE_HA_PROXY"] == "1" and env["RAY_SERVE_THROUGHPUT_OPTIMIZED"] == "1"
    anti = serve["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0]
    assert anti["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"


def test_secrets_come_only_from_kubernetes_secrets():
    service = load("rayservice.yaml")
    ft = service["spec"]["rayClusterConfig"]["gcsFaultToleranceOptions"]
    assert ft["redisAddress"] == SPEC.redis.address
    assert ft["redisPassword"] == {"valueFrom": {"secretKeyRef": {"name": "rayml-redis", "key": "password"}}}
    for manifest in [service, *rayjobs()]:
        for template in pod_templates(manifest):
            for container in template["spec"]["containers"]:
                for env in container["env"]:
                    if any(w in env["name"] for w in ("PASSWORD", "TOKEN", "SECRET")):
                        assert "value" not in env and "secretKeyRef" in env["valueFrom"], env["name"]
    serve_pod = groups(service)["serve"]["template"]["spec"]
    tokens = {v["name"]: v for v in serve_pod["volumes"]}["api-tokens"]
    assert tokens["secret"]["secretName"] == SPEC.secrets.api_tokens.secret
    mounts = {m["name"]: m for m in serve_pod["containers"][0]["volumeMounts"]}
    assert mounts["api-tokens"]["mountPath"] == "/var/run/secrets/rayml" and mounts["api-tokens"]["readOnly"]


def test_rayjobs_clean_up_retry_and_run_the_batch_entrypoints():
    jobs = {m["metadata"]["name"]: m["spec"] for m in rayjobs()}
    assert set(jobs) == {"score-users", "generate-candidates", "materialize-candidates", "distill"}
    for name, job in jobs.items():
        assert job["shutdownAfterJobFinishes"] is True and job["ttlSecondsAfterFinished"] > 0
        assert job["backoffLimit"] >= 1 and job["submissionMode"] == "SidecarMode"
        cd, workdir, _, python, script, flag, config = shlex.split(job["entrypoint"])
        assert (cd, workdir, python, flag) == ("cd", SPEC.workdir, "python", "--config")
        assert script.startswith("batch_jobs/") and (REPO / script).is_file(), name
        assert config.startswith("configs/deploy/jobs/") and (REPO / config).is_file(), name
    distill = next(m for m in rayjobs() if m["metadata"]["name"] == "distill")
    assert set(groups(distill)) == {"gpu", "spot"}  # Ray Train on GPUs, soft labels on spot (its config asks)
    score = next(m for m in rayjobs() if m["metadata"]["name"] == "score-users")
    assert set(groups(score)) == {"spot"}


# --- core objects ---------------------------------------------------------------------------------------------------

def core_objects() -> list[dict[str, Any]]:
    service = load("rayservice.yaml")
    serve_svc = {"apiVersion": "v1", "kind": "Service", **copy.deepcopy(service["spec"]["serveService"])}
    serve_svc["metadata"]["namespace"] = SPEC.namespace
    serve_svc["spec"]["selector"] = {"ray.io/serve": "true"}  # the operator adds its selector
    templates = [{"apiVersion": "v1", "kind": "PodTemplate", "template": t, "metadata": {
                     "name": f"{m['metadata']['name']}-{t['metadata']['labels']['rayml.io/group']}"}}
                 for m in [service, *rayjobs()] for t in pod_templates(m)]
    return [load("pdb.yaml"), load("networkpolicy.yaml"), serve_svc, *templates]


@pytest.mark.parametrize("manifest", core_objects(), ids=lambda m: f"{m['kind']}-{m['metadata']['name']}")
def test_core_objects_validate_with_kubernetes_validate(manifest):
    kubernetes_validate.validate(manifest, K8S_VERSION, strict=True)


def test_kubernetes_validate_catches_a_bad_pdb():
    broken = copy.deepcopy(load("pdb.yaml"))
    broken["spec"]["minAvailabel"] = 1
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_only_the_http_port_is_exposed_and_the_network_policy_matches():
    service = load("rayservice.yaml")
    ports = {p["port"] for p in service["spec"]["serveService"]["spec"]["ports"]}
    assert ports == {SPEC.http_port}
    policy = load("networkpolicy.yaml")["spec"]
    client_rule = next(r for r in policy["ingress"] if "namespaceSelector" in r["from"][0]
                       and r["from"][0]["namespaceSelector"]["matchLabels"] == SPEC.clients_namespace_label)
    assert [p["port"] for p in client_rule["ports"]] == [SPEC.http_port]
    for rule in policy["ingress"]:
        opened = {p["port"] for p in rule.get("ports", [])}
        outside = "podSelector" not in rule["from"][0]
        assert not (outside and opened & {8404, 9101}), rule
        if outside and 8265 in opened:  # only the operator's namespace reaches the dashboard
            assert rule["from"][0]["namespaceSelector"]["matchLabels"] == {
                "kubernetes.io/metadata.name": render_k8s.OPERATOR_NAMESPACE}
    for template in pod_templates(service):
        for container in template["spec"]["containers"]:
            assert not {p["containerPort"] for p in container.get("ports", [])} & {8404, 9101}


def test_pdb_covers_the_serve_workers():
    pdb = load("pdb.yaml")["spec"]
    serve_labels = groups(load("rayservice.yaml"))["serve"]["template"]["metadata"]["labels"]
    assert pdb["selector"]["matchLabels"].items() <= serve_labels.items()
    assert pdb["minAvailable"] >= 1
    kinds = {yaml.safe_load(p.read_text())["kind"] for p in K8S.glob("*.yaml")}
    assert "HorizontalPodAutoscaler" not in kinds, "scaling is the Ray autoscaler's job (docs/deploy.md)"
    assert load("rayservice.yaml")["spec"]["rayClusterConfig"]["enableInTreeAutoscaling"] is True
