"""``nodectl send --async N``: several C-STOREs in flight on one association, when the peer agrees.

Three peers on 127.0.0.1: an acceptor on the core's engine that grants a window and holds
its responses until the window is full (then answers newest first, so only matching by
Message ID gets every file right); DCMTK storescp, which answers no window (one at a time);
and ``nodectl serve``, whatever it negotiates.
"""

from __future__ import annotations

import json
import re
import socket
import threading
from pathlib import Path

import pytest

from node import ul
from tests.node.ul.blocking import pump
from tests.nodes import serve
from tests.support import dataset_bytes, make_ct
from tests.tools.storepeers import dcmtk_available, dcmtk_storescp, run_nodectl

IDLE_S = 30.0


def make_files(directory: Path, count: int) -> dict[str, Path]:
    return {make_ct(directory / f"{n:03d}.dcm", pixels=8, InstanceNumber=n + 1).SOPInstanceUID: directory / f"{n:03d}.dcm"
            for n in range(count)}


def in_flight(stderr: str) -> int:
    """The window ``send -v`` reports for its association."""
    found = re.search(r"(\d+) C-STORE\(s\) in flight", stderr)
    assert found, stderr
    return int(found.group(1))


class HoldingAcceptor:
    """One association on the engine: grants ``window`` operations, refuses ``refuse`` (0xA700), answers only when as many
    C-STOREs as negotiated are outstanding (or every expected one has arrived), in reverse order."""

    def __init__(self, window: int, expected: int, refuse: str = "", host: str = "127.0.0.1") -> None:
        self.window, self.expected, self.refuse = window, expected, refuse
        self.request: ul.AssociateRequest | None = None
        self.stored: dict[str, bytes] = {}
        self.most_outstanding = 0
        self.errors: list[BaseException] = []
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._listener = socket.create_server((host, 0), family=family)
        self.port = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._outstanding: list[tuple[int, ul.CStoreRQ]] = []
        self._command: ul.CStoreRQ | None = None
        self._data = bytearray()

    def __enter__(self) -> HoldingAcceptor:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._listener.close()
        self._thread.join(timeout=IDLE_S)
        assert not self._thread.is_alive(), "the acceptor thread did not end"
        if self.errors:
            raise self.errors[0]

    def _run(self) -> None:
        try:
            self._listener.settimeout(IDLE_S)
            conn, _ = self._listener.accept()
            with conn:
                self.engine = ul.Association(ul.Role.ACCEPTOR)
                pump(conn, self.engine, self._handle)
        except BaseException as exc:  # reported in the test's thread by __exit__
            self.errors.append(exc)

    def _handle(self, event: ul.Event) -> bytes | None:
        if isinstance(event, ul.AssociateRequest):
            self.request = event
            policy = ul.AcceptorPolicy(contexts=ul.AcceptEverything(),
                                       async_window=ul.AsyncWindow(max_invoked=1, max_performed=self.window))
            return self.engine.send(ul.negotiate(event, policy))
        if isinstance(event, ul.ReleaseRequest):
            return self.engine.send(ul.ReleaseReply())
        if isinstance(event, ul.Command):
            assert isinstance(event.message, ul.CStoreRQ), event
            self._command, self._data = event.message, bytearray()
            return None
        if isinstance(event, ul.DatasetFragment):
            self._data += event.data
            return self._stored(event.context_id) if event.last else None
        return None

    def _stored(self, context_id: int) -> bytes | None:
        assert self._command is not None
        self.stored[self._command.affected_sop_instance_uid] = bytes(self._data)
        self._outstanding.append((context_id, self._command))
        self.most_outstanding = max(self.most_outstanding, len(self._outstanding))
        window = self.engine.max_performed or self.window  # as negotiated: 1 when no window was proposed
        if len(self._outstanding) < window and len(self.stored) < self.expected:
            return None
        out = b""
        for context_id, rq in reversed(self._outstanding):
            out += self.engine.send_message(context_id, ul.CStoreRSP(
                message_id_being_responded_to=rq.message_id, affected_sop_class_uid=rq.affected_sop_class_uid,
                affected_sop_instance_uid=rq.affected_sop_instance_uid,
                status=0xA700 if rq.affected_sop_instance_uid == self.refuse else 0x0000))
        self._outstanding = []
        return out


def test_granted_window_keeps_that_many_in_flight_and_matches_responses_by_message_id(tmp_path: Path) -> None:
    sent = make_files(tmp_path / "in", 22)
    refused = sorted(sent.items(), key=lambda item: item[1])[9][0]  # the middle of the third window
    report = tmp_path / "summary.json"
    with HoldingAcceptor(window=4, expected=len(sent), refuse=refused) as peer:
        result = run_nodectl("send", "-v", "--async", "8", "--progress", "none", "--summary-json", str(report),
                             "127.0.0.1", str(peer.port), str(tmp_path / "in"))
    assert result.returncode == 1, result.stderr
    assert peer.request is not None and peer.request.async_window == ul.AsyncWindow(max_invoked=8, max_performed=1)
    assert peer.most_outstanding == 4 and in_flight(result.stderr) == 4
    assert set(peer.stored) == set(sent)
    for uid, path in sent.items():
        assert peer.stored[uid] == dataset_bytes(path)
    data = json.loads(report.read_text())
    assert (data["sent"], data["failed"], data["associations"]) == (21, 1, 1)
    (failed,) = data["files"]["failed"]
    assert (failed["sop_instance_uid"], failed["status"]) == (refused, 0xA700)  # the right file, answered out of order


