"""One DICOM association as a sans-IO machine: bytes in, events out, bytes to send.

    engine = Association(Role.ACCEPTOR)
    engine.receive_data(sock.recv(65536))        # b"" when the peer closed
    for event in engine.events():                # until more bytes are needed
        ...                                      # AssociateRequest -> send(negotiate(...)), Command, ...
    sock.sendall(engine.send(reply_event))       # bytes to write; the engine never writes
    if engine.state is State.STA1: sock.close()  # PS3.8 Sta1: the association is over

No sockets, threads or clocks: the shell owns them. ARTIM is the shell's timer too:
``artim_running`` says when it should run, ``artim_expired()`` feeds its expiry in (Evt18).
The PS3.8 transitions are the table in ``_state.py``; this module carries out its actions,
fragments and reassembles P-DATA, and keeps the DIMSE rules: command before dataset, one
message at a time per direction, responses matched to requests by Message ID within the
negotiated asynchronous operations window.

A received dataset is never assembled here: each PDV is one ``DatasetFragment``, so a shell
can keep a small one in memory and stream a large one to disk as it arrives.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum

from node.ul import _pdu
from node.ul._dimse import CCancelRQ, Message, decode_command, encode_command, is_request, request_id
from node.ul._errors import (
    REASON_INVALID_PARAMETER,
    REASON_NOT_SPECIFIED,
    REASON_UNEXPECTED_PDU,
    SOURCE_SERVICE_PROVIDER,
    LocalProtocolError,
    ProtocolViolation,
)
from node.ul._events import (
    ACCEPTANCE,
    Abort,
    AssociateAccept,
    AssociateReject,
    AssociateRequest,
    AsyncWindow,
    Command,
    ConnectionClosed,
    DatasetFragment,
    Event,
    ReleaseReply,
    ReleaseRequest,
)
from node.ul._state import ARTIM_STATES, TRANSITIONS, Evt, State

# pending responses leave the operation open (PS3.7 C.4.1.1.4: C-FIND, C-GET, C-MOVE)
_PENDING = frozenset({0xFF00, 0xFF01})
_DEFAULT_WINDOW = AsyncWindow(max_invoked=1, max_performed=1)
_MAX_COMMAND_SET = 1 << 16

_EVENT_OF_PDU = {
    _pdu.ASSOCIATE_RQ: Evt.EVT6, _pdu.ASSOCIATE_AC: Evt.EVT3, _pdu.ASSOCIATE_RJ: Evt.EVT4,
    _pdu.P_DATA_TF: Evt.EVT10, _pdu.RELEASE_RQ: Evt.EVT12, _pdu.RELEASE_RP: Evt.EVT13, _pdu.ABORT: Evt.EVT16,
}


class Role(Enum):
    REQUESTOR = "requestor"
    ACCEPTOR = "acceptor"


class NeedData:
    """``next_event()``'s answer when the buffered bytes hold no whole PDU (h11's NEED_DATA)."""


NEED_DATA = NeedData()


@dataclass(frozen=True, slots=True)
class AcceptedContext:
    """A presentation context both sides agreed on; roles are the requestor's (PS3.7 D.3.3.4)."""

    context_id: int
    abstract_syntax: str
    transfer_syntax: str
    requestor_scu: bool = True
    requestor_scp: bool = False


