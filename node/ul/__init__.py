"""A sans-IO DICOM upper layer (PS3.8) with the DIMSE messages the node uses (PS3.7).

Bytes in, events out, bytes to send, in either role; no sockets, threads or clocks (see
``_engine.py`` for the loop a shell runs). Modules: ``_state`` the PS3.8 table, ``_events``
what goes in and out, ``_pdu`` the PDU codec, ``_dimse`` command sets, ``_negotiation`` the
acceptor's answer from a policy, ``_errors`` the two error types.
"""

from node.ul._dimse import (
    C_CANCEL_RQ,
    C_ECHO_RQ,
    C_ECHO_RSP,
    C_STORE_RQ,
    C_STORE_RSP,
    N_ACTION_RQ,
    N_ACTION_RSP,
    N_EVENT_REPORT_RQ,
    N_EVENT_REPORT_RSP,
    VERIFICATION,
    CCancelRQ,
    CEchoRQ,
    CEchoRSP,
    CStoreRQ,
    CStoreRSP,
    Message,
    NActionRQ,
    NActionRSP,
    NEventReportRQ,
    NEventReportRSP,
    OtherCommand,
    decode_command,
    encode_command,
    is_request,
)
from node.ul._engine import NEED_DATA, AcceptedContext, Association, NeedData, Role
from node.ul._errors import (
    REASON_INVALID_PARAMETER,
    REASON_NOT_SPECIFIED,
    REASON_UNEXPECTED_PARAMETER,
    REASON_UNEXPECTED_PDU,
    REASON_UNRECOGNIZED_PARAMETER,
    REASON_UNRECOGNIZED_PDU,
    SOURCE_SERVICE_PROVIDER,
    SOURCE_SERVICE_USER,
    LocalProtocolError,
    ProtocolViolation,
)
from node.ul._events import (
    ABSTRACT_SYNTAX_NOT_SUPPORTED,
    ACCEPTANCE,
    APPLICATION_CONTEXT,
    NO_REASON,
    TRANSFER_SYNTAXES_NOT_SUPPORTED,
    USER_REJECTION,
    Abort,
    AssociateAccept,
    AssociateReject,
    AssociateRequest,
    AsyncWindow,
    Command,
    CommonExtendedNegotiation,
    ConnectionClosed,
    ContextResult,
    DatasetFragment,
    Event,
    ExtendedNegotiation,
    ProposedContext,
    ReleaseReply,
    ReleaseRequest,
    RoleSelection,
    UserIdentity,
)
from node.ul._negotiation import ANY, AcceptEverything, AcceptorPolicy, negotiate
from node.ul._pdu import abort_pdu
from node.ul._state import State

__all__ = [name for name in dir() if not name.startswith("_")]
