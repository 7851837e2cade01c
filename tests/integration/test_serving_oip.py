"""Open Inference Protocol v2 REST, /score and /readyz on real Serve over HTTP, and a fuzz test: never a 5xx."""

from __future__ import annotations

import json

import numpy as np
import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.integration


def get(url: str, path: str) -> requests.Response:
    return requests.get(f"{url}{path}", timeout=30)


def post(url: str, path: str, body) -> requests.Response:
    return requests.post(f"{url}{path}", json=body, timeout=30)


@pytest.fixture(scope="module")
def ranker_inputs(trained, tiny_world):
    """Encoded [user | item] rows for user 7 × items 0..5, and the ranker's own ONNX scores for them."""
    from rayml.features import FeatureEncoder
    from rayml.inference import ort_session

    registry, _ = trained
    version = registry.get("ranker", "production")
    users = tiny_world.user_features_table()
    items = tiny_world.item_features_table()
    user_x = FeatureEncoder.load(version.file("user_encoder.json")).transform(users.slice(7, 1))
    item_x = FeatureEncoder.load(version.file("item_encoder.json")).transform(items.slice(0, 6))
    x = np.concatenate([np.repeat(user_x, 6, 0), item_x], axis=1).astype(np.float32)
    return x, ort_session(version.file("model.onnx")).run(["score"], {"features": x})[0]


def tensor(x: np.ndarray, nested: bool = False, **change) -> dict:
    body = {"name": "features", "shape": list(x.shape), "datatype": "FP32",
            "data": x.tolist() if nested else x.ravel().tolist()}
    return body | change


def test_server_and_model_metadata(serve_url, ranker_inputs):
    x, _ = ranker_inputs
    assert get(serve_url, "/v2").json()["name"] == "rayml"
    assert get(serve_url, "/v2/health/live").json() == {"live": True}
    assert get(serve_url, "/v2/health/ready").json() == {"ready": True}
    meta = get(serve_url, "/v2/models/ranker").json()
    assert meta == {"name": "ranker", "versions": ["1"], "platform": "onnxruntime_onnx",
                    "inputs": [{"name": "features", "datatype": "FP32", "shape": [-1, x.shape[1]]}],
                    "outputs": [{"name": "score", "datatype": "FP32", "shape": [-1]}]}
    assert get(serve_url, "/v2/models/ranker/versions/1").json() == meta
    assert get(serve_url, "/v2/models/ranker/ready").json() == {"name": "ranker", "ready": True}
    assert get(serve_url, "/v2/models/retriever").json()["outputs"][0]["name"] == "embedding"


@pytest.mark.parametrize("nested", [False, True])
def test_ranker_infer_batch_matches_onnx_directly(serve_url, ranker_inputs, nested):
    x, expected = ranker_inputs
    response = post(serve_url, "/v2/models/ranker/versions/1/infer", {"id": "r1", "inputs": [tensor(x, nested)]})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model_name"] == "ranker" and body["model_version"] == "1" and body["id"] == "r1"
    (out,) = body["outputs"]
    assert out["name"] == "score" and out["shape"] == [6] and out["datatype"] == "FP32"
    np.testing.assert_allclose(out["data"], expected, rtol=1e-6)


