"""The acceptor side of the DICOM upper layer for storage and verification, without I/O.

pynetdicom's association machinery runs two polling threads per association (the DUL
reactor and the association loop, each sleeping 1 ms between looks) and copies every
PDU several times; on a 2-core host that costs more than the fsyncs do (docs/benchmarks.md).
The worker's lean path (actors/_lean.py) reads PDUs with blocking socket calls and uses this
module to understand and answer them: pynetdicom's own PDU classes decode the
A-ASSOCIATE-RQ and P-DATA-TF and encode every answer, and pynetdicom's negotiation function
picks the presentation contexts, so the bytes on the wire are the ones pynetdicom sends.

Only associations that need nothing else take this path: Verification and Storage
contexts, no role selection, user identity or extended negotiation. Anything more (Storage
Commitment, with its N-EVENT-REPORTs) goes to pynetdicom's full association unchanged.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from io import BytesIO
from typing import Any

from pydicom.dataset import Dataset

from node.errors import NodeError

PDU_HEADER = struct.Struct(">BxI")
A_ASSOCIATE_RQ = 0x01
P_DATA_TF = 0x04
A_RELEASE_RQ = 0x05
A_ABORT = 0x07
KNOWN_PDU_TYPES = frozenset({0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07})

C_STORE_RQ = 0x0001
C_ECHO_RQ = 0x0030
C_CANCEL_RQ = 0x0FFF
NO_DATASET = 0x0101

# A-ABORT reasons (PS3.8 9.3.8), source 2 = service provider
ABORT_NOT_SPECIFIED = 0x00
ABORT_UNRECOGNIZED_PDU = 0x01
ABORT_UNEXPECTED_PDU = 0x02
ABORT_INVALID_PARAMETER = 0x06


class ProtocolError(NodeError):
    """The peer broke the upper layer protocol; the association is aborted with ``reason``."""

    def __init__(self, message: str, reason: int = ABORT_NOT_SPECIFIED) -> None:
        super().__init__(message)
        self.reason = reason


def pdu_header(head: bytes) -> tuple[int, int]:
    """PDU type and body length from the 6-byte header; unknown types are refused."""
    pdu_type, length = PDU_HEADER.unpack(head)
    if pdu_type not in KNOWN_PDU_TYPES:
        raise ProtocolError(f"unrecognized PDU type 0x{pdu_type:02X}", ABORT_UNRECOGNIZED_PDU)
    return pdu_type, length


# ----- association establishment -------------------------------------------------------------


@dataclass(frozen=True)
class AssociationRequest:
    """The fields of a decoded A-ASSOCIATE-RQ the node acts on, and pynetdicom's primitive."""

    primitive: Any
    calling: str
    called: str
    peer_max_pdu: int
    implementation_class_uid: str
    implementation_version_name: str


def decode_request(pdu: bytes) -> AssociationRequest:
    """Decode a whole A-ASSOCIATE-RQ PDU (header included) with pynetdicom's PDU class."""
    from pynetdicom.pdu import A_ASSOCIATE_RQ as RqPdu
    from pynetdicom.pdu_primitives import (
        ImplementationClassUIDNotification,
        ImplementationVersionNameNotification,
        MaximumLengthNotification,
    )

    try:
        pdu_obj = RqPdu()
        pdu_obj.decode(pdu)
        primitive = pdu_obj.to_primitive()
    except Exception as exc:  # pynetdicom raises many types for malformed items
        raise ProtocolError(f"A-ASSOCIATE-RQ cannot be decoded: {exc}", ABORT_INVALID_PARAMETER) from None
    if not primitive.presentation_context_definition_list:
        # pynetdicom decodes a request cut short as one without contexts (PS3.8 9.3.2 wants one or more)
        raise ProtocolError("A-ASSOCIATE-RQ proposes no presentation context", ABORT_INVALID_PARAMETER)
    max_pdu, impl_uid, impl_version = 0, "", ""
    for item in primitive.user_information:
        if isinstance(item, MaximumLengthNotification):
            max_pdu = int(item.maximum_length_received or 0)
        elif isinstance(item, ImplementationClassUIDNotification):
            impl_uid = str(item.implementation_class_uid or "")
        elif isinstance(item, ImplementationVersionNameNotification):
            impl_version = str(item.implementation_version_name or "")
    return AssociationRequest(
        primitive=primitive,
        calling=str(primitive.calling_ae_title).strip(),
        called=str(primitive.called_ae_title).strip(),
        peer_max_pdu=max_pdu,
        implementation_class_uid=impl_uid,
        implementation_version_name=impl_version,
    )


