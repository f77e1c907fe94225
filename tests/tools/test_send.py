"""``nodectl send``: planning without sockets, then real peers on 127.0.0.1.

Peers: DCMTK storescp (``--fork +B``: parallel associations, files written as received),
Orthanc with a generated configuration, and pynetdicom SCPs in the test for statuses,
aborts and rejections. Each check compares what arrived with what was sent, and the
``--summary-json`` with what arrived.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from node.tools.send_plan import MAX_CONTEXTS, FileEntry, context_groups, plan, scan
from tests.peers.orthanc import Orthanc, orthanc_available
from tests.support import dataset_bytes, free_port, interruptible, make_ct, stored_files
from tests.tools.storepeers import dcmtk_available, dcmtk_storescp, pynetdicom_scp, run_nodectl

needs_dcmtk = pytest.mark.skipif(not dcmtk_available(), reason="DCMTK storescp not installed")
needs_orthanc = pytest.mark.skipif(not orthanc_available(), reason="Orthanc not installed")


def send(*args: object):
    return run_nodectl("send", "--progress", "plain", *map(str, args))


def make_files(directory: Path, count: int, **kwargs: Any) -> dict[str, Path]:
    """``count`` small CT files; returns {SOP Instance UID: path}."""
    return {
        make_ct(directory / f"{n:04d}.dcm", pixels=16, InstanceNumber=n + 1, **kwargs).SOPInstanceUID:
            directory / f"{n:04d}.dcm"
        for n in range(count)
    }


def summary(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


# --- planning: no sockets -------------------------------------------------------------------


def entry(index: int, sop_class: str, syntax: str = ExplicitVRLittleEndian) -> FileEntry:
    return FileEntry(index=index, path=f"/f{index}", sop_class_uid=sop_class, sop_instance_uid=f"1.{index}",
                     transfer_syntax_uid=syntax, offset=132, size=100)


def test_context_groups_never_exceed_128() -> None:
    entries = [entry(n, f"1.2.3.{n % 150}", (ExplicitVRLittleEndian, ImplicitVRLittleEndian)[n % 2]) for n in range(600)]
    groups = context_groups(entries)
    assert sum(map(len, groups)) == 150
    assert max(map(len, groups)) <= MAX_CONTEXTS
    tasks = plan(entries, workers=3)
    assert sorted(e.index for t in tasks for e in t.files) == list(range(600))
    for task in tasks:
        assert len(task.contexts) <= MAX_CONTEXTS
        assert {e.context for e in task.files} <= set(task.contexts)


def test_plan_deals_files_round_robin_in_order() -> None:
    tasks = plan([entry(n, "1.2.3") for n in range(10)], workers=4)
    assert [[e.index for e in t.files] for t in tasks] == [[0, 4, 8], [1, 5, 9], [2, 6], [3, 7]]


def test_scan_reads_meta_and_skips_non_dicom(tmp_path: Path) -> None:
    make_ct(tmp_path / "ct.dcm")
    (tmp_path / "text.txt").write_text("hello")
    (tmp_path / "empty.dcm").write_bytes(b"")
    found = scan([str(tmp_path / name) for name in ("ct.dcm", "empty.dcm", "text.txt")])
    assert [e.index for e in found.entries] == [0]
    ct = found.entries[0]
    assert ct.size == len(dataset_bytes(tmp_path / "ct.dcm"))
    assert ct.offset + ct.size == (tmp_path / "ct.dcm").stat().st_size
    assert [s.index for s in found.skipped] == [1, 2]


# --- command line -------------------------------------------------------------------------


def test_help_documents_exit_codes_and_bad_options_exit_2() -> None:
    helped = run_nodectl("send", "--help")
    assert helped.returncode == 0
    assert "exit status:" in helped.stdout and "130" in helped.stdout
    assert run_nodectl("send", "127.0.0.1", "11112").returncode == 2
    assert run_nodectl("send", "-j", "0", "127.0.0.1", "11112", "x").returncode == 2
    too_long = run_nodectl("send", "-aet", "A" * 17, "127.0.0.1", "11112", "x")
    assert too_long.returncode == 2 and "longer than 16 characters" in too_long.stderr, too_long.stderr
    assert "Traceback" not in too_long.stderr


# --- into DCMTK storescp ----------------------------------------------------------------------


@needs_dcmtk
def test_parallel_send_into_dcmtk_loses_nothing(tmp_path: Path) -> None:
    """Four forked workers: every file arrives intact, the summary says so."""
    sent = make_files(tmp_path / "in", 40)
    (tmp_path / "in" / "README.txt").write_text("not DICOM")
    report = tmp_path / "summary.json"
    with dcmtk_storescp(tmp_path / "scp") as scp:
        result = send("-j", 4, "--summary-json", report, "127.0.0.1", scp.port, tmp_path / "in")
        received = scp.received()
    assert result.returncode == 0, result.stderr
    assert set(received) == set(sent)
    for uid, path in sent.items():
        assert dataset_bytes(received[uid]) == dataset_bytes(path)
    data = summary(report)
    assert (data["sent"], data["failed"], data["skipped"], data["associations"]) == (40, 0, 1, 4)
    assert {f["sop_instance_uid"] for f in data["files"]["sent"]} == set(received)
    assert data["files"]["skipped"][0]["path"].endswith("README.txt")
    assert data["bytes"] == sum(len(dataset_bytes(p)) for p in sent.values())
    assert "send: 40/40 files" in result.stderr  # plain progress lines when not a terminal


@needs_dcmtk
@pytest.mark.parametrize("jobs", [1, 2])
def test_more_than_128_contexts_open_further_associations(tmp_path: Path, jobs: int) -> None:
    """-j 2: each worker runs two associations one after the other; in the multiplexer the
    second socket takes the first one's place (it may get the same descriptor number)."""
    sent: dict[str, Path] = {}
    for n in range(140):  # 70 private SOP classes x 2 transfer syntaxes = 140 contexts
        path = tmp_path / "in" / f"{n:03d}.dcm"
        syntax = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)[n % 2]
        ds = make_ct(path, pixels=4, transfer_syntax=syntax, SOPClassUID=f"1.2.826.0.1.3680043.8.498.78.{n // 2 + 1}")
        sent[ds.SOPInstanceUID] = path
    report = tmp_path / "summary.json"
    with dcmtk_storescp(tmp_path / "scp", "-pm", "+xa") as scp:
        result = send("-j", jobs, "--summary-json", report, "127.0.0.1", scp.port, tmp_path / "in")
        received = scp.received()
    assert result.returncode == 0, result.stderr
    assert set(received) == set(sent)
    for uid, path in sent.items():
        assert dataset_bytes(received[uid]) == dataset_bytes(path)
    assert summary(report)["associations"] == 2 * jobs


