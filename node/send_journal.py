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
commits since the last checkpoint, about a second (``checkpoint``; those files are sent again
on resume, which a peer stores as the same instance again).

An acknowledgment is committed at once (``record_now``), by the thread that received it and
before that thread's next C-STORE goes out, so that a kill -9 leaves unjournaled at most the
one instance in flight per association. To keep that commit cheap it is one row appended to
``acks``, a table without index (one page written); the main thread moves ``acks`` into
``files`` with the other outcomes in one grouped transaction (``flush``, at most every
``GROUP_SECONDS``), and opening the journal moves what a killed run left there.
The file list is never held here: lookups are one indexed query per file.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

ACKNOWLEDGED = "acknowledged"
FAILED = "failed"
SKIPPED = "skipped"
COMMITTED = "committed"
GROUP_SECONDS = 0.1  # outcomes wait at most this long in memory before their transaction
GROUP_FILES = 512  # ... or until this many are waiting
CHECKPOINT_SECONDS = 1.0  # the WAL is copied into the database (with its fsyncs) this often
WAL_LIMIT_BYTES = 64 << 20  # a WAL grown past this is truncated when it restarts

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
    "CREATE INDEX IF NOT EXISTS files_instance ON files (sop_instance_uid)",
    """CREATE TABLE IF NOT EXISTS acks (
        path TEXT NOT NULL, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, sop_class_uid TEXT NOT NULL,
        sop_instance_uid TEXT NOT NULL, outcome TEXT NOT NULL, status INTEGER, reason TEXT NOT NULL,
        bytes INTEGER NOT NULL, run INTEGER NOT NULL, at REAL NOT NULL)""",
)
_COLUMNS = "path, size, mtime_ns, sop_class_uid, sop_instance_uid, outcome, status, reason, bytes, run, at"

_ON_CONFLICT = (
    " ON CONFLICT (path) DO UPDATE SET size=excluded.size, mtime_ns=excluded.mtime_ns, sop_class_uid=excluded.sop_class_uid, "
    "sop_instance_uid=excluded.sop_instance_uid, outcome=excluded.outcome, status=excluded.status, "
    "reason=excluded.reason, bytes=excluded.bytes, run=excluded.run, at=excluded.at, "
    "commit_state=NULL, commit_reason=''"
)
_UPSERT = f"INSERT INTO files ({_COLUMNS}, commit_state, commit_reason) VALUES (?,?,?,?,?,?,?,?,?,?,?,NULL,'')" + _ON_CONFLICT
_APPEND_ACK = f"INSERT INTO acks ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?)"
_FOLD_ACKS = (f"INSERT INTO files ({_COLUMNS}, commit_state, commit_reason) SELECT {_COLUMNS}, NULL, '' FROM acks "
              "WHERE true ORDER BY rowid" + _ON_CONFLICT)
# what a reader sees: files, with the acknowledgments not yet moved out of acks in place of their rows
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


