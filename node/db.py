"""One small database layer for the index and the commitment tables: SQLite or PostgreSQL.

The node keeps its state in SQLite by default (a file, WAL, ``synchronous=FULL``); a cluster
of nodes shares one PostgreSQL database (``database = "postgresql://user@host:port/db"``,
driver psycopg 3). Callers write SQL once, in the dialect both accept, with ``?``
placeholders; ``translate`` turns them into psycopg's ``%s``. What differs between the two
beyond placeholders is kept here and named: how a write transaction starts, how two
processes migrating at once are kept apart, and row claiming (``FOR UPDATE SKIP LOCKED``
exists only in PostgreSQL; SQLite serialises writers anyway).

Driver errors never leave this module's callers untranslated: ``Database.errors`` is the
tuple to catch, and ``transaction`` raises ``StorageError``. No sockets of our own: the
driver's connection is to the database what sqlite3's file handle is to the file.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from node.errors import StorageError

SQLITE = "sqlite"
POSTGRESQL = "postgresql"
# pg_advisory_xact_lock key: "migrating the node schema" (any constant shared by every node).
_MIGRATION_LOCK = 0x6E6F6465


def dialect_of(database: str) -> str:
    """``postgresql`` for a postgres:// or postgresql:// URL, ``sqlite`` for a path or sqlite://."""
    scheme = database.split("://", 1)[0].lower() if "://" in database else SQLITE
    if scheme in ("postgres", "postgresql"):
        return POSTGRESQL
    if scheme == SQLITE:
        return SQLITE
    raise StorageError(f"database {database!r}: only SQLite paths and postgresql:// URLs are supported")


def translate(sql: str, dialect: str) -> str:
    """Our ``?`` placeholders in the driver's style (psycopg: ``%s``, literal ``%`` doubled)."""
    if dialect == POSTGRESQL:
        return sql.replace("%", "%%").replace("?", "%s")
    return sql


def redact(database: str) -> str:
    """The URL without its password, for log lines."""
    if "://" not in database or "@" not in database:
        return database
    scheme, rest = database.split("://", 1)
    credentials, at, host = rest.rpartition("@")
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}@{host}"


