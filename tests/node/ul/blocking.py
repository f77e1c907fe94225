"""A tiny blocking shell on the engine, for interop tests against real peers on 127.0.0.1.

Not the product's shells (those come with the worker port): one thread, one connection at
a time, datasets kept in memory. Every socket read has a timeout; ARTIM is the socket
timeout while the engine says it runs.
"""

from __future__ import annotations

import socket
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from node import ul

IDLE_S = 15.0
ARTIM_S = 5.0


def pump(sock: socket.socket, engine: ul.Association, handle: Callable[[ul.Event], bytes | None]) -> None:
    """Read, feed, hand each event to ``handle`` and write what it returns, until Sta1 (or
    until ``handle`` raises StopIteration: the caller got what it waited for)."""
    while engine.state is not ul.State.STA1:
        sock.settimeout(ARTIM_S if engine.artim_running else IDLE_S)
        try:
            data = sock.recv(65536)
        except TimeoutError:
            if not engine.artim_running:
                raise
            engine.artim_expired()
            continue
        except ConnectionResetError:
            data = b""
        engine.receive_data(data)
        try:
            for event in engine.events():
                out = handle(event)
                if out:
                    sock.sendall(out)
        except ul.ProtocolViolation as exc:
            sock.sendall(exc.abort_pdu)


@dataclass
class Served:
    """What the acceptor saw on its associations."""

    requests: list[ul.AssociateRequest] = field(default_factory=list)
    echoes: int = 0
    stored: dict[str, bytes] = field(default_factory=dict)
    actions: list[bytes] = field(default_factory=list)
    reports_answered: int = 0
    errors: list[BaseException] = field(default_factory=list)


class Acceptor:
    """Serves associations on a port of its own in a thread: C-ECHO, C-STORE (kept in memory),
    N-ACTION answered then followed by an N-EVENT-REPORT on the same association."""

    def __init__(self, policy: ul.AcceptorPolicy, associations: int = 1) -> None:
        self.policy = policy
        self.served = Served()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._run, args=(associations,), daemon=True)

    def __enter__(self) -> Acceptor:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._listener.close()
        self._thread.join(timeout=IDLE_S * 2)
        assert not self._thread.is_alive(), "the acceptor thread did not end"

    def join(self) -> Served:
        self._thread.join(timeout=IDLE_S * 2)
        if self.served.errors:
            raise self.served.errors[0]
        return self.served

    def _run(self, associations: int) -> None:
        try:
            self._listener.settimeout(IDLE_S)
            for _ in range(associations):
                conn, _ = self._listener.accept()
                with conn:
                    engine = ul.Association(ul.Role.ACCEPTOR)
                    pump(conn, engine, _Handler(engine, self.policy, self.served))
        except BaseException as exc:  # reported by join() in the test's thread
            self.served.errors.append(exc)


class _Handler:
    def __init__(self, engine: ul.Association, policy: ul.AcceptorPolicy, served: Served) -> None:
        self.engine, self.policy, self.served = engine, policy, served
        self.command: ul.Message | None = None
        self.dataset = bytearray()

    def __call__(self, event: ul.Event) -> bytes | None:
        engine = self.engine
        if isinstance(event, ul.AssociateRequest):
            self.served.requests.append(event)
            return engine.send(ul.negotiate(event, self.policy))
        if isinstance(event, ul.ReleaseRequest):
            return engine.send(ul.ReleaseReply())
        if isinstance(event, ul.Command):
            message = event.message
            if isinstance(message, ul.CEchoRQ):
                self.served.echoes += 1
                return engine.send_message(event.context_id, ul.CEchoRSP(message_id_being_responded_to=message.message_id, status=0))
            if isinstance(message, ul.NEventReportRSP):
                self.served.reports_answered += 1
                return None
            self.command, self.dataset = message, bytearray()
            return None
        if isinstance(event, ul.DatasetFragment):
            self.dataset += event.data
            return self._complete(event.context_id) if event.last else None
        return None

    def _complete(self, context_id: int) -> bytes:
        message, data = self.command, bytes(self.dataset)
        if isinstance(message, ul.CStoreRQ):
            self.served.stored[message.affected_sop_instance_uid] = data
            return self.engine.send_message(context_id, ul.CStoreRSP(
                message_id_being_responded_to=message.message_id, status=0, affected_sop_class_uid=message.affected_sop_class_uid,
                affected_sop_instance_uid=message.affected_sop_instance_uid))
        assert isinstance(message, ul.NActionRQ), message
        self.served.actions.append(data)
        reply = ul.NActionRSP(message_id_being_responded_to=message.message_id, status=0,
                              affected_sop_class_uid=message.requested_sop_class_uid,
                              affected_sop_instance_uid=message.requested_sop_instance_uid, action_type_id=message.action_type_id)
        report = ul.NEventReportRQ(message_id=1, affected_sop_class_uid=message.requested_sop_class_uid,
                                   affected_sop_instance_uid=message.requested_sop_instance_uid, event_type_id=1)
        return self.engine.send_message(context_id, reply) + self.engine.send_message(context_id, report, data)


