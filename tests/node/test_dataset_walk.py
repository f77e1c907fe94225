"""check_complete: every value arrived, lengths and delimiters frame the dataset (no sockets)."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import pytest

from node.dataset_walk import check_complete
from node.errors import DatasetError
from tests.support import dataset_bytes, make_ct

EXPLICIT = "1.2.840.10008.1.2.1"
IMPLICIT = "1.2.840.10008.1.2"


def walk(data: bytes, ts: str = EXPLICIT) -> None:
    check_complete(io.BytesIO(data), 0, len(data), ts)


@pytest.mark.parametrize("ts", [EXPLICIT, IMPLICIT])
def test_a_whole_dataset_passes_and_any_cut_fails(tmp_path: Path, ts: str) -> None:
    make_ct(tmp_path / "a.dcm", transfer_syntax=ts, pixels=16)
    data = dataset_bytes(tmp_path / "a.dcm")
    walk(data, ts)
    for cut in (1, 7, len(data) // 2, len(data) - 1):
        with pytest.raises(DatasetError):
            walk(data[:cut] if cut != 1 else data[:-cut], ts)


def test_encapsulated_pixel_data_and_undefined_length_sequences_pass() -> None:
    item = b"\xfe\xff\x00\xe0" + struct.pack("<I", 4) + b"abcd"
    seq = b"\x40\x00\x75\x02SQ\x00\x00\xff\xff\xff\xff" + b"\xfe\xff\x00\xe0\xff\xff\xff\xff" + b"\x10\x00\x10\x00PN\x04\x00ABCD" \
        + b"\xfe\xff\x0d\xe0\x00\x00\x00\x00" + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
    pixels = b"\xe0\x7f\x10\x00OB\x00\x00\xff\xff\xff\xff" + b"\xfe\xff\x00\xe0\x00\x00\x00\x00" + item + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
    walk(seq + pixels)


@pytest.mark.parametrize("data", [
    b"\x10\x00\x10\x00ZZ\x04\x00ABCD",                                    # unknown VR
    b"\x10\x00\x10\x00PN\x08\x00ABCD",                                    # length past the end
    b"\xe0\x7f\x10\x00OW\x00\x00" + struct.pack("<I", 0x7FFFFFFE) + b"\x00" * 16,  # 2 GiB claim
    b"\x40\x00\x75\x02SQ\x00\x00\xff\xff\xff\xff\xfe\xff\x00\xe0\xff\xff\xff\xff",  # never delimited
    b"\x08\x00\x18\x00UI\x00\x00\xff\xff\xff\xff",                       # undefined length on a short VR
    b"\xfe\xff\xdd\xe0\x00\x00\x00\x00",                                  # a delimiter at top level
])
def test_malformed_framing_is_refused(data: bytes) -> None:
    with pytest.raises(DatasetError):
        walk(data)


def test_nesting_is_bounded() -> None:
    deep = (b"\x40\x00\x75\x02SQ\x00\x00\xff\xff\xff\xff" + b"\xfe\xff\x00\xe0\xff\xff\xff\xff") * 40
    with pytest.raises(DatasetError, match="nesting"):
        walk(deep)
