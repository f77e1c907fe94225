"""The journal of a ``nodectl send`` job (``--journal FILE``): every file's outcome, in SQLite.

Why a journal: a migration job of millions of files gets interrupted (Ctrl-C, kill -9, a
reboot, the network). Running the same command again must send only what the peer has not
acknowledged yet, and files changed since (size or mtime) again; the report must cover the
whole job across runs; Storage Commitment must be asked only for what is not committed yet.

No network here: the sender records outcomes as they come and asks what to skip.

Schema (one file per job; ``files.path`` is the key, the absolute path)::

    runs  (run, started, ended, exit_status, peer)
    files (path, size, mtime_ns, sop_class_uid, sop_instance_uid,
           outcome  'acknowledged' | 'failed' | 'skipped',
           status, reason, bytes, run, at,
           commit   NULL | 'committed' | 'failed', commit_reason)

Durability and cost: WAL with ``synchronous=NORMAL``: a commit is one write to the WAL, no
fsync, and it survives a kill -9 of the sender (the kernel has it); a power cut may lose the
commits since the last checkpoint and the log's last records (those files are sent again on
resume, which a peer stores as the same instance again).

An acknowledgment is made durable at once (``record_ack``), by the thread that received it and
before that thread's next C-STORE goes out, so that a kill -9 leaves unjournaled at most the
one instance in flight per association: one small framed record (the file's position in its
chunk, the status, the bytes, the time) stored into ``FILE-acks`` beside the journal, a file
mapped into memory (``AckLog``). What a position means (path, size, mtime, SOP class and
instance) went into the log once per chunk before its first C-STORE (``manifest``: one
record for 20,000 files, built in one loop). A store into a shared file mapping survives the
process's kill -9 (the page is the kernel's) and costs no system call, so the receiving
thread keeps the GIL. Why so little per acknowledgment (issue 15's journal target: ≤ 10% of
the throughput at -j 4): a SQLite commit per acknowledgment, tried first, cost its eight
``fcntl`` locks and four ``pwrite`` calls (~70 µs of CPU per file); one ``write()`` each, tried
next, ~20 µs and a GIL hand-off; a whole row in msgpack each (path, UIDs: the previous log),
15 µs of thread CPU around the call inside a sending job at -j 4 (~3 µs in a loop of its own:
in a job the network code keeps the caches cold), the position record 8.5 µs so measured. The
main thread writes every outcome into ``files`` grouped, one transaction at most every
``GROUP_SECONDS`` (``flush``: each group's pages written once, not rewritten by ten small
commits); at -j N most rows are written before that, ``WRITE_SLICE`` at a time, while every
association waits for its peer (``write_some``), in the group's open transaction. The log is
emptied when no worker runs (``settle``) and removed when the journal is closed; opening a journal moves the records a killed run left
there into ``files`` (a torn last record is ignored: its file is sent again). The log's lock
(``flock``) keeps a second ``nodectl send`` off a journal in use.
The file list is never held here: a chunk of it is looked up in one query (``acknowledged_among``).
"""

from __future__ import annotations

import fcntl
import json
import mmap
import os
import sqlite3
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import msgpack