def full_stack_reason(request: AssociationRequest, lean_syntaxes: frozenset[str]) -> str | None:
    """Why this association needs pynetdicom's full machinery; None when the lean path serves it."""
    from pynetdicom.pdu_primitives import (
        AsynchronousOperationsWindowNegotiation,
        ImplementationClassUIDNotification,
        ImplementationVersionNameNotification,
        MaximumLengthNotification,
    )

    plain = (MaximumLengthNotification, ImplementationClassUIDNotification, ImplementationVersionNameNotification,
             AsynchronousOperationsWindowNegotiation)
    for item in request.primitive.user_information:
        if not isinstance(item, plain):
            return f"proposes {type(item).__name__}"
    for context in request.primitive.presentation_context_definition_list:
        if str(context.abstract_syntax) not in lean_syntaxes:
            return f"proposes {context.abstract_syntax}"
    return None


@dataclass(frozen=True)
class Accepted:
    """The A-ASSOCIATE-AC to send and the contexts it accepted: id -> (abstract, transfer syntax)."""

    pdu: bytes
    contexts: dict[int, tuple[str, str]]


Negotiate = Callable[..., tuple[list[Any], list[Any]]]


def accept(request: AssociationRequest, supported: Sequence[Any], negotiate: Negotiate, *, max_pdu: int,
           implementation_class_uid: str, implementation_version_name: str) -> Accepted:
    """Negotiate the contexts as pynetdicom's acceptor does and encode the A-ASSOCIATE-AC.

    An asynchronous operations window is not answered: PS3.7 D.3.3.3 makes that the default
    window of one operation each way, which is what this path performs.
    """
    from pynetdicom.pdu import A_ASSOCIATE_AC as AcPdu
    from pynetdicom.pdu_primitives import A_ASSOCIATE

    results, _roles = negotiate(request.primitive.presentation_context_definition_list, list(supported), {})
    primitive = A_ASSOCIATE()
    primitive.application_context_name = request.primitive.application_context_name
    primitive.calling_ae_title = request.primitive.calling_ae_title
    primitive.called_ae_title = request.primitive.called_ae_title
    primitive.result = 0x00
    primitive.result_source = 0x01
    primitive.presentation_context_definition_results_list = results
    primitive.user_information = user_information(max_pdu, implementation_class_uid, implementation_version_name)
    contexts = {int(cx.context_id): (str(cx.abstract_syntax), str(cx.transfer_syntax[0])) for cx in results if cx.result == 0x00}
    pdu = AcPdu()
    pdu.from_primitive(primitive)
    return Accepted(pdu=bytes(pdu.encode()), contexts=contexts)


def user_information(max_pdu: int, implementation_class_uid: str, implementation_version_name: str) -> list[Any]:
    """The user information items both sides send: maximum length and implementation."""
    from pynetdicom.pdu_primitives import (
        ImplementationClassUIDNotification,
        ImplementationVersionNameNotification,
        MaximumLengthNotification,
    )

    length = MaximumLengthNotification()
    length.maximum_length_received = max_pdu
    impl = ImplementationClassUIDNotification()
    impl.implementation_class_uid = implementation_class_uid
    info: list[Any] = [length, impl]
    if implementation_version_name:
        version = ImplementationVersionNameNotification()
        version.implementation_version_name = implementation_version_name
        info.append(version)
    return info


def reject_pdu(result: int, source: int, reason: int) -> bytes:
    """An A-ASSOCIATE-RJ (PS3.8 9.3.4)."""
    from pynetdicom.pdu import A_ASSOCIATE_RJ as RjPdu
    from pynetdicom.pdu_primitives import A_ASSOCIATE

    primitive = A_ASSOCIATE()
    primitive.result = result
    primitive.result_source = source
    primitive.diagnostic = reason
    pdu = RjPdu()
    pdu.from_primitive(primitive)
    return bytes(pdu.encode())


