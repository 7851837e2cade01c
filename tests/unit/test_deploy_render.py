"""`rayml deploy render`: the committed files are the rendered ones, a hand edit fails with a diff, and configs that
cannot work are refused naming the file and key."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from rayml.cli import app
from rayml.deploy.render import diff, render

pytestmark = pytest.mark.unit
REPO = Path(__file__).resolve().parents[2]
SPEC = REPO / "configs" / "deploy" / "production.yaml"
SERVE = REPO / "serve_apps" / "recommender.production.yaml"
runner = CliRunner()


def cli(*args: str):
    return runner.invoke(app, ["deploy", "render", *args])


def test_committed_files_equal_the_rendered_ones():
    changes = diff(render(SPEC, REPO), REPO)
    assert changes == "", f"cluster files differ from configs/deploy; run `rayml deploy render`:\n{changes}"


def test_check_passes_on_the_committed_tree():
    result = cli("--check", "--config", str(SPEC), "--repo", str(REPO))
    assert result.exit_code == 0, result.output
    assert "files match" in result.output


def copy_sources(tmp_path: Path) -> Path:
    """A repository with the render's sources and the committed cluster files."""
    rendered = render(SPEC, REPO)
    for rel in [*rendered.files, "configs/deploy/production.yaml", rendered.spec.serve_config,
                *(job.config for job in rendered.spec.jobs)]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(REPO / rel, tmp_path / rel)
    return tmp_path


def test_a_hand_edited_manifest_fails_the_check_with_a_diff(tmp_path):
    repo = copy_sources(tmp_path)
    manifest = repo / "cluster" / "k8s" / "rayservice.yaml"
    manifest.write_text(manifest.read_text().replace("maxReplicas: 16", "maxReplicas: 40", 1))
    result = cli("--check", "--config", str(repo / "configs/deploy/production.yaml"), "--repo", str(repo))
    assert result.exit_code == 1
    assert "--- a/cluster/k8s/rayservice.yaml (committed)" in result.output
    assert "-      maxReplicas: 40" in result.output and "+      maxReplicas: 16" in result.output
    assert "differ from the rendered ones" in result.output


def test_a_stale_manifest_is_reported_and_render_rewrites_the_edited_one(tmp_path):
    repo = copy_sources(tmp_path)
    (repo / "cluster" / "k8s" / "rayjob-old.yaml").write_text("kind: RayJob\n")
    manifest = repo / "cluster" / "k8s" / "pdb.yaml"
    manifest.write_text(manifest.read_text() + "# edited\n")
    assert "only committed, not rendered (remove it): cluster/k8s/rayjob-old.yaml" in diff(render(SPEC, repo), repo)
    result = cli("--config", str(repo / "configs/deploy/production.yaml"), "--repo", str(repo))
    assert result.exit_code == 0 and "wrote cluster/k8s/pdb.yaml" in result.output
    assert "# edited" not in manifest.read_text()


# --- bad input --------------------------------------------------------------------------------------------------------

def spec_with(tmp_path: Path, change) -> Path:
    raw: dict[str, Any] = yaml.safe_load(SPEC.read_text())
    change(raw)
    path = tmp_path / "deploy.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def serve_with(tmp_path: Path, change) -> str:
    raw: dict[str, Any] = yaml.safe_load(SERVE.read_text())
    change(raw)
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return str(path)


def refused(spec: Path) -> str:
    result = cli("--check", "--config", str(spec), "--repo", str(REPO))  # --check: never writes into the repo
    assert result.exit_code == 2, result.output  # 2: refused (1 would be a diff)
    return result.output


def without(role: str):
    def change(raw: dict[str, Any]) -> None:
        raw["workers"] = [w for w in raw["workers"] if w["role"] != role]
    return change


def test_a_serve_config_rays_schema_rejects_is_refused_naming_file_and_key(tmp_path):
    def both_replica_settings(raw):  # an integer num_replicas beside autoscaling_config: Ray refuses it
        raw["applications"][0]["deployments"][0]["num_replicas"] = 3
    serve = serve_with(tmp_path, both_replica_settings)
    output = refused(spec_with(tmp_path, lambda raw: raw.update(serve_config=serve)))
    assert f"{serve}: key 'applications.0.deployments.0" in output
    assert "num_replicas" in output


def test_an_unknown_serve_config_key_is_refused(tmp_path):
    serve = serve_with(tmp_path, lambda raw: raw["applications"][0]["deployments"][0].update(max_ongoing_request=5))
    output = refused(spec_with(tmp_path, lambda raw: raw.update(serve_config=serve)))
    assert f"{serve}: unknown key 'applications.0.deployments.0.max_ongoing_request'" in output
    assert "max_ongoing_requests" in output  # the allowed keys are listed