class Database:
    """A connection in autocommit mode; ``transaction()`` groups writes durably."""

    def __init__(self, database: str, *, readonly: bool = False) -> None:
        self.url = database
        self.dialect = dialect_of(database)
        self.readonly = readonly
        self.errors: tuple[type[BaseException], ...] = (sqlite3.Error,)
        self.conn: Any = None
        self._connect()

    @property
    def shared(self) -> bool:
        """True when other nodes may write the same tables (a cluster on PostgreSQL)."""
        return self.dialect == POSTGRESQL

    def _connect(self) -> None:
        try:
            if self.dialect == POSTGRESQL:
                self._connect_postgresql()
            else:
                self._connect_sqlite()
        except self.errors as exc:
            raise StorageError(f"cannot open database {redact(self.url)}: {exc}") from None

    def _connect_sqlite(self) -> None:
        path = Path(self.url.removeprefix("sqlite://"))
        if self.readonly:
            self.conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10, isolation_level=None)
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(path, timeout=10, isolation_level=None)
        # Switching a new database to WAL needs it unlocked, and SQLite answers "database is
        # locked" at once, without its busy timeout, while another actor (writer, tracker)
        # creates or migrates the same file: try again for as long as the busy timeout.
        deadline = time.monotonic() + 10
        while True:
            try:
                self.conn.execute("PRAGMA journal_mode=WAL")
                break
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        self.conn.execute("PRAGMA synchronous=FULL")

    def _connect_postgresql(self) -> None:
        try:
            import psycopg
        except ImportError:
            raise StorageError("database is PostgreSQL but psycopg is not installed: pip install 'dicom-node[postgresql]'") from None
        self.errors = (sqlite3.Error, psycopg.Error)
        self.conn = psycopg.connect(self.url, autocommit=True, connect_timeout=10, application_name="nodectl")

    def _ensure(self) -> None:
        """Reconnect after the server went away (a PostgreSQL restart or failover)."""
        if self.dialect == POSTGRESQL and (self.conn is None or self.conn.closed or self.conn.broken):
            self._connect()

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        """Run one statement; the cursor has ``fetchone``/``fetchall``/``rowcount``, iterates rows."""
        self._ensure()
        if self.dialect == POSTGRESQL:
            return self.conn.execute(translate(sql, self.dialect), tuple(params)) if params else self.conn.execute(sql)
        return self.conn.execute(sql, tuple(params))

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        self._ensure()
        if self.dialect == POSTGRESQL:
            with self.conn.cursor() as cur:
                cur.executemany(translate(sql, self.dialect), [tuple(r) for r in rows])
        else:
            self.conn.executemany(sql, rows)

    @contextmanager
    def transaction(self, what: str = "database write") -> Iterator["Database"]:
        """One write transaction, committed on exit; a driver error becomes StorageError."""
        try:
            self._ensure()
            if self.dialect == POSTGRESQL:
                with self.conn.transaction():
                    yield self
                return
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self
            except BaseException:
                if self.conn.in_transaction:
                    self.conn.execute("ROLLBACK")
                raise
            self.conn.execute("COMMIT")
        except self.errors as exc:
            raise StorageError(f"{what} failed: {exc}") from None

    def lock_for_migration(self) -> None:
        """Inside a transaction: keep two processes from migrating at once (SQLite: BEGIN IMMEDIATE does)."""
        if self.dialect == POSTGRESQL:
            self.execute("SELECT pg_advisory_xact_lock(?)", (_MIGRATION_LOCK,))

    def notify(self, channel: str, payload: str) -> None:
        """Inside a transaction: wake every ``Listener`` on ``channel`` once it commits
        (PostgreSQL delivers notifications at commit, none for a rollback); SQLite: nothing,
        one node has no one else to wake."""
        if self.dialect == POSTGRESQL:
            self.execute("SELECT pg_notify(?, ?)", (channel, payload))

    def skip_locked(self) -> str:
        """The suffix that makes a SELECT claim rows other transactions have not claimed."""
        return " FOR UPDATE SKIP LOCKED" if self.dialect == POSTGRESQL else ""

    def close(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            except self.errors:
                pass
            self.conn = None


def connect(database: str, *, readonly: bool = False) -> Database:
    """Open the node's database named by the config's ``database`` value."""
    return Database(database, readonly=readonly)


class Listener:
    """``LISTEN`` on one channel over a connection of its own, for a poll loop (issue 16).

    ``fileno()`` goes into the caller's poller; when it is readable, ``drain()`` returns the
    payloads that arrived without blocking, or None when the connection is lost (the caller
    falls back to polling the tables and calls ``connect()`` again later). PostgreSQL only.
    """

    def __init__(self, database: str, channel: str) -> None:
        if dialect_of(database) != POSTGRESQL:
            raise StorageError("LISTEN/NOTIFY needs PostgreSQL")
        if not channel.isidentifier():
            raise StorageError(f"channel {channel!r} is not an identifier")
        self.url = database
        self.channel = channel
        self.conn: Any = None

    @property
    def connected(self) -> bool:
        return self.conn is not None and not self.conn.closed

    def connect(self) -> bool:
        """(Re)connect and LISTEN; False when the server cannot be reached now."""
        import psycopg

        self.close()
        try:
            self.conn = psycopg.connect(self.url, autocommit=True, connect_timeout=5, application_name="nodectl-listen")
            self.conn.execute(f"LISTEN {self.channel}")
            return True
        except psycopg.Error:
            self.close()
            return False

    def fileno(self) -> int:
        return int(self.conn.pgconn.socket)

    def drain(self) -> list[str] | None:
        """Payloads received so far (maybe none); None when the connection is gone."""
        import psycopg

        if not self.connected:
            return None
        pgconn = self.conn.pgconn
        out: list[str] = []
        try:
            pgconn.consume_input()
            while (notice := pgconn.notifies()) is not None:
                out.append(notice.extra.decode())
        except (psycopg.Error, OSError):
            self.close()
            return None
        if pgconn.status != psycopg.pq.ConnStatus.OK:
            self.close()
            return None
        return out

    def close(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            except Exception:  # noqa: BLE001 - a broken connection may fail to close; it is dropped either way
                pass
            self.conn = None
