"""Benchmark: batch scoring on Ray Data against the single-process floor, same model, same data, same run.

    python benchmarks/batch_scoring.py [--rows 2000000] [--rows-per-file 250000]

Generates N entities × 64 float features (cached under --data-dir), registers an MLP entity scorer
(encoder → 128 inputs → 256 → 128 → 1) in a scratch registry, then runs
  1. the floor: one plain process, file by file: pyarrow read → encode → ONNX Runtime (threads = cores) → Parquet;
  2. the rayml job (`score_entities`) on a local Ray started beforehand (its start-up is reported, not timed);
checks both give the same scores, and prints one JSON line with both rates and the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from rayml.batch.config import ActorPool, ScoreJobConfig
from rayml.batch.scoring import OUTPUT_SCHEMA, score_entities
from rayml.features import FeatureEncoder
from rayml.models.entity_scorer import MLPScorer, publish_entity_scorer
from rayml.models.export import ort_session
from rayml.registry import ModelRegistry

FEATURES = [f"f{j}" for j in range(64)]


def make_data(root: Path, rows: int, rows_per_file: int) -> Path:
    """N entities in files of ``rows_per_file``; reused when already there."""
    folder = root / f"entities-{rows}-{rows_per_file}"
    done = folder / "_done"
    if done.is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i, lo in enumerate(range(0, rows, rows_per_file)):
        n = min(rows_per_file, rows - lo)
        table = pa.table({"entity_id": np.arange(lo, lo + n, dtype=np.int64),
                          **{f: rng.normal(size=n).astype(np.float32) for f in FEATURES}})
        pq.write_table(table, folder / f"part-{i:05d}.parquet")
    done.write_text("ok")
    return folder


def register_model(registry: ModelRegistry, sample_file: Path) -> int:
    torch.manual_seed(0)
    table = pq.read_table(sample_file).slice(0, 50_000)
    encoder = FeatureEncoder.fit(table, "entity_id")
    model = MLPScorer(encoder.width, (256, 128))
    version = publish_entity_scorer(registry, "bench_scorer", model, encoder, encoder.transform(table.slice(0, 2048)),
                                    {"lineage": {"benchmark": "batch_scoring"}})
    return version.version


def floor(data: Path, registry: ModelRegistry, version: int, out: Path, threads: int) -> float:
    """One plain process, no Ray: the same read → encode → ORT → write, file by file."""
    model = registry.get("bench_scorer", version)
    encoder = FeatureEncoder.load(model.file("encoder.json"))
    session = ort_session(model.file("model.onnx"), threads=threads)
    out.mkdir(parents=True)
    started = time.perf_counter()
    for path in sorted(data.glob("part-*.parquet")):
        table = pq.read_table(path)
        scores = session.run(["score"], {"features": encoder.transform(table)})[0]
        pq.write_table(pa.table({"entity_id": table["entity_id"], "score": pa.array(scores, pa.float32()),
                                 "model_version": pa.array([model.label] * table.num_rows)}, schema=OUTPUT_SCHEMA),
                       out / path.name)
    return time.perf_counter() - started


def same_scores(floor_out: Path, rayml_out: Path, rows: int) -> float:
    """Max |Δscore| between the two outputs, after checking both hold each entity exactly once."""
    a = pq.read_table(floor_out).sort_by("entity_id")
    b = pq.read_table(rayml_out, columns=["entity_id", "score", "model_version"]).sort_by("entity_id")
    assert a.num_rows == b.num_rows == rows, (a.num_rows, b.num_rows, rows)
    assert np.array_equal(b["entity_id"].to_numpy(), np.arange(rows)), "ids lost or duplicated"
    return float(np.max(np.abs(a["score"].to_numpy() - b["score"].to_numpy())))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--rows-per-file", type=int, default=250_000)
    parser.add_argument("--data-dir", default=os.environ.get("RAYML_BENCH_DIR", "/tmp/rayml-bench"))
    parser.add_argument("--batch-size", type=int, default=131_072)
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    data = make_data(Path(args.data_dir), args.rows, args.rows_per_file)
    with tempfile.TemporaryDirectory(prefix="rayml-bench-") as tmp:
        registry = ModelRegistry(f"{tmp}/registry")
        version = register_model(registry, next(data.glob("part-*.parquet")))
        floor_s = floor(data, registry, version, Path(tmp) / "floor", threads=cores)
        from rayml.config import init_ray

        started = time.perf_counter()
        init_ray()
        ray_init_s = time.perf_counter() - started
        config = ScoreJobConfig(input=str(data), registry=str(registry.root), model="bench_scorer",
                                version=str(version), output=f"{tmp}/rayml", id_column="entity_id",
                                batch_size=args.batch_size, actors=ActorPool(min_size=cores, max_size=cores, num_cpus=0.5))
        summary = score_entities(config)
        diff = same_scores(Path(tmp) / "floor", Path(tmp) / "rayml", args.rows)
    print(summary.operator_stats.split("Dataset iterator")[0].strip())
    print(json.dumps({
        "benchmark": "batch_scoring", "rows": args.rows, "files": summary.shards, "cores": cores,
        "floor_s": round(floor_s, 2), "floor_rows_per_s": round(args.rows / floor_s),
        "rayml_s": summary.seconds, "rayml_rows_per_s": round(args.rows / summary.seconds),
        "ratio_to_floor": round(floor_s / summary.seconds, 3),
        "target": ">= 0.8 at 10M rows, >= 0.6 at 2M; 10M in <= 25 s",
        "ray_init_s": round(ray_init_s, 2), "max_abs_score_diff": diff,
        "worker_peak_rss_mb": round(max(r["worker_peak_rss_mb"] for r in summary.per_shard)),
        "driver_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }))


if __name__ == "__main__":
    main()
