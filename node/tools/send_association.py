"""``nodectl send``'s association: the core's sans-IO engine (``node.ul``) on one blocking socket.

A throughput loop, not a general requestor shell: one socket with ``TCP_NODELAY``, each
C-STORE-RQ command and its dataset written with one ``sendall`` when the dataset is small,
the dataset read from its file and framed into PDVs of the peer's maximum length without
being decoded (so it needs an accepted context with the file's own transfer syntax), and
responses matched to requests by Message ID. With ``--async N`` up to N C-STOREs are in
flight at once: the A-ASSOCIATE-RQ proposes that window, and a peer that answers without
one (DCMTK's storescp) gets one at a time, as PS3.7 D.3.3.3 has it.

The engine keeps the protocol (states, the window, which response answers which request);
this module owns the socket, the timeouts and the files. Failures come back as values:
``Refusal`` for an association that was not established, a list of unanswered files when
one is lost, for ``send_worker`` to retry.
"""

from __future__ import annotations

import logging
import os
import socket
import struct
import threading
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar, Union

from actors.tcp import quick_ack
from node import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME, ul
from node.rate_limit import pacer
from node.tools.send_plan import FileEntry
from node.tools.send_results import FileResult, store_result
from node.tools.tls_options import ClientTls

if TYPE_CHECKING:  # ssl itself only where TLS is asked for: ~5 ms of start-up (importtime) a plain job never needs
    import ssl

LOGGER = logging.getLogger("node.tools.send")
RECV_BYTES = 1 << 16
STREAM_ABOVE = 1 << 20  # a dataset up to this size is read whole; a larger one in pieces
STREAM_PIECE = 1 << 20  # bytes read from the file at a time when streaming (then framed by the engine)
MAX_RELEASE_READS = 64  # reads after our A-RELEASE-RQ before giving up on the RP
_TIMEVAL = struct.Struct("@ll")  # struct timeval: seconds, microseconds (Linux)

Report = Callable[[FileResult], None]
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Readable:
    """A step's wait for bytes on ``sock``, at most ``timeout`` seconds (0: no limit)."""

    sock: socket.socket
    timeout: float


# what a step yields: the socket it reads next, or seconds to sleep (a back-off)
Wait = Union[Readable, float]
Steps = Generator[Wait, None, T]

