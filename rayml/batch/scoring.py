"""Batch scoring on Ray Data: every entity of a Parquet dataset scored by a registry model, exactly once.

Each input file is one unit of work. A Ray Data actor pool receives the list of shards still to do; an actor
streams its shard (read a record batch → check rows → encode → ONNX Runtime → write), then commits the shard's
output atomically (:mod:`rayml.batch.shards`). Rows never travel through the object store, so Ray's per-row
overhead vanishes and the actors run at the single-process speed, in parallel. A restarted job skips
committed shards; a lost actor or node makes Ray retry its shard, which overwrites nothing partial.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from rayml.batch.config import ScoreJobConfig
from rayml.batch.shards import (
    AtomicParquetWriter,
    Shard,
    ShardWorker,
    committed_outputs,
    list_shards,
    load_model,
    refuse_relative_paths_in_job,
    remove_stale_temporaries,
    resolve_fs,
    run_sharded,
)
from rayml.features import FeatureEncoder
from rayml.inference import ort_session
from rayml.registry import ModelRegistry, ModelVersion, RegistryError

MANIFEST = "_manifest.json"
JOB_FILE = "_job.json"
REJECTS = "_rejects"
OUTPUT_SCHEMA = pa.schema([("entity_id", pa.int64()), ("score", pa.float32()), ("model_version", pa.string())])
REJECT_SCHEMA = pa.schema([("entity_id", pa.int64()), ("column", pa.string()), ("reason", pa.string())])


class BadRowError(ValueError):
    """A bad row under ``bad_rows: fail``: names the shard, the entity id and the column."""


def check_rows(table: pa.Table, encoder: FeatureEncoder, id_column: str, missing: str) -> tuple[np.ndarray, pa.Table]:
    """Which rows can be scored, and a rejects table (entity id, first bad column, reason) for the others.

    Bad: a null id; an infinite numeric value; with ``missing: reject``, a missing value (null, or NaN in a
    float column — the world's and pandas' convention). Unknown categories are not bad: the encoder has a slot.
    """
    n = table.num_rows
    bad = np.zeros(n, bool)
    column = np.full(n, "", dtype=object)
    reason = np.full(n, "", dtype=object)

    def mark(mask: np.ndarray, name: str, why: str) -> None:
        new = mask & ~bad
        column[new], reason[new] = name, why
        bad[:] |= mask

    mark(table[id_column].is_null().to_numpy(zero_copy_only=False), id_column, "missing id")
    for name in encoder.columns:
        values = table[name]
        null = values.is_null().to_numpy(zero_copy_only=False)
        if pa.types.is_floating(values.type):
            finite = pc.is_finite(values).fill_null(True).to_numpy(zero_copy_only=False)
            nan = pc.is_nan(values).fill_null(False).to_numpy(zero_copy_only=False)
            mark(~finite & ~nan, name, "infinite value")
            null = null | nan
        if missing == "reject":
            mark(null, name, "missing value")
    ids = table[id_column].to_numpy(zero_copy_only=False)
    rows = np.flatnonzero(bad)
    rejects = pa.table({"entity_id": pa.array(ids[rows], pa.int64(), from_pandas=True),
                        "column": pa.array(column[rows], pa.string()), "reason": pa.array(reason[rows], pa.string())},
                       schema=REJECT_SCHEMA)
    return ~bad, rejects


class ShardScorer(ShardWorker):
    """Ray Data actor: scores whole shards, commits each shard's output and its rejects."""

    output_schema = OUTPUT_SCHEMA

    def __init__(self, config: dict[str, Any], version: int) -> None:
        self.config = ScoreJobConfig.model_validate(config)
        super().__init__(self.config.input, self.config.output, self.config.batch_size)
        model = load_model(self.config.registry, self.config.model, version)  # through the URI; cached per node
        self.label = model.label
        self.encoder = FeatureEncoder.load(model.file("encoder.json"))
        self.session = ort_session(model.file("model.onnx"), threads=self.config.ort_threads,
                                   gpu=self.config.actors.num_gpus > 0)
        self.columns = list(dict.fromkeys([self.config.id_column, *self.encoder.columns]))
        self._rejects: list[pa.Table] = []

    def process(self, table: pa.Table, shard: Shard) -> pa.Table:
        return self._score(table, shard, self._rejects)

    def before_commit(self, shard: Shard) -> dict[str, int]:
        rejected = sum(t.num_rows for t in self._rejects)
        if self._rejects:
            bad = AtomicParquetWriter(self.out_fs, f"{self.out_root}/{REJECTS}/{shard.output_name}", REJECT_SCHEMA)
            bad.write(pa.concat_tables(self._rejects))
            bad.commit()  # before the shard's output, whose commit marks the shard done
        self._rejects = []
        return {"rejected": rejected}

    def _score(self, table: pa.Table, shard: Shard, rejects: list[pa.Table]) -> pa.Table:
        ok, bad = check_rows(table, self.encoder, self.config.id_column, self.config.missing)
        scores = np.empty(0, np.float32)
        if ok.any():
            good = table.filter(pa.array(ok)) if not ok.all() else table
            scores = self.session.run(["score"], {"features": self.encoder.transform(good)})[0]
            finite = np.isfinite(scores)
            if not finite.all():  # never a silent NaN score
                ids = good[self.config.id_column].to_numpy()[~finite]
                bad = pa.concat_tables([bad, pa.table({"entity_id": ids, "column": ["score"] * len(ids),
                                                       "reason": ["non-finite score"] * len(ids)}, schema=REJECT_SCHEMA)])
                good, scores = good.filter(pa.array(finite)), scores[finite]
            table = good
        else:
            table = table.slice(0, 0)
        if bad.num_rows:
            if self.config.bad_rows == "fail":
                first = bad.slice(0, 1).to_pylist()[0]
                raise BadRowError(f"{shard.path}: entity {first['entity_id']}: column {first['column']!r}: "
                                  f"{first['reason']} (bad_rows: fail)")
            rejects.append(bad)
        return pa.table({"entity_id": table[self.config.id_column].cast(pa.int64()),
                         "score": pa.array(scores, pa.float32()),
                         "model_version": pa.array([self.label] * table.num_rows, pa.string())}, schema=OUTPUT_SCHEMA)


