"""``nodectl send``'s lean association: blocking socket calls in the worker's own thread.

pynetdicom's requestor hands each PDU to a reactor thread that polls every millisecond and
pauses it around every C-STORE (``send_worker.ReactorCheckpoint`` exists because that pause
could lose a response). Here the worker process writes the A-ASSOCIATE-RQ, each C-STORE-RQ
and its dataset straight to the socket and reads the answers itself; ``node.requestor``
encodes and decodes with pynetdicom's classes. Datasets are still never decoded: the bytes
after the file meta go out in PDU-sized reads from the file, as pynetdicom's chunked mode
sends them. ``NODECTL_SEND_PATH=pynetdicom`` sends through pynetdicom's association instead.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator
from typing import Any

from actors._pdu import read_pdu
from node import acceptor, requestor
from node.acceptor import ProtocolError
from node.tools.send_plan import FileEntry
from node.tools.send_worker import LOGGER, FileResult, PeerOptions, _Refusal, store_result

UNLIMITED_CHUNK = 1 << 20  # dataset bytes per PDU when the peer sets no maximum


class LeanScu:
    """One established association of a send worker."""

    def __init__(self, sock: socket.socket, established: requestor.Established, peer: PeerOptions) -> None:
        self.sock = sock
        self.established = established
        self.peer = peer
        self.commands = requestor.StoreRequests()
        self.alive = True
        peer_max = established.peer_max_pdu
        self.chunk = (peer_max - 6) if peer_max > 6 else UNLIMITED_CHUNK

    @property
    def is_established(self) -> bool:
        return self.alive

    # ----- C-STORE ----------------------------------------------------------------------------

    def store(self, entry: FileEntry, msg_id: int, worker: int) -> FileResult | None:
        """C-STORE one file; ``None`` when the association was lost (the caller re-associates)."""
        if not self.alive:
            return None
        context_id = self.established.by_syntax.get(entry.context)
        if context_id is None:
            return FileResult(index=entry.index, sent=False, worker=worker,
                              reason=f"no accepted presentation context for {entry.sop_class_uid} with {entry.transfer_syntax_uid}")
        try:
            fh = open(entry.path, "rb")  # noqa: SIM115 - closed below
        except OSError as exc:
            return FileResult(index=entry.index, sent=False, reason=f"cannot read {entry.path}: {exc.strerror}", worker=worker)
        try:
            self.sock.settimeout(self.peer.network_timeout or None)
            self.sock.sendall(self.commands.command_pdu(context_id, entry.sop_class_uid, entry.sop_instance_uid, msg_id))
            fh.seek(entry.offset)
            for pdu in requestor.data_pdus(context_id, _chunks(fh, self.chunk)):
                self.sock.sendall(pdu)
            response = self._response(msg_id)
        except (OSError, ProtocolError, EOFError) as exc:
            self._lose(f"{exc}")
            return None
        finally:
            fh.close()
        if response is None:
            return None
        return store_result(entry, response, worker)

    def _response(self, msg_id: int) -> int | None:
        """The Status of the C-STORE-RSP to ``msg_id``; None when the peer aborted."""
        self.sock.settimeout(self.peer.dimse_timeout or None)
        parts: list[bytes] = []
        while True:
            pdu_type, pdu = _read_pdu(self.sock)
            if pdu_type == acceptor.A_ABORT:
                self._lose("aborted by the peer")
                return None
            if pdu_type != acceptor.P_DATA_TF:
                raise ProtocolError(f"unexpected PDU type 0x{pdu_type:02X} while waiting for a C-STORE-RSP")
            for frag in acceptor.fragments(pdu):
                if not frag.is_command:
                    raise ProtocolError("a dataset where a C-STORE-RSP was expected")
                parts.append(frag.data)
                if not frag.is_last:
                    continue
                command = acceptor.decode_command(b"".join(parts))
                parts = []
                if requestor.is_store_response(command.field) and command.message_id == msg_id and command.status is not None:
                    return command.status
                raise ProtocolError(f"unexpected response 0x{command.field:04X} to message {command.message_id}")

    # ----- ending -----------------------------------------------------------------------------

    def release(self) -> None:
        """A-RELEASE-RQ, then wait (ACSE timeout) for the A-RELEASE-RP, then close."""
        if not self.alive:
            return
        try:
            self.sock.settimeout(self.peer.acse_timeout or None)
            self.sock.sendall(requestor.release_rq_pdu())
            for _ in range(64):  # a few stray PDUs at most before the RP
                pdu_type, _pdu = _read_pdu(self.sock)
                if pdu_type in (requestor.A_RELEASE_RP, acceptor.A_ABORT):
                    break
        except (OSError, ProtocolError, EOFError):
            pass
        self._close()

    def abort(self) -> None:
        if self.alive:
            try:
                self.sock.sendall(acceptor.abort_pdu())
            except OSError:
                pass
        self._close()

    def _lose(self, why: str) -> None:
        LOGGER.debug("association lost: %s", why)
        self.abort()

    def _close(self) -> None:
        self.alive = False
        try:
            self.sock.close()
        except OSError:
            pass


def connect(peer: PeerOptions, contexts: Any, tls_context: ssl.SSLContext | None) -> LeanScu | _Refusal:
    """Open the TCP (and TLS) connection and negotiate; the refusal says whether to retry."""
    from node import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME

    proposal = requestor.associate_request(peer.calling_aet, peer.called_aet, list(contexts), max_pdu=peer.max_pdu,
                                           implementation_class_uid=IMPLEMENTATION_CLASS_UID,
                                           implementation_version_name=IMPLEMENTATION_VERSION_NAME)
    try:
        raw = socket.create_connection((peer.host, peer.port), timeout=peer.network_timeout or None)
    except OSError as exc:
        return _Refusal(f"association request failed (connection refused or timed out: {exc.strerror or exc})", retryable=True)
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock: socket.socket = raw
    try:
        if tls_context is not None:
            sock = tls_context.wrap_socket(raw, server_side=False)
        sock.settimeout(peer.acse_timeout or None)
        sock.sendall(proposal.pdu)
        pdu_type, pdu = _read_pdu(sock)
        if pdu_type == acceptor.A_ABORT:
            sock.close()
            return _Refusal("association aborted", retryable=True)
        reply = requestor.associate_reply(pdu_type, pdu, proposal)
    except ssl.SSLError as exc:
        sock.close()
        return _Refusal(f"association failed: TLS handshake failed or certificate refused ({exc.reason or exc})", retryable=True)
    except (OSError, EOFError, ProtocolError) as exc:
        sock.close()
        return _Refusal(f"association request failed ({exc})", retryable=True)
    if isinstance(reply, requestor.Rejected):
        sock.close()
        return _Refusal(f"association rejected ({_rejection_text(reply)})", retryable=reply.result == 0x02)
    scu = LeanScu(sock, reply, peer)
    LOGGER.info("association accepted by %s:%d: %d of %d context(s), peer max PDU %d", peer.host, peer.port,
                len(reply.by_syntax), len(proposal.contexts), reply.peer_max_pdu)
    if not reply.by_syntax:
        scu.release()
        return _Refusal("no accepted presentation context", retryable=False, network=False)
    return scu


def _rejection_text(rj: requestor.Rejected) -> str:
    """pynetdicom's wording for a rejection (``result_str: reason_str``), as the pynetdicom path logs it."""
    from pynetdicom.pdu_primitives import A_ASSOCIATE

    primitive = A_ASSOCIATE()
    primitive.result = rj.result
    primitive.result_source = rj.source
    primitive.diagnostic = rj.reason
    return f"{primitive.result_str}: {primitive.reason_str}"


def _chunks(fh: Any, size: int) -> Iterator[bytes]:
    while True:
        chunk = fh.read(size)
        if not chunk:
            return
        yield chunk


def _read_pdu(sock: socket.socket) -> tuple[int, bytes]:
    """One whole PDU from the peer; a PDU over 64 MiB is refused unread."""
    return read_pdu(sock, 1 << 26)