@needs_dcmtk
def test_streamed_sending_keeps_memory_flat(tmp_path: Path) -> None:
    """The sender's peak RSS hardly grows with a 24 MB dataset: it is streamed, not loaded.

    ``-j 1`` sends in the ``nodectl send`` process itself. Its peak is read from VmHWM, which
    is this process image's own: ``getrusage(RUSAGE_SELF)`` would report the forked test
    process's RSS from before the exec (Linux carries it over as the maximum)."""
    make_ct(tmp_path / "small" / "s.dcm", pixels=8)
    make_ct(tmp_path / "big" / "b.dcm", pixels=3500)  # 3500 x 3500 x 2 bytes = 24.5 MB
    probe = (
        "import sys; from node.cli import main; "
        "rc = main(sys.argv[1:]); "
        "print([line.split()[1] for line in open('/proc/self/status') if line.startswith('VmHWM')][0]); sys.exit(rc)"
    )
    peaks = {}
    with dcmtk_storescp(tmp_path / "scp", "--ignore") as scp:
        for name in ("small", "big"):
            result = run_nodectl_probe(probe, "send", "--progress", "none", "127.0.0.1", str(scp.port), str(tmp_path / name))
            assert result.returncode == 0, result.stderr
            peaks[name] = int(result.stdout.split()[-1])  # KiB, the sender's peak
    assert peaks["big"] - peaks["small"] < 12 * 1024, peaks


def run_nodectl_probe(code: str, *args: str):
    import subprocess

    root = Path(__file__).resolve().parents[2]
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          timeout=60, cwd=root, stdin=subprocess.DEVNULL)


# --- into Orthanc ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory):
    if not orthanc_available():
        pytest.skip("Orthanc not installed")
    with Orthanc.start(tmp_path_factory.mktemp("orthanc"), aet="ORTHANCTEST") as peer:
        yield peer


