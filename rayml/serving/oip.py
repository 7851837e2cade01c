"""Open Inference Protocol (KServe v2) REST: request/response schemas and tensor decoding.

Tensors are JSON ``{"name", "shape", "datatype", "data"}`` with ``data`` row-major, flat or nested. Every
mismatch (datatype, shape, data length, unknown input) raises :class:`TensorError` naming the offending field,
which the app turns into ``400 {"error": ...}`` (the protocol's error shape).
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

DATATYPES: dict[str, Any] = {
    "BOOL": np.bool_, "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64,
    "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
    "FP16": np.float16, "FP32": np.float32, "FP64": np.float64,
}
NUMPY_TO_OIP = {np.dtype(v).name: k for k, v in DATATYPES.items()}


class TensorError(ValueError):
    """A tensor that does not match its declaration or the model; the message starts with the field's path."""


class RequestInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    shape: list[int] = Field(min_length=1, max_length=8)
    datatype: Literal["BOOL", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64", "FP16",
                      "FP32", "FP64", "BYTES"]
    data: list[Any]
    parameters: dict[str, Any] | None = None


class RequestOutput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    parameters: dict[str, Any] | None = None


class InferenceRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[RequestInput] = Field(min_length=1)
    outputs: list[RequestOutput] | None = None


class ResponseOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    data: list[Any]


class InferenceResponse(BaseModel):
    model_name: str
    model_version: str | None = None
    id: str | None = None
    outputs: list[ResponseOutput]


class TensorSpec(BaseModel):
    name: str
    datatype: str
    shape: list[int]  # -1 for a variable dimension


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]


def _flatten(data: list[Any]) -> list[Any]:
    flat: list[Any] = []
    stack = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(reversed(item))
        else:
            flat.append(item)
    return flat


def decode(tensor: RequestInput, index: int, spec: TensorSpec) -> np.ndarray:
    """The tensor as a numpy array of the model's dtype, checked against ``spec``."""
    where = f"inputs[{index}]"
    if tensor.name != spec.name:
        raise TensorError(f"{where}.name: unknown input {tensor.name!r}; the model takes {spec.name!r}")
    if tensor.datatype != spec.datatype:
        raise TensorError(f"{where}.datatype: {tensor.datatype} given, the model takes {spec.datatype}")
    if len(tensor.shape) != len(spec.shape):
        raise TensorError(f"{where}.shape: {tensor.shape} has rank {len(tensor.shape)}, the model takes {spec.shape}")
    for axis, (given, wanted) in enumerate(zip(tensor.shape, spec.shape, strict=True)):
        if given < 0 or (wanted >= 0 and given != wanted):
            raise TensorError(f"{where}.shape[{axis}]: {given} given, the model takes {spec.shape}")
    flat = _flatten(tensor.data)
    expected = math.prod(tensor.shape)
    if len(flat) != expected:
        raise TensorError(f"{where}.data: {len(flat)} values for shape {tensor.shape} (needs {expected})")
    is_bool = tensor.datatype == "BOOL"
    is_float = tensor.datatype.startswith("FP")
    for position, value in enumerate(flat):
        ok = isinstance(value, bool) if is_bool else (
            isinstance(value, int | float) and not isinstance(value, bool) and (is_float or float(value).is_integer())
        )
        if not ok:
            raise TensorError(f"{where}.data[{position}]: {value!r} is not a {tensor.datatype} value")
    array = np.asarray(flat, dtype=DATATYPES[tensor.datatype]).reshape(tensor.shape)
    if is_float and not np.isfinite(array).all():
        raise TensorError(f"{where}.data: non-finite values")
    return array


def encode(name: str, array: np.ndarray) -> ResponseOutput:
    return ResponseOutput(name=name, shape=list(array.shape), datatype=NUMPY_TO_OIP[array.dtype.name],
                          data=array.ravel().tolist())
