"""The worker's association thread: a thin shell on node.ul for every acceptor association.

Read, feed the engine, act on its events, write: the engine (node/ul) keeps PS3.8's state
machine, reassembles and fragments P-DATA and checks the DIMSE rules; this module owns the
socket, the clock (ARTIM and the idle timeout as socket timeouts) and the node's decisions
(admission, where a dataset goes, when a C-STORE-RSP may go out):

* a C-STORE's dataset is kept in memory up to ``store.inline_threshold`` and spooled to
  ``<store>/.incoming/spool/<worker>/`` beyond it, fragment by fragment as the engine
  reports them, so a 1 GiB instance never sits in memory;
* the C-STORE-RSP goes out only after the writer says the file is durable
  (``Worker.store_instance``);
* one operation at a time, unless the node offers an asynchronous operations window
  (``network.max_ops_invoked``/``max_ops_performed``, dcm4che's options) and the requestor
  proposed one: then up to the negotiated number of C-STOREs (at most ``MAX_IN_FLIGHT``)
  are made durable at once by a small pool of threads while the reader goes on, each
  answered by its Message ID as soon as it is durable; the engine, shared between them,
  is used under one lock, and the reader waits for a free slot (TCP backpressure);
* Storage Commitment (actors/commitment_io.py, the tracker): an N-ACTION-RQ goes to the
  tracker and its status back in the N-ACTION-RSP; when the tracker says ``deliver_here``
  the N-EVENT-REPORT-RQ follows on this association (unless the peer is already releasing)
  and the status of its RSP goes back as ``ReportDelivered``; an N-EVENT-REPORT-RQ from a
  peer is forwarded to the tracker and answered with its status.

Role selection, extended negotiation and user identity are answered by the engine's
negotiation (``node.ul.negotiate``) under the listener's policy (node/receive.py). A peer's
protocol violation costs one WARNING line naming the peer and the reason.
"""

from __future__ import annotations

import logging
import os
import select
import socket
import ssl
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING

from actors import _app_log, commitment_io
from actors.tcp import quick_ack
from node import commitment as sc
from node import ul
from node.errors import STATUS_OUT_OF_RESOURCES
from node.messages import CommitmentAnswer, ForwardReport, HandOff, RequestCommitment
from node.receive import STORAGE_COMMITMENT, VERIFICATION, Received, refuse_commitment_without_scp_role
from node.storage import PREAMBLE

if TYPE_CHECKING:
    from actors.worker import Worker, _Live

log = logging.getLogger("actors.worker")

# Control characters as escapes: a peer's AE title or UID may carry a newline, which would
# split a WARNING line and let a peer write lines of its own into the log.
_CONTROL_ESCAPES = {code: f"\\x{code:02x}" for code in (*range(32), 127) if code != 9}


def _one_line(record: logging.LogRecord) -> bool:
    """Logging filter: every record about an association stays on one line whatever the peer sent."""
    message = record.getMessage()
    escaped = message.translate(_CONTROL_ESCAPES)
    if escaped != message:
        record.msg, record.args = escaped, ()
    return True


log.addFilter(_one_line)
logging.getLogger(commitment_io.log.name).addFilter(_one_line)

READ_SIZE = 1 << 16

# How long to wait for the peer to close after an A-ASSOCIATE-RJ or A-RELEASE-RP (the
# requestor closes the connection, PS3.8 7.1.4 / 7.2), before closing it ourselves.
CLOSE_WAIT_S = 1.0

# C-STOREs one association makes durable at once, whatever window was negotiated.
MAX_IN_FLIGHT = 16

# Action and Event Information is held in memory: a 50,000-instance request is ~10 MB.
MAX_COMMITMENT_INFO = 64 << 20


SPOOL_BUFFER = 1 << 20


def _open_spool(path: str, flags: int) -> int:
    """``open``'s opener: a spool is created 0644 (before umask), like the writer's temp files."""
    return os.open(path, flags, 0o644)


