"""The deploy spec's own rules: every shipped deploy config loads through its schema, and a group that contradicts
its role is refused naming the key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from rayml.config import ConfigError, load_config
from rayml.deploy.checks import JOB_SCHEMAS
from rayml.deploy.spec import DeploySpec, load_deploy_spec

pytestmark = pytest.mark.unit
REPO = Path(__file__).resolve().parents[2]
SPEC = REPO / "configs" / "deploy" / "production.yaml"


def test_every_deploy_config_loads_through_its_schema():
    spec = load_deploy_spec(SPEC)
    assert isinstance(spec, DeploySpec)
    named = {job.config for job in spec.jobs}
    on_disk = {p.relative_to(REPO).as_posix() for p in (REPO / "configs" / "deploy" / "jobs").glob("*.yaml")}
    assert named == on_disk, "every job config is used by a job, and every job's config exists"
    for job in spec.jobs:
        assert isinstance(load_config(REPO / job.config, JOB_SCHEMAS[job.kind]), JOB_SCHEMAS[job.kind])


def group(raw: dict[str, Any], role: str) -> dict[str, Any]:
    return next(g for g in raw["workers"] if g["role"] == role)


CASES = {
    "gpus outside the gpu group": (lambda r: group(r, "serve")["pod"].update(gpus=1),
                                   "key 'workers.0': Value error, role 'serve' with pod.gpus=1"),
    "a gpu group without gpus": (lambda r: group(r, "gpu")["pod"].update(gpus=0),
                                 "role 'gpu' with pod.gpus=0: GPUs belong to the gpu group only"),
    "an on-demand spot group": (lambda r: group(r, "spot")["aws"].update(market="on-demand"),
                                "role 'spot' with aws.market='on-demand'"),
    "bounds upside down": (lambda r: group(r, "spot").update(min_workers=40),
                           "max_workers=32 must be >= min_workers=40"),
    "a spot price on demand": (lambda r: group(r, "serve")["aws"].update(max_spot_price=0.5),
                               "max_spot_price is set but market is 'on-demand'"),
    "no serve group": (lambda r: r.update(workers=[g for g in r["workers"] if g["role"] != "serve"]),
                       "no worker group has role 'serve'"),
    "two groups of one name": (lambda r: group(r, "gpu").update(name="spot"),
                               "worker group names must be unique; repeated: spot"),
    "a misspelt key": (lambda r: r["redis"].update(adress="x:1"), "unknown key 'redis.adress'"),
    "an image with no tag": (lambda r: r.update(image="ghcr.io/rayml/rayml"), "key 'image': Value error, "
                             "'ghcr.io/rayml/rayml' is not pinned"),
    "an image on latest": (lambda r: r.update(gpu_image="registry:5000/rayml:latest"), "key 'gpu_image'"),
}


def test_a_pinned_image_by_digest_or_behind_a_registry_port_is_accepted():
    raw = yaml.safe_load(SPEC.read_text())
    raw["image"] = "registry.local:5000/rayml@sha256:" + "0" * 64
    raw["gpu_image"] = "registry.local:5000/rayml:0.1.0-gpu"
    assert DeploySpec.model_validate(raw).gpu_image.endswith(":0.1.0-gpu")


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_a_contradictory_spec_is_refused_naming_the_key(tmp_path, case):
    change, message = CASES[case]
    raw = yaml.safe_load(SPEC.read_text())
    change(raw)
    path = tmp_path / "deploy.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    with pytest.raises(ConfigError) as err:
        load_deploy_spec(path)
    assert str(err.value).startswith(f"{path}: ")
    assert message in str(err.value)
