"""``nodectl storescu`` against spec/storescu.md: parsing, file collection, contexts, exit codes.

Every run is a child process (``python -m node.cli storescu ...``), as scripts run it, and
every peer is real: DCMTK's storescp or a pynetdicom SCP in the test, on 127.0.0.1.
"""

from __future__ import annotations

import re
import select
import socket
import time
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    MRImageStorage,
    generate_uid,
)

from tests.support import dataset_bytes, free_port, make_ct
from tests.tools.storepeers import dcmtk_available, dcmtk_storescp, pynetdicom_scp, run_nodectl

needs_dcmtk = pytest.mark.skipif(not dcmtk_available(), reason="DCMTK storescp not installed")


def storescu(*args: object):
    return run_nodectl("storescu", *map(str, args))


def proposed_contexts(debug_log: str) -> list[list[str]]:
    """Transfer syntax names of each context in the logged A-ASSOCIATE-RQ (``-d`` output)."""
    section = debug_log.split("OUTGOING A-ASSOCIATE-RQ PDU", 1)[1].split("END A-ASSOCIATE-RQ PDU", 1)[0]
    contexts: list[list[str]] = []
    for line in section.splitlines():
        if re.search(r"Context ID:\s+\d+ \(Proposed\)", line):
            contexts.append([])
        elif contexts and re.match(r"D:\s{7}=", line):
            contexts[-1].append(line.split("=", 1)[1].strip())
    return contexts


# --- parsing (conformance 1-3) ------------------------------------------------------------


def test_no_path_is_a_usage_error() -> None:
    result = storescu("127.0.0.1", 11112)
    assert result.returncode == 2
    assert "storescu: error:" in result.stderr


def test_recursive_is_not_an_option_but_recur_abbreviates_recurse(tmp_path: Path) -> None:
    make_ct(tmp_path / "d" / "sub" / "x.dcm")
    wrong = storescu("--recursive", "127.0.0.1", 11112, tmp_path / "d")
    assert wrong.returncode == 2
    assert "unrecognized arguments: --recursive" in wrong.stderr
    with pynetdicom_scp() as (port, received):
        ok = storescu("--recur", "127.0.0.1", port, tmp_path / "d")
    assert ok.returncode == 0, ok.stderr
    assert len(received.requests) == 1


def test_single_context_is_not_an_option_cx_is() -> None:
    result = storescu("--single-context", "127.0.0.1", 11112, "x.dcm")
    assert result.returncode == 2
    assert storescu("-cx", "--version", "127.0.0.1", 11112, "x").stdout.strip() == "storescu.py v0.3.0"


def test_exclusive_options_are_usage_errors() -> None:
    assert storescu("-q", "-v", "127.0.0.1", 11112, "x").returncode == 2
    assert storescu("-xe", "-xi", "127.0.0.1", 11112, "x").returncode == 2
    assert storescu("-ll", "warning", "127.0.0.1", 11112, "x").returncode == 2


# --- file collection (conformance 4, 6-9) ---------------------------------------------------


def test_missing_path_exits_0_without_connecting(tmp_path: Path) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        result = storescu("-v", "127.0.0.1", port, tmp_path / "does-not-exist")
        readable, _, _ = select.select([listener], [], [], 0)
    assert result.returncode == 0
    assert f"E: Cannot access path: {tmp_path / 'does-not-exist'}" in result.stderr
    assert readable == [], "storescu connected although it had nothing to send"


def test_same_file_twice_is_sent_once_and_files_are_sorted(tmp_path: Path) -> None:
    b = make_ct(tmp_path / "b.dcm")
    a = make_ct(tmp_path / "a.dcm")
    with pynetdicom_scp() as (port, received):
        result = storescu("127.0.0.1", port, tmp_path / "b.dcm", tmp_path / "a.dcm", tmp_path / "a.dcm")
    assert result.returncode == 0, result.stderr
    assert received.uids == [a.SOPInstanceUID, b.SOPInstanceUID]
    assert [r["message_id"] for r in received.requests] == [1, 2]
    assert {r["priority"] for r in received.requests} == {2}  # LOW


