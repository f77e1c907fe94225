"""The PDU codec: round trips, agreement with pynetdicom's independent codec, hostile bodies."""

from __future__ import annotations

import struct

import pytest

from node import ul
from node.ul import _pdu
from tests.node.ul.helpers import COMMITMENT, CT, EXPLICIT, IMPLICIT, POLICY, request

FULL_REQUEST = request(
    window=ul.AsyncWindow(max_invoked=5, max_performed=3),
    implementation_version_name="NODE_01",
    roles=(ul.RoleSelection(sop_class_uid=COMMITMENT, scu_role=True, scp_role=True),),
    extended=(ul.ExtendedNegotiation(sop_class_uid=CT, info=b"\x01\x00\x01"),),
    common_extended=(ul.CommonExtendedNegotiation(sop_class_uid=CT, service_class_uid="1.2.840.10008.4.2",
                                                  related_general_sop_classes=("1.2.3", "1.2.4")),),
    user_identity=ul.UserIdentity(identity_type=2, primary=b"alice", secondary=b"secret", positive_response_requested=True),
)
FULL_ACCEPT = ul.AssociateAccept(
    called_ae="NODE", calling_ae="SCU", max_pdu=0, implementation_version_name="SCP",
    contexts=(ul.ContextResult(context_id=1, result=0, transfer_syntax=IMPLICIT),
              ul.ContextResult(context_id=3, result=4, transfer_syntax=EXPLICIT)),
    async_window=ul.AsyncWindow(max_invoked=2, max_performed=1),
    roles=(ul.RoleSelection(sop_class_uid=COMMITMENT, scu_role=True, scp_role=False),),
    extended=(ul.ExtendedNegotiation(sop_class_uid=CT, info=b"\x01"),), user_identity_response=b"ticket")


def body(data: bytes) -> bytes:
    assert struct.unpack(">I", data[2:6])[0] == len(data) - 6
    return data[6:]


@pytest.mark.parametrize("event", [FULL_REQUEST, request()], ids=["full", "plain"])
def test_associate_rq_round_trip(event: ul.AssociateRequest) -> None:
    assert _pdu.decode(_pdu.ASSOCIATE_RQ, body(_pdu.encode_associate_rq(event))) == event


def test_associate_ac_round_trip() -> None:
    assert _pdu.decode(_pdu.ASSOCIATE_AC, body(_pdu.encode_associate_ac(FULL_ACCEPT))) == FULL_ACCEPT


@pytest.mark.parametrize("event", [ul.AssociateReject(result=2, source=3, reason=1), ul.ReleaseRequest(), ul.ReleaseReply(),
                                   ul.Abort(source=2, reason=6)], ids=lambda e: type(e).__name__)
def test_short_pdus_round_trip(event: object) -> None:
    encode = {ul.AssociateReject: _pdu.encode_associate_rj, ul.ReleaseRequest: _pdu.encode_release_rq,
              ul.ReleaseReply: _pdu.encode_release_rp, ul.Abort: _pdu.encode_abort}[type(event)]
    data = encode(event)
    assert len(data) == 10 and _pdu.decode(data[0], body(data)) == event


@pytest.mark.parametrize(("ours", "theirs_name"), [(FULL_REQUEST, "A_ASSOCIATE_RQ"), (FULL_ACCEPT, "A_ASSOCIATE_AC"),
                                                   (ul.AssociateReject(result=1, source=1, reason=7), "A_ASSOCIATE_RJ"),
                                                   (ul.ReleaseRequest(), "A_RELEASE_RQ"), (ul.ReleaseReply(), "A_RELEASE_RP"),
                                                   (ul.Abort(source=2, reason=2), "A_ABORT_RQ")],
                         ids=lambda v: v if isinstance(v, str) else "")
