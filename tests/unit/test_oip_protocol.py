"""Open Inference Protocol bodies as tritonclient writes and reads them: JSON, and the binary tensor extension."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tritonclient.http import InferenceServerClient, InferInput, InferRequestedOutput
from tritonclient.utils import np_to_triton_dtype

from rayml.serving import oip

pytestmark = pytest.mark.unit

X = np.arange(6, dtype=np.float32).reshape(2, 3) / 7  # [2, 3]
FEATURES = oip.TensorSpec(name="features", datatype="FP32", shape=[-1, 3])
NUMERIC = ["BOOL", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64", "FP16", "FP32", "FP64"]


def triton_input(name: str, array: np.ndarray, binary: bool = True) -> InferInput:
    tensor = InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
    return tensor.set_data_from_numpy(array, binary_data=binary)


def triton_body(inputs: list[InferInput], **kwargs) -> tuple[bytes, str | None]:
    """The body and ``Inference-Header-Content-Length`` that ``InferenceServerClient.infer`` would send."""
    body, json_size = InferenceServerClient.generate_request_body(inputs, **kwargs)
    return body, None if json_size is None else str(json_size)


def handmade(header: dict, *raws: bytes) -> tuple[bytes, str]:
    text = json.dumps(header).encode()
    return text + b"".join(raws), str(len(text))


def binary_features(shape: list[int], size: int, **tensor) -> dict:
    return {"inputs": [{"name": "features", "shape": shape, "datatype": "FP32",
                        "parameters": {"binary_data_size": size}} | tensor]}


def parse_and_decode(body: bytes, header: str | None, spec: oip.TensorSpec = FEATURES) -> np.ndarray:
    request, raws = oip.parse_infer_request(body, header)
    return oip.decode(request.inputs[0], 0, spec, raws[0])


def fail(body: bytes, header: str | None = None, spec: oip.TensorSpec = FEATURES) -> str:
    with pytest.raises(oip.TensorError) as caught:
        parse_and_decode(body, header, spec)
    return str(caught.value)


# ----- requests tritonclient builds -----

@pytest.mark.parametrize("datatype", NUMERIC)
@pytest.mark.parametrize("binary", [True, False])
def test_tritonclient_inputs_decode_to_the_same_array(datatype, binary):
    array = (np.arange(6).reshape(2, 3) % 2 == 1) if datatype == "BOOL" else (
        np.arange(6).reshape(2, 3) * 3).astype(oip.DATATYPES[datatype])
    body, header = triton_body([triton_input("x", array, binary)])
    assert (header is not None) == binary  # tritonclient sends the header only with binary inputs
    got = parse_and_decode(body, header, oip.TensorSpec(name="x", datatype=datatype, shape=[2, -1]))
    assert got.dtype == array.dtype and got.flags.writeable
    np.testing.assert_array_equal(got, array)


def test_binary_and_json_inputs_mix_in_input_order():
    a, b, c = X, np.array([[1, 2, 3]], np.int64), np.array([True, False])
    body, header = triton_body([triton_input("a", a), triton_input("b", b, binary=False), triton_input("c", c)],
                               request_id="r1", parameters={"tenant": "t"})
    request, raws = oip.parse_infer_request(body, header)
    assert request.id == "r1" and raws[1] is None and [len(r or b"") for r in raws] == [24, 0, 2]
    specs = [oip.TensorSpec(name="a", datatype="FP32", shape=[-1, 3]),
             oip.TensorSpec(name="b", datatype="INT64", shape=[1, 3]), oip.TensorSpec(name="c", datatype="BOOL", shape=[2])]
    for i, (spec, want) in enumerate(zip(specs, [a, b, c], strict=True)):
        np.testing.assert_array_equal(oip.decode(request.inputs[i], i, spec, raws[i]), want)


def test_json_bodies_without_the_header_still_parse_flat_or_nested():
    for data in (X.ravel().tolist(), X.tolist()):
        body = json.dumps({"id": "j", "inputs": [{"name": "features", "shape": [2, 3], "datatype": "FP32",
                                                  "data": data}]}).encode()
        np.testing.assert_array_equal(parse_and_decode(body, None), X)


@given(datatype=st.sampled_from(NUMERIC), shape=st.lists(st.integers(0, 4), min_size=1, max_size=4),
       binary=st.booleans(), seed=st.integers(0, 2**32 - 1))
@settings(max_examples=150, deadline=None)
def test_any_numeric_tensor_round_trips_through_tritonclient(datatype, shape, binary, seed):
    dtype = np.dtype(oip.DATATYPES[datatype])
    rng = np.random.default_rng(seed)
    if datatype == "BOOL":
        array = rng.random(shape) < 0.5
    elif dtype.kind == "f":
        array = rng.normal(size=shape).astype(dtype)
    else:
        info = np.iinfo(dtype)
        array = rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)
    body, header = triton_body([triton_input("x", array, binary)])
    spec = oip.TensorSpec(name="x", datatype=datatype, shape=[-1] * len(shape))
    np.testing.assert_array_equal(parse_and_decode(body, header, spec), array)


@given(cut=st.integers(0, 400), header_shift=st.integers(-3, 3), junk=st.binary(max_size=8))
@settings(max_examples=300, deadline=None)
def test_damaged_bodies_raise_only_tensor_errors(cut, header_shift, junk):
    body, header = triton_body([triton_input("features", X), triton_input("y", X, binary=False)])
    assert header is not None
    damaged = body[:cut] + junk
    try:
        request, raws = oip.parse_infer_request(damaged, str(max(int(header) + header_shift, 0)))
        for i, tensor in enumerate(request.inputs):
            oip.decode(tensor, i, oip.TensorSpec(name=tensor.name, datatype=tensor.datatype,
                                                 shape=[-1] * len(tensor.shape)), raws[i])
    except oip.TensorError as exc:
        assert str(exc).startswith(("body: ", "inputs[", f"{oip.HEADER_LENGTH}: ")), exc


# ----- malformed requests: each error starts with the field at fault -----

def test_header_length_must_be_an_integer_within_the_body():
    body, _ = handmade(binary_features([2, 3], 24), X.tobytes())
    for value in ("abc", "-5", "1_0", "", "2.0"):
        assert fail(body, value) == f"Inference-Header-Content-Length: {value!r} is not an integer"
    assert fail(body, "999") == f"Inference-Header-Content-Length: 999 exceeds the body ({len(body)} bytes)"


def test_binary_size_must_match_shape_and_datatype():
    body, header = handmade(binary_features([2, 3], 12), X.tobytes()[:12])
    assert fail(body, header) == "inputs[0].parameters.binary_data_size: 12 bytes, but shape [2, 3] FP32 needs 24"


def test_binary_sizes_past_the_body_and_trailing_bytes():
    request = {"inputs": [binary_features([2, 3], 24)["inputs"][0], binary_features([2, 3], 24)["inputs"][0]]}
    body, header = handmade(request, X.tobytes(), X.tobytes()[:10])
    assert fail(body, header).startswith("inputs[1].parameters.binary_data_size: 24 bytes at offset 24 run past "
                                         "the 34 bytes after the JSON header")
    body, header = triton_body([triton_input("features", X)])
    assert fail(body + b"xy", header).startswith("body: 2 bytes follow the JSON header")
    assert fail(body, str(int(header) - 1)).startswith("body: not valid JSON")  # the header cut mid-JSON
    body, header = triton_body([triton_input("features", X, binary=False)])
    assert fail(body + b"\0" * 4, str(len(body))).startswith("body: 4 bytes follow")


@pytest.mark.parametrize("body", [b"{nope", b"", b"\xff\xfe", b"[" * 5000])
def test_invalid_json_is_named(body):
    assert fail(body).startswith("body: not valid JSON: ")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"datatype": "fp32"}, "inputs[0].datatype: Input should be 'BOOL'"),
        ({"shape": None}, "inputs[0].shape: Input should be a valid array"),
        ({"shape": [2, True]}, "inputs[0].shape[1]: Input should be a valid integer"),
        ({"shape": []}, "inputs[0].shape: List should have at least 1 item"),
        ({"colour": "red"}, "inputs[0].colour: Extra inputs are not permitted"),
        ({"data": "abc"}, "inputs[0].data: Input should be a valid array"),
    ],
)
def test_schema_errors_name_the_field_path(change, message):
    tensor = {"name": "features", "shape": [2, 3], "datatype": "FP32", "data": X.ravel().tolist()} | change
    assert fail(json.dumps({"inputs": [tensor]}).encode()).startswith(message)


def test_schema_errors_outside_the_inputs():
    assert fail(b"[1]").startswith("body: Input should be an object")
    assert fail(b'{"inputs": []}').startswith("inputs: List should have at least 1 item")
    many = {"inputs": [{"name": 1} for _ in range(5)]}
    assert fail(json.dumps(many).encode()).endswith("(and 12 more)")  # 5 inputs × (name, shape, datatype) + 3 shown


def test_data_and_binary_size_are_exclusive_and_one_is_needed():
    body, header = handmade(binary_features([2, 3], 24, data=X.ravel().tolist()), X.tobytes())
    assert fail(body, header) == "inputs[0].parameters.binary_data_size: given together with data; send one of them"
    body = json.dumps({"inputs": [{"name": "features", "shape": [2, 3], "datatype": "FP32"}]}).encode()
    assert fail(body).startswith("inputs[0].data: missing")
    body, header = handmade(binary_features([2, 3], 24), X.tobytes())
    assert fail(body[:int(header)], None).startswith(
        "inputs[0].parameters.binary_data_size: binary data needs the Inference-Header-Content-Length header")
    for size in ("24", -1, True, 2.5):
        body, header = handmade(binary_features([2, 3], size), X.tobytes())
        assert fail(body, header).startswith(f"inputs[0].parameters.binary_data_size: {size!r} is not a byte count")


@pytest.mark.parametrize("shape", [[2**40, 2**40], [0, 2**70], [3, 2**62, 0]])
@pytest.mark.parametrize("binary", [True, False])
def test_huge_shapes_are_tensor_errors_not_memory_errors(shape, binary):
    if binary:
        body, header = handmade(binary_features(shape, 24), X.tobytes())
    else:
        body, header = json.dumps({"inputs": [{"name": "f", "shape": shape, "datatype": "FP32", "data": []}]}).encode(), None
    assert fail(body, header).startswith(f"inputs[0].shape: {shape} holds more elements than a {len(body)}-byte body")


def test_negative_dims_and_unsupported_extensions():
    body = json.dumps({"inputs": [{"name": "f", "shape": [2, -1], "datatype": "FP32", "data": [1, 2]}]}).encode()
    assert fail(body) == "inputs[0].shape[1]: -1 is negative"
    shared = InferInput("features", [2, 3], "FP32")
    shared.set_shared_memory("region", 24)
    assert fail(*triton_body([shared])).startswith("inputs[0].parameters.shared_memory_region: shared memory is not")
    body, header = triton_body([triton_input("features", X)], outputs=[InferRequestedOutput("score", class_count=2)])
    assert fail(body, header) == "outputs[0].parameters.classification: not supported"
    body, header = handmade(binary_features([2, 3], 24) | {"outputs": [{"name": "s", "parameters": {"binary_data": "yes"}}]},
                            X.tobytes())
    assert fail(body, header) == "outputs[0].parameters.binary_data: 'yes' is not true or false"
    body, header = handmade(binary_features([2, 3], 24) | {"parameters": {"binary_data_output": 1}}, X.tobytes())
    assert fail(body, header) == "parameters.binary_data_output: 1 is not true or false"


# ----- binary inputs meet the model spec the same way JSON ones do -----

@pytest.mark.parametrize(
    ("array", "name", "message"),
    [
        (X, "x", "inputs[0].name: unknown input 'x'; the model takes 'features'"),
        (X.astype(np.float64), "features", "inputs[0].datatype: FP64 given, the model takes FP32"),
        (X.ravel(), "features", "inputs[0].shape: [6] has rank 1, the model takes [-1, 3]"),
        (X.reshape(3, 2), "features", "inputs[0].shape[1]: 2 given, the model takes [-1, 3]"),
        (np.array([[1, np.nan, 3]], np.float32), "features", "inputs[0].data: non-finite values"),
        (np.array([[1, np.inf, 3]], np.float32), "features", "inputs[0].data: non-finite values"),
    ],
)
@pytest.mark.parametrize("binary", [True, False])
def test_spec_checks_are_the_same_for_binary_and_json(array, name, message, binary):
    assert fail(*triton_body([triton_input(name, array, binary)])) == message


def test_binary_bool_bytes_must_be_zero_or_one_and_bytes_tensors_are_refused():
    body, header = handmade({"inputs": [{"name": "m", "shape": [3], "datatype": "BOOL",
                                         "parameters": {"binary_data_size": 3}}]}, b"\x00\x01\x02")
    assert fail(body, header, oip.TensorSpec(name="m", datatype="BOOL", shape=[3])) == (
        "inputs[0]: binary BOOL data holds a byte other than 0 or 1")
    words = triton_input("w", np.array([b"ab", b"c"], dtype=np.object_))
    _, raws = oip.parse_infer_request(*triton_body([words]))
    assert raws[0] == b"\x02\x00\x00\x00ab\x01\x00\x00\x00c"  # sliced whole: BYTES sizes are not shape × width
    assert fail(*triton_body([words]), oip.TensorSpec(name="w", datatype="BYTES", shape=[2])) == (
        "inputs[0].datatype: BYTES tensors are not supported")


def test_json_value_errors_are_unchanged():
    data = X.ravel().tolist()
    data[3] = "high"
    body = json.dumps({"inputs": [{"name": "features", "shape": [2, 3], "datatype": "FP32", "data": data}]}).encode()
    assert fail(body) == "inputs[0].data[3]: 'high' is not a FP32 value"
    body = json.dumps({"inputs": [{"name": "features", "shape": [3, 3], "datatype": "FP32",
                                   "data": X.ravel().tolist()}]}).encode()
    assert fail(body) == "inputs[0].data: 6 values for shape [3, 3] (needs 9)"


# ----- responses tritonclient reads back -----

def respond(request_body: bytes, header: str | None, outputs: dict[str, np.ndarray]):
    request, _ = oip.parse_infer_request(request_body, header)
    body, headers = oip.encode_infer_response(request, outputs, model_name="ranker", model_version="1")
    length = headers.get(oip.HEADER_LENGTH)
    result = InferenceServerClient.parse_response_body(body, header_length=None if length is None else int(length))
    return result, headers


def test_default_tritonclient_request_gets_binary_outputs_it_can_read():
    scores, emb = np.array([0.25, -1.5, 3.0], np.float32), np.arange(6, dtype=np.float64).reshape(3, 2)
    result, headers = respond(*triton_body([triton_input("features", X)], request_id="r9"),
                              {"score": scores, "embedding": emb})  # no outputs named → binary_data_output
    assert headers["Content-Type"] == "application/octet-stream"
    np.testing.assert_array_equal(result.as_numpy("score"), scores)
    np.testing.assert_array_equal(result.as_numpy("embedding"), emb)
    response = result.get_response()
    assert response["id"] == "r9" and response["model_name"] == "ranker" and response["model_version"] == "1"
    assert [o.get("parameters") for o in response["outputs"]] == [{"binary_data_size": 12}, {"binary_data_size": 48}]
    assert all("data" not in o for o in response["outputs"])


def test_each_output_can_ask_for_json_or_binary():
    scores, emb = np.array([0.5, 2.0], np.float32), np.zeros((0, 4), np.float32)
    outputs = [InferRequestedOutput("score", binary_data=False), InferRequestedOutput("embedding", binary_data=True)]
    result, headers = respond(*triton_body([triton_input("features", X)], outputs=outputs),
                              {"score": scores, "embedding": emb})
    assert oip.HEADER_LENGTH in headers
    assert result.get_output("score")["data"] == [0.5, 2.0]
    np.testing.assert_array_equal(result.as_numpy("score"), scores)
    assert result.as_numpy("embedding").shape == (0, 4)  # a zero-size binary output: binary_data_size 0


def test_a_per_output_flag_overrides_binary_data_output():
    request = {"parameters": {"binary_data_output": True}, "outputs": [{"name": "score", "parameters": {"binary_data": False}}],
               "inputs": [{"name": "features", "shape": [1], "datatype": "FP32", "data": [1.0]}]}
    result, _ = respond(json.dumps(request).encode(), None, {"score": np.array([1.0], np.float32),
                                                             "embedding": np.array([2.0], np.float32)})
    assert "data" in result.get_output("score") and "data" not in result.get_output("embedding")


def test_json_requests_get_plain_json_responses():
    body, header = triton_body([triton_input("features", X, binary=False)],
                               outputs=[InferRequestedOutput("score", binary_data=False)])
    result, headers = respond(body, header, {"score": np.array([0.1, 0.2], np.float32)})
    assert headers == {"Content-Type": "application/json"}
    np.testing.assert_allclose(result.as_numpy("score"), [0.1, 0.2])
    plain = json.loads(oip.encode_infer_response(oip.parse_infer_request(body)[0], {"score": np.array([1.0], np.float32)},
                                                 model_name="ranker", model_version=None)[0])
    assert plain == {"model_name": "ranker", "outputs": [{"name": "score", "shape": [1], "datatype": "FP32",
                                                          "data": [1.0]}]}


def test_binary_outputs_are_little_endian_whatever_the_array_order():
    big = np.array([[1.5, -2.0], [3.0, 4.0]], dtype=">f8").T  # big-endian and not C-contiguous
    result, _ = respond(*triton_body([triton_input("features", X)]), {"score": big})
    np.testing.assert_array_equal(result.as_numpy("score"), big)
