"""Is a received dataset complete? A walk over element headers, values skipped, never loaded.

pydicom parses the spooled dataset only up to Pixel Data, with large values deferred, so a
dataset cut short inside Pixel Data, or whose Pixel Data claims 2 GiB of which 16 bytes
arrived, parses fine. Storing it would acknowledge a broken instance. ``check_complete``
reads every element header (8 or 12 bytes), checks the VR and that the declared length fits
in what arrived, follows undefined-length sequences and items to their delimiters, and ends
exactly at the end of the bytes. The walk runs over a buffer: the bytes of a small dataset
held in memory, or a read-only ``mmap`` of a spool (only the pages holding headers are read,
so a 1 GiB instance costs no memory).

``scan`` is the same walk, and on the way it keeps the raw value of chosen top-level
elements (issue 12: a pydicom Dataset built from every element cost ~15% of a worker's CPU
per small C-STORE, where the node needs five values). The elements kept are those pydicom's
parse up to Pixel Data would have seen: none after the first Pixel Data tag.

Little-endian transfer syntaxes only (implicit and explicit VR, encapsulated pixel data);
big endian and deflated datasets are not walked (pydicom's parse is all they get).
"""

from __future__ import annotations

import mmap
import struct
from collections.abc import Collection
from typing import BinaryIO, NamedTuple

from node.errors import DatasetError, STATUS_CANNOT_UNDERSTAND

UNDEFINED = 0xFFFFFFFF
MAX_DEPTH = 32
IMPLICIT_LE = "1.2.840.10008.1.2"
NOT_WALKED = {"1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"}  # big endian, deflated
PIXEL_TAGS = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010})  # where pydicom's parse stops

VALID_VRS = {
    b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FD", b"FL", b"IS", b"LO", b"LT", b"OB", b"OD", b"OF",
    b"OL", b"OV", b"OW", b"PN", b"SH", b"SL", b"SQ", b"SS", b"ST", b"SV", b"TM", b"UC", b"UI", b"UL", b"UN",
    b"UR", b"US", b"UT", b"UV",
}
LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UN", b"UR", b"UT", b"SV", b"UV"}
UNDEFINED_OK = {b"SQ", b"UN", b"OB", b"OW"}  # sequences, UN sequences, encapsulated pixel data

_HEAD = struct.Struct("<HHI")  # tag, then a 32-bit length (implicit VR, items, delimiters)
_EXPLICIT_HEAD = struct.Struct("<HH2sH")  # tag, VR, 16-bit length (explicit VR; a long VR's length follows)
_LONG = struct.Struct("<I")


class Element(NamedTuple):
    """A top-level element kept by ``scan``: its VR as sent (None when implicit) and value."""

    tag: int
    vr: str | None
    value: bytes
    offset: int  # of the value, from the start of the dataset
    implicit: bool


def _broken(message: str) -> DatasetError:
    return DatasetError(f"dataset is incomplete or malformed: {message}", status=STATUS_CANNOT_UNDERSTAND)


def check_complete(fh: BinaryIO, start: int, end: int, transfer_syntax: str) -> None:
    """Raise DatasetError unless the bytes ``start..end`` of ``fh`` are a well-framed dataset."""
    if not transfer_syntax or transfer_syntax in NOT_WALKED or end <= start:
        return
    try:
        fileno = fh.fileno()
    except (OSError, AttributeError):  # in memory (BytesIO): its bytes are the buffer
        fh.seek(start)
        _Walk(fh.read(end - start), explicit=transfer_syntax != IMPLICIT_LE, wanted=()).run()
        return
    try:
        mapped = mmap.mmap(fileno, 0, access=mmap.ACCESS_READ)
    except ValueError:  # an empty file cannot be mapped
        raise _broken(f"{end - start} bytes missing") from None
    with mapped as buffer:
        if len(buffer) < end:
            raise _broken(f"{end - len(buffer)} bytes missing at the end")
        _Walk(buffer, explicit=transfer_syntax != IMPLICIT_LE, wanted=(), start=start, end=end).run()


class Scan(NamedTuple):
    """What ``scan`` found: the wanted elements, and whether a top-level element before
    Pixel Data had an undefined length (pydicom parses those eagerly; the walk frames them)."""

    elements: dict[int, Element]
    undefined_before_pixels: bool


def scan(data: bytes, transfer_syntax: str, wanted: Collection[int]) -> Scan:
    """Check that ``data`` is a well-framed dataset (as ``check_complete``) and return the
    top-level elements whose tags are in ``wanted`` (the last one of a tag sent twice, as
    pydicom keeps it), up to the first Pixel Data tag. Little endian syntaxes only."""
    walk = _Walk(data, explicit=transfer_syntax != IMPLICIT_LE, wanted=wanted)
    walk.run()
    return Scan(walk.found, walk.undefined_before_pixels)


