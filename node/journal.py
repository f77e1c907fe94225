"""The writer's journal: acknowledged instances, durable in one flush per group (issue 12).

A C-STORE success needs its instance durable, not yet at its final path. The writer appends
each instance of a group (the whole file as it will be stored, and its index row) to one
journal file, fdatasyncs that file once for the whole group, then answers every request of
the group. Files reach their final paths and the index later (``node.storage.Store.materialise``
in the writer's background thread); the index records, in the same transaction as the rows,
the journal sequence number up to which everything is materialised (the checkpoint). On
start the writer materialises every record past the checkpoint before it takes requests.

The journal is two files, segments (``journal`` and ``journal.1``), written in turn: once the
segment being written holds more than the writer's lap size, the next group starts a new lap
at the head of the other segment, provided every record of that one is materialised (its
last number at or below the checkpoint). A steady stream thus never waits for the
materialiser to run dry, as a single file had to before it could go back to its head: the
materialiser only has to finish the older segment while the newer one fills.

Segment layout (little endian)::

    [file header, HEADER_SIZE bytes]  b"NODEJRNL", u32 version, 32 ASCII hex journal id, zeros
                                      (both segments carry the id of ``journal``)
    [record][record]...               appended from HEADER_SIZE on; a new lap starts there again

    record = RECORD header  magic b"NJR1", u32 crc32, u64 seq, u32 body length, u64 data length
             body           msgpack map: relpath, path (final, absolute), the index row fields
             data           the file's bytes: preamble, file meta, dataset

The CRC covers seq, lengths, body and data. Numbers grow across segments and laps. A scan of
a segment starts at HEADER_SIZE and follows records while each one is whole (magic, lengths
inside the file, CRC) and its seq is the previous one plus 1; the first record of a lap may
have any seq. That stops at the end of the last group that was flushed: bytes of a group a
crash interrupted fail the CRC, and records of an earlier lap further on have lower numbers.
The journal's records are both segments' chains in order of their numbers. Nothing in this
module flushes except ``append`` (one ``RWF_DSYNC`` write or one fdatasync) and ``open`` (a new
segment and its directory).
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
from isal.isal_zlib import crc32

from node.config import NodeConfig
from node.db import POSTGRESQL, dialect_of
from node.errors import StorageError

MAGIC = b"NODEJRNL"
VERSION = 1
HEADER_SIZE = 4096
RECORD = struct.Struct("<4sIQIQ")
RECORD_MAGIC = b"NJR1"
_SEQ_LENS = struct.Struct("<QIQ")
# After a restart the next lap starts this far above the last number seen, so that a record
# a crash left behind a shorter new record can never continue the new lap's chain.
RESTART_GAP = 1 << 32
# An append that grows the file costs its fdatasync the new blocks' allocation and the inode
# (size, extents, bitmaps: several writes where an overwrite needs one; on this machine's
# ext4 0.28 against 0.21 ms per 5 KiB record). When a group passes the end of the file, the
# file is extended by this much of zeros in the same flush, so the next ~700 small groups
# overwrite blocks already written. A scan stops at the zeros (no record magic).
PREALLOCATE = 4 << 20
# ... but only after a small group. Zeros are written (and flushed) once per byte of journal,
# so ahead of large records they double the bytes the disk takes, for a metadata update that
# costs about as much as writing 30 KB here: a group past the end whose records hold at least
# this much grows the file itself (512 KiB instances: 4 MiB of zeros written with every eighth
# group of a new or growing segment; docs/benchmarks.md, 2026-12-03, 15:41–17:25 UTC).
ZERO_FILL_MAX_GROUP = 64 << 10
# The writer holds an exclusive lock on the first segment while it (or the materialiser
# process it started, which inherits the descriptor) lives; a writer restarted after a crash
# waits this long for the old pair to be gone before it gives up.
LOCK_WAIT_S = 30.0
_ZEROS = bytes(1 << 20)


def path_for(store_directory: Path) -> Path:
    """Where a store keeps its journal (inside the reserved ``.incoming`` directory): the
    first segment's path, which names the journal (its id, ``nodectl status``)."""
    return Path(store_directory) / ".incoming" / "journal"


def segment_paths(path: Path) -> list[Path]:
    """The journal's segment files: ``path`` itself, then ``path.1``."""
    path = Path(path)
    return [path, path.with_name(path.name + ".1")]