def test_without_async_no_window_is_proposed(tmp_path: Path) -> None:
    sent = make_files(tmp_path / "in", 3)
    with HoldingAcceptor(window=4, expected=len(sent)) as peer:
        result = run_nodectl("send", "-v", "--progress", "none", "127.0.0.1", str(peer.port), str(tmp_path / "in"))
    assert result.returncode == 0, result.stderr
    assert peer.request is not None and peer.request.async_window is None
    assert peer.most_outstanding == 1 and in_flight(result.stderr) == 1


def ipv6_loopback() -> bool:
    try:
        with socket.create_server(("::1", 0), family=socket.AF_INET6):
            return True
    except OSError:
        return False


@pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback here")
def test_an_ipv6_peer_by_address(tmp_path: Path) -> None:
    sent = make_files(tmp_path / "in", 3)
    with HoldingAcceptor(window=2, expected=len(sent), host="::1") as peer:
        result = run_nodectl("send", "--async", "2", "--progress", "none", "::1", str(peer.port), str(tmp_path / "in"))
    assert result.returncode == 0, result.stderr
    assert {uid: peer.stored[uid] for uid in sent} == {uid: dataset_bytes(path) for uid, path in sent.items()}


def test_bad_async_values_are_usage_errors() -> None:
    for value in ("0", "257", "x"):
        assert run_nodectl("send", "--async", value, "127.0.0.1", "11112", "x").returncode == 2


@pytest.mark.skipif(not dcmtk_available(), reason="DCMTK storescp not installed")
def test_dcmtk_storescp_answers_no_window_so_one_at_a_time(tmp_path: Path) -> None:
    sent = make_files(tmp_path / "in", 12)
    with dcmtk_storescp(tmp_path / "scp") as scp:
        result = run_nodectl("send", "-v", "--async", "8", "-j", "2", "--progress", "none",
                             "127.0.0.1", str(scp.port), str(tmp_path / "in"))
        received = scp.received()
    assert result.returncode == 0, result.stderr
    assert in_flight(result.stderr) == 1
    assert set(received) == set(sent)
    for uid, path in sent.items():
        assert dataset_bytes(received[uid]) == dataset_bytes(path)


def node_window(port: int, proposed: int) -> int:
    """What ``nodectl serve`` grants a requestor proposing ``proposed`` (0 in the AC: unlimited)."""
    engine = ul.Association(ul.Role.REQUESTOR)
    request = ul.AssociateRequest(called_ae="NODE", calling_ae="PROBE", async_window=ul.AsyncWindow(
        max_invoked=proposed, max_performed=1), contexts=(ul.ProposedContext(
            context_id=1, abstract_syntax=ul.VERIFICATION, transfer_syntaxes=("1.2.840.10008.1.2",)),))
    with socket.create_connection(("127.0.0.1", port), timeout=IDLE_S) as sock:
        sock.sendall(engine.send(request))
        accepted = False
        while not accepted:
            engine.receive_data(sock.recv(65536))
            accepted = any(isinstance(event, ul.AssociateAccept) for event in engine.events())
        sock.sendall(engine.send(ul.Abort()))
    return min(proposed, engine.max_invoked or proposed)


def test_into_the_node_as_many_in_flight_as_it_negotiates(tmp_path: Path) -> None:
    sent = make_files(tmp_path / "in", 16)
    node = serve(tmp_path, workers=1)
    try:
        granted = node_window(node.port, 8)
        result = run_nodectl("send", "-v", "--async", "8", "-aec", "NODE", "--progress", "none",
                             "127.0.0.1", str(node.port), str(tmp_path / "in"))
        assert result.returncode == 0, result.stderr
        assert in_flight(result.stderr) == granted
        node.materialised()
        for uid, path in sent.items():
            assert dataset_bytes(node.cwd / "store" / uid) == dataset_bytes(path)
    finally:
        node.stop()


def test_into_a_node_that_grants_a_window_it_is_used(tmp_path: Path) -> None:
    """A node configured as dcm4che storescp --max-ops-invoked 4 --max-ops-performed 4: send
    proposing 8 gets 4, keeps 4 C-STOREs in flight, and every file is stored once."""
    sent = make_files(tmp_path / "in", 24)
    (tmp_path / "node.toml").write_text("[network]\nmax_ops_invoked = 4\nmax_ops_performed = 4\n")
    node = serve(tmp_path, "--config", str(tmp_path / "node.toml"), workers=1)
    try:
        assert node_window(node.port, 8) == 4
        result = run_nodectl("send", "-v", "--async", "8", "-aec", "NODE", "--progress", "none",
                             "127.0.0.1", str(node.port), str(tmp_path / "in"))
        assert result.returncode == 0, result.stderr
        assert in_flight(result.stderr) == 4
        node.materialised()
        for uid, path in sent.items():
            assert dataset_bytes(node.cwd / "store" / uid) == dataset_bytes(path)
    finally:
        node.stop()
