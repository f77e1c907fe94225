"""nodectl stcomscu / commit against real peers on 127.0.0.1: our node (all three modes,
two listeners, a tracker killed mid-transaction) and Orthanc (as SCP and as SCU)."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread

from node import config as configuration
from tests.nodes import RunningNode
from tests.peers.orthanc import Orthanc, orthanc_available
from tests.support import NODECTL, free_port, make_ct, start_process, stop_process, wait_for_port, wait_until

CT_CLASS = "1.2.840.10008.5.1.4.1.1.2"


def stcomscu(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run the tool; the bound is far above its own waits (-te up to 20 s, ACSE 30 s) plus a
    loaded machine's start-up, so only a hang fails here, never a slow start."""
    return subprocess.run([*NODECTL, "stcomscu", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)


def files(directory: Path, pattern: str) -> list[Path]:
    return sorted(directory.glob(pattern))


# --------------------------------------------------------------------------- offline


def test_syntax_input_and_output_errors(tmp_path: Path) -> None:
    text = tmp_path / "note.txt"
    text.write_text("not DICOM")
    assert stcomscu("-h", cwd=tmp_path).returncode == 0
    assert stcomscu("--bogus", cwd=tmp_path).returncode == 1
    assert stcomscu("127.0.0.1", "11112", cwd=tmp_path).returncode == 21
    assert stcomscu("127.0.0.1", "11112", str(text), cwd=tmp_path).returncode == 22
    assert stcomscu("-nh", "127.0.0.1", "11112", str(text), cwd=tmp_path).returncode == 23
    make_ct(tmp_path / "a.dcm")
    assert stcomscu("-od", "/does/not/exist", "127.0.0.1", "11112", "a.dcm", cwd=tmp_path).returncode == 45
    assert stcomscu("127.0.0.1", str(free_port()), "a.dcm", cwd=tmp_path).returncode == 61
    assert not list(tmp_path.glob(".stcomscu.sqlite*")), "a refused association leaves no state behind"
    assert stcomscu("-nwe", "+P", str(free_port()), cwd=tmp_path).returncode == 1


# --------------------------------------------------------------------------- our node


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningNode, dict[str, int], Path]]:
    """A node with two listeners; peers: SERVERMODE (a stcomscu server), VIANODE (its own listener B), LATE."""
    base = tmp_path_factory.mktemp("scnode")
    ports = {"a": free_port(), "b": free_port(), "server": free_port(), "late": free_port()}
    (base / "node.toml").write_text(f"""
[node]
aet = "NODE"
workers = 2
run_dir = "run"
[[listeners]]
port = {ports['a']}
aet = "NODE"
[[listeners]]
port = {ports['b']}
aet = ""
[[peers]]
aet = "SERVERMODE"
host = "127.0.0.1"
port = {ports['server']}
[[peers]]
aet = "VIANODE"
host = "127.0.0.1"
port = {ports['b']}
[[peers]]
aet = "LATE"
host = "127.0.0.1"
port = {ports['late']}
[commitment]
retry_base = 0.5
retry_max = 2.0
""")
    running = RunningNode(["serve", "--config", str(base / "node.toml")], cwd=base, port=ports["a"]).wait_ready()
    wait_for_port(ports["b"])
    for n in range(3):
        make_ct(base / "in" / f"{n}.dcm")
    subprocess.run([*NODECTL, "storescu", "127.0.0.1", str(ports["a"]), str(base / "in"), "-aec", "NODE", "--recurse"],
                   capture_output=True, timeout=60, check=True)
    try:
        yield running, ports, base
    finally:
        running.stop()


def node_toml(base: Path) -> Path:
    return configuration.short_run_dir(base / "run") / "node.toml"


