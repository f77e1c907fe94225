"""send_plan's fast scan: the same answer as pydicom's reading, file for file, without sockets."""

from __future__ import annotations

import os
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ImplicitVRLittleEndian

from node.tools import send_plan
from tests.support import make_ct

PYDICOM_FILES = sorted(
    str(path) for path in (Path(os.path.dirname(pydicom.__file__)) / "data" / "test_files").rglob("*") if path.is_file()
)


@pytest.mark.skipif(len(PYDICOM_FILES) < 50, reason="pydicom's bundled test files are not installed")
def test_fast_scan_agrees_with_pydicom_on_its_test_files() -> None:
    """Good files, odd encodings and garbage alike: entry or skip, offsets and UIDs identical."""
    for index, path in enumerate(PYDICOM_FILES):
        assert send_plan.scan_file(index, path) == send_plan._scan_with_pydicom(index, path), path


@pytest.mark.parametrize("syntax", [ImplicitVRLittleEndian, ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian])
def test_fast_scan_agrees_with_pydicom_per_transfer_syntax(tmp_path: Path, syntax: str) -> None:
    ds = make_ct(tmp_path / "ct.dcm", pixels=4, transfer_syntax=syntax)
    entry = send_plan.scan_file(0, str(tmp_path / "ct.dcm"))
    assert entry == send_plan._scan_with_pydicom(0, str(tmp_path / "ct.dcm"))
    assert isinstance(entry, send_plan.FileEntry) and entry.sop_instance_uid == ds.SOPInstanceUID


def test_truncated_head_and_no_preamble_are_skipped(tmp_path: Path) -> None:
    make_ct(tmp_path / "ct.dcm", pixels=4)
    whole = (tmp_path / "ct.dcm").read_bytes()
    (tmp_path / "cut.dcm").write_bytes(whole[:140])
    (tmp_path / "bare.dcm").write_bytes(whole[132:])
    for index, name in enumerate(("cut.dcm", "bare.dcm")):
        item = send_plan.scan_file(index, str(tmp_path / name))
        assert isinstance(item, send_plan.Skipped), item
        assert item == send_plan._scan_with_pydicom(index, str(tmp_path / name))


def test_scan_keeps_small_datasets_within_its_budget(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file the scan's one read held whole keeps its dataset bytes (exactly what follows the
    file meta), until the scan's budget is spent; a larger file is left to be read when sent."""
    for n in range(3):
        make_ct(tmp_path / f"small-{n}.dcm", pixels=8)
    make_ct(tmp_path / "large.dcm", pixels=128)  # 32 KiB of pixels: more than one read of the head
    paths = [str(path) for path in sorted(tmp_path.glob("*.dcm"))]  # large.dcm first
    found = send_plan.scan(paths)
    for entry in found.entries:
        whole = Path(entry.path).read_bytes()
        expected = None if entry.path.endswith("large.dcm") else whole[entry.offset:]
        assert entry.data == expected, entry.path
        assert len(whole) - entry.offset == entry.size
    monkeypatch.setattr(send_plan, "KEEP_BYTES", 1)  # spent by the first small file
    kept = [entry.data is not None for entry in send_plan.scan(paths).entries]
    assert kept == [False, True, False, False]