def test_pynetdicom_reads_our_bytes_and_writes_them_back_identically(ours: object, theirs_name: str) -> None:
    """pynetdicom's PDU classes are an independent reading of PS3.8 9.3."""
    import pynetdicom.pdu

    data = {ul.AssociateRequest: _pdu.encode_associate_rq, ul.AssociateAccept: _pdu.encode_associate_ac,
            ul.AssociateReject: _pdu.encode_associate_rj, ul.ReleaseRequest: _pdu.encode_release_rq,
            ul.ReleaseReply: _pdu.encode_release_rp, ul.Abort: _pdu.encode_abort}[type(ours)](ours)  # type: ignore[operator]
    theirs = getattr(pynetdicom.pdu, theirs_name)()
    theirs.decode(data)
    assert theirs.encode() == data


def test_pynetdicoms_request_reads_as_it_meant() -> None:
    """A request encoded by pynetdicom (roles, identity, window, extended) decodes field by field."""
    from pynetdicom.pdu import A_ASSOCIATE_RQ
    from pynetdicom.pdu_primitives import (
        A_ASSOCIATE,
        AsynchronousOperationsWindowNegotiation,
        ImplementationClassUIDNotification,
        MaximumLengthNotification,
        SCP_SCU_RoleSelectionNegotiation,
        SOPClassExtendedNegotiation,
        UserIdentityNegotiation,
    )
    from pynetdicom.presentation import build_context

    primitive = A_ASSOCIATE()
    primitive.application_context_name = ul.APPLICATION_CONTEXT
    primitive.calling_ae_title, primitive.called_ae_title = "PYNET", "NODE"
    contexts = [build_context(COMMITMENT, [IMPLICIT]), build_context(CT, [EXPLICIT, IMPLICIT])]
    for n, cx in enumerate(contexts):
        cx.context_id = 2 * n + 1
    primitive.presentation_context_definition_list = contexts
    items = [MaximumLengthNotification(), ImplementationClassUIDNotification(), AsynchronousOperationsWindowNegotiation(),
             SCP_SCU_RoleSelectionNegotiation(), SOPClassExtendedNegotiation(), UserIdentityNegotiation()]
    items[0].maximum_length_received = 32768
    items[1].implementation_class_uid = "1.2.3.4"
    items[2].maximum_number_operations_invoked, items[2].maximum_number_operations_performed = 8, 2
    items[3].sop_class_uid, items[3].scu_role, items[3].scp_role = COMMITMENT, True, True
    items[4].sop_class_uid, items[4].service_class_application_information = CT, b"\x01\x01"
    items[5].user_identity_type, items[5].primary_field, items[5].positive_response_requested = 1, b"bob", True
    primitive.user_information = items
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(primitive)
    data = pdu.encode()

    got = _pdu.decode(_pdu.ASSOCIATE_RQ, body(data))
    assert isinstance(got, ul.AssociateRequest)
    assert (got.calling_ae, got.called_ae, got.max_pdu, got.implementation_class_uid) == ("PYNET", "NODE", 32768, "1.2.3.4")
    assert [(cx.context_id, cx.abstract_syntax, cx.transfer_syntaxes) for cx in got.contexts] == [
        (1, COMMITMENT, (IMPLICIT,)), (3, CT, (EXPLICIT, IMPLICIT))]
    assert got.async_window == ul.AsyncWindow(max_invoked=8, max_performed=2)
    assert got.roles == (ul.RoleSelection(sop_class_uid=COMMITMENT, scu_role=True, scp_role=True),)
    assert got.extended == (ul.ExtendedNegotiation(sop_class_uid=CT, info=b"\x01\x01"),)
    assert got.user_identity == ul.UserIdentity(identity_type=1, primary=b"bob", positive_response_requested=True)


def test_unknown_items_and_sub_items_are_skipped() -> None:
    data = bytearray(body(_pdu.encode_associate_rq(request())))
    stray = bytes((0x66, 0, 0, 2, 0xAB, 0xCD))
    data += stray  # an unknown item after the user information
    assert _pdu.decode(_pdu.ASSOCIATE_RQ, bytes(data)) == request()


