"""The acceptor's answer from a policy: contexts, transfer syntaxes, roles, extended
negotiation, user identity, the asynchronous operations window."""

from __future__ import annotations

import pytest

from node import ul
from tests.node.ul.helpers import COMMITMENT, CT, EXPLICIT, IMPLICIT, POLICY, established, feed, request

BIG_ENDIAN = "1.2.840.10008.1.2.2"


def results(answer: ul.AssociateAccept | ul.AssociateReject) -> dict[int, tuple[int, str]]:
    assert isinstance(answer, ul.AssociateAccept)
    return {cx.context_id: (cx.result, cx.transfer_syntax) for cx in answer.contexts if cx.result == ul.ACCEPTANCE} | {
        cx.context_id: (cx.result, "") for cx in answer.contexts if cx.result != ul.ACCEPTANCE}


def test_any_takes_the_requestors_order_an_explicit_list_the_acceptors() -> None:
    contexts = (ul.ProposedContext(context_id=1, abstract_syntax=CT, transfer_syntaxes=(EXPLICIT, IMPLICIT)),
                ul.ProposedContext(context_id=3, abstract_syntax=ul.VERIFICATION, transfer_syntaxes=(EXPLICIT, IMPLICIT)))
    policy = ul.AcceptorPolicy(contexts={CT: (ul.ANY,), ul.VERIFICATION: (IMPLICIT, EXPLICIT)})
    assert results(ul.negotiate(request(contexts=contexts), policy)) == {1: (0, EXPLICIT), 3: (0, IMPLICIT)}


def test_requestor_order_within_an_explicit_list() -> None:
    contexts = (ul.ProposedContext(context_id=1, abstract_syntax=CT, transfer_syntaxes=("1.2.3.99", EXPLICIT, IMPLICIT)),)
    policy = ul.AcceptorPolicy(contexts={CT: (IMPLICIT, EXPLICIT)}, requestor_order=frozenset({CT}))
    assert results(ul.negotiate(request(contexts=contexts), policy)) == {1: (0, EXPLICIT)}


def test_unsupported_abstract_and_transfer_syntaxes() -> None:
    contexts = (ul.ProposedContext(context_id=1, abstract_syntax="1.2.3.4", transfer_syntaxes=(IMPLICIT,)),
                ul.ProposedContext(context_id=3, abstract_syntax=ul.VERIFICATION, transfer_syntaxes=(BIG_ENDIAN,)))
    answer = ul.negotiate(request(contexts=contexts), POLICY)
    assert results(answer) == {1: (ul.ABSTRACT_SYNTAX_NOT_SUPPORTED, ""), 3: (ul.TRANSFER_SYNTAXES_NOT_SUPPORTED, "")}


@pytest.mark.parametrize(("proposed", "allowed", "answer"), [
    ((True, True), (True, True), (True, True)),
    ((True, True), None, (True, False)),  # no rule: the default roles
    ((False, True), (True, True), (False, True)),
    ((True, False), (False, True), None),  # nothing left: the context is rejected
])
def test_role_selection(proposed: tuple[bool, bool], allowed: tuple[bool, bool] | None,
                        answer: tuple[bool, bool] | None) -> None:
    rq = request(roles=(ul.RoleSelection(sop_class_uid=COMMITMENT, scu_role=proposed[0], scp_role=proposed[1]),))
    policy = ul.AcceptorPolicy(contexts=POLICY.contexts, roles={COMMITMENT: allowed} if allowed else {})
    got = ul.negotiate(rq, policy)
    assert isinstance(got, ul.AssociateAccept)
    if answer is None:
        assert results(got)[5][0] == ul.USER_REJECTION and got.roles == ()
    else:
        assert got.roles == (ul.RoleSelection(sop_class_uid=COMMITMENT, scu_role=answer[0], scp_role=answer[1]),)


def test_negotiated_roles_reach_both_engines() -> None:
    roles = (ul.RoleSelection(sop_class_uid=COMMITMENT, scu_role=True, scp_role=True),)
    policy = ul.AcceptorPolicy(contexts=POLICY.contexts, roles={COMMITMENT: (True, True)})
    scu, scp = established(policy=policy, roles=roles)
    for engine in (scu, scp):
        assert engine.contexts[5] == ul.AcceptedContext(5, COMMITMENT, IMPLICIT, True, True)
        assert engine.contexts[1].requestor_scu and not engine.contexts[1].requestor_scp