@dataclass
class _Incoming:
    """One C-STORE's dataset arriving: its fragments held in memory, spilled to a spool file
    when large.

    The fragments are kept as they came and joined once (``data``): a bytearray grown by
    every fragment and then copied to bytes cost more copies of each byte (a 512 KiB
    instance in 16 KiB fragments: ~0.5 ms in process, ~0.4 ms of a worker's CPU in
    ``python -m bench cpu --kind ct``), and a dataset in one fragment, as most small
    instances are, is not copied at all.
    """

    context_id: int
    command: ul.CStoreRQ
    received: Received
    meta: bytes
    threshold: int
    spool_path: str
    fragments: list[bytes] = field(default_factory=list)
    held: int = 0  # bytes in ``fragments``
    spool: IO[bytes] | None = None
    size: int = 0

    def add(self, data: bytes) -> None:
        self.size += len(data)
        if self.spool is not None:
            self.spool.write(data)
            return
        self.fragments.append(data)
        self.held += len(data)
        if self.held > self.threshold:
            # The spool has the layout read_spooled expects: preamble, file meta, dataset.
            # A 1 MiB buffer: one write(2) per MiB instead of one per P-DATA fragment (16 KiB
            # from most peers). Mode 0644 as the writer's temp files: the writer may rename
            # this very file to its final path (node.storage.Store._adopt_spool).
            self.spool = open(self.spool_path, "wb", buffering=SPOOL_BUFFER, opener=_open_spool)  # noqa: SIM115 - closed in finish/discard
            self.spool.write(PREAMBLE)
            self.spool.write(self.meta)
            self.spool.writelines(self.fragments)
            self.fragments, self.held = [], 0

    @property
    def data(self) -> bytes:
        """The dataset held in memory (not spooled), as one bytes object (a single fragment
        itself: ``bytes.join`` of one bytes object returns it)."""
        return b"".join(self.fragments)

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


@dataclass
class _Collecting:
    """An N-ACTION-RQ's or N-EVENT-REPORT-RQ's information arriving, kept in memory (bounded)."""

    context_id: int
    command: ul.NActionRQ | ul.NEventReportRQ
    data: bytearray = field(default_factory=bytearray)
    overflow: bool = False

    def add(self, data: bytes) -> None:
        if self.overflow or len(self.data) + len(data) > MAX_COMMITMENT_INFO:
            self.overflow = True
            self.data = bytearray()
            return
        self.data += data

    def discard(self) -> None:
        self.data = bytearray()


@dataclass
class _Report:
    """Our N-EVENT-REPORT-RQ on the requester's association, awaiting its RSP."""

    message_id: int
    answer: CommitmentAnswer
    deadline: float


