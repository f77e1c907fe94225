"""actors/tcp.py: sends that skip CPython's poll keep sendall's guarantees (all bytes, in
order, within the socket's timeout), on real loopback TCP connections."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator

import pytest

from actors.tcp import send_all


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """A connected TCP pair on 127.0.0.1: (sender, receiver)."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        sender = socket.create_connection(server.getsockname())
        receiver, _ = server.accept()
    try:
        yield sender, receiver
    finally:
        sender.close()
        receiver.close()


def read_all(sock: socket.socket, size: int, into: bytearray) -> None:
    while len(into) < size:
        chunk = sock.recv(65536)
        if not chunk:
            return
        into += chunk


@pytest.mark.parametrize("timeout", [5.0, None])
def test_more_than_the_send_buffer_holds_arrives_whole_and_in_order(pair: tuple[socket.socket, socket.socket], timeout: float | None) -> None:
    sender, receiver = pair
    sender.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)  # the first write takes only part
    sender.settimeout(timeout)
    data = os.urandom(4 << 20)
    got = bytearray()
    reader = threading.Thread(target=read_all, args=(receiver, len(data), got))
    reader.start()
    send_all(sender, data)
    reader.join(timeout=30)
    assert not reader.is_alive() and bytes(got) == data


def test_a_peer_that_stops_reading_costs_the_timeout_not_a_hang(pair: tuple[socket.socket, socket.socket]) -> None:
    sender, _receiver = pair
    sender.settimeout(0.5)
    with pytest.raises(TimeoutError):
        send_all(sender, bytes(64 << 20))  # far more than both socket buffers hold


def test_a_closed_peer_is_an_error_as_with_sendall(pair: tuple[socket.socket, socket.socket]) -> None:
    sender, receiver = pair
    sender.settimeout(5.0)
    receiver.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # close with RST
    receiver.close()
    with pytest.raises(OSError):
        for _ in range(100):  # the first write may still be taken before the RST is seen
            send_all(sender, bytes(1024))