@needs_orthanc
def test_parallel_send_into_orthanc_every_file_intact(tmp_path: Path, orthanc: Orthanc) -> None:
    orthanc.rest.clear()
    sent = make_files(tmp_path / "in", 30)
    sent.update(make_files(tmp_path / "in" / "implicit", 5, transfer_syntax=ImplicitVRLittleEndian))
    (tmp_path / "in" / "junk.bin").write_bytes(b"\x00" * 300)
    report = tmp_path / "summary.json"
    result = send("-r", "-j", 4, "-aec", orthanc.aet, "--summary-json", report,
                  "127.0.0.1", orthanc.dicom_port, tmp_path / "in")
    assert result.returncode == 0, result.stderr
    stored = orthanc.rest.sop_instance_uids()
    assert set(stored) == set(sent)
    for uid, path in sent.items():
        fetched = tmp_path / "fetched.dcm"
        fetched.write_bytes(orthanc.rest.file(stored[uid]))
        assert dataset_bytes(fetched) == dataset_bytes(path)
    data = summary(report)
    assert (data["sent"], data["failed"], data["skipped"]) == (35, 0, 1)
    assert {f["sop_instance_uid"] for f in data["files"]["sent"]} == set(stored)


# --- statuses, retries, refusals (pynetdicom SCPs in the test) --------------------------------


def test_failure_status_is_reported_per_file_and_exits_1(tmp_path: Path) -> None:
    good = make_files(tmp_path / "in", 4)
    bad = make_ct(tmp_path / "in" / "fail.dcm", patient_id="FAIL")
    report = tmp_path / "summary.json"

    def status(ds, event) -> int:
        return 0xA700 if ds.PatientID == "FAIL" else 0x0000

    with pynetdicom_scp(status) as (port, received):
        result = send("-j", 2, "--summary-json", report, "127.0.0.1", port, tmp_path / "in")
    assert result.returncode == 1, result.stderr
    assert "status=0xA700" in result.stderr
    assert sorted(received.uids) == sorted([*good, bad.SOPInstanceUID])
    data = summary(report)
    assert data["exit_status"] == 1 and data["sent"] == 4 and data["failed"] == 1
    (failed,) = data["files"]["failed"]
    assert failed["path"].endswith("fail.dcm")
    assert (failed["status"], failed["status_hex"], failed["network"]) == (0xA700, "0xA700", False)
    assert failed["reason"] == "Failure: Refused: Out of Resources"


@pytest.mark.parametrize("jobs", [1, 2])
def test_aborted_association_is_retried(tmp_path: Path, jobs: int) -> None:
    """One association aborted by the peer is re-opened for its files (-j 2: one lane of the
    multiplexer re-associates while the other carries on)."""
    sent = make_files(tmp_path / "in", 6)
    aborted: list[str] = []

    def abort_once(ds, event) -> int:
        if not aborted:
            aborted.append(ds.SOPInstanceUID)
            event.assoc.abort()
        return 0x0000

    report = tmp_path / "summary.json"
    with pynetdicom_scp(abort_once) as (port, _received):
        result = send("-j", jobs, "--retry", 2, "--retry-delay", 0.05, "--summary-json", report, "127.0.0.1", port,
                      tmp_path / "in")
    assert result.returncode == 0, result.stderr
    assert f"association with 127.0.0.1:{port} lost (aborted by the peer); " in result.stderr, result.stderr
    data = summary(report)
    assert data["sent"] == 6 and data["associations"] == jobs + 1
    assert {f["sop_instance_uid"] for f in data["files"]["sent"]} == set(sent)


@pytest.mark.parametrize("jobs", [1, 2])
def test_nothing_listening_retries_then_exits_3(tmp_path: Path, jobs: int) -> None:
    """Every worker's warning reaches stderr, from the main thread (-j 1) or from its lane of the
    main thread's multiplexer (-j 2), each back-off a wait of its own lane."""
    make_files(tmp_path / "in", 2)
    report = tmp_path / "summary.json"
    result = send("-j", jobs, "--retry", 1, "--retry-delay", 0.05, "--summary-json", report,
                  "127.0.0.1", free_port(), tmp_path / "in")
    assert result.returncode == 3
    assert result.stderr.count("retry 1/1") == jobs, result.stderr
    data = summary(report)
    assert data["failed"] == 2 and all(f["network"] and f["status"] is None for f in data["files"]["failed"])