def test_directory_top_level_only_unless_recurse(tmp_path: Path) -> None:
    top = make_ct(tmp_path / "d" / "top.dcm")
    deep = make_ct(tmp_path / "d" / "sub" / "deep.dcm")
    with pynetdicom_scp() as (port, received):
        flat = storescu("127.0.0.1", port, tmp_path / "d")
        assert received.uids == [top.SOPInstanceUID]
        recursive = storescu("-r", "127.0.0.1", port, tmp_path / "d")
    assert flat.returncode == recursive.returncode == 0
    assert sorted(received.uids[1:]) == sorted([top.SOPInstanceUID, deep.SOPInstanceUID])


def test_bad_file_is_logged_and_skipped(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "notes.txt").write_text("not DICOM")
    good = make_ct(tmp_path / "d" / "z.dcm")
    with pynetdicom_scp() as (port, received):
        result = storescu("127.0.0.1", port, tmp_path / "d")
    assert result.returncode == 0
    assert f"E: Bad DICOM file: {tmp_path / 'd' / 'notes.txt'}" in result.stderr
    assert received.uids == [good.SOPInstanceUID]


# --- real peers, statuses, association failures (conformance 5, 10-12, 15-17) ---------------


@needs_dcmtk
def test_ct_file_arrives_intact_at_dcmtk_storescp(tmp_path: Path) -> None:
    sent = make_ct(tmp_path / "in" / "ct.dcm")
    with dcmtk_storescp(tmp_path / "scp") as scp:
        result = storescu("-v", "127.0.0.1", scp.port, tmp_path / "in" / "ct.dcm")
        received = scp.received()
    assert result.returncode == 0, result.stderr
    assert "I: Sending Store Request: MsgID 1" in result.stderr
    assert "Status: 0x0000 - Success" in result.stderr
    stored = received[sent.SOPInstanceUID]
    assert dataset_bytes(stored) == dataset_bytes(tmp_path / "in" / "ct.dcm")


@needs_dcmtk
def test_debug_dumps_every_c_store_as_pynetdicom_storescu_does(tmp_path: Path) -> None:
    """``-d``: each C-STORE-RQ sent and C-STORE-RSP received is dumped (Message Type, Message ID,
    Affected SOP Class/Instance UID, Status...), line for line as pynetdicom's own storescu
    prints them against the same receiver."""
    import subprocess
    import sys

    files = [tmp_path / "in" / "ct.dcm", tmp_path / "in" / "mr.dcm"]
    make_ct(files[0])
    make_ct(files[1], SOPClassUID=MRImageStorage, Modality="MR")

    def association_part(log: str) -> list[str]:
        lines = log.splitlines()
        return lines[lines.index("I: Association Accepted"):]

    with dcmtk_storescp(tmp_path / "scp") as scp:
        ours = storescu("-d", "127.0.0.1", scp.port, *files)
        theirs = subprocess.run([sys.executable, "-m", "pynetdicom", "storescu", "-d", "127.0.0.1", str(scp.port),
                                 *map(str, files)], capture_output=True, text=True, timeout=60)
    assert ours.returncode == 0 and theirs.returncode == 0, ours.stderr + theirs.stderr
    assert "D: Message Type                  : C-STORE RQ" in ours.stderr
    assert "D: Message Type                  : C-STORE RSP" in ours.stderr
    assert association_part(ours.stderr) == association_part(theirs.stderr)


def test_failure_status_still_exits_0(tmp_path: Path) -> None:
    make_ct(tmp_path / "ct.dcm")
    with pynetdicom_scp(lambda ds, event: 0xA700) as (port, _received):
        result = storescu("-v", "127.0.0.1", port, tmp_path / "ct.dcm")
    assert result.returncode == 0
    assert "Received Store Response (Status: 0xA700" in result.stderr


def test_nothing_listening_exits_1(tmp_path: Path) -> None:
    make_ct(tmp_path / "ct.dcm")
    result = storescu("127.0.0.1", free_port(), tmp_path / "ct.dcm")
    assert result.returncode == 1
    assert "Association request failed" in result.stderr


