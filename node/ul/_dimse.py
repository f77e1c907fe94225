"""DIMSE command sets (PS3.7 9.3, 10.3, E.1): message classes and their struct-level codec.

A command set is a short run of group 0000 elements in Implicit VR Little Endian. Encoding
and decoding them with ``struct`` costs a few microseconds, where building pydicom Datasets
costs most of a millisecond (the node's budget for a whole small C-STORE is 1.5 ms). Each
message class lists its elements once, as a table: (element number, attribute, VR); the
codec walks that table both ways, in ascending element order as PS3.5 7.1 requires.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import ClassVar, Union

from node.ul._errors import REASON_INVALID_PARAMETER, ProtocolViolation

VERIFICATION = "1.2.840.10008.1.1"
NO_DATASET = 0x0101
DATASET_PRESENT = 0x0001  # what pynetdicom sends; any value but 0x0101 means present (PS3.7 E.1)

_ELEMENT = struct.Struct("<HHI")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")

C_STORE_RQ, C_STORE_RSP = 0x0001, 0x8001
C_ECHO_RQ, C_ECHO_RSP = 0x0030, 0x8030
N_EVENT_REPORT_RQ, N_EVENT_REPORT_RSP = 0x0100, 0x8100
N_ACTION_RQ, N_ACTION_RSP = 0x0130, 0x8130
C_CANCEL_RQ = 0x0FFF

# elements every message may carry, (element, attribute, VR)
_AFFECTED_CLASS = (0x0002, "affected_sop_class_uid", "UI")
_REQUESTED_CLASS = (0x0003, "requested_sop_class_uid", "UI")
_MESSAGE_ID = (0x0110, "message_id", "US")
_RESPONDED_TO = (0x0120, "message_id_being_responded_to", "US")
_STATUS = (0x0900, "status", "US")
_ERROR_COMMENT = (0x0902, "error_comment", "LO")
_AFFECTED_INSTANCE = (0x1000, "affected_sop_instance_uid", "UI")
_REQUESTED_INSTANCE = (0x1001, "requested_sop_instance_uid", "UI")


@dataclass(frozen=True, slots=True, kw_only=True)
class CEchoRQ:
    """C-ECHO-RQ (PS3.7 9.3.5.1)."""

    FIELD: ClassVar[int] = C_ECHO_RQ
    ELEMENTS: ClassVar[tuple] = (_AFFECTED_CLASS, _MESSAGE_ID)
    message_id: int
    affected_sop_class_uid: str = VERIFICATION
    has_dataset: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class CEchoRSP:
    """C-ECHO-RSP (PS3.7 9.3.5.2)."""

    FIELD: ClassVar[int] = C_ECHO_RSP
    ELEMENTS: ClassVar[tuple] = (_AFFECTED_CLASS, _RESPONDED_TO, _STATUS, _ERROR_COMMENT)
    message_id_being_responded_to: int
    status: int
    affected_sop_class_uid: str = VERIFICATION
    error_comment: str | None = None
    has_dataset: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class CStoreRQ:
    """C-STORE-RQ (PS3.7 9.3.1.1); its dataset follows as ``DatasetFragment`` events."""

    FIELD: ClassVar[int] = C_STORE_RQ
    ELEMENTS: ClassVar[tuple] = (_AFFECTED_CLASS, _MESSAGE_ID, (0x0700, "priority", "US"), _AFFECTED_INSTANCE,
                                 (0x1030, "move_originator_aet", "AE"), (0x1031, "move_originator_message_id", "US"))
    message_id: int
    affected_sop_class_uid: str
    affected_sop_instance_uid: str
    priority: int = 0
    move_originator_aet: str | None = None
    move_originator_message_id: int | None = None
    has_dataset: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class CStoreRSP:
    """C-STORE-RSP (PS3.7 9.3.1.2)."""

    FIELD: ClassVar[int] = C_STORE_RSP
    ELEMENTS: ClassVar[tuple] = (_AFFECTED_CLASS, _RESPONDED_TO, _STATUS, (0x0901, "offending_element", "AT"),
                                 _ERROR_COMMENT, _AFFECTED_INSTANCE)
    message_id_being_responded_to: int
    status: int
    affected_sop_class_uid: str | None = None
    affected_sop_instance_uid: str | None = None
    offending_element: tuple[int, ...] | None = None
    error_comment: str | None = None
    has_dataset: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class NEventReportRQ:
    """N-EVENT-REPORT-RQ (PS3.7 10.3.1.1); the event information follows as a dataset."""

    FIELD: ClassVar[int] = N_EVENT_REPORT_RQ
    ELEMENTS: ClassVar[tuple] = (_AFFECTED_CLASS, _MESSAGE_ID, _AFFECTED_INSTANCE, (0x1002, "event_type_id", "US"))
    message_id: int
    affected_sop_class_uid: str
    affected_sop_instance_uid: str
    event_type_id: int
    has_dataset: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class NEventReportRSP:
    """N-EVENT-REPORT-RSP (PS3.7 10.3.1.2)."""

    FIELD: ClassVar[int] = N_EVENT_REPORT_RSP
    ELEMENTS: ClassVar[tuple] = (_AFFECTED_CLASS, _RESPONDED_TO, _STATUS, _ERROR_COMMENT, _AFFECTED_INSTANCE,
                                 (0x1002, "event_type_id", "US"))
    message_id_being_responded_to: int
    status: int
    affected_sop_class_uid: str | None = None
    affected_sop_instance_uid: str | None = None
    event_type_id: int | None = None
    error_comment: str | None = None
    has_dataset: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class NActionRQ:
    """N-ACTION-RQ (PS3.7 10.3.4.1); the action information follows as a dataset."""

    FIELD: ClassVar[int] = N_ACTION_RQ
    ELEMENTS: ClassVar[tuple] = (_REQUESTED_CLASS, _MESSAGE_ID, _REQUESTED_INSTANCE, (0x1008, "action_type_id", "US"))
    message_id: int
    requested_sop_class_uid: str
    requested_sop_instance_uid: str
    action_type_id: int
    has_dataset: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class NActionRSP:
    """N-ACTION-RSP (PS3.7 10.3.4.2)."""

    FIELD: ClassVar[int] = N_ACTION_RSP
    ELEMENTS: ClassVar[tuple] = (_AFFECTED_CLASS, _RESPONDED_TO, _STATUS, _ERROR_COMMENT, _AFFECTED_INSTANCE,
                                 (0x1008, "action_type_id", "US"))
    message_id_being_responded_to: int
    status: int
    affected_sop_class_uid: str | None = None
    affected_sop_instance_uid: str | None = None
    action_type_id: int | None = None
    error_comment: str | None = None
    has_dataset: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class CCancelRQ:
    """C-CANCEL-RQ (PS3.7 9.3.2.3): not counted in the asynchronous operations window."""

    FIELD: ClassVar[int] = C_CANCEL_RQ
    ELEMENTS: ClassVar[tuple] = (_RESPONDED_TO,)
    message_id_being_responded_to: int
    has_dataset: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class OtherCommand:
    """A command this engine does not model (C-FIND, N-GET...): enough to refuse it politely.

    ``message_id`` is the request's Message ID or a response's Message ID Being Responded To.
    """

    FIELD: ClassVar[int] = -1
    ELEMENTS: ClassVar[tuple] = ()
    command_field: int
    message_id: int
    affected_sop_class_uid: str | None = None
    has_dataset: bool = False


Message = Union[CEchoRQ, CEchoRSP, CStoreRQ, CStoreRSP, NEventReportRQ, NEventReportRSP, NActionRQ, NActionRSP,
                CCancelRQ, OtherCommand]
MESSAGE_CLASSES: dict[int, type] = {cls.FIELD: cls for cls in (  # type: ignore[attr-defined]
    CEchoRQ, CEchoRSP, CStoreRQ, CStoreRSP, NEventReportRQ, NEventReportRSP, NActionRQ, NActionRSP, CCancelRQ)}


def command_field(message: Message) -> int:
    return message.command_field if isinstance(message, OtherCommand) else message.FIELD


def is_request(message: Message) -> bool:
    """Requests open an operation the window counts; C-CANCEL does not (PS3.7 D.3.3.3)."""
    field = command_field(message)
    return not field & 0x8000 and field != C_CANCEL_RQ


def request_id(message: Message) -> int:
    """The Message ID an operation is tracked by: the request's own, or the one responded to."""
    if isinstance(message, OtherCommand):
        return message.message_id
    return message.message_id if is_request(message) else message.message_id_being_responded_to  # type: ignore[union-attr]


