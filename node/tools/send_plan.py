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


def scan_file(index: int, path: str) -> FileEntry | Skipped:
    """Read the preamble, the file meta and the dataset's first elements of ``path`` to
    decide whether and how to send it.

    The C-STORE-RQ names the SOP Class and Instance UIDs of the dataset, as DCMTK's storescu
    does: some files carry other values in their file meta (pydicom's rtplan.dcm and
    rtdose.dcm), and a receiver checks the command against the dataset. A file without the
    three file meta elements is skipped here rather than failing later.
    """
    from pydicom.errors import InvalidDicomError
    from pydicom.filereader import _read_file_meta_info, read_preamble

    try:
        size = os.path.getsize(path)
        with open(path, "rb") as fh:
            read_preamble(fh, False)
            meta = _read_file_meta_info(fh)
            offset = fh.tell()
            sop_class, sop_instance = dataset_uids(fh, str(meta.get("TransferSyntaxUID", "")).rstrip("\0 "))
    except InvalidDicomError:
        return Skipped(index=index, path=path, reason="not a DICOM file (no DICM preamble)")
    except OSError as exc:
        return Skipped(index=index, path=path, reason=f"cannot read: {exc.strerror or exc}")
    except Exception as exc:  # pydicom raises many kinds on garbage after 'DICM'
        return Skipped(index=index, path=path, reason=f"bad file meta: {exc}")
    missing = [kw for kw in _REQUIRED_META if not meta.get(kw)]
    if missing:
        return Skipped(index=index, path=path, reason=f"file meta lacks {', '.join(missing)}")
    if size <= offset:
        return Skipped(index=index, path=path, reason="no dataset after the file meta")
    return FileEntry(
        index=index,
        path=path,
        sop_class_uid=sop_class or str(meta.MediaStorageSOPClassUID).rstrip("\0 "),
        sop_instance_uid=sop_instance or str(meta.MediaStorageSOPInstanceUID).rstrip("\0 "),
        transfer_syntax_uid=str(meta.TransferSyntaxUID).rstrip("\0 "),
        offset=offset,
        size=size - offset,
    )


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


def scan(paths: Sequence[str]) -> Scan:
    """Scan every file of the (sorted) list; the index of each is its list position."""
    result = Scan()
    for index, path in enumerate(paths):
        item = scan_file(index, path)
        if isinstance(item, FileEntry):
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
