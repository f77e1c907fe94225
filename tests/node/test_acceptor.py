"""node.acceptor: the lean path's upper-layer decisions, checked against pynetdicom's own codecs."""

from __future__ import annotations

import dataclasses
from io import BytesIO

import pytest
from pydicom.dataset import Dataset
from pynetdicom.dimse_messages import C_STORE_RQ, C_STORE_RSP
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode
from pynetdicom.pdu import (
    A_ABORT_RQ,
    A_ASSOCIATE_AC,
    A_ASSOCIATE_RJ,
    A_ASSOCIATE_RQ,
    P_DATA_TF,
)
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    P_DATA,
    ImplementationClassUIDNotification,
    MaximumLengthNotification,
    SCP_SCU_RoleSelectionNegotiation,
)
from pynetdicom.presentation import build_context, negotiate_as_acceptor

from node import acceptor
from node.acceptor import ProtocolError
from node.receive import (
    STORAGE_COMMITMENT,
    VERIFICATION,
    FileMetaCache,
    Received,
    file_meta_bytes,
)

CT = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT = "1.2.840.10008.1.2.1"
IMPLICIT = "1.2.840.10008.1.2"


def request_pdu(contexts: list[tuple[str, list[str]]], extra: list[object] = ()) -> bytes:  # type: ignore[assignment]
    """An A-ASSOCIATE-RQ as pynetdicom's requestor encodes it."""
    primitive = A_ASSOCIATE()
    primitive.application_context_name = "1.2.840.10008.3.1.1.1"
    primitive.calling_ae_title = "MODALITY"
    primitive.called_ae_title = "NODE"
    cxs = []
    for number, (abstract, syntaxes) in enumerate(contexts):
        cx = build_context(abstract, syntaxes)
        cx.context_id = 2 * number + 1
        cxs.append(cx)
    primitive.presentation_context_definition_list = cxs
    length = MaximumLengthNotification()
    length.maximum_length_received = 32768
    impl = ImplementationClassUIDNotification()
    impl.implementation_class_uid = "1.2.3.4"
    primitive.user_information = [length, impl, *extra]
    primitive.result = None
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(primitive)
    return bytes(pdu.encode())


def test_a_storage_request_is_decoded_and_served_lean() -> None:
    request = acceptor.decode_request(request_pdu([(CT, [EXPLICIT, IMPLICIT]), (VERIFICATION, [IMPLICIT])]))
    assert (request.calling, request.called, request.peer_max_pdu, request.implementation_class_uid) == ("MODALITY", "NODE", 32768, "1.2.3.4")
    assert acceptor.full_stack_reason(request, frozenset({CT, VERIFICATION})) is None


def test_commitment_and_role_selection_go_to_pynetdicom() -> None:
    lean = frozenset({CT, VERIFICATION})
    commitment = acceptor.decode_request(request_pdu([(CT, [EXPLICIT]), (STORAGE_COMMITMENT, [IMPLICIT])]))
    assert acceptor.full_stack_reason(commitment, lean) == f"proposes {STORAGE_COMMITMENT}"
    role = SCP_SCU_RoleSelectionNegotiation()
    role.sop_class_uid = CT
    role.scu_role, role.scp_role = True, True
    with_role = acceptor.decode_request(request_pdu([(CT, [EXPLICIT])], [role]))
    assert acceptor.full_stack_reason(with_role, lean) == "proposes SCP_SCU_RoleSelectionNegotiation"


def test_accept_encodes_what_pynetdicom_decodes() -> None:
    request = acceptor.decode_request(request_pdu([(CT, [IMPLICIT, EXPLICIT]), ("1.2.3.999", [IMPLICIT])]))
    supported = [build_context(CT, [EXPLICIT, IMPLICIT])]
    accepted = acceptor.accept(request, supported, negotiate_as_acceptor, max_pdu=16378,
                               implementation_class_uid="1.2.826.0.1.3680043.9.7433.1", implementation_version_name="NODE")
    assert accepted.contexts == {1: (CT, EXPLICIT)}  # pynetdicom's rule: the acceptor's order
    ac = A_ASSOCIATE_AC()
    ac.decode(accepted.pdu)
    primitive = ac.to_primitive()
    results = {cx.context_id: cx.result for cx in primitive.presentation_context_definition_results_list}
    assert results == {1: 0, 3: 3}  # the unknown abstract syntax: 3, abstract syntax not supported
    lengths = [item.maximum_length_received for item in primitive.user_information if isinstance(item, MaximumLengthNotification)]
    assert lengths == [16378]


def test_reject_and_abort_pdus_carry_their_reasons() -> None:
    rj = A_ASSOCIATE_RJ()
    rj.decode(acceptor.reject_pdu(1, 1, 7))
    assert (rj.result, rj.source, rj.reason_diagnostic) == (1, 1, 7)
    abort = A_ABORT_RQ()
    abort.decode(acceptor.abort_pdu(acceptor.ABORT_UNEXPECTED_PDU))
    assert (abort.source, abort.reason_diagnostic) == (2, 2)
    assert acceptor.release_rp_pdu()[:1] == b"\x06"