def test_a_gpu_deployment_with_no_gpu_group_is_refused(tmp_path):
    output = refused(spec_with(tmp_path, without("gpu")))
    assert "serve_apps/recommender.production.yaml: key 'applications.0.deployments.1.ray_actor_options.num_gpus'" \
        in output
    assert "'Ranker'" in output and "no worker group with role 'gpu'" in output and "deploy.yaml" in output


def test_a_gpu_job_with_no_gpu_group_is_refused(tmp_path):
    def cpu_ranker(raw):
        raw["applications"][0]["deployments"][1]["ray_actor_options"]["num_gpus"] = 0
    serve = serve_with(tmp_path, cpu_ranker)

    def change(raw):
        without("gpu")(raw)
        raw["serve_config"] = serve
    output = refused(spec_with(tmp_path, change))
    assert "configs/deploy/jobs/distill.yaml: key 'scaling.use_gpu'" in output
    assert "job 'distill' needs a gpu group" in output


def test_a_spot_pinned_job_with_no_spot_group_is_refused(tmp_path):
    output = refused(spec_with(tmp_path, without("spot")))
    assert "configs/deploy/jobs/score_users.yaml: key 'actors.resources.spot'" in output
    assert "job 'score-users' needs a spot group" in output and "no worker group with role 'spot'" in output


def test_a_plain_text_secret_in_the_spec_is_refused_without_echoing_it(tmp_path):
    password = "correct-horse-battery-staple"
    output = refused(spec_with(tmp_path, lambda raw: raw["secrets"].update(redis_password=password)))
    assert "deploy.yaml: key 'secrets.redis_password': a secret written in plain text" in output
    assert password not in output


def test_a_plain_text_token_in_the_serve_config_env_is_refused(tmp_path):
    token = "tok-0123456789abcdef0123"
    serve = serve_with(tmp_path, lambda raw: raw["applications"][0].update(
        runtime_env={"env_vars": {"RAYML_API_TOKENS": f"admin: [{token}]"}}))
    output = refused(spec_with(tmp_path, lambda raw: raw.update(serve_config=serve)))
    assert f"{serve}: key 'applications.0.runtime_env.env_vars.RAYML_API_TOKENS': a secret written in plain text" \
        in output
    assert token not in output


def test_a_job_config_its_schema_rejects_is_refused(tmp_path):
    config = tmp_path / "score.yaml"
    config.write_text((REPO / "configs/deploy/jobs/score_users.yaml").read_text().replace("ort_threads", "ort_thread"))

    def change(raw):
        raw["jobs"][0]["config"] = str(config)
    output = refused(spec_with(tmp_path, change))
    assert f"{config}: unknown key 'ort_thread'" in output


def test_online_candidates_with_no_job_writing_the_view_are_refused(tmp_path):
    def change(raw):
        raw["jobs"] = [j for j in raw["jobs"] if j["kind"] != "candidates_store"]
    output = refused(spec_with(tmp_path, change))
    assert "serve_apps/recommender.production.yaml: key 'applications.0.args.candidates_view'" in output
    assert "no job in" in output and "kind candidates_store" in output


def test_a_serve_deployment_pinned_to_spot_is_refused(tmp_path):
    serve = serve_with(tmp_path, lambda raw: raw["applications"][0]["deployments"][0]["ray_actor_options"].update(
        resources={"spot": 0.01}))
    output = refused(spec_with(tmp_path, lambda raw: raw.update(serve_config=serve)))
    assert f"{serve}: key 'applications.0.deployments.0.ray_actor_options.resources.spot'" in output
    assert "the serving cluster has no spot group" in output


def test_a_serve_port_other_than_the_exposed_one_is_refused(tmp_path):
    serve = serve_with(tmp_path, lambda raw: raw["http_options"].update(port=8080))
    output = refused(spec_with(tmp_path, lambda raw: raw.update(serve_config=serve)))
    assert f"{serve}: key 'http_options.port': Serve listens on 8080" in output and "(key 'http_port')" in output


def test_bad_args_of_an_app_are_refused_naming_the_app_and_key(tmp_path):
    serve = serve_with(tmp_path, lambda raw: raw["applications"][1]["args"].update(modle="ranker"))
    output = refused(spec_with(tmp_path, lambda raw: raw.update(serve_config=serve)))
    assert f"{serve}: applications.1.args: unknown key 'modle'" in output
