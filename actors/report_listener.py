"""stcomscu's report listener: a small acceptor shell on node.ul for Storage Commitment
reports arriving on a new association (PS3.4 J.3.3), and C-ECHO.

One thread accepts, one thread per association reads, feeds the engine and acts on its
events; the clocks are socket timeouts (TLS handshake, ARTIM while the engine says it runs,
an idle limit otherwise). An N-EVENT-REPORT-RQ is forwarded to the commitment tracker
(``ForwardReport``) and answered with the tracker's status. ``role_reject`` (DCMTK's
``--role-reject``) refuses a Storage Commitment context proposed without the SCP role.

Quiet: a failed TLS handshake, a peer breaking the protocol or a request this listener does
not serve costs one WARNING line naming the peer and the reason, never a traceback.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from actors.tcp import quick_ack
from node import ul
from node.messages import ErrorReply, ForwardReport, ReportAnswer

READ_SIZE = 1 << 16
ARTIM_S = 5.0
IDLE_S = 60.0
ACCEPT_POLL_S = 0.2
MAX_ASSOCIATIONS = 32  # at once; a flood of connections cannot take a thread each
STATUS_PROCESSING_FAILURE = 0x0110

Ask = Callable[[Any, list[bytes]], Any]  # TrackerClient.ask


def refuse_without_scp_role(request: ul.AssociateRequest, answer: ul.AssociateAccept, sop_class: str) -> ul.AssociateAccept:
    """``--role-reject``: an accepted ``sop_class`` context whose proposal did not ask for the
    SCP role is answered "user rejection"."""
    asked = {r.sop_class_uid: r for r in request.roles}
    proposed = {cx.context_id: cx.abstract_syntax for cx in request.contexts}
    results = []
    for result in answer.contexts:
        role = asked.get(proposed[result.context_id])
        if (result.result == ul.ACCEPTANCE and proposed[result.context_id] == sop_class
                and (role is None or not role.scp_role)):
            result = replace(result, result=ul.USER_REJECTION)
        results.append(result)
    return replace(answer, contexts=tuple(results))


class ReportListener:
    """Listens on ``port`` until ``stop()``; see the module docstring."""

    def __init__(self, port: int, policy: ul.AcceptorPolicy, ask: Ask, log: logging.Logger, *, sop_class: str,
                 tls: ssl.SSLContext | None = None, handshake_timeout: float = 10.0, role_reject: bool = True,
                 host: str = "") -> None:
        self.policy = policy
        self.ask = ask
        self.log = log
        self.sop_class = sop_class
        self.tls = tls
        self.handshake_timeout = handshake_timeout
        self.role_reject = role_reject
        self._stop = threading.Event()
        self._sock = socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET)
        self._sock.settimeout(ACCEPT_POLL_S)
        self.port = self._sock.getsockname()[1]
        self._threads: list[threading.Thread] = []

    def start(self) -> ReportListener:
        thread = threading.Thread(target=self._accept_loop, name="report-listener", daemon=True)
        thread.start()
        self._threads.append(thread)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        for thread in list(self._threads):
            thread.join(timeout)
        self._sock.close()

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                conn, peer = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._threads = [t for t in self._threads if t.is_alive()]
            if len(self._threads) > MAX_ASSOCIATIONS:  # the accept thread is one of them
                self.log.warning("report association from %s:%s refused: %d open already", peer[0], peer[1],
                                 MAX_ASSOCIATIONS)
                conn.close()
                continue
            thread = threading.Thread(target=self._serve, args=(conn, f"{peer[0]}:{peer[1]}"), name="report-association",
                                      daemon=True)
            thread.start()
            self._threads.append(thread)

    def _serve(self, conn: socket.socket, peer: str) -> None:
        try:
            sock = self._handshake(conn, peer)
            if sock is not None:
                with sock:
                    _Association(self, sock, peer).run()
        except Exception as exc:  # the listener goes on whatever one association did
            self.log.warning("report association from %s ended: %s: %s", peer, type(exc).__name__, exc)
        finally:
            conn.close()

    def _handshake(self, conn: socket.socket, peer: str) -> socket.socket | None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.tls is None:
            return conn
        conn.settimeout(self.handshake_timeout)
        try:
            return self.tls.wrap_socket(conn, server_side=True)
        except (OSError, ssl.SSLError) as exc:
            self.log.warning("TLS handshake failed with %s: %s", peer, exc)
            return None


class _Association:
    """One report association: the engine, the dataset being received, the answers."""

    def __init__(self, listener: ReportListener, sock: socket.socket, peer: str) -> None:
        self.listener = listener
        self.sock = sock
        self.peer = peer
        self.engine = ul.Association(ul.Role.ACCEPTOR)
        self.request: ul.AssociateRequest | None = None
        self.report: ul.NEventReportRQ | None = None
        self.data = bytearray()
        self.ended = False  # we aborted: nothing more to read

    def run(self) -> None:
        engine = self.engine
        while engine.state is not ul.State.STA1 and not self.ended and not self.listener._stop.is_set():
            self.sock.settimeout(ARTIM_S if engine.artim_running else IDLE_S)
            try:
                data = self.sock.recv(READ_SIZE)
            except TimeoutError:
                if not engine.artim_running:
                    self.listener.log.warning("report association from %s idle for %.0f s: aborted", self.peer, IDLE_S)
                    self._write(engine.send(ul.Abort(source=ul.SOURCE_SERVICE_USER, reason=0)))
                    return
                engine.artim_expired()
                continue
            except (ConnectionResetError, ssl.SSLError):
                data = b""
            quick_ack(self.sock)
            engine.receive_data(data)
            try:
                for event in engine.events():
                    self._write(self._on_event(event))
                    if self.ended:
                        return
            except ul.ProtocolViolation as exc:
                self.listener.log.warning("report association from %s: protocol violation: %s", self.peer, exc)
                self._write(exc.abort_pdu)
                return

    def _write(self, data: bytes | None) -> None:
        if data:
            self.sock.sendall(data)

    def _on_event(self, event: ul.Event) -> bytes | None:
        if isinstance(event, ul.AssociateRequest):
            return self._answer_request(event)
        if isinstance(event, ul.ReleaseRequest):
            return self.engine.send(ul.ReleaseReply())
        if isinstance(event, ul.Command):
            return self._on_command(event)
        if isinstance(event, ul.DatasetFragment) and self.report is not None:
            self.data += event.data
            return self._answer_report(event.context_id) if event.last else None
        return None

    def _answer_request(self, request: ul.AssociateRequest) -> bytes:
        self.request = request
        answer = ul.negotiate(request, self.listener.policy)
        if isinstance(answer, ul.AssociateAccept) and self.listener.role_reject:
            answer = refuse_without_scp_role(request, answer, self.listener.sop_class)
        return self.engine.send(answer)

    def _on_command(self, event: ul.Command) -> bytes | None:
        message = event.message
        if isinstance(message, ul.CEchoRQ):
            return self.engine.send_message(event.context_id, ul.CEchoRSP(message_id_being_responded_to=message.message_id,
                                                                          status=0))
        if isinstance(message, ul.NEventReportRQ):
            self.report, self.data = message, bytearray()
            return None
        if ul.is_request(message):
            self.listener.log.warning("report association from %s: %s is not served here: aborted", self.peer,
                                      type(message).__name__)
            self.ended = True
            return self.engine.send(ul.Abort(source=ul.SOURCE_SERVICE_USER, reason=0))
        return None

    def _answer_report(self, context_id: int) -> bytes:
        report, data = self.report, bytes(self.data)
        assert report is not None and self.request is not None
        self.report, self.data = None, bytearray()
        forward = ForwardReport(event_type=report.event_type_id, sop_class_uid=report.affected_sop_class_uid,
                                sop_instance_uid=report.affected_sop_instance_uid,
                                transfer_syntax=self.engine.contexts[context_id].transfer_syntax,
                                calling_aet=self.request.calling_ae, called_aet=self.request.called_ae,
                                assoc_id=f"report-{self.peer}")
        status = STATUS_PROCESSING_FAILURE
        try:
            answer = self.listener.ask(forward, [data])
        except TimeoutError as exc:
            self.listener.log.error("N-EVENT-REPORT from %s: the tracker did not answer: %s", self.peer, exc)
            answer = None
        if isinstance(answer, (ReportAnswer, ErrorReply)):
            status = answer.status
        self.listener.log.info("N-EVENT-REPORT from %s answered with status 0x%04X", self.peer, status)
        return self.engine.send_message(context_id, ul.NEventReportRSP(
            message_id_being_responded_to=report.message_id, status=status, affected_sop_class_uid=report.affected_sop_class_uid,
            affected_sop_instance_uid=report.affected_sop_instance_uid, event_type_id=report.event_type_id))
