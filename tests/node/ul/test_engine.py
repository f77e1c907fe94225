"""Whole associations through two engines back to back: every read split one byte at a time
and everything coalesced into one read, fragmentation, the window, release collision, aborts,
and the DIMSE rules the engine keeps."""

from __future__ import annotations

import struct

import pytest

from node import ul
from node.ul import _pdu
from tests.node.ul.helpers import COMMITMENT, COMMITMENT_INSTANCE, CT, POLICY, abort_fields, echo_rq_pdu, established, feed, request

S = ul.State
UID = "1.2.826.0.1.3680043.8.498.77"


def store_rq(message_id: int) -> ul.CStoreRQ:
    return ul.CStoreRQ(message_id=message_id, affected_sop_class_uid=CT, affected_sop_instance_uid=f"{UID}.{message_id}")


def store_rsp(message_id: int, status: int = 0) -> ul.CStoreRSP:
    return ul.CStoreRSP(message_id_being_responded_to=message_id, status=status, affected_sop_class_uid=CT,
                        affected_sop_instance_uid=f"{UID}.{message_id}")


def dataset_of(events: list[ul.Event]) -> bytes:
    return b"".join(e.data for e in events if isinstance(e, ul.DatasetFragment))


def run_session(chunk: int | None) -> tuple[list[ul.Event], list[ul.Event]]:
    """Associate, C-ECHO, C-STORE a 40 KB dataset, release; bytes in reads of ``chunk``."""
    scu, scp = ul.Association(ul.Role.REQUESTOR), ul.Association(ul.Role.ACCEPTOR)
    at_scp = feed(scp, scu.send(request(max_pdu=4096)), chunk)
    at_scu = feed(scu, scp.send(ul.negotiate(at_scp[0], ul.AcceptorPolicy(contexts=POLICY.contexts, max_pdu=1000))), chunk)  # type: ignore[arg-type]
    dataset = bytes(range(256)) * 160
    at_scp += feed(scp, scu.send_message(1, ul.CEchoRQ(message_id=1)), chunk)
    at_scu += feed(scu, scp.send_message(1, ul.CEchoRSP(message_id_being_responded_to=1, status=0)), chunk)
    at_scp += feed(scp, scu.send_message(3, store_rq(2), dataset), chunk)
    at_scu += feed(scu, scp.send_message(3, store_rsp(2)), chunk)
    at_scp += feed(scp, scu.send(ul.ReleaseRequest()), chunk)
    at_scu += feed(scu, scp.send(ul.ReleaseReply()), chunk)
    at_scp += feed(scp, b"", chunk)  # the requestor closed
    assert scu.state is S.STA1 and scp.state is S.STA1
    assert dataset_of(at_scp) == dataset
    return at_scu, at_scp


def merged(events: list[ul.Event]) -> list[object]:
    """Events with dataset fragments joined: what must not depend on how bytes were read."""
    out: list[object] = []
    for event in events:
        if isinstance(event, ul.DatasetFragment) and out and isinstance(out[-1], bytes):
            out[-1] += event.data
        else:
            out.append(event.data if isinstance(event, ul.DatasetFragment) else event)
    return out


@pytest.mark.parametrize("chunk", [1, 7, 4096, None], ids=["byte", "7 bytes", "4 KiB", "whole"])
def test_the_same_events_however_the_bytes_are_read(chunk: int | None) -> None:
    at_scu, at_scp = run_session(chunk)
    assert merged(at_scu) == merged(run_session(None)[0])
    assert merged(at_scp) == merged(run_session(None)[1])
    kinds = [type(e).__name__ for e in at_scp if not isinstance(e, ul.DatasetFragment)]
    assert kinds == ["AssociateRequest", "Command", "Command", "ReleaseRequest", "ConnectionClosed"]


