"""ONNX export with a dynamic batch axis and a parity check against torch."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from rayml.inference import ort_session

OPSET = 17


@dataclass(frozen=True)
class Parity:
    """Result of comparing ONNX Runtime against torch on the same inputs."""

    max_abs_diff: float
    tolerance: float
    rows: int

    @property
    def passed(self) -> bool:
        return self.max_abs_diff <= self.tolerance

    def to_dict(self) -> dict:
        return {"max_abs_diff": self.max_abs_diff, "tolerance": self.tolerance, "rows": self.rows, "passed": self.passed}


def export_onnx(
    module: nn.Module,
    sample: np.ndarray,
    path: str | Path,
    input_name: str,
    output_name: str,
    tolerance: float = 1e-4,
) -> Parity:
    """Export ``module`` (one float32 input [N, F] → one output) and check parity on ``sample``."""
    module = module.eval().cpu()
    example = torch.from_numpy(sample[:8].astype(np.float32))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (example,),
            str(path),
            input_names=[input_name],
            output_names=[output_name],
            dynamic_axes={input_name: {0: "batch"}, output_name: {0: "batch"}},
            opset_version=OPSET,
            dynamo=False,
        )
    with torch.no_grad():
        expected = module(torch.from_numpy(sample.astype(np.float32))).numpy()
    got = ort_session(path).run([output_name], {input_name: sample.astype(np.float32)})[0]
    diff = float(np.max(np.abs(expected - got))) if len(sample) else 0.0
    return Parity(max_abs_diff=diff, tolerance=tolerance, rows=len(sample))


class _Calibration:
    """Feeds calibration batches to ``quantize_static`` (implements ``CalibrationDataReader``)."""

    def __init__(self, input_name: str, sample: np.ndarray, batch: int = 256) -> None:
        self._batches = iter([{input_name: sample[i : i + batch]} for i in range(0, len(sample), batch)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


def quantize_int8(fp32_path: str | Path, int8_path: str | Path, sample: np.ndarray,
                  input_name: str, output_name: str, tolerance: float, mode: str = "static") -> Parity:
    """int8 ONNX via ``onnxruntime.quantization``; parity is int8 vs fp32 on ``sample``.

    ``static``: weights and activations in int8 (QDQ), activation ranges calibrated on ``sample`` (real data);
    ``dynamic``: int8 weights, activation ranges computed per call.
    """
    import logging

    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    x = sample.astype(np.float32)
    logging.getLogger().setLevel(max(logging.getLogger().level, logging.ERROR))  # quiet "run pre-processing"
    if mode == "dynamic":
        quantize_dynamic(str(fp32_path), str(int8_path), weight_type=QuantType.QInt8)
    elif mode == "static":
        prepared = Path(int8_path).with_suffix(".pre.onnx")
        quant_pre_process(str(fp32_path), str(prepared))
        quantize_static(str(prepared), str(int8_path), _Calibration(input_name, x),
                        quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        prepared.unlink()
    else:
        raise ValueError(f"quantization mode {mode!r}: use 'static' or 'dynamic'")
    fp32 = ort_session(fp32_path).run([output_name], {input_name: x})[0]
    int8 = ort_session(int8_path).run([output_name], {input_name: x})[0]
    diff = float(np.max(np.abs(fp32 - int8))) if len(x) else 0.0
    return Parity(max_abs_diff=diff, tolerance=tolerance, rows=len(x))


def onnx_parameter_count(path: str | Path) -> int:
    """Number of weight elements stored in an ONNX file (int8 weights count once, like fp32 ones)."""
    import onnx

    model = onnx.load(str(path))
    return int(sum(
        np.prod(t.dims) for t in model.graph.initializer
        if len(t.dims) >= 1  # scalars are quantization scales
        and t.data_type != onnx.TensorProto.INT64  # shape/axes constants
        and not t.name.endswith(("_scale", "_zero_point"))
    ))
