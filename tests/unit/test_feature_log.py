"""The served-feature log: mixed-type batches (a string feature all missing in one request) and write failures."""

from __future__ import annotations

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
    assert log.dropped_rows == 2 and log.files_written == 0
