"""node.receive: parsing what a worker received, in memory and spooled, to the same result."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import pytest
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from node.errors import STATUS_CANNOT_UNDERSTAND, DatasetError
from node.receive import Received, file_meta_bytes, read_in_memory, read_own_spool, read_spooled
from node.storage import PREAMBLE
from tests.support import dataset_bytes, make_ct


def received_parts(tmp_path: Path, syntax: str) -> tuple[bytes, bytes, str]:
    """A CT dataset's bytes in ``syntax`` and the file meta the worker would write for it."""
    path = tmp_path / "ct.dcm"
    ds = make_ct(path, pixels=16, transfer_syntax=syntax)
    received = Received("a", str(ds.SOPClassUID), str(ds.SOPInstanceUID), syntax, "MOD", "NODE", "1.2.3", "")
    return dataset_bytes(path), file_meta_bytes(received), str(ds.SOPInstanceUID)


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian])
def test_in_memory_and_spooled_parses_agree(tmp_path: Path, syntax: str) -> None:
    data, meta, uid = received_parts(tmp_path, syntax)
    in_memory = read_in_memory(data, meta, syntax)
    spooled, offset = read_spooled(BytesIO(PREAMBLE + meta + data))
    assert offset == len(PREAMBLE) + len(meta)
    assert str(in_memory.SOPInstanceUID) == str(spooled.SOPInstanceUID) == uid
    assert in_memory.PatientID == spooled.PatientID and "PixelData" not in in_memory


@pytest.mark.parametrize("cut", [1, 7, 200])
def test_a_dataset_cut_short_cannot_be_understood(tmp_path: Path, cut: int) -> None:
    data, meta, _uid = received_parts(tmp_path, ExplicitVRLittleEndian)
    with pytest.raises(DatasetError) as broken:
        read_in_memory(data[:-cut], meta, ExplicitVRLittleEndian)
    assert broken.value.status == STATUS_CANNOT_UNDERSTAND


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian])
def test_a_workers_own_spool_parses_as_dcmread_does(tmp_path: Path, syntax: str) -> None:
    data, meta, uid = received_parts(tmp_path, syntax)
    spool = tmp_path / "spool.dcm"
    spool.write_bytes(PREAMBLE + meta + data)
    ds, offset = read_own_spool(str(spool), meta, len(data), syntax)
    assert offset == len(PREAMBLE) + len(meta)
    assert str(ds.SOPInstanceUID) == uid and "PixelData" not in ds


@pytest.mark.parametrize("cut", [1, 7, 200])
def test_a_spool_cut_short_cannot_be_understood(tmp_path: Path, cut: int) -> None:
    data, meta, _uid = received_parts(tmp_path, ExplicitVRLittleEndian)
    spool = tmp_path / "spool.dcm"
    spool.write_bytes(PREAMBLE + meta + data[:-cut])
    with pytest.raises(DatasetError) as broken:
        read_own_spool(str(spool), meta, len(data) - cut, ExplicitVRLittleEndian)
    assert broken.value.status == STATUS_CANNOT_UNDERSTAND


def test_a_missing_spool_is_a_dataset_error(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="unreadable"):
        read_own_spool(str(tmp_path / "gone.dcm"), b"meta", 10, ExplicitVRLittleEndian)