# A-ASSOCIATE-RJ wording (PS3.8 9.3.4), in pynetdicom's words where it has them
_RESULTS = {1: "Rejected Permanent", 2: "Rejected Transient"}
_REASONS = {
    1: {1: "No reason given", 2: "Application context name not supported", 3: "Calling AE title not recognised",
        7: "Called AE title not recognised"},
    2: {1: "No reason given", 2: "Protocol version not supported"},
    3: {1: "Temporary congestion", 2: "Local limit exceeded"},
}


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerOptions:
    """Where and how to associate; the same for every worker."""

    host: str
    port: int
    calling_aet: str = "STORESCU"
    called_aet: str = "ANY-SCP"
    acse_timeout: float = 30.0
    dimse_timeout: float = 30.0
    network_timeout: float = 30.0
    max_pdu: int = 16382
    retry: int = 0
    retry_delay: float = 1.0
    async_ops: int = 1  # --async: C-STOREs in flight at once, if the peer agrees
    tls: ClientTls | None = None  # --tls-*: each worker builds its own SSLContext from it
    files_per_s: float = 0.0  # --rate, this worker's share (0: no limit)
    bytes_per_s: float = 0.0  # --max-mbps, this worker's share (0: no limit)


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why an association was not established, and whether trying again can help."""

    reason: str
    retryable: bool
    network: bool = True


class Lost(Exception):
    """The association is gone (peer abort, closed connection, timeout, protocol violation)."""


class Interrupted(Exception):
    """Ctrl-C while worker threads send: this worker aborts its association and sends no more."""


class Interrupt:
    """Ctrl-C for the worker threads of ``nodectl send -j N``.

    The main thread calls ``set``; every socket a worker has registered with ``watch`` gets its
    reading side shut, so a worker waiting for a response wakes at once (rather than after
    the DIMSE timeout), sees ``is_set`` and aborts its own association. Only the worker writes
    to its socket: an A-ABORT from the main thread could land inside a P-DATA PDU the worker
    is writing. The lock is taken per association (watch, forget), never per file.
    """

    def __init__(self) -> None:
        self._set = False
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        with self._lock:
            self._set = True
            waiting = list(self._sockets)
        for sock in waiting:
            _wake(sock)

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.add(sock)
            now = self._set
        if now:
            _wake(sock)

    def forget(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.discard(sock)


def _wake(sock: socket.socket) -> None:
    """Make a blocked (or the next) ``recv`` on ``sock`` return b"" while writing still works.
    ``socket.socket.shutdown``, not the SSL socket's own: that one drops the TLS session, and
    the A-ABORT still has to go through it."""
    try:
        socket.socket.shutdown(sock, socket.SHUT_RD)
    except OSError:
        pass


class SendAssociation:
    """One established association of a send worker."""

    def __init__(self, sock: socket.socket, engine: ul.Association, peer: PeerOptions,
                 interrupt: Interrupt | None = None, *, tls: bool = False) -> None:
        self.sock = sock
        self.interrupt = interrupt
        self.engine = engine
        self.peer = peer
        self.by_syntax = {(cx.abstract_syntax, cx.transfer_syntax): cx.context_id
                          for cx in engine.contexts.values() if cx.requestor_scu}
        self.window = max(1, min(peer.async_ops, engine.max_invoked or peer.async_ops))
        self.lost_because = ""  # why the association was lost, once it was
        self._next_id = 1
        self.pace = pacer(peer.files_per_s, peer.bytes_per_s)
        self.readable = Readable(sock, peer.dimse_timeout)  # what its steps yield before reading responses
        self.kernel_timeouts = not tls  # a TLS socket keeps Python's timeouts (kernel_timeouts)
        self._recv_timeout = peer.dimse_timeout
        if self.kernel_timeouts:
            kernel_timeouts(sock, peer.network_timeout, peer.dimse_timeout)
        if interrupt is not None:
            interrupt.watch(sock)

    @property
    def is_established(self) -> bool:
        return self.engine.established

    # ----- C-STORE ------------------------------------------------------------------------------

    def send_files(self, files: Sequence[FileEntry], report: Report, worker: int) -> list[FileEntry]:
        """C-STORE ``files`` in order, up to ``window`` awaiting a response at once; report each
        outcome. Returns the files left without a response when the association was lost, the
        oldest one in flight first (an empty list when every file got its answer)."""
        return drive(self.store_steps(files, report, worker))

    def store_steps(self, files: Sequence[FileEntry], report: Report, worker: int) -> Steps[list[FileEntry]]:
        """``send_files`` as steps: yields ``self.readable`` before each read of responses, so
        that one thread can drive several associations (``send_multiplex``) and resume this one
        when its socket is readable; ``drive`` just reads (blocking, the DIMSE timeout on the socket)."""
        in_flight: dict[int, FileEntry] = {}
        position = 0
        while position < len(files) or in_flight:
            while position < len(files) and len(in_flight) < self.window:
                entry = files[position]
                position += 1
                self.pace.wait(entry.size)
                try:
                    message_id = self._store(entry, in_flight)
                except Lost as exc:
                    self._lose(str(exc))
                    return [*in_flight.values(), entry, *files[position:]]
                except _FileFailed as exc:
                    report(FileResult(index=entry.index, sent=False, reason=str(exc), worker=worker))
                    continue
                in_flight[message_id] = entry
            if not in_flight:
                continue
            try:
                answers = yield from self._responses()
            except Lost as exc:
                self._lose(str(exc))
                return [*in_flight.values(), *files[position:]]
            for answer in answers:
                entry = in_flight.pop(answer.message_id_being_responded_to)
                report(store_result(entry, answer.status, worker))
        return []

    def _store(self, entry: FileEntry, in_flight: dict[int, FileEntry]) -> int:
        """Write one C-STORE-RQ and its dataset; its Message ID (not in use by another)."""
        context_id = self.by_syntax.get(entry.context)
        if context_id is None:
            raise _FileFailed(f"no accepted presentation context for {entry.sop_class_uid} with {entry.transfer_syntax_uid}")
        message_id = self._message_id(in_flight)
        command = ul.Command(context_id=context_id, message=ul.CStoreRQ(
            message_id=message_id, affected_sop_class_uid=entry.sop_class_uid,
            affected_sop_instance_uid=entry.sop_instance_uid))
        if entry.data is not None:  # the scan kept it: no file to open
            self._send_whole(command, entry.data, entry.path)
            return message_id
        try:
            fd = os.open(entry.path, os.O_RDONLY)
        except OSError as exc:
            raise _FileFailed(f"cannot read {entry.path}: {exc.strerror}") from None
        try:
            if entry.size <= STREAM_ABOVE:
                self._send_whole(command, os.pread(fd, entry.size, entry.offset), entry.path)
            else:
                self._write(self.engine.send(command))
                for piece, last in _pieces(fd, entry.offset):
                    self._write(self.engine.send(ul.DatasetFragment(context_id=context_id, data=piece, last=last)))
        except OSError as exc:
            raise Lost(f"while sending {entry.path}: {exc}") from None
        finally:
            os.close(fd)
        return message_id

    def _send_whole(self, command: ul.Command, data: bytes, path: str) -> None:
        """The command and its whole dataset in one write."""
        try:
            self._write(self.engine.send(command) + self.engine.send(
                ul.DatasetFragment(context_id=command.context_id, data=data, last=True)))
        except OSError as exc:
            raise Lost(f"while sending {path}: {exc}") from None

    def _message_id(self, in_flight: dict[int, FileEntry]) -> int:
        """The next Message ID (1..65535, wrapping), skipping those still awaiting a response."""
        while True:
            message_id = self._next_id
            self._next_id = message_id % 0xFFFF + 1
            if message_id not in in_flight:
                return message_id

    def _responses(self) -> Steps[list[ul.CStoreRSP]]:
        """Every C-STORE-RSP the next reads bring, at least one (waits up to the DIMSE timeout
        for each read; yields ``self.readable`` before each)."""
        answers: list[ul.CStoreRSP] = []
        while not answers:
            yield self.readable
            for event in self._read(self.peer.dimse_timeout):
                if isinstance(event, ul.Command) and isinstance(event.message, ul.CStoreRSP):
                    answers.append(event.message)
                elif isinstance(event, (ul.Abort, ul.ConnectionClosed)):
                    raise Lost("aborted by the peer" if isinstance(event, ul.Abort) else "connection closed by the peer")
                else:
                    raise Lost(f"unexpected {type(event).__name__} while waiting for C-STORE responses")
        return answers

    # ----- socket -------------------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        """Write all of ``data`` within the network timeout (the kernel's, or set here)."""
        if not self.kernel_timeouts:
            set_timeout(self.sock, self.peer.network_timeout)
        self.sock.sendall(data)

    def _read(self, timeout: float) -> list[ul.Event]:
        """The events of one read within ``timeout``; the kernel's receive timeout is set
        only when it changes (the DIMSE timeout for responses, the ACSE one at release)."""
        if not self.kernel_timeouts:
            return read_events(self.sock, self.engine, timeout, self.interrupt)
        if timeout != self._recv_timeout:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _timeval(timeout))
            self._recv_timeout = timeout
        return read_events(self.sock, self.engine, timeout, self.interrupt, kernel=True)

    # ----- ending -------------------------------------------------------------------------------

    def release(self) -> None:
        """A-RELEASE-RQ, then wait (ACSE timeout) for the A-RELEASE-RP, then close (also when
        ``Interrupted`` ends the wait)."""
        drive(self.release_steps())

    def release_steps(self) -> Steps[None]:
        """``release`` as steps: the wait before each read is yielded."""
        try:
            if self.engine.established:
                self._write(self.engine.send(ul.ReleaseRequest()))
                for _ in range(MAX_RELEASE_READS):
                    yield Readable(self.sock, self.peer.acse_timeout)
                    events = self._read(self.peer.acse_timeout)
                    if any(isinstance(e, (ul.ReleaseReply, ul.Abort, ul.ConnectionClosed)) for e in events):
                        break
        except (OSError, Lost):
            pass
        finally:
            self._close()

    def abort(self) -> None:
        """A-ABORT (service user) if the association is still up, then close."""
        if self.engine.established:
            try:
                self._send_quietly(self.engine.send(ul.Abort()))
            except ul.LocalProtocolError:
                pass
        self._close()

    def _lose(self, why: str) -> None:
        self.lost_because = why
        self.abort()

    def _send_quietly(self, data: bytes) -> None:
        send_quietly(self.sock, data)

    def _close(self) -> None:
        if self.interrupt is not None:
            self.interrupt.forget(self.sock)
        try:
            self.sock.close()
        except OSError:
            pass


