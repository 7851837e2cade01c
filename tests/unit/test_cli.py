"""The rayml CLI: reuse on re-run, and clear one-line errors naming the file and key."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from rayml.cli import app

pytestmark = pytest.mark.unit
runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False, terminal_width=400)


def test_world_build_then_reuse(tmp_path):
    cfg = tmp_path / "w.yaml"
    cfg.write_text("n_users: 300\nn_items: 40\ndays: 3\nimpressions_per_user: 5\n")
    first = run("world", "build", str(cfg), "--out", str(tmp_path / "w"))
    assert first.exit_code == 0 and "built world" in first.output and "300 users" in first.output
    second = run("world", "build", str(cfg), "--out", str(tmp_path / "w"))
    assert second.exit_code == 0 and "up to date" in second.output


def test_world_build_bad_key_names_file_and_key(tmp_path):
    cfg = tmp_path / "w.yaml"
    cfg.write_text("n_users: 300\nclick: {slope: 2}\n")
    result = run("world", "build", str(cfg), "--out", str(tmp_path / "w"))
    assert result.exit_code == 2
    assert f"{cfg}: unknown key 'click.slope'" in result.output
    assert not (tmp_path / "w").exists()


def test_world_build_refuses_a_directory_that_is_not_a_world(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    result = run("world", "build", "configs/world/demo.yaml", "--out", str(tmp_path))
    assert result.exit_code == 2 and "holds no world" in result.output
    assert (tmp_path / "notes.txt").exists()


def test_train_on_cuda_without_gpu_names_the_key(tmp_path, tiny_world, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the same answer on a GPU machine
    cfg = tmp_path / "m.yaml"
    cfg.write_text("ranker: {train: {device: cuda}}\n")
    result = run("models", "train", str(cfg), "--world", str(tiny_world.path), "--registry", str(tmp_path / "r"))
    assert result.exit_code == 2 and f"{cfg}: key 'train.device': cuda was requested" in result.output


def test_train_against_missing_world(tmp_path):
    result = run("models", "train", "configs/models/demo.yaml", "--world", str(tmp_path), "--registry", str(tmp_path / "r"))
    assert result.exit_code == 2 and "no world here" in result.output


def test_registry_commands(trained):
    registry, _ = trained
    root = str(registry.root)
    listing = run("registry", "list", "--registry", root)
    assert listing.exit_code == 0 and "ranker" in listing.output and "production" in listing.output
    shown = run("registry", "show", "ranker", "1", "--registry", root)
    assert shown.exit_code == 0 and '"kind": "ranker"' in shown.output and '"parity"' in shown.output
    missing = run("registry", "promote", "ranker", "99", "--alias", "canary", "--registry", root)
    assert missing.exit_code == 2 and "version 99 does not exist" in missing.output
    ok = run("registry", "promote", "ranker", "1", "--alias", "canary", "--registry", root)
    assert ok.exit_code == 0 and "canary → v1" in ok.output
    back = run("registry", "rollback", "ranker", "--alias", "canary", "--registry", root)
    assert back.exit_code == 2 and "no earlier version" in back.output
    unknown = run("registry", "promote", "ranker", "stagin", "--alias", "canary", "--registry", root)
    assert unknown.exit_code == 2 and "no alias 'stagin'" in unknown.output and "production" in unknown.output
    nothing = run("registry", "rollback", "ranker", "--alias", "nightly", "--registry", root)
    assert nothing.exit_code == 2 and "no alias 'nightly' to roll back" in nothing.output


def test_promote_refuses_failed_parity(tmp_path):
    from rayml.registry import ModelRegistry

    src = tmp_path / "m.onnx"
    src.write_bytes(b"x")
    reg = ModelRegistry(tmp_path / "reg")
    reg.register("ranker", {"model.onnx": src}, {"parity": {"passed": False, "max_abs_diff": 0.3}})
    result = run("registry", "promote", "ranker", "1", "--registry", str(reg.root))
    assert result.exit_code == 2 and "failed its ONNX parity check" in result.output
    assert reg.aliases("ranker") == {}


def test_serve_checks_the_config_before_starting_anything(tmp_path):
    import yaml

    config = yaml.safe_load(Path("serve_apps/recommender.yaml").read_text())
    config["applications"][0]["args"]["registri"] = "x"
    bad = tmp_path / "typo.yaml"
    bad.write_text(yaml.safe_dump(config))
    result = run("serve", str(bad))
    assert result.exit_code == 2
    assert f"{bad}: applications.0.args: unknown key 'registri'" in result.output

    config["applications"][0]["args"].pop("registri")
    config["applications"][0]["args"]["candidates"] = str(tmp_path / "nope")
    bad.write_text(yaml.safe_dump(config))
    result = run("serve", str(bad))
    assert result.exit_code == 2
    assert f"{bad}: key 'applications.0.args.candidates': {tmp_path / 'nope'} does not exist" in result.output

    config["http_options"]["port"] = "eighty"
    bad.write_text(yaml.safe_dump(config))
    result = run("serve", str(bad))
    assert result.exit_code == 2 and f"{bad}: key 'http_options.port'" in result.output


def test_serve_refuses_overload_settings_that_cannot_work(tmp_path):
    import yaml

    config = yaml.safe_load(Path("serve_apps/recommender.yaml").read_text())
    deployment = config["applications"][0]["deployments"][0]
    deployment["max_ongoing_requests"] = 4  # below the batch size of 8
    config["applications"][0]["args"]["max_in_flight"] = 500  # above the 4 Serve lets into the app
    config["applications"][0]["args"]["overload"] = {"in_flight": 4}  # below the batch size too
    bad = tmp_path / "overload.yaml"
    bad.write_text(yaml.safe_dump(config))
    result = run("serve", str(bad))
    assert result.exit_code == 2
    assert f"{bad}: key 'applications.0.deployments.0.max_ongoing_requests': 4 is below the batch size 8" in result.output
    assert "key 'applications.0.args.max_in_flight': 500 is not below what Serve lets into the app" in result.output
    assert "key 'applications.0.args.overload.in_flight': 4 is below the batch size 8" in result.output
    config["applications"][0]["args"]["max_in_flight"] = 3
    config["applications"][0]["args"]["overload"] = None
    deployment["max_ongoing_requests"] = 32
    bad.write_text(yaml.safe_dump(config))
    result = run("serve", str(bad))
    assert result.exit_code == 2 and "key 'applications.0.args.max_in_flight': 3 is below the batch size 8" in result.output
    for overload, says in (({"in_flight": 40}, "overload.in_flight=40 must be <= max_in_flight=24"),
                           ({"in_flight": 16, "hold_s": 0.5}, "overload.hold_s=0.5 must be >= retry_after_s=1")):
        config["applications"][0]["args"].update(max_in_flight=24, overload=overload)
        bad.write_text(yaml.safe_dump(config))
        result = run("serve", str(bad))
        assert result.exit_code == 2 and says in result.output, result.output


def test_serve_refuses_autoscaling_kwargs_that_cannot_work(tmp_path):
    import yaml

    config = yaml.safe_load(Path("serve_apps/recommender.yaml").read_text())
    deployment = config["applications"][0]["deployments"][0]
    where = "applications.0.deployments.0.autoscaling_config.policy.policy_kwargs"
    bad = tmp_path / "autoscaling.yaml"
    for kwargs, says in (
        ({"target_ms": 50, "saturated_ongoing": 40},  # above max_ongoing_requests (32): a replica never has 40
         f"key '{where}.saturated_ongoing': 40 is above applications.0.deployments.0.max_ongoing_requests (32)"),
        ({"target_ms": 50, "saturated_ongoing": -1}, f"key '{where}': saturated_ongoing: -1 must be > 0"),
        ({"target_ms": 0}, f"key '{where}': need target_ms > 0"),
        ({"target_ms": 50, "saturation": 28}, f"key '{where}': "),  # a misspelt key: TypeError, named
    ):
        deployment["autoscaling_config"]["policy"]["policy_kwargs"] = kwargs
        bad.write_text(yaml.safe_dump(config))
        result = run("serve", str(bad))
        assert result.exit_code == 2 and f"{bad}: {says}" in result.output, result.output
    assert "unexpected keyword argument 'saturation'" in result.output