# ----- encoding -------------------------------------------------------------------------------


def _value(value: object, vr: str) -> bytes:
    if vr == "US":
        return _U16.pack(value)
    if vr == "AT":
        return b"".join(struct.pack("<HH", tag >> 16, tag & 0xFFFF) for tag in value)  # type: ignore[union-attr]
    raw = str(value).encode("ascii")
    if len(raw) % 2:
        raw += b"\x00" if vr == "UI" else b" "
    return raw


def encode_command(message: Message) -> bytes:
    """The command set, group length first, every present element in ascending order."""
    elements = [(0x0100, _U16.pack(command_field(message))),
                (0x0800, _U16.pack(DATASET_PRESENT if message.has_dataset else NO_DATASET))]
    if isinstance(message, OtherCommand):
        elements.append((0x0120 if command_field(message) & 0x8000 else 0x0110, _U16.pack(message.message_id)))
        if message.affected_sop_class_uid:
            elements.append((0x0002, _value(message.affected_sop_class_uid, "UI")))
    for elem, attr, vr in message.ELEMENTS:
        value = getattr(message, attr)
        if value is not None:
            elements.append((elem, _value(value, vr)))
    elements.sort()
    body = b"".join(_ELEMENT.pack(0, elem, len(raw)) + raw for elem, raw in elements)
    return _ELEMENT.pack(0, 0, 4) + _U32.pack(len(body)) + body


