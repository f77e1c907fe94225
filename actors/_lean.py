"""The worker's lean association: blocking reads, one thread, for storage and verification.

A worker runs one of these per handed socket. It reads the A-ASSOCIATE-RQ itself; when the
request needs more than C-STORE and C-ECHO (Storage Commitment, role selection, user
identity, extended negotiation) it hands the socket, with the bytes already read, to
pynetdicom's full association (``Worker.fall_back``). Otherwise it answers every PDU itself
with ``node.acceptor``, which encodes with pynetdicom's classes:

* a C-STORE's dataset is kept in memory up to ``store.inline_threshold`` and spooled to
  ``<store>/.incoming/spool/<worker>/`` beyond it, so a 1 GiB instance never sits in memory;
* the C-STORE-RSP goes out only after the writer says the file is durable
  (``Worker.store_instance``), exactly as on the pynetdicom path;
* one C-STORE at a time (asynchronous operations are not negotiated), so the peer's own
  window keeps it from running ahead.

Why not pynetdicom here: its two polling threads per association and its PDU copies took
more CPU than the durability work (docs/benchmarks.md has the profiles).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any

from actors import _pdu
from node import acceptor
from node.acceptor import ProtocolError
from node.errors import STATUS_OUT_OF_RESOURCES
from node.messages import HandOff
from node.receive import Received, VERIFICATION
from node.storage import PREAMBLE

if TYPE_CHECKING:
    from actors.worker import Worker, _Live

log = logging.getLogger("actors.worker")

# How long to wait for the peer to close after an A-ASSOCIATE-RJ or A-RELEASE-RP (the
# requestor closes the connection, PS3.8 7.1.4 / 7.2), before closing it ourselves.
CLOSE_WAIT_S = 1.0


@dataclass
class _Incoming:
    """One C-STORE's dataset arriving: bytes in memory, spilled to a spool file when large."""

    context_id: int
    command: acceptor.Command
    received: Received
    meta: bytes
    threshold: int
    spool_path: str
    buffer: bytearray = field(default_factory=bytearray)
    spool: IO[bytes] | None = None
    size: int = 0

    def add(self, data: bytes) -> None:
        self.size += len(data)
        if self.spool is not None:
            self.spool.write(data)
            return
        self.buffer += data
        if len(self.buffer) > self.threshold:
            # The spool has the layout read_spooled expects: preamble, file meta, dataset.
            self.spool = open(self.spool_path, "wb")  # noqa: SIM115 - closed in finish/discard
            self.spool.write(PREAMBLE)
            self.spool.write(self.meta)
            self.spool.write(self.buffer)
            self.buffer = bytearray()

    def finish(self) -> None:
        if self.spool is not None:
            self.spool.close()

    def discard(self) -> None:
        if self.spool is not None:
            self.spool.close()
            self.spool = None
            try:
                os.unlink(self.spool_path)
            except FileNotFoundError:
                pass


