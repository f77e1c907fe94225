"""``nodectl echoscu`` and ``nodectl echo`` against real peers on 127.0.0.1, next to DCMTK.

Every network case runs our echoscu and DCMTK's ``/usr/bin/echoscu`` (Debian 3.6.7) on the
same peer and asserts the same exit code, and where DCMTK's wording is reproduced, the same
log lines. Peers: DCMTK storescp, ``python -m pynetdicom echoscp`` (children stopped by PID)
and small in-process pynetdicom SCPs for behaviours no tool offers. The conformance test
numbers refer to ``spec/echoscu.md``.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from node.tools import echoscu
from tests.support import free_port
from tests.tools.conftest import VERIFICATION, needs_dcmtk, run_dcmtk, run_ours, scp, wait_for

pytestmark = needs_dcmtk

TS4 = ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.98"]


def both(*args: str) -> tuple[Any, Any]:
    """Run ours and DCMTK's echoscu with the same arguments; assert the same exit code."""
    ours, theirs = run_ours(*args), run_dcmtk(*args)
    assert ours.returncode == theirs.returncode, (ours.stderr, theirs.stderr)
    return ours, theirs


# --------------------------------------------------------------------------- command line (1-5)


def test_no_arguments_prints_usage_and_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    """Conformance 1: usage on stdout, exit 0, no connection attempted."""
    assert echoscu.main([]) == 0
    out = capsys.readouterr().out
    assert "usage: echoscu [options] peer port" in out
    assert "-pts  --propose-ts         [n]umber: integer (1..53)" in out
    assert run_dcmtk().returncode == 0


