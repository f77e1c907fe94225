"""stcomscu's report listener (actors/report_listener.py) in a real ``nodectl stcomscu +P``
process, driven by the requestor shell: C-ECHO, ``--role-reject`` (the default) refusing a
Storage Commitment context proposed without the SCP role, and hostile bytes ending with one
WARNING line naming the peer, no traceback, the listener serving on."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from actors import ul_requestor as rq
from node import ul
from tests.node.ul.helpers import COMMITMENT, EXPLICIT, IMPLICIT
from tests.support import NODECTL, free_port, start_process, stop_process, wait_for_port, wait_until

TIMEOUTS = rq.Timeouts(connect=10, acse=10, dimse=10)


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    port = free_port()
    log = tmp_path / "server.log"
    proc = start_process([*NODECTL, "stcomscu", "-v", "+P", str(port), "-od", str(tmp_path)], cwd=tmp_path, log=log)
    try:
        wait_for_port(port)
        yield port, log
    finally:
        stop_process(proc)


def associate(port: int, *, scp_role: bool) -> rq.Requestor:
    contexts = [ul.ProposedContext(context_id=1, abstract_syntax=ul.VERIFICATION, transfer_syntaxes=(IMPLICIT,)),
                ul.ProposedContext(context_id=3, abstract_syntax=COMMITMENT, transfer_syntaxes=(EXPLICIT, IMPLICIT))]
    roles = [ul.RoleSelection(sop_class_uid=COMMITMENT, scu_role=False, scp_role=True)] if scp_role else []
    return rq.associate("127.0.0.1", port, rq.request("STCOMSCU", "REPORTER", contexts, roles=roles), timeouts=TIMEOUTS)


def test_echo_and_the_scp_role_rule(listener: tuple[int, Path]) -> None:
    port, _ = listener
    without = associate(port, scp_role=False)
    assert without.context_for(COMMITMENT) is None  # --role-reject: user rejection
    cx = without.context_for(ul.VERIFICATION)
    assert cx is not None
    without.send(cx.context_id, ul.CEchoRQ(message_id=1))
    assert without.wait_response(1).message.status == 0  # type: ignore[union-attr]
    without.release()
    with_role = associate(port, scp_role=True)
    granted = with_role.context_for(COMMITMENT)
    assert granted is not None and granted.requestor_scp
    with_role.release()


def test_hostile_bytes_cost_one_warning_and_no_traceback(listener: tuple[int, Path]) -> None:
    port, log = listener
    assoc = associate(port, scp_role=True)
    assoc.sock.sendall(b"\x04\x00\x00\x00\x00\x08" + b"\xff" * 8)  # a P-DATA-TF whose PDV runs past its PDU
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        raw.sendall(b"\x42" * 64)  # not a PDU at all
        raw.settimeout(10)
        while raw.recv(65536):
            pass
    assoc.close()
    wait_until(lambda: log.read_text().count("protocol violation") >= 2, 15, "two WARNING lines")
    text = log.read_text()
    assert "Traceback" not in text
    still = associate(port, scp_role=False)  # still serving
    assert still.context_for(ul.VERIFICATION) is not None
    still.release()


def test_a_flood_of_idle_connections_is_capped(listener: tuple[int, Path]) -> None:
    """40 connections that never speak: at most 32 are served at once (each until ARTIM ends
    it), the rest are closed at once with a WARNING; the listener serves on."""
    port, log = listener
    flood = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(40)]
    try:
        wait_until(lambda: "refused: 32 open already" in log.read_text(), 15, "the cap's WARNING")
    finally:
        for sock in flood:
            sock.close()
    assert "Traceback" not in log.read_text()
    wait_until(lambda: _serving(port), 15, "serving again once the flood is gone")


def _serving(port: int) -> bool:
    try:
        assoc = associate(port, scp_role=False)
    except rq.AssociationError:
        return False
    assoc.release()
    return True
