"""Planning for ``nodectl send``: which files, which presentation contexts, which worker.

Nothing here opens a socket. The scan reads only each file's preamble and file meta
group (a few hundred bytes), never its dataset, so planning 10,000 files costs little
memory; the workers later stream each dataset from its file.

A plan is a list of ``Task``: one association's worth of work for one worker, that is at
most ``MAX_CONTEXTS`` (SOP Class UID, Transfer Syntax UID) pairs (the limit of the 8-bit
odd presentation context IDs, PS3.8 9.3.2.2) and the files that need them. More pairs
than fit in one association are split into further context groups, each sent over its
own association(s).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import BinaryIO

MAX_CONTEXTS = 128


@dataclass(frozen=True, slots=True, kw_only=True)
class FileEntry:
    """A file that can be sent: where its dataset starts and what it needs."""

    index: int  # position in the sorted file list; results refer to files by it
    path: str
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    offset: int  # byte offset of the dataset after preamble and file meta
    size: int  # bytes of the dataset, what goes on the wire
    # the whole dataset, when the scan's one read of the file held all of it (a small file, within
    # KEEP_BYTES a scan): the worker sends it without opening the file again (issue 13 item 6)
    data: bytes | None = field(default=None, compare=False, repr=False)
    # with ``scan(..., identities=True)``: the file's mtime from the scan's own fstat, what a
    # job's journal records with its size (offset + size); -1 when not taken
    mtime_ns: int = field(default=-1, compare=False)

    @property
    def context(self) -> tuple[str, str]:
        """The presentation context (abstract syntax, transfer syntax) this file needs."""
        return (self.sop_class_uid, self.transfer_syntax_uid)


@dataclass(frozen=True, slots=True, kw_only=True)
class Skipped:
    """A file that will not be sent, and why (not DICOM, no file meta, unreadable)."""

    index: int
    path: str
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Task:
    """One association: the contexts to propose and the files to send over it, in order."""

    group: int
    worker: int
    contexts: tuple[tuple[str, str], ...]
    files: tuple[FileEntry, ...]

    @property
    def bytes(self) -> int:
        return sum(entry.size for entry in self.files)


@dataclass(slots=True)
class Scan:
    """What the scan found: sendable files and skipped ones, in file list order."""

    entries: list[FileEntry] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        return sum(entry.size for entry in self.entries)


_REQUIRED_META = ("MediaStorageSOPClassUID", "MediaStorageSOPInstanceUID", "TransferSyntaxUID")
_META_ELEMENTS = {0x0002: "MediaStorageSOPClassUID", 0x0003: "MediaStorageSOPInstanceUID",
                  0x0010: "TransferSyntaxUID"}  # of group 0002
_DATASET_TAGS = {0x00080016: 0, 0x00080018: 1}  # SOP Class UID, SOP Instance UID
_HEAD_BYTES = 8192  # what the fast scan reads; a file whose meta and first elements need more goes to pydicom
KEEP_BYTES = 32 << 20  # small files' datasets kept from the scan, at most, per scanned chunk of the file list
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})
_EXPLICIT = struct.Struct("<HH2sH")
_IMPLICIT = struct.Struct("<HHI")
_U32 = struct.Struct("<I")
_IMPLICIT_LE = "1.2.840.10008.1.2"
_EXPLICIT_LE = ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2.4", "1.2.840.10008.1.2.5")  # prefixes: LE and encapsulated


class _Unusual(Exception):
    """The fast scan met something it does not parse (undefined length, big endian, a long
    head): pydicom decides for this file."""


def scan_file(index: int, path: str, *, keep_data: bool = False, identity: bool = False) -> FileEntry | Skipped:
    """Read the preamble, the file meta and the dataset's first elements of ``path`` to
    decide whether and how to send it.

    The C-STORE-RQ names the SOP Class and Instance UIDs of the dataset, as DCMTK's storescu
    does: some files carry other values in their file meta (pydicom's rtplan.dcm and
    rtdose.dcm), and a receiver checks the command against the dataset. A file without the
    three file meta elements is skipped here rather than failing later.

    Most files are read by a ``struct`` walk of their first 8 KiB (~20 us a file, where
    pydicom takes ~300 us and 0.2 s to import: a 5,000-file job would spend longer planning
    than DCMTK's storescu spends sending); anything unusual goes to pydicom, as before.
    With ``keep_data``, a file that one read held whole keeps its dataset bytes in the entry:
    a 5 KiB file then costs its worker no open, read and close (each of which hands the GIL
    to another worker thread of ``-j N``). With ``identity``, the entry carries the file's
    mtime from an fstat of the open file (a job's journal needs it; a stat by path in the
    resume filter cost ~3 µs a file more).
    """
    try:
        size, head, mtime_ns = _size_and_head(path, identity)
        if len(head) < 132 or head[128:132] != b"DICM":
            return Skipped(index=index, path=path, reason="not a DICOM file (no DICM preamble)")
        try:
            meta, offset, uids = _fast_head(head)
        except (_Unusual, struct.error, UnicodeDecodeError):
            return _scan_with_pydicom(index, path)
    except OSError as exc:
        return Skipped(index=index, path=path, reason=f"cannot read: {exc.strerror or exc}")
    return _entry(index, path, size, meta, offset, uids, head if keep_data and len(head) == size else None, mtime_ns)


def _size_and_head(path: str, identity: bool = False) -> tuple[int, bytes, int]:
    """The file's size, first ``_HEAD_BYTES`` and (with ``identity``) mtime: one open, read,
    close (no buffered file object, no second lookup of the path); an fstat only when the
    read filled the head or the mtime is asked for, since a shorter read is the whole file
    (one syscall less a small file: each is a GIL hand-off)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        head = os.read(fd, _HEAD_BYTES)
        if not identity and len(head) < _HEAD_BYTES:
            return len(head), head, -1
        st = os.fstat(fd)
        return st.st_size, head, st.st_mtime_ns if identity else -1
    finally:
        os.close(fd)


def _entry(index: int, path: str, size: int, meta: dict[str, str], offset: int, uids: tuple[str, str],
           whole: bytes | None = None, mtime_ns: int = -1) -> FileEntry | Skipped:
    """The entry for a scanned file, with its dataset's bytes when ``whole`` is the whole file."""
    missing = [kw for kw in _REQUIRED_META if not meta.get(kw)]
    if missing:
        return Skipped(index=index, path=path, reason=f"file meta lacks {', '.join(missing)}")
    if size <= offset:
        return Skipped(index=index, path=path, reason="no dataset after the file meta")
    return FileEntry(
        index=index,
        path=path,
        sop_class_uid=uids[0] or meta["MediaStorageSOPClassUID"],
        sop_instance_uid=uids[1] or meta["MediaStorageSOPInstanceUID"],
        transfer_syntax_uid=meta["TransferSyntaxUID"],
        offset=offset,
        size=size - offset,
        data=None if whole is None else whole[offset:],
        mtime_ns=mtime_ns,
    )


def _text(raw: bytes) -> str:
    return raw.decode("ascii").rstrip("\0 ")


def _fast_head(head: bytes) -> tuple[dict[str, str], int, tuple[str, str]]:
    """(file meta UIDs, dataset offset, dataset's SOP Class/Instance UIDs) from a file's head.

    The file meta is Explicit VR Little Endian (PS3.10 7.1); the dataset's first elements
    are read in Implicit or Explicit VR Little Endian up to (0008,0018).
    """
    meta: dict[str, str] = {}
    pos, end = 132, len(head)
    while pos + 8 <= end:  # _explicit_value inlined: ~9 elements a file, 5,000 files before the first C-STORE
        group, element, vr, length = _EXPLICIT.unpack_from(head, pos)
        if group != 0x0002:
            break
        start = pos + 8
        if vr in _LONG_VRS:
            (length,) = _U32.unpack_from(head, start)
            start += 4
        pos = start + length
        if length == 0xFFFFFFFF or pos > end:
            raise _Unusual("undefined length or value past the head")
        name = _META_ELEMENTS.get(element)
        if name:
            meta[name] = head[start:pos].decode("ascii").rstrip("\0 ")
    else:
        raise _Unusual("file meta runs past the head")
    syntax = meta.get("TransferSyntaxUID", "")
    if syntax == "1.2.840.10008.1.2.1.99":
        return meta, pos, ("", "")  # deflated: the file meta decides (the dataset would have to be inflated)
    if syntax != _IMPLICIT_LE and not syntax.startswith(_EXPLICIT_LE):
        raise _Unusual(f"transfer syntax {syntax!r}")
    return meta, pos, _dataset_uids_le(head, pos, explicit=syntax != _IMPLICIT_LE)


def _explicit_value(head: bytes, pos: int, vr: bytes, length: int) -> tuple[int, bytes]:
    """The value of the Explicit VR element at ``pos`` and where the next one starts."""
    if vr in _LONG_VRS:
        (length,) = _U32.unpack_from(head, pos + 8)
        start = pos + 12
    else:
        start = pos + 8
    if length == 0xFFFFFFFF or start + length > len(head):
        raise _Unusual("undefined length or value past the head")
    return start + length, head[start : start + length]


def _dataset_uids_le(head: bytes, pos: int, *, explicit: bool) -> tuple[str, str]:
    """SOP Class and Instance UIDs among the dataset's first elements ("" where absent)."""
    found = ["", ""]
    while True:
        if pos + 8 > len(head):
            raise _Unusual("dataset's first elements run past the head")
        if explicit:
            group, element, vr, length = _EXPLICIT.unpack_from(head, pos)
            end, value = _explicit_value(head, pos, vr, length)
        else:
            group, element, length = _IMPLICIT.unpack_from(head, pos)
            end = pos + 8 + length
            if length == 0xFFFFFFFF or end > len(head):
                raise _Unusual("undefined length or value past the head")
            value = head[pos + 8 : end]
        tag = group << 16 | element
        if tag > 0x00080018:
            return found[0], found[1]
        slot = _DATASET_TAGS.get(tag)
        if slot is not None:
            found[slot] = _text(value)
            if slot == 1:
                return found[0], found[1]
        pos = end


def _scan_with_pydicom(index: int, path: str) -> FileEntry | Skipped:
    """pydicom's reading of the file meta and the dataset's first elements (any encoding)."""
    from pydicom.errors import InvalidDicomError
    from pydicom.filereader import _read_file_meta_info, read_preamble

    try:
        size = os.path.getsize(path)
        with open(path, "rb") as fh:
            read_preamble(fh, False)
            meta = _read_file_meta_info(fh)
            offset = fh.tell()
            uids = dataset_uids(fh, str(meta.get("TransferSyntaxUID", "")).rstrip("\0 "))
    except InvalidDicomError:
        return Skipped(index=index, path=path, reason="not a DICOM file (no DICM preamble)")
    except OSError as exc:
        return Skipped(index=index, path=path, reason=f"cannot read: {exc.strerror or exc}")
    except Exception as exc:  # pydicom raises many kinds on garbage after 'DICM'
        return Skipped(index=index, path=path, reason=f"bad file meta: {exc}")
    values = {kw: str(meta.get(kw, "") or "").rstrip("\0 ") for kw in _REQUIRED_META}
    return _entry(index, path, size, values, offset, uids)


def dataset_uids(fh: BinaryIO, transfer_syntax: str) -> tuple[str, str]:
    """SOP Class UID and SOP Instance UID of the dataset at ``fh`` ("" where absent or unreadable).

    Parsing stops after (0008,0018), so only the first few elements are read whatever the
    file's size. A deflated dataset is left to the file meta (it would have to be inflated).
    """
    from pydicom.filereader import read_dataset
    from pydicom.uid import UID

    syntax = UID(transfer_syntax)
    if syntax.is_deflated or not syntax.is_transfer_syntax:
        return "", ""
    try:
        ds = read_dataset(fh, syntax.is_implicit_VR, syntax.is_little_endian,
                          stop_when=lambda tag, _vr, _length: tag > 0x00080018)
        return str(ds.get("SOPClassUID", "") or "").rstrip("\0 "), str(ds.get("SOPInstanceUID", "") or "").rstrip("\0 ")
    except Exception:  # noqa: BLE001 - pydicom raises many kinds on garbage; the file meta decides then
        return "", ""


def scan(paths: Sequence[str], *, identities: bool = False) -> Scan:
    """Scan every file of the (sorted) list; the index of each is its list position; with
    ``identities``, each entry's mtime too (``scan_file``)."""
    result = Scan()
    kept = 0
    for index, path in enumerate(paths):
        item = scan_file(index, path, keep_data=kept < KEEP_BYTES, identity=identities)
        if isinstance(item, FileEntry):
            kept += len(item.data or b"")
            result.entries.append(item)
        else:
            result.skipped.append(item)
    return result


def context_groups(entries: Iterable[FileEntry], limit: int = MAX_CONTEXTS) -> list[list[tuple[str, str]]]:
    """Distinct contexts in order of first appearance, cut into groups of at most ``limit``."""
    seen: dict[tuple[str, str], None] = {}
    for entry in entries:
        seen.setdefault(entry.context, None)
    pairs = list(seen)
    return [pairs[start : start + limit] for start in range(0, len(pairs), limit)]


def plan(entries: Sequence[FileEntry], workers: int, limit: int = MAX_CONTEXTS) -> list[Task]:
    """Split the files into tasks: per context group, files dealt round-robin to workers.

    Round-robin over the sorted list keeps each worker's share of files (and, for similar
    files, of bytes) within one file of the others, and keeps each share in list order.
    """
    if workers < 1:
        raise ValueError("workers must be at least 1")
    groups = context_groups(entries, limit)
    group_of = {pair: number for number, group in enumerate(groups) for pair in group}
    shares: dict[tuple[int, int], list[FileEntry]] = {}
    for dealt, entry in enumerate(entries):
        group = group_of[entry.context]
        shares.setdefault((group, dealt % workers), []).append(entry)
    tasks = []
    for (group, worker), files in sorted(shares.items()):
        needed = {entry.context for entry in files}
        contexts = tuple(pair for pair in groups[group] if pair in needed)
        tasks.append(Task(group=group, worker=worker, contexts=contexts, files=tuple(files)))
    return tasks


def tasks_for_worker(tasks: Iterable[Task], worker: int) -> list[Task]:
    """The tasks one worker runs, one association after the other."""
    return [task for task in tasks if task.worker == worker]