class LeanAssociation(threading.Thread):
    """Serves one accepted connection; ``is_alive``/``abort`` follow a fall-back association."""

    def __init__(self, worker: Worker, conn: socket.socket, handoff: HandOff, live: _Live) -> None:
        super().__init__(name=f"assoc-{handoff.assoc_id}", daemon=True)
        self.worker = worker
        self.conn = conn
        self.handoff = handoff
        self.live = live
        self.delegate: Any = None  # pynetdicom's Association when the request needed it
        self.request: acceptor.AssociationRequest | None = None
        self.accepted: acceptor.Accepted | None = None
        self._spools = 0
        self._closed = False
        net = worker.config.network
        self.acse_timeout = (net.request_timeout_ms / 1000) if net.request_timeout_ms else net.acse_timeout
        self.idle_timeout = (net.idle_timeout_ms / 1000) if net.idle_timeout_ms else net.network_timeout
        self.max_pdu_read = worker.max_pdu_read

    # ----- what the worker's main loop sees -------------------------------------------------

    def is_alive(self) -> bool:
        if self.delegate is not None:
            return bool(self.delegate.is_alive())
        return super().is_alive()

    def abort(self) -> None:
        """A-ABORT and close (worker shutdown); a fall-back association aborts itself."""
        if self.delegate is not None:
            self.delegate.abort()
            return
        self._send_quietly(acceptor.abort_pdu())
        self._close()

    # ----- the association ------------------------------------------------------------------

    def run(self) -> None:
        aid = self.handoff.assoc_id
        try:
            self._serve()
        except ProtocolError as exc:
            log.warning("assoc=%s aborted: %s", aid, exc)
            self._send_quietly(acceptor.abort_pdu(exc.reason))
        except TimeoutError:
            log.warning("assoc=%s timed out waiting for the peer: aborting", aid)
            self._send_quietly(acceptor.abort_pdu())
        except (ConnectionError, EOFError) as exc:
            log.info("assoc=%s connection closed by the peer: %s", aid, exc or "EOF")
        except OSError as exc:
            log.warning("assoc=%s connection failed: %s", aid, exc)
        except Exception:  # a bug here must cost one association, not the worker's count of them
            log.exception("assoc=%s failed: aborting", aid)
            self._send_quietly(acceptor.abort_pdu())
        finally:
            if self.delegate is None:
                self._close()

    def _serve(self) -> None:
        self.conn.settimeout(self.acse_timeout)
        pdu_type, pdu = self._read_pdu()
        if pdu_type != acceptor.A_ASSOCIATE_RQ:
            raise ProtocolError(f"expected an A-ASSOCIATE-RQ, got PDU type 0x{pdu_type:02X}", acceptor.ABORT_UNEXPECTED_PDU)
        request = acceptor.decode_request(pdu)
        reason = acceptor.full_stack_reason(request, self.worker.lean_syntaxes)
        if reason is not None:
            log.debug("assoc=%s %s: pynetdicom's association serves it", self.handoff.assoc_id, reason)
            self.delegate = self.worker.fall_back(self.live, self.conn, pdu)
            return
        self.request = request
        refusal = self.worker.admit_request(self.live, request.called, request.calling)
        if refusal is not None:
            self.conn.sendall(acceptor.reject_pdu(refusal.result, refusal.source, refusal.reason))
            self._wait_for_close()
            return
        self.accepted = self.worker.accept(self.live, request)
        self.conn.sendall(self.accepted.pdu)
        log.info("assoc=%s calling=%s called=%s accepted %d context(s)", self.handoff.assoc_id, request.calling,
                 request.called, len(self.accepted.contexts))
        self.conn.settimeout(self.idle_timeout or None)
        self._transfer()

    def _transfer(self) -> None:
        """P-DATA until the peer releases or aborts."""
        command_parts: list[bytes] = []
        command: acceptor.Command | None = None
        incoming: _Incoming | None = None
        try:
            while True:
                pdu_type, pdu = self._read_pdu()
                if pdu_type == acceptor.A_RELEASE_RQ:
                    if incoming is not None or command_parts:
                        log.warning("assoc=%s released in the middle of a message", self.handoff.assoc_id)
                    self.conn.sendall(acceptor.release_rp_pdu())
                    self._wait_for_close()
                    return
                if pdu_type == acceptor.A_ABORT:
                    log.info("assoc=%s aborted by the peer", self.handoff.assoc_id)
                    return
                if pdu_type != acceptor.P_DATA_TF:
                    raise ProtocolError(f"unexpected PDU type 0x{pdu_type:02X} after establishment", acceptor.ABORT_UNEXPECTED_PDU)
                for frag in acceptor.fragments(pdu):
                    self._check_context(frag.context_id)
                    if frag.is_command:
                        if incoming is not None:
                            raise ProtocolError("command fragment in the middle of a dataset", acceptor.ABORT_UNEXPECTED_PDU)
                        command_parts.append(frag.data)
                        if not frag.is_last:
                            continue
                        command = acceptor.decode_command(b"".join(command_parts))
                        command_parts = []
                        incoming = self._on_command(frag.context_id, command)
                        if incoming is None:
                            command = None
                        continue
                    if incoming is None or command is None or frag.context_id != incoming.context_id:
                        raise ProtocolError("dataset fragment without its C-STORE-RQ", acceptor.ABORT_UNEXPECTED_PDU)
                    incoming.add(frag.data)
                    if frag.is_last:
                        done, incoming, command = incoming, None, None
                        self._store(done)
        finally:
            if incoming is not None:
                incoming.discard()

    def _check_context(self, context_id: int) -> None:
        assert self.accepted is not None
        if context_id not in self.accepted.contexts:
            raise ProtocolError(f"PDV on context {context_id}, which was not accepted", acceptor.ABORT_INVALID_PARAMETER)

    def _on_command(self, context_id: int, command: acceptor.Command) -> _Incoming | None:
        """Answer a C-ECHO now; start receiving a C-STORE's dataset (returned)."""
        assert self.accepted is not None and self.request is not None
        abstract, transfer = self.accepted.contexts[context_id]
        if command.field == acceptor.C_CANCEL_RQ:
            return None  # nothing outstanding to cancel: one operation at a time
        if command.field == acceptor.C_ECHO_RQ and abstract == VERIFICATION:
            self._respond(context_id, command, 0x0000)
            return None
        if command.field != acceptor.C_STORE_RQ or abstract == VERIFICATION:
            raise ProtocolError(f"command 0x{command.field:04X} is not served on context {context_id} ({abstract})",
                                acceptor.ABORT_UNEXPECTED_PDU)
        if not command.has_dataset:
            raise ProtocolError("C-STORE-RQ without a dataset", acceptor.ABORT_INVALID_PARAMETER)
        received = Received(
            assoc_id=self.handoff.assoc_id,
            sop_class_uid=command.sop_class_uid,
            sop_instance_uid=command.sop_instance_uid,
            transfer_syntax=transfer,
            calling_aet=self.request.calling,
            called_aet=self.worker.called_aet(self.live),
            implementation_class_uid=self.request.implementation_class_uid,
            implementation_version_name=self.request.implementation_version_name,
        )
        self._spools += 1
        spool = os.path.join(self.worker.spool_dir, f"{self.handoff.assoc_id}-{self._spools}.dcm")
        return _Incoming(context_id, command, received, self.worker.meta_cache.meta(received),
                         self.worker.config.store.inline_threshold, spool)

    def _store(self, incoming: _Incoming) -> None:
        """Make the instance durable (or not, as the store options say), then answer."""
        incoming.finish()
        self.live.stores += 1
        try:
            status = self.worker.store_with_options(self.live.stores, lambda: self.worker.store_instance(self.live, incoming))
        except Exception:  # never leave the peer without an answer
            log.exception("assoc=%s sop=%s store failed", self.handoff.assoc_id, incoming.received.sop_instance_uid)
            status = STATUS_OUT_OF_RESOURCES
        finally:
            incoming.discard()
        self._respond(incoming.context_id, incoming.command, status)

    def _respond(self, context_id: int, command: acceptor.Command, status: int) -> None:
        assert self.request is not None
        peer_max = self.request.peer_max_pdu
        cap = self.worker.config.network.max_pdu_send
        if cap and (peer_max == 0 or cap < peer_max):
            peer_max = cap
        for pdu in self.worker.responses.pdus(context_id, command, status, peer_max):
            self.conn.sendall(pdu)

    # ----- the socket -----------------------------------------------------------------------

    def _read_pdu(self) -> tuple[int, bytes]:
        return _pdu.read_pdu(self.conn, self.max_pdu_read)

    def _wait_for_close(self) -> None:
        """The requestor closes after RJ or RP; wait briefly for that, then close ourselves."""
        try:
            self.conn.settimeout(CLOSE_WAIT_S)
            self.conn.recv(1)
        except OSError:
            pass

    def _send_quietly(self, data: bytes) -> None:
        if self._closed:
            return
        try:
            self.conn.sendall(data)
        except OSError:
            pass

    def _close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self.conn.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.conn.close()

