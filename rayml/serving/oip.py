"""Open Inference Protocol (KServe v2) REST: request/response schemas, tensor decoding and the binary extension.

Tensors are JSON ``{"name", "shape", "datatype", "data"}`` with ``data`` row-major, flat or nested, or, with
Triton's binary tensor extension, ``parameters.binary_data_size`` bytes of little-endian row-major data after
the JSON header, whose length the ``Inference-Header-Content-Length`` header gives (what ``tritonclient.http``
sends by default). Every mismatch (datatype, shape, data length, byte count, unknown input) raises
:class:`TensorError` naming the offending field, which the app turns into ``400 {"error": ...}`` (the
protocol's error shape).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError

DATATYPES: dict[str, Any] = {
    "BOOL": np.bool_, "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64,
    "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
    "FP16": np.float16, "FP32": np.float32, "FP64": np.float64,
}
NUMPY_TO_OIP = {np.dtype(v).name: k for k, v in DATATYPES.items()}
HEADER_LENGTH = "Inference-Header-Content-Length"
"""The binary extension's HTTP header: how many leading body bytes are the JSON header."""

_SHARED_MEMORY = ("shared_memory_region", "shared_memory_byte_size", "shared_memory_offset")


class TensorError(ValueError):
    """A tensor that does not match its declaration or the model; the message starts with the field's path."""


class RequestInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    shape: list[StrictInt] = Field(min_length=1, max_length=8)
    datatype: Literal["BOOL", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64", "FP16",
                      "FP32", "FP64", "BYTES"]
    data: list[Any] | None = None  # None when the tensor travels as binary (parameters.binary_data_size)
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
    data: list[Any] | None = None  # None when sent as binary; parameters.binary_data_size then gives its bytes
    parameters: dict[str, Any] | None = None


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


def _path(loc: tuple[int | str, ...]) -> str:
    """A pydantic error location as the field path the other messages use: ``inputs[0].shape``."""
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else f".{part}" if path else str(part)
    return path or "body"


def _schema_error(exc: ValidationError) -> TensorError:
    errors = exc.errors(include_url=False, include_input=False)
    if errors[0]["type"] == "json_invalid":
        return TensorError(f"body: not valid JSON: {errors[0]['ctx']['error']}")
    shown = "; ".join(f"{_path(e['loc'])}: {e['msg']}" for e in errors[:3])
    return TensorError(shown + (f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""))


def _header_length(value: str, body_size: int) -> int:
    if not re.fullmatch(r"[0-9]+", value.strip()):
        raise TensorError(f"{HEADER_LENGTH}: {value!r} is not an integer")
    length = int(value)
    if length > body_size:
        raise TensorError(f"{HEADER_LENGTH}: {length} exceeds the body ({body_size} bytes)")
    return length


def _check_bounds(tensor: RequestInput, where: str, body_size: int) -> None:
    """Reject shapes no body of this size could carry, before anything multiplies them out."""
    for axis, dim in enumerate(tensor.shape):
        if dim < 0:
            raise TensorError(f"{where}.shape[{axis}]: {dim} is negative")
    # Every element takes at least one body byte in either encoding; nonzero dims bound zero-size tensors too.
    if math.prod(dim for dim in tensor.shape if dim) > max(body_size, 1):
        raise TensorError(f"{where}.shape: {tensor.shape} holds more elements than a {body_size}-byte body carries")