def test_permanent_rejection_is_not_retried(tmp_path: Path) -> None:
    make_files(tmp_path / "in", 1)
    with pynetdicom_scp(called_aet="STORE-SCP") as (port, received):
        result = send("--retry", 3, "-aec", "WRONG", "127.0.0.1", port, tmp_path / "in")
    assert result.returncode == 3
    assert "retry" not in result.stderr and "association rejected" in result.stderr
    assert received.requests == []


def test_missing_path_exits_4_after_sending_the_rest(tmp_path: Path) -> None:
    sent = make_files(tmp_path / "in", 2)
    with pynetdicom_scp() as (port, received):
        result = send("127.0.0.1", port, tmp_path / "in", tmp_path / "nope")
    assert result.returncode == 4
    assert "E: Cannot access path" in result.stderr
    assert sorted(received.uids) == sorted(sent)


# --- the terminal display ----------------------------------------------------------------


def test_progress_bar_on_a_terminal(tmp_path: Path) -> None:
    """``--progress auto`` draws a tqdm bar when stderr is a terminal."""
    import fcntl
    import os
    import pty
    import struct
    import subprocess
    import termios

    make_files(tmp_path / "in", 3)
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # tqdm needs a width
    root = Path(__file__).resolve().parents[2]
    with pynetdicom_scp() as (port, received):
        proc = subprocess.run([sys.executable, "-m", "node.cli", "send", "127.0.0.1", str(port), str(tmp_path / "in")],
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=slave, cwd=root, timeout=60)
    os.close(slave)
    output = b""
    try:
        while chunk := os.read(master, 65536):
            output += chunk
    except OSError:  # EIO once the pty is drained and its slave closed
        pass
    finally:
        os.close(master)
    assert proc.returncode == 0
    assert len(received.requests) == 3
    text = output.decode(errors="replace")
    assert "files 3/3, 0 failed" in text and "100%" in text


# --- TLS (--tls-*): DCMTK's TLS storescp and our own TLS node -----------------------------------


def tls_client(certs: Any, *, ca: Path | None = None) -> list[str]:
    """--tls-* for a client with our CA's client certificate, trusting ``ca`` (default: our CA)."""
    return ["--tls-ca", str(ca or certs.ca), "--tls-cert", str(certs.client_crt), "--tls-key", str(certs.client_key)]


@needs_dcmtk
def test_tls_send_into_dcmtk_storescp_intact_and_refusals(tmp_path: Path, tls_certs: Any) -> None:
    """-j 2 over TLS into DCMTK's storescp +tls (client certificate required): every file arrives
    byte for byte; a server certificate from another CA and a plain client fail with exit 3."""
    sent = make_files(tmp_path / "in", 4)
    dcmtk_tls = ("+tls", str(tls_certs.server_key), str(tls_certs.server_crt), "+cf", str(tls_certs.ca), "-rc")
    with dcmtk_storescp(tmp_path / "scp", *dcmtk_tls) as scp:
        result = send("-j", 2, *tls_client(tls_certs), "127.0.0.1", scp.port, tmp_path / "in")
        rogue = send(*tls_client(tls_certs, ca=tls_certs.rogue_ca), "127.0.0.1", scp.port, tmp_path / "in" / "0000.dcm")
        plain = send("127.0.0.1", scp.port, tmp_path / "in" / "0000.dcm")
        received = scp.received()
    assert result.returncode == 0, result.stderr
    assert set(received) == set(sent)
    for uid, path in sent.items():
        assert dataset_bytes(received[uid]) == dataset_bytes(path)
    assert rogue.returncode == 3 and "CERTIFICATE_VERIFY_FAILED" in rogue.stderr, rogue.stderr
    assert "Traceback" not in rogue.stderr  # pynetdicom's trace of the TLS error is dropped: one line says it
    assert plain.returncode == 3, plain.stderr


