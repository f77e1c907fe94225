"""The writer's journal: acknowledged instances, durable in one flush per group (issue 12).

A C-STORE success needs its instance durable, not yet at its final path. The writer appends
each instance of a group (the whole file as it will be stored, and its index row) to one
journal file, fdatasyncs that file once for the whole group, then answers every request of
the group. Files reach their final paths and the index later (``node.storage.Store.materialise``
in the writer's background thread); the index records, in the same transaction as the rows,
the journal sequence number up to which everything is materialised (the checkpoint). On
start the writer materialises every record past the checkpoint before it takes requests.

File layout (little endian)::

    [file header, HEADER_SIZE bytes]  b"NODEJRNL", u32 version, 32 ASCII hex journal id, zeros
    [record][record]...               appended from HEADER_SIZE on; after a full checkpoint
                                      the writer starts again at HEADER_SIZE (a new lap)

    record = RECORD header  magic b"NJR1", u32 crc32, u64 seq, u32 body length, u64 data length
             body           msgpack map: relpath, path (final, absolute), the index row fields
             data           the file's bytes: preamble, file meta, dataset

The CRC covers seq, lengths, body and data. A scan starts at HEADER_SIZE and follows records
while each one is whole (magic, lengths inside the file, CRC) and its seq is the previous one
plus 1; the first record of a lap may have any seq. That stops at the end of the last group
that was flushed: bytes of a group a crash interrupted fail the CRC, and records of an
earlier lap further on have lower numbers. Nothing in this module flushes except
``append`` (one fdatasync) and ``create`` (the new file and its directory).
"""

from __future__ import annotations

import os
import struct
import uuid
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import msgpack

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
_ZEROS = bytes(1 << 20)


def path_for(store_directory: Path) -> Path:
    """Where a store keeps its journal (inside the reserved ``.incoming`` directory)."""
    return Path(store_directory) / ".incoming" / "journal"


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
    """One journaled instance: where its data lies in the journal file."""

    seq: int
    offset: int  # of the record header
    data_offset: int
    data_length: int
    body: dict

    @property
    def end(self) -> int:
        return self.data_offset + self.data_length


def _crc(seq: int, body: bytes, parts: Sequence[bytes | memoryview], data_length: int) -> int:
    crc = zlib.crc32(_SEQ_LENS.pack(seq, len(body), data_length))
    crc = zlib.crc32(body, crc)
    for part in parts:
        crc = zlib.crc32(part, crc)
    return crc