def test_a_dataset_arrives_in_pieces_as_its_pdus_do() -> None:
    """The shell sees each PDV when it arrives: a big C-STORE never has to be held whole."""
    scu, scp = established(policy=ul.AcceptorPolicy(contexts=POLICY.contexts, max_pdu=1000))
    wire = scu.send_message(3, store_rq(1), bytes(50_000))
    fragments = [e for e in feed(scp, wire[: len(wire) // 2]) if isinstance(e, ul.DatasetFragment)]
    assert fragments and not any(f.last for f in fragments)
    assert all(len(f.data) <= 1000 - 6 for f in fragments)
    rest = [e for e in feed(scp, wire[len(wire) // 2 :]) if isinstance(e, ul.DatasetFragment)]
    assert rest[-1].last and sum(len(f.data) for f in fragments + rest) == 50_000


def test_commands_are_fragmented_and_reassembled_too() -> None:
    scu, scp = established(max_pdu=20)  # the acceptor may send at most 14 bytes a PDV
    assert feed(scp, scu.send_message(1, ul.CEchoRQ(message_id=9))) == [
        ul.Command(context_id=1, message=ul.CEchoRQ(message_id=9))]
    reply = scp.send_message(1, ul.CEchoRSP(message_id_being_responded_to=9, status=0))
    assert len(list(_split(reply))) > 3 and all(len(pdu) - 6 <= 20 for pdu in _split(reply))
    assert feed(scu, reply) == [ul.Command(context_id=1, message=ul.CEchoRSP(message_id_being_responded_to=9, status=0))]


@pytest.mark.parametrize(("peer_max", "cap", "largest"), [(1000, 200, 200), (0, 300, 300), (200, 1000, 200), (0, 0, 50_000 + 6)])
def test_our_send_cap_lowers_the_peers_maximum(peer_max: int, cap: int, largest: int) -> None:
    scu = ul.Association(ul.Role.REQUESTOR)
    scp = ul.Association(ul.Role.ACCEPTOR, send_cap=cap)
    (rq,) = feed(scp, scu.send(request(max_pdu=peer_max)))
    feed(scu, scp.send(ul.negotiate(rq, POLICY)))  # type: ignore[arg-type]
    feed(scp, scu.send_message(3, store_rq(1), b"x"))
    scp.send_message(3, store_rsp(1))
    report = ul.NEventReportRQ(message_id=1, affected_sop_class_uid=CT, affected_sop_instance_uid=UID, event_type_id=1)
    pdus = _split(scp.send_message(3, report, bytes(50_000)))
    assert max(len(pdu) - 6 for pdu in pdus) == largest


def _split(wire: bytes) -> list[bytes]:
    pdus, pos = [], 0
    while pos < len(wire):
        (length,) = struct.unpack_from(">I", wire, pos + 2)
        pdus.append(wire[pos : pos + 6 + length])
        pos += 6 + length
    return pdus


def test_many_operations_in_one_read_within_the_window() -> None:
    window = ul.AsyncWindow(max_invoked=0, max_performed=1)
    policy = ul.AcceptorPolicy(contexts=POLICY.contexts, async_window=ul.AsyncWindow(max_invoked=1, max_performed=0))
    scu, scp = established(policy=policy, window=window)
    assert scu.max_invoked == 0 and scp.max_performed == 0  # unlimited both ways
    wire = b"".join(scu.send_message(3, store_rq(n), b"x" * 100) for n in range(1, 51))
    assert scu.outstanding == frozenset(range(1, 51))
    events = feed(scp, wire)
    assert [e.message.message_id for e in events if isinstance(e, ul.Command)] == list(range(1, 51))  # type: ignore[attr-defined]
    replies = b"".join(scp.send_message(3, store_rsp(n)) for n in reversed(range(1, 51)))
    assert len(feed(scu, replies)) == 50 and scu.outstanding == frozenset()


def test_the_window_bounds_our_requests() -> None:
    policy = ul.AcceptorPolicy(contexts=POLICY.contexts, async_window=ul.AsyncWindow(max_invoked=4, max_performed=2))
    scu, scp = established(policy=policy, window=ul.AsyncWindow(max_invoked=2, max_performed=0))
    assert (scu.max_invoked, scu.max_performed, scp.max_invoked, scp.max_performed) == (2, 4, 4, 2)
    feed(scp, scu.send_message(3, store_rq(1), b"a") + scu.send_message(3, store_rq(2), b"b"))
    assert not scu.can_invoke
    with pytest.raises(ul.LocalProtocolError):
        scu.send_message(3, store_rq(3), b"c")
    feed(scu, scp.send_message(3, store_rsp(1)))
    assert scu.can_invoke and scu.outstanding == {2}


def test_without_a_window_one_operation_at_a_time() -> None:
    scu, scp = established()
    assert (scu.max_invoked, scp.max_performed) == (1, 1)
    feed(scp, scu.send_message(1, ul.CEchoRQ(message_id=1)))
    with pytest.raises(ul.LocalProtocolError):
        scu.send_message(1, ul.CEchoRQ(message_id=2))


def test_a_peer_beyond_the_window_is_aborted() -> None:
    scu, scp = established()
    with pytest.raises(ul.ProtocolViolation) as caught:
        feed(scp, echo_rq_pdu(1) + echo_rq_pdu(2))
    assert abort_fields(caught.value.abort_pdu) == (2, ul.REASON_UNEXPECTED_PDU) and scp.state is S.STA13


def test_commitment_both_ways_on_one_association() -> None:
    """N-ACTION from the requestor, then the acceptor invokes N-EVENT-REPORT on the same
    association (role selection made the requestor SCP too)."""
    roles = (ul.RoleSelection(sop_class_uid=COMMITMENT, scu_role=True, scp_role=True),)
    policy = ul.AcceptorPolicy(contexts=POLICY.contexts, roles={COMMITMENT: (True, True)})
    scu, scp = established(policy=policy, roles=roles)
    action = ul.NActionRQ(message_id=1, requested_sop_class_uid=COMMITMENT, requested_sop_instance_uid=COMMITMENT_INSTANCE,
                          action_type_id=1)
    got = feed(scp, scu.send_message(5, action, b"\x08\x00\x50\x11"))
    assert got == [ul.Command(context_id=5, message=action), ul.DatasetFragment(context_id=5, data=b"\x08\x00\x50\x11", last=True)]
    reply = ul.NActionRSP(message_id_being_responded_to=1, status=0, affected_sop_class_uid=COMMITMENT,
                          affected_sop_instance_uid=COMMITMENT_INSTANCE, action_type_id=1)
    report = ul.NEventReportRQ(message_id=1, affected_sop_class_uid=COMMITMENT,
                               affected_sop_instance_uid=COMMITMENT_INSTANCE, event_type_id=1)
    got = feed(scu, scp.send_message(5, reply) + scp.send_message(5, report, b"report"))
    assert [type(e) for e in got] == [ul.Command, ul.Command, ul.DatasetFragment]
    answer = ul.NEventReportRSP(message_id_being_responded_to=1, status=0, affected_sop_class_uid=COMMITMENT,
                                affected_sop_instance_uid=COMMITMENT_INSTANCE, event_type_id=1)
    assert feed(scp, scu.send_message(5, answer)) == [ul.Command(context_id=5, message=answer)]
    assert scu.outstanding == scp.outstanding == frozenset()


@pytest.mark.parametrize("first", [ul.Role.REQUESTOR, ul.Role.ACCEPTOR])
def test_release_collision(first: ul.Role) -> None:
    """Both send A-RELEASE-RQ; PS3.8 9.2.4 orders the replies: the requestor's first."""
    scu, scp = established()
    rq_from_scu, rq_from_scp = scu.send(ul.ReleaseRequest()), scp.send(ul.ReleaseRequest())
    order = [(scu, rq_from_scp), (scp, rq_from_scu)]
    for engine, data in order if first is ul.Role.REQUESTOR else reversed(order):
        assert feed(engine, data) == [ul.ReleaseRequest()]
    assert (scu.state, scp.state) == (S.STA9, S.STA10)
    with pytest.raises(ul.LocalProtocolError):  # the acceptor answers only after the requestor's reply
        scp.send(ul.ReleaseReply())
    assert feed(scp, scu.send(ul.ReleaseReply())) == [ul.ReleaseReply()]
    assert (scu.state, scp.state) == (S.STA11, S.STA12)
    assert feed(scu, scp.send(ul.ReleaseReply())) == [ul.ReleaseReply(), ul.ConnectionClosed()]
    assert (scu.state, scp.state) == (S.STA1, S.STA13) and scp.artim_running
    assert feed(scp, b"") == [ul.ConnectionClosed()]


def test_data_still_flows_while_a_release_is_pending() -> None:
    """AR-6 and AR-7: the acceptor answers an outstanding request after the release request."""
    scu, scp = established()
    feed(scp, scu.send_message(1, ul.CEchoRQ(message_id=4)) + scu.send(ul.ReleaseRequest()))
    assert scp.state is S.STA8 and scu.state is S.STA7
    got = feed(scu, scp.send_message(1, ul.CEchoRSP(message_id_being_responded_to=4, status=0)) + scp.send(ul.ReleaseReply()))
    assert [type(e) for e in got] == [ul.Command, ul.ReleaseReply, ul.ConnectionClosed]


def test_rejection() -> None:
    scu, scp = ul.Association(ul.Role.REQUESTOR), ul.Association(ul.Role.ACCEPTOR)
    feed(scp, scu.send(request()))
    reject = ul.AssociateReject(result=2, source=1, reason=7)
    assert feed(scu, scp.send(reject)) == [reject, ul.ConnectionClosed()]
    assert scp.state is S.STA13 and scp.artim_running


@pytest.mark.parametrize("who", ["requestor", "acceptor"])
def test_abort_either_way(who: str) -> None:
    scu, scp = established()
    me, peer = (scu, scp) if who == "requestor" else (scp, scu)
    data = me.send(ul.Abort(source=0, reason=0))
    assert me.state is S.STA13 and me.artim_running
    assert feed(peer, data) == [ul.Abort(source=0, reason=0), ul.ConnectionClosed()]
    assert feed(me, b"") == [ul.ConnectionClosed()]


def test_events_before_a_violation_are_delivered() -> None:
    scu, scp = established()
    scp.receive_data(scu.send_message(1, ul.CEchoRQ(message_id=1)) + b"\x09" + bytes(9))
    assert isinstance(scp.next_event(), ul.Command)
    with pytest.raises(ul.ProtocolViolation) as caught:
        scp.next_event()
    assert abort_fields(caught.value.abort_pdu) == (2, ul.REASON_UNRECOGNIZED_PDU)
    assert scp.state is S.STA13
    scp.receive_data(echo_rq_pdu(2))  # the stream has lost its PDU boundaries: nothing more is read
    assert scp.next_event() is ul.NEED_DATA and scp.state is S.STA13


def test_a_pdu_that_breaks_the_rules_reports_nothing() -> None:
    """Two PDVs in one P-DATA-TF, the second on a context never accepted: the first is not
    reported either, so nothing of the offending PDU reaches the shell after the error."""
    _, scp = established()
    command = ul.encode_command(ul.CEchoRQ(message_id=1))
    bad = _pdu.HEADER.pack(4, 2 * 6 + len(command) + 2) + _pdu.PDV_HEADER.pack(len(command) + 2, 1, 3) + command \
        + _pdu.PDV_HEADER.pack(4, 7, 3) + b"\x00\x00"
    scp.receive_data(bad[:-2])
    scp.receive_data(bad[-2:])
    with pytest.raises(ul.ProtocolViolation, match="context 7"):
        scp.next_event()
    assert scp.next_event() is ul.NEED_DATA


def test_an_overlong_pdu_is_refused_from_its_header() -> None:
    scu, scp = established(policy=ul.AcceptorPolicy(contexts=POLICY.contexts, max_pdu=1000))
    with pytest.raises(ul.ProtocolViolation) as caught:
        feed(scp, struct.pack(">BxI", 4, 1_000_000))  # only the header: no body buffered
    assert caught.value.reason == ul.REASON_INVALID_PARAMETER


def test_a_fixed_data_limit_replaces_the_announced_one() -> None:
    scu, scp = ul.Association(ul.Role.REQUESTOR), ul.Association(ul.Role.ACCEPTOR, data_limit=4000)
    (rq,) = feed(scp, scu.send(request()))
    feed(scu, scp.send(ul.negotiate(rq, ul.AcceptorPolicy(contexts=POLICY.contexts, max_pdu=1000))))  # type: ignore[arg-type]
    assert len(feed(scp, _pdu.encode_p_data(3, True, ul.encode_command(store_rq(1)), True)
                    + _pdu.encode_p_data(3, False, bytes(3990), True))) == 2
    with pytest.raises(ul.ProtocolViolation):
        feed(scp, struct.pack(">BxI", 4, 4001))


def test_an_overlong_associate_request_is_refused_from_its_header() -> None:
    scp = ul.Association(ul.Role.ACCEPTOR, pdu_limit=65536)
    with pytest.raises(ul.ProtocolViolation):
        feed(scp, struct.pack(">BxI", 1, 65537))


DIMSE_VIOLATIONS = {
    "dataset without a command": _pdu.encode_p_data(3, False, b"data", True),
    "command while a dataset is due": (_pdu.encode_p_data(3, True, ul.encode_command(store_rq(1)), True)
                                       + echo_rq_pdu(2)),
    "unaccepted context": echo_rq_pdu(1, context_id=7),
    "command changes context": (_pdu.encode_p_data(1, True, ul.encode_command(ul.CEchoRQ(message_id=1))[:10], False)
                                + _pdu.encode_p_data(3, True, b"rest", True)),
    "response to nothing": _pdu.encode_p_data(1, True, ul.encode_command(ul.CEchoRSP(message_id_being_responded_to=5, status=0)), True),
    "broken command set": _pdu.encode_p_data(1, True, b"\x00\x00\x01\x00\xff\xff\xff\xff", True),
}


@pytest.mark.parametrize("name", list(DIMSE_VIOLATIONS))
def test_dimse_violations(name: str) -> None:
    _, scp = established()
    with pytest.raises(ul.ProtocolViolation) as caught:
        feed(scp, DIMSE_VIOLATIONS[name])
    assert scp.state is S.STA13 and abort_fields(caught.value.abort_pdu)[0] == 2


@pytest.mark.parametrize("fragments", [1, 8])
def test_a_command_set_over_64_kib_is_a_violation(fragments: int) -> None:
    """In one PDV (taken as it is, without a buffer) or in several (gathered): refused either way."""
    _, scp = established(policy=ul.AcceptorPolicy(contexts=POLICY.contexts, max_pdu=0))
    command = bytes(70_000)
    step = -(-len(command) // fragments)
    pdus = b"".join(_pdu.encode_p_data(1, True, command[i : i + step], i + step >= len(command))
                    for i in range(0, len(command), step))
    with pytest.raises(ul.ProtocolViolation, match="command set longer than 64 KiB"):
        feed(scp, pdus)
    assert scp.state is S.STA13


def test_a_request_id_already_open_is_a_violation() -> None:
    policy = ul.AcceptorPolicy(contexts=POLICY.contexts, async_window=ul.AsyncWindow(max_invoked=0, max_performed=0))
    _, scp = established(policy=policy, window=ul.AsyncWindow(max_invoked=0, max_performed=0))
    with pytest.raises(ul.ProtocolViolation):
        feed(scp, echo_rq_pdu(1) + echo_rq_pdu(1))


LOCAL_MISUSE = {
    "dataset without a command": lambda scu: scu.send(ul.DatasetFragment(context_id=3, data=b"x", last=True)),
    "command before the dataset is done": lambda scu: (scu.send(ul.Command(context_id=3, message=store_rq(1))),
                                                       scu.send(ul.Command(context_id=1, message=ul.CEchoRQ(message_id=2)))),
    "unaccepted context": lambda scu: scu.send_message(9, ul.CEchoRQ(message_id=1)),
    "response to nothing": lambda scu: scu.send_message(1, ul.CEchoRSP(message_id_being_responded_to=1, status=0)),
    "second association request": lambda scu: scu.send(request()),
    "not an event": lambda scu: scu.send("hello"),
}


@pytest.mark.parametrize("name", list(LOCAL_MISUSE))
def test_local_misuse_is_refused(name: str) -> None:
    scu, _ = established()
    with pytest.raises(ul.LocalProtocolError):
        LOCAL_MISUSE[name](scu)
    assert scu.state is S.STA6


def test_the_engine_reports_closed_forever_after() -> None:
    scu, scp = established()
    feed(scp, scu.send(ul.Abort()))
    assert scp.state is S.STA1
    assert scp.next_event() == ul.ConnectionClosed() and scp.next_event() == ul.ConnectionClosed()


def test_buffered_counts_the_bytes_of_a_pdu_not_yet_whole() -> None:
    """What a shell looks at before hurrying the rest of a response with an immediate ACK."""
    _, scp = established()
    pdu = echo_rq_pdu()
    assert feed(scp, pdu[:4]) == [] and scp.buffered == 4
    events = feed(scp, pdu[4:])
    assert [type(e).__name__ for e in events] == ["Command"] and scp.buffered == 0
