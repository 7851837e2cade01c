"""The registry over S3: a real S3 HTTP endpoint (moto in server mode, on loopback), reached by its URI.

Round trip (publish, aliases, rollback, profiles), checksums verified in the download cache, downloads racing on one
node, and the errors a wrong URI, an unreachable endpoint or a missing bucket give: each names the URI.
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import boto3
import pyarrow.fs as pafs
import pytest
from moto.server import ThreadedMotoServer

from rayml.registry import ArtifactCorruptError, ModelRegistry, RegistryError
from rayml.rollout.state import RolloutStore, RolloutStoreUnsupported
from tests.conftest import free_port

pytestmark = pytest.mark.unit
AWS_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_EC2_METADATA_DISABLED": "true"}


@pytest.fixture(scope="module")
def s3():
    """A moto S3 server on a free loopback port with an empty bucket ``models``; yields ``host:port``."""
    saved = {k: os.environ.get(k) for k in AWS_ENV}
    os.environ.update(AWS_ENV)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"{host}:{port}"
    boto3.client("s3", endpoint_url=f"http://{endpoint}", region_name="us-east-1").create_bucket(Bucket="models")
    try:
        yield endpoint
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def uri(endpoint: str, path: str) -> str:
    return f"s3://{path}?endpoint_override={endpoint}&scheme=http"


@pytest.fixture
def registry_uri(s3, request) -> str:
    return uri(s3, f"models/{request.node.name}")  # one prefix per test


def publish(registry: ModelRegistry, tmp_path, tag: str):
    files = {}
    for name, size in (("model.onnx", 300_000), ("encoder.json", 2_000)):
        src = tmp_path / f"{tag}-{name}"
        src.write_bytes((f"{tag}:{name}:".encode() * size)[:size])
        files[name] = src
    return registry.register("ranker", files, {"tag": tag, "parity": {"passed": True}})


def test_publish_aliases_and_get_round_trip_over_s3(registry_uri, tmp_path):
    cache = tmp_path / "cache"
    writer = ModelRegistry(registry_uri, cache_dir=tmp_path / "writer-cache")
    v1, v2 = publish(writer, tmp_path, "a"), publish(writer, tmp_path, "b")
    assert (v1.version, v2.version) == (1, 2)
    writer.set_alias("ranker", "production", 1)
    writer.set_alias("ranker", "production", 2, reason="better")
    assert writer.rollback("ranker", "production") == 1

    reader = ModelRegistry(registry_uri, cache_dir=cache)  # another process or node: nothing shared but the URI
    assert not reader.local and reader.models() == ["ranker"] and reader.versions("ranker") == [1, 2]
    assert reader.aliases("ranker") == {"production": 1}
    assert [(h["from"], h["to"]) for h in reader.alias_history("ranker")] == [(None, 1), (1, 2), (2, 1)]
    got = reader.get("ranker", "production")
    assert got.label == "ranker:v1" and got.metadata["tag"] == "a"
    assert got.path.is_relative_to(cache)  # downloaded into this reader's cache, verified there
    assert got.file("model.onnx").read_bytes() == (tmp_path / "a-model.onnx").read_bytes()
    assert reader.get("ranker", "v2").file("encoder.json").read_bytes() == (tmp_path / "b-encoder.json").read_bytes()
    keys = {i.path for i in reader.fs.get_file_info(pafs.FileSelector(reader.base, recursive=True))}
    assert f"{reader.base}/ranker/versions/1/metadata.json" in keys
    assert not any(".stage-" in k for k in keys), "a staged version was left behind"


def test_the_cache_is_reused_and_heals_a_damaged_file(registry_uri, tmp_path):
    publish(ModelRegistry(registry_uri), tmp_path, "a")
    reader = ModelRegistry(registry_uri, cache_dir=tmp_path / "cache")
    model = reader.get("ranker", 1).file("model.onnx")
    first = model.stat().st_mtime_ns
    time.sleep(0.01)
    assert reader.get("ranker", 1).file("model.onnx").stat().st_mtime_ns == first  # verified, not downloaded again
    model.write_bytes(b"truncated")  # a damaged cache (disk error, a killed copy from an older version)
    assert reader.get("ranker", 1).file("model.onnx").read_bytes() == (tmp_path / "a-model.onnx").read_bytes()
    assert not list(model.parent.glob(".*.part")), "a partial download was left behind"


def test_actors_downloading_one_version_at_once_all_get_whole_files(registry_uri, tmp_path):
    publish(ModelRegistry(registry_uri), tmp_path, "a")
    cache = tmp_path / "cache"
    start = threading.Barrier(6)

    def load(_: int) -> bytes:
        start.wait()
        return ModelRegistry(registry_uri, cache_dir=cache).get("ranker", 1).file("model.onnx").read_bytes()

    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(load, range(6)))  # each get() verified every checksum
    assert set(results) == {(tmp_path / "a-model.onnx").read_bytes()}


def test_a_corrupt_or_missing_remote_artifact_is_refused(registry_uri, tmp_path):
    writer = ModelRegistry(registry_uri, cache_dir=tmp_path / "writer-cache")
    publish(writer, tmp_path, "a")
    version_dir = f"{writer.base}/ranker/versions/1"
    with writer.fs.open_output_stream(f"{version_dir}/model.onnx") as out:
        out.write(b"someone overwrote the object")
    assert writer.get("ranker", 1).file("model.onnx").read_bytes() == (tmp_path / "a-model.onnx").read_bytes()
    with pytest.raises(ArtifactCorruptError, match=r"artifact model\.onnx fails its checksum"):
        ModelRegistry(registry_uri, cache_dir=tmp_path / "cache").get("ranker", 1)  # a node without that cache
    writer.fs.delete_file(f"{version_dir}/encoder.json")
    fresh = ModelRegistry(registry_uri, cache_dir=tmp_path / "other-cache")
    with pytest.raises(ArtifactCorruptError, match=r"artifact encoder.json is missing in registry s3://models/"):
        fresh.get("ranker", 1)


def test_profiles_are_stored_beside_the_version_over_s3(registry_uri, tmp_path):
    registry = ModelRegistry(registry_uri)
    publish(registry, tmp_path, "a")
    registry.save_profile("ranker", 1, "training", b"sketch one", {"rows": 10})
    registry.save_profile("ranker", 1, "training", b"sketch two", {"rows": 20})
    reader = ModelRegistry(registry_uri)
    assert reader.load_profile("ranker", 1, "training") == b"sketch two"
    assert reader.profiles("ranker", 1)["training"]["file"] == "training-2.bin"


def test_a_wrong_uri_names_itself(s3):
    with pytest.raises(RegistryError, match=r"invalid registry URI s3://models/x\?bogus=1: .*'bogus'"):
        ModelRegistry("s3://models/x?bogus=1")
    with pytest.raises(RegistryError, match=r"invalid registry URI nope://models/x: "):
        ModelRegistry("nope://models/x")


def test_a_uri_collapsed_by_pathlib_is_refused_not_taken_for_a_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    collapsed = Path("s3://models/reg?endpoint_override=127.0.0.1:9000&scheme=http")  # what a Path-typed option gives
    with pytest.raises(RegistryError, match=r"registry s3:/models/reg\?.* looks like a URI whose '//' was collapsed"):
        ModelRegistry(collapsed)
    assert not (tmp_path / "s3:").exists()


def test_an_unreachable_endpoint_names_the_uri_and_does_not_hang():
    dead = uri(f"127.0.0.1:{free_port()}", "models/reg")  # nothing listens there
    started = time.monotonic()
    with pytest.raises(RegistryError, match=r"registry s3://models/reg\?endpoint_override=127\.0\.0\.1:\d+&scheme=http: "
                       r".*(connect|NETWORK)"):
        ModelRegistry(dead).get("ranker", "production")
    assert time.monotonic() - started < 30  # the AWS SDK's retries: about 6 s here


def test_a_missing_bucket_is_named(s3, tmp_path):
    missing = uri(s3, "no-such-bucket/reg")
    with pytest.raises(RegistryError, match=r"bucket 'no-such-bucket' of registry s3://no-such-bucket/reg\?.* does not "
                                            r"exist"):
        ModelRegistry(missing).get("ranker", "production")
    with pytest.raises(RegistryError, match=r"registry s3://no-such-bucket/reg.*: .*no-such-bucket"):
        publish(ModelRegistry(missing), tmp_path, "a")  # pyarrow never creates buckets unless told to


def test_secrets_in_the_uri_never_reach_a_message(s3):
    secret = f"s3://AKIDEXAMPLE:VERYSECRET@no-such-bucket/reg?endpoint_override={s3}&scheme=http"
    with pytest.raises(RegistryError) as caught:
        ModelRegistry(secret).get("ranker", "production")
    assert "VERYSECRET" not in str(caught.value) and "AKIDEXAMPLE:***@no-such-bucket" in str(caught.value)


def test_a_local_registry_missing_on_this_machine_says_so(tmp_path):
    with pytest.raises(RegistryError, match=rf"registry directory {tmp_path}/gone does not exist on this machine .*URI"):
        ModelRegistry(tmp_path / "gone").get("ranker", "production")


def test_rollouts_refuse_a_uri_registry_with_a_clear_error(registry_uri, tmp_path):
    store = RolloutStore(registry_uri, "ranker")
    assert store.read() is None and store.shadow() is None and store.shadow_reports() == {}  # replicas poll this
    with pytest.raises(RolloutStoreUnsupported, match=r"registry s3://models/.* is a URI: rollouts need .*file locks"):
        store.acquire("controller", 30, time.time())
    with pytest.raises(RolloutStoreUnsupported):
        store.set_shadow({"alias": "shadow", "config": {}})
    with pytest.raises(RolloutStoreUnsupported):
        RolloutStore(Path(registry_uri), "ranker").acquire("controller", 30, time.time())  # the '//' collapsed
    assert not (tmp_path.cwd() / "s3:").exists(), "a URI was taken for a local directory"
