"""A blocking requestor shell on node.ul: the tools' and the tracker's side of an association.

Read, feed the engine, act on its events, write, as ``actors/_ul_association.py`` does for
the acceptor. The shell owns the socket (plain or TLS through an ``ssl.SSLContext`` the
caller built) and the clocks, all of them socket timeouts:

* ``connect``: TCP connect (and the TLS handshake);
* ``acse``: waiting for the A-ASSOCIATE-AC/-RJ and for the A-RELEASE-RP;
* ``dimse``: waiting for a DIMSE message (a response, or a request of the peer's);
* ARTIM: after a protocol violation, how long the peer has to close (PS3.8 Sta13).

One thread drives it. Responses are matched to requests by Message ID, so several requests
may be outstanding within the negotiated window (``can_invoke``); a request the peer sends
on the same association (an N-EVENT-REPORT after an N-ACTION) is kept for ``wait_request``
while a response is awaited, and the other way round. Datasets received are kept in memory:
the requestor side receives only responses and reports, both small.

Every failure is one exception type, ``AssociationError``, with a ``kind`` a tool maps to
its own wording (DCMTK's conditions, pynetdicom's log lines): ``connect``, ``tls``,
``rejected``, ``aborted``, ``closed``, ``acse-timeout``, ``dimse-timeout``, ``protocol``.
"""

from __future__ import annotations

import socket
import ssl
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import BinaryIO

from actors.tcp import quick_ack
from node import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME, ul

READ_SIZE = 1 << 16
ARTIM_S = 5.0
STREAM_CHUNK = 1 << 20  # bytes read from a file per DatasetFragment; the engine fragments further