@dataclass
class ScoreSummary:
    output: str
    model_version: str
    shards: int
    shards_skipped: int
    rows_in: int
    rows_out: int
    rejected: int
    seconds: float
    rows_per_s: float
    stale_temporaries_removed: int = 0  # half-written files of killed writers: a killed attempt's, a lost node's
    operator_stats: str = ""
    per_shard: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self, with_shards: bool = False) -> dict[str, Any]:
        out = asdict(self)
        if not with_shards:
            out.pop("per_shard")
        return out


def preflight(config: ScoreJobConfig) -> tuple[ModelVersion, list[Shard], set[str]]:
    """Everything that can fail before work starts: model, input, schema, output ownership.

    Returns the model version, the shards and the output names already committed.

    Raises:
        RegistryError, FileNotFoundError, ValueError: one message naming what is wrong.
    """
    refuse_relative_paths_in_job({k: getattr(config, k) for k in ("input", "registry", "output")})
    version = ModelRegistry(config.registry).get(config.model, config.version)
    if version.metadata.get("kind") != "entity_scorer":
        raise RegistryError(f"{version.label} is a {version.metadata.get('kind')!r} model, not an entity scorer")
    if not version.metadata.get("parity", {}).get("passed", False):
        raise RegistryError(f"{version.label} failed its ONNX parity check; refusing to use it")
    encoder = FeatureEncoder.load(version.file("encoder.json"))
    in_fs, in_root = resolve_fs(config.input)
    shards = list_shards(in_fs, in_root)
    with in_fs.open_input_file(shards[0].path) as handle:
        schema = pq.read_schema(handle)
    problems = []
    for name in [config.id_column, *encoder.columns]:
        if name not in schema.names:
            problems.append(f"lacks column {name!r}")
            continue
        kind = schema.field(name).type
        numeric = name == config.id_column or name in {s.name for s in encoder.numeric}
        if numeric and not (pa.types.is_integer(kind) or pa.types.is_floating(kind)):
            problems.append(f"column {name!r} is {kind}, {version.label} needs a number")
        if not numeric and not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
            problems.append(f"column {name!r} is {kind}, {version.label} needs a string")
    if problems:
        raise ValueError(f"input {shards[0].path}: " + "; ".join(problems))
    out_fs, out_root = resolve_fs(config.output)
    job = _read_json(out_fs, f"{out_root}/{JOB_FILE}")
    if job is not None and (job["model_version"], job["input"]) != (version.label, config.input):
        raise ValueError(f"output {config.output} holds scores of {job['model_version']} for {job['input']}: "
                         "use another output (or delete it) to score with a different model or input")
    return version, shards, committed_outputs(out_fs, out_root)


