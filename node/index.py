"""The instance index: one row per stored SOP instance, in SQLite (WAL) by default or in a
PostgreSQL database shared by a cluster (``node.db``).

The storage writer is the only process that writes it; other processes open it read-only to
answer questions such as "is this instance stored" (Storage Commitment). Schema changes are
numbered migrations applied in order, written in SQL that both SQLite and PostgreSQL accept
(DOUBLE PRECISION, BIGINT, BYTEA, ``INSERT ... ON CONFLICT``), so one list serves both.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from node import db
from node.errors import StorageError

MIGRATIONS: Sequence[tuple[int, Sequence[str]]] = (
    (
        1,
        (
            """CREATE TABLE instances (
                sop_instance_uid TEXT PRIMARY KEY,
                sop_class_uid TEXT NOT NULL,
                study_uid TEXT NOT NULL DEFAULT '',
                series_uid TEXT NOT NULL DEFAULT '',
                patient_id TEXT NOT NULL DEFAULT '',
                transfer_syntax TEXT NOT NULL,
                path TEXT NOT NULL,
                size BIGINT NOT NULL,
                calling_aet TEXT NOT NULL DEFAULT '',
                called_aet TEXT NOT NULL DEFAULT '',
                received_at DOUBLE PRECISION NOT NULL
            )""",
            "CREATE INDEX instances_study ON instances (study_uid)",
        ),
    ),
    (
        2,
        (
            # Storage Commitment (issue 5): owned by the commitment tracker, see docs/commitment.md.
            """CREATE TABLE commit_transactions (
                transaction_uid TEXT PRIMARY KEY,
                state TEXT NOT NULL,
                local_aet TEXT NOT NULL DEFAULT '',
                peer_aet TEXT NOT NULL DEFAULT '',
                peer_host TEXT NOT NULL DEFAULT '',
                peer_port INTEGER NOT NULL DEFAULT 0,
                created_at DOUBLE PRECISION NOT NULL,
                deadline DOUBLE PRECISION NOT NULL,
                updated_at DOUBLE PRECISION NOT NULL,
                action_status INTEGER,
                event_type INTEGER,
                report TEXT,
                report_data BYTEA,
                report_ts TEXT NOT NULL DEFAULT '',
                report_from TEXT NOT NULL DEFAULT ''
            )""",
            """CREATE TABLE commit_items (
                transaction_uid TEXT NOT NULL,
                position INTEGER NOT NULL,
                sop_class_uid TEXT NOT NULL,
                sop_instance_uid TEXT NOT NULL,
                PRIMARY KEY (transaction_uid, position)
            )""",
            """CREATE TABLE commit_outbox (
                transaction_uid TEXT PRIMARY KEY,
                requester_aet TEXT NOT NULL,
                called_aet TEXT NOT NULL,
                peer_host TEXT NOT NULL DEFAULT '',
                request_hash TEXT NOT NULL,
                event_type INTEGER NOT NULL,
                report TEXT NOT NULL,
                state TEXT NOT NULL,
                attempts INTEGER NOT NULL DEFAULT 0,
                next_attempt DOUBLE PRECISION NOT NULL,
                expires DOUBLE PRECISION NOT NULL,
                created_at DOUBLE PRECISION NOT NULL,
                delivered_at DOUBLE PRECISION,
                last_error TEXT NOT NULL DEFAULT ''
            )""",
            "CREATE INDEX commit_outbox_due ON commit_outbox (state, next_attempt)",
            """CREATE TABLE commit_orphans (
                transaction_uid TEXT NOT NULL,
                received_at DOUBLE PRECISION NOT NULL,
                event_type INTEGER NOT NULL,
                report TEXT NOT NULL,
                report_data BYTEA,
                report_ts TEXT NOT NULL DEFAULT '',
                report_from TEXT NOT NULL DEFAULT '',
                PRIMARY KEY (transaction_uid, received_at)
            )""",
        ),
    ),
    (
        3,
        (
            # Clusters (issue 8): several trackers on one PostgreSQL database. A tracker leases
            # the outbox rows it sends so no report goes out twice; the others watch
            # updated_at for transactions completed elsewhere to wake their own waiters.
            "ALTER TABLE commit_outbox ADD COLUMN lease_owner TEXT NOT NULL DEFAULT ''",
            "ALTER TABLE commit_outbox ADD COLUMN lease_until DOUBLE PRECISION NOT NULL DEFAULT 0",
            "CREATE INDEX commit_transactions_updated ON commit_transactions (updated_at)",
        ),
    ),
    (
        4,
        (
            # The writer's journal (issue 12): every record up to ``seq`` of journal ``journal_id``
            # is at its final path and in ``instances``; updated in the same transaction as the rows.
            """CREATE TABLE journal_checkpoints (
                journal_id TEXT PRIMARY KEY,
                seq BIGINT NOT NULL
            )""",
        ),
    ),
    (
        5,
        (
            # Cluster-wide commitment (issue 16): which node holds each instance and the file's
            # checksum, so any node's tracker can answer for it (or ask that node to check);
            # where each node's writer answers such questions.
            "ALTER TABLE instances ADD COLUMN node_id TEXT NOT NULL DEFAULT ''",
            "ALTER TABLE instances ADD COLUMN checksum TEXT NOT NULL DEFAULT ''",
            """CREATE TABLE cluster_nodes (
                node_id TEXT PRIMARY KEY,
                endpoint TEXT NOT NULL DEFAULT '',
                updated_at DOUBLE PRECISION NOT NULL
            )""",
        ),
    ),
)


@dataclass(frozen=True)
class InstanceRow:
    """What the index knows of one stored instance."""

    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax: str
    path: str
    size: int
    study_uid: str = ""
    series_uid: str = ""
    patient_id: str = ""
    calling_aet: str = ""
    called_aet: str = ""
    received_at: float = 0.0
    node_id: str = ""  # the node whose store holds the file (issue 16)
    checksum: str = ""  # sha256 of the whole file, "" when not taken (node.verify)


_COLUMNS = (
    "sop_instance_uid, sop_class_uid, study_uid, series_uid, patient_id, transfer_syntax, "
    "path, size, calling_aet, called_aet, received_at, node_id, checksum"
)


_UPSERT = (
    f"INSERT INTO instances ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT (sop_instance_uid) DO UPDATE SET "
    + ", ".join(f"{c.strip()} = excluded.{c.strip()}" for c in _COLUMNS.split(",")[1:])
)


_CHECKPOINT = (
    "INSERT INTO journal_checkpoints (journal_id, seq) VALUES (?,?) "
    "ON CONFLICT (journal_id) DO UPDATE SET seq = excluded.seq"
)


class Index:
    """The index of stored instances (SQLite file or PostgreSQL URL, see ``node.db``)."""

    def __init__(self, database: str, *, readonly: bool = False, node_id: str = "") -> None:
        self.node_id = node_id  # recorded in rows that do not name their node
        self.db = db.connect(database, readonly=readonly)
        self.conn = self.db  # execute()/executemany() like a sqlite3 connection, either dialect
        if not readonly:
            self.migrate()

    def migrate(self) -> int:
        """Apply the migrations this database lacks, in one transaction; return the version.

        Writer and tracker (and, in a cluster, every node) start together: the transaction
        takes the database's write lock (SQLite) or an advisory lock (PostgreSQL) before it
        reads the version, so a migration is never applied twice.
        """
        with self.db.transaction("schema migration") as conn:
            conn.lock_for_migration()
            conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            current = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] or 0
            for version, statements in MIGRATIONS:
                if version <= current:
                    continue
                for statement in statements:
                    conn.execute(statement)
                conn.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))
                current = version
        return current

    def record(self, rows: Iterable[InstanceRow], *, checkpoint: tuple[str, int] | None = None) -> None:
        """Insert or replace rows in one durable transaction; with ``checkpoint``
        (journal id, seq), record in the same transaction that the journal is materialised up to seq."""
        values = [
            (
                r.sop_instance_uid, r.sop_class_uid, r.study_uid, r.series_uid, r.patient_id,
                r.transfer_syntax, r.path, r.size, r.calling_aet, r.called_aet, r.received_at or time.time(),
                r.node_id or self.node_id, r.checksum,
            )
            for r in rows
        ]
        if not values and checkpoint is None:
            return
        with self.db.transaction("index write") as conn:
            if values:
                conn.executemany(_UPSERT, values)
            if checkpoint is not None:
                conn.execute(_CHECKPOINT, checkpoint)

    def checkpoint(self, journal_id: str) -> int:
        """The seq up to which journal ``journal_id`` is materialised (0: nothing yet)."""
        try:
            row = self.db.execute("SELECT seq FROM journal_checkpoints WHERE journal_id = ?", (journal_id,)).fetchone()
        except self.db.errors as exc:
            raise StorageError(f"index read failed: {exc}") from None
        return int(row[0]) if row else 0

    def get(self, sop_instance_uid: str) -> InstanceRow | None:
        """The row of one instance, or None."""
        try:
            row = self.db.execute(f"SELECT {_COLUMNS} FROM instances WHERE sop_instance_uid = ?", (sop_instance_uid,)).fetchone()
        except self.db.errors as exc:
            raise StorageError(f"index read failed: {exc}") from None
        return InstanceRow(*_reorder(row)) if row else None

    def register_node(self, node_id: str, endpoint: str) -> None:
        """Tell the cluster where this node's writer answers ``VerifyInstances``."""
        with self.db.transaction("cluster node registration") as conn:
            conn.execute(
                "INSERT INTO cluster_nodes (node_id, endpoint, updated_at) VALUES (?,?,?) "
                "ON CONFLICT (node_id) DO UPDATE SET endpoint = excluded.endpoint, updated_at = excluded.updated_at",
                (node_id, endpoint, time.time()),
            )

    def endpoints(self) -> dict[str, str]:
        """{node id: writer endpoint} of every node that registered one."""
        try:
            rows = self.db.execute("SELECT node_id, endpoint FROM cluster_nodes WHERE endpoint <> ''").fetchall()
        except self.db.errors as exc:
            raise StorageError(f"index read failed: {exc}") from None
        return {str(n): str(e) for n, e in rows}

    def count(self) -> int:
        """How many instances are stored."""
        return int(self.db.execute("SELECT COUNT(*) FROM instances").fetchone()[0])

    def close(self) -> None:
        self.db.close()


def _reorder(row: Sequence[object]) -> tuple[object, ...]:
    """Map a SELECT row (column order of _COLUMNS) to InstanceRow's field order."""
    (uid, sop_class, study, series, patient, ts, path, size, calling, called, received, node_id, checksum) = row
    return (uid, sop_class, ts, path, size, study, series, patient, calling, called, received, node_id, checksum)