def test_client_mode_waits_on_the_same_association_and_writes_the_files(node: tuple, tmp_path: Path) -> None:
    running, ports, base = node
    out = tmp_path / "out"
    out.mkdir()
    make_ct(tmp_path / "unknown.dcm")
    result = stcomscu("-aec", "NODE", "-od", str(out), "+tuf", str(out / "tx.txt"), "+crf", "+sd", "-te", "20",
                      "127.0.0.1", str(ports["a"]), str(base / "in"), str(tmp_path / "unknown.dcm"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    uid = (out / "tx.txt").read_text().strip()
    request = dcmread(out / f"{uid}.req.OK.dcm")
    response = dcmread(out / f"{uid}.rsp.ERR.dcm")  # the unknown instance failed
    assert request.TransactionUID == response.TransactionUID == uid
    assert len(request.ReferencedSOPSequence) == 4
    assert len(response.ReferencedSOPSequence) == 3
    assert [(f.ReferencedSOPInstanceUID, f.FailureReason) for f in response.FailedSOPSequence] == [
        (dcmread(tmp_path / "unknown.dcm").SOPInstanceUID, 0x0112)]
    assert "Failed instances: 1" in (out / f"{uid}.report.txt").read_text()
    assert not list(out.glob(".stcomscu.sqlite*")), "nothing is pending: the transaction database is removed"


def test_server_mode_receives_the_report_on_a_new_association(node: tuple, tmp_path: Path) -> None:
    running, ports, base = node
    out = tmp_path / "out"
    out.mkdir()
    server = start_process([*NODECTL, "stcomscu", "+P", str(ports["server"]), "-od", str(out)], cwd=tmp_path, log=tmp_path / "server.log")
    try:
        wait_for_port(ports["server"])
        started = time.monotonic()
        result = stcomscu("-nwe", "-nmf", "-aet", "SERVERMODE", "-aec", "NODE", "-od", str(out), "+tuf", str(out / "tx.txt"),
                          "127.0.0.1", str(ports["a"]), str(base / "in" / "0.dcm"), cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        uid = (out / "tx.txt").read_text().strip()
        wait_until(lambda: (out / f"{uid}.rsp.OK.dcm").exists(), 60, "the report at the server (outbox back-off 1, 2, 4, ... s)")
        print(f"N-ACTION to report file on a new association: {time.monotonic() - started:.2f} s")
        assert not files(out, f"{uid}.req.*")  # -nmf in the client
    finally:
        stop_process(server)


def test_report_at_the_second_listener_completes_a_transaction_started_through_the_first(node: tuple, tmp_path: Path) -> None:
    running, ports, base = node
    out = tmp_path / "out"
    out.mkdir()
    result = stcomscu("--node", str(node_toml(base)), "-nwe", "-aet", "VIANODE", "-aec", "NODE", "-od", str(out),
                      "+tuf", str(out / "tx.txt"), "127.0.0.1", str(ports["a"]), str(base / "in" / "1.dcm"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    uid = (out / "tx.txt").read_text().strip()

    def state() -> str:
        with sqlite3.connect(base / "node.sqlite") as conn:
            row = conn.execute("SELECT state FROM commit_transactions WHERE transaction_uid = ?", (uid,)).fetchone()
        return row[0] if row else ""

    wait_until(lambda: state() == "completed", 60, "the transaction completed by the report at listener B")
    wait_until(lambda: f"listener={ports['b']}" in running.log(), 10, "the report's line naming listener B")


def test_tracker_killed_mid_transaction_still_delivers(node: tuple, tmp_path: Path) -> None:
    running, ports, base = node
    out = tmp_path / "out"
    out.mkdir()
    result = stcomscu("-nwe", "-aet", "LATE", "-aec", "NODE", "-od", str(out), "+tuf", str(out / "tx.txt"),
                      "127.0.0.1", str(ports["a"]), str(base / "in" / "2.dcm"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    uid = (out / "tx.txt").read_text().strip()
    wait_until(lambda: "report to LATE not delivered" in running.log(), 60, "a failed delivery attempt")
    [tracker] = running.children("run tracker")
    os.kill(tracker.pid, signal.SIGKILL)
    wait_until(lambda: any(p.pid != tracker.pid for p in running.children("run tracker")), 60, "the tracker restarted")
    server = start_process([*NODECTL, "stcomscu", "+P", str(ports["late"]), "-od", str(out)], cwd=tmp_path, log=tmp_path / "late.log")
    try:
        wait_until(lambda: (out / f"{uid}.rsp.OK.dcm").exists(), 60, "the report after the tracker restart")
    finally:
        stop_process(server)


# --------------------------------------------------------------------------- Orthanc


@pytest.mark.skipif(not orthanc_available(), reason="Orthanc not installed")
def test_orthanc_as_commitment_scp_reports_on_a_new_association(tmp_path: Path) -> None:
    port = free_port()
    with Orthanc.start(tmp_path / "orthanc", modalities={"stcomscu": ("STCOMSCU", "127.0.0.1", port)}) as orthanc:
        make_ct(tmp_path / "a.dcm")
        subprocess.run([*NODECTL, "storescu", "127.0.0.1", str(orthanc.dicom_port), str(tmp_path / "a.dcm"), "-aec", orthanc.aet],
                       capture_output=True, timeout=30, check=True)
        out = tmp_path / "out"
        out.mkdir()
        result = stcomscu("-te", "20", "+P", str(port), "-aec", orthanc.aet, "-od", str(out), "+tuf", str(out / "tx.txt"),
                          "127.0.0.1", str(orthanc.dicom_port), str(tmp_path / "a.dcm"), cwd=tmp_path, timeout=60)
        assert result.returncode == 0, result.stderr + orthanc.log.read_text()[-2000:]
        uid = (out / "tx.txt").read_text().strip()
        assert dcmread(out / f"{uid}.rsp.OK.dcm").TransactionUID == uid


@pytest.mark.skipif(not orthanc_available(), reason="Orthanc not installed")
def test_orthanc_as_commitment_scu_gets_our_report_on_a_new_association(tmp_path: Path) -> None:
    node_port = free_port()
    with Orthanc.start(tmp_path / "orthanc", modalities={"node": ("NODE", "127.0.0.1", node_port)}) as orthanc:
        base = tmp_path / "node"
        base.mkdir()
        running = RunningNode(["serve", "--port", str(node_port), "--aet", "NODE", "--workers", "1",
                               "--peer", f"{orthanc.aet}@127.0.0.1:{orthanc.dicom_port}"], cwd=base, port=node_port).wait_ready()
        try:
            stored = make_ct(tmp_path / "a.dcm")
            subprocess.run([*NODECTL, "storescu", "127.0.0.1", str(node_port), str(tmp_path / "a.dcm"), "-aec", "NODE"],
                           capture_output=True, timeout=30, check=True)
            job = orthanc.rest.post_json("/modalities/node/storage-commitment", {
                "DicomInstances": [[CT_CLASS, str(stored.SOPInstanceUID)], [CT_CLASS, "1.2.3.4.5"]], "Timeout": 20})
            path = job.get("Path") or f"/storage-commitment/{job['ID']}"
            wait_until(lambda: orthanc.rest.get_json(path).get("Status") != "Pending", 30, "Orthanc's commitment report")
            report = orthanc.rest.get_json(path)
            assert report["Status"] == "Failure", report  # one instance is unknown to the node
            assert [x["SOPInstanceUID"] for x in report["Success"]] == [str(stored.SOPInstanceUID)]
            assert [x["FailureReason"] for x in report["Failures"]] == [0x0112]
            wait_until(lambda: "report delivered to ORTHANC on a new association" in running.log(), 60, "the outbox record")
        finally:
            running.stop()


# --------------------------------------------------------------------------- TLS


def tls_args(certs: Any, *, ca: Path | None = None) -> list[str]:
    """DCMTK's +tls with our CA's client certificate, trusting ``ca`` (default: our CA)."""
    return ["+tls", str(certs.client_key), str(certs.client_crt), "+cf", str(ca or certs.ca)]


def test_tls_client_mode_against_our_tls_node(tls_certs: Any, tls_node: RunningNode, tmp_path: Path) -> None:
    """N-ACTION and the report over TLS with our node (client certificate required); a server
    certificate we do not trust and a plain client fail to associate (61); set-up errors exit 71."""
    out = tmp_path / "out"
    out.mkdir()
    make_ct(tmp_path / "a.dcm")
    port = str(tls_node.port)
    ok = stcomscu(*tls_args(tls_certs), "-aec", "NODE", "-od", str(out), "+tuf", str(out / "tx.txt"), "127.0.0.1", port, "a.dcm",
                  cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    uid = (out / "tx.txt").read_text().strip()
    assert dcmread(out / f"{uid}.rsp.ERR.dcm").TransactionUID == uid  # the node never received a.dcm
    rogue = subprocess.run([*NODECTL, "commit", *tls_args(tls_certs, ca=tls_certs.rogue_ca), "-aec", "NODE", "-od", str(out),
                            "127.0.0.1", port, "a.dcm"], cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert rogue.returncode == 61 and "CERTIFICATE_VERIFY_FAILED" in rogue.stderr, rogue.stderr
    assert stcomscu("-aec", "NODE", "-od", str(out), "127.0.0.1", port, "a.dcm", cwd=tmp_path).returncode == 61
    no_key = stcomscu("+tls", str(tmp_path / "missing.key"), str(tls_certs.client_crt), "127.0.0.1", port, "a.dcm", cwd=tmp_path)
    assert no_key.returncode == 71 and "Unable to load private TLS key" in no_key.stderr, no_key.stderr
    sni = stcomscu(*tls_args(tls_certs), "--expect-sni", "node", "+P", str(free_port()), cwd=tmp_path)
    assert sni.returncode == 71 and "--expect-sni is not supported" in sni.stderr, sni.stderr


def test_tls_combined_mode_listener_takes_the_report_only_from_a_trusted_certificate(tls_certs: Any, tmp_path: Path) -> None:
    """Combined mode with +tls: the N-ACTION goes to a TLS commitment SCP, which then tries the
    report on our listener with a rogue client certificate, in plain TCP, and with its real
    certificate: only the last gets through, and its report completes the transaction."""
    import ssl

    from tests.tools.commitpeer import ReportTry, commitment_scp

    def client(cert: Path | None, key: Path | None) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.load_verify_locations(str(tls_certs.ca))
        if cert and key:
            ctx.load_cert_chain(str(cert), str(key))
        return ctx

    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(str(tls_certs.server))
    server.load_verify_locations(str(tls_certs.ca))
    server.verify_mode = ssl.CERT_REQUIRED
    tries = [ReportTry("rogue", client(tls_certs.rogue_crt, tls_certs.rogue_key)), ReportTry("plain", None),
             ReportTry("trusted", client(tls_certs.client_crt, tls_certs.client_key))]
    out = tmp_path / "out"
    out.mkdir()
    make_ct(tmp_path / "a.dcm")
    listen = free_port()
    with commitment_scp(server, listen, tries) as (port, outcomes):
        result = stcomscu("+P", str(listen), *tls_args(tls_certs), "-aec", "COMMITSCP", "-te", "20", "-od", str(out),
                          "+tuf", str(out / "tx.txt"), "127.0.0.1", str(port), "a.dcm", cwd=tmp_path, timeout=60)
        assert outcomes.done.wait(10)
    assert result.returncode == 0, result.stderr
    assert outcomes.results["rogue"] != "status 0x0000" and outcomes.results["plain"] != "status 0x0000", outcomes.results
    assert outcomes.results["trusted"] == "status 0x0000", outcomes.results
    assert "TLS handshake failed" in result.stderr  # the worker's warning, shown by stcomscu
    uid = (out / "tx.txt").read_text().strip()
    assert dcmread(out / f"{uid}.rsp.OK.dcm").TransactionUID == uid


def test_the_commitment_code_map_names_what_stcomscu_runs_on() -> None:
    """docs/commitment.md's code map names every actors/ module stcomscu imports, and says of
    actors/commitment_io.py only what stcomscu takes from it (it once named that module as
    stcomscu's association handler after the tool had moved to the engine's shells)."""
    import ast

    root = Path(__file__).resolve().parents[2]
    tree = ast.parse((root / "node" / "tools" / "stcomscu.py").read_text())
    modules = set()
    for item in ast.walk(tree):
        if isinstance(item, ast.ImportFrom) and item.module == "actors":
            modules |= {alias.name for alias in item.names}
        elif isinstance(item, ast.ImportFrom) and (item.module or "").startswith("actors."):
            modules.add(item.module.split(".")[1])
    code_map = (root / "docs" / "commitment.md").read_text().split("## Flows")[0]
    assert modules, "stcomscu imports nothing from actors/?"
    for module in sorted(modules - {"tracker", "inproc", "tls", "bus"}):  # in-process node, TLS, bus: not commitment code
        assert f"`actors/{module}.py`" in code_map, f"actors/{module}.py, imported by stcomscu, missing from the code map"
    used = {node.attr for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "commitment_io"}
    row = next(line for line in code_map.splitlines() if line.startswith("| `actors/commitment_io.py`"))
    assert f"stcomscu uses only its `{'`, `'.join(sorted(used))}`" in row, (used, row)
