"""Socket tuning every association shell shares (worker, requestors, send, report listener)."""

from __future__ import annotations

import os
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


def send_all(sock: socket.socket, data: bytes) -> None:
    """``sock.sendall(data)`` without the ``poll`` CPython makes before every send on a socket
    that has a timeout.

    An association's socket has one (the network timeout), so each C-STORE-RSP cost two system
    calls, and two releases of the GIL that the worker's other association threads then
    contend for. Such a socket is non-blocking underneath: a plain ``write`` takes what fits
    in the send buffer at once, which for a response is all of it; only a remainder waits,
    through ``sendall`` and its timeout. TLS sockets keep ``sendall`` (their bytes are not
    ``data``)."""
    if type(sock) is not socket.socket or sock.gettimeout() == 0:
        sock.sendall(data)
        return
    try:
        sent = os.write(sock.fileno(), data)
    except BlockingIOError:
        sent = 0
    if sent < len(data):
        sock.sendall(memoryview(data)[sent:])
