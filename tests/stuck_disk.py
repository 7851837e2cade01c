"""A disk that hangs mid-write, for tests of writers that must not block the request path."""

from __future__ import annotations

import threading

import pyarrow.parquet as pq
import pytest


class StuckDisk:
    """Patches ``pyarrow.parquet.write_table`` (for the test's duration) to block until :attr:`release` is set;
    :attr:`writing` is set once a write has started."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.release, self.writing = threading.Event(), threading.Event()
        real_write = pq.write_table

        def stuck_write(table, where, **kw) -> None:
            self.writing.set()
            self.release.wait()
            real_write(table, where, **kw)

        monkeypatch.setattr(pq, "write_table", stuck_write)
