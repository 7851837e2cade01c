"""Config loading: every shipped YAML validates; bad files give one clear line naming file and key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from rayml.batch import CandidateJobConfig
from rayml.batch.candidate_store import CandidateStoreJobConfig
from rayml.batch.config import ScoreJobConfig
from rayml.config import ConfigError, load_config, load_settings
from rayml.deploy.rehearsal import RehearsalConfig
from rayml.deploy.spec import DeploySpec
from rayml.features.definitions import FeatureRepo
from rayml.models import ModelsConfig
from rayml.models.distill_config import DistillConfig
from rayml.rollout.plan import RolloutPlan
from rayml.serving import RecommenderArgs
from rayml.serving.monitor_app import MonitorArgs
from rayml.serving.rollout_app import ControllerArgs
from rayml.world import WorldConfig

pytestmark = pytest.mark.unit
REPO = Path(__file__).resolve().parents[2]
SCHEMAS = {
    "configs/world": WorldConfig,
    "configs/models": ModelsConfig,
    "configs/batch": CandidateJobConfig,
    "configs/distill": DistillConfig,
    "configs/features": FeatureRepo,
    "configs/world/scenarios": WorldConfig,
    "configs/rollout": RolloutPlan,
    "configs/deploy": DeploySpec,
    "configs/deploy/jobs": ScoreJobConfig,
    "configs/rehearsal": RehearsalConfig,
}
FILE_SCHEMAS = {  # batch/ and deploy/jobs/ hold several kinds of job
    "configs/batch/score_users.yaml": ScoreJobConfig,
    "configs/batch/candidates_store.yaml": CandidateStoreJobConfig,
    "configs/deploy/jobs/candidates.yaml": CandidateJobConfig,
    "configs/deploy/jobs/candidates_store.yaml": CandidateStoreJobConfig,
    "configs/deploy/jobs/distill.yaml": DistillConfig,
}


def test_every_config_file_loads_through_its_schema():
    seen = 0
    for folder, schema in SCHEMAS.items():
        for path in sorted((REPO / folder).glob("*.yaml")):
            file_schema = FILE_SCHEMAS.get(path.relative_to(REPO).as_posix(), schema)
            assert isinstance(load_config(path, file_schema), file_schema)
            seen += 1
    unclaimed = {p.parent.relative_to(REPO).as_posix() for p in REPO.glob("configs/**/*.yaml")} - set(SCHEMAS)
    assert not unclaimed, f"config folders without a schema: {unclaimed}"
    assert seen >= 5


@pytest.mark.parametrize("path", sorted(REPO.glob("serve_apps/*.yaml")), ids=lambda p: p.name)
def test_serve_configs_validate_with_rays_own_schema(path: Path):
    raw = yaml.safe_load(path.read_text())
    schema = ServeDeploySchema.model_validate(raw)
    builders = {"serve_apps.recommender:app_builder": RecommenderArgs,
                "serve_apps.rollout_controller:app_builder": ControllerArgs,
                "serve_apps.monitor:app_builder": MonitorArgs}
    for app in schema.applications:
        builders[app.import_path].model_validate(app.args)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return path


def test_unknown_key_names_file_key_and_allowed_keys(tmp_path):
    path = write(tmp_path, "n_users: 100\nn_user: 5\n")
    with pytest.raises(ConfigError) as err:
        load_config(path, WorldConfig)
    message = str(err.value)
    assert message.startswith(f"{path}: unknown key 'n_user'")
    assert "n_users" in message and "\n" not in message


def test_nested_unknown_key(tmp_path):
    path = write(tmp_path, "drift:\n  intercept: {enabled: true, delt: 1}\n")
    with pytest.raises(ConfigError, match=r"unknown key 'drift\.intercept\.delt'; allowed keys: delta, enabled, start_day"):
        load_config(path, WorldConfig)


def test_wrong_type_names_key_and_value(tmp_path):
    path = write(tmp_path, "n_users: lots\n")
    with pytest.raises(ConfigError, match=r"cfg.yaml: key 'n_users': Input should be a valid integer.*\(got 'lots'\)"):
        load_config(path, WorldConfig)


def test_out_of_bound_value(tmp_path):
    path = write(tmp_path, "missing_rate: 1.5\n")
    with pytest.raises(ConfigError, match=r"key 'missing_rate': Input should be less than 1"):
        load_config(path, WorldConfig)


def test_cross_field_rule(tmp_path):
    path = write(tmp_path, "days: 5\ndrift: {concept: {enabled: true, start_day: 9}}\n")
    with pytest.raises(ConfigError, match=r"start_day=9 must be < days=5"):
        load_config(path, WorldConfig)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match=r"nope.yaml: config file not found"):
        load_config(tmp_path / "nope.yaml", WorldConfig)


def test_invalid_yaml_and_non_mapping(tmp_path):
    with pytest.raises(ConfigError, match=r"not valid YAML at line 2"):
        load_config(write(tmp_path, "seed: 1\n  days: 2\n"), WorldConfig)
    with pytest.raises(ConfigError, match=r"expected a mapping"):
        load_config(write(tmp_path, "- 1\n- 2\n"), WorldConfig)


def test_required_key(tmp_path):
    with pytest.raises(ConfigError, match=r"key 'registry' is required"):
        load_config(write(tmp_path, "users: a\noutput: b\n"), CandidateJobConfig)


def test_overrides_replace_file_values(tmp_path):
    path = write(tmp_path, "users: a\nregistry: r\noutput: o\n")
    assert load_config(path, CandidateJobConfig, {"output": "x"}).output == "x"


def test_settings_errors_name_the_variable():
    assert load_settings({"RAYML_OBJECT_STORE_MB": "300"}).object_store_mb == 300
    with pytest.raises(ConfigError, match="RAYML_OBJECT_STORE_MB"):
        load_settings({"RAYML_OBJECT_STORE_MB": "big"})


def test_recommender_args_reject_bad_k_order():
    with pytest.raises(ValueError, match="default_k=50 must be <= max_k=10"):
        RecommenderArgs(registry="r", candidates="c", features="f", feature_state="s", default_k=50, max_k=10)


def test_ray_validates_serve_args_through_the_builder_annotation():
    """`serve run` passes YAML args through Ray's builder call; a typo is refused with the key's name."""
    from pydantic import ValidationError
    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary

    from serve_apps.recommender import app_builder

    args = yaml.safe_load((REPO / "serve_apps" / "recommender.yaml").read_text())["applications"][0]["args"]
    with pytest.raises(ValidationError, match="registri"):
        call_user_app_builder_with_args_if_necessary(app_builder, {**args, "registri": "x"})
    with pytest.raises(ValidationError, match="max_k"):
        call_user_app_builder_with_args_if_necessary(app_builder, {**args, "max_k": "lots"})
    app = call_user_app_builder_with_args_if_necessary(app_builder, args)
    assert type(app).__name__ == "Application"