class EngineAssociation(threading.Thread):
    """Serves one accepted connection from its A-ASSOCIATE-RQ to its close."""

    def __init__(self, worker: Worker, conn: socket.socket, handoff: HandOff, live: _Live) -> None:
        super().__init__(name=f"assoc-{handoff.assoc_id}", daemon=True)
        self.worker = worker
        self.conn = conn
        self.handoff = handoff
        self.live = live
        net = worker.config.network
        self.engine = ul.Association(ul.Role.ACCEPTOR, pdu_limit=worker.max_pdu_read, data_limit=worker.max_pdu_read,
                                     send_cap=net.max_pdu_send)
        self.acse_timeout = (net.request_timeout_ms / 1000) if net.request_timeout_ms else net.acse_timeout
        self.idle_timeout = (net.idle_timeout_ms / 1000) if net.idle_timeout_ms else net.network_timeout
        self._incoming: _Incoming | _Collecting | None = None
        self._report: _Report | None = None
        self._next_message_id = 0
        self._tracker: commitment_io.TrackerClient | None = None
        self._spools = 0
        self._called: str | None = None  # the listener's AE title, looked up on the first C-STORE
        # Every C-STORE names its would-be spool file; a prefix made once keeps pathlib's
        # os.fspath and os.path.join (a fiftieth of a worker's CPU per small instance) out of it.
        self._spool_prefix = f"{worker.spool_dir}{os.sep}{handoff.assoc_id}-"
        self._closed = False
        self._lock = threading.Lock()  # the engine and the socket's sending side
        self._pool: ThreadPoolExecutor | None = None  # with a negotiated window above 1
        self._slots: threading.BoundedSemaphore | None = None
        self._in_flight: set[Future[None]] = set()

    @property
    def peer(self) -> str:
        return f"{self.handoff.peer_host}:{self.handoff.peer_port}"

    # ----- what the worker's main loop sees -------------------------------------------------

    def abort(self) -> None:
        """A-ABORT and close (worker shutdown)."""
        self._send_quietly(ul.abort_pdu())
        self._close()

    # ----- the association ------------------------------------------------------------------

    def run(self) -> None:
        aid, peer = self.handoff.assoc_id, self.peer
        try:
            self._serve()
        except ul.ProtocolViolation as exc:
            log.warning("assoc=%s peer=%s aborted: %s", aid, peer, exc)
            self._send_quietly(exc.abort_pdu)
        except TimeoutError as exc:
            log.warning("assoc=%s peer=%s %s: aborting", aid, peer, exc)
            self._send_quietly(ul.abort_pdu())
        except OSError as exc:
            log.warning("assoc=%s peer=%s connection failed: %s", aid, peer, exc)
        except Exception:  # a bug here must cost one association, not the worker's count of them
            log.exception("assoc=%s peer=%s failed: aborting", aid, peer)
            self._send_quietly(ul.abort_pdu())
        finally:
            if self._incoming is not None:
                self._incoming.discard()
            if self._pool is not None:  # stores under way finish (bounded by the write timeout)
                self._pool.shutdown(wait=True)
            self._report_outcome(-1)
            self._close()

    def _serve(self) -> None:
        engine = self.engine
        while engine.state is not ul.State.STA1:
            data = self._read()
            if data is None:  # ARTIM ran out: close (Sta2: no whole request came; Sta13: no close came)
                if engine.state is ul.State.STA2:
                    log.warning("assoc=%s peer=%s sent no whole A-ASSOCIATE-RQ in %.1f s: closing", self.handoff.assoc_id,
                                self.peer, self.acse_timeout)
                with self._lock:
                    engine.artim_expired()
                continue
            self._feed(data)

    def _feed(self, data: bytes) -> None:
        with self._lock:
            self.engine.receive_data(data)
        self._take_events()

    def _take_events(self) -> None:
        """Act on every event the buffered bytes make (the engine only under the lock)."""
        while True:
            with self._lock:
                event = self.engine.next_event()
            if isinstance(event, ul.NeedData):
                return
            self._on_event(event)
            if isinstance(event, ul.ConnectionClosed):
                return

    def _read(self) -> bytes | None:
        """The next bytes from the peer (b"" when it closed); None when ARTIM expired."""
        engine = self.engine
        report_wait = None
        if self._report is not None:
            report_wait = max(0.0, self._report.deadline - time.monotonic())
        if engine.artim_running:  # Sta2: the request timeout; Sta13: the wait for the peer to close
            timeout = self.acse_timeout if engine.state is ul.State.STA2 else CLOSE_WAIT_S
        elif report_wait is not None:
            timeout = min(report_wait, self.idle_timeout) if self.idle_timeout else report_wait
        else:
            timeout = self.idle_timeout or None
        # settimeout is a system call (ioctl FIONBIO) even when nothing changes: once per read
        # it was one more syscall per C-STORE.
        if self.conn.gettimeout() != timeout:
            self.conn.settimeout(timeout)
        try:
            data = self.conn.recv(READ_SIZE)
        except TimeoutError:
            if engine.artim_running:
                return None
            if self._report is not None:
                self._report_outcome(-1)
                raise TimeoutError(f"no N-EVENT-REPORT-RSP in {commitment_io.SAME_ASSOCIATION_DIMSE_S:.0f} s") from None
            raise TimeoutError("timed out waiting for the peer") from None
        except ConnectionResetError:
            data = b""
        quick_ack(self.conn)  # a Nagle-on peer waits for our ACK of a partial PDU (up to 40 ms)
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
                log.warning("assoc=%s peer=%s released in the middle of a message", aid, self.peer)
            self._wait_for_operations()
            self._send_event(ul.ReleaseReply())
            _app_log.released()
        elif isinstance(event, ul.Abort):
            log.info("assoc=%s aborted (source %d, reason %d)", aid, event.source, event.reason)
            _app_log.aborted()
        elif isinstance(event, ul.ConnectionClosed) and self.engine.request is None:
            log.info("assoc=%s connection closed by the peer before a request", aid)

    def _on_request(self, request: ul.AssociateRequest) -> None:
        _app_log.associate_request(request)
        refusal = self.worker.admit_request(self.live, request.called_ae, request.calling_ae)
        answer: ul.AssociateAccept | ul.AssociateReject
        if refusal is not None:
            answer = ul.AssociateReject(result=refusal.result, source=refusal.source, reason=refusal.reason)
        else:
            answer = ul.negotiate(request, self.worker.acceptor_policy(self.live))
        if isinstance(answer, ul.AssociateAccept) and self.worker.config.commitment.role_reject:
            answer = refuse_commitment_without_scp_role(request, answer)
        _app_log.associate_answer(request, answer)
        self._send_event(answer)
        if isinstance(answer, ul.AssociateAccept):
            self._open_window()
            log.info("assoc=%s calling=%s called=%s accepted %d context(s)", self.handoff.assoc_id, request.calling_ae,
                     request.called_ae, len(self.engine.contexts))

    def _on_command(self, event: ul.Command) -> None:
        """Answer a C-ECHO now; start receiving a C-STORE's dataset or a commitment's information."""
        message, context = event.message, self.engine.contexts[event.context_id]
        _app_log.command_received(event.context_id, message)
        if isinstance(message, ul.CCancelRQ):
            return  # nothing outstanding to cancel: one operation at a time
        if isinstance(message, ul.CEchoRQ) and context.abstract_syntax == VERIFICATION:
            self._send_message(event.context_id, ul.CEchoRSP(
                message_id_being_responded_to=message.message_id, status=0, affected_sop_class_uid=message.affected_sop_class_uid))
            return
        if context.abstract_syntax == STORAGE_COMMITMENT:
            self._on_commitment_command(event.context_id, message)
            return
        if not isinstance(message, ul.CStoreRQ) or context.abstract_syntax == VERIFICATION:
            self._refuse(f"{type(message).__name__} is not served on context {event.context_id} ({context.abstract_syntax})")
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
            called_aet=self._called_aet(),
            implementation_class_uid=request.implementation_class_uid,
            implementation_version_name=request.implementation_version_name,
        )
        self._spools += 1
        spool = f"{self._spool_prefix}{self._spools}.dcm"
        self._incoming = _Incoming(event.context_id, message, received, self.worker.meta_cache.meta(received),
                                   self.worker.config.store.inline_threshold, spool)

    def _called_aet(self) -> str:
        """Our AE title on this association's listener, looked up on its first C-STORE rather
        than on every one: the association's later C-STOREs keep it even if a reload (SIGHUP)
        gives the listener another title meanwhile."""
        if self._called is None:
            self._called = self.worker.called_aet(self.live)
        return self._called

    def _refuse(self, why: str) -> None:
        """A DIMSE message this node does not serve: abort (AA-1), naming it."""
        raise ul.ProtocolViolation(why, ul.REASON_UNEXPECTED_PDU, abort_pdu=self._abort_bytes(ul.REASON_UNEXPECTED_PDU))

    def _on_fragment(self, event: ul.DatasetFragment) -> None:
        incoming = self._incoming
        assert incoming is not None  # the engine sends no dataset fragment without a command
        incoming.add(event.data)
        if not event.last:
            return
        self._incoming = None
        if isinstance(incoming, _Collecting):
            self._commitment(incoming)
            return
        self.live.stores += 1
        if self._pool is None:
            self._store(incoming, self.live.stores)
            return
        assert self._slots is not None
        self._slots.acquire()  # the reader pauses while MAX_IN_FLIGHT stores are under way
        future = self._pool.submit(self._store, incoming, self.live.stores)
        with self._lock:
            self._in_flight.add(future)
        future.add_done_callback(self._operation_done)

    def _open_window(self) -> None:
        """A negotiated window above one operation: the pool that performs them."""
        window = self.engine.max_performed
        if window == 1 or isinstance(self.conn, ssl.SSLSocket):
            return  # TLS: one SSL object must not be read and written from two threads at once
        size = min(window or MAX_IN_FLIGHT, MAX_IN_FLIGHT)
        self._pool = ThreadPoolExecutor(max_workers=size, thread_name_prefix=f"store-{self.handoff.assoc_id}")
        self._slots = threading.BoundedSemaphore(size)
        log.info("assoc=%s asynchronous window: %d operation(s) performed at once", self.handoff.assoc_id, size)

    def _operation_done(self, future: Future[None]) -> None:
        with self._lock:
            self._in_flight.discard(future)
        assert self._slots is not None
        self._slots.release()

    def _wait_for_operations(self) -> None:
        """Every C-STORE under way answered before the release is (PS3.7: the peer should
        not release with operations outstanding; if it does, they still end in order)."""
        with self._lock:
            pending = list(self._in_flight)
        for future in pending:
            future.result()

    def _store(self, incoming: _Incoming, number: int) -> None:
        """Make the instance durable (or not, as the store options say), then answer by Message ID."""
        incoming.finish()
        try:
            status = self.worker.store_with_options(number, lambda: self.worker.store_instance(self.live, incoming))
        except Exception:  # never leave the peer without an answer
            log.exception("assoc=%s sop=%s store failed", self.handoff.assoc_id, incoming.received.sop_instance_uid)
            status = STATUS_OUT_OF_RESOURCES
        finally:
            incoming.discard()
        rq = incoming.command
        rsp = ul.CStoreRSP(message_id_being_responded_to=rq.message_id, status=status, affected_sop_class_uid=rq.affected_sop_class_uid,
                           affected_sop_instance_uid=rq.affected_sop_instance_uid)
        if self._pool is None:
            self._send_message(incoming.context_id, rsp)
            return
        try:  # a pool thread: the association may have ended meanwhile
            self._send_message(incoming.context_id, rsp)
        except (ul.LocalProtocolError, OSError) as exc:
            log.info("assoc=%s sop=%s response not sent, the association ended: %s", self.handoff.assoc_id,
                     rq.affected_sop_instance_uid, exc)

    # ----- storage commitment ----------------------------------------------------------------

    def _on_commitment_command(self, context_id: int, message: ul.Message) -> None:
        """N-ACTION-RQ or N-EVENT-REPORT-RQ: collect its information; the RSP to our report."""
        if isinstance(message, ul.NEventReportRSP):
            self._report_outcome(message.status)
            return
        if not isinstance(message, (ul.NActionRQ, ul.NEventReportRQ)):
            self._refuse(f"{type(message).__name__} is not served on the Storage Commitment context {context_id}")
        collecting = _Collecting(context_id, message)  # type: ignore[arg-type]
        if message.has_dataset:
            self._incoming = collecting
        else:
            self._commitment(collecting)

    def _commitment(self, collected: _Collecting) -> None:
        """Ask the tracker, answer the peer; a promised report follows on this association."""
        message = collected.command
        data = bytes(collected.data) if collected.command.has_dataset else None
        if isinstance(message, ul.NActionRQ):
            status, here = (sc.STATUS_RESOURCE_LIMITATION, None) if collected.overflow else \
                commitment_io.request_commitment(self._tracker_client(), self._tracker_message(collected), data)  # type: ignore[arg-type]
            self._send_message(collected.context_id, ul.NActionRSP(
                message_id_being_responded_to=message.message_id, status=status,
                affected_sop_class_uid=message.requested_sop_class_uid,
                affected_sop_instance_uid=message.requested_sop_instance_uid, action_type_id=message.action_type_id))
            if here is not None:
                self._deliver_here(collected.context_id, here)
            return
        status = sc.STATUS_RESOURCE_LIMITATION if collected.overflow else \
            commitment_io.forward_report(self._tracker_client(), self._tracker_message(collected), data)  # type: ignore[arg-type]
        self._send_message(collected.context_id, ul.NEventReportRSP(
            message_id_being_responded_to=message.message_id, status=status,
            affected_sop_class_uid=message.affected_sop_class_uid,
            affected_sop_instance_uid=message.affected_sop_instance_uid, event_type_id=message.event_type_id))

    def _tracker_client(self) -> commitment_io.TrackerClient:
        if self._tracker is None:
            self._tracker = commitment_io.TrackerClient(self.worker.config, self.worker.ctx, self.worker.name)
        return self._tracker

    def _tracker_message(self, collected: _Collecting) -> RequestCommitment | ForwardReport:
        """The tracker's message for a collected N-ACTION-RQ or N-EVENT-REPORT-RQ."""
        message, request = collected.command, self.engine.request
        assert request is not None
        common = dict(transfer_syntax=self.engine.contexts[collected.context_id].transfer_syntax,
                      calling_aet=request.calling_ae, called_aet=self.worker.called_aet(self.live), assoc_id=self.handoff.assoc_id)
        if isinstance(message, ul.NActionRQ):
            return RequestCommitment(action_type=message.action_type_id, sop_class_uid=message.requested_sop_class_uid,
                                     sop_instance_uid=message.requested_sop_instance_uid, peer_host=self.handoff.peer_host, **common)
        return ForwardReport(event_type=message.event_type_id, sop_class_uid=message.affected_sop_class_uid,
                             sop_instance_uid=message.affected_sop_instance_uid, **common)

    def _deliver_here(self, context_id: int, answer: CommitmentAnswer) -> None:
        """Send the promised N-EVENT-REPORT-RQ after the N-ACTION-RSP; its RSP is awaited by the loop.

        A requester that releases right after the N-ACTION-RSP ignores P-DATA while releasing
        (PS3.8): bytes it sends within ``SETTLE_S`` are read first, and a release among them
        leaves the report to the tracker's outbox.
        """
        self._settle()
        if not self.engine.established or self._report is not None:
            self._report_delivered(answer, -1)
            return
        report = commitment_io.report_of(answer)
        data = sc.report_bytes(report, self.engine.contexts[context_id].transfer_syntax)
        self._next_message_id = self._next_message_id % 0xFFFF + 1
        self._report = _Report(self._next_message_id, answer, time.monotonic() + commitment_io.SAME_ASSOCIATION_DIMSE_S)
        self._send_message(context_id, ul.NEventReportRQ(
            message_id=self._next_message_id, affected_sop_class_uid=sc.SOP_CLASS, affected_sop_instance_uid=sc.SOP_INSTANCE,
            event_type_id=report.event_type), data)

    def _settle(self) -> None:
        """Act on what the peer has sent already, or sends within ``SETTLE_S`` (an A-RELEASE-RQ on its way)."""
        before = self.engine.state
        for event in self.engine.events():  # PDUs read with the N-ACTION's last one
            self._on_event(event)
        if self.engine.state is not before:
            return
        pending = getattr(self.conn, "pending", None)  # TLS: bytes already decrypted
        if not (pending and pending()) and not select.select([self.conn], [], [], commitment_io.SETTLE_S)[0]:
            return
        self.conn.settimeout(commitment_io.SETTLE_S)
        try:
            data = self.conn.recv(READ_SIZE)
        except TimeoutError:
            return
        self._feed(data)

    def _report_outcome(self, status: int) -> None:
        """The RSP to our report came (its status), or never will (-1): tell the tracker once."""
        report, self._report = self._report, None
        if report is not None:
            self._report_delivered(report.answer, status)

    def _report_delivered(self, answer: CommitmentAnswer, status: int) -> None:
        commitment_io.report_delivered(self._tracker_client(), answer, status, self.handoff.assoc_id)

    # ----- the socket -----------------------------------------------------------------------

    def _abort_bytes(self, reason: int) -> bytes:
        """Our own abort for a DIMSE request we do not serve: the engine's state follows (AA-1)."""
        with self._lock:
            return self.engine.send(ul.Abort(source=ul.SOURCE_SERVICE_PROVIDER, reason=reason))

    def _send_event(self, event: ul.Event) -> None:
        """The engine's bytes for ``event``, written in the order the engine made them."""
        with self._lock:
            self.conn.sendall(self.engine.send(event))

    def _send_message(self, context_id: int, message: ul.Message, dataset: bytes | None = None) -> None:
        with self._lock:
            self.conn.sendall(self.engine.send_message(context_id, message, dataset))

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