def test_tls_send_into_our_tls_node(tmp_path: Path, tls_certs: Any, tls_node: Any) -> None:
    """Into ``nodectl serve --tls-cert --tls-ca``: stored intact; without a client certificate the
    node refuses the handshake (exit 3); an unreadable --tls-ca is a command line error (exit 2)."""
    sent = make_files(tmp_path / "in", 2)
    result = send("-j", 2, "-aec", "NODE", *tls_client(tls_certs), "127.0.0.1", tls_node.port, tmp_path / "in")
    assert result.returncode == 0, result.stderr
    tls_node.materialised()
    for uid, path in sent.items():
        assert dataset_bytes(tls_node.cwd / "store" / uid) == dataset_bytes(path)
    anonymous = send("-aec", "NODE", "--tls-ca", tls_certs.ca, "127.0.0.1", tls_node.port, tmp_path / "in" / "0000.dcm")
    assert anonymous.returncode == 3, anonymous.stderr
    missing = send("--tls-ca", tmp_path / "nothing.pem", "127.0.0.1", tls_node.port, tmp_path / "in")
    assert missing.returncode == 2 and "TLS" in missing.stderr, missing.stderr


def test_tls_commit_into_our_tls_node(tmp_path: Path, tls_certs: Any, tls_node: Any) -> None:
    """--commit over TLS: the N-ACTION and its report on a TLS association of the node's, every
    instance committed; --commit-port (a plain listener) with TLS is refused before anything is sent."""
    make_files(tmp_path / "in", 3)
    summary = tmp_path / "s.json"
    result = send("-v", "-aec", "NODE", *tls_client(tls_certs), "--commit", "--commit-timeout", "30",
                  "--summary-json", summary, "127.0.0.1", tls_node.port, tmp_path / "in")
    assert result.returncode == 0, result.stderr
    job = json.loads(summary.read_text())["job"]
    assert (job["acknowledged"], job["committed"], job["not_committed"]) == (3, 3, 0)
    assert "commitment requested=3 committed=3" in result.stderr
    refused = send("-aec", "NODE", *tls_client(tls_certs), "--commit", "--commit-port", free_port(),
                   "127.0.0.1", tls_node.port, tmp_path / "in")
    assert refused.returncode == 2 and "--commit-port over TLS is not supported yet" in refused.stderr, refused.stderr


@pytest.mark.skipif(not dcmtk_available(), reason="DCMTK (Debian package dcmtk) is not installed")
def test_send_and_storescu_name_the_datasets_uids_not_the_file_metas(tmp_path: Path) -> None:
    """pydicom's rtplan.dcm and rtdose.dcm have a file meta SOP Instance UID that is not the
    dataset's: like DCMTK's storescu, both tools put the dataset's in the C-STORE-RQ, so a
    receiver that checks the command against the dataset (our node) stores them."""
    import shutil

    from pydicom import dcmread
    from pydicom.data import get_testdata_file

    from tests.nodes import serve

    sources = [Path(get_testdata_file(name)) for name in ("rtplan.dcm", "rtdose.dcm")]
    for source in sources:
        assert dcmread(source).file_meta.MediaStorageSOPInstanceUID != dcmread(source).SOPInstanceUID
    for tool in ("send", "storescu"):  # a node each: the second would only see duplicates
        folder = tmp_path / tool
        (folder / "in").mkdir(parents=True)
        for source in sources:
            shutil.copy(source, folder / "in" / source.name)
        node = serve(folder, workers=1)
        try:
            result = run_nodectl(tool, "127.0.0.1", str(node.port), *(str(folder / "in" / s.name) for s in sources))
            assert result.returncode == 0, (tool, result.stderr)
        finally:
            node.stop()
        stored = {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in stored_files(folder / "store")}
        assert stored == {str(dcmread(source).SOPInstanceUID) for source in sources}, tool


# --- a hostile peer -----------------------------------------------------------------------------


def test_garbage_instead_of_a_response_ends_quietly(tmp_path: Path) -> None:
    """A peer that accepts, then answers a C-STORE with an unknown PDU type: the association is
    aborted, one line names the file and the violation, the file fails (exit 3), no traceback."""
    import socket
    import threading

    from node import ul

    make_files(tmp_path / "in", 1)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    aborts: list[bytes] = []

    def hostile() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(30)
            engine = ul.Association(ul.Role.ACCEPTOR)
            while not engine.established:
                engine.receive_data(conn.recv(65536))
                for event in engine.events():
                    if isinstance(event, ul.AssociateRequest):
                        conn.sendall(engine.send(ul.negotiate(event, ul.AcceptorPolicy(contexts=ul.AcceptEverything()))))
            conn.recv(65536)  # the C-STORE-RQ
            conn.sendall(b"\x09\x00\x00\x00\x00\x02\x00\x00")
            aborts.append(conn.recv(65536))

    thread = threading.Thread(target=hostile, daemon=True)
    thread.start()
    try:
        result = send("127.0.0.1", port, tmp_path / "in")
    finally:
        listener.close()
        thread.join(timeout=30)
    assert result.returncode == 3, result.stderr
    assert "Traceback" not in result.stderr
    (line,) = [line for line in result.stderr.splitlines() if line.startswith(("W: ", "E: "))]
    assert line.startswith("E: Store failed: ") and "association lost while sending (peer broke the protocol: " \
        "unrecognized PDU type 0x09" in line, result.stderr
    assert aborts and aborts[0][:1] == b"\x07"  # an A-ABORT came back


