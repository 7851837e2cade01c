"""The rehearsal's batch half: entities to score, the job config pinned to ``spot``, and the exactly-once count.

The demo world has too few users to kill a job mid-way, so the world's user features are tiled into ``shards``
files of fresh, unique ids (``0 … rows-1``): real feature values, scored by the registry's real model, in a job
long enough to lose a node under.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from rayml.batch.config import ScoreJobConfig
from rayml.batch.shards import LOCAL, list_shards


def absolute(path: str, root: Path) -> str:
    """``path`` resolved against ``root`` (URIs and absolute paths unchanged): a submitted job's cwd is not ours."""
    return path if "://" in path or Path(path).is_absolute() else str((root / path).resolve())


def tile_entities(job: ScoreJobConfig, root: Path, out: Path, shards: int, rows: int) -> int:
    """Write ``shards`` Parquet files of ``rows`` entities in all, tiled from ``job.input``'s rows, with ids
    ``0 … rows-1`` in ``job.id_column``. Returns the number of rows written."""
    source = pa.concat_tables([pq.read_table(s.path) for s in list_shards(LOCAL, absolute(job.input, root))],
                              promote_options="permissive")
    if source.num_rows == 0:
        raise ValueError(f"{job.input}: no rows to tile into entities")
    out.mkdir(parents=True, exist_ok=True)
    per = -(-rows // shards)
    for i in range(shards):
        start, stop = i * per, min(rows, (i + 1) * per)
        picks = np.arange(start, stop) % source.num_rows
        table = source.take(pa.array(picks))
        table = table.set_column(table.schema.get_field_index(job.id_column), job.id_column,
                                 pa.array(np.arange(start, stop, dtype=np.int64)))
        pq.write_table(table, out / f"part-{i:03d}.parquet")
    return rows


def spot_job(job: ScoreJobConfig, root: Path, entities: Path, output: Path, pin: dict[str, float]) -> dict[str, Any]:
    """``job`` with absolute paths, this run's input and output, and its actors pinned by ``pin`` (e.g.
    ``{spot: 0.01}``: only nodes that advertise ``spot`` can hold them)."""
    data = job.model_dump(mode="json")
    data |= {"input": str(entities), "output": str(output), "registry": absolute(job.registry, root)}
    data["actors"] = data["actors"] | {"resources": data["actors"]["resources"] | pin}
    return ScoreJobConfig.model_validate(data).model_dump(mode="json")


def write_job(data: dict[str, Any], path: Path) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def committed(output: Path) -> int:
    """Shards whose output is committed (a shard's output appears only once complete)."""
    return len(list(output.glob("part-*.parquet")))


def exactly_once(entities: Path, output: Path, id_column: str) -> dict[str, int]:
    """Every input id scored once: counts of rows in and out, ids lost, ids scored more than once, and rejected
    rows (written to ``_rejects/`` with a reason: neither lost nor duplicated)."""
    ids_in = pq.read_table(entities, columns=[id_column])[id_column].to_numpy()
    ids_out = pq.read_table(output, columns=["entity_id"])["entity_id"].to_numpy() if committed(output) else np.empty(0)
    rejects = output / "_rejects"
    rejected = (pq.read_table(rejects, columns=["entity_id"])["entity_id"].to_numpy()
                if rejects.is_dir() and any(rejects.iterdir()) else np.empty(0, np.int64))
    seen, counts = np.unique(np.concatenate([ids_out, rejected]), return_counts=True)
    return {"rows_in": len(ids_in), "rows_out": len(ids_out), "rejected": len(rejected),
            "duplicates": int((counts - 1).sum()), "lost": len(np.setdiff1d(ids_in, seen)),
            "unknown": len(np.setdiff1d(seen, ids_in))}