class Journal:
    """The journal file of one store; only the writer's main thread appends to it."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.fd = -1
        self.journal_id = ""
        self.offset = HEADER_SIZE  # where the next record goes
        self.allocated = 0  # the file's size: appends below it overwrite blocks already written
        self.next_seq = 1
        self.lap_start = True  # the next record starts a lap (any seq allowed)

    # ----- opening and scanning ------------------------------------------------------------

    def open(self) -> None:
        """Open the journal, creating it (durably) when missing; read its id."""
        try:
            if not self.path.exists():
                self._create()
            self.fd = os.open(self.path, os.O_RDWR)
            header = os.pread(self.fd, 44, 0)
            self.allocated = os.fstat(self.fd).st_size
        except OSError as exc:
            raise StorageError(f"cannot open journal {self.path}: {exc.strerror}") from None
        if header[:8] != MAGIC or struct.unpack("<I", header[8:12])[0] != VERSION:
            raise StorageError(f"{self.path} is not a version {VERSION} journal")
        self.journal_id = header[12:44].decode("ascii")

    def _create(self) -> None:
        tmp = self.path.with_name(self.path.name + ".new")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            header = MAGIC + struct.pack("<I", VERSION) + uuid.uuid4().hex.encode("ascii")
            os.write(fd, header.ljust(HEADER_SIZE, b"\x00"))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, self.path)
        dfd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    def records(self) -> Iterator[Record]:
        """The records of the current lap, in order (see the module docstring)."""
        return scan(self.fd)

    def start_after_recovery(self, last_seq: int) -> None:
        """Everything scanned is materialised: begin a new lap far above ``last_seq``."""
        self.offset = HEADER_SIZE
        self.next_seq = last_seq + RESTART_GAP
        self.lap_start = True

    # ----- appending -----------------------------------------------------------------------

    def append(self, entries: Sequence[Entry]) -> list[Record]:
        """Write every entry after the last record, then one fdatasync; the records written."""
        buffers: list[bytes | memoryview] = []
        records: list[Record] = []
        offset = self.offset
        seq = self.next_seq
        for entry in entries:
            body = msgpack.packb(entry.body, use_bin_type=True)
            length = sum(len(p) for p in entry.parts)
            head = RECORD.pack(RECORD_MAGIC, _crc(seq, body, entry.parts, length), seq, len(body), length)
            buffers.append(head)
            buffers.append(body)
            buffers.extend(entry.parts)
            data_offset = offset + RECORD.size + len(body)
            records.append(Record(seq, offset, data_offset, length, entry.body))
            offset = data_offset + length
            seq += 1
        try:
            _pwritev_all(self.fd, buffers, self.offset)
            if offset > self.allocated:
                self._preallocate(offset)
            os.fdatasync(self.fd)
        except OSError as exc:
            raise StorageError(f"journal write failed: {exc.strerror}") from None
        self.offset = offset
        self.next_seq = seq
        self.lap_start = False
        return records

    def _preallocate(self, end: int) -> None:
        """Zeros from ``end`` (the group's end, past the file's) for PREALLOCATE bytes, flushed
        with the group. Best effort: on a full disk the group is written all the same."""
        try:
            _pwritev_all(self.fd, [memoryview(_ZEROS)] * (PREALLOCATE // len(_ZEROS)), end)
            self.allocated = end + PREALLOCATE
        except OSError:
            self.allocated = end

    def restart_lap(self) -> None:
        """Append from the start again (every record so far is materialised and checkpointed)."""
        self.offset = HEADER_SIZE
        self.lap_start = True

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


_IOV_MAX = 512


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


def scan(fd: int, *, read_data: bool = True) -> Iterator[Record]:
    """Follow the chain of whole records from HEADER_SIZE (module docstring).

    ``read_data=False`` checks only headers and bodies (``nodectl status``): a count that may
    include the torn tail of a group a crash interrupted, never used to decide anything.
    """
    size = os.fstat(fd).st_size
    offset = HEADER_SIZE
    previous: int | None = None
    while offset + RECORD.size <= size:
        magic, crc, seq, body_len, data_len = RECORD.unpack(os.pread(fd, RECORD.size, offset))
        if magic != RECORD_MAGIC or (previous is not None and seq != previous + 1):
            return
        data_offset = offset + RECORD.size + body_len
        if data_offset + data_len > size:
            return
        body_bytes = os.pread(fd, body_len, offset + RECORD.size)
        if read_data:
            data = _pread_all(fd, data_len, data_offset)
            if _crc(seq, body_bytes, [data], data_len) != crc:
                return
        try:
            body = msgpack.unpackb(body_bytes, raw=False)
        except (ValueError, msgpack.exceptions.ExtraData):
            return
        if not isinstance(body, dict):
            return
        yield Record(seq, offset, data_offset, data_len, body)
        previous = seq
        offset = data_offset + data_len


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
    """Records past ``checkpoint`` in the journal at ``path`` (headers only; for status)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return {"instances": 0, "bytes": 0}
    try:
        pending = [r for r in scan(fd, read_data=False) if r.seq > checkpoint]
    finally:
        os.close(fd)
    return {"instances": len(pending), "bytes": sum(r.data_length for r in pending)}


def journal_id(path: Path) -> str:
    """The id in a journal file's header ('' when there is no journal)."""
    try:
        with open(path, "rb") as fh:
            header = fh.read(44)
    except FileNotFoundError:
        return ""
    return header[12:44].decode("ascii", "replace") if header[:8] == MAGIC else ""
