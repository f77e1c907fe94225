"""The worker's association on the engine (actors/_ul_association.py on node/ul) against
real peers and raw protocol abuse.

Both receive paths store byte-identical files; requests the engine shell does not serve yet
go to pynetdicom's association; protocol violations end in A-ABORT, one WARNING line naming
the peer and no traceback, and leave the node answering.
"""

from __future__ import annotations

import dataclasses
import logging
import socket
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from pynetdicom import AE, build_role
from pynetdicom.pdu import A_ABORT_RQ

from actors._pdu import read_pdu
from actors.inproc import InprocNode
from node import acceptor, ul
from node.config import ListenerConfig, NetworkConfig, NodeConfig
from tests.support import dataset_bytes, have, make_ct, wait_until

CT = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT = "1.2.840.10008.1.2.1"
COMMITMENT = "1.2.840.10008.1.20.1"
needs_dcmtk = pytest.mark.skipif(not have("/usr/bin/storescu"), reason="DCMTK (Debian package dcmtk) is not installed")


def node_config(tmp_path: Path, receive_path: str = "lean") -> NodeConfig:
    return NodeConfig(
        directory=tmp_path / "store",
        database=str(tmp_path / "index.sqlite"),
        run_dir=tmp_path / "run",
        workers=1,
        listeners=(ListenerConfig(port=0, host="127.0.0.1", aet="LEAN"),),
        network=dataclasses.replace(NetworkConfig(), receive_path=receive_path, acse_timeout=5.0, network_timeout=5.0),
    )


@pytest.fixture
def lean_node(tmp_path: Path) -> Iterator[tuple[InprocNode, int]]:
    with InprocNode(node_config(tmp_path)) as node:
        yield node, node.address()[1]


@needs_dcmtk
@pytest.mark.parametrize("receive_path", ["lean", "pynetdicom"])
def test_both_receive_paths_store_what_dcmtk_sends(tmp_path: Path, receive_path: str, caplog: pytest.LogCaptureFixture) -> None:
    files = [tmp_path / "in" / f"ct{n}.dcm" for n in range(4)]
    for n, path in enumerate(files):
        make_ct(path, pixels=64 if n else 300)
    caplog.set_level(logging.INFO, logger="actors.worker")
    with InprocNode(node_config(tmp_path, receive_path)) as node:
        port = str(node.address()[1])
        echo = subprocess.run(["/usr/bin/echoscu", "-aec", "LEAN", "127.0.0.1", port], capture_output=True, timeout=30)
        store = subprocess.run(["/usr/bin/storescu", "-aec", "LEAN", "127.0.0.1", port, *map(str, files)],
                               capture_output=True, text=True, timeout=60)
    assert echo.returncode == 0 and store.returncode == 0, store.stderr
    for path in files:  # the 300x300 image (180 KB) crosses several PDUs
        assert dataset_bytes(tmp_path / "store" / dcmread(path).SOPInstanceUID) == dataset_bytes(path)
    lean_lines = [r for r in caplog.records if "context(s)" in r.getMessage() and "accepted" in r.getMessage()]
    assert bool(lean_lines) == (receive_path == "lean")
    assert not node.errors


def test_a_commitment_request_falls_back_to_pynetdicom(lean_node: tuple[InprocNode, int], tmp_path: Path,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    """Storage Commitment with role selection is beyond the lean path: pynetdicom serves all of it."""
    node, port = lean_node
    caplog.set_level(logging.DEBUG, logger="actors.worker")
    path = tmp_path / "ct.dcm"
    make_ct(path)
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(CT, EXPLICIT)
    ae.add_requested_context(COMMITMENT)
    assoc = ae.associate("127.0.0.1", port, ae_title="LEAN", ext_neg=[build_role(COMMITMENT, scu_role=True, scp_role=True)])
    assert assoc.is_established
    assert assoc.send_c_store(dcmread(path)).Status == 0
    assoc.release()
    assert any("pynetdicom's association serves it" in r.getMessage() for r in caplog.records)
    stored = tmp_path / "store" / dcmread(path).SOPInstanceUID  # the writer materialises it just after the success
    wait_until(stored.exists, 10, f"{stored.name} materialised")


def raw_association(port: int) -> tuple[socket.socket, int]:
    """A raw socket with an established association proposing CT; returns it and the context id."""
    engine = ul.Association(ul.Role.REQUESTOR)
    offer = ul.AssociateRequest(called_ae="LEAN", calling_ae="RAW", max_pdu=16384, implementation_class_uid="1.2.3.4",
                                contexts=(ul.ProposedContext(context_id=1, abstract_syntax=CT, transfer_syntaxes=(EXPLICIT,)),))
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(engine.send(offer))
    engine.receive_data(read_pdu(sock, 1 << 20)[1])  # the whole PDU, header included
    assert isinstance(next(engine.events()), ul.AssociateAccept)
    (context_id,) = engine.contexts
    return sock, context_id


def dataset_pdu(context_id: int, data: bytes) -> bytes:
    """A P-DATA-TF with one PDV: the last fragment of a dataset (PS3.8 9.3.5)."""
    return struct.pack(">BxIIBB", 0x04, len(data) + 6, len(data) + 2, context_id, 0x02) + data


def abort_reason(sock: socket.socket) -> int:
    pdu_type, pdu = read_pdu(sock, 1 << 20)
    assert pdu_type == acceptor.A_ABORT
    abort = A_ABORT_RQ()
    abort.decode(pdu)
    return int(abort.reason_diagnostic)


@pytest.mark.parametrize("bad, reason", [
    (b"\x09\x00\x00\x00\x00\x02\x00\x00", acceptor.ABORT_UNRECOGNIZED_PDU),  # unknown PDU type
    ("unaccepted context", acceptor.ABORT_INVALID_PARAMETER),  # a PDV on context 99
    (b"\x04\x00\x7f\xff\xff\xff", acceptor.ABORT_INVALID_PARAMETER),  # a 2 GiB P-DATA claim
    ("dataset first", acceptor.ABORT_UNEXPECTED_PDU),  # a dataset with no C-STORE-RQ before it
])
def test_protocol_violations_are_aborted_and_the_node_goes_on(lean_node: tuple[InprocNode, int], bad: object, reason: int,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    node, port = lean_node
    caplog.set_level(logging.INFO)
    sock, context_id = raw_association(port)
    with sock:
        if bad == "unaccepted context":
            sock.sendall(dataset_pdu(99, b"\x00" * 8))
        elif bad == "dataset first":
            sock.sendall(dataset_pdu(context_id, b"\x00" * 8))
        else:
            assert isinstance(bad, bytes)
            sock.sendall(bad)
        assert abort_reason(sock) == reason
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "peer=127.0.0.1:" in warnings[0].getMessage() and "aborted" in warnings[0].getMessage()
    assert not any(r.exc_info for r in caplog.records)
    again, _ = raw_association(port)  # the worker still serves associations
    with again:
        again.sendall(b"\x05\x00\x00\x00\x00\x04\x00\x00\x00\x00")  # A-RELEASE-RQ
        assert read_pdu(again, 1 << 20)[0] == 0x06  # A-RELEASE-RP
    assert not node.errors
