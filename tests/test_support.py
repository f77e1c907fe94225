"""The shared test helpers themselves (tests/support.py)."""

from __future__ import annotations

import socket

from tests.support import free_port


def test_free_port_never_hands_out_a_port_twice() -> None:
    """Two ports taken before either is bound (a node's, then a job's --commit-port) must
    differ: 1,000 random picks from the ~22,000 ports below the ephemeral range repeat ~20
    (the birthday bound), so without free_port's memory this would fail almost every time."""
    ports = [free_port() for _ in range(1000)]
    assert len(set(ports)) == len(ports)
    for port in ports[:5]:  # and each one was free: it can be bound
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))