def abort_pdu(reason: int = ABORT_NOT_SPECIFIED) -> bytes:
    """An A-ABORT from the service provider (source 2); reason per PS3.8 9.3.8."""
    from pynetdicom.pdu import A_ABORT_RQ as AbortPdu
    from pynetdicom.pdu_primitives import A_P_ABORT

    primitive = A_P_ABORT()
    primitive.provider_reason = reason
    pdu = AbortPdu()
    pdu.from_primitive(primitive)
    return bytes(pdu.encode())


def release_rp_pdu() -> bytes:
    """The A-RELEASE-RP answering a peer's A-RELEASE-RQ."""
    from pynetdicom.pdu import A_RELEASE_RP as RpPdu
    from pynetdicom.pdu_primitives import A_RELEASE

    primitive = A_RELEASE()
    primitive.result = "affirmative"
    pdu = RpPdu()
    pdu.from_primitive(primitive)
    return bytes(pdu.encode())


# ----- data transfer ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Fragment:
    """One presentation data value: a piece of a command or of a dataset."""

    context_id: int
    is_command: bool
    is_last: bool
    data: bytes


def fragments(pdu: bytes) -> list[Fragment]:
    """The PDVs of a whole P-DATA-TF PDU (header included), decoded by pynetdicom's class."""
    from pynetdicom.pdu import P_DATA_TF as PDataPdu

    try:
        pdu_obj = PDataPdu()
        pdu_obj.decode(pdu)
        items = pdu_obj.presentation_data_value_items
    except Exception as exc:  # truncated or overlong items
        raise ProtocolError(f"P-DATA-TF cannot be decoded: {exc}", ABORT_INVALID_PARAMETER) from None
    out = []
    for item in items:
        value = item.presentation_data_value
        if not value:
            raise ProtocolError("presentation data value without a control header", ABORT_INVALID_PARAMETER)
        header = value[0]
        out.append(Fragment(int(item.presentation_context_id), bool(header & 0x01), bool(header & 0x02), value[1:]))
    return out


@dataclass(frozen=True)
class Command:
    """A decoded DIMSE request command set: what the lean path needs of it."""

    field: int
    message_id: int
    sop_class_uid: str
    sop_instance_uid: str
    has_dataset: bool
    move_originator_aet: str = ""
    move_originator_id: int | None = None
    status: int | None = None  # responses only


def decode_command(data: bytes) -> Command:
    """Decode a request or response command set (always Implicit VR Little Endian, PS3.7 6.3.1)."""
    from pydicom.filereader import read_dataset

    try:
        ds: Dataset = read_dataset(BytesIO(data), is_implicit_VR=True, is_little_endian=True)
        field = int(ds.CommandField)
        # requests carry Message ID; responses and C-CANCEL the ID they refer to
        message_id = int(ds.MessageID) if "MessageID" in ds else int(ds.get("MessageIDBeingRespondedTo", 0))
        return Command(
            field=field,
            message_id=message_id,
            sop_class_uid=str(ds.get("AffectedSOPClassUID", "") or "").rstrip("\x00 "),
            sop_instance_uid=str(ds.get("AffectedSOPInstanceUID", "") or "").rstrip("\x00 "),
            has_dataset=int(ds.get("CommandDataSetType", NO_DATASET)) != NO_DATASET,
            move_originator_aet=str(ds.get("MoveOriginatorApplicationEntityTitle", "") or "").strip(),
            move_originator_id=int(ds.MoveOriginatorMessageID) if "MoveOriginatorMessageID" in ds else None,
            status=int(ds.Status) if "Status" in ds else None,
        )
    except Exception as exc:  # a broken command set: pydicom raises many types
        raise ProtocolError(f"command set cannot be decoded: {exc}", ABORT_INVALID_PARAMETER) from None