def _read_json(fs, path: str) -> dict | None:
    from pyarrow import fs as pafs

    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return None
    with fs.open_input_stream(path) as handle:
        return json.loads(handle.read())


def _write_json(fs, path: str, data: dict) -> None:
    with fs.open_output_stream(path) as handle:
        handle.write(json.dumps(data, indent=1).encode())


def score_entities(config: ScoreJobConfig) -> ScoreSummary:
    """Run the job on Ray (``RAY_ADDRESS`` or a local Ray started here); skip shards already committed."""
    from rayml.config import init_ray

    version, shards, committed = preflight(config)
    out_fs, out_root = resolve_fs(config.output)
    out_fs.create_dir(out_root, recursive=True)
    stale = remove_stale_temporaries(out_fs, out_root)  # a killed attempt's half-written shards
    _write_json(out_fs, f"{out_root}/{JOB_FILE}", {"model_version": version.label, "input": config.input})
    todo = [s for s in shards if s.output_name not in committed]
    if todo:
        init_ray()  # not timed: a cluster's start-up is not the job's
    started = time.perf_counter()
    stats_text = ""
    per_shard: list[dict[str, Any]] = []
    if todo:
        per_shard, stats_text = run_sharded(
            ShardScorer, {"config": config.model_dump() | {"registry": ModelRegistry(config.registry).location},
                          "version": version.version}, todo, config.actors
        )
    seconds = time.perf_counter() - started
    stale += remove_stale_temporaries(out_fs, out_root)  # a writer on a node lost mid-job never cleaned up
    rows_in, rows_out, rejected = _count(resolve_fs(config.input)[0], out_fs, out_root, shards)
    summary = ScoreSummary(
        output=config.output, model_version=version.label, shards=len(shards), shards_skipped=len(shards) - len(todo),
        rows_in=rows_in, rows_out=rows_out, rejected=rejected, seconds=round(seconds, 3),
        rows_per_s=round(sum(r["rows_in"] for r in per_shard) / seconds, 1) if per_shard else 0.0,
        stale_temporaries_removed=stale, operator_stats=stats_text, per_shard=per_shard,
    )
    _write_json(out_fs, f"{out_root}/{MANIFEST}", summary.to_dict(with_shards=True))
    return summary


def _count(in_fs, fs, root: str, shards: list[Shard]) -> tuple[int, int, int]:
    """Rows in, rows out and rows rejected over every shard, from Parquet footers (cheap, exact)."""
    from pyarrow import fs as pafs

    rows_in = rows_out = rejected = 0
    for shard in shards:
        with in_fs.open_input_file(shard.path) as handle:
            rows_in += pq.ParquetFile(handle).metadata.num_rows
        with fs.open_input_file(f"{root}/{shard.output_name}") as handle:
            rows_out += pq.ParquetFile(handle).metadata.num_rows
        reject_path = f"{root}/{REJECTS}/{shard.output_name}"
        if fs.get_file_info(reject_path).type != pafs.FileType.NotFound:
            with fs.open_input_file(reject_path) as handle:
                rejected += pq.ParquetFile(handle).metadata.num_rows
    return rows_in, rows_out, rejected