def drive(steps: Steps[T]) -> T:
    """Run ``steps`` in this thread, blocking: a read waits on its socket (with its timeout),
    a back-off sleeps."""
    try:
        wait = next(steps)
        while True:
            if not isinstance(wait, Readable):
                time.sleep(wait)
            wait = next(steps)
    except StopIteration as done:
        return done.value


def read_events(sock: socket.socket, engine: ul.Association, timeout: float,
                interrupt: Interrupt | None = None, *, kernel: bool = False) -> list[ul.Event]:
    """The events one read makes; a timeout, a reset or a protocol violation loses the association
    (after a violation the engine's A-ABORT is sent first). A read ended by ``interrupt`` raises
    ``Interrupted`` before the engine hears of it, so the association is still up to abort.
    ``kernel``: the socket is blocking and the kernel keeps ``timeout`` (``SO_RCVTIMEO``:
    its expiry is EAGAIN, ``BlockingIOError``); else it is set here as the socket's timeout."""
    if not kernel:
        set_timeout(sock, timeout)
    try:
        data = sock.recv(RECV_BYTES)
    except (TimeoutError, BlockingIOError):
        raise Lost(f"no answer within {timeout:g} s") from None
    except ConnectionResetError:
        data = b""
    except OSError as exc:
        raise Lost(str(exc)) from None
    if not data and interrupt is not None and interrupt.is_set():
        raise Interrupted
    engine.receive_data(data)
    try:
        events = list(engine.events())
    except ul.ProtocolViolation as exc:
        send_quietly(sock, exc.abort_pdu)
        raise Lost(f"peer broke the protocol: {exc}") from None
    if not events or engine.buffered:  # a part of a response: a Nagle-on peer waits for our ACK
        quick_ack(sock)  # (not after a whole one: one syscall less per file, each a GIL hand-off at -j N)
    return events


