"""`ray job submit` of the candidate job against a real `ray start --head` cluster."""

from __future__ import annotations

import json
import re
import subprocess

import pyarrow.parquet as pq
import pytest

from tests.conftest import REPO
from tests.e2e.conftest import BIN, cli_env

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_candidate_job_succeeds_under_ray_job_submit(ray_cluster, trained, tiny_world, tmp_path):
    registry, _ = trained
    output = tmp_path / "candidates"
    submit = [
        str(BIN / "ray"), "job", "submit", "--address", ray_cluster, "--working-dir", ".", "--",
        "python", "batch_jobs/generate_candidates.py", "--config", "configs/batch/candidates.yaml",
        "--users", str(tiny_world.path / "users"), "--registry", str(registry.root), "--output", str(output),
    ]
    result = subprocess.run(submit, cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=420)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    job_id = re.search(r"Job '(raysubmit_\w+)' succeeded", log).group(1)
    status = subprocess.run(
        [str(BIN / "ray"), "job", "status", "--address", ray_cluster, job_id],
        cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=60,
    )
    assert f"Job '{job_id}' succeeded" in status.stdout + status.stderr  # ray job status: SUCCEEDED
    users = pq.read_table(output)["user_id"].to_pylist()
    assert len(users) == len(set(users)) == tiny_world.n_users


@pytest.mark.parametrize("token", [None, "0" * 64], ids=["no-token", "wrong-token"])
def test_job_submit_without_the_clusters_token_is_refused(ray_cluster, tmp_path, token):
    """Token auth is on: a client without the cluster's token (or with another) cannot run code on it."""
    env = cli_env()
    env.pop("RAY_AUTH_TOKEN_PATH", None)
    env["HOME"] = str(tmp_path)  # no ~/.ray/auth_token to fall back on
    if token is not None:
        env["RAY_AUTH_TOKEN"] = token
    marker = tmp_path / "ran"
    submit = [str(BIN / "ray"), "job", "submit", "--address", ray_cluster, "--", "touch", str(marker)]
    result = subprocess.run(submit, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    log = result.stdout + result.stderr
    assert result.returncode != 0, log[-2000:]
    assert re.search(r"(?i)authenticat|unauthori[sz]ed|401|token", log), log[-2000:]
    assert not marker.exists()


def test_bad_config_key_fails_the_job_with_a_clear_line(ray_cluster, tmp_path):
    bad = tmp_path / "bad-candidates.yaml"  # the job runs on this host, so it can read tmp_path
    bad.write_text("users: u\nregistry: r\noutput: o\ntopk: 5\n")
    submit = [
        str(BIN / "ray"), "job", "submit", "--address", ray_cluster, "--",
        "python", str(REPO / "batch_jobs" / "generate_candidates.py"), "--config", str(bad),
    ]
    result = subprocess.run(submit, cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=300)
    log = result.stdout + result.stderr
    assert result.returncode != 0
    assert f"{bad}: unknown key 'topk'" in log


def test_relative_paths_are_refused_under_job_submit(ray_cluster, trained, tiny_world, tmp_path):
    """A relative output would land in the job's temporary working_dir copy and be lost: refused up front."""
    registry, _ = trained
    submit = [
        str(BIN / "ray"), "job", "submit", "--address", ray_cluster, "--working-dir", ".", "--",
        "python", "batch_jobs/generate_candidates.py", "--config", "configs/batch/candidates.yaml",
        "--users", str(tiny_world.path / "users"), "--registry", str(registry.root), "--output", "relative/out",
    ]
    result = subprocess.run(submit, cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=300)
    log = result.stdout + result.stderr
    assert result.returncode != 0
    assert "keys ['output'] are relative paths" in log


def test_distillation_job_under_ray_job_submit(ray_cluster, tiny_world, tmp_path):
    """Teacher → soft labels → student → int8 → registry, as a submitted job; then the registry is checked."""
    import yaml

    from rayml.registry import ModelRegistry

    config = yaml.safe_load((REPO / "configs" / "distill" / "demo.yaml").read_text())
    config.update(world=str(tiny_world.path), registry=str(tmp_path / "registry"),
                  storage_path=str(tmp_path / "train"), run_name="e2e")
    config["teacher"].update(hidden=[64, 32], train={"epochs": 2, "batch_size": 512})
    config["student"].update(hidden=[64, 32], train={"epochs": 2, "batch_size": 512})
    config_path = tmp_path / "distill.yaml"
    config_path.write_text(yaml.safe_dump(config))
    report = tmp_path / "report.json"
    submit = [
        str(BIN / "ray"), "job", "submit", "--address", ray_cluster, "--working-dir", ".", "--",
        "python", "batch_jobs/distill.py", "--config", str(config_path), "--report", str(report),
    ]
    result = subprocess.run(submit, cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=600)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-5000:]
    assert re.search(r"Job 'raysubmit_\w+' succeeded", log)
    assert "| student int8 (distilled) |" in log
    registry = ModelRegistry(tmp_path / "registry")
    student = registry.get("ranker", "production")
    teacher = registry.get("teacher", "production")
    assert student.metadata["lineage"]["teacher_version"] == teacher.label
    assert student.metadata["parity"]["passed"] and student.metadata["int8_parity"]["passed"]
    assert {"model.onnx", "model.int8.onnx", "user_encoder.json", "item_encoder.json"} == set(student.metadata["files"])
    assert student.file("model.int8.onnx").stat().st_size < student.file("model.onnx").stat().st_size
    rows = {r["name"]: r for r in json.loads(report.read_text())["rows"]}
    assert set(rows) == {"teacher", "student, hard labels only", "student fp32 (distilled)", "student int8 (distilled)"}
    assert rows["teacher"]["params"] > rows["student fp32 (distilled)"]["params"] == rows["student int8 (distilled)"]["params"]
    assert all(0.3 < r["ndcg10"] <= 1 and 0.5 < r["auc"] < 1 for r in rows.values())
    # the teacher reads privileged log features; the registered version is evaluated with them again
    assert teacher.metadata["privileged_features"][:2] == ["log_impressions", "log_clicks"]
    gap = json.loads(report.read_text())["teacher_minus_hard_ndcg10"]
    assert gap["low"] <= gap["mean"] <= gap["high"] and gap["users"] >= 2
    from rayml.models.distill import evaluate_registered

    again = {r.name: r for r in evaluate_registered(tiny_world, registry, "production", "production", config["eval_users"])}
    assert again["teacher"].ndcg10 == rows["teacher"]["ndcg10"]
    assert again["student int8"].ndcg10 == rows["student int8 (distilled)"]["ndcg10"]
