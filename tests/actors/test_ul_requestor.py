"""The requestor shell against real peers on loopback: DCMTK's storescp (plain, TLS, IPv6,
refusing), the test acceptor for an N-ACTION answered by an N-EVENT-REPORT on the same
association, and a listener that never answers for the ACSE timeout."""

from __future__ import annotations

import socket
import ssl
import threading
from pathlib import Path

import pytest
from pydicom import dcmread

from actors import ul_requestor as rq
from node import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME, ul
from tests.node.ul.blocking import Acceptor, Served, _Handler, pump
from tests.node.ul.helpers import COMMITMENT, COMMITMENT_INSTANCE, CT, EXPLICIT, IMPLICIT
from tests.node.ul.test_interop import files, needs_dcmtk, start_peer
from tests.support import dataset_bytes, stop_process

TIMEOUTS = rq.Timeouts(connect=10, acse=10, dimse=10)


def contexts(*abstract: str) -> list[ul.ProposedContext]:
    return [ul.ProposedContext(context_id=2 * i + 1, abstract_syntax=a, transfer_syntaxes=(EXPLICIT, IMPLICIT))
            for i, a in enumerate(abstract)]


def echo(assoc: rq.Requestor) -> int:
    cx = assoc.context_for(ul.VERIFICATION)
    assert cx is not None
    ident = assoc.next_message_id()
    assoc.send(cx.context_id, ul.CEchoRQ(message_id=ident))
    return assoc.wait_response(ident).message.status  # type: ignore[union-attr]


@needs_dcmtk
def test_echo_and_streamed_stores_into_dcmtk_storescp(tmp_path: Path) -> None:
    """Files streamed in 1 KiB reads under a 4 KiB peer PDU: storescp writes them whole."""
    out = tmp_path / "out"
    out.mkdir()
    paths = files(tmp_path, 2, pixels=128)
    proc, port = start_peer(lambda p: ["storescp", "-od", str(out), "-pm", "+xa", "-pdu", "4096", str(p)], tmp_path / "scp.log")
    try:
        assoc = rq.associate("127.0.0.1", port, rq.request("STORESCP", "REQ", contexts(ul.VERIFICATION, CT)), timeouts=TIMEOUTS)
        assert assoc.engine.peer_max_pdu == 4096
        assert echo(assoc) == 0
        for path in paths:
            ds = dcmread(path, stop_before_pixels=True)
            cx = assoc.context_for(CT, EXPLICIT)
            assert cx is not None
            ident = assoc.next_message_id()
            with open(path, "rb") as fh:
                fh.seek(path.stat().st_size - len(dataset_bytes(path)))  # past preamble and file meta
                assoc.send_stream(cx.context_id, ul.CStoreRQ(message_id=ident, affected_sop_class_uid=CT,
                                                             affected_sop_instance_uid=ds.SOPInstanceUID), fh, chunk=1024)
            assert assoc.wait_response(ident).message.status == 0  # type: ignore[union-attr]
        assoc.release()
    finally:
        stop_process(proc)
    assert sorted(dcmread(p).SOPInstanceUID for p in out.iterdir()) == sorted(dcmread(p).SOPInstanceUID for p in paths)


@needs_dcmtk
def test_refusal_by_dcmtk_storescp(tmp_path: Path) -> None:
    proc, port = start_peer(lambda p: ["storescp", "--refuse", str(p)], tmp_path / "scp.log")
    try:
        with pytest.raises(rq.AssociationError) as caught:
            rq.associate("127.0.0.1", port, rq.request("ANY", "REQ", contexts(ul.VERIFICATION)), timeouts=TIMEOUTS)
    finally:
        stop_process(proc)
    assert caught.value.kind == "rejected" and caught.value.reject is not None
    assert caught.value.reject.result == 1


