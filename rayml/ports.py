"""Free TCP ports for the clusters, servers and test fixtures rayml starts on one machine.

``bind(0)`` hands out a port from the kernel's ephemeral range, the same range every outgoing connection takes its
local port from. Between choosing a port and the server binding it (a Ray cluster takes seconds to start, and its
processes open hundreds of connections meanwhile) another socket can take it: ``Failed to bind to address``.
So ports here come from a band below the ephemeral range, above Ray's worker ports (10002–19999) and below its
default direct-ingress ports (30000–31000), where nothing allocates on its own:

- single ports: ``SINGLE_BAND``;
- consecutive ranges (direct-ingress replicas): ``RANGE_BAND``.

Where the machine's ephemeral range starts lower than these bands, ``bind(0)`` is the fallback.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

RANGE_BAND = (20_000, 28_000)  # where a consecutive range starts (it may run up to span ports past the end)
SINGLE_BAND = (28_200, 30_000)  # below Ray's default direct-ingress ports (HTTP 30000–31000, gRPC 40000–41000)
EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_PICK = (
    random.SystemRandom()
)  # not the global generator: a test that seeds it must not make every pick alike


def ephemeral_start() -> int:
    """The first port of the kernel's ephemeral range (Linux's default 32768 where it cannot be read)."""
    try:
        return int(EPHEMERAL_RANGE_FILE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768


def is_free(port: int) -> bool:
    """Whether ``port`` can be bound on 127.0.0.1 now."""
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _kernel_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def free_port() -> int:
    """A port free now, outside the ephemeral range where the machine allows it."""
    low, high = SINGLE_BAND
    if ephemeral_start() <= high:
        return _kernel_port()
    for _ in range(500):
        port = _PICK.randrange(low, high)
        if is_free(port):
            return port
    return _kernel_port()


def free_range(span: int) -> int:
    """The first of ``span`` consecutive ports that are all free now, outside the ephemeral range."""
    low, high = RANGE_BAND
    for _ in range(200):
        start = _PICK.randrange(low, high)
        if all(is_free(p) for p in range(start, start + span)):
            return start
    raise RuntimeError(f"no {span} consecutive free ports found in {low}–{high + span}")
