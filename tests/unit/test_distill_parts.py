"""Distillation building blocks: the loss, int8 compression with parity, network factory, config schema."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rayml.config import ConfigError, load_config
from rayml.models.distill_config import DistillConfig
from rayml.models.export import export_onnx, onnx_parameter_count, ort_session, quantize_int8
from rayml.models.networks import ScoreHead, Student, Teacher, parameter_count
from rayml.models.ray_train import distillation_loss, make_network

pytestmark = pytest.mark.unit
bce = torch.nn.functional.binary_cross_entropy_with_logits


def test_distillation_loss_blends_hard_and_soft_targets():
    logit = torch.tensor([0.3, -1.2, 2.0])
    hard = torch.tensor([1.0, 0.0, 1.0])
    teacher = torch.tensor([1.0, -0.5, 0.2])
    assert torch.isclose(distillation_loss(logit, hard, None, 2.0, 0.7), bce(logit, hard))
    assert torch.isclose(distillation_loss(logit, hard, teacher, 2.0, 0.0), bce(logit, hard))
    soft = bce(logit / 2.0, torch.sigmoid(teacher / 2.0)) * 4.0
    expected = 0.7 * soft + 0.3 * bce(logit, hard)
    assert torch.isclose(distillation_loss(logit, hard, teacher, 2.0, 0.7), expected)
    # with alpha = 1 the minimum is at the teacher's logits
    probe = teacher.clone().requires_grad_(True)
    distillation_loss(probe, hard, teacher, 2.0, 1.0).backward()
    assert torch.allclose(probe.grad, torch.zeros(3), atol=1e-6)


def test_int8_is_smaller_close_to_fp32_and_counts_the_same_weights(tmp_path):
    torch.manual_seed(0)
    model = Student(60, (256, 128)).eval()
    sample = np.random.default_rng(0).normal(size=(512, 60)).astype(np.float32)
    fp32 = export_onnx(ScoreHead(model), sample, tmp_path / "s.onnx", "features", "score")
    for mode in ("static", "dynamic"):
        int8 = quantize_int8(tmp_path / "s.onnx", tmp_path / "s8.onnx", sample, "features", "score", 0.05, mode)
        assert fp32.passed and int8.passed and 0 < int8.max_abs_diff < 0.05, mode
        assert (tmp_path / "s8.onnx").stat().st_size < 0.35 * (tmp_path / "s.onnx").stat().st_size, mode
    with pytest.raises(ValueError, match="quantization mode 'fp8'"):
        quantize_int8(tmp_path / "s.onnx", tmp_path / "s9.onnx", sample, "features", "score", 0.05, "fp8")
    assert onnx_parameter_count(tmp_path / "s.onnx") == parameter_count(model) == onnx_parameter_count(tmp_path / "s8.onnx")
    scores = ort_session(tmp_path / "s8.onnx").run(None, {"features": sample})[0]
    assert scores.shape == (512,) and ((scores >= 0) & (scores <= 1)).all()


def test_network_factory():
    teacher = make_network("teacher", {"cross_dim": 8, "hidden": [32, 16], "dropout": 0.1}, 5, 7)
    student = make_network("student", {"hidden": [16]}, 5, 7)
    assert isinstance(teacher, Teacher) and isinstance(student, Student)
    x = torch.randn(4, 12)
    assert teacher.eval()(x).shape == (4,) and student(x).shape == (4,)
    with pytest.raises(ValueError, match="unknown network kind 'giant'"):
        make_network("giant", {}, 5, 7)


def test_distill_config_errors_name_the_key(tmp_path):
    path = tmp_path / "d.yaml"
    path.write_text("world: w\nregistry: r\nstorage_path: s\nstudent: {temprature: 3}\n")
    with pytest.raises(ConfigError, match=r"unknown key 'student\.temprature'"):
        load_config(path, DistillConfig)
    path.write_text("world: w\nregistry: r\nstorage_path: s\nscaling: {use_gpu: sometimes}\n")
    with pytest.raises(ConfigError, match=r"key 'scaling\.use_gpu'"):
        load_config(path, DistillConfig)
    path.write_text("world: w\nregistry: r\nstorage_path: s\nrun_name: 'a b'\n")
    with pytest.raises(ConfigError, match=r"key 'run_name'"):
        load_config(path, DistillConfig)