def _binary_size(tensor: RequestInput, where: str, has_binary: bool) -> int | None:
    """The input's ``parameters.binary_data_size``, checked against its data, shape and datatype."""
    params = tensor.parameters or {}
    for key in _SHARED_MEMORY:
        if key in params:
            raise TensorError(f"{where}.parameters.{key}: shared memory is not supported; send data or binary")
    size = params.get("binary_data_size")
    field = f"{where}.parameters.binary_data_size"
    if size is None:
        if tensor.data is None:
            raise TensorError(f"{where}.data: missing; give data or parameters.binary_data_size")
        return None
    if tensor.data is not None:
        raise TensorError(f"{field}: given together with data; send one of them")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise TensorError(f"{field}: {size!r} is not a byte count")
    if not has_binary:
        raise TensorError(f"{field}: binary data needs the {HEADER_LENGTH} header")
    if tensor.datatype != "BYTES":  # BYTES elements carry their own lengths
        needed = math.prod(tensor.shape) * np.dtype(DATATYPES[tensor.datatype]).itemsize
        if size != needed:
            raise TensorError(f"{field}: {size} bytes, but shape {tensor.shape} {tensor.datatype} needs {needed}")
    return size


def _binary_flag(params: dict[str, Any] | None, key: str, field: str) -> bool | None:
    value = (params or {}).get(key)
    if value is not None and not isinstance(value, bool):
        raise TensorError(f"{field}.{key}: {value!r} is not true or false")
    return value


def _check_outputs(request: InferenceRequest) -> None:
    _binary_flag(request.parameters, "binary_data_output", "parameters")
    for i, output in enumerate(request.outputs or []):
        params = output.parameters or {}
        for key in (*_SHARED_MEMORY, "classification"):
            if key in params:
                raise TensorError(f"outputs[{i}].parameters.{key}: not supported")
        _binary_flag(params, "binary_data", f"outputs[{i}].parameters")


def parse_infer_request(body: bytes, header_length: str | None = None) -> tuple[InferenceRequest, list[bytes | None]]:
    """Parse an infer request body, JSON or JSON header + binary tensors, whatever its content type.

    Args:
        body: the whole HTTP body; the caller bounds its size.
        header_length: the ``Inference-Header-Content-Length`` header's value, or None when absent (then the
            whole body is JSON and every input must carry ``data``).

    Returns:
        The request and, per input in order, its raw little-endian bytes (binary inputs) or None (``data``
        inline). Hand both to :func:`decode`.

    Raises:
        TensorError: anything malformed, the message starting with the field's path.
    """
    split = len(body) if header_length is None else _header_length(header_length, len(body))
    try:
        request = InferenceRequest.model_validate_json(body[:split])
    except ValidationError as exc:
        raise _schema_error(exc) from None
    _check_outputs(request)
    binary = memoryview(body)[split:]
    raws: list[bytes | None] = []
    offset = 0
    for index, tensor in enumerate(request.inputs):
        where = f"inputs[{index}]"
        _check_bounds(tensor, where, len(body))
        size = _binary_size(tensor, where, header_length is not None)
        if size is None:
            raws.append(None)
            continue
        if offset + size > len(binary):
            raise TensorError(f"{where}.parameters.binary_data_size: {size} bytes at offset {offset} run past the "
                              f"{len(binary)} bytes after the JSON header")
        raws.append(bytes(binary[offset:offset + size]))
        offset += size
    if offset != len(binary):
        raise TensorError(f"body: {len(binary) - offset} bytes follow the JSON header ({split} bytes) and the "
                          f"binary inputs ({offset} bytes)")
    return request, raws


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


def _from_json(tensor: RequestInput, where: str, data: list[Any]) -> np.ndarray:
    flat = _flatten(data)
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
    return np.asarray(flat, dtype=DATATYPES[tensor.datatype]).reshape(tensor.shape)


def _from_binary(tensor: RequestInput, where: str, raw: bytes) -> np.ndarray:
    dtype = np.dtype(DATATYPES[tensor.datatype])
    needed = math.prod(tensor.shape) * dtype.itemsize
    if len(raw) != needed:
        raise TensorError(f"{where}.parameters.binary_data_size: {len(raw)} bytes, but shape {tensor.shape} "
                          f"{tensor.datatype} needs {needed}")
    if tensor.datatype == "BOOL" and np.frombuffer(raw, np.uint8).max(initial=0) > 1:
        raise TensorError(f"{where}: binary BOOL data holds a byte other than 0 or 1")
    # astype copies into native byte order: a writable array that does not pin the request body.
    return np.frombuffer(raw, dtype.newbyteorder("<")).astype(dtype).reshape(tensor.shape)