def enabled(config: NodeConfig) -> bool:
    """The journal is on unless configured off or the index is a cluster's PostgreSQL: there
    a commitment request may reach another node's tracker, which cannot see this journal."""
    return config.store.journal and dialect_of(config.database) != POSTGRESQL


@dataclass(frozen=True, slots=True)
class Entry:
    """One instance to journal: its body (final path, index row) and the file's bytes."""

    body: dict
    parts: Sequence[bytes | memoryview]


@dataclass(frozen=True, slots=True)
class Record:
    """One journaled instance: where its data lies in the journal (segment and offset)."""

    seq: int
    offset: int  # of the record header
    data_offset: int
    data_length: int
    body: dict
    segment: int = 0

    @property
    def end(self) -> int:
        return self.data_offset + self.data_length


def record_body(msg: Any, path: str, now: float) -> dict:
    """A journal record's body for a ``WriteInstance`` (``msg``): where the file goes and its
    index row. The same for the writer's journal and the workers' (``node.worker_journal``)."""
    return {
        "uid": msg.sop_instance_uid, "path": path, "relpath": msg.relpath, "sop_class_uid": msg.sop_class_uid,
        "transfer_syntax": msg.transfer_syntax, "study_uid": msg.study_uid, "series_uid": msg.series_uid,
        "patient_id": msg.patient_id, "calling_aet": msg.calling_aet, "called_aet": msg.called_aet, "received_at": now,
        "assoc": msg.assoc_id,
    }


def _crc(seq: int, body: bytes, parts: Sequence[bytes | memoryview], data_length: int) -> int:
    """zlib's CRC-32 of the record, computed by ISA-L: the same values (journals written
    before stay readable) at ~100 GB/s here against zlib's 5-6, which cost a 512 KiB instance
    ~85 µs in the worker before its flush and again in the writer reading it back."""
    crc = crc32(_SEQ_LENS.pack(seq, len(body), data_length))
    crc = crc32(body, crc)
    for part in parts:
        crc = crc32(part, crc)
    return crc


@dataclass(slots=True)
class _Segment:
    """One segment file and where its current lap stands."""

    path: Path
    fd: int = -1
    offset: int = HEADER_SIZE  # where its next record goes
    allocated: int = 0  # the file's size: appends below it overwrite blocks already written
    last_seq: int = 0  # the highest number of its current lap (0: nothing that must be kept)


