"""``nodectl echoscp`` against DCMTK's echoscu and pynetdicom: pynetdicom echoscp's behaviour."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from tests.nodes import RunningNode
from tests.support import NODECTL, free_port, have, port_free, wait_until

pytestmark = pytest.mark.skipif(not have("/usr/bin/echoscu"), reason="DCMTK (Debian package dcmtk) is not installed")

DCMTK_ECHOSCU = "/usr/bin/echoscu"
VERIFICATION = "1.2.840.10008.1.1"


def echoscp(tmp: Path, *options: str) -> RunningNode:
    port = free_port()
    return RunningNode(["echoscp", *options, "--workers", "1", str(port)], cwd=tmp, port=port).wait_ready()


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*NODECTL, "echoscp", *args], capture_output=True, text=True, timeout=30)


def accepted_syntax(port: int) -> str:
    """The transfer syntax DCMTK's echoscu reports as accepted when proposing ILE, ELE, EBE."""
    result = subprocess.run([DCMTK_ECHOSCU, "-d", "-pts", "3", "127.0.0.1", str(port)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    text = result.stdout + result.stderr
    match = re.search(r"Context ID:\s+1 \(Accepted\).*?Accepted Transfer Syntax: =?(\S+)", text, re.S)
    assert match, text
    names = {"LittleEndianImplicit": ImplicitVRLittleEndian, "LittleEndianExplicit": ExplicitVRLittleEndian, "BigEndianExplicit": ExplicitVRBigEndian}
    return names.get(match.group(1), match.group(1))


def test_missing_port_is_an_argparse_error() -> None:
    result = run_cli()
    assert result.returncode == 2
    assert "the following arguments are required: port" in result.stderr


def test_version_needs_the_port_and_prints_the_app_version() -> None:
    assert run_cli("--version").returncode == 2
    result = run_cli("--version", "11112")
    assert (result.returncode, result.stdout.strip()) == (0, "echoscp.py v0.7.0")


@pytest.mark.parametrize("args", [("-q", "-v", "11112"), ("-ll", "warning", "11112"), ("-pdu", "big", "11112"), ("-xe", "-xb", "11112")])
def test_option_errors_exit_2(args: tuple[str, ...]) -> None:
    assert run_cli(*args).returncode == 2


@pytest.fixture(scope="module")
def default_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningNode]:
    node = echoscp(tmp_path_factory.mktemp("echo"))
    try:
        yield node
    finally:
        node.stop()


def test_dcmtk_echoscu_succeeds_whatever_the_ae_titles(default_node: RunningNode) -> None:
    for extra in ([], ["-aec", "SOMETHING-ELSE", "-aet", "ANYONE"]):
        result = subprocess.run([DCMTK_ECHOSCU, *extra, "127.0.0.1", str(default_node.port)], capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, result.stderr


def test_default_server_accepts_implicit_first(default_node: RunningNode) -> None:
    assert accepted_syntax(default_node.port) == ImplicitVRLittleEndian


def test_repeat_gives_five_successes_on_one_association(default_node: RunningNode) -> None:
    result = subprocess.run([DCMTK_ECHOSCU, "-v", "--repeat", "5", "127.0.0.1", str(default_node.port)], capture_output=True, text=True, timeout=30)
    text = result.stdout + result.stderr
    assert result.returncode == 0
    assert text.count("Received Echo Response (Success)") == 5
    assert text.count("Requesting Association") == 1


def test_storage_contexts_are_refused_with_reason_3(default_node: RunningNode) -> None:
    from pynetdicom import AE

    ae = AE()
    ae.add_requested_context("1.2.840.10008.5.1.4.1.1.2", ExplicitVRLittleEndian)
    ae.add_requested_context(VERIFICATION, ImplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", default_node.port)
    try:
        assert [cx.abstract_syntax for cx in assoc.accepted_contexts] == [VERIFICATION]
        assert assoc.rejected_contexts[0].result == 0x03
    finally:
        assoc.release()


def test_silent_at_the_default_level(default_node: RunningNode) -> None:
    subprocess.run([DCMTK_ECHOSCU, "127.0.0.1", str(default_node.port)], capture_output=True, timeout=30)
    time.sleep(0.5)
    assert default_node.log().strip() == ""


def test_the_eleventh_association_is_rejected_transient_reason_2(default_node: RunningNode) -> None:
    """Ten held open by pynetdicom (its echoscp's default maximum), the eleventh asked by DCMTK.

    Not by pynetdicom: its requestor checks that its socket is still connected only after it
    sent the A-ASSOCIATE-RQ, so an A-ASSOCIATE-RJ that comes back (and closes the connection)
    before that thread runs again is reported as an abort (seen under CPU load, pynetdicom 3.0.4).
    """
    from pynetdicom import AE

    ae = AE()
    ae.add_requested_context(VERIFICATION, ImplicitVRLittleEndian)
    ae.acse_timeout = 10
    open_ones = []
    try:
        for _ in range(10):
            assoc = ae.associate("127.0.0.1", default_node.port)
            assert assoc.is_established
            open_ones.append(assoc)
        eleventh = subprocess.run([DCMTK_ECHOSCU, "127.0.0.1", str(default_node.port)], capture_output=True, text=True, timeout=30)
        assert eleventh.returncode == 1, eleventh.stdout + eleventh.stderr
        assert "Association Rejected" in eleventh.stdout + eleventh.stderr
        assert "Result: Rejected Transient, Source: Service Provider (Presentation Related)" in eleventh.stdout + eleventh.stderr
        assert "Reason: Local Limit Exceeded" in eleventh.stdout + eleventh.stderr
    finally:
        for assoc in open_ones:
            assoc.release()


@pytest.mark.parametrize(("option", "expected"), [("-xe", ExplicitVRLittleEndian), ("-xb", ExplicitVRBigEndian), ("-x=", ExplicitVRLittleEndian)])
def test_preference_options_change_the_accepted_syntax(tmp_path: Path, option: str, expected: str) -> None:
    node = echoscp(tmp_path, option)
    try:
        assert accepted_syntax(node.port) == expected
    finally:
        node.stop()


def test_implicit_only_refuses_explicit_with_reason_4(tmp_path: Path) -> None:
    from pynetdicom import AE

    node = echoscp(tmp_path, "-xi")
    try:
        ae = AE()
        ae.add_requested_context(VERIFICATION, ExplicitVRLittleEndian)
        assoc = ae.associate("127.0.0.1", node.port)
        assert not assoc.is_established or not assoc.accepted_contexts
        assert assoc.rejected_contexts and assoc.rejected_contexts[0].result == 0x04
        if assoc.is_established:
            assoc.release()
    finally:
        node.stop()


def test_port_in_use_exits_1(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("0.0.0.0", 0))
        busy.listen(1)
        result = run_cli(str(busy.getsockname()[1]))
    assert result.returncode == 1


def test_sigint_stops_cleanly_with_0_and_frees_the_port(tmp_path: Path) -> None:
    node = echoscp(tmp_path, "-ba", "127.0.0.1")
    started = time.monotonic()
    assert node.stop(signal.SIGINT) == 0
    assert node.leftover == []
    assert time.monotonic() - started < 15
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", node.port))


def _echo_with_pynetdicom(port: int) -> None:
    from pynetdicom import AE

    ae = AE()
    ae.add_requested_context(VERIFICATION, ImplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port)
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0x0000
    assoc.release()


def test_sigterm_kills_it_by_the_signal_as_the_app_dies(tmp_path: Path) -> None:
    node = echoscp(tmp_path, "-ba", "127.0.0.1")
    assert node.stop(signal.SIGTERM) == -signal.SIGTERM
    assert node.leftover == []


def _log_of_one_echo(tmp_path: Path, option: str) -> str:
    node = echoscp(tmp_path, option)
    try:
        _echo_with_pynetdicom(node.port)
        wait_until(lambda: "Association Released" in node.log(), timeout=10, what="the release in the log")
    finally:
        node.stop(signal.SIGINT)
    return node.log()


def test_verbose_logs_the_apps_association_lines_not_the_actors(tmp_path: Path) -> None:
    lines = _log_of_one_echo(tmp_path, "-v").splitlines()
    assert [line for line in lines if line.startswith("I: ")] == [
        "I: Accepting Association", "I: Received Echo Request (MsgID 1)", "I: Association Released"], lines


def test_debug_logs_pynetdicoms_pdu_dumps(tmp_path: Path) -> None:
    log = _log_of_one_echo(tmp_path, "-d")
    assert "Accept Parameters" in log
    assert "pydicom.read_dataset()" in log


def test_sigkill_of_nodectl_takes_the_whole_node_down_and_frees_the_port(tmp_path: Path) -> None:
    node = echoscp(tmp_path, "-ba", "127.0.0.1")
    _echo_with_pynetdicom(node.port)
    pids = node.tree_pids()
    assert len(pids) >= 4  # nodectl, supervisord, a worker, the listener (nothing to write or track)
    assert node.stop(signal.SIGKILL) == -signal.SIGKILL
    assert node.leftover == [], "processes outlived a SIGKILLed nodectl"
    # The kernel closes a killed process's sockets as it reaps it; the next pynetdicom test
    # starts its app 0.5 s later at the earliest, so that is the budget.
    try:
        wait_until(lambda: port_free(node.port), 0.5, f"port {node.port} free")
    except TimeoutError:
        holders = subprocess.run(["ss", "-Htanp", f"sport = :{node.port}"], capture_output=True, text=True).stdout
        raise AssertionError(f"port {node.port} still bound after the node died:\n{holders}") from None

