"""node.requestor: what nodectl send's lean association writes, read back by pynetdicom's codecs."""

from __future__ import annotations

from io import BytesIO

import pytest
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu import A_ASSOCIATE_RQ, A_RELEASE_RQ, P_DATA_TF
from pynetdicom.presentation import build_context, negotiate_as_acceptor

from node import acceptor, requestor

CT = "1.2.840.10008.5.1.4.1.1.2"
SC = "1.2.840.10008.5.1.4.1.1.7"
EXPLICIT = "1.2.840.10008.1.2.1"
IMPLICIT = "1.2.840.10008.1.2"


def proposal() -> requestor.Proposal:
    return requestor.associate_request("SENDER", "NODE", [(CT, EXPLICIT), (CT, IMPLICIT), (SC, EXPLICIT)], max_pdu=16384,
                                       implementation_class_uid="1.2.3.4", implementation_version_name="NODECTL")


def test_the_request_is_what_pynetdicom_reads() -> None:
    offer = proposal()
    rq = A_ASSOCIATE_RQ()
    rq.decode(offer.pdu)
    primitive = rq.to_primitive()
    assert (primitive.calling_ae_title, primitive.called_ae_title) == ("SENDER", "NODE")
    assert [(cx.context_id, cx.abstract_syntax, cx.transfer_syntax) for cx in primitive.presentation_context_definition_list] == [
        (1, CT, [EXPLICIT]), (3, CT, [IMPLICIT]), (5, SC, [EXPLICIT])]
    assert offer.contexts == {1: (CT, EXPLICIT), 3: (CT, IMPLICIT), 5: (SC, EXPLICIT)}
    with pytest.raises(ValueError, match="at most 128"):
        requestor.associate_request("A", "B", [(f"1.2.3.{n}", EXPLICIT) for n in range(129)], max_pdu=0,
                                    implementation_class_uid="1.2.3", implementation_version_name="")


def test_an_acceptance_maps_contexts_by_syntax_and_a_rejection_keeps_its_reason() -> None:
    offer = proposal()
    request = acceptor.decode_request(offer.pdu)
    accepted = acceptor.accept(request, [build_context(CT, [EXPLICIT])], negotiate_as_acceptor, max_pdu=32768,
                               implementation_class_uid="1.2.3.5", implementation_version_name="")
    reply = requestor.associate_reply(requestor.A_ASSOCIATE_AC, accepted.pdu, offer)
    assert reply == requestor.Established(by_syntax={(CT, EXPLICIT): 1}, peer_max_pdu=32768)
    rejected = requestor.associate_reply(requestor.A_ASSOCIATE_RJ, acceptor.reject_pdu(2, 3, 2), offer)
    assert rejected == requestor.Rejected(2, 3, 2)
    with pytest.raises(acceptor.ProtocolError):
        requestor.associate_reply(0x04, b"\x04\x00\x00\x00\x00\x00", offer)


@pytest.mark.parametrize("message_id, uid", [(1, "1.2.3"), (65535, "1.2.34"), (4242, "2.25.123456789012345678901234567890123")])
def test_store_commands_are_the_bytes_pynetdicom_encodes(message_id: int, uid: str) -> None:
    commands = requestor.StoreRequests()
    commands.command_pdu(7, CT, "9.9", 3)  # the template comes from another message
    primitive = C_STORE()
    primitive.MessageID = message_id
    primitive.AffectedSOPClassUID = CT
    primitive.AffectedSOPInstanceUID = uid
    primitive.Priority = 0
    primitive.DataSet = BytesIO(b"\x00")
    message = C_STORE_RQ()
    message.primitive_to_message(primitive)
    theirs = P_DATA_TF()
    theirs.from_primitive(next(iter(message.encode_msg(7, 1 << 20))))
    assert commands.command_pdu(7, CT, uid, message_id) == bytes(theirs.encode())


def test_dataset_pdus_mark_only_the_last_fragment() -> None:
    pdus = list(requestor.data_pdus(3, iter([b"a" * 10, b"b" * 10, b"c" * 4])))
    frags = [frag for pdu in pdus for frag in acceptor.fragments(pdu)]
    assert [(f.context_id, f.is_command, f.is_last, f.data) for f in frags] == [
        (3, False, False, b"a" * 10), (3, False, False, b"b" * 10), (3, False, True, b"c" * 4)]
    (empty,) = requestor.data_pdus(3, iter([]))
    assert [(f.is_last, f.data) for f in acceptor.fragments(empty)] == [(True, b"")]
    release = A_RELEASE_RQ()
    release.decode(requestor.release_rq_pdu())
    assert release.pdu_type == 0x05
