"""The worker's association thread for storage and verification: a thin shell on node.ul.

Read, feed the engine, act on its events, write: the engine (node/ul) keeps PS3.8's state
machine, reassembles and fragments P-DATA and checks the DIMSE rules; this module owns the
socket, the clock (ARTIM and the idle timeout as socket timeouts) and the node's decisions
(admission, where a dataset goes, when a C-STORE-RSP may go out):

* a C-STORE's dataset is kept in memory up to ``store.inline_threshold`` and spooled to
  ``<store>/.incoming/spool/<worker>/`` beyond it, fragment by fragment as the engine
  reports them, so a 1 GiB instance never sits in memory;
* the C-STORE-RSP goes out only after the writer says the file is durable
  (``Worker.store_instance``);
* one operation at a time (no asynchronous window is answered), so the peer's own window
  keeps it from running ahead.

A request that needs more than C-STORE and C-ECHO (Storage Commitment, role selection, user
identity, extended negotiation) still goes, with the bytes already read, to pynetdicom's
association (``Worker.fall_back``) until those services run on the engine too (issue 13).
A peer's protocol violation costs one WARNING line naming the peer and the reason.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any

from node import ul
from node.errors import STATUS_OUT_OF_RESOURCES
from node.messages import HandOff
from node.receive import VERIFICATION, Received
from node.storage import PREAMBLE

if TYPE_CHECKING:
    from actors.worker import Worker, _Live

log = logging.getLogger("actors.worker")

READ_SIZE = 1 << 16

# How long to wait for the peer to close after an A-ASSOCIATE-RJ or A-RELEASE-RP (the
# requestor closes the connection, PS3.8 7.1.4 / 7.2), before closing it ourselves.
CLOSE_WAIT_S = 1.0


@dataclass
class _Incoming:
    """One C-STORE's dataset arriving: bytes in memory, spilled to a spool file when large."""

    context_id: int
    command: ul.CStoreRQ
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


def fall_back_reason(request: ul.AssociateRequest, served: frozenset[str]) -> str | None:
    """Why this request needs pynetdicom's association; None when the engine shell serves it."""
    for what, items in (("role selection", request.roles), ("extended negotiation", request.extended),
                        ("common extended negotiation", request.common_extended)):
        if items:
            return f"proposes {what}"
    if request.user_identity is not None:
        return "proposes user identity"
    for context in request.contexts:
        if context.abstract_syntax not in served:
            return f"proposes {context.abstract_syntax}"
    return None