class _Walk:
    """One walk over ``buffer[start:end]``; ``found`` collects the wanted top-level elements."""

    __slots__ = ("buffer", "start", "end", "explicit", "wanted", "found", "collecting", "undefined_before_pixels")

    def __init__(self, buffer: bytes | mmap.mmap, *, explicit: bool, wanted: Collection[int], start: int = 0,
                 end: int | None = None) -> None:
        self.buffer = buffer
        self.start = start
        self.end = len(buffer) if end is None else end
        self.explicit = explicit
        self.wanted = wanted
        self.found: dict[int, Element] = {}
        self.collecting = bool(wanted)
        self.undefined_before_pixels = False

    def run(self) -> None:
        pos = self._level(self.start, explicit=self.explicit, depth=0, nested=False)
        if pos != self.end:
            raise _broken(f"{self.end - pos} stray bytes at the end")

    def _level(self, pos: int, *, explicit: bool, depth: int, nested: bool) -> int:
        """Elements from ``pos`` until the end (top level) or a delimiter (inside an
        undefined-length item or sequence); the position after them (and the delimiter).

        One ``unpack_from`` per explicit element header (tag, VR and short length at once) and
        the wanted elements kept inline: every function call here is paid ~30 to 60 times per
        small dataset (counted with ``threading.setprofile`` on a worker, 2026-12-03: the walk
        made ~250 of the ~650 calls per small C-STORE)."""
        if depth > MAX_DEPTH:
            raise _broken(f"nesting deeper than {MAX_DEPTH}")
        buffer, end = self.buffer, self.end
        top, wanted, found = depth == 0, self.wanted, self.found
        while pos < end:
            if pos + 8 > end:
                raise _broken("element header cut short")
            if explicit:
                group, elem, vr, length = _EXPLICIT_HEAD.unpack_from(buffer, pos)
            else:
                group, elem, length = _HEAD.unpack_from(buffer, pos)
            if group == 0xFFFE:
                if explicit:  # items and delimiters carry a 32-bit length, never a VR
                    (length,) = _LONG.unpack_from(buffer, pos + 4)
                pos += 8
                if elem in (0xE00D, 0xE0DD):
                    if nested:
                        return pos
                    raise _broken(f"delimiter (FFFE,{elem:04X}) outside a sequence")
                if elem != 0xE000:
                    raise _broken(f"unknown item tag (FFFE,{elem:04X})")
                if length == UNDEFINED:
                    pos = self._level(pos, explicit=explicit, depth=depth + 1, nested=True)
                else:
                    pos = self._skip(pos, length, group, elem)
                continue
            if explicit and vr not in VALID_VRS:
                if vr.isalpha():
                    raise _broken(f"invalid VR {vr!r}")
                explicit = False  # implicit VR inside an explicit syntax: pydicom reads on, so do we
                (length,) = _LONG.unpack_from(buffer, pos + 4)
            if not explicit:
                vr = b""
                pos += 8
            elif vr in LONG_VRS:
                if pos + 12 > end:
                    raise _broken("element header cut short")
                (length,) = _LONG.unpack_from(buffer, pos + 8)
                pos += 12
            else:
                pos += 8
            if length == UNDEFINED:
                if explicit and vr not in UNDEFINED_OK:
                    raise _broken(f"undefined length on ({group:04X},{elem:04X}) with VR {vr.decode('latin-1')}")
                self._stop_collecting(depth, group, elem)
                pos = self._level(pos, explicit=explicit and vr != b"UN", depth=depth + 1, nested=True)
                continue
            if top and self.collecting:  # a top-level element with a defined length, before Pixel Data
                tag = group << 16 | elem
                if tag in PIXEL_TAGS:
                    self.collecting = False
                elif tag in wanted and length <= end - pos:
                    found[tag] = Element(tag, vr.decode("ascii") if explicit else None, bytes(buffer[pos:pos + length]),
                                         pos - self.start, not explicit)
            if length > end - pos:  # _skip, inline
                raise _broken(f"({group:04X},{elem:04X}) claims {length} bytes, {end - pos} arrived")
            pos += length
        if nested:
            raise _broken("sequence or item without its delimiter")
        return pos

    def _stop_collecting(self, depth: int, group: int, elem: int) -> None:
        """An undefined-length top-level element: Pixel Data ends what pydicom would read;
        anything else before it is noted (``Scan.undefined_before_pixels``)."""
        if depth != 0 or not self.collecting:
            return
        if (group << 16 | elem) in PIXEL_TAGS:
            self.collecting = False
        else:
            self.undefined_before_pixels = True

    def _skip(self, pos: int, length: int, group: int, elem: int) -> int:
        """The position after a value, once checked that it arrived in full."""
        left = self.end - pos
        if length > left:
            raise _broken(f"({group:04X},{elem:04X}) claims {length} bytes, {left} arrived")
        return pos + length