class AssociationError(Exception):
    """Why an association could not be opened or went on no further; ``kind`` says which
    (see the module docstring), ``reject``/``abort`` carry the peer's PDU when there was one,
    ``cause`` the OS or TLS error."""

    def __init__(self, kind: str, message: str, *, reject: ul.AssociateReject | None = None,
                 abort: ul.Abort | None = None, cause: BaseException | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.reject = reject
        self.abort = abort
        self.cause = cause


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Seconds; None waits for ever (DCMTK's "unlimited")."""

    connect: float | None = 30.0
    acse: float | None = 30.0
    dimse: float | None = 30.0


@dataclass(frozen=True, slots=True)
class Received:
    """A whole DIMSE message from the peer: its context, command and dataset bytes (or None)."""

    context_id: int
    message: ul.Message
    dataset: bytes | None


def request(called_ae: str, calling_ae: str, contexts: Iterable[ul.ProposedContext], *, max_pdu: int = 16382,
            roles: Iterable[ul.RoleSelection] = (), user_identity: ul.UserIdentity | None = None,
            async_window: ul.AsyncWindow | None = None) -> ul.AssociateRequest:
    """An A-ASSOCIATE-RQ carrying the node's Implementation Class UID and version name."""
    return ul.AssociateRequest(
        called_ae=called_ae, calling_ae=calling_ae, contexts=tuple(contexts), max_pdu=max_pdu,
        implementation_class_uid=IMPLEMENTATION_CLASS_UID, implementation_version_name=IMPLEMENTATION_VERSION_NAME,
        roles=tuple(roles), user_identity=user_identity, async_window=async_window)


def client_context(ca: str, certificate: str = "", key: str = "", password: str = "") -> ssl.SSLContext:
    """A TLS client context that verifies the peer against ``ca`` (certificate and host name)
    and presents ``certificate`` (``key``: its key file, empty when in the same PEM) when given.
    OSError/ssl.SSLError say which file is wrong."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if certificate:
        context.load_cert_chain(certificate, key or None, password=password or None)
    return context


def open_socket(host: str, port: int, *, timeout: float | None, family: int = socket.AF_UNSPEC,
                tls: ssl.SSLContext | None = None, server_hostname: str | None = None) -> socket.socket:
    """Connect (IPv4 or IPv6, as ``family`` and the name allow) and shake hands when ``tls``."""
    try:
        infos = socket.getaddrinfo(host, port, family, socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise AssociationError("connect", f"unknown host {host}", cause=exc) from None
    last: OSError | None = None
    for fam, kind, proto, _, addr in infos:
        sock = socket.socket(fam, kind, proto)
        sock.settimeout(timeout)
        try:
            sock.connect(addr)
        except OSError as exc:
            sock.close()
            last = exc
            continue
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if tls is None:
            return sock
        try:
            return tls.wrap_socket(sock, server_hostname=server_hostname)
        except (OSError, ssl.SSLError) as exc:
            sock.close()
            raise AssociationError("tls", f"TLS handshake with {host}:{port} failed: {exc}", cause=exc) from None
    assert last is not None
    raise AssociationError("connect", f"connection to {host}:{port} failed: {os_text(last)}", cause=last)


def os_text(exc: OSError) -> str:
    """The OS's wording of a socket error (DCMTK prints it), without Python's [Errno n]."""
    if isinstance(exc, TimeoutError) or str(exc) == "timed out":
        return "Connection timed out"
    return exc.strerror or str(exc)


class Requestor:
    """One association this side opened. Build it with :func:`associate`."""

    def __init__(self, sock: socket.socket, engine: ul.Association, timeouts: Timeouts) -> None:
        self.sock = sock
        self.engine = engine
        self.timeouts = timeouts
        self.accept: ul.AssociateAccept | None = None
        self._next_id = 1
        self._responses: dict[int, Received] = {}
        self._requests: deque[Received] = deque()
        self._partial: dict[int, tuple[ul.Command, bytearray]] = {}  # context -> command awaiting its dataset
        self._release_reply = False
        self.peer_abort: ul.Abort | None = None

    # ----- what the caller asks -------------------------------------------------------------

    @property
    def contexts(self) -> dict[int, ul.AcceptedContext]:
        return self.engine.contexts

    def context_for(self, abstract_syntax: str, transfer_syntax: str | None = None) -> ul.AcceptedContext | None:
        """An accepted context for the abstract syntax (and transfer syntax, when given)."""
        for cx in sorted(self.engine.contexts.values(), key=lambda c: c.context_id):
            if cx.abstract_syntax == abstract_syntax and transfer_syntax in (None, cx.transfer_syntax):
                return cx
        return None

    def next_message_id(self) -> int:
        """Message IDs 1, 2, ... wrapping within 16 bits, skipping those still outstanding."""
        while True:
            ident, self._next_id = self._next_id, self._next_id % 0xFFFF + 1
            if ident not in self.engine.outstanding:
                return ident

    @property
    def can_invoke(self) -> bool:
        return self.engine.can_invoke

    @property
    def established(self) -> bool:
        return self.engine.established

    # ----- sending --------------------------------------------------------------------------

    def send(self, context_id: int, message: ul.Message, dataset: bytes | None = None) -> None:
        """Send a whole message (command, then its dataset when it has one)."""
        self._write(self.engine.send_message(context_id, message, dataset))

    def send_stream(self, context_id: int, message: ul.Message, source: BinaryIO, chunk: int = STREAM_CHUNK) -> None:
        """Send a command, then a dataset read from ``source`` to its end, one chunk at a time:
        a large file is never in memory whole."""
        self._write(self.engine.send(ul.Command(context_id=context_id, message=message)))
        data = source.read(chunk)
        while True:
            ahead = source.read(chunk) if data else b""
            self._write(self.engine.send(ul.DatasetFragment(context_id=context_id, data=data, last=not ahead)))
            if not ahead:
                return
            data = ahead

    def _write(self, data: bytes) -> None:
        try:
            self.sock.settimeout(self.timeouts.dimse)
            self.sock.sendall(data)
        except TimeoutError as exc:
            self.close()
            raise AssociationError("dimse-timeout", "timed out sending to the peer", cause=exc) from None
        except OSError as exc:
            self.close()
            raise AssociationError("closed", f"the connection failed: {os_text(exc)}", cause=exc) from None

    # ----- receiving ------------------------------------------------------------------------

    def wait_response(self, message_id: int, timeout: float | None | str = "dimse") -> Received:
        """The response to our request ``message_id`` (pending ones are returned too)."""
        limit = self.timeouts.dimse if timeout == "dimse" else timeout
        while message_id not in self._responses:
            self._read_once(limit, "dimse-timeout")
        return self._responses.pop(message_id)

    def wait_request(self, timeout: float | None | str = "dimse") -> Received:
        """The next request the peer sends on this association (e.g. an N-EVENT-REPORT-RQ)."""
        limit = self.timeouts.dimse if timeout == "dimse" else timeout
        while not self._requests:
            self._read_once(limit, "dimse-timeout")
        return self._requests.popleft()

    def poll_request(self, timeout: float) -> Received | None:
        """A request the peer sent, reading for at most ``timeout`` seconds; None when none
        came (the association goes on: a partial PDU stays in the engine's buffer)."""
        if not self._requests:
            try:
                self._read_once(timeout, "dimse-timeout")
            except AssociationError as exc:
                if exc.kind != "dimse-timeout":
                    raise
        return self._requests.popleft() if self._requests else None

    def fileno(self) -> int:
        """The socket's descriptor, for a caller that polls it with other sources."""
        return self.sock.fileno()

    @property
    def buffered(self) -> bool:
        """Bytes already read past the socket (a TLS record, a queued request) wait here:
        polling the descriptor alone would miss them."""
        pending = getattr(self.sock, "pending", None)
        return bool(self._requests) or bool(pending and pending())

    def respond(self, context_id: int, message: ul.Message, dataset: bytes | None = None) -> None:
        self.send(context_id, message, dataset)

    def _read_once(self, timeout: float | None, kind: str) -> None:
        """One read and the events it makes; raises when the association ended or nothing came."""
        if self.engine.state is ul.State.STA1:
            raise self._ended()
        artim = self.engine.artim_running
        self.sock.settimeout(ARTIM_S if artim else timeout)
        try:
            data = self.sock.recv(READ_SIZE)
        except TimeoutError as exc:
            if artim:
                self.engine.artim_expired()
                self.close()
                raise self._ended() from None
            raise AssociationError(kind, "no answer from the peer in time", cause=exc) from None
        except (ConnectionResetError, BrokenPipeError, ssl.SSLError):
            data = b""
        except OSError as exc:
            self.close()
            raise AssociationError("closed", f"the connection failed: {os_text(exc)}", cause=exc) from None
        quick_ack(self.sock)
        self.engine.receive_data(data)
        try:
            for event in self.engine.events():
                self._on_event(event)
        except ul.ProtocolViolation as exc:
            self._write_quietly(exc.abort_pdu)
            self.close()
            raise AssociationError("protocol", f"the peer broke the protocol: {exc}") from None
        if self.engine.state is ul.State.STA1:
            self.close()

    def _on_event(self, event: ul.Event) -> None:
        if isinstance(event, ul.Command):
            if event.message.has_dataset:
                self._partial[event.context_id] = (event, bytearray())
            else:
                self._deliver(Received(event.context_id, event.message, None))
        elif isinstance(event, ul.DatasetFragment):
            command, buffer = self._partial[event.context_id]
            buffer += event.data
            if event.last:
                del self._partial[event.context_id]
                self._deliver(Received(event.context_id, command.message, bytes(buffer)))
        elif isinstance(event, ul.AssociateAccept):
            self.accept = event
        elif isinstance(event, ul.AssociateReject):
            self.close()
            raise AssociationError("rejected", "the peer rejected the association", reject=event)
        elif isinstance(event, ul.Abort):
            self.peer_abort = event
        elif isinstance(event, ul.ReleaseReply):
            self._release_reply = True
        elif isinstance(event, ul.ReleaseRequest):  # the peer releases (or a collision): answer it
            self._write_quietly(self.engine.send(ul.ReleaseReply()))

    def _deliver(self, received: Received) -> None:
        if ul.is_request(received.message):
            self._requests.append(received)
        else:
            message = received.message
            ident = message.message_id if isinstance(message, ul.OtherCommand) else message.message_id_being_responded_to  # type: ignore[union-attr]
            self._responses[ident] = received

    def _ended(self) -> AssociationError:
        """A-ABORT from the peer, or the connection closed under us (the engine's A-P-ABORT)."""
        if self.peer_abort is not None:
            return AssociationError("aborted", "the peer aborted the association (or closed the connection)",
                                    abort=self.peer_abort)
        return AssociationError("closed", "the association is over")

    # ----- the end ----------------------------------------------------------------------------

    def release(self) -> None:
        """A-RELEASE: the peer's A-RELEASE-RP within the ACSE timeout, then close."""
        try:
            self._write(self.engine.send(ul.ReleaseRequest()))
            while not self._release_reply:
                self._read_once(self.timeouts.acse, "acse-timeout")
        finally:
            self.close()

    def abort(self) -> None:
        """A-ABORT (source: service user) and close, whatever the state."""
        if self.engine.state is not ul.State.STA1:
            try:
                self._write_quietly(self.engine.send(ul.Abort(source=ul.SOURCE_SERVICE_USER, reason=0)))
            except ul.LocalProtocolError:
                pass
        self.close()

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def _write_quietly(self, data: bytes) -> None:
        if not data:
            return
        try:
            self.sock.settimeout(ARTIM_S)
            self.sock.sendall(data)
        except OSError:
            pass

    def __enter__(self) -> Requestor:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.engine.established:
            self.abort()
        self.close()


def associate(host: str, port: int, rq: ul.AssociateRequest, *, timeouts: Timeouts = Timeouts(),
              tls: ssl.SSLContext | None = None, server_hostname: str | None = None,
              family: int = socket.AF_UNSPEC, send_cap: int = 0) -> Requestor:
    """Connect, send ``rq`` and wait for the answer; an accepted association is returned (even
    with no context accepted: the caller says what that means), anything else raises."""
    sock = open_socket(host, port, timeout=timeouts.connect, family=family, tls=tls, server_hostname=server_hostname)
    engine = ul.Association(ul.Role.REQUESTOR, send_cap=send_cap)
    requestor = Requestor(sock, engine, timeouts)
    try:
        sock.settimeout(timeouts.acse)
        sock.sendall(engine.send(rq))
    except OSError as exc:
        requestor.close()
        raise AssociationError("closed", f"the connection failed: {os_text(exc)}", cause=exc) from None
    try:
        while requestor.accept is None:
            requestor._read_once(timeouts.acse, "acse-timeout")
    except AssociationError as exc:
        if exc.kind == "acse-timeout":  # tell the peer, as pynetdicom and DCMTK do
            requestor.abort()
        requestor.close()
        raise
    return requestor