ACKNOWLEDGED = "acknowledged"
FAILED = "failed"
SKIPPED = "skipped"
COMMITTED = "committed"
GROUP_SECONDS = 1.0  # outcomes wait at most this long in memory before their transaction (the log has the acks)
GROUP_FILES = 512  # ... or until this many are waiting
WRITE_SLICE = 16  # rows written at a time while the sender waits for its peers (``write_some``)
ACKS_SUFFIX = "-acks"  # the acknowledgment log beside the journal
ACKS_BYTES = 1 << 20  # the log's mapping at first; doubled when full (a manifest takes ~200 bytes a file, an ack 37)

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS runs (
        run INTEGER PRIMARY KEY, started REAL NOT NULL, ended REAL, exit_status INTEGER,
        peer TEXT NOT NULL DEFAULT '{}')""",
    """CREATE TABLE IF NOT EXISTS files (
        path TEXT PRIMARY KEY, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL,
        sop_class_uid TEXT NOT NULL DEFAULT '', sop_instance_uid TEXT NOT NULL DEFAULT '',
        outcome TEXT NOT NULL, status INTEGER, reason TEXT NOT NULL DEFAULT '',
        bytes INTEGER NOT NULL DEFAULT 0, run INTEGER NOT NULL, at REAL NOT NULL,
        commit_state TEXT, commit_reason TEXT NOT NULL DEFAULT '')""",
    # a journal of an earlier version had this index (commitment answers were matched by UID): every
    # acknowledgment's insert touched a random page of it, one WAL page written per file (strace)
    "DROP INDEX IF EXISTS files_instance",
)
_ACKS_TABLE = """CREATE TEMP TABLE acks (
    path TEXT NOT NULL, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, sop_class_uid TEXT NOT NULL,
    sop_instance_uid TEXT NOT NULL, outcome TEXT NOT NULL, status INTEGER, reason TEXT NOT NULL,
    bytes INTEGER NOT NULL, run INTEGER NOT NULL, at REAL NOT NULL)"""
_COLUMNS = "path, size, mtime_ns, sop_class_uid, sop_instance_uid, outcome, status, reason, bytes, run, at"

_ON_CONFLICT = (
    " ON CONFLICT (path) DO UPDATE SET size=excluded.size, mtime_ns=excluded.mtime_ns, sop_class_uid=excluded.sop_class_uid, "
    "sop_instance_uid=excluded.sop_instance_uid, outcome=excluded.outcome, status=excluded.status, "
    "reason=excluded.reason, bytes=excluded.bytes, run=excluded.run, at=excluded.at, "
    "commit_state=NULL, commit_reason=''"
)
_UPSERT = f"INSERT INTO files ({_COLUMNS}, commit_state, commit_reason) VALUES (?,?,?,?,?,?,?,?,?,?,?,NULL,'')" + _ON_CONFLICT
# what --report reads after a kill: files, with the log's acknowledgments (a temporary acks table) in place of their rows
_ALL_FILES = (f"(SELECT {_COLUMNS}, commit_state, commit_reason FROM files WHERE path NOT IN (SELECT path FROM acks) "
              f"UNION ALL SELECT {_COLUMNS}, NULL AS commit_state, '' AS commit_reason FROM acks)")


class JournalError(Exception):
    """The journal cannot be opened or is not a send journal."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Outcome:
    """One file's outcome as the sender records it."""

    path: str
    size: int  # of the file, with its mtime: what "unchanged" means on resume
    mtime_ns: int
    outcome: str
    sop_class_uid: str = ""
    sop_instance_uid: str = ""
    status: int | None = None
    reason: str = ""
    bytes: int = 0  # dataset bytes acknowledged


@dataclass(slots=True)
class JobTotals:
    """The whole job across its runs, for the report (``send_report.job_table``)."""

    runs: int = 0
    files: int = 0
    acknowledged: int = 0
    sent_last_run: int = 0  # acknowledged in the latest run
    already_there: int = 0  # acknowledged in an earlier run
    failed_by_status: dict[str, int] = field(default_factory=dict)
    skipped_by_reason: dict[str, int] = field(default_factory=dict)
    committed: int = 0
    commit_failed: int = 0
    bytes: int = 0
    seconds: float = 0.0

    @property
    def failed(self) -> int:
        return sum(self.failed_by_status.values())

    @property
    def not_committed(self) -> int:
        return self.acknowledged - self.committed

    def as_dict(self) -> dict[str, Any]:
        return {
            "runs": self.runs, "files": self.files, "acknowledged": self.acknowledged,
            "sent_last_run": self.sent_last_run, "already_there": self.already_there, "failed": self.failed,
            "failed_by_status": dict(self.failed_by_status), "skipped": sum(self.skipped_by_reason.values()),
            "skipped_by_reason": dict(self.skipped_by_reason), "committed": self.committed,
            "commit_failed": self.commit_failed, "not_committed": self.not_committed,
            "bytes": self.bytes, "seconds": round(self.seconds, 3),
            "mb_per_s": round(self.bytes / self.seconds / 1e6, 3) if self.seconds > 0 else 0.0,
        }


# what a chunk's manifest says of one file: (position in the chunk, path, size, mtime_ns, SOP class, SOP instance)
ManifestFile = tuple[int, str, int, int, str, str]


