"""Models by registry URI across nodes: a worker node that cannot see the head's registry directory.

One machine, two Ray nodes. The worker node is started in its own mount namespace (``unshare --mount``) with an empty
tmpfs over the directory that holds the head's local registry, so its raylet and every Ray worker it spawns see
nothing there, as a node without shared storage would. A custom resource only that node has pins the work to it.

- A batch job given the local registry path fails fast, with an error naming the node and the registry.
- The same job given the registry's S3 URI (a moto S3 server on loopback, a real HTTP endpoint) completes, each
  entity scored once with the scores the driver computes from the same version; so does the candidates job.
- A Serve replica of the ``Ranker`` deployment (the split plan's ranking stage) placed on that node loads the
  ranker through the URI and scores rows.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import textwrap
import time
from pathlib import Path

import boto3
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from moto.server import ThreadedMotoServer

from tests.conftest import MEASURED, REPO, free_port
from tests.e2e.conftest import BIN, cli_env, kill_pids, pids_with_marker

pytestmark = [pytest.mark.e2e]
FEATURES = [f"f{j}" for j in range(8)]
SHARDS, ROWS_PER_SHARD = 4, 5_000
AWS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
       "AWS_EC2_METADATA_DISABLED": "true"}


def publish(root: Path, s3_uri: str) -> tuple[Path, str]:
    """Input shards, and one entity scorer published both to a local registry and to the S3 one (also as a
    ``ranker``, which is what the Ranker deployment serves). Returns the input directory and the model label."""
    from rayml.features import FeatureEncoder
    from rayml.models.entity_scorer import MLPScorer, publish_entity_scorer
    from rayml.registry import ModelRegistry

    data = root / "entities"
    data.mkdir()
    rng = np.random.default_rng(0)
    for i in range(SHARDS):
        ids = np.arange(i * ROWS_PER_SHARD, (i + 1) * ROWS_PER_SHARD)
        pq.write_table(pa.table({"entity_id": ids, **{f: rng.normal(size=len(ids)) for f in FEATURES}}),
                       data / f"part-{i:03d}.parquet")
    sample = pq.read_table(data / "part-000.parquet")
    encoder = FeatureEncoder.fit(sample, "entity_id")
    torch.manual_seed(0)
    local = ModelRegistry(root / "hidden" / "registry")
    version = publish_entity_scorer(local, "scorer", MLPScorer(encoder.width, (32,)), encoder,
                                    encoder.transform(sample.slice(0, 256)), {})
    local.set_alias("scorer", "production", version.version)
    remote = ModelRegistry(s3_uri, cache_dir=root / "publisher-cache")
    meta = {k: v for k, v in version.metadata.items() if k not in ("name", "version", "files", "writer", "created_at")}
    for name in ("scorer", "ranker"):
        copy = remote.register(name, {f: version.file(f) for f in version.metadata["files"]}, meta)
        remote.set_alias(name, "production", copy.version)
    publish_retriever(root, remote)
    return data, version.label


def publish_retriever(root: Path, remote) -> None:
    """Users in two shards, and a small two-tower retriever (a linear user tower, random item embeddings) on S3."""
    from rayml.features import FeatureEncoder
    from rayml.models.export import export_onnx

    users = root / "users"
    users.mkdir()
    rng = np.random.default_rng(2)
    for i in range(2):
        ids = np.arange(i * 1_000, (i + 1) * 1_000)
        pq.write_table(pa.table({"user_id": ids, **{f: rng.normal(size=len(ids)) for f in FEATURES}}),
                       users / f"part-{i}.parquet")
    encoder = FeatureEncoder.fit(pq.read_table(users / "part-0.parquet"), "user_id")
    files = root / "retriever"
    files.mkdir()
    torch.manual_seed(1)
    parity = export_onnx(torch.nn.Linear(encoder.width, 9), encoder.transform(pq.read_table(users / "part-0.parquet")),
                         files / "user_tower.onnx", "user_features", "embedding")
    np.save(files / "item_embeddings.npy", rng.normal(size=(50, 9)).astype(np.float32))  # [I, E+1]
    np.save(files / "item_ids.npy", np.arange(1_000, 1_050, dtype=np.int64))
    encoder.save(files / "user_encoder.json")
    names = ("user_tower.onnx", "item_embeddings.npy", "item_ids.npy", "user_encoder.json")
    version = remote.register("retriever", {f: files / f for f in names}, {"kind": "retriever",
                                                                          "parity": parity.to_dict()})
    remote.set_alias("retriever", "production", version.version)


@pytest.fixture(scope="module")
def nodes():
    """moto S3 on loopback, a head node, and a worker node that cannot see ``<root>/hidden`` (the local registry)."""
    root = Path(tempfile.mkdtemp(prefix="/tmp/ru"))  # short: Ray's unix socket paths have a length limit
    temp_dir = root / "ray"
    hidden = root / "hidden"
    hidden.mkdir()
    marker = f"isolated_{os.getpid()}_{free_port()}"  # the worker node's own resource; also finds its PIDs
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    saved = {k: os.environ.get(k) for k in AWS}
    os.environ.update(AWS)
    server.start()
    try:
        host, port = server.get_host_and_port()
        boto3.client("s3", endpoint_url=f"http://{host}:{port}", region_name="us-east-1").create_bucket(Bucket="reg")
        s3_uri = f"s3://reg/models?endpoint_override={host}:{port}&scheme=http"
        data, label = publish(root, s3_uri)
        # The driver's download cache is hidden from the worker as well: a worker handed the driver's copy of a
        # version (instead of the URI) would fail.
        # Serve's own proxy, whatever ingress flags an earlier fixture of this session left in the environment.
        env = {k: v for k, v in cli_env().items() if not k.startswith("RAY_SERVE_")}
        env |= AWS | {"RAYML_CACHE_DIR": str(hidden / "driver-cache")}
        gcs = free_port()
        head = [str(BIN / "ray"), "start", "--head", f"--port={gcs}", "--num-cpus=1", "--include-dashboard=false",
                f"--object-store-memory={200 * 1024 * 1024}", f"--temp-dir={temp_dir}", "--disable-usage-stats"]
        started = subprocess.run(head, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
        assert started.returncode == 0, started.stdout + started.stderr
        # The tmpfs exists only in the new mount namespace (private propagation): it vanishes with the worker
        # node's last process, and the host never sees it.
        worker = [str(BIN / "ray"), "start", f"--address=127.0.0.1:{gcs}", "--num-cpus=1",
                  f"--resources={json.dumps({marker: 1})}", f"--object-store-memory={200 * 1024 * 1024}",
                  "--disable-usage-stats"]
        script = f"mount -t tmpfs -o size=1m rayml-hidden {shlex.quote(str(hidden))} && exec {shlex.join(worker)}"
        worker_env = env | {"RAYML_CACHE_DIR": str(root / "worker-cache")}
        started = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script], cwd=REPO,
                                 env=worker_env, capture_output=True, text=True, timeout=120)
        assert started.returncode == 0, started.stdout + started.stderr
        yield {"root": root, "data": data, "label": label, "s3_uri": s3_uri, "marker": marker,
               "env": env | {"RAY_ADDRESS": f"127.0.0.1:{gcs}"}}
    finally:
        kill_pids(pids_with_marker(str(temp_dir)))
        kill_pids(pids_with_marker(marker))
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        shutil.rmtree(root, ignore_errors=True)


def run_python(nodes, code: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "python"), "-c", textwrap.dedent(code)], cwd=REPO, env=nodes["env"],
                          capture_output=True, text=True, timeout=timeout)


def score_job(nodes, registry: str, output: Path, timeout: float = 180) -> subprocess.CompletedProcess:
    config = nodes["root"] / "job.yaml"
    config.write_text(yaml.safe_dump({
        "input": str(nodes["data"]), "registry": registry, "model": "scorer", "output": str(output),
        "id_column": "entity_id", "batch_size": 2048,
        "actors": {"min_size": 1, "max_size": 1, "num_cpus": 0.5, "resources": {nodes["marker"]: 0.5}},
    }))
    return subprocess.run([str(BIN / "python"), "batch_jobs/score_entities.py", "--config", str(config), "--no-stats"],
                          cwd=REPO, env=nodes["env"], capture_output=True, text=True, timeout=timeout)


def test_the_worker_node_cannot_see_the_head_registry(nodes):
    hidden = nodes["root"] / "hidden" / "registry"
    assert hidden.is_dir()
    probe = run_python(nodes, f"""
        import os, ray
        ray.init()
        where = ray.remote(resources={{{nodes['marker']!r}: 0.1}}, num_cpus=0)(lambda: os.path.exists({str(hidden)!r}))
        print("worker sees registry:", ray.get(where.remote()))
    """)
    assert probe.returncode == 0, probe.stderr[-3000:]
    assert "worker sees registry: False" in probe.stdout


def test_a_local_registry_path_fails_on_that_node_with_a_clear_error(nodes):
    output = nodes["root"] / "scores-local"
    started = time.monotonic()
    run = score_job(nodes, str(nodes["root"] / "hidden" / "registry"), output)
    seconds = time.monotonic() - started
    log = run.stdout + run.stderr
    assert run.returncode == 2, log[-3000:]  # the job's own error, not a traceback from Ray
    error = re.search(r"^error: Ray node [\d.]+ \(\w+\) cannot load scorer v1: .*registry directory \S+/hidden/registry does "
                      r"not exist on this machine.*", run.stderr, re.MULTILINE)
    assert error, log[-4000:]
    assert not list(output.glob("part-*.parquet"))
    MEASURED["registry URI: local path on an isolated node"] = f"failed in {seconds:.0f} s: {error.group(0)[:400]}"


def test_the_s3_registry_uri_scores_every_entity_on_that_node(nodes):
    from rayml.features import FeatureEncoder
    from rayml.inference import ort_session
    from rayml.registry import ModelRegistry

    output = nodes["root"] / "scores-s3"
    started = time.monotonic()
    run = score_job(nodes, nodes["s3_uri"], output)
    seconds = time.monotonic() - started
    assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]
    scores = pq.read_table(output).sort_by("entity_id")
    assert np.array_equal(scores["entity_id"].to_numpy(), np.arange(SHARDS * ROWS_PER_SHARD)), "missing or repeated"
    version = ModelRegistry(nodes["s3_uri"], cache_dir=nodes["root"] / "check-cache").get("scorer", "production")
    entities = pq.read_table(nodes["data"]).sort_by("entity_id")
    session = ort_session(version.file("model.onnx"))
    expected = session.run(["score"], {"features": FeatureEncoder.load(version.file("encoder.json")).transform(entities)})[0]
    np.testing.assert_allclose(scores["score"].to_numpy(), expected, rtol=1e-6, atol=1e-7)
    assert set(scores["model_version"].to_pylist()) == {"scorer:v1"}

    manifest = json.loads((output / "_manifest.json").read_text())
    nodes_used = {row["node_id"] for row in manifest["per_shard"]}
    worker = run_python(nodes, f"""
        import ray
        ray.init()
        print([n["NodeID"] for n in ray.nodes() if n["Alive"] and {nodes['marker']!r} in n["Resources"]])
    """)
    assert nodes_used == set(re.findall(r"[0-9a-f]{56}", worker.stdout)), (nodes_used, worker.stdout)
    cached = list((nodes["root"] / "worker-cache").rglob("scorer/1/model.onnx"))
    assert len(cached) == 1, "the worker node did not download the version into its own cache"
    MEASURED["registry URI: S3 (moto) on an isolated node"] = (
        f"{SHARDS * ROWS_PER_SHARD} entities scored exactly once on the worker node in {seconds:.0f} s (driver process)")


def test_the_candidates_job_loads_the_retriever_through_the_uri_on_that_node(nodes):
    from rayml.features import FeatureEncoder
    from rayml.inference import ort_session
    from rayml.registry import ModelRegistry

    output, root = nodes["root"] / "candidates-s3", nodes["root"]
    config = root / "candidates.yaml"
    config.write_text(yaml.safe_dump({
        "users": str(root / "users"), "registry": nodes["s3_uri"], "output": str(output), "top_k": 5,
        "batch_size": 1024, "actors": {"min_size": 1, "max_size": 1, "num_cpus": 0.5,
                                       "resources": {nodes["marker"]: 0.5}},
    }))
    run = subprocess.run([str(BIN / "python"), "batch_jobs/generate_candidates.py", "--config", str(config)],
                         cwd=REPO, env=nodes["env"], capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]
    got = pq.read_table(output).sort_by("user_id")
    version = ModelRegistry(nodes["s3_uri"], cache_dir=root / "check-cache").get("retriever", "production")
    users = pq.read_table(root / "users").sort_by("user_id")
    features = FeatureEncoder.load(version.file("user_encoder.json")).transform(users)
    user_emb = ort_session(version.file("user_tower.onnx")).run(None, {"user_features": features})[0]
    scores = user_emb @ np.load(version.file("item_embeddings.npy")).T  # [users, items]
    expected = np.load(version.file("item_ids.npy"))[np.argsort(-scores, axis=1, kind="stable")[:, :5]]
    assert np.array_equal(got["user_id"].to_numpy(), np.arange(2_000))
    assert np.array_equal(np.stack(got["items"].to_numpy(zero_copy_only=False)), expected)
    assert list((root / "worker-cache").rglob("retriever/1/user_tower.onnx")), "the worker did not load it itself"


SERVE_DRIVER = """
import json, sys
import numpy as np
import ray
from ray import serve
from rayml.serving.ranker import Ranker

