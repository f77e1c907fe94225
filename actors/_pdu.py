"""Pieces of the DICOM upper layer that the node and the CLI tools share: a PDU reader for the
lean associations, and a send cap for pynetdicom's."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def cap_send_pdu(peer_user_information: Iterable[Any], cap: int) -> None:
    """Send P-DATA no larger than ``cap``, nor than the peer takes (dcm4che/DCMTK options).

    pynetdicom fragments by the peer's announced Maximum Length (0 = unlimited) and refuses
    to change ``maximum_length`` after negotiation; lowering the received item in place caps
    what we send without changing what was negotiated.
    """
    from pynetdicom.pdu_primitives import MaximumLengthNotification

    for item in peer_user_information:
        if isinstance(item, MaximumLengthNotification):
            peer = item.maximum_length_received
            item.maximum_length_received = cap if not peer else min(peer, cap)


def read_pdu(sock: Any, limit: int) -> tuple[int, bytes]:
    """One whole PDU from a blocking socket, header included; the lean paths' only reader.

    The announced length is checked against ``limit`` before a byte of the body is
    buffered. TCP_QUICKACK goes on after every read (Linux leaves quick-ACK mode by itself):
    a Nagle-on peer (DCMTK's defaults) whose PDU arrived only in part holds the rest for our
    ACK, which Linux would otherwise delay up to 40 ms. Raises ``ProtocolError`` for an
    unknown type or an overlong PDU, ``EOFError`` when the peer closed.
    """
    from node import acceptor

    head = _read_exact(sock, 6)
    pdu_type, length = acceptor.pdu_header(head)
    if length > limit:
        raise acceptor.ProtocolError(f"peer announced a {length}-byte PDU, over the {limit}-byte limit",
                                     acceptor.ABORT_INVALID_PARAMETER)
    return pdu_type, head + _read_exact(sock, length)


def _read_exact(sock: Any, n: int) -> bytes:
    import socket

    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:], n - got)
        if k == 0:
            raise EOFError("connection closed by the peer")
        got += k
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
        except (OSError, AttributeError):
            pass
    return bytes(buf)