def file_identity(path: str) -> tuple[int, int] | None:
    """(size, mtime_ns) of a file, None if it cannot be stat'ed."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


class SendJournal:
    """A job's journal: one SQLite connection, opened by the ``nodectl send`` main thread;
    worker threads call ``record_now`` on it, every write holds ``_lock``."""

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
                self.conn.execute("PRAGMA wal_autocheckpoint=0")  # checkpoint() does it, off the senders' path
                self.conn.execute(f"PRAGMA journal_size_limit={WAL_LIMIT_BYTES}")
                for statement in _SCHEMA:
                    self.conn.execute(statement)
            self.conn.execute("SELECT count(*) FROM files").fetchone()
        except sqlite3.DatabaseError as exc:
            raise JournalError(f"{path}: not a send journal ({exc})") from None
        self.run = 0
        self._pending: list[tuple[Any, ...]] = []
        self._since = time.monotonic()
        self._lock = threading.Lock()
        self._acks_waiting = True  # rows in acks, maybe: a killed run's, then record_now's
        self.readonly = readonly
        self._files = "files"  # what totals and failures read
        self._checkpointed = time.monotonic()
        self._checkpointer: sqlite3.Connection | None = None  # a second connection: see checkpoint()
        if not readonly and path != ":memory:":
            self._checkpointer = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        if not readonly:
            self.flush()  # acknowledgments a killed run left in acks
        elif self.conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'acks'").fetchone():
            self._files = _ALL_FILES  # --report after a kill: the last acknowledgments are still in acks

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

    def acknowledged(self, path: str, identity: tuple[int, int]) -> bool:
        """Whether ``path`` was acknowledged by the peer in an earlier run and is unchanged since."""
        row = self.conn.execute("SELECT size, mtime_ns, outcome FROM files WHERE path = ?", (path,)).fetchone()
        return row is not None and row[2] == ACKNOWLEDGED and (row[0], row[1]) == identity

    def record(self, outcome: Outcome) -> None:
        """Queue one outcome; written with its group (``flush``)."""
        with self._lock:
            self._pending.append(self._row(outcome))
            full = len(self._pending) >= GROUP_FILES
        if full:
            self.flush()

    def record_now(self, outcome: Outcome) -> None:
        """Commit one outcome before returning (an acknowledgment, before the next C-STORE):
        one row appended to ``acks`` in its own transaction, safe from any thread."""
        with self._lock:
            self.conn.execute(_APPEND_ACK, self._row(outcome))
            self._acks_waiting = True

    def _row(self, outcome: Outcome) -> tuple[Any, ...]:
        return (outcome.path, outcome.size, outcome.mtime_ns, outcome.sop_class_uid, outcome.sop_instance_uid,
                outcome.outcome, outcome.status, outcome.reason, outcome.bytes, self.run, time.time())

    def flush_due(self) -> None:
        """Flush if the oldest waiting outcome has waited ``GROUP_SECONDS``."""
        if (self._pending or self._acks_waiting) and time.monotonic() - self._since >= GROUP_SECONDS:
            self.flush()

    def flush(self) -> None:
        """Write every waiting outcome, and move ``acks`` into ``files``, in one transaction."""
        if self.readonly:
            return
        with self._lock:
            with self._transaction():
                if self._acks_waiting:
                    self.conn.execute(_FOLD_ACKS)
                    self.conn.execute("DELETE FROM acks")
                if self._pending:
                    self.conn.executemany(_UPSERT, self._pending)
            self._pending.clear()
            self._acks_waiting = False
            self._since = time.monotonic()
        if time.monotonic() - self._checkpointed >= CHECKPOINT_SECONDS:
            self.checkpoint()

    def checkpoint(self) -> None:
        """Copy the WAL into the database, then let the WAL start again from its beginning.

        Why not SQLite's automatic checkpoint: it runs inside the commit that fills 1,000 WAL
        pages, i.e. every few hundred acknowledgments, and with ``synchronous=NORMAL`` it fsyncs
        the WAL and the database there: the sending thread that committed, and every other one
        waiting for the journal, stalled for milliseconds. Here the copy and its fsyncs are done
        on a second connection without the lock (a PASSIVE checkpoint lets the senders go on
        appending), then the few pages appended meanwhile under the lock: a checkpoint that caught
        up with the WAL lets the next commit start it again from its beginning, else it would
        grow for ever under a stream of small commits. Both PASSIVE: never waiting for a reader
        (a checkpoint that must wait would hold the senders)."""
        self._checkpointed = time.monotonic()
        if self._checkpointer is None:
            return
        self._checkpointer.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        with self._lock:
            self.conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()

    # ----- commitment ------------------------------------------------------------------------

    def uncommitted(self, limit: int) -> list[tuple[str, str, str]]:
        """Up to ``limit`` acknowledged, not yet committed files: (path, SOP class, SOP instance)."""
        rows = self.conn.execute(
            "SELECT path, sop_class_uid, sop_instance_uid FROM files WHERE outcome = ? AND "
            "(commit_state IS NULL OR commit_state != ?) ORDER BY rowid LIMIT ?",
            (ACKNOWLEDGED, COMMITTED, limit))
        return [(str(a), str(b), str(c)) for a, b, c in rows]

    def record_commit(self, results: list[tuple[str, bool, str]]) -> None:
        """(SOP Instance UID, committed, reason) for each instance a report named."""
        with self._transaction():
            self.conn.executemany(
                "UPDATE files SET commit_state = ?, commit_reason = ? WHERE sop_instance_uid = ? AND outcome = ?",
                [(COMMITTED if ok else FAILED, reason, uid, ACKNOWLEDGED) for uid, ok, reason in results])

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
        try:
            self.flush()
        finally:
            if self._checkpointer is not None:
                self._checkpointer.close()
            self.conn.close()

    def _transaction(self) -> Any:
        return _Transaction(self.conn)


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error) on an autocommit connection."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        self.conn.execute("ROLLBACK" if exc_type else "COMMIT")