# ----- decoding ---------------------------------------------------------------------------------


def _invalid(message: str) -> ProtocolViolation:
    return ProtocolViolation(message, REASON_INVALID_PARAMETER)


def _elements(data: bytes) -> dict[int, bytes]:
    out, pos, end = {}, 0, len(data)
    while pos < end:
        if pos + 8 > end:
            raise _invalid("command element header cut short")
        group, elem, length = _ELEMENT.unpack_from(data, pos)
        if group != 0:
            raise _invalid(f"command element ({group:04X},{elem:04X}) outside group 0000")
        if pos + 8 + length > end:
            raise _invalid(f"command element (0000,{elem:04X}) overruns the command set")
        out[elem] = data[pos + 8 : pos + 8 + length]
        pos += 8 + length
    return out


def _parse(raw: bytes, vr: str) -> object:
    if vr == "US":
        if len(raw) != 2:
            raise _invalid(f"US value of {len(raw)} bytes")
        return _U16.unpack(raw)[0]
    if vr == "AT":
        return tuple((g << 16) | e for g, e in struct.iter_unpack("<HH", raw[: len(raw) // 4 * 4]))
    try:
        return raw.decode("ascii").strip("\x00 ")
    except UnicodeDecodeError:
        raise _invalid(f"{vr} value is not ASCII") from None


def decode_command(data: bytes) -> Message:
    """A command set into its message class; anything malformed raises ``ProtocolViolation``."""
    elements = _elements(data)
    if 0x0100 not in elements:
        raise _invalid("command set without Command Field")
    field = _parse(elements[0x0100], "US")
    has_dataset = _parse(elements.get(0x0800, _U16.pack(NO_DATASET)), "US") != NO_DATASET
    cls = MESSAGE_CLASSES.get(field)  # type: ignore[arg-type]
    if cls is None:
        ident = elements.get(0x0120 if field & 0x8000 else 0x0110)  # type: ignore[operator]
        affected = elements.get(0x0002)
        return OtherCommand(command_field=field, message_id=_parse(ident, "US") if ident else 0,  # type: ignore[arg-type]
                            affected_sop_class_uid=_parse(affected, "UI") if affected else None,  # type: ignore[arg-type]
                            has_dataset=has_dataset)
    kwargs = {attr: _parse(elements[elem], vr) for elem, attr, vr in cls.ELEMENTS if elem in elements}
    try:
        return cls(has_dataset=has_dataset, **kwargs)
    except TypeError as exc:  # a required element is missing
        raise _invalid(f"command 0x{field:04X} incomplete: {exc}") from None