def test_unknown_pdu_types_and_broken_requests_are_protocol_errors() -> None:
    assert acceptor.pdu_header(b"\x04\x00\x00\x00\x00\x10") == (4, 16)
    with pytest.raises(ProtocolError) as unknown:
        acceptor.pdu_header(b"\x09\x00\x00\x00\x00\x10")
    assert unknown.value.reason == acceptor.ABORT_UNRECOGNIZED_PDU
    good = request_pdu([(CT, [EXPLICIT])])
    with pytest.raises(ProtocolError, match="cannot be decoded"):
        acceptor.decode_request(good[:6] + b"\xff" * (len(good) - 6))
    with pytest.raises(ProtocolError, match="no presentation context"):
        acceptor.decode_request(good[:74])  # pynetdicom reads a request cut short as one without contexts


def store_request_pdus(ds: Dataset, message_id: int, max_pdu: int) -> list[bytes]:
    """A C-STORE-RQ as pynetdicom's requestor fragments it."""
    primitive = C_STORE()
    primitive.MessageID = message_id
    primitive.AffectedSOPClassUID = CT
    primitive.AffectedSOPInstanceUID = ds.SOPInstanceUID
    primitive.Priority = 0
    primitive.DataSet = BytesIO(encode(ds, False, True))
    message = C_STORE_RQ()
    message.primitive_to_message(primitive)
    out = []
    for p_data in message.encode_msg(1, max_pdu):
        pdu = P_DATA_TF()
        pdu.from_primitive(p_data)
        out.append(bytes(pdu.encode()))
    return out


def test_a_fragmented_c_store_is_reassembled_and_answered() -> None:
    ds = Dataset()
    ds.SOPClassUID = CT
    ds.SOPInstanceUID = "1.2.3.4.5"
    ds.PatientComments = "P" * 3000
    pdus = store_request_pdus(ds, 7, 1024)
    assert len(pdus) > 2
    command, data = b"", b""
    for pdu in pdus:
        for frag in acceptor.fragments(pdu):
            if frag.is_command:
                command += frag.data
            else:
                data += frag.data
    parsed = acceptor.decode_command(command)
    assert (parsed.field, parsed.message_id, parsed.sop_class_uid, parsed.sop_instance_uid, parsed.has_dataset) == (
        acceptor.C_STORE_RQ, 7, CT, "1.2.3.4.5", True)
    assert data == encode(ds, False, True)
    (rsp_pdu,) = acceptor.response_pdus(1, parsed, 0xA700, 16384)
    p_data = P_DATA_TF()
    p_data.decode(rsp_pdu)
    primitive = P_DATA()
    primitive.presentation_data_value_list = [[item.presentation_context_id, item.presentation_data_value]
                                              for item in p_data.presentation_data_value_items]
    rsp = C_STORE_RSP()
    assert rsp.decode_msg(primitive)
    answer = rsp.message_to_primitive()
    assert (answer.MessageIDBeingRespondedTo, answer.Status, answer.AffectedSOPInstanceUID) == (7, 0xA700, "1.2.3.4.5")


def test_a_broken_command_set_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError):
        acceptor.decode_command(b"\x00\x00\x00\x01\xff\xff")


@pytest.mark.parametrize("uid", ["1.2.3", "1.2.34", "1.2.840.113619.2.55.3.604688119.868.1234567890.123"])
def test_file_meta_cache_writes_what_pydicom_writes(uid: str) -> None:
    base = Received("a", CT, "9.9", EXPLICIT, "MODALITY", "NODE", "1.2.276.0.7230010.3.0.3.6.7", "OFFIS_DCMTK_367")
    cache = FileMetaCache()
    cache.meta(base)
    for variant in (base, dataclasses.replace(base, implementation_version_name="", calling_aet="")):
        received = dataclasses.replace(variant, sop_instance_uid=uid)
        assert cache.meta(received) == file_meta_bytes(received)


@pytest.mark.parametrize("message_id, status, uid", [
    (1, 0x0000, "1.2.3"), (65535, 0xA700, "1.2.34"), (300, 0xC000, "1.2.840.113619.2.55.3.604688119.868.1234567890.123"),
])
def test_cached_responses_are_the_bytes_pynetdicom_encodes(message_id: int, status: int, uid: str) -> None:
    encoder = acceptor.ResponseEncoder()
    store = acceptor.Command(acceptor.C_STORE_RQ, message_id, CT, uid, True)
    echo = acceptor.Command(acceptor.C_ECHO_RQ, message_id, VERIFICATION, "", False)
    for command in (store, echo):
        encoder.pdus(3, acceptor.Command(command.field, 9, command.sop_class_uid, "9.9", command.has_dataset), 0, 0)
        assert encoder.pdus(3, command, status, 16384) == acceptor.response_pdus(3, command, status, 16384)
    # a peer whose PDUs are too small for one response gets pynetdicom's fragments
    assert encoder.pdus(3, store, status, 40) == acceptor.response_pdus(3, store, status, 40)