def test_retriever_infer_returns_embeddings_with_the_bias_column(serve_url, trained, tiny_world):
    from rayml.features import FeatureEncoder

    registry, _ = trained
    version = registry.get("retriever")
    x = FeatureEncoder.load(version.file("user_encoder.json")).transform(tiny_world.user_features_table().slice(0, 3))
    body = post(serve_url, "/v2/models/retriever/infer", {"inputs": [
        {"name": "user_features", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}).json()
    emb = np.asarray(body["outputs"][0]["data"]).reshape(body["outputs"][0]["shape"])
    assert emb.shape[0] == 3 and np.allclose(emb[:, -1], 1.0)


@pytest.mark.parametrize(
    ("path", "change", "status", "field"),
    [
        ("/v2/models/nope/infer", {}, 404, "model_name"),
        ("/v2/models/ranker/versions/9/infer", {}, 404, "model_version"),
        ("/v2/models/ranker/infer", {"datatype": "FP64"}, 400, "inputs[0].datatype"),
        ("/v2/models/ranker/infer", {"name": "x"}, 400, "inputs[0].name"),
        ("/v2/models/ranker/infer", {"shape": [6]}, 400, "inputs[0].shape"),
        ("/v2/models/ranker/infer", {"shape": [6, 3]}, 400, "inputs[0].shape[1]"),
        ("/v2/models/ranker/infer", {"shape": [7, None]}, 400, "inputs[0].data"),
    ],
)
def test_bad_infer_requests_name_the_field(serve_url, ranker_inputs, path, change, status, field):
    x, _ = ranker_inputs
    body = tensor(x, **change)
    if body["shape"] == [7, None]:
        body["shape"] = [7, x.shape[1]]
    response = post(serve_url, path, {"inputs": [body]})
    assert response.status_code == status, response.text
    assert response.json()["error"].startswith(field), response.json()


def test_bad_tensor_values_and_schema(serve_url, ranker_inputs):
    x, _ = ranker_inputs
    data = x.ravel().tolist()
    data[3] = "high"
    response = post(serve_url, "/v2/models/ranker/infer", {"inputs": [tensor(x, data=data)]})
    assert response.status_code == 400 and response.json()["error"].startswith("inputs[0].data[3]")
    response = post(serve_url, "/v2/models/ranker/infer", {"inputs": [{"name": "features", "datatype": "FP32",
                                                                          "data": data}]})
    assert response.status_code == 400 and response.json()["error"].startswith("inputs[0].shape: Field required")
    response = post(serve_url, "/v2/models/ranker/infer", {"inputs": [tensor(x)], "outputs": [{"name": "logit"}]})
    assert response.status_code == 400 and response.json()["error"].startswith("outputs[0].name")


def test_score_endpoint_agrees_with_recommend(serve_url):
    rec = post(serve_url, "/recommend", {"user_id": 7, "k": 5}).json()
    response = post(serve_url, "/score", {"user_id": 7, "item_ids": rec["items"]})
    assert response.status_code == 200, response.text
    np.testing.assert_allclose(response.json()["scores"], rec["scores"], rtol=1e-6)
    assert post(serve_url, "/score", {"user_id": 7, "item_ids": []}).status_code == 422
    assert post(serve_url, "/score", {"user_id": 7, "item_ids": [10**9]}).json()["feature_missing"] == 1


def test_readyz(serve_url):
    body = get(serve_url, "/readyz").json()
    assert body["ready"] is True and body["ranker"] == "ranker:v1" and body["online_store"] == "embedded"


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                    max_leaves=12)
TENSOR = st.fixed_dictionaries({"name": st.sampled_from(["features", "x"]), "shape": st.lists(st.integers(-2, 40), max_size=3),
                                "datatype": st.sampled_from(["FP32", "FP64", "INT64", "BOOL", "BYTES", "fp32"]),
                                "data": st.lists(st.floats(allow_nan=False) | st.integers() | st.text(max_size=3), max_size=50)})


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(path=st.sampled_from(["/recommend", "/score", "/events", "/v2/models/ranker/infer",
                             "/v2/models/retriever/infer", "/v2/models/ranker/versions/1/infer"]),
       body=JSON | st.fixed_dictionaries({"inputs": st.lists(TENSOR, max_size=2)}) | st.fixed_dictionaries(
           {"user_id": st.integers(-5, 10**30) | st.text(max_size=3), "k": st.integers(-3, 200),
            "item_ids": st.lists(st.integers(-5, 10**30), max_size=5)}))
def test_generated_bad_requests_never_get_a_5xx(serve_url, path, body):
    response = requests.post(f"{serve_url}{path}", data=json.dumps(body), headers={"content-type": "application/json"},
                             timeout=30)
    assert response.status_code < 500, (path, body, response.status_code, response.text[:300])


@pytest.mark.parametrize("binary_in", [True, False], ids=["binary-in", "json-in"])
@pytest.mark.parametrize("binary_out", [True, False], ids=["binary-out", "json-out"])
def test_tritonclient_health_metadata_and_infer(serve_url, ranker_inputs, binary_in, binary_out):
    """The standard OIP client, in its default binary tensor mode and in JSON, both directions."""
    import tritonclient.http as triton

    x, expected = ranker_inputs
    client = triton.InferenceServerClient(url=serve_url.removeprefix("http://"))
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("ranker")
    meta = client.get_model_metadata("ranker")
    assert meta["inputs"][0]["shape"] == [-1, x.shape[1]] and "binary_tensor_data" in client.get_server_metadata()["extensions"]
    features = triton.InferInput("features", list(x.shape), "FP32")
    features.set_data_from_numpy(x, binary_data=binary_in)
    result = client.infer("ranker", [features], outputs=[triton.InferRequestedOutput("score", binary_data=binary_out)])
    np.testing.assert_allclose(result.as_numpy("score"), expected, rtol=1e-6)
    assert result.get_response()["model_version"] == "1"


def test_tritonclient_errors_name_the_field(serve_url, ranker_inputs):
    import tritonclient.http as triton
    from tritonclient.utils import InferenceServerException

    x, _ = ranker_inputs
    client = triton.InferenceServerClient(url=serve_url.removeprefix("http://"))
    wrong = triton.InferInput("features", [x.shape[0], x.shape[1] + 1], "FP32")
    wrong.set_data_from_numpy(np.zeros((x.shape[0], x.shape[1] + 1), np.float32))
    with pytest.raises(InferenceServerException, match=r"inputs\[0\]\.shape\[1\]"):
        client.infer("ranker", [wrong])


def test_malformed_binary_header_is_a_400_naming_it(serve_url, ranker_inputs):
    x, _ = ranker_inputs
    header = json.dumps({"inputs": [{"name": "features", "shape": list(x.shape), "datatype": "FP32",
                                     "parameters": {"binary_data_size": x.nbytes}}]}).encode()
    body = header + x.tobytes()
    for value, field in (("abc", "Inference-Header-Content-Length"), (str(len(body) + 10), "Inference-Header-Content-Length"),
                         (str(len(header) - 3), "body")):
        response = requests.post(f"{serve_url}/v2/models/ranker/infer", data=body, timeout=30,
                                 headers={"Inference-Header-Content-Length": value, "Content-Type": "application/octet-stream"})
        assert response.status_code == 400 and response.json()["error"].startswith(field), (value, response.text)
    short = header + x.tobytes()[:-4]
    response = requests.post(f"{serve_url}/v2/models/ranker/infer", data=short, timeout=30,
                             headers={"Inference-Header-Content-Length": str(len(header))})
    assert response.status_code == 400 and "binary_data_size" in response.json()["error"]