def _with_context_id(context_id: int) -> bytes:
    data = bytearray(body(_pdu.encode_associate_rq(request())))
    first = data.index(b"\x20\x00", 68)  # the first presentation context item
    data[first + 4] = context_id
    return bytes(data)


HOSTILE = {
    "short fixed part": bytes(40),
    "item overruns": body(_pdu.encode_associate_rq(request()))[:-3],
    "no application context": body(_pdu.encode_associate_rq(request()))[:68],
    "non-ASCII AE title": b"\x00\x01\x00\x00" + b"\xff" * 16 + body(_pdu.encode_associate_rq(request()))[20:],
    "even context ID": _with_context_id(2),
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_request_bodies_are_one_violation(name: str) -> None:
    with pytest.raises(ul.ProtocolViolation) as caught:
        _pdu.decode(_pdu.ASSOCIATE_RQ, HOSTILE[name])
    assert caught.value.reason == ul.REASON_INVALID_PARAMETER


@pytest.mark.parametrize("pdu_type", [_pdu.ASSOCIATE_RJ, _pdu.RELEASE_RQ, _pdu.RELEASE_RP, _pdu.ABORT])
def test_fixed_length_pdus_refuse_other_lengths(pdu_type: int) -> None:
    with pytest.raises(ul.ProtocolViolation):
        _pdu.decode(pdu_type, bytes(5))


def test_unrecognized_pdu_type() -> None:
    with pytest.raises(ul.ProtocolViolation) as caught:
        _pdu.decode(0x09, bytes(4))
    assert caught.value.reason == ul.REASON_UNRECOGNIZED_PDU


@pytest.mark.parametrize("value", [b"", b"\x00\x00\x00\x01\x01", b"\x00\x00\x00\x09\x01\x03abc", b"\x00\x00"])
def test_broken_p_data_is_one_violation(value: bytes) -> None:
    with pytest.raises(ul.ProtocolViolation):
        _pdu.decode_p_data(value)


def test_p_data_with_many_pdvs() -> None:
    data = b"".join(body(_pdu.encode_p_data(cx, cmd, payload, last)) for cx, cmd, payload, last in
                    [(1, True, b"cmd", True), (3, False, b"abc", False), (3, False, b"", True)])
    assert _pdu.decode_p_data(data) == [_pdu.PDV(1, True, True, b"cmd"), _pdu.PDV(3, False, False, b"abc"),
                                        _pdu.PDV(3, False, True, b"")]


@pytest.mark.parametrize("max_pdu", [7, 100, 16382, 0])
def test_fragments_fit_the_peers_maximum_length(max_pdu: int) -> None:
    data = bytes(range(256)) * 40
    pdus = list(_pdu.fragment(3, False, data, max_pdu))
    pdvs = [pdv for pdu in pdus for pdv in _pdu.decode_p_data(body(pdu))]
    assert b"".join(p.data for p in pdvs) == data
    assert [p.is_last for p in pdvs] == [False] * (len(pdvs) - 1) + [True]
    if max_pdu:
        assert all(len(pdu) - 6 <= max_pdu for pdu in pdus)
        assert len(pdus) == -(-len(data) // (max_pdu - 6))
    else:
        assert len(pdus) == 1


def test_policy_answer_encodes_like_pynetdicom_reads_it() -> None:
    """The negotiated A-ASSOCIATE-AC, read back by pynetdicom: result and syntax per context."""
    from pynetdicom.pdu import A_ASSOCIATE_AC

    accept = ul.negotiate(FULL_REQUEST, POLICY)
    assert isinstance(accept, ul.AssociateAccept)
    theirs = A_ASSOCIATE_AC()
    theirs.decode(_pdu.encode_associate_ac(accept))
    got = {cx.context_id: (cx.result, cx.transfer_syntax[0]) for cx in theirs.to_primitive().presentation_context_definition_results_list}
    assert got == {1: (0, IMPLICIT), 3: (0, EXPLICIT), 5: (0, IMPLICIT)}