class Journal:
    """The journal of one store; only the writer's main thread appends to it."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.segments = [_Segment(p) for p in segment_paths(self.path)]
        self.current = 0  # the segment appends go to
        self.journal_id = ""
        self.next_seq = 1

    @property
    def fd(self) -> int:
        """The file descriptor of the segment being written."""
        return self.segments[self.current].fd

    @property
    def offset(self) -> int:
        """Where the next record goes in the segment being written."""
        return self.segments[self.current].offset

    @property
    def allocated(self) -> int:
        return self.segments[self.current].allocated

    def fd_of(self, record: Record) -> int:
        """The file descriptor of the segment that holds ``record``."""
        return self.segments[record.segment].fd

    # ----- opening and scanning ------------------------------------------------------------

    def open(self) -> None:
        """Open both segments, creating them (durably) when missing; read the journal's id.

        A second segment whose id is not the first one's belongs to another journal (the first
        was removed and made again): its records are not this journal's, so it is made anew."""
        first, second = self.segments
        try:
            if not first.path.exists():
                _create(first.path, uuid.uuid4().hex)
            self.journal_id = _open_segment(first)
            _lock(first)
            if not second.path.exists():
                _create(second.path, self.journal_id)
            if _open_segment(second) != self.journal_id:
                os.close(second.fd)
                _create(second.path, self.journal_id)
                _open_segment(second)
        except OSError as exc:
            raise StorageError(f"cannot open journal {self.path}: {exc.strerror}") from None

    def records(self) -> Iterator[Record]:
        """The records of both segments' current laps, in order of their numbers."""
        found = [record for n, seg in enumerate(self.segments) for record in scan(seg.fd, segment=n)]
        return iter(sorted(found, key=lambda r: r.seq))

    def start_after_recovery(self, last_seq: int) -> None:
        """Everything scanned is materialised: begin a new lap in the first segment, numbered
        far above ``last_seq``; neither segment holds anything that must be kept."""
        for seg in self.segments:
            seg.offset = HEADER_SIZE
            seg.last_seq = 0
        self.current = 0
        self.next_seq = last_seq + RESTART_GAP

    # ----- appending -----------------------------------------------------------------------

    def append(self, entries: Sequence[Entry]) -> list[Record]:
        """Write every entry after the last record and flush it once; the records written.

        Into space already preallocated (the common case) the group is one ``pwritev2`` with
        ``RWF_DSYNC``: the flush of ``fdatasync`` for the range written, in the same system
        call (one GIL release less on the writer's main thread per group); else, or when the
        kernel refuses the flag or writes short, ``pwritev`` then ``fdatasync`` as before. A
        group that passes the file's end extends it: by PREALLOCATE bytes of zeros when it is
        small, by itself when it holds ZERO_FILL_MAX_GROUP bytes or more."""
        seg = self.segments[self.current]
        buffers: list[bytes | memoryview] = []
        records: list[Record] = []
        offset = seg.offset
        seq = self.next_seq
        for entry in entries:
            body = msgpack.packb(entry.body, use_bin_type=True)
            length = sum(len(p) for p in entry.parts)
            head = RECORD.pack(RECORD_MAGIC, _crc(seq, body, entry.parts, length), seq, len(body), length)
            buffers.append(head)
            buffers.append(body)
            buffers.extend(entry.parts)
            data_offset = offset + RECORD.size + len(body)
            records.append(Record(seq, offset, data_offset, length, entry.body, self.current))
            offset = data_offset + length
            seq += 1
        try:
            if offset > seg.allocated or not _pwritev_dsync(seg.fd, buffers, seg.offset, offset - seg.offset):
                _pwritev_all(seg.fd, buffers, seg.offset)
                if offset > seg.allocated and offset - seg.offset < ZERO_FILL_MAX_GROUP:
                    _preallocate(seg, offset)
                seg.allocated = max(seg.allocated, offset)
                os.fdatasync(seg.fd)
        except OSError as exc:
            raise StorageError(f"journal write failed: {exc.strerror}") from None
        seg.offset = offset
        seg.last_seq = seq - 1
        self.next_seq = seq
        return records

    @property
    def other_last_seq(self) -> int:
        """The highest number the segment not being written still holds (0: none)."""
        return self.segments[1 - self.current].last_seq

    def switch(self) -> None:
        """Start the next lap at the head of the other segment; the caller has made sure that
        every record there is materialised and checkpointed (``other_last_seq``)."""
        self.current = 1 - self.current
        seg = self.segments[self.current]
        seg.offset = HEADER_SIZE
        seg.last_seq = 0

    def close(self) -> None:
        for seg in self.segments:
            if seg.fd >= 0:
                os.close(seg.fd)
                seg.fd = -1


def _create(path: Path, journal_id: str) -> None:
    """A new, empty segment carrying ``journal_id``: written, flushed, renamed, directory flushed."""
    tmp = path.with_name(path.name + ".new")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        header = MAGIC + struct.pack("<I", VERSION) + journal_id.encode("ascii")
        os.write(fd, header.ljust(HEADER_SIZE, b"\x00"))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def _open_segment(seg: _Segment) -> str:
    """Open a segment file for appending; the journal id in its header."""
    seg.fd = os.open(seg.path, os.O_RDWR)
    header = os.pread(seg.fd, 44, 0)
    seg.allocated = os.fstat(seg.fd).st_size
    if header[:8] != MAGIC or struct.unpack("<I", header[8:12])[0] != VERSION:
        os.close(seg.fd)
        seg.fd = -1
        raise StorageError(f"{seg.path} is not a version {VERSION} journal")
    return header[12:44].decode("ascii")


