"""Is a received dataset complete? A walk over element headers, values skipped, never loaded.

pydicom parses the spooled dataset only up to Pixel Data, with large values deferred, so a
dataset cut short inside Pixel Data, or whose Pixel Data claims 2 GiB of which 16 bytes
arrived, parses fine. Storing it would acknowledge a broken instance. ``check_complete``
reads every element header (8 or 12 bytes), checks the VR and that the declared length fits
in what arrived, follows undefined-length sequences and items to their delimiters, and ends
exactly at the end of the bytes. Memory use is constant; time is one seek per element.

Little-endian transfer syntaxes only (implicit and explicit VR, encapsulated pixel data);
big endian and deflated datasets are not walked (pydicom's parse is all they get).
"""

from __future__ import annotations

import struct
from typing import BinaryIO

from node.errors import DatasetError, STATUS_CANNOT_UNDERSTAND

UNDEFINED = 0xFFFFFFFF
MAX_DEPTH = 32
IMPLICIT_LE = "1.2.840.10008.1.2"
NOT_WALKED = {"1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"}  # big endian, deflated

VALID_VRS = {
    b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FD", b"FL", b"IS", b"LO", b"LT", b"OB", b"OD", b"OF",
    b"OL", b"OV", b"OW", b"PN", b"SH", b"SL", b"SQ", b"SS", b"ST", b"SV", b"TM", b"UC", b"UI", b"UL", b"UN",
    b"UR", b"US", b"UT", b"UV",
}
LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UN", b"UR", b"UT", b"SV", b"UV"}
UNDEFINED_OK = {b"SQ", b"UN", b"OB", b"OW"}  # sequences, UN sequences, encapsulated pixel data


def _broken(message: str) -> DatasetError:
    return DatasetError(f"dataset is incomplete or malformed: {message}", status=STATUS_CANNOT_UNDERSTAND)


def check_complete(fh: BinaryIO, start: int, end: int, transfer_syntax: str) -> None:
    """Raise DatasetError unless the bytes ``start..end`` of ``fh`` are a well-framed dataset."""
    if not transfer_syntax or transfer_syntax in NOT_WALKED:
        return
    fh.seek(start)
    _walk(fh, end, explicit=transfer_syntax != IMPLICIT_LE, depth=0, nested=False)
    if fh.tell() != end:
        raise _broken(f"{end - fh.tell()} stray bytes at the end")


def _walk(fh: BinaryIO, end: int, *, explicit: bool, depth: int, nested: bool) -> None:
    """Elements until ``end`` (top level) or a delimiter (inside an undefined-length item/sequence)."""
    if depth > MAX_DEPTH:
        raise _broken(f"nesting deeper than {MAX_DEPTH}")
    while fh.tell() < end:
        head = fh.read(8)
        if len(head) < 8:
            raise _broken("element header cut short")
        group, elem = struct.unpack("<HH", head[:4])
        if group == 0xFFFE:
            (length,) = struct.unpack("<I", head[4:8])
            if elem in (0xE00D, 0xE0DD):
                if nested:
                    return
                raise _broken(f"delimiter (FFFE,{elem:04X}) outside a sequence")
            if elem != 0xE000:
                raise _broken(f"unknown item tag (FFFE,{elem:04X})")
            if length == UNDEFINED:
                _walk(fh, end, explicit=explicit, depth=depth + 1, nested=True)
            else:
                _skip(fh, length, end, group, elem)
            continue
        if explicit and head[4:6] not in VALID_VRS and not head[4:6].isalpha():
            explicit = False  # implicit VR inside an explicit syntax: pydicom reads on, so do we
        length, vr = _length(fh, head, explicit)
        if length == UNDEFINED:
            if explicit and vr not in UNDEFINED_OK:
                raise _broken(f"undefined length on ({group:04X},{elem:04X}) with VR {vr.decode('latin-1')}")
            _walk(fh, end, explicit=explicit and vr != b"UN", depth=depth + 1, nested=True)
        else:
            _skip(fh, length, end, group, elem)
    if nested:
        raise _broken("sequence or item without its delimiter")


def _length(fh: BinaryIO, head: bytes, explicit: bool) -> tuple[int, bytes]:
    """The value length (and VR, explicit only) of an element whose first 8 bytes are ``head``."""
    if not explicit:
        return struct.unpack("<I", head[4:8])[0], b""
    vr = head[4:6]
    if vr not in VALID_VRS:
        raise _broken(f"invalid VR {vr!r}")
    if vr in LONG_VRS:
        extra = fh.read(4)
        if len(extra) < 4:
            raise _broken("element header cut short")
        return struct.unpack("<I", extra)[0], vr
    return struct.unpack("<H", head[6:8])[0], vr


def _skip(fh: BinaryIO, length: int, end: int, group: int, elem: int) -> None:
    """Seek over a value after checking that it arrived in full."""
    left = end - fh.tell()
    if length > left:
        raise _broken(f"({group:04X},{elem:04X}) claims {length} bytes, {left} arrived")
    fh.seek(length, 1)