def file_identity(path: str) -> tuple[int, int] | None:
    """(size, mtime_ns) of a file, None if it cannot be stat'ed."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


class SendJournal:
    """A job's journal: one SQLite connection, opened by the ``nodectl send`` main thread;
    worker threads call ``record_ack`` on it, every write holds ``_lock``."""

    resuming = False  # earlier runs left acknowledged files (at opening): the resume filter looks them up

    def __init__(self, path: str, *, readonly: bool = False) -> None:
        self.path = path
        if readonly and not os.path.exists(path):
            raise JournalError(f"{path}: no such journal")
        try:
            uri = f"file:{path}?mode=ro" if readonly else f"file:{path}"
            self.conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
            if not readonly:
                self.conn.execute("PRAGMA journal_mode=WAL")
                self.conn.execute("PRAGMA synchronous=NORMAL")
                for statement in _SCHEMA:
                    self.conn.execute(statement)
            self.conn.execute("SELECT count(*) FROM files").fetchone()
        except sqlite3.DatabaseError as exc:
            raise JournalError(f"{path}: not a send journal ({exc})") from None
        self.run = 0
        self._pending: list[tuple[Any, ...]] = []  # rows of failed and skipped files
        self._acked: list[tuple[int, int | None, int, float]] = []  # (position, status, bytes, at)
        self._manifest: dict[int, tuple[str, int, int, str, str]] = {}  # the chunk's files by position
        self._since = time.monotonic()
        self._lock = threading.Lock()  # _pending
        self._writing = threading.Lock()  # the connection's transactions
        self.readonly = readonly
        self._files = "files"  # what totals and failures read
        self.acks_path = "" if path == ":memory:" else path + ACKS_SUFFIX
        self.acks: AckLog | None = None
        if readonly:
            left = read_acks(self.acks_path)  # what a killed (or still running) run acknowledged last
            if left:
                self.conn.execute(_ACKS_TABLE)
                self.conn.executemany(f"INSERT INTO acks ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?)", left)
                self._files = _ALL_FILES
            return
        if self.acks_path:
            self.acks = AckLog(self.acks_path)  # locked: no other sender appends to it now
            left = self.acks.left()  # what a killed run acknowledged last
            if left:
                with self._transaction():
                    self.conn.executemany(_UPSERT, left)
            try:
                self.acks.reset()
            except OSError as exc:  # ENOSPC from posix_fallocate: said before anything is sent
                self.acks.close(remove=False)
                raise JournalError(f"{path}: cannot make its acknowledgment log {self.acks_path}: "
                                   f"{exc.strerror or exc}") from None
        # whether any file can be skipped: a first run looks nothing up (``acknowledged_among``)
        self.resuming = bool(self.conn.execute(
            "SELECT EXISTS (SELECT 1 FROM files WHERE outcome = ?)", (ACKNOWLEDGED,)).fetchone()[0])

    # ----- runs ------------------------------------------------------------------------------

    def start_run(self, peer: dict[str, Any]) -> int:
        """A new run of the job; outcomes recorded from now on belong to it."""
        cur = self.conn.execute("INSERT INTO runs (started, peer) VALUES (?, ?)", (time.time(), json.dumps(peer)))
        self.run = int(cur.lastrowid or 0)
        return self.run

    def end_run(self, exit_status: int) -> None:
        """Flush what waits and close the run (a run killed never gets here: ended stays NULL)."""
        self.flush()
        self.conn.execute("UPDATE runs SET ended = ?, exit_status = ? WHERE run = ?", (time.time(), exit_status, self.run))

    # ----- files -----------------------------------------------------------------------------

    def acknowledged_among(self, identities: dict[str, tuple[int, int]]) -> set[str]:
        """Those of ``identities`` (absolute path -> (size, mtime_ns)) that an earlier run got
        acknowledged and that are unchanged since: one query for a whole chunk of the file
        list (a query per file cost ~4 µs of it), none in a job's first run (``resuming``, as
        the journal was opened: a run's own files are never looked up, its list has no repeats)."""
        if not self.resuming or not identities:
            return set()
        rows = self.conn.execute(
            "SELECT f.path, f.size, f.mtime_ns FROM json_each(?) AS j JOIN files AS f ON f.path = j.value "
            "WHERE f.outcome = ?", (json.dumps(list(identities)), ACKNOWLEDGED))
        return {path for path, size, mtime_ns in rows if identities.get(path) == (size, mtime_ns)}

    def record(self, outcome: Outcome) -> None:
        """Queue one outcome; written with its group (``flush``)."""
        with self._lock:
            self._pending.append(self._row(outcome))
            full = len(self._pending) >= GROUP_FILES
        if full:
            self.flush()

    def manifest(self, files: list[ManifestFile]) -> None:
        """The files of the chunk about to be sent, before any is: into the log as one record,
        so that an acknowledgment's record names its file by position (``record_ack``)."""
        self.flush()  # the previous chunk's acknowledgments are rows by now
        self._manifest = {position: rest for position, *rest in files}  # type: ignore[misc]
        if self.acks is not None:
            self.acks.append_manifest(self.run, files)

    def record_ack(self, position: int, status: int | None, nbytes: int) -> None:
        """Make one acknowledgment survive a kill before returning (before the next C-STORE):
        one small record stored into the log, from any thread; its row is written with the
        group (``flush``). ``position`` is the file's in the chunk's ``manifest``."""
        at = time.time()
        with self._lock:  # queued first: a KeyboardInterrupt between the two still leaves it for close()
            self._acked.append((position, status, nbytes, at))
        if self.acks is not None:
            self.acks.append_ack(position, status, nbytes, at)

    def _row(self, outcome: Outcome) -> tuple[Any, ...]:
        return (outcome.path, outcome.size, outcome.mtime_ns, outcome.sop_class_uid, outcome.sop_instance_uid,
                outcome.outcome, outcome.status, outcome.reason, outcome.bytes, self.run, time.time())

    def flush_due(self) -> None:
        """Flush if the oldest waiting outcome has waited ``GROUP_SECONDS``."""
        if (self._acked or self._pending or self.conn.in_transaction) and time.monotonic() - self._since >= GROUP_SECONDS:
            self.flush()

    def queued(self) -> int:
        """Outcomes waiting for their rows."""
        return len(self._acked) + len(self._pending)

    def write_some(self, limit: int = WRITE_SLICE) -> None:
        """Write up to ``limit`` waiting outcomes into the group's open transaction (begun
        here if none is), without committing it: a slice of ``flush``'s work done while the
        sender waits for its peers (``send_multiplex.run_lanes``); ``flush`` commits the group."""
        if self.readonly:
            return
        with self._lock:  # taken from the front in place: the rest is not copied at every slice
            acked = self._acked[:limit]
            del self._acked[:limit]
            rows = self._pending[:limit - len(acked)]
            del self._pending[:len(rows)]
        rows += self._ack_rows(acked)
        if rows:
            with self._writing:
                if not self.conn.in_transaction:
                    self.conn.execute("BEGIN IMMEDIATE")
                self.conn.executemany(_UPSERT, rows)

    def flush(self) -> None:
        """Write every waiting outcome and commit the group (worker threads go on queueing meanwhile)."""
        if self.readonly:
            return
        with self._lock:
            rows, self._pending = self._pending, []
            acked, self._acked = self._acked, []
            self._since = time.monotonic()
        rows += self._ack_rows(acked)
        if rows or self.conn.in_transaction:
            with self._writing, self._transaction():
                self.conn.executemany(_UPSERT, rows)

    def _ack_rows(self, acked: list[tuple[int, int | None, int, float]]) -> list[tuple[Any, ...]]:
        files, run = self._manifest, self.run
        return [(*files[position], ACKNOWLEDGED, status, "", nbytes, run, at) for position, status, nbytes, at in acked]

    def settle(self) -> None:
        """Empty the acknowledgment log once every line of it is in ``files`` (no worker running)."""
        self.flush()
        if self.acks is not None:
            self.acks.reset()

    # ----- commitment ------------------------------------------------------------------------

    def uncommitted(self, after: int, limit: int) -> list[tuple[int, str, str, str]]:
        """Up to ``limit`` acknowledged, not yet committed files past row ``after``, in the order
        they were first recorded: (row, path, SOP class, SOP instance). The caller moves ``after``
        on, so one commitment phase asks for each file once and holds nothing of the job."""
        rows = self.conn.execute(
            "SELECT rowid, path, sop_class_uid, sop_instance_uid FROM files WHERE rowid > ? AND outcome = ? AND "
            "(commit_state IS NULL OR commit_state != ?) ORDER BY rowid LIMIT ?",
            (after, ACKNOWLEDGED, COMMITTED, limit))
        return [(int(n), str(a), str(b), str(c)) for n, a, b, c in rows]

    def record_commit(self, results: list[tuple[str, bool, str]]) -> None:
        """(path, committed, reason) for each file whose instance a report named."""
        with self._transaction():
            self.conn.executemany(
                "UPDATE files SET commit_state = ?, commit_reason = ? WHERE path = ? AND outcome = ?",
                [(COMMITTED if ok else FAILED, reason, path, ACKNOWLEDGED) for path, ok, reason in results])

    # ----- reading ---------------------------------------------------------------------------

    def totals(self) -> JobTotals:
        """The job across every run: what the report prints."""
        self.flush()
        totals = JobTotals()
        latest = self.conn.execute("SELECT max(run) FROM runs").fetchone()[0] or 0
        totals.runs = int(self.conn.execute("SELECT count(*) FROM runs").fetchone()[0])
        for outcome, status, reason, run, commit_state, count, size in self.conn.execute(
            f"SELECT outcome, status, reason, run = ?, commit_state, count(*), sum(bytes) FROM {self._files} "
            "GROUP BY outcome, status, CASE WHEN outcome = 'acknowledged' THEN '' ELSE reason END, run = ?, commit_state",
            (latest, latest)):
            totals.files += count
            if outcome == ACKNOWLEDGED:
                totals.acknowledged += count
                totals.bytes += int(size or 0)
                if run:
                    totals.sent_last_run += count
                else:
                    totals.already_there += count
                totals.committed += count if commit_state == COMMITTED else 0
                totals.commit_failed += count if commit_state == FAILED else 0
            elif outcome == FAILED:
                key = "no status" if status is None else f"0x{status:04X}"
                totals.failed_by_status[key] = totals.failed_by_status.get(key, 0) + count
            else:
                totals.skipped_by_reason[reason] = totals.skipped_by_reason.get(reason, 0) + count
        for started, ended in self.conn.execute(  # a killed run ended with its last outcome
                f"SELECT started, coalesce(ended, (SELECT max(at) FROM {self._files} AS f WHERE f.run = runs.run)) FROM runs"):
            if ended is not None:
                totals.seconds += max(0.0, ended - started)
        return totals

    def failures(self) -> Iterator[tuple[str, int | None, str]]:
        """(path, status, reason) of every failed file, streamed."""
        for path, status, reason in self.conn.execute(
                f"SELECT path, status, reason FROM {self._files} WHERE outcome = ? ORDER BY path", (FAILED,)):
            yield str(path), status, str(reason)

    def close(self) -> None:
        """Flush, then remove the acknowledgment log: every line of it is in ``files``."""
        try:
            self.flush()
            if self.acks is not None:
                self.acks.close(remove=True)
                self.acks = None
        finally:
            self.conn.close()

    def _transaction(self) -> Any:
        return _Transaction(self.conn)