def response_pdus(context_id: int, command: Command, status: int, peer_max_pdu: int) -> Iterable[bytes]:
    """The C-STORE-RSP or C-ECHO-RSP for ``command``, encoded by pynetdicom's DIMSE classes."""
    from pynetdicom.dimse_messages import C_ECHO_RSP, C_STORE_RSP
    from pynetdicom.dimse_primitives import C_ECHO, C_STORE
    from pynetdicom.pdu import P_DATA_TF as PDataPdu

    primitive: Any
    message: Any
    if command.field == C_STORE_RQ:
        primitive, message = C_STORE(), C_STORE_RSP()
        primitive.AffectedSOPInstanceUID = command.sop_instance_uid
    else:
        primitive, message = C_ECHO(), C_ECHO_RSP()
    primitive.MessageIDBeingRespondedTo = command.message_id
    primitive.AffectedSOPClassUID = command.sop_class_uid
    primitive.Status = status
    message.primitive_to_message(primitive)
    limit = peer_max_pdu if peer_max_pdu > 0 else 1 << 31
    out = []
    for p_data in message.encode_msg(context_id, limit):
        pdu = PDataPdu()
        pdu.from_primitive(p_data)
        out.append(bytes(pdu.encode()))
    return out


class CommandTemplate:
    """A command set pynetdicom encoded once, into which later messages patch their values.

    pynetdicom's encoder writes a command set through pydicom (~0.6 ms, the largest cost of a
    small C-STORE on a lean path). Messages of one kind and SOP class differ only in a few
    16-bit values (Message ID, Status) and the SOP Instance UID, always the last element
    (0000,1000); the rest of pynetdicom's bytes are kept (tests compare both encodings).
    """

    _ELEMENT = struct.Struct("<HHI")
    _GROUP_LENGTH = b"\x00\x00\x00\x00\x04\x00\x00\x00"
    _INSTANCE_UID = b"\x00\x00\x00\x10"

    def __init__(self, pdu: bytes, patched: Sequence[int]) -> None:
        """``pdu``: one P-DATA-TF holding the whole command in one PDV; ``patched``: the
        element numbers (group 0000) of the 16-bit values to patch, in call order."""
        cmd = pdu[12:]
        offsets: dict[int, int] = {}
        pos = 0
        while pos < len(cmd):
            group, elem, length = self._ELEMENT.unpack_from(cmd, pos)
            if group != 0:
                raise ValueError(f"command element ({group:04X},{elem:04X}) outside group 0000")
            offsets[elem] = pos
            pos += 8 + length
        if offsets.get(0) != 0:
            raise ValueError("pynetdicom's command does not start with its group length")
        self._has_uid = 0x1000 in offsets
        self._body = cmd[12 : offsets.get(0x1000, len(cmd))]
        self._at = [offsets[elem] - 12 + 8 for elem in patched]

    def pdu(self, context_id: int, values: Sequence[int], uid: str | None) -> bytes:
        """A P-DATA-TF with the command in one PDV (command, last), values and UID patched in."""
        body = bytearray(self._body)
        for at, value in zip(self._at, values):
            struct.pack_into("<H", body, at, value & 0xFFFF)
        if self._has_uid and uid is not None:
            raw = uid.encode("ascii", "replace")
            if len(raw) % 2:
                raw += b"\x00"
            body += self._INSTANCE_UID + struct.pack("<I", len(raw)) + raw
        cmd = self._GROUP_LENGTH + struct.pack("<I", len(body)) + body
        return PDU_HEADER.pack(P_DATA_TF, len(cmd) + 6) + struct.pack(">IBB", len(cmd) + 2, context_id, 0x03) + cmd


class ResponseEncoder:
    """C-STORE-RSP and C-ECHO-RSP bytes, as ``response_pdus`` makes them, from a
    ``CommandTemplate`` per SOP class (Message ID Being Responded To, Status, instance UID)."""

    def __init__(self) -> None:
        self._templates: dict[tuple[int, str], CommandTemplate] = {}

    def pdus(self, context_id: int, command: Command, status: int, peer_max_pdu: int) -> list[bytes]:
        key = (command.field, command.sop_class_uid)
        template = self._templates.get(key)
        if template is None:
            placeholder = Command(command.field, 0, command.sop_class_uid, "1" if command.field == C_STORE_RQ else "", False)
            (first,) = response_pdus(1, placeholder, 0, 1 << 31)
            template = self._templates[key] = CommandTemplate(first, (0x0120, 0x0900))
        uid = command.sop_instance_uid if command.field == C_STORE_RQ else None
        pdu = template.pdu(context_id, (command.message_id, status), uid)
        if peer_max_pdu and len(pdu) - 6 > peer_max_pdu:
            return list(response_pdus(context_id, command, status, peer_max_pdu))  # fragments needed
        return [pdu]