class Association:
    """The state machine of one association, in either role (see the module docstring).

    ``max_pdu``: the largest P-DATA-TF variable field this side takes, announced in the
    A-ASSOCIATE-RQ or -AC the caller sends (that event's ``max_pdu`` wins once sent); 0
    means unlimited, bounded by ``pdu_limit``. Any other PDU may be up to ``pdu_limit``
    bytes: a length past the limit is refused from the header, before its body is buffered.
    ``data_limit`` replaces that announced bound for P-DATA with a fixed one (a receiver
    lenient with peers that overshoot). ``send_cap``: send P-DATA no larger than this even
    when the peer takes more (0: the peer's maximum alone; dcm4che's and DCMTK's options).
    """

    def __init__(self, role: Role, *, pdu_limit: int = 1 << 22, data_limit: int | None = None, send_cap: int = 0) -> None:
        self.role = role
        self._send_cap = send_cap
        self._fixed_data_limit = data_limit
        self.state = State.STA2 if role is Role.ACCEPTOR else State.STA4
        self.request: AssociateRequest | None = None
        self.accept: AssociateAccept | None = None
        self.contexts: dict[int, AcceptedContext] = {}
        self.peer_max_pdu = 0
        self._pdu_limit = pdu_limit
        self._receive_limit = pdu_limit
        self._buffer = bytearray()
        self._eof = False
        self._unframed = False  # after a PDU we could not frame, later bytes mean nothing
        self._pending: deque[Event] = deque()
        self._window = _DEFAULT_WINDOW
        self._invoked: set[int] = set()     # our requests awaiting the peer's response
        self._performing: set[int] = set()  # the peer's requests awaiting our response
        self._rx_command: bytearray | None = None
        self._rx_command_context = 0
        self._rx_dataset_context: int | None = None
        self._tx_dataset_context: int | None = None

    # ----- what the shell asks --------------------------------------------------------------

    @property
    def artim_running(self) -> bool:
        """Whether the shell's ARTIM timer should be running now (Sta2, Sta13)."""
        return self.state in ARTIM_STATES

    @property
    def established(self) -> bool:
        return self.state is State.STA6

    @property
    def max_invoked(self) -> int:
        """How many of our requests may await a response at once (0: unlimited)."""
        return self._window.max_invoked if self.role is Role.REQUESTOR else self._window.max_performed

    @property
    def max_performed(self) -> int:
        """How many of the peer's requests we may have open at once (0: unlimited)."""
        return self._window.max_performed if self.role is Role.REQUESTOR else self._window.max_invoked

    @property
    def outstanding(self) -> frozenset[int]:
        """Message IDs of our requests the peer has not answered yet."""
        return frozenset(self._invoked)

    @property
    def can_invoke(self) -> bool:
        """Room in the window for one more request of ours."""
        return not self.max_invoked or len(self._invoked) < self.max_invoked

    # ----- receiving ------------------------------------------------------------------------

    @property
    def buffered(self) -> int:
        """Bytes received of a PDU not yet whole (a shell may want to hurry the rest)."""
        return len(self._buffer)

    def receive_data(self, data: bytes) -> None:
        """Buffer bytes read from the connection; b"" means the peer closed it (Evt17).
        Bytes after the end (Sta1), or after a PDU that could not be framed, are dropped."""
        if self.state is State.STA1:
            return
        if not data:
            self._eof = True
        elif not self._eof and not self._unframed:
            self._buffer += data

    def events(self) -> Iterator[Event]:
        """Every event the buffered bytes make, stopping when more bytes are needed."""
        while True:
            event = self.next_event()
            if isinstance(event, NeedData):
                return
            yield event
            if isinstance(event, ConnectionClosed):
                return

    def next_event(self) -> Event | NeedData:
        """The next event, ``NEED_DATA``, or ``ConnectionClosed`` once the state is Sta1.

        Raises ``ProtocolViolation`` when the peer broke the protocol: the table's abort
        action has been taken and ``abort_pdu`` holds the bytes to send before closing.
        """
        while not self._pending:
            if self.state is State.STA1:
                return ConnectionClosed()
            if not self._read_pdu():
                if not self._eof:
                    return NEED_DATA
                self._transport_closed()
        return self._pending.popleft()

    def artim_expired(self) -> None:
        """The shell's ARTIM timer ran out (Evt18): in Sta2 or Sta13 the connection is to be
        closed (AA-2); in any other state the expiry is stale and ignored."""
        if self.state in ARTIM_STATES:
            self._transition(Evt.EVT18)

    def _read_pdu(self) -> bool:
        """Handle one whole buffered PDU; False when the buffer holds none yet."""
        buf = self._buffer
        if len(buf) < 6:
            return False
        pdu_type, length = _pdu.HEADER.unpack_from(buf, 0)
        event = _EVENT_OF_PDU.get(pdu_type, Evt.EVT19)
        limit = self._receive_limit if pdu_type == _pdu.P_DATA_TF else self._pdu_limit
        if event is Evt.EVT19 or length > limit:
            reason = "unrecognized PDU type" if event is Evt.EVT19 else f"PDU of {length} bytes is over the {limit}-byte limit"
            self._buffer = bytearray()  # PDU boundaries are lost: nothing later can be read
            self._unframed = True
            code = _pdu.REASON_UNRECOGNIZED_PDU if event is Evt.EVT19 else REASON_INVALID_PARAMETER
            self._violation(Evt.EVT19, ProtocolViolation(f"{reason} 0x{pdu_type:02X}", code))
        if len(buf) < 6 + length:
            return False
        action, _ = self._entry(event)
        if action in ("AA-1", "AA-7", "AA-8"):
            del buf[: 6 + length]
            self._violation(event, ProtocolViolation(f"{event.value} in {self.state.name}", REASON_UNEXPECTED_PDU))
        if action == "AA-6":
            del buf[: 6 + length]
            return True
        try:
            decoded = self._decode(pdu_type, length)
        except ProtocolViolation as exc:
            self._violation(Evt.EVT19, exc)
        self._transition(event, decoded)
        return True

    def _decode(self, pdu_type: int, length: int) -> object:
        """Decode the buffered PDU of ``length`` bytes and take it off the buffer.

        A P-DATA-TF is decoded in place: its PDVs are the only copies of its bytes (copying
        the body first, then each PDV out of it, copied every byte of a dataset twice)."""
        buf = self._buffer
        try:
            with memoryview(buf) as view, view[6 : 6 + length] as body:
                return _pdu.decode(pdu_type, body)
        finally:
            del buf[: 6 + length]

    def _entry(self, event: Evt) -> tuple[str, State | None]:
        """The table's entry for a received PDU; in Sta4, where PS3.8 has none (the peer spoke
        before our A-ASSOCIATE-RQ), the same AA-8 as in Sta5."""
        return TRANSITIONS.get((event, self.state), ("AA-8", State.STA13))

    def _transport_closed(self) -> None:
        if self.state not in (State.STA2, State.STA13):
            self._pending.append(Abort(source=SOURCE_SERVICE_PROVIDER, reason=REASON_NOT_SPECIFIED))
        self._transition(Evt.EVT17)
        self._pending.append(ConnectionClosed())

    def _violation(self, event: Evt, exc: ProtocolViolation) -> None:
        """Take the table's action for a PDU the peer should not have sent, then raise.

        AA-1/AA-8 answer with an A-ABORT and wait in Sta13; AA-7 (garbage in Sta13) also
        answers; AA-6 ignores. Only a peer that keeps sending after our abort hears twice.
        """
        action, next_state = self._entry(event)
        if action == "AA-6":
            return
        self._reset_dimse()
        self._pending.clear()  # what the offending PDU's earlier PDVs made is not reported
        self.state = next_state  # type: ignore[assignment]
        exc.abort_pdu = _pdu.encode_abort(Abort(source=exc.source, reason=exc.reason))
        raise exc

    # ----- the table's actions for received PDUs ---------------------------------------------

    def _transition(self, event: Evt, decoded: object = None) -> None:
        action, next_state = TRANSITIONS[(event, self.state)]
        if action == "AE-6":
            self._on_associate_request(decoded)  # type: ignore[arg-type]
            next_state = State.STA3
        elif action == "AE-3":
            self._on_associate_accept(decoded)  # type: ignore[arg-type]
        elif action == "AR-8":  # release collision
            next_state = State.STA9 if self.role is Role.REQUESTOR else State.STA10
        elif action in ("DT-2", "AR-6"):
            self.state = next_state  # type: ignore[assignment]
            self._on_pdvs(decoded)  # type: ignore[arg-type]
            return
        if decoded is not None:
            self._pending.append(decoded)  # type: ignore[arg-type]
        self.state = next_state  # type: ignore[assignment]

    def _on_associate_request(self, request: AssociateRequest) -> None:
        self.request = request
        self.peer_max_pdu = request.max_pdu

    def _on_associate_accept(self, accept: AssociateAccept) -> None:
        assert self.request is not None
        proposed = {cx.context_id: cx for cx in self.request.contexts}
        unknown = [cx.context_id for cx in accept.contexts if cx.context_id not in proposed]
        if unknown:
            self._violation(Evt.EVT19, ProtocolViolation(f"A-ASSOCIATE-AC answers unproposed contexts {unknown}",
                                                          REASON_INVALID_PARAMETER))
        self.accept = accept
        self.peer_max_pdu = accept.max_pdu
        self._agree(self.request, accept)

    def _agree(self, request: AssociateRequest, accept: AssociateAccept) -> None:
        """Record the accepted contexts, their roles and the window both sides now keep."""
        proposed = {cx.context_id: cx.abstract_syntax for cx in request.contexts}
        roles = {r.sop_class_uid: r for r in accept.roles}
        self.contexts = {}
        for result in accept.contexts:
            if result.result != ACCEPTANCE:
                continue
            abstract = proposed[result.context_id]
            role = roles.get(abstract)
            self.contexts[result.context_id] = AcceptedContext(
                result.context_id, abstract, result.transfer_syntax,
                role.scu_role if role else True, role.scp_role if role else False)
        self._window = accept.async_window if request.async_window and accept.async_window else _DEFAULT_WINDOW
        self._receive_limit = self._data_limit(request.max_pdu if self.role is Role.REQUESTOR else accept.max_pdu)

    def _data_limit(self, announced: int) -> int:
        """The longest P-DATA-TF body taken: what we announced (PS3.8 D.1 bounds the variable
        field), plus the 6 bytes of a PDV header some senders leave out of their count."""
        if self._fixed_data_limit is not None:
            return self._fixed_data_limit
        return announced + 6 if announced else self._pdu_limit

    def _on_pdvs(self, pdvs: list[_pdu.PDV]) -> None:
        for pdv in pdvs:
            if pdv.context_id not in self.contexts:
                self._violation(Evt.EVT19, ProtocolViolation(
                    f"PDV on presentation context {pdv.context_id}, which was not accepted", REASON_INVALID_PARAMETER))
            if pdv.is_command:
                self._on_command_fragment(pdv)
            else:
                self._on_dataset_fragment(pdv)

    def _on_command_fragment(self, pdv: _pdu.PDV) -> None:
        if self._rx_dataset_context is not None:
            self._dimse_violation("a command fragment arrived while a dataset was expected")
        command = self._command_set(pdv)
        if command is None:
            return
        try:
            message = decode_command(command)
        except ProtocolViolation as exc:
            self._violation(Evt.EVT19, exc)
        self._rx_command = None
        self._count_received(message)
        if message.has_dataset:
            self._rx_dataset_context = pdv.context_id
        self._pending.append(Command(context_id=pdv.context_id, message=message))

    def _command_set(self, pdv: _pdu.PDV) -> bytes | None:
        """The whole command set once ``pdv`` ends it, else None (more fragments to come). A
        command set in one PDV, as most come, is taken as it is: no buffer, no copy."""
        command: bytes | bytearray
        if self._rx_command is None and pdv.is_last:
            command = pdv.data
        else:
            if self._rx_command is None:
                self._rx_command, self._rx_command_context = bytearray(), pdv.context_id
            elif pdv.context_id != self._rx_command_context:
                self._dimse_violation("a command's fragments changed presentation context")
            self._rx_command += pdv.data
            command = self._rx_command
        if len(command) > _MAX_COMMAND_SET:
            self._dimse_violation("command set longer than 64 KiB")
        return bytes(command) if pdv.is_last else None

    def _on_dataset_fragment(self, pdv: _pdu.PDV) -> None:
        if self._rx_dataset_context is None:
            self._dimse_violation("a dataset fragment arrived without a command announcing one")
        if pdv.context_id != self._rx_dataset_context:
            self._dimse_violation("a dataset's fragments changed presentation context")
        if pdv.is_last:
            self._rx_dataset_context = None
        self._pending.append(DatasetFragment(context_id=pdv.context_id, data=pdv.data, last=pdv.is_last))

    def _count_received(self, message: Message) -> None:
        """Open or close an operation in the window for a message the peer sent."""
        ident = request_id(message)
        if is_request(message):
            if ident in self._performing:
                self._dimse_violation(f"request with Message ID {ident} while one with that ID is open")
            if self.max_performed and len(self._performing) >= self.max_performed:
                self._dimse_violation(f"peer invoked more than the {self.max_performed} operation(s) negotiated")
            self._performing.add(ident)
        elif not isinstance(message, CCancelRQ):
            if ident not in self._invoked:
                self._dimse_violation(f"response to Message ID {ident}, which no request of ours has")
            if getattr(message, "status", None) not in _PENDING:
                self._invoked.discard(ident)

    def _dimse_violation(self, message: str) -> None:
        self._violation(Evt.EVT19, ProtocolViolation(message, REASON_UNEXPECTED_PDU))

    def _reset_dimse(self) -> None:
        self._rx_command = None
        self._rx_dataset_context = None

    # ----- sending -------------------------------------------------------------------------

    def send(self, event: Event) -> bytes:
        """The bytes that carry ``event`` to the peer; raises ``LocalProtocolError`` when the
        state does not allow it (nothing changes then)."""
        if isinstance(event, (Command, DatasetFragment)):
            return self._send_data(event)
        if isinstance(event, AssociateRequest):
            self._local(Evt.EVT2, "send an A-ASSOCIATE-RQ", Role.REQUESTOR)
            self.request = event
            self._receive_limit = self._data_limit(event.max_pdu)
            return _pdu.encode_associate_rq(event)
        if isinstance(event, AssociateAccept):
            self._check_accept(event)
            self._local(Evt.EVT7, "accept an association", Role.ACCEPTOR)
            self.accept = event
            self._agree(self.request, event)  # type: ignore[arg-type]
            return _pdu.encode_associate_ac(event)
        if isinstance(event, AssociateReject):
            self._local(Evt.EVT8, "reject an association", Role.ACCEPTOR)
            return _pdu.encode_associate_rj(event)
        if isinstance(event, ReleaseRequest):
            self._local(Evt.EVT11, "request a release")
            return _pdu.encode_release_rq()
        if isinstance(event, ReleaseReply):
            self._local(Evt.EVT14, "answer a release")
            return _pdu.encode_release_rp()
        if isinstance(event, Abort):
            action = self._local(Evt.EVT15, "abort")
            self._reset_dimse()
            return b"" if action == "AA-2" else _pdu.encode_abort(event)
        raise LocalProtocolError(f"{type(event).__name__} is not something to send")

    def send_message(self, context_id: int, message: Message, dataset: bytes | None = None) -> bytes:
        """A whole DIMSE message: its command and, when it has one, its dataset."""
        out = self.send(Command(context_id=context_id, message=message))
        if dataset is not None:
            out += self.send(DatasetFragment(context_id=context_id, data=dataset, last=True))
        return out

    def _local(self, event: Evt, what: str, role: Role | None = None) -> str:
        """Take a local primitive's transition, or refuse it without changing anything."""
        entry = TRANSITIONS.get((event, self.state))
        if entry is None or (role is not None and role is not self.role):
            raise LocalProtocolError(f"cannot {what} as {self.role.value} in {self.state.name} ({self.state.value})")
        self.state = entry[1]  # type: ignore[assignment]
        return entry[0]

    def _check_accept(self, accept: AssociateAccept) -> None:
        if self.request is None:
            return  # _local refuses it: no request yet
        proposed = {cx.context_id for cx in self.request.contexts}
        answered = [cx.context_id for cx in accept.contexts]
        if set(answered) - proposed or len(set(answered)) != len(answered):
            raise LocalProtocolError(f"the A-ASSOCIATE-AC answers contexts {answered}, proposed were {sorted(proposed)}")

    def _send_data(self, event: Command | DatasetFragment) -> bytes:
        if self.state is not State.STA6 and (Evt.EVT9, self.state) not in TRANSITIONS:  # Sta6: the common case
            raise LocalProtocolError(f"cannot send P-DATA in {self.state.name} ({self.state.value})")
        if event.context_id not in self.contexts:
            raise LocalProtocolError(f"presentation context {event.context_id} was not accepted")
        if isinstance(event, DatasetFragment):
            if self._tx_dataset_context != event.context_id:
                raise LocalProtocolError("a dataset fragment without a command announcing one on its context")
            if event.last:
                self._tx_dataset_context = None
            return _pdu.p_data(event.context_id, False, event.data, self._send_limit(), event.last)
        if self._tx_dataset_context is not None:
            raise LocalProtocolError("the previous command's dataset is not finished")
        self._count_sent(event.message)
        if event.message.has_dataset:
            self._tx_dataset_context = event.context_id
        return _pdu.p_data(event.context_id, True, encode_command(event.message), self._send_limit())

    def _send_limit(self) -> int:
        """The P-DATA size we send: the peer's maximum, lowered to our cap (0: no limit)."""
        if not self._send_cap:
            return self.peer_max_pdu
        return min(self.peer_max_pdu, self._send_cap) if self.peer_max_pdu else self._send_cap

    def _count_sent(self, message: Message) -> None:
        ident = request_id(message)
        if is_request(message):
            if ident in self._invoked:
                raise LocalProtocolError(f"Message ID {ident} is still awaiting its response")
            if not self.can_invoke:
                raise LocalProtocolError(f"the window allows {self.max_invoked} outstanding request(s)")
            self._invoked.add(ident)
        elif not isinstance(message, CCancelRQ):
            if ident not in self._performing:
                raise LocalProtocolError(f"no open request with Message ID {ident} to respond to")
            if getattr(message, "status", None) not in _PENDING:
                self._performing.discard(ident)
