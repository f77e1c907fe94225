"""The engine against independent peers on 127.0.0.1, through the blocking test shell:
DCMTK's echoscu, storescu and storescp, pynetdicom's apps and its association for Storage
Commitment (N-ACTION in, N-EVENT-REPORT back on the same association)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from pydicom import dcmread

from node import ul
from tests.node.ul.blocking import Acceptor, Requestor
from tests.node.ul.helpers import COMMITMENT, COMMITMENT_INSTANCE, CT, EXPLICIT, IMPLICIT
from tests.support import dataset_bytes, free_port, have, make_ct, start_process, stop_process, wait_until

ACCEPT_ALL = ul.AcceptorPolicy(contexts=ul.AcceptEverything())
PEER_TIMEOUT_S = 30
needs_dcmtk = pytest.mark.skipif(not have("storescu"), reason="DCMTK is not installed")


def files(tmp_path: Path, n: int, **kw: object) -> list[Path]:
    paths = [tmp_path / "in" / f"ct{i}.dcm" for i in range(n)]
    for path in paths:
        make_ct(path, **kw)  # type: ignore[arg-type]
    return paths


def run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=PEER_TIMEOUT_S, check=False)


def start_peer(cmd: Callable[[int], list[str]], log: Path) -> tuple[subprocess.Popen[bytes], int]:
    """A listening peer on a free port; another port when the peer exits at once, having lost
    that one to a parallel run (free_port can only say it was free a moment ago)."""
    for _ in range(3):
        port = free_port()
        proc = start_process(cmd(port), log=log)
        deadline = time.monotonic() + PEER_TIMEOUT_S
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    return proc, port
            except OSError:
                time.sleep(0.05)
        if proc.poll() is None:
            stop_process(proc)
            raise TimeoutError(f"{cmd(0)[0]} not listening after {PEER_TIMEOUT_S} s: {log.read_text()}")
    raise RuntimeError(f"{cmd(0)[0]} could not bind a port: {log.read_text()}")


def assert_stored(served: dict[str, bytes], paths: list[Path]) -> None:
    expected = {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID): dataset_bytes(p) for p in paths}
    assert served == expected


@needs_dcmtk
def test_dcmtk_echoscu_into_the_engine() -> None:
    with Acceptor(ACCEPT_ALL) as scp:
        result = run(["echoscu", "-aec", "NODE", "127.0.0.1", str(scp.port)])
        served = scp.join()
    assert result.returncode == 0, result.stderr
    assert served.echoes == 1 and served.requests[0].calling_ae == "ECHOSCU"


@needs_dcmtk
def test_dcmtk_storescu_into_the_engine(tmp_path: Path) -> None:
    """Three files with a small maximum PDU on our side, so every dataset comes in fragments."""
    paths = files(tmp_path, 3, pixels=128)
    policy = ul.AcceptorPolicy(contexts=ul.AcceptEverything(), max_pdu=4096)
    with Acceptor(policy) as scp:
        result = run(["storescu", "-aec", "NODE", "127.0.0.1", str(scp.port), *map(str, paths)])
        served = scp.join()
    assert result.returncode == 0, result.stderr
    assert_stored(served.stored, paths)


@needs_dcmtk
def test_the_engine_into_dcmtk_storescp(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    paths = files(tmp_path, 3, pixels=128)
    proc, port = start_peer(lambda port: ["storescp", "-od", str(out), "-pm", "+xa", str(port)], tmp_path / "storescp.log")
    try:
        contexts = (ul.ProposedContext(context_id=1, abstract_syntax=ul.VERIFICATION, transfer_syntaxes=(IMPLICIT,)),
                    ul.ProposedContext(context_id=3, abstract_syntax=CT, transfer_syntaxes=(EXPLICIT,)))
        scu = Requestor(port, ul.AssociateRequest(called_ae="STORESCP", calling_ae="ENGINE", contexts=contexts, max_pdu=16384))
        assert isinstance(scu.answer, ul.AssociateAccept)
        assert scu.engine.peer_max_pdu > 0  # DCMTK announces one: our P-DATA fragments fit it
        assert scu.echo() == 0
        for path in paths:
            ds = dcmread(path, stop_before_pixels=True)
            assert scu.store(CT, ds.SOPInstanceUID, dataset_bytes(path)) == 0
        scu.release()
    finally:
        stop_process(proc)
    stored = sorted(out.iterdir())
    assert len(stored) == 3
    for got in stored:
        ds = dcmread(got)
        original = next(p for p in paths if dcmread(p, stop_before_pixels=True).SOPInstanceUID == ds.SOPInstanceUID)
        assert ds.PixelData == dcmread(original).PixelData


def test_pynetdicom_echoscu_and_storescu_into_the_engine(tmp_path: Path) -> None:
    paths = files(tmp_path, 2)
    with Acceptor(ACCEPT_ALL, associations=2) as scp:
        echo = run([sys.executable, "-m", "pynetdicom", "echoscu", "127.0.0.1", str(scp.port)])
        store = run([sys.executable, "-m", "pynetdicom", "storescu", "127.0.0.1", str(scp.port), str(paths[0].parent)])
        served = scp.join()
    assert echo.returncode == 0 and store.returncode == 0, (echo.stderr, store.stderr)
    assert served.echoes == 1
    assert_stored(served.stored, paths)


def test_the_engine_into_pynetdicom_storescp(tmp_path: Path) -> None:
    out = tmp_path / "out"
    paths = files(tmp_path, 2)
    proc, port = start_peer(lambda port: [sys.executable, "-m", "pynetdicom", "storescp", "-od", str(out), str(port)],
                            tmp_path / "storescp.log")
    try:
        contexts = (ul.ProposedContext(context_id=1, abstract_syntax=CT, transfer_syntaxes=(EXPLICIT, IMPLICIT)),)
        scu = Requestor(port, ul.AssociateRequest(called_ae="ANY-SCP", calling_ae="ENGINE", contexts=contexts))
        for path in paths:
            assert scu.store(CT, dcmread(path, stop_before_pixels=True).SOPInstanceUID, dataset_bytes(path)) == 0
        scu.release()
    finally:
        stop_process(proc)
    assert len(list(out.iterdir())) == 2


def test_storage_commitment_with_pynetdicoms_association() -> None:
    """pynetdicom as commitment SCU proposes SCP role selection; the engine answers the
    N-ACTION and sends the N-EVENT-REPORT on the same association, which pynetdicom answers."""
    from pydicom.dataset import Dataset
    from pynetdicom import AE, build_role, evt

    policy = ul.AcceptorPolicy(contexts={COMMITMENT: (IMPLICIT,)}, roles={COMMITMENT: (True, True)})
    reports: list[int] = []

    def on_report(event: object) -> tuple[int, None]:
        reports.append(event.request.EventTypeID)  # type: ignore[attr-defined]
        return 0x0000, None

    ae = AE(ae_title="PYSCU")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = PEER_TIMEOUT_S
    ae.add_requested_context(COMMITMENT, [IMPLICIT])
    request = Dataset()
    request.TransactionUID = "1.2.3.4.5"
    with Acceptor(policy) as scp:
        assoc = ae.associate("127.0.0.1", scp.port, ae_title="NODE", ext_neg=[build_role(COMMITMENT, scu_role=True, scp_role=True)],
                             evt_handlers=[(evt.EVT_N_EVENT_REPORT, on_report)])
        assert assoc.is_established
        status, _ = assoc.send_n_action(request, 1, COMMITMENT, COMMITMENT_INSTANCE)
        assert status.Status == 0
        wait_until(lambda: scp.served.reports_answered > 0, PEER_TIMEOUT_S, "the N-EVENT-REPORT-RSP")
        assoc.release()
        served = scp.join()
    assert reports == [1] and served.reports_answered == 1
    assert served.requests[0].roles == (ul.RoleSelection(sop_class_uid=COMMITMENT, scu_role=True, scp_role=True),)
    assert served.actions and b"1.2.3.4.5" in served.actions[0]