def decode(tensor: RequestInput, index: int, spec: TensorSpec, raw: bytes | None = None) -> np.ndarray:
    """The tensor as a numpy array of the model's dtype, checked against ``spec``.

    Args:
        tensor: an input of a request from :func:`parse_infer_request`, which bounds its shape by the body.
        index: its position in ``inputs``, for the error messages.
        spec: what the model takes.
        raw: its binary bytes from :func:`parse_infer_request`, or None when it carries ``data``.
    """
    where = f"inputs[{index}]"
    if tensor.name != spec.name:
        raise TensorError(f"{where}.name: unknown input {tensor.name!r}; the model takes {spec.name!r}")
    if tensor.datatype != spec.datatype:
        raise TensorError(f"{where}.datatype: {tensor.datatype} given, the model takes {spec.datatype}")
    if tensor.datatype not in DATATYPES:
        raise TensorError(f"{where}.datatype: {tensor.datatype} tensors are not supported")
    if len(tensor.shape) != len(spec.shape):
        raise TensorError(f"{where}.shape: {tensor.shape} has rank {len(tensor.shape)}, the model takes {spec.shape}")
    for axis, (given, wanted) in enumerate(zip(tensor.shape, spec.shape, strict=True)):
        if given < 0 or (wanted >= 0 and given != wanted):
            raise TensorError(f"{where}.shape[{axis}]: {given} given, the model takes {spec.shape}")
    if raw is not None:
        array = _from_binary(tensor, where, raw)
    elif tensor.data is not None:
        array = _from_json(tensor, where, tensor.data)
    else:
        raise TensorError(f"{where}.data: missing; give data or parameters.binary_data_size")
    if tensor.datatype.startswith("FP") and not np.isfinite(array).all():
        raise TensorError(f"{where}.data: non-finite values")
    return array


def encode(name: str, array: np.ndarray) -> ResponseOutput:
    """One output tensor as JSON ``data``."""
    return ResponseOutput(name=name, shape=list(array.shape), datatype=NUMPY_TO_OIP[array.dtype.name],
                          data=array.ravel().tolist())


def _wants_binary(request: InferenceRequest, name: str) -> bool:
    """The output's own ``parameters.binary_data``, else the request's ``parameters.binary_data_output``."""
    for output in request.outputs or []:
        flag = (output.parameters or {}).get("binary_data")
        if output.name == name and flag is not None:
            return bool(flag)
    return bool((request.parameters or {}).get("binary_data_output", False))


def encode_infer_response(request: InferenceRequest, outputs: Mapping[str, np.ndarray], *, model_name: str,
                          model_version: str | None) -> tuple[bytes, dict[str, str]]:
    """The response body and headers for ``outputs``, binary where the request asked for binary.

    Outputs go in ``outputs``' order. Binary ones carry ``parameters.binary_data_size`` instead of ``data`` and
    their little-endian bytes follow the JSON header, whose length the ``Inference-Header-Content-Length``
    header then gives (content type ``application/octet-stream``); otherwise the body is plain JSON.
    """
    tensors: list[ResponseOutput] = []
    raws: list[bytes] = []
    for name, array in outputs.items():
        if not _wants_binary(request, name):
            tensors.append(encode(name, array))
            continue
        raw = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
        tensors.append(ResponseOutput(name=name, shape=list(array.shape), datatype=NUMPY_TO_OIP[array.dtype.name],
                                      parameters={"binary_data_size": len(raw)}))
        raws.append(raw)
    header = InferenceResponse(model_name=model_name, model_version=model_version, id=request.id,
                               outputs=tensors).model_dump_json(exclude_none=True).encode()
    if not raws:
        return header, {"Content-Type": "application/json"}
    return header + b"".join(raws), {"Content-Type": "application/octet-stream", HEADER_LENGTH: str(len(header))}