class Requestor:
    """Opens one association and runs one operation at a time on it."""

    def __init__(self, port: int, request: ul.AssociateRequest) -> None:
        self.engine = ul.Association(ul.Role.REQUESTOR)
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=IDLE_S)
        self.sock.sendall(self.engine.send(request))
        self.answer = self._until(lambda e: isinstance(e, (ul.AssociateAccept, ul.AssociateReject, ul.Abort)))
        self._next_id = 1
        self._responses: deque[ul.Message] = deque()

    def context_for(self, abstract_syntax: str) -> int:
        return next(cx.context_id for cx in self.engine.contexts.values() if cx.abstract_syntax == abstract_syntax)

    def echo(self) -> int:
        return self._operation(ul.VERIFICATION, lambda n: ul.CEchoRQ(message_id=n), None)

    def store(self, sop_class: str, sop_instance: str, dataset: bytes) -> int:
        return self._operation(sop_class, lambda n: ul.CStoreRQ(message_id=n, affected_sop_class_uid=sop_class,
                                                                affected_sop_instance_uid=sop_instance), dataset)

    def release(self) -> None:
        self.sock.sendall(self.engine.send(ul.ReleaseRequest()))
        self._until(lambda e: isinstance(e, ul.ReleaseReply))
        self.sock.close()

    def _operation(self, abstract_syntax: str, make: Callable[[int], ul.Message], dataset: bytes | None) -> int:
        message_id, self._next_id = self._next_id, self._next_id + 1
        self.sock.sendall(self.engine.send_message(self.context_for(abstract_syntax), make(message_id), dataset))
        response = self._until(lambda e: isinstance(e, ul.Command))
        return response.message.status  # type: ignore[attr-defined,no-any-return]

    def wait_for(self, kind: type) -> ul.Event:
        """The next event of ``kind`` from the peer (an ``Abort`` after bytes sent by hand)."""
        return self._until(lambda e: isinstance(e, kind))

    def next_response(self) -> ul.Message:
        """The next DIMSE response, whichever request it answers (asynchronous windows); the
        others one read brings are kept for the next calls."""
        while not self._responses:
            if self.engine.state is ul.State.STA1:
                raise ConnectionError("the association ended before the awaited response")
            self.sock.settimeout(IDLE_S)
            self.engine.receive_data(self.sock.recv(65536))
            self._responses.extend(e.message for e in self.engine.events() if isinstance(e, ul.Command))
        return self._responses.popleft()

    def _until(self, wanted: Callable[[ul.Event], bool]) -> ul.Event:
        found: list[ul.Event] = []

        def handle(event: ul.Event) -> None:
            if wanted(event) and not found:
                found.append(event)

        while not found:
            if self.engine.state is ul.State.STA1:
                raise ConnectionError("the association ended before the awaited event")
            self.sock.settimeout(IDLE_S)
            data = self.sock.recv(65536)
            self.engine.receive_data(data)
            for event in self.engine.events():
                handle(event)
        return found[0]
