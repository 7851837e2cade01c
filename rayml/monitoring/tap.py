"""The replica side of online monitoring: sample served rows, ship them once a second off the request path.

Kept apart from :mod:`rayml.monitoring.online` (the monitor, with its statistics) so that a serving replica's
start does not import scipy and statsmodels: a replacement replica takes traffic sooner.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)


class MonitorTap:
    """Samples rows in a replica and ships them as one message per ``send_every_s`` (never on the request path).

    ``send`` gets ``{"replica", "columns": {name: list}}`` and must not block (a Serve handle's ``.remote``).
    """

    def __init__(self, sample_rate: float, send: Callable[[dict[str, Any]], Any], replica: str = "local",
                 send_every_s: float = 1.0, max_rows: int = 10_000) -> None:
        self.sample_rate, self.send, self.replica = sample_rate, send, replica
        self.send_every_s, self.max_rows = send_every_s, max_rows
        self._rows: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self.sent_rows = self.dropped_rows = self.send_errors = 0
        self.last_error: str | None = None
        self._stop = threading.Event()
        threading.Thread(target=self._run, name="monitor-tap", daemon=True).start()

    def sampled(self) -> bool:
        return self.sample_rate >= 1 or random.random() < self.sample_rate

    def add(self, row: dict[str, Any]) -> None:
        with self._lock:
            if len(self._rows) >= self.max_rows:
                self.dropped_rows += 1
                return
            self._rows.append(row)

    def flush(self) -> None:
        with self._lock:
            rows, self._rows = self._rows, []
        if not rows:
            return
        columns = {key: [r.get(key) for r in rows] for key in dict.fromkeys(k for r in rows for k in r)}
        try:
            self.send({"replica": self.replica, "columns": columns})
            self.sent_rows += len(rows)
        except Exception as exc:  # the monitor is down: these rows are lost, counted; serving goes on
            self.send_errors += 1
            self.dropped_rows += len(rows)
            self.last_error = f"{type(exc).__name__}: {exc}"[:300]
            logger.warning("monitor tap: send failed (%s: %s)", type(exc).__name__, exc)

    def _run(self) -> None:
        while not self._stop.wait(self.send_every_s):
            self.flush()

    def stop(self) -> None:
        self._stop.set()


USER_CONFIG_KEY = "monitor_sample_rate"


def sample_rate_update(config: dict[str, Any]) -> float | None:
    """The ``user_config.monitor_sample_rate`` of a live reconfigure, checked; None when absent.

    Raises:
        ValueError: not a number in [0, 1], naming the key.
    """
    rate = config.get(USER_CONFIG_KEY)
    if rate is None:
        return None
    if not isinstance(rate, int | float) or isinstance(rate, bool) or not 0 <= rate <= 1:
        raise ValueError(f"user_config.{USER_CONFIG_KEY}: {rate!r} is not a number in [0, 1]")
    return float(rate)