def test_extended_negotiation_answered_for_accepted_classes_only() -> None:
    rq = request(extended=(ul.ExtendedNegotiation(sop_class_uid=CT, info=b"\x01"),
                           ul.ExtendedNegotiation(sop_class_uid="1.2.3.4", info=b"\x01")))
    policy = ul.AcceptorPolicy(contexts=POLICY.contexts, extended=lambda item: item.info + b"\x00")
    got = ul.negotiate(rq, policy)
    assert isinstance(got, ul.AssociateAccept)
    assert got.extended == (ul.ExtendedNegotiation(sop_class_uid=CT, info=b"\x01\x00"),)


@pytest.mark.parametrize(("positive", "verdict", "expected"), [
    (True, b"token", b"token"), (False, b"token", None), (True, None, "reject")])
def test_user_identity(positive: bool, verdict: bytes | None, expected: object) -> None:
    identity = ul.UserIdentity(identity_type=2, primary=b"alice", secondary=b"pw", positive_response_requested=positive)
    seen = []
    policy = ul.AcceptorPolicy(contexts=POLICY.contexts, identify=lambda ident: seen.append(ident) or verdict)
    got = ul.negotiate(request(user_identity=identity), policy)
    assert seen == [identity]
    if expected == "reject":
        assert got == ul.AssociateReject(result=1, source=1, reason=1)
    else:
        assert isinstance(got, ul.AssociateAccept) and got.user_identity_response == expected


def test_user_identity_ignored_without_a_judge() -> None:
    identity = ul.UserIdentity(identity_type=1, primary=b"bob", positive_response_requested=True)
    got = ul.negotiate(request(user_identity=identity), ul.AcceptorPolicy(contexts=POLICY.contexts))
    assert isinstance(got, ul.AssociateAccept) and got.user_identity_response is None


@pytest.mark.parametrize(("proposed", "ours", "answer"), [
    ((8, 2), (4, 4), (4, 2)), ((0, 0), (3, 5), (5, 3)), ((2, 0), (0, 0), (2, 0)), ((8, 8), None, None), (None, (4, 4), None)])
def test_async_window(proposed: tuple[int, int] | None, ours: tuple[int, int] | None, answer: tuple[int, int] | None) -> None:
    """The requestor's invoked count is bounded by what we perform and vice versa; 0 is unlimited."""
    window = ul.AsyncWindow(max_invoked=proposed[0], max_performed=proposed[1]) if proposed else None
    policy = ul.AcceptorPolicy(contexts=POLICY.contexts,
                               async_window=ul.AsyncWindow(max_invoked=ours[0], max_performed=ours[1]) if ours else None)
    got = ul.negotiate(request(window=window), policy)
    assert isinstance(got, ul.AssociateAccept)
    assert got.async_window == (ul.AsyncWindow(max_invoked=answer[0], max_performed=answer[1]) if answer else None)


def test_another_protocol_version_is_rejected_by_the_provider() -> None:
    """AE-6: bit 0 (version 1) unset is refused with source 2 (ACSE), reason 2, through the wire."""
    from node.ul import _pdu

    scu, scp = ul.Association(ul.Role.REQUESTOR), ul.Association(ul.Role.ACCEPTOR)
    (rq,) = feed(scp, scu.send(request(protocol_version=2)))
    assert isinstance(rq, ul.AssociateRequest) and rq.protocol_version == 2
    answer = ul.negotiate(rq, POLICY)
    assert answer == ul.AssociateReject(result=1, source=2, reason=2)
    assert feed(scu, scp.send(answer)) == [answer, ul.ConnectionClosed()]
    assert _pdu.encode_associate_rq(request())[6:8] == b"\x00\x01"


def test_foreign_application_context_is_rejected() -> None:
    got = ul.negotiate(request(application_context="1.2.3"), POLICY)
    assert got == ul.AssociateReject(result=1, source=1, reason=2)