@pytest.mark.parametrize(
    ("argv", "error"),
    [
        (["127.0.0.1"], "Missing parameter port"),  # 2
        (["127.0.0.1", "0"], "Invalid parameter value 0 (underflow)"),  # 3
        (["127.0.0.1", "65536"], "Invalid parameter value 65536 (overflow)"),
        (["-pdu", "1000", "127.0.0.1", "11112"], "Invalid value for option --max-pdu (underflow: 1000)"),  # 4
        (["--bogus", "127.0.0.1", "11112"], "Unknown option --bogus"),  # 5
    ],
)
def test_syntax_errors_exit_1_like_dcmtk(argv: list[str], error: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Conformance 2-5: DCMTK's error text on stderr, exit 1, before any network traffic."""
    assert echoscu.main(argv) == 1
    err = capsys.readouterr().err
    assert err.endswith(f"error: {error}\n")
    theirs = run_dcmtk(*argv)
    assert theirs.returncode == 1 and theirs.stderr.endswith(f"error: {error}\n")


# --------------------------------------------------------------------------- real peers (6, 7)


def test_echo_dcmtk_storescp_verbose(dcmtk_storescp: int) -> None:
    """Conformance 6: exit 0 and, line for line, DCMTK's -v log."""
    ours, theirs = both("-v", "127.0.0.1", str(dcmtk_storescp))
    assert ours.returncode == 0
    assert ours.stderr.splitlines() == [
        "I: Requesting Association",
        "I: Association Accepted (Max Send PDV: 16372)",
        "I: Sending Echo Request (MsgID 1)",
        "I: Received Echo Response (Success)",
        "I: Releasing Association",
    ]
    assert ours.stderr == theirs.stderr


def test_echo_pynetdicom_echoscp(pynetdicom_echoscp: int) -> None:
    """The pynetdicom echoscp app answers both of us; quiet by default like DCMTK."""
    ours, theirs = both("127.0.0.1", str(pynetdicom_echoscp))
    assert ours.returncode == 0 and ours.stderr == "" and theirs.stderr == ""
    ours, theirs = both("-v", "127.0.0.1", str(pynetdicom_echoscp))
    assert ours.stderr == theirs.stderr


def test_nothing_listening_exits_1() -> None:
    """Conformance 7: connection refused is an association failure, exit 1, same text."""
    ours, theirs = both("127.0.0.1", str(free_port()))
    assert ours.returncode == 1
    assert ours.stderr == theirs.stderr == (
        "F: Association Request Failed: 0006:031c TCP Initialization Error: Connection refused\n")


# --------------------------------------------------------------------------- in-process peers (8-17)


def test_rejected_called_ae_title() -> None:
    """Conformance 8: a peer that only answers to ONLY rejects -aec OTHER; exit 1."""
    with scp(ae_title="ONLY", require_called=True) as (port, _):
        ours, theirs = both("-aec", "OTHER", "127.0.0.1", str(port))
        assert both("-aec", "ONLY", "127.0.0.1", str(port))[0].returncode == 0
    assert ours.returncode == 1
    assert ours.stderr == theirs.stderr == (
        "F: Association Rejected:\nF: Result: Rejected Permanent, Source: Service User\n"
        "F: Reason: Called AE Title Not Recognized\n")


def test_no_acceptable_presentation_context() -> None:
    """Conformance 9: a storage-only SCP accepts no Verification context; exit 1."""
    with scp(verification=False) as (port, _):
        ours, theirs = both("127.0.0.1", str(port))
    assert ours.returncode == 1
    assert ours.stderr == theirs.stderr == "F: No Acceptable Presentation Contexts\n"


def test_non_success_status_is_printed_not_an_error() -> None:
    """Conformance 10: status 0x0110 is shown, exit 0."""
    with scp(echo=lambda event: 0x0110) as (port, _):
        ours, theirs = both("-v", "127.0.0.1", str(port))
    assert ours.returncode == 0
    assert "I: Received Echo Response (Unknown Status: 0x110)" in ours.stderr.splitlines()
    assert ours.stderr == theirs.stderr


def test_peer_abort_after_request_exits_0() -> None:
    """Conformance 11: the peer aborts instead of answering: logged, exit 0."""

    def abort(event: Any) -> int:
        event.assoc.abort()
        return 0

    with scp(echo=abort) as (port, _):
        quiet = both("127.0.0.1", str(port))
        ours, theirs = both("-v", "127.0.0.1", str(port))
    assert ours.returncode == 0
    assert "I: Peer Aborted Association" in ours.stderr.splitlines()
    assert ours.stderr == theirs.stderr
    # DCMTK prints the E: line at its default level: a script grepping for it finds ours too.
    assert quiet[0].stderr == quiet[1].stderr == "E: Echo Failed: " + echoscu.COND_PEER_ABORTED + "\n"


def test_dimse_timeout_aborts_and_exits_70() -> None:
    """Conformance 12: a peer that never answers, -td 2: abort after about 2 s, exit 70."""
    release = threading.Event()

    def never(event: Any) -> int:
        release.wait(8)  # bounded: set when the test is done
        return 0

    with scp(echo=never) as (port, seen):
        try:
            started = time.monotonic()
            ours = run_ours("-td", "2", "127.0.0.1", str(port))
            elapsed = time.monotonic() - started
            theirs = run_dcmtk("-td", "2", "127.0.0.1", str(port))
        finally:
            release.set()
        assert wait_for(lambda: seen.endings.count("aborted") >= 1)
    assert ours.returncode == theirs.returncode == 70, (ours.stderr, theirs.stderr)
    assert 1.5 < elapsed < 8
    assert ("E: Echo SCU Failed: " + echoscu.COND_DIMSE_TIMEOUT) in ours.stderr.splitlines()
    assert ours.stderr == theirs.stderr


def test_repeat_sends_message_ids_on_one_association() -> None:
    """Conformance 13: --repeat 3 gives MsgIDs 1, 2, 3 on a single association."""
    with scp() as (port, seen):
        ours, theirs = both("--repeat", "3", "-v", "127.0.0.1", str(port))
        assert wait_for(lambda: len(seen.endings) == 2)
    assert ours.returncode == 0
    assert seen.message_ids == [1, 2, 3, 1, 2, 3] and len(seen.calling) == 2
    assert [line for line in ours.stderr.splitlines() if "MsgID" in line] == [
        f"I: Sending Echo Request (MsgID {n})" for n in (1, 2, 3)]
    assert ours.stderr == theirs.stderr


def test_abort_instead_of_release() -> None:
    """Conformance 14: --abort ends with A-ABORT: the peer sees an abort, exit 0."""
    with scp() as (port, seen):
        both("--abort", "127.0.0.1", str(port))
        assert wait_for(lambda: len(seen.endings) == 2)
        both("127.0.0.1", str(port))
        assert wait_for(lambda: len(seen.endings) == 4)
    assert seen.endings == ["aborted", "aborted", "released", "released"]


def test_proposed_contexts_and_transfer_syntaxes() -> None:
    """Conformance 15: -ppc 3 -pts 4 proposes contexts 1, 3, 5 with the code's first four syntaxes."""
    with scp() as (port, seen):
        ours, theirs = both("-ppc", "3", "-pts", "4", "-d", "127.0.0.1", str(port))
    expected = [(cid, VERIFICATION, TS4) for cid in (1, 3, 5)]
    assert seen.contexts[0] == expected
    assert "D:       1.2.840.10008.1.2.1.98" in ours.stderr.splitlines()
    # DCMTK 3.6.7 predates entry 4 (.1.98): its fourth proposal is JPEG baseline (.4.50)
    dcmtk_367 = [(cid, VERIFICATION, TS4[:3] + ["1.2.840.10008.1.2.4.50"]) for cid in (1, 3, 5)]
    assert seen.contexts[1] == dcmtk_367


def test_all_53_transfer_syntaxes_are_proposed() -> None:
    """-pts 53: every entry of the code's list reaches the wire (pydicom knows them all)."""
    with scp() as (port, seen):
        assert run_ours("-pts", "53", "127.0.0.1", str(port)).returncode == 0
    assert seen.contexts[0][0][2] == list(echoscu.TRANSFER_SYNTAXES)


def test_rightmost_option_wins() -> None:
    """Conformance 16: -aet A -aet B puts B on the wire."""
    with scp() as (port, seen):
        both("-aet", "A", "-aet", "B", "127.0.0.1", str(port))
    assert seen.calling == ["B", "B"]


def test_command_file(tmp_path: Path) -> None:
    """Conformance 17: @args.txt is replaced by its words before parsing."""
    with scp() as (port, seen):
        args = tmp_path / "args.txt"
        args.write_text(f"-aet CMDFILE\n  127.0.0.1 {port}\n")
        ours, _ = both(f"@{args}")
    assert ours.returncode == 0
    assert seen.calling == ["CMDFILE", "CMDFILE"]


def test_echo_verb_is_verbose_with_default_port(pynetdicom_echoscp: int) -> None:
    """``nodectl echo``: same engine, info lines by default, port optional (104) in --help."""
    done = run_ours("127.0.0.1", str(pynetdicom_echoscp), tool="echo")
    assert done.returncode == 0
    assert "I: Received Echo Response (Success)" in done.stderr.splitlines()
    assert "(default: 104)" in run_ours("-h", tool="echo").stdout


# --------------------------------------------------------------------------- TLS


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A throwaway CA, a server and a client certificate, and a second, unrelated CA."""
    import trustme

    d = tmp_path_factory.mktemp("pki")
    ca, other = trustme.CA(), trustme.CA()
    server, client = ca.issue_cert("127.0.0.1"), ca.issue_cert("client.example")
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    other.cert_pem.write_to_path(str(d / "other.pem"))
    client.private_key_pem.write_to_path(str(d / "client.key"))
    client.cert_chain_pems[0].write_to_path(str(d / "client.pem"))
    return {"dir": d, "ca": ca, "server": server}


def server_context(pki: dict[str, Any], *, require_client: bool) -> Any:
    """The SCP's TLS context; with ``require_client`` it checks our certificate too."""
    import ssl

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    pki["server"].configure_cert(ctx)
    if require_client:
        pki["ca"].configure_trust(ctx)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def test_tls_anonymous_and_authenticated(pki: dict[str, Any]) -> None:
    """+tla verifies the server against +cf; +tls key cert also authenticates us."""
    d = pki["dir"]
    with scp(ssl_context=server_context(pki, require_client=False)) as (port, _):
        ours, _ = both("+tla", "+cf", str(d / "ca.pem"), "127.0.0.1", str(port))
        assert ours.returncode == 0, ours.stderr
    with scp(ssl_context=server_context(pki, require_client=True)) as (port, seen):
        ours, _ = both("+tls", str(d / "client.key"), str(d / "client.pem"), "+cf", str(d / "ca.pem"),
                       "-v", "127.0.0.1", str(port))
        assert ours.returncode == 0, ours.stderr
        assert len(seen.calling) == 2


def test_tls_wrong_ca_is_refused(pki: dict[str, Any]) -> None:
    """A server certificate from another CA fails the handshake: exit 1, like DCMTK."""
    d = pki["dir"]
    with scp(ssl_context=server_context(pki, require_client=False)) as (port, seen):
        ours, _ = both("+tla", "+cf", str(d / "other.pem"), "127.0.0.1", str(port))
        assert run_ours("+tla", "-ic", "127.0.0.1", str(port)).returncode == 0  # -ic: not checked
    assert ours.returncode == 1
    assert "Association Request Failed: 0006:031c" in ours.stderr
    assert "CERTIFICATE_VERIFY_FAILED" in ours.stderr


def test_offline_certificate_checks(pki: dict[str, Any]) -> None:
    """+vc and +rc print a verdict and exit 0 or 22, as DCMTK does."""
    d = pki["dir"]
    ca, client, other = str(d / "ca.pem"), str(d / "client.pem"), str(d / "other.pem")
    cases = {
        ("+tla", "+cf", ca, "+vc", client): 0,
        ("+tla", "+cf", other, "+vc", client): 22,
        ("+vc", client): 22,  # no TLS layer, no trust store
        ("+rc", ca): 0,
        ("+rc", client): 22,
    }
    for argv, code in cases.items():
        ours, theirs = both(*argv)
        assert ours.returncode == code, (argv, ours.stdout, ours.stderr)
        assert ours.stdout == theirs.stdout


def test_unsupported_log_config_exits_with_message(tmp_path: Path) -> None:
    """What cannot be honoured says so and exits non-zero instead of being ignored."""
    cfg = tmp_path / "logger.cfg"
    cfg.write_text("log4cplus.rootLogger = DEBUG, file\nlog4cplus.appender.file = log4cplus::FileAppender\n")
    done = run_ours("-lc", str(cfg), "127.0.0.1", "104")
    assert done.returncode == 1
    assert "not supported by nodectl" in done.stderr


def _not_debug(text: str) -> list[str]:
    return [line for line in text.splitlines() if not line.startswith("D: ")]


@pytest.mark.parametrize("case", ["refused", "rejected", "status", "abort", "silent"])
def test_every_failure_path_prints_dcmtks_lines_and_one_dump_per_pdu(case: str) -> None:
    """With -d: the I:/E:/F: lines are DCMTK's, and each PDU is dumped once, in DCMTK's
    layout (BEGIN A-ASSOCIATE-RQ, BEGIN A-ASSOCIATE-AC), not pynetdicom's as well."""

    def abort(event: Any) -> int:
        event.assoc.abort()
        return 0

    with contextlib.ExitStack() as stack:
        if case == "refused":
            args = ["127.0.0.1", str(free_port())]
        elif case == "silent":  # accepts the connection, never answers: the ACSE timeout
            silent = stack.enter_context(socket.create_server(("127.0.0.1", 0)))
            args = ["-ta", "2", "127.0.0.1", str(silent.getsockname()[1])]
        else:
            options = {"rejected": {"ae_title": "ONLY", "require_called": True}, "status": {"echo": lambda e: 0x0110},
                       "abort": {"echo": abort}}[case]
            port, _ = stack.enter_context(scp(**options))
            args = ["127.0.0.1", str(port)]
        if case == "silent":
            assert both("-v", *args)[0].stderr == both("-v", *args)[1].stderr
        ours, theirs = both("-d", *args)
    assert _not_debug(ours.stdout + ours.stderr) == _not_debug(theirs.stdout + theirs.stderr)
    text = ours.stdout + ours.stderr
    assert text.count("BEGIN A-ASSOCIATE-RQ") == 1
    assert text.count("BEGIN A-ASSOCIATE-AC") == (1 if case in ("status", "abort") else 0)
    assert "OUTGOING A-ASSOCIATE-RQ PDU" not in text and "INCOMING" not in text


def test_peer_release_instead_of_a_response_exits_70_like_dcmtk() -> None:
    """A peer that answers the C-ECHO-RQ with an A-RELEASE-RQ (the engine as that peer):
    ours answers the release and exits 70 having read no response, as DCMTK does."""
    from node import ul
    from tests.node.ul.blocking import pump

    policy = ul.AcceptorPolicy(contexts=ul.AcceptEverything())

    def serve(listener: socket.socket) -> None:
        for _ in range(2):
            conn, _ = listener.accept()
            with conn:
                engine = ul.Association(ul.Role.ACCEPTOR)

                def handle(event: ul.Event, engine: ul.Association = engine) -> bytes | None:
                    if isinstance(event, ul.AssociateRequest):
                        return engine.send(ul.negotiate(event, policy))
                    if isinstance(event, ul.Command):
                        return engine.send(ul.ReleaseRequest())
                    if isinstance(event, ul.ReleaseRequest):  # a collision: DCMTK may release too
                        return engine.send(ul.ReleaseReply())
                    return None

                try:
                    pump(conn, engine, handle)
                except OSError:
                    pass  # DCMTK aborts and closes: nothing more to do

    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(20)
        thread = threading.Thread(target=serve, args=(listener,), daemon=True)
        thread.start()
        ours, theirs = both("127.0.0.1", str(listener.getsockname()[1]))
        thread.join(timeout=20)
    assert ours.returncode == theirs.returncode == 70, (ours.stderr, theirs.stderr)