def _lock(seg: _Segment) -> None:
    """Take the journal's lock (``flock`` on the first segment's open file, shared with the
    materialiser process through the inherited descriptor): a second writer of the same
    store, or one restarted while the materialiser of the killed one still finishes its
    last system call, waits here instead of replaying beside it."""
    deadline = time.monotonic() + LOCK_WAIT_S
    while True:
        try:
            fcntl.flock(seg.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                os.close(seg.fd)
                seg.fd = -1
                raise StorageError(f"{seg.path} is locked by another writer of this store") from None
            time.sleep(0.05)


def _preallocate(seg: _Segment, end: int) -> None:
    """Zeros from ``end`` (the group's end, past the file's) for PREALLOCATE bytes, flushed
    with the group. Best effort: on a full disk the group is written all the same."""
    try:
        _pwritev_all(seg.fd, [memoryview(_ZEROS)] * (PREALLOCATE // len(_ZEROS)), end)
        seg.allocated = end + PREALLOCATE
    except OSError:
        seg.allocated = end


_IOV_MAX = 512


_RWF_DSYNC = getattr(os, "RWF_DSYNC", 0)
_dsync_refused: list[bool] = []  # set once the kernel or filesystem refuses the flag


def _pwritev_dsync(fd: int, buffers: list[bytes | memoryview], offset: int, total: int) -> bool:
    """One ``pwritev2(..., RWF_DSYNC)`` of the whole group; False when it did not write and
    flush all of it (too many buffers, a short write, the flag refused): then the caller
    writes it again and fdatasyncs."""
    if not _RWF_DSYNC or _dsync_refused or len(buffers) > _IOV_MAX:
        return False
    views = [memoryview(b).cast("B") for b in buffers if len(b)]
    try:
        return os.pwritev(fd, views, offset, _RWF_DSYNC) == total
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOSYS):
            raise
        _dsync_refused.append(True)
        return False


def _pwritev_all(fd: int, buffers: list[bytes | memoryview], offset: int) -> None:
    """pwritev in slices of at most _IOV_MAX buffers, going on after short writes."""
    views = [memoryview(b).cast("B") for b in buffers if len(b)]
    while views:
        chunk = views[:_IOV_MAX]
        n = os.pwritev(fd, chunk, offset)
        offset += n
        while n and views:
            if n >= len(views[0]):
                n -= len(views[0])
                views.pop(0)
            else:
                views[0] = views[0][n:]
                n = 0


def scan(fd: int, *, read_data: bool = True, segment: int = 0) -> Iterator[Record]:
    """Follow the chain of whole records from HEADER_SIZE (module docstring).

    ``read_data=False`` checks only headers and bodies (``nodectl status``): a count that may
    include the torn tail of a group a crash interrupted, never used to decide anything.
    """
    size = os.fstat(fd).st_size
    offset = HEADER_SIZE
    previous: int | None = None
    while (record := read_record(fd, offset, size, read_data=read_data, segment=segment)) is not None:
        if previous is not None and record.seq != previous + 1:
            return
        yield record
        previous = record.seq
        offset = record.end


def read_record(fd: int, offset: int, size: int, *, read_data: bool = True, segment: int = 0) -> Record | None:
    """The whole record at ``offset`` of a segment ``size`` bytes long, or None (no record
    magic, lengths past the end, a CRC that fails: the end of the chain, or a torn group)."""
    if offset + RECORD.size > size:
        return None
    magic, crc, seq, body_len, data_len = RECORD.unpack(os.pread(fd, RECORD.size, offset))
    if magic != RECORD_MAGIC:
        return None
    data_offset = offset + RECORD.size + body_len
    if data_offset + data_len > size:
        return None
    body_bytes = os.pread(fd, body_len, offset + RECORD.size)
    if read_data:
        data = _pread_all(fd, data_len, data_offset)
        if _crc(seq, body_bytes, [data], data_len) != crc:
            return None
    try:
        body = msgpack.unpackb(body_bytes, raw=False)
    except (ValueError, msgpack.exceptions.ExtraData):
        return None
    if not isinstance(body, dict):
        return None
    return Record(seq, offset, data_offset, data_len, body, segment)


def _pread_all(fd: int, length: int, offset: int) -> bytes:
    chunks = []
    while length > 0:
        chunk = os.pread(fd, min(length, 1 << 24), offset)
        if not chunk:
            break
        chunks.append(chunk)
        offset += len(chunk)
        length -= len(chunk)
    return b"".join(chunks)


def backlog(path: Path, checkpoint: int) -> dict[str, int]:
    """Records past ``checkpoint`` in the journal at ``path``, both segments (headers only; for status)."""
    pending: list[Record] = []
    for segment in segment_paths(path):
        try:
            fd = os.open(segment, os.O_RDONLY)
        except FileNotFoundError:
            continue
        try:
            pending += [r for r in scan(fd, read_data=False) if r.seq > checkpoint]
        finally:
            os.close(fd)
    return {"instances": len(pending), "bytes": sum(r.data_length for r in pending)}


def journal_id(path: Path) -> str:
    """The id in a journal file's header ('' when there is no journal)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return ""
    try:
        return header_id(fd)
    finally:
        os.close(fd)


def header_id(fd: int) -> str:
    """The journal id in the header of an open segment ('' when it is not a version VERSION
    journal): the one place that reads a segment's header for another party than its writer."""
    header = os.pread(fd, 44, 0)
    if header[:8] != MAGIC or struct.unpack("<I", header[8:12])[0] != VERSION:
        return ""
    return header[12:44].decode("ascii", "replace")
