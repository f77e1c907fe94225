"""Command sets: each message class both ways, byte for byte against pynetdicom's encoder."""

from __future__ import annotations

import struct
from io import BytesIO
from typing import Any

import pytest

from node import ul
from tests.node.ul.helpers import COMMITMENT, COMMITMENT_INSTANCE, CT

UID = "1.2.826.0.1.3680043.8.498.1234567890123"
MESSAGES: list[tuple[Any, str, dict[str, Any]]] = [
    (ul.CEchoRQ(message_id=7), "C_ECHO", {"MessageID": 7, "AffectedSOPClassUID": ul.VERIFICATION}),
    (ul.CEchoRSP(message_id_being_responded_to=7, status=0), "C_ECHO",
     {"MessageIDBeingRespondedTo": 7, "AffectedSOPClassUID": ul.VERIFICATION, "Status": 0}),
    (ul.CStoreRQ(message_id=3, affected_sop_class_uid=CT, affected_sop_instance_uid=UID, priority=2), "C_STORE",
     {"MessageID": 3, "AffectedSOPClassUID": CT, "AffectedSOPInstanceUID": UID, "Priority": 2}),
    (ul.CStoreRQ(message_id=3, affected_sop_class_uid=CT, affected_sop_instance_uid=UID, move_originator_aet="MOVER",
                 move_originator_message_id=9), "C_STORE",
     {"MessageID": 3, "AffectedSOPClassUID": CT, "AffectedSOPInstanceUID": UID, "Priority": 0,
      "MoveOriginatorApplicationEntityTitle": "MOVER", "MoveOriginatorMessageID": 9}),
    (ul.CStoreRSP(message_id_being_responded_to=3, status=0xA700, affected_sop_class_uid=CT, affected_sop_instance_uid=UID),
     "C_STORE", {"MessageIDBeingRespondedTo": 3, "Status": 0xA700, "AffectedSOPClassUID": CT, "AffectedSOPInstanceUID": UID}),
    (ul.NActionRQ(message_id=11, requested_sop_class_uid=COMMITMENT, requested_sop_instance_uid=COMMITMENT_INSTANCE,
                  action_type_id=1), "N_ACTION",
     {"MessageID": 11, "RequestedSOPClassUID": COMMITMENT, "RequestedSOPInstanceUID": COMMITMENT_INSTANCE, "ActionTypeID": 1}),
    (ul.NActionRSP(message_id_being_responded_to=11, status=0, affected_sop_class_uid=COMMITMENT,
                   affected_sop_instance_uid=COMMITMENT_INSTANCE, action_type_id=1), "N_ACTION",
     {"MessageIDBeingRespondedTo": 11, "Status": 0, "AffectedSOPClassUID": COMMITMENT,
      "AffectedSOPInstanceUID": COMMITMENT_INSTANCE, "ActionTypeID": 1}),
    (ul.NEventReportRQ(message_id=12, affected_sop_class_uid=COMMITMENT, affected_sop_instance_uid=COMMITMENT_INSTANCE,
                       event_type_id=2), "N_EVENT_REPORT",
     {"MessageID": 12, "AffectedSOPClassUID": COMMITMENT, "AffectedSOPInstanceUID": COMMITMENT_INSTANCE, "EventTypeID": 2}),
    (ul.NEventReportRSP(message_id_being_responded_to=12, status=0, affected_sop_class_uid=COMMITMENT,
                        affected_sop_instance_uid=COMMITMENT_INSTANCE, event_type_id=2), "N_EVENT_REPORT",
     {"MessageIDBeingRespondedTo": 12, "Status": 0, "AffectedSOPClassUID": COMMITMENT,
      "AffectedSOPInstanceUID": COMMITMENT_INSTANCE, "EventTypeID": 2}),
]
IDS = [f"{type(m).__name__}-{n}" for n, (m, _, _) in enumerate(MESSAGES)]


def pynetdicom_bytes(message: Any, kind: str, fields: dict[str, Any]) -> bytes:
    """The command set pynetdicom's DIMSE classes encode for the same primitive."""
    import pynetdicom.dimse_messages as messages
    import pynetdicom.dimse_primitives as primitives
    from pynetdicom.dsutils import encode

    primitive = getattr(primitives, kind)()
    for name, value in fields.items():
        setattr(primitive, name, value)
    if message.has_dataset:
        primitive._dataset_variant = (BytesIO(b"\x00"), "")  # only its presence matters to the command set
    suffix = "_RQ" if ul.is_request(message) else "_RSP"  # type: ignore[attr-defined]
    encoded = getattr(messages, kind + suffix)()
    encoded.primitive_to_message(primitive)
    return bytes(encode(encoded.command_set, True, True))


@pytest.mark.parametrize(("message", "kind", "fields"), MESSAGES, ids=IDS)
def test_round_trip(message: Any, kind: str, fields: dict[str, Any]) -> None:
    assert ul.decode_command(ul.encode_command(message)) == message


@pytest.mark.parametrize(("message", "kind", "fields"), MESSAGES, ids=IDS)
def test_same_bytes_as_pynetdicom(message: Any, kind: str, fields: dict[str, Any]) -> None:
    assert ul.encode_command(message) == pynetdicom_bytes(message, kind, fields)


def test_unmodelled_command_keeps_what_a_refusal_needs() -> None:
    body = (struct.pack("<HHIH", 0, 0x0100, 2, 0x0020) + struct.pack("<HHIH", 0, 0x0110, 2, 5)
            + struct.pack("<HHIH", 0, 0x0800, 2, 0x0000))
    got = ul.decode_command(body)
    assert got == ul.OtherCommand(command_field=0x0020, message_id=5, has_dataset=True)
    assert ul.decode_command(ul.encode_command(got)) == got


HOSTILE = {
    "no command field": struct.pack("<HHIH", 0, 0x0110, 2, 5),
    "element outside group 0000": struct.pack("<HHIH", 8, 0x0100, 2, 0x0030),
    "overrunning length": struct.pack("<HHI", 0, 0x0100, 200) + b"\x30\x00",
    "cut header": b"\x00\x00\x00\x01",
    "four-byte US": struct.pack("<HHII", 0, 0x0100, 4, 0x0030),
    "C-STORE-RQ without instance": ul.encode_command(ul.CEchoRQ(message_id=1)).replace(b"\x30\x00", b"\x01\x00"),
    "non-ASCII UID": ul.encode_command(ul.CEchoRQ(message_id=1)).replace(b"1.2.840", b"\xff.2.840"),
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_command_sets_are_one_violation(name: str) -> None:
    with pytest.raises(ul.ProtocolViolation):
        ul.decode_command(HOSTILE[name])