@pytest.mark.skipif(not socket.has_ipv6, reason="no IPv6")
def test_echo_over_ipv6() -> None:
    """The test acceptor's engine on ::1, served by its blocking pump in a thread."""
    served = Served()
    with socket.create_server(("::1", 0), family=socket.AF_INET6) as listener:
        port = listener.getsockname()[1]

        def serve_one() -> None:
            conn, _ = listener.accept()
            with conn:
                engine = ul.Association(ul.Role.ACCEPTOR)
                pump(conn, engine, _Handler(engine, ul.AcceptorPolicy(contexts=ul.AcceptEverything()), served))

        thread = threading.Thread(target=serve_one, daemon=True)
        thread.start()
        assoc = rq.associate("::1", port, rq.request("NODE", "REQ", contexts(ul.VERIFICATION)),
                             timeouts=TIMEOUTS, family=socket.AF_INET6)
        assert echo(assoc) == 0
        assoc.release()
        thread.join(timeout=10)
    assert served.echoes == 1 and not thread.is_alive()


def test_report_on_the_same_association_and_identity() -> None:
    """N-ACTION answered, then the peer's N-EVENT-REPORT-RQ arrives and is answered; our
    A-ASSOCIATE-RQ carries the node's implementation class UID and version name."""
    role = ul.RoleSelection(sop_class_uid=COMMITMENT, scu_role=True, scp_role=False)
    with Acceptor(ul.AcceptorPolicy(contexts=ul.AcceptEverything())) as scp:
        assoc = rq.associate("127.0.0.1", scp.port, rq.request("NODE", "REQ", contexts(COMMITMENT), roles=[role]),
                             timeouts=TIMEOUTS)
        cx = assoc.context_for(COMMITMENT)
        assert cx is not None
        ident = assoc.next_message_id()
        assoc.send(cx.context_id, ul.NActionRQ(message_id=ident, requested_sop_class_uid=COMMITMENT,
                                               requested_sop_instance_uid=COMMITMENT_INSTANCE, action_type_id=1), b"\x08\x00")
        assert assoc.wait_response(ident).message.status == 0  # type: ignore[union-attr]
        report = assoc.wait_request()
        assert isinstance(report.message, ul.NEventReportRQ) and report.dataset == b"\x08\x00"
        assoc.respond(report.context_id, ul.NEventReportRSP(message_id_being_responded_to=report.message.message_id, status=0,
                                                            affected_sop_class_uid=COMMITMENT,
                                                            affected_sop_instance_uid=COMMITMENT_INSTANCE, event_type_id=1))
        assoc.release()
        served = scp.join()
    assert served.reports_answered == 1
    sent = served.requests[0]
    assert (sent.implementation_class_uid, sent.implementation_version_name) == (IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME)
    assert sent.roles == (role,)


def test_a_silent_listener_is_an_acse_timeout() -> None:
    with socket.create_server(("127.0.0.1", 0)) as silent:
        port = silent.getsockname()[1]
        with pytest.raises(rq.AssociationError) as caught:
            rq.associate("127.0.0.1", port, rq.request("ANY", "REQ", contexts(ul.VERIFICATION)),
                         timeouts=rq.Timeouts(connect=5, acse=0.5, dimse=5))
    assert caught.value.kind == "acse-timeout"


def test_nothing_listening_is_a_connect_error() -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
    with pytest.raises(rq.AssociationError) as caught:
        rq.associate("127.0.0.1", port, rq.request("ANY", "REQ", contexts(ul.VERIFICATION)), timeouts=TIMEOUTS)
    assert caught.value.kind == "connect" and "refused" in str(caught.value)


