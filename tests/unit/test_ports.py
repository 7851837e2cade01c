"""Free ports come from outside the kernel's ephemeral range, where outgoing connections cannot take them."""

from __future__ import annotations

import socket

import pytest

from rayml import ports


def test_single_ports_are_free_and_below_the_ephemeral_range():
    picked = {ports.free_port() for _ in range(50)}
    low, high = ports.SINGLE_BAND
    if ports.ephemeral_start() > high:
        assert all(low <= p < high < ports.ephemeral_start() for p in picked)
    assert len(picked) > 40, "picks repeat: the generator is not random"
    for port in list(picked)[:5]:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))


def test_a_taken_port_is_never_handed_out(monkeypatch):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", ports.free_port()))  # a port of the band, where the machine allows it
        port = taken.getsockname()[1]
        assert not ports.is_free(port)
        monkeypatch.setattr(ports, "SINGLE_BAND", (port, port + 1))  # the band holds only the taken port
        assert ports.free_port() != port


def test_ranges_are_consecutive_free_ports_outside_the_ephemeral_range():
    start = ports.free_range(64)
    assert ports.RANGE_BAND[0] <= start < ports.RANGE_BAND[1]
    assert all(ports.is_free(p) for p in range(start, start + 64))


@pytest.mark.parametrize("content", ["1024\t65535\n", "garbage"])
def test_a_low_or_unreadable_ephemeral_range_falls_back_to_the_kernel(tmp_path, monkeypatch, content):
    path = tmp_path / "ip_local_port_range"
    path.write_text(content)
    monkeypatch.setattr(ports, "EPHEMERAL_RANGE_FILE", path)
    expected = 1024 if content.startswith("1024") else 32_768
    assert ports.ephemeral_start() == expected
    assert ports.is_free(ports.free_port())