class EngineAssociation(threading.Thread):
    """Serves one accepted connection; ``is_alive``/``abort`` follow a fall-back association."""

    def __init__(self, worker: Worker, conn: socket.socket, handoff: HandOff, live: _Live) -> None:
        super().__init__(name=f"assoc-{handoff.assoc_id}", daemon=True)
        self.worker = worker
        self.conn = conn
        self.handoff = handoff
        self.live = live
        self.delegate: Any = None  # pynetdicom's Association when the request needed it
        net = worker.config.network
        self.engine = ul.Association(ul.Role.ACCEPTOR, pdu_limit=worker.max_pdu_read, data_limit=worker.max_pdu_read,
                                     send_cap=net.max_pdu_send)
        self.acse_timeout = (net.request_timeout_ms / 1000) if net.request_timeout_ms else net.acse_timeout
        self.idle_timeout = (net.idle_timeout_ms / 1000) if net.idle_timeout_ms else net.network_timeout
        self._read_so_far = bytearray()  # until the A-ASSOCIATE-RQ is decoded: a fall-back replays it
        self._incoming: _Incoming | None = None
        self._spools = 0
        self._closed = False

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
        self._send_quietly(ul.abort_pdu())
        self._close()

    # ----- the association ------------------------------------------------------------------

    def run(self) -> None:
        aid, peer = self.handoff.assoc_id, f"{self.handoff.peer_host}:{self.handoff.peer_port}"
        try:
            self._serve()
        except ul.ProtocolViolation as exc:
            log.warning("assoc=%s peer=%s aborted: %s", aid, peer, exc)
            self._send_quietly(exc.abort_pdu)
        except TimeoutError:
            log.warning("assoc=%s peer=%s timed out waiting for the peer: aborting", aid, peer)
            self._send_quietly(ul.abort_pdu())
        except OSError as exc:
            log.warning("assoc=%s peer=%s connection failed: %s", aid, peer, exc)
        except Exception:  # a bug here must cost one association, not the worker's count of them
            log.exception("assoc=%s peer=%s failed: aborting", aid, peer)
            self._send_quietly(ul.abort_pdu())
        finally:
            if self._incoming is not None:
                self._incoming.discard()
            if self.delegate is None:
                self._close()

    def _serve(self) -> None:
        engine = self.engine
        while engine.state is not ul.State.STA1 and self.delegate is None:
            data = self._read()
            if data is None:  # ARTIM ran out: close (Sta2: no whole request came; Sta13: no close came)
                if engine.state is ul.State.STA2:
                    log.warning("assoc=%s peer=%s:%d sent no whole A-ASSOCIATE-RQ in %.1f s: closing", self.handoff.assoc_id,
                                self.handoff.peer_host, self.handoff.peer_port, self.acse_timeout)
                engine.artim_expired()
                continue
            if self._read_so_far is not None:
                self._read_so_far += data
            engine.receive_data(data)
            for event in engine.events():
                self._on_event(event)
                if self.delegate is not None:
                    return

    def _read(self) -> bytes | None:
        """The next bytes from the peer (b"" when it closed); None when ARTIM expired."""
        engine = self.engine
        if engine.artim_running:  # Sta2: the request timeout; Sta13: the wait for the peer to close
            self.conn.settimeout(self.acse_timeout if engine.state is ul.State.STA2 else CLOSE_WAIT_S)
        else:
            self.conn.settimeout(self.idle_timeout or None)
        try:
            data = self.conn.recv(READ_SIZE)
        except TimeoutError:
            if engine.artim_running:
                return None
            raise
        except ConnectionResetError:
            data = b""
        try:  # a Nagle-on peer waits for our ACK of a partial PDU: do not delay it (up to 40 ms)
            self.conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
        except (OSError, AttributeError):
            pass
        return data

    def _on_event(self, event: ul.Event) -> None:
        aid = self.handoff.assoc_id
        if isinstance(event, ul.AssociateRequest):
            self._on_request(event)
        elif isinstance(event, ul.Command):
            self._on_command(event)
        elif isinstance(event, ul.DatasetFragment):
            self._on_fragment(event)
        elif isinstance(event, ul.ReleaseRequest):
            if self._incoming is not None:
                log.warning("assoc=%s released in the middle of a message", aid)
            self._send(self.engine.send(ul.ReleaseReply()))
        elif isinstance(event, ul.Abort):
            log.info("assoc=%s aborted (source %d, reason %d)", aid, event.source, event.reason)
        elif isinstance(event, ul.ConnectionClosed) and self.engine.request is None:
            log.info("assoc=%s connection closed by the peer before a request", aid)

    def _on_request(self, request: ul.AssociateRequest) -> None:
        reason = fall_back_reason(request, self.worker.lean_syntaxes)
        if reason is not None:
            log.debug("assoc=%s %s: pynetdicom's association serves it", self.handoff.assoc_id, reason)
            self.delegate = self.worker.fall_back(self.live, self.conn, bytes(self._read_so_far))
            return
        self._read_so_far = None  # type: ignore[assignment]
        refusal = self.worker.admit_request(self.live, request.called_ae, request.calling_ae)
        if refusal is not None:
            self._send(self.engine.send(ul.AssociateReject(result=refusal.result, source=refusal.source, reason=refusal.reason)))
            return
        answer = ul.negotiate(request, self.worker.acceptor_policy(self.live))
        self._send(self.engine.send(answer))
        if isinstance(answer, ul.AssociateAccept):
            log.info("assoc=%s calling=%s called=%s accepted %d context(s)", self.handoff.assoc_id, request.calling_ae,
                     request.called_ae, len(self.engine.contexts))

    def _on_command(self, event: ul.Command) -> None:
        """Answer a C-ECHO now; start receiving a C-STORE's dataset."""
        message, context = event.message, self.engine.contexts[event.context_id]
        if isinstance(message, ul.CCancelRQ):
            return  # nothing outstanding to cancel: one operation at a time
        if isinstance(message, ul.CEchoRQ) and context.abstract_syntax == VERIFICATION:
            self._send(self.engine.send_message(event.context_id, ul.CEchoRSP(
                message_id_being_responded_to=message.message_id, status=0, affected_sop_class_uid=message.affected_sop_class_uid)))
            return
        if not isinstance(message, ul.CStoreRQ) or context.abstract_syntax == VERIFICATION:
            raise ul.ProtocolViolation(f"{type(message).__name__} is not served on context {event.context_id} "
                                       f"({context.abstract_syntax})", ul.REASON_UNEXPECTED_PDU,
                                       abort_pdu=self._abort_bytes(ul.REASON_UNEXPECTED_PDU))
        if not message.has_dataset:
            raise ul.ProtocolViolation("C-STORE-RQ without a dataset", ul.REASON_INVALID_PARAMETER,
                                       abort_pdu=self._abort_bytes(ul.REASON_INVALID_PARAMETER))
        request = self.engine.request
        assert request is not None
        received = Received(
            assoc_id=self.handoff.assoc_id,
            sop_class_uid=message.affected_sop_class_uid,
            sop_instance_uid=message.affected_sop_instance_uid,
            transfer_syntax=context.transfer_syntax,
            calling_aet=request.calling_ae,
            called_aet=self.worker.called_aet(self.live),
            implementation_class_uid=request.implementation_class_uid,
            implementation_version_name=request.implementation_version_name,
        )
        self._spools += 1
        spool = os.path.join(self.worker.spool_dir, f"{self.handoff.assoc_id}-{self._spools}.dcm")
        self._incoming = _Incoming(event.context_id, message, received, self.worker.meta_cache.meta(received),
                                   self.worker.config.store.inline_threshold, spool)

    def _on_fragment(self, event: ul.DatasetFragment) -> None:
        incoming = self._incoming
        assert incoming is not None  # the engine sends no dataset fragment without a command
        incoming.add(event.data)
        if event.last:
            self._incoming = None
            self._store(incoming)

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
        rq = incoming.command
        self._send(self.engine.send_message(incoming.context_id, ul.CStoreRSP(
            message_id_being_responded_to=rq.message_id, status=status, affected_sop_class_uid=rq.affected_sop_class_uid,
            affected_sop_instance_uid=rq.affected_sop_instance_uid)))

    # ----- the socket -----------------------------------------------------------------------

    def _abort_bytes(self, reason: int) -> bytes:
        """Our own abort for a DIMSE request we do not serve: the engine's state follows (AA-1)."""
        return self.engine.send(ul.Abort(source=ul.SOURCE_SERVICE_PROVIDER, reason=reason))

    def _send(self, data: bytes) -> None:
        self.conn.sendall(data)

    def _send_quietly(self, data: bytes) -> None:
        if self._closed or not data:
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
