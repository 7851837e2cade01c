"""Benchmark: candidate generation on Ray Data against a single-process numpy floor, same model and data.

    python benchmarks/candidate_generation.py [--users 1000000] [--items 10000] [--top-k 100]

Generates N users × 16 float features (cached under --data-dir) and a two-tower retriever whose item table has
--items rows (random weights: speed does not depend on them), registered in a scratch registry. In the same run:
  1. the floor: one process, file by file: read → encode → ONNX user tower → blocked matmul over all items →
     argpartition top-k → sort → Parquet (numpy's BLAS uses every core);
  2. the rayml job (`generate_candidates`) on a local Ray started beforehand (not timed).
Checks both chose the same items, and prints one JSON line with both rates and the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from rayml.batch import ActorPool, CandidateJobConfig, generate_candidates
from rayml.batch.candidates import CandidateScorer
from rayml.features import FeatureEncoder
from rayml.models.export import export_onnx
from rayml.models.networks import TwoTower, UserTowerExport
from rayml.registry import ModelRegistry

FEATURES = [f"u{j}" for j in range(16)]


def make_users(root: Path, users: int, rows_per_file: int) -> Path:
    folder = root / f"users-{users}-{rows_per_file}"
    if (folder / "_done").is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i, lo in enumerate(range(0, users, rows_per_file)):
        n = min(rows_per_file, users - lo)
        pq.write_table(pa.table({"user_id": np.arange(lo, lo + n, dtype=np.int64),
                                 **{f: rng.normal(size=n).astype(np.float32) for f in FEATURES}}),
                       folder / f"part-{i:05d}.parquet")
    (folder / "_done").write_text("ok")
    return folder


def register_retriever(registry: ModelRegistry, sample: pa.Table, items: int) -> int:
    torch.manual_seed(0)
    encoder = FeatureEncoder.fit(sample, "user_id")
    model = TwoTower(encoder.width, 8, embedding_dim=32)
    with tempfile.TemporaryDirectory() as tmp:
        tmpdir = Path(tmp)
        parity = export_onnx(UserTowerExport(model), encoder.transform(sample.slice(0, 512)),
                             tmpdir / "user_tower.onnx", "user_features", "embedding")
        with torch.no_grad():
            item_emb = model.item(torch.randn(items, 8)).numpy().astype(np.float32)
        np.save(tmpdir / "item_embeddings.npy", item_emb)
        np.save(tmpdir / "item_ids.npy", np.arange(items, dtype=np.int64))
        encoder.save(tmpdir / "user_encoder.json")
        files = {f: tmpdir / f for f in ("user_tower.onnx", "item_embeddings.npy", "item_ids.npy", "user_encoder.json")}
        version = registry.register("retriever", files, {"kind": "retriever", "parity": parity.to_dict()})
    registry.set_alias("retriever", "production", version.version)
    return version.version


def floor(data: Path, registry: ModelRegistry, top_k: int, out: Path, batch_size: int) -> float:
    """One process: the same encode → user tower → blocked matmul → argpartition → sort, file by file."""
    version = registry.get("retriever")
    scorer = CandidateScorer(str(version.path), top_k, version.label)  # the job's own per-batch code path
    from rayml.inference import ort_session

    scorer.session = ort_session(version.file("user_tower.onnx"), threads=os.cpu_count() or 1)
    out.mkdir(parents=True)
    started = time.perf_counter()
    for path in sorted(data.glob("part-*.parquet")):
        parquet = pq.ParquetFile(path)
        tables = [scorer(pa.Table.from_batches([b])) for b in parquet.iter_batches(batch_size)]
        pq.write_table(pa.concat_tables(tables), out / path.name)
    return time.perf_counter() - started


def compare(floor_out: Path, rayml_out: Path, users: int) -> float:
    """Share of candidate slots where both chose the same item, file by file (bounded memory at 10M users)."""
    equal = total = rows = 0
    for path in sorted(floor_out.glob("part-*.parquet")):
        a = pq.read_table(path, columns=["user_id", "items"]).sort_by("user_id")
        b = pq.read_table(rayml_out / f"part-{path.stem}.parquet", columns=["user_id", "items"]).sort_by("user_id")
        assert a["user_id"].equals(b["user_id"]), f"{path.name}: users differ"
        x, y = (t["items"].combine_chunks().flatten().to_numpy() for t in (a, b))
        equal, total, rows = equal + int((x == y).sum()), total + len(x), rows + a.num_rows
    assert rows == users, (rows, users)
    return equal / total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--top-k", type=int, default=100)
    parser.add_argument("--rows-per-file", type=int, default=250_000)
    parser.add_argument("--batch-size", type=int, default=16_384)
    parser.add_argument("--data-dir", default=os.environ.get("RAYML_BENCH_DIR", "/tmp/rayml-bench"))
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    data = make_users(Path(args.data_dir), args.users, args.rows_per_file)
    with tempfile.TemporaryDirectory(prefix="rayml-bench-") as tmp:
        registry = ModelRegistry(f"{tmp}/registry")
        register_retriever(registry, pq.read_table(next(data.glob("part-*.parquet"))).slice(0, 50_000), args.items)
        floor_s = floor(data, registry, args.top_k, Path(tmp) / "floor", args.batch_size)
        from rayml.config import init_ray

        init_ray()
        config = CandidateJobConfig(users=str(data), registry=str(registry.root), output=f"{tmp}/rayml",
                                    top_k=args.top_k, batch_size=args.batch_size,
                                    actors=ActorPool(min_size=cores, max_size=cores, num_cpus=0.5))
        summary = generate_candidates(config)
        same = compare(Path(tmp) / "floor", Path(tmp) / "rayml", args.users)
    print(json.dumps({
        "benchmark": "candidate_generation", "users": args.users, "items": args.items, "top_k": args.top_k,
        "files": summary.shards, "floor_s": round(floor_s, 2), "floor_users_per_s": round(args.users / floor_s),
        "rayml_s": summary.seconds, "rayml_users_per_s": round(args.users / summary.seconds),
        "ratio_to_floor": round(floor_s / summary.seconds, 3), "target": ">= 0.8", "same_items_share": round(float(same), 6),
    }))


if __name__ == "__main__":
    main()
