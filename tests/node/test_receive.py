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


# ----- the header walk's Dataset against pydicom's (issue 12) ---------------------------------

import struct  # noqa: E402
from random import Random  # noqa: E402

from pydicom.dataset import Dataset  # noqa: E402

from node.errors import NodeError  # noqa: E402
from node.paths import FilePathPattern  # noqa: E402
from node.receive import check_dataset, plan_write, wanted_tags  # noqa: E402

PATTERN = FilePathPattern.compile("{00100020}/{0020000D,hash}/{00080060}/{00080018}.dcm")


def decide(data: bytes, syntax: str, received: Received, pattern: FilePathPattern | None, walk: bool) -> object:
    """What the worker decides for ``data``: the status it refuses with, or the write it plans
    (``walk``: the header walk's Dataset; else pydicom's parse of every element)."""
    try:
        ds = read_in_memory(data, b"", syntax, wanted_tags(pattern) if walk else None, values_only=walk and pattern is None)
        check_dataset(ds, received)
        return plan_write(received, ds, pattern)
    except NodeError as exc:
        return exc.status


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("pattern", [None, PATTERN])
def test_the_walk_decides_as_pydicom_on_mutated_datasets(tmp_path: Path, syntax: str, pattern: FilePathPattern | None) -> None:
    """Bytes flipped, cut, duplicated and spliced into a dataset, one with an undefined-length
    sequence first (pydicom parses those; the walk only frames them) and one with an element
    after Pixel Data (pydicom stops there): the same status, or the same write planned."""
    path = tmp_path / "ct.dcm"
    ds = make_ct(path, pixels=16, transfer_syntax=syntax)
    data = dataset_bytes(path)
    received = Received("a", str(ds.SOPClassUID), str(ds.SOPInstanceUID), syntax, "MOD", "NODE", "1.2.3", "")
    bases = [data, _element(syntax, 0x00081115, "SQ", None) + data, data + _element(syntax, 0x00100020, "LO", b"AFTER ")]
    rng = Random(12)
    cases = [*bases, data[:-1], data[:8], b"", data[: len(data) // 2]]
    for _ in range(600):
        for base in bases:
            cases.append(_mutated(base, rng))
    differing = [case for case in cases if decide(case, syntax, received, pattern, True) != decide(case, syntax, received, pattern, False)]
    assert not differing, f"{len(differing)} of {len(cases)} decided differently, e.g. {differing[0]!r}"


def _element(syntax: str, tag: int, vr: str, value: bytes | None) -> bytes:
    """One element's bytes; ``value`` None: an undefined-length sequence of one undefined-length
    item holding a Series Instance UID."""
    head = struct.pack("<HH", tag >> 16, tag & 0xFFFF)
    if value is None:
        inner = _element(syntax, 0x0020000E, "UI", b"1.2.3\x00")
        item = b"\xfe\xff\x00\xe0\xff\xff\xff\xff" + inner + b"\xfe\xff\x0d\xe0\x00\x00\x00\x00"
        length = b"\xff\xff\xff\xff"
        body = item + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
    else:
        length, body = struct.pack("<I", len(value)), value
    if syntax == ImplicitVRLittleEndian:
        return head + length + body
    if vr == "SQ":
        return head + b"SQ\x00\x00" + length + body
    return head + vr.encode() + struct.pack("<H", len(body)) + body


def _mutated(data: bytes, rng: Random) -> bytes:
    mutated = bytearray(data)
    kind = rng.randrange(4)
    if kind == 0:
        for _ in range(rng.randint(1, 4)):
            mutated[rng.randrange(len(mutated))] = rng.randrange(256)
    elif kind == 1:
        mutated = mutated[: rng.randrange(len(mutated))]
    elif kind == 2:
        start = rng.randrange(len(mutated))
        mutated[start:start] = mutated[start : start + rng.randint(1, 40)]
    else:
        at = rng.randrange(len(mutated))
        mutated[at:at] = rng.choice([b"\xff\xff\xff\xff", b"\xfe\xff\x00\xe0", b"\xfe\xff\xdd\xe0\x00\x00\x00\x00", b"SQ\x00\x00"])
    return bytes(mutated)


def test_the_walk_keeps_only_what_the_node_reads_and_decodes_the_character_set(tmp_path: Path) -> None:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPInstanceUID = "1.2.3"
    ds.PatientID = "Grüß"
    ds.PatientName = "Not^Kept"
    data = _encode(ds)
    walked = read_in_memory(data, b"", ExplicitVRLittleEndian, wanted_tags(None))
    assert walked.PatientID == "Grüß" and "PatientName" not in walked


def _encode(ds: Dataset) -> bytes:
    from pydicom.filewriter import write_dataset
    from pydicom.filebase import DicomBytesIO

    out = DicomBytesIO()
    out.is_little_endian, out.is_implicit_VR = True, False
    write_dataset(out, ds)
    return out.getvalue()


VALUES = [b"1.2.3", b"1.2.3\x00", b" 1.2.3 ", b"1.2.3 \x00", b"1.2\x003", b"1.2\\3", b"", b"\x00", b"  ", b"1.2.3\xe9",
          b"\t1.2.3", b"1.2.3\x00 ", b"1.2.3\n", b"PID ", b" PID", b"\xc3\xa9"]


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
@pytest.mark.parametrize("charset", [None, b"ISO_IR 192", b"ISO_IR 13"])
def test_the_walks_plain_values_are_pydicoms(syntax: str, charset: bytes | None) -> None:
    """Padding, spaces on either side, NULs, backslashes, control and non-ASCII bytes, with and
    without a character set, in each value the node reads: the same decision as pydicom's."""
    received = Received("a", "1.2.840.10008.5.1.4.1.1.7", "1.2.3", syntax, "MOD", "NODE", "1.2.3", "")
    head = _element(syntax, 0x00080005, "CS", charset) if charset is not None else b""
    for tag, vr in ((0x00080018, "UI"), (0x0020000D, "UI"), (0x0020000E, "UI"), (0x00100020, "LO")):
        for value in VALUES:
            elements = {0x00080018: b"1.2.3", 0x0020000D: b"1.2.4", 0x0020000E: b"1.2.5", 0x00100020: b"P1", tag: value}
            vrs = {0x00080018: "UI", 0x0020000D: "UI", 0x0020000E: "UI", 0x00100020: "LO"}
            data = head + b"".join(_element(syntax, t, vrs[t], v) for t, v in sorted(elements.items()))
            walked, parsed = decide(data, syntax, received, None, True), decide(data, syntax, received, None, False)
            assert walked == parsed, (hex(tag), value, walked, parsed)


def test_values_only_answers_the_node_values_and_plans_the_same_write(tmp_path: Path) -> None:
    """Without a path pattern the worker takes the walk's plain values, no Dataset: the same
    write planned; a Specific Character Set (whose decoding pydicom may refuse) still gets one."""
    from node.receive import NodeValues

    path = tmp_path / "ct.dcm"
    ds = make_ct(path, pixels=16, transfer_syntax=ExplicitVRLittleEndian)
    data = dataset_bytes(path)
    received = Received("a", str(ds.SOPClassUID), str(ds.SOPInstanceUID), ExplicitVRLittleEndian, "MOD", "NODE", "1.2.3", "")
    lean = read_in_memory(data, b"", ExplicitVRLittleEndian, wanted_tags(None), values_only=True)
    full = read_in_memory(data, b"", ExplicitVRLittleEndian, wanted_tags(None))
    assert isinstance(lean, NodeValues) and isinstance(full, Dataset)
    check_dataset(lean, received)
    assert plan_write(received, lean, None) == plan_write(received, full, None)
    with_charset = _element(ExplicitVRLittleEndian, 0x00080005, "CS", b"ISO_IR 100") + data
    assert isinstance(read_in_memory(with_charset, b"", ExplicitVRLittleEndian, wanted_tags(None), values_only=True), Dataset)