_FRAME = struct.Struct("<II")  # a log record's head: payload length, CRC-32 of the payload
_ACK = struct.Struct("<cIqqd")  # b"A", position in the manifest, status (-1: none), bytes, time
MANIFEST = b"M"  # a manifest record's payload: this byte, then msgpack [run, [ManifestFile, ...]]
_NO_STATUS = -1


class AckLog:
    """``FILE-acks``: records, each a payload framed by its length and CRC, stored into a
    shared mapping of the file: a chunk's manifest (``append_manifest``), then one small record
    per acknowledgment naming a file of it by position (``append_ack``). Zeros follow the last
    record (the file's blocks are allocated, zero-filled, before they are mapped); a record a
    kill tore fails its CRC, and reading stops there."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self.fd)
            journal = path.removesuffix(ACKS_SUFFIX)
            raise JournalError(f"{journal}: the journal is in use by another nodectl send (its log {path} is locked)") from None
        self._map: mmap.mmap | None = None
        self.offset = 0  # where the next record goes
        self._lock = threading.Lock()

    def left(self) -> list[tuple[Any, ...]]:
        """The rows a killed run left in the log."""
        with open(self.fd, "rb", closefd=False) as log:
            return parse_acks(log.read())

    def reset(self) -> None:
        """Empty the log and map it afresh (no thread may append meanwhile)."""
        if self._map is not None:
            self._map.close()
        os.ftruncate(self.fd, 0)
        os.posix_fallocate(self.fd, 0, ACKS_BYTES)  # blocks allocated now: see _store
        self._map = mmap.mmap(self.fd, ACKS_BYTES)
        self.offset = 0

    def append_manifest(self, run: int, files: list[ManifestFile]) -> None:
        """Store a chunk's manifest: what the positions of the acknowledgments after it mean."""
        self._store(MANIFEST + msgpack.packb([run, files]))

    def append_ack(self, position: int, status: int | None, nbytes: int, at: float) -> None:
        """Store one acknowledgment's record (from any thread; no system call unless the mapping grows)."""
        self._store(_ACK.pack(b"A", position, _NO_STATUS if status is None else status, nbytes, at))

    def _store(self, payload: bytes) -> None:
        record = _FRAME.pack(len(payload), zlib.crc32(payload)) + payload
        with self._lock:
            assert self._map is not None, "reset() maps the log"
            end = self.offset + len(record)
            if end > len(self._map):
                # allocated before it is mapped: a store into a hole of a full disk is a SIGBUS,
                # while posix_fallocate says ENOSPC (an OSError the job reports)
                size = max(2 * len(self._map), end)
                os.posix_fallocate(self.fd, len(self._map), size - len(self._map))
                self._map.resize(size)
            self._map[self.offset:end] = record
            self.offset = end

    def close(self, *, remove: bool) -> None:
        if self._map is not None:
            self._map.close()
            self._map = None
        if remove:
            os.unlink(self.path)
        os.close(self.fd)  # and with it the lock