@needs_dcmtk
def test_tls_into_dcmtk_storescp(tmp_path: Path) -> None:
    pytest.importorskip("trustme")
    from tests.pki import make_certs

    certs = make_certs(tmp_path)
    proc, port = start_peer(lambda p: ["/usr/bin/storescp", "+tls", str(certs.server_key), str(certs.server_crt),
                                       "+cf", str(certs.ca), "--require-peer-cert", str(p)], tmp_path / "scp.log")
    try:
        client = ssl.create_default_context(cafile=str(certs.ca))
        client.load_cert_chain(str(certs.client_crt), str(certs.client_key))
        assoc = rq.associate("127.0.0.1", port, rq.request("ANY", "REQ", contexts(ul.VERIFICATION)), timeouts=TIMEOUTS,
                             tls=client, server_hostname="localhost")
        assert echo(assoc) == 0
        assoc.release()
        stranger = ssl.create_default_context(cafile=str(certs.rogue_ca))
        with pytest.raises(rq.AssociationError) as caught:
            rq.associate("127.0.0.1", port, rq.request("ANY", "REQ", contexts(ul.VERIFICATION)), timeouts=TIMEOUTS,
                         tls=stranger, server_hostname="localhost")
    finally:
        stop_process(proc)
    assert caught.value.kind == "tls"


def test_window_user_identity_and_responses_matched_by_message_id() -> None:
    """Three C-STOREs in flight in a negotiated window of three, their responses taken in
    reverse order; the user identity proposal reaches the peer and its response comes back."""
    identity = ul.UserIdentity(identity_type=2, primary=b"user", secondary=b"secret", positive_response_requested=True)
    policy = ul.AcceptorPolicy(contexts=ul.AcceptEverything(), async_window=ul.AsyncWindow(max_invoked=4, max_performed=4),
                               identify=lambda proposal: b"ok" if proposal.primary == b"user" else None)
    with Acceptor(policy) as scp:
        rq_ = rq.request("NODE", "REQ", contexts(CT), user_identity=identity,
                         async_window=ul.AsyncWindow(max_invoked=3, max_performed=1))
        assoc = rq.associate("127.0.0.1", scp.port, rq_, timeouts=TIMEOUTS)
        assert assoc.accept is not None and assoc.accept.user_identity_response == b"ok"
        cx = assoc.context_for(CT)
        assert cx is not None
        sent = []
        while assoc.can_invoke:
            ident = assoc.next_message_id()
            assoc.send(cx.context_id, ul.CStoreRQ(message_id=ident, affected_sop_class_uid=CT,
                                                  affected_sop_instance_uid=f"1.2.3.{ident}"), b"\x08\x00\x05\x00\x00\x00\x00\x00")
            sent.append(ident)
        assert sent == [1, 2, 3]
        answers = {ident: assoc.wait_response(ident).message for ident in reversed(sent)}
        assoc.release()
        served = scp.join()
    assert all(message.status == 0 for message in answers.values())  # type: ignore[union-attr]
    assert sorted(served.stored) == ["1.2.3.1", "1.2.3.2", "1.2.3.3"]
    assert served.requests[0].user_identity == identity


def test_garbage_instead_of_an_answer_is_a_protocol_error_answered_by_an_abort() -> None:
    """A peer that answers the A-ASSOCIATE-RQ with an unknown PDU type: one AssociationError
    of kind "protocol", and the peer reads an A-ABORT (PDU type 0x07) before the close."""
    got: list[bytes] = []
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(10)

        def hostile() -> None:
            conn, _ = listener.accept()
            with conn:
                conn.settimeout(10)
                conn.recv(65536)
                conn.sendall(b"\x99\x00\x00\x00\x00\x02\xff\xff")
                while chunk := conn.recv(65536):
                    got.append(chunk)

        thread = threading.Thread(target=hostile, daemon=True)
        thread.start()
        with pytest.raises(rq.AssociationError) as caught:
            rq.associate("127.0.0.1", listener.getsockname()[1], rq.request("ANY", "REQ", contexts(ul.VERIFICATION)),
                         timeouts=TIMEOUTS)
        thread.join(timeout=10)
    assert caught.value.kind == "protocol"
    assert b"".join(got)[:1] == b"\x07"
