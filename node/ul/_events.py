"""What the engine reports and what its caller sends: frozen, slotted, keyword-only dataclasses.

As in h11, one class serves both directions: an acceptor *receives* the ``AssociateRequest``
a requestor *sends*. Association-level events carry exactly the fields of their PDU (PS3.8
9.3), so the PDU codec (``_pdu.py``) encodes and decodes them directly. DIMSE traffic is
two events: a whole command (``Command``, decoded into a message class of ``_dimse.py``)
and the dataset in pieces (``DatasetFragment``, one per presentation data value), so a shell
can spool a large dataset as it arrives and never holds it whole.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Union

if TYPE_CHECKING:
    from node.ul._dimse import Message

APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"

# presentation context results (PS3.8 9.3.3.2)
ACCEPTANCE = 0
USER_REJECTION = 1
NO_REASON = 2
ABSTRACT_SYNTAX_NOT_SUPPORTED = 3
TRANSFER_SYNTAXES_NOT_SUPPORTED = 4


def _check_uid(value: str, what: str) -> None:
    if not value or len(value) > 64:
        raise ValueError(f"{what} {value!r} is not a UID of 1 to 64 characters")


def _check_ae(value: str, what: str) -> None:
    if len(value) > 16:
        raise ValueError(f"{what} {value!r} is longer than 16 characters")


# ----- items of the association PDUs -------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class ProposedContext:
    """A presentation context item of an A-ASSOCIATE-RQ (PS3.8 9.3.2.2)."""

    context_id: int
    abstract_syntax: str
    transfer_syntaxes: tuple[str, ...]

    def __post_init__(self) -> None:
        if not 1 <= self.context_id <= 255 or self.context_id % 2 == 0:
            raise ValueError(f"presentation context ID {self.context_id} is not odd in 1..255")
        _check_uid(self.abstract_syntax, "abstract syntax")
        if not self.transfer_syntaxes:
            raise ValueError("a proposed presentation context needs a transfer syntax")


@dataclass(frozen=True, slots=True, kw_only=True)
class ContextResult:
    """A presentation context item of an A-ASSOCIATE-AC (PS3.8 9.3.3.2)."""

    context_id: int
    result: int
    transfer_syntax: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class RoleSelection:
    """SCP/SCU Role Selection sub-item (PS3.7 D.3.3.4): proposed, or the acceptor's answer."""

    sop_class_uid: str
    scu_role: bool
    scp_role: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class ExtendedNegotiation:
    """SOP Class Extended Negotiation sub-item (PS3.7 D.3.3.5): opaque service class bytes."""

    sop_class_uid: str
    info: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class CommonExtendedNegotiation:
    """SOP Class Common Extended Negotiation sub-item (PS3.7 D.3.3.6); requests only."""

    sop_class_uid: str
    service_class_uid: str
    related_general_sop_classes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class UserIdentity:
    """User Identity Negotiation request sub-item (PS3.7 D.3.3.7): type 1 username, 2 username
    and passcode, 3 Kerberos, 4 SAML, 5 JWT."""

    identity_type: int
    primary: bytes
    secondary: bytes = b""
    positive_response_requested: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class AsyncWindow:
    """Asynchronous Operations Window sub-item (PS3.7 D.3.3.3); 0 means unlimited."""

    max_invoked: int
    max_performed: int


# ----- association establishment, release, abort -------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class AssociateRequest:
    """A-ASSOCIATE-RQ: the requestor sends it, the acceptor receives it."""

    called_ae: str
    calling_ae: str
    contexts: tuple[ProposedContext, ...]
    max_pdu: int = 16382
    implementation_class_uid: str = "1.2.826.0.1.3680043.9.3811.0"
    implementation_version_name: str = ""
    async_window: AsyncWindow | None = None
    roles: tuple[RoleSelection, ...] = ()
    extended: tuple[ExtendedNegotiation, ...] = ()
    common_extended: tuple[CommonExtendedNegotiation, ...] = ()
    user_identity: UserIdentity | None = None
    application_context: str = APPLICATION_CONTEXT
    protocol_version: int = 1  # a bit field; bit 0 is version 1, the only one there is

    def __post_init__(self) -> None:
        _check_ae(self.called_ae, "called AE title")
        _check_ae(self.calling_ae, "calling AE title")
        if not self.contexts:
            raise ValueError("an A-ASSOCIATE-RQ proposes one or more presentation contexts")
        ids = [cx.context_id for cx in self.contexts]
        if len(set(ids)) != len(ids):
            raise ValueError(f"presentation context IDs repeat: {ids}")
        _check_uid(self.implementation_class_uid, "implementation class UID")


@dataclass(frozen=True, slots=True, kw_only=True)
class AssociateAccept:
    """A-ASSOCIATE-AC: the acceptor sends it (usually made by ``negotiate``)."""

    called_ae: str
    calling_ae: str
    contexts: tuple[ContextResult, ...]
    max_pdu: int = 16382
    implementation_class_uid: str = "1.2.826.0.1.3680043.9.3811.0"
    implementation_version_name: str = ""
    async_window: AsyncWindow | None = None
    roles: tuple[RoleSelection, ...] = ()
    extended: tuple[ExtendedNegotiation, ...] = ()
    user_identity_response: bytes | None = None
    application_context: str = APPLICATION_CONTEXT


@dataclass(frozen=True, slots=True, kw_only=True)
class AssociateReject:
    """A-ASSOCIATE-RJ (PS3.8 9.3.4): result 1 permanent / 2 transient, source 1-3, reason."""

    result: int
    source: int
    reason: int


@dataclass(frozen=True, slots=True)
class ReleaseRequest:
    """A-RELEASE-RQ."""


@dataclass(frozen=True, slots=True)
class ReleaseReply:
    """A-RELEASE-RP."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Abort:
    """A-ABORT: sent by the caller (source 0, service user), received from the peer, or
    reported by the engine itself as an A-P-ABORT (source 2) when the connection dropped."""

    source: int = 0
    reason: int = 0


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """The transport is closed and the association is over (state Sta1)."""


# ----- data transfer -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Command:
    """A whole DIMSE command set on presentation context ``context_id``."""

    context_id: int
    message: Message


@dataclass(frozen=True, slots=True, kw_only=True)
class DatasetFragment:
    """One piece of the dataset that follows a ``Command``; ``last`` ends the message."""

    context_id: int
    data: bytes
    last: bool


Event = Union[AssociateRequest, AssociateAccept, AssociateReject, ReleaseRequest, ReleaseReply,
              Abort, ConnectionClosed, Command, DatasetFragment]
