"""The served-feature log: mixed-type batches (a string feature all missing in one request) and write failures."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow.parquet as pq
import pytest

from rayml.features.feature_log import FeatureLogConfig, FeatureLogger
from rayml.features.online import Lookup

pytestmark = pytest.mark.unit


def lookup(category) -> Lookup:
    return Lookup({"age": np.array([31.0]), "fav_category": category}, np.array([True]))


def test_a_string_feature_missing_in_one_request_still_writes(tmp_path):
    """Redis answers NaN (float) for a string feature when no entity has it; the batch must still be written."""
    log = FeatureLogger(FeatureLogConfig(path=str(tmp_path / "log"), sample_rate=1.0, flush_rows=1000))
    ids = {"user_id": np.array([1, 1])}
    log.log(1.0, ids, {"user_profile": lookup(np.array(["books"], dtype=object))})
    log.log(2.0, ids, {"user_profile": lookup(np.array([np.nan]))})
    log.flush()
    table = pq.read_table(tmp_path / "log")
    assert table["user_profile.fav_category"].to_pylist() == ["books", "books", None, None]
    assert log.files_written == 1 and log.dropped_rows == 0


def test_a_failed_write_drops_the_buffer_and_never_raises(tmp_path):
    blocker = tmp_path / "log"
    blocker.write_text("a file where the log folder should be")  # every write fails
    log = FeatureLogger(FeatureLogConfig(path=str(blocker), sample_rate=1.0, flush_rows=2))
    ids = {"user_id": np.array([1, 1])}
    log.log(1.0, ids, {"user_profile": lookup(np.array(["books"], dtype=object))})  # reaches flush_rows: writes
    log.flush()  # waits for the writer thread; never raises
    assert log.dropped_rows == 2 and log.files_written == 0


def test_rows_and_types_match_one_table_per_request(tmp_path):
    """The buffered build gives what one table per request, concatenated, gave: ids, times, values, nulls."""
    log = FeatureLogger(FeatureLogConfig(path=str(tmp_path / "log"), sample_rate=1.0, flush_rows=10_000))
    window = np.array([3], np.int64)
    log.log(1.25, {"user_id": np.array([7, 7, 7]), "item_id": np.array([1, 2, 3])},
            {"user_profile": lookup(np.array(["books"], dtype=object)),
             "item_stats": Lookup({"ctr": np.array([0.1, np.nan, 0.3])}, np.array([True, False, True])),
             "rt": Lookup({"clicks": window}, np.array([True]))})
    window[0] = 99  # a window updated in place after the request: the logged value stays 3
    log.log(2.5, {"user_id": np.array([8]), "item_id": np.array([4])},
            {"user_profile": lookup(np.array(["music"], dtype=object))})  # no item_stats, no rt
    log.flush()
    rows = pq.read_table(tmp_path / "log").to_pylist()
    assert [r["user_id"] for r in rows] == [7, 7, 7, 8] and [r["item_id"] for r in rows] == [1, 2, 3, 4]
    assert len({r["request_id"] for r in rows[:3]}) == 1 and rows[3]["request_id"] != rows[0]["request_id"]
    assert [r["ts"].replace(tzinfo=dt.UTC).timestamp() for r in rows] == [1.25, 1.25, 1.25, 2.5]
    assert [r["item_stats.ctr"] for r in rows] == [0.1, None, 0.3, None]
    assert [r["rt.clicks"] for r in rows] == [3, 3, 3, None]
    assert [r["user_profile.fav_category"] for r in rows] == ["books"] * 3 + ["music"]
    assert [r["user_profile.age"] for r in rows] == [31.0] * 4


def test_a_full_buffer_is_written_off_the_request_path_and_a_stuck_disk_drops_rather_than_blocks(tmp_path, monkeypatch):
    """While the writer thread is stuck in a write, requests keep logging; beyond two pending buffers they drop."""
    import threading

    from tests.stuck_disk import StuckDisk

    disk = StuckDisk(monkeypatch)
    log = FeatureLogger(FeatureLogConfig(path=str(tmp_path / "log"), sample_rate=1.0, flush_rows=2))
    ids = {"user_id": np.array([1, 1])}
    row = {"user_profile": lookup(np.array(["books"], dtype=object))}

    def three_full_buffers() -> None:
        for ts in (1.0, 2.0, 3.0):
            log.log(ts, ids, row)

    requests = threading.Thread(target=three_full_buffers)
    requests.start()
    requests.join(timeout=10)
    assert not requests.is_alive(), "a request waited for the stuck write"
    assert disk.writing.wait(timeout=10)
    assert log.dropped_rows == 2  # the first is being written, the second waits, the third is dropped
    disk.release.set()
    log.flush()
    assert log.files_written == 2 and log.dropped_rows == 2
    assert len(pq.read_table(tmp_path / "log").to_pandas()) == 4