uri, marker, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
ray.init()
serve.start(http_options={"host": "127.0.0.1", "port": port}, proxy_location="HeadOnly")
app = Ranker.options(ray_actor_options={"num_cpus": 0.25, "resources": {marker: 0.1}}).bind(
    uri, "ranker", "fp32", "production")
handle = serve.run(app, name="ranker_uri", route_prefix=None)
rows = np.random.default_rng(1).normal(size=(64, int(sys.argv[4]))).astype(np.float32)
scores = handle.score.remote(("ranker:v1", rows)).result(timeout_s=60)
np.save(sys.argv[5], rows)
print("RESULT", json.dumps({"describe": handle.describe.remote().result(timeout_s=60), "scores": scores.tolist()}))
serve.shutdown()
"""


def test_a_serve_replica_on_that_node_loads_the_ranker_through_the_uri(nodes):
    from rayml.inference import ort_session
    from rayml.registry import ModelRegistry

    version = ModelRegistry(nodes["s3_uri"], cache_dir=nodes["root"] / "check-cache").get("ranker", "production")
    width = version.metadata["inputs"]["features"][1]
    rows_file = nodes["root"] / "rows.npy"
    driver = nodes["root"] / "serve_driver.py"
    driver.write_text(SERVE_DRIVER)
    run = subprocess.run([str(BIN / "python"), str(driver), nodes["s3_uri"], nodes["marker"], str(free_port()),
                          str(width), str(rows_file)], cwd=REPO, env=nodes["env"], capture_output=True, text=True,
                         timeout=180)
    assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]
    result = json.loads(next(line for line in run.stdout.splitlines() if line.startswith("RESULT ")).split(" ", 1)[1])
    assert result["describe"]["loaded"] == ["ranker:v1"] and result["describe"]["device"] == "cpu"
    expected = ort_session(version.file("model.onnx")).run(["score"], {"features": np.load(rows_file)})[0]
    np.testing.assert_allclose(result["scores"], expected, rtol=1e-6, atol=1e-7)
    assert list((nodes["root"] / "worker-cache").rglob("ranker/1/model.onnx")), "the replica did not load on the worker"