def test_rejected_called_ae_exits_1(tmp_path: Path) -> None:
    make_ct(tmp_path / "ct.dcm")
    with pynetdicom_scp(called_aet="STORE-SCP") as (port, received):
        result = storescu("-aec", "WRONG", "127.0.0.1", port, tmp_path / "ct.dcm")
        accepted = storescu("-aec", "STORE-SCP", "127.0.0.1", port, tmp_path / "ct.dcm")
    assert result.returncode == 1
    assert "Association Rejected" in result.stderr
    assert accepted.returncode == 0 and len(received.requests) == 1


def test_explicit_file_is_reencoded_for_an_implicit_only_scp(tmp_path: Path) -> None:
    sent = make_ct(tmp_path / "ct.dcm", transfer_syntax=ExplicitVRLittleEndian)
    with pynetdicom_scp(transfer_syntaxes=[ImplicitVRLittleEndian]) as (port, received):
        result = storescu("127.0.0.1", port, tmp_path / "ct.dcm")
    assert result.returncode == 0, result.stderr
    (request,) = received.requests
    assert request["transfer_syntax"] == ImplicitVRLittleEndian
    got = request["dataset"]
    for keyword in ("SOPInstanceUID", "PatientID", "PatientName", "Rows", "PixelData"):
        assert got[keyword].value == sent[keyword].value


def test_dimse_timeout_aborts_and_later_files_fail(tmp_path: Path) -> None:
    make_ct(tmp_path / "a.dcm")
    make_ct(tmp_path / "b.dcm")

    def never_in_time(ds, event) -> int:
        time.sleep(2.5)  # bounded: longer than -td 1, short enough for the suite
        return 0

    with pynetdicom_scp(never_in_time) as (port, _received):
        result = storescu("-td", "1", "127.0.0.1", port, tmp_path / "a.dcm", tmp_path / "b.dcm")
    assert result.returncode == 0
    assert f"E: Store failed: {tmp_path / 'b.dcm'}" in result.stderr


def test_dataset_uid_wins_over_file_meta(tmp_path: Path) -> None:
    path = tmp_path / "ct.dcm"
    sent = make_ct(path)
    ds = dcmread(path)
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.save_as(path, enforce_file_format=True)
    with pynetdicom_scp() as (port, received):
        assert storescu("127.0.0.1", port, path).returncode == 0
    assert received.uids == [sent.SOPInstanceUID]


# --- presentation contexts (conformance 13, 14; -cx limit) ---------------------------------


def test_default_and_xi_contexts(tmp_path: Path) -> None:
    make_ct(tmp_path / "ct.dcm")
    with pynetdicom_scp() as (port, _received):
        default = storescu("-d", "127.0.0.1", port, tmp_path / "ct.dcm")
        implicit = storescu("-d", "-xi", "127.0.0.1", port, tmp_path / "ct.dcm")
    contexts = proposed_contexts(default.stderr)
    assert len(contexts) == 120
    assert set(map(tuple, contexts)) == {
        ("Explicit VR Little Endian", "Implicit VR Little Endian",
         "Deflated Explicit VR Little Endian", "Explicit VR Big Endian")
    }
    assert {tuple(c) for c in proposed_contexts(implicit.stderr)} == {("Implicit VR Little Endian",)}


def test_required_contexts_proposes_only_the_files_pairs(tmp_path: Path) -> None:
    make_ct(tmp_path / "ct.dcm", transfer_syntax=ExplicitVRLittleEndian)
    make_ct(tmp_path / "mr.dcm", transfer_syntax=ImplicitVRLittleEndian, SOPClassUID=MRImageStorage, Modality="MR")
    with pynetdicom_scp() as (port, received):
        result = storescu("-d", "-cx", "127.0.0.1", port, tmp_path)
    assert result.returncode == 0, result.stderr
    assert proposed_contexts(result.stderr) == [["Explicit VR Little Endian"], ["Implicit VR Little Endian"]]
    assert len(received.requests) == 2


def test_more_than_128_required_contexts_exits_1(tmp_path: Path) -> None:
    for n in range(129):
        make_ct(tmp_path / f"{n:03d}.dcm", pixels=4, SOPClassUID=f"1.2.826.0.1.3680043.8.498.77.{n + 1}")
    result = storescu("-cx", "127.0.0.1", free_port(), tmp_path)
    assert result.returncode == 1
    assert "More than 128 presentation contexts" in result.stderr