def read_acks(path: str) -> list[tuple[Any, ...]]:
    """The rows of an acknowledgment log (read without its lock: a record being stored is
    torn and left out, as a kill leaves it)."""
    if not path or not os.path.exists(path):
        return []
    with open(path, "rb") as log:
        return parse_acks(log.read())


def parse_acks(data: bytes) -> list[tuple[Any, ...]]:
    """Rows (as ``files`` has them) from the records of ``data``, up to the first torn or
    empty one; logs of earlier nodectl versions are read too (a whole row in msgpack per
    record; JSON lines before that)."""
    if data[:1] == b"[":
        return _json_lines(data)
    rows: list[tuple[Any, ...]] = []
    files: dict[int, tuple[Any, ...]] = {}
    run = 0
    at = 0
    while at + _FRAME.size <= len(data):
        length, crc = _FRAME.unpack_from(data, at)
        payload = data[at + _FRAME.size:at + _FRAME.size + length]
        if not length or len(payload) != length or zlib.crc32(payload) != crc:
            break
        at += _FRAME.size + length
        kind = payload[:1]
        if kind == b"A" and length == _ACK.size:
            _kind, position, status, nbytes, when = _ACK.unpack(payload)
            if position in files:
                rows.append((*files[position], ACKNOWLEDGED, None if status == _NO_STATUS else status, "", nbytes, run, when))
        elif kind == MANIFEST:
            run, listed = msgpack.unpackb(payload[1:], use_list=False)
            files = {position: tuple(rest) for position, *rest in listed}
        else:  # an earlier version's record: the whole row
            row = msgpack.unpackb(payload, use_list=False)
            if isinstance(row, tuple) and len(row) == 11:
                rows.append(row)
    return rows


def _json_lines(data: bytes) -> list[tuple[Any, ...]]:
    rows = []
    for line in data.splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, list) and len(row) == 11:
            rows.append(tuple(row))
    return rows


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error) on an autocommit connection; a
    transaction ``write_some`` left open is carried on and committed with it."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        if not self.conn.in_transaction:
            self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        self.conn.execute("ROLLBACK" if exc_type else "COMMIT")