def test_the_send_modules_import_one_way() -> None:
    """plan <- results <- association <- worker <- send, report <- send: no module of the tool
    imports one that imports it back (issue 13: send_lean and send_worker did)."""
    import ast

    tools = Path(__file__).resolve().parents[2] / "node" / "tools"
    graph: dict[str, set[str]] = {}
    for path in tools.glob("send*.py"):
        imported = set()
        for item in ast.walk(ast.parse(path.read_text())):
            if isinstance(item, ast.ImportFrom) and (item.module or "").startswith("node.tools.send"):
                imported.add(item.module.rsplit(".", 1)[1])
        graph[path.stem] = imported
    done: set[str] = set()
    while len(done) < len(graph):
        ready = {name for name, needs in graph.items() if name not in done and needs <= done}
        assert ready, f"import cycle among {sorted(set(graph) - done)}: {graph}"
        done |= ready


def test_a_plain_job_imports_only_what_it_uses() -> None:
    """Start-up counts in a scripted job's time (issue 13 item 6): pydicom (~0.1 s of CPU, only
    for --commit or a file the quick scan cannot read), node.config (~30 ms, TLS for serve),
    storescu's requestor shell (~12 ms) and ssl (~5 ms, --tls-*) are not imported by a job that
    does not need them."""
    import subprocess
    import sys

    unwanted = ("pydicom", "node.config", "node.tools.storescu", "actors.ul_requestor", "ssl")
    code = ("import sys, node.cli, node.tools.send; "
            f"print(sorted(m for m in sys.modules if m.split('.')[0] == 'pydicom' or m in {unwanted!r}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("jobs", [1, 2])
def test_ctrl_c_aborts_the_associations_and_exits_130(tmp_path: Path, jobs: int) -> None:
    """SIGINT while the peer sits on its answers: exit 130 at once, an A-ABORT on every
    association (not a release that would wait for answers), the summary written."""
    import signal
    import socket
    import subprocess
    import threading

    from node import ul
    from tests.tools.storepeers import NODECTL

    make_files(tmp_path / "in", 4)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    stored, aborts = threading.Semaphore(0), []

    def silent_peer() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(30)
            engine = ul.Association(ul.Role.ACCEPTOR)
            while engine.state is not ul.State.STA1:
                data = conn.recv(65536)
                engine.receive_data(data)
                for event in engine.events():
                    if isinstance(event, ul.AssociateRequest):
                        conn.sendall(engine.send(ul.negotiate(event, ul.AcceptorPolicy(contexts=ul.AcceptEverything()))))
                    elif isinstance(event, ul.DatasetFragment) and event.last:
                        stored.release()  # and never answered
                    elif isinstance(event, ul.Abort) and event.source == 0:  # an A-ABORT PDU from the sender,
                        aborts.append(event)                                  # not a dropped connection (source 2)

    peers = [threading.Thread(target=silent_peer, daemon=True) for _ in range(jobs)]
    for peer in peers:
        peer.start()
    report = tmp_path / "summary.json"
    proc = subprocess.Popen([*NODECTL, "send", "-j", str(jobs), "--progress", "none", "--summary-json", str(report),
                             "127.0.0.1", str(port), str(tmp_path / "in")], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=Path(__file__).resolve().parents[2], preexec_fn=interruptible)
    try:
        for _ in range(jobs):
            assert stored.acquire(timeout=30), "no C-STORE arrived"
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        listener.close()
        for peer in peers:
            peer.join(timeout=30)
    assert proc.returncode == 130, err
    assert len(aborts) == jobs  # -j 2 too: the multiplexer closes each worker's steps, each aborts its association
    assert summary(report)["exit_status"] == 130
