"""The outcome log's writer: a request appends under the buffer's lock only, never behind a Parquet write."""

from __future__ import annotations

import threading

import pyarrow.parquet as pq
import pytest

from rayml.rollout.outcomes import OutcomeLogger
from tests.stuck_disk import StuckDisk

pytestmark = pytest.mark.unit


def test_requests_keep_logging_while_the_poll_threads_write_is_stuck(tmp_path, monkeypatch):
    disk = StuckDisk(monkeypatch)
    log = OutcomeLogger(tmp_path / "out", flush_rows=1_000, flush_s=0)
    log.served("r0", 1.0, "ro", 1, "canary", "ranker:v2", 200, 3.0, [1, 2], [0.5, 0.4])
    poll = threading.Thread(target=log.flush_due)  # the replica's poll thread
    poll.start()
    assert disk.writing.wait(timeout=10)

    def request() -> None:
        log.served("r1", 2.0, "ro", 2, "production", "ranker:v1", 200, 2.0, [3], [0.9])
        log.clicked("r1", 2.5, 2, 3)

    answered = threading.Thread(target=request)
    answered.start()
    answered.join(timeout=10)
    assert not answered.is_alive(), "a request waited for the poll thread's write"
    disk.release.set()
    poll.join(timeout=10)
    log.flush()
    requests = pq.read_table(tmp_path / "out" / "requests").to_pandas()
    clicks = pq.read_table(tmp_path / "out" / "clicks").to_pandas()
    assert sorted(requests["request_id"]) == ["r0", "r1"] and list(clicks["request_id"]) == ["r1"]
    assert log.files_written == 3 and log.dropped_rows == 0
