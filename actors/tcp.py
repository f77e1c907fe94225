"""Socket tuning every association shell shares (worker, requestors, send, report listener)."""

from __future__ import annotations

import socket


def quick_ack(sock: socket.socket) -> None:
    """Acknowledge what was just read at once, not after the kernel's delayed-ACK timer.

    A peer with Nagle's algorithm on (DCMTK without ``TCP_NODELAY=1`` in its environment, its
    default) holds the rest of a PDU written in two parts until our ACK of the first; with
    nothing of ours to carry it, the delayed ACK costs up to 40 ms per message (measured:
    ``nodectl send -j 4`` of 5,000 files into a default DCMTK storescp --fork took 56 s, with
    this 1.3 s). Not sticky in the kernel, hence once per read.
    """
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
    except (OSError, AttributeError, ValueError):  # not Linux, or a socket that refuses it
        pass
