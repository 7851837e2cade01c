"""A writer killed mid-shard leaves its temporary behind; the next attempt of the job removes exactly those."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.fs as pafs
import pytest

from rayml.batch.shards import AtomicParquetWriter, committed_outputs, remove_stale_temporaries

pytestmark = pytest.mark.unit


def test_only_a_killed_writers_temporaries_are_removed(tmp_path):
    fs = pafs.LocalFileSystem()
    root = str(tmp_path / "scores")
    table = pa.table({"entity_id": [1, 2], "score": [0.1, 0.2]})
    done = AtomicParquetWriter(fs, f"{root}/part-a.parquet", table.schema)
    done.write(table)
    done.commit()
    for path in (f"{root}/part-b.parquet", f"{root}/_rejects/part-b.parquet"):  # killed: never committed
        AtomicParquetWriter(fs, path, table.schema).write(table)
    (tmp_path / "scores" / ".job.json").write_text("{}")  # hidden, but not a writer's temporary
    (tmp_path / "scores" / ".notes.tmp").write_text("")  # no writer's random suffix: not ours
    assert remove_stale_temporaries(fs, root) == 2
    left = sorted(str(p.relative_to(tmp_path / "scores")) for p in (tmp_path / "scores").rglob("*") if p.is_file())
    assert left == [".job.json", ".notes.tmp", "part-a.parquet"]
    assert committed_outputs(fs, root) == {"part-a.parquet"}
    assert remove_stale_temporaries(fs, root) == 0
    assert remove_stale_temporaries(fs, str(tmp_path / "absent")) == 0