def set_timeout(sock: socket.socket, seconds: float) -> None:
    """The socket's timeout (0: none), set only when it changes: each ``settimeout`` is an
    ioctl, and a C-STORE switches between the network and the DIMSE timeout twice."""
    value = seconds or None
    if sock.gettimeout() != value:
        sock.settimeout(value)


def kernel_timeouts(sock: socket.socket, send_seconds: float, receive_seconds: float) -> None:
    """Make ``sock`` blocking with its timeouts kept by the kernel (``SO_SNDTIMEO``,
    ``SO_RCVTIMEO``; 0: none). Why: a Python socket timeout costs a ``poll`` before every
    ``send`` and ``recv``, two syscalls a C-STORE (strace -c: 2 polls a file; measured in
    docs/benchmarks.md). Not for an SSL socket: OpenSSL would meet EAGAIN inside a record."""
    sock.settimeout(None)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, _timeval(send_seconds))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _timeval(receive_seconds))


def _timeval(seconds: float) -> bytes:
    """A ``struct timeval`` (0: no timeout)."""
    whole = int(seconds)
    return _TIMEVAL.pack(whole, int((seconds - whole) * 1e6))


def send_quietly(sock: socket.socket, data: bytes) -> None:
    """Write what may still reach the peer on a connection that is being given up."""
    try:
        sock.sendall(data)
    except OSError:
        pass


class _FileFailed(Exception):
    """This file cannot be sent (no context, unreadable); the association carries on."""


def _pieces(fd: int, offset: int) -> Iterator[tuple[bytes, bool]]:
    """The dataset from ``offset`` to the end of the file in ``STREAM_PIECE`` reads, each with
    whether it is the last (one read ahead, so a file that shrank still ends its dataset)."""
    previous = os.pread(fd, STREAM_PIECE, offset)
    while True:
        offset += len(previous)
        piece = os.pread(fd, STREAM_PIECE, offset) if previous else b""
        if not piece:
            yield previous, True
            return
        yield previous, False
        previous = piece


# ----- establishing -------------------------------------------------------------------------------


