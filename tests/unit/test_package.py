"""The package surface: every public name resolves, and importing rayml starts and loads nothing heavy."""

from __future__ import annotations

import subprocess
import sys

import pytest

import rayml

pytestmark = pytest.mark.unit


def test_every_public_name_resolves():
    import importlib

    for name in rayml.__all__:
        if name == "__version__":
            continue
        value = getattr(rayml, name)
        assert value is getattr(importlib.import_module(rayml._EXPORTS[name]), name)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = rayml.nope


def test_import_is_cheap_and_side_effect_free(tmp_path):
    code = "import sys, rayml; print(sorted(m for m in ('ray', 'torch', 'onnxruntime') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    assert list(tmp_path.iterdir()) == []


def test_a_serving_replica_does_not_import_the_statistics_stack(tmp_path):
    """A replacement replica's start is on the recovery path (issue 11): scipy.stats and statsmodels cost about a
    second of CPU and the replica needs neither until a shadow compares or a rollout starts."""
    code = ("import sys, rayml.serving.app; "
            "print(sorted(m for m in ('scipy.stats', 'statsmodels', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_gpu_session_on_a_cpu_only_onnxruntime_is_a_clear_error(tmp_path):
    import onnxruntime as ort

    from rayml.inference import ort_session

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    with pytest.raises(RuntimeError, match="no CUDA provider"):
        ort_session(tmp_path / "model.onnx", gpu=True)