def associate_request(peer: PeerOptions, contexts: Sequence[tuple[str, str]]) -> ul.AssociateRequest:
    """One presentation context per (SOP class, transfer syntax) pair; the window if --async > 1."""
    if len(contexts) > 128:
        raise ValueError(f"{len(contexts)} presentation contexts, at most 128 fit one association")
    proposed = tuple(ul.ProposedContext(context_id=2 * n + 1, abstract_syntax=abstract, transfer_syntaxes=(transfer,))
                     for n, (abstract, transfer) in enumerate(contexts))
    window = ul.AsyncWindow(max_invoked=peer.async_ops, max_performed=1) if peer.async_ops > 1 else None
    return ul.AssociateRequest(called_ae=peer.called_aet, calling_ae=peer.calling_aet, contexts=proposed,
                               max_pdu=peer.max_pdu, implementation_class_uid=IMPLEMENTATION_CLASS_UID,
                               implementation_version_name=IMPLEMENTATION_VERSION_NAME, async_window=window)


def connect(peer: PeerOptions, contexts: Sequence[tuple[str, str]], tls_context: ssl.SSLContext | None,
            interrupt: Interrupt | None = None) -> Steps[SendAssociation | Refusal]:
    """Open the TCP (and TLS) connection and negotiate; the refusal says whether to retry.
    Steps: the wait for the A-ASSOCIATE answer is yielded (the TCP connection and the TLS
    handshake are made blocking, within the network and ACSE timeouts)."""
    request = associate_request(peer, contexts)
    try:
        raw = socket.create_connection((peer.host, peer.port), timeout=peer.network_timeout or None)
    except OSError as exc:
        return Refusal(f"association request failed (connection refused or timed out: {exc.strerror or exc})", retryable=True)
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock: socket.socket = raw
    engine = ul.Association(ul.Role.REQUESTOR)
    try:
        if tls_context is not None:
            sock = tls_context.wrap_socket(raw, server_side=False)
        sock.settimeout(peer.acse_timeout or None)
        sock.sendall(engine.send(request))
        answer = yield from _answer(sock, engine, peer.acse_timeout)
    except (OSError, Lost) as exc:
        sock.close()
        if tls_context is not None and _tls_failure(exc):
            return Refusal(f"association failed: TLS handshake failed or certificate refused "
                           f"({getattr(exc, 'reason', None) or exc})",
                           retryable=True)
        return Refusal(f"association request failed ({exc})", retryable=True)
    if isinstance(answer, ul.AssociateReject):
        sock.close()
        return Refusal(f"association rejected ({rejection_text(answer)})", retryable=answer.result == 2)
    if isinstance(answer, ul.Abort):
        sock.close()
        return Refusal("association aborted", retryable=True)
    scu = SendAssociation(sock, engine, peer, interrupt, tls=tls_context is not None)
    LOGGER.info("association accepted by %s:%d: %d of %d context(s), peer max PDU %d, %d C-STORE(s) in flight",
                peer.host, peer.port, len(scu.by_syntax), len(request.contexts), engine.peer_max_pdu, scu.window)
    if not scu.by_syntax:
        scu.release()
        return Refusal("no accepted presentation context", retryable=False, network=False)
    return scu


def _tls_failure(exc: Exception) -> bool:
    """Whether ``exc`` is the TLS layer's (``ssl.SSLError``); asked only with a TLS context,
    so ssl is imported by then (``tls_options.client_context``)."""
    import ssl

    return isinstance(exc, ssl.SSLError)


def _answer(sock: socket.socket, engine: ul.Association,
            timeout: float) -> Steps[ul.AssociateAccept | ul.AssociateReject | ul.Abort]:
    """The peer's answer to our A-ASSOCIATE-RQ, each read within the ACSE timeout."""
    while True:
        yield Readable(sock, timeout)
        for event in read_events(sock, engine, timeout):
            if isinstance(event, (ul.AssociateAccept, ul.AssociateReject, ul.Abort)):
                return event
            if isinstance(event, ul.ConnectionClosed):
                raise Lost("connection closed before the association was answered")


def rejection_text(reject: ul.AssociateReject) -> str:
    """``result: reason`` of an A-ASSOCIATE-RJ, as the log line and the summary give it."""
    result = _RESULTS.get(reject.result, f"result {reject.result}")
    reason = _REASONS.get(reject.source, {}).get(reject.reason, f"reason {reject.reason}")
    return f"{result}: {reason}"
