"""The commitment tracker's durable state: transactions, their instances, the report outbox
and reports nobody was waiting for, in the index database (migration 2 of ``node.index``).

Only the tracker writes these tables (each piece of state has one owner); clients may read
them (``nodectl stcomscu --node`` checks a transaction's state here when a wake-up was
missed). Every method that changes state commits before it returns, so a caller may answer
a peer right after: "persist before acknowledging". State changes follow
``node.commitment.TRANSITIONS``.

In a cluster (several nodes on one PostgreSQL database, ``node.db``) several trackers share
these tables: ``outbox_claim`` leases due reports to one tracker (``FOR UPDATE SKIP LOCKED``)
so none is sent twice; a transaction that ends is announced with ``NOTIFY`` on
``ENDED_CHANNEL`` in the transaction that ends it, so every tracker wakes its own waiters at
once, and ``ended_since`` finds what a tracker missed while its LISTEN connection was down.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from node import commitment as sc
from node.commitment import Delivery, Fact, Ref, Report, State
from node.errors import StorageError
from node.index import Index
from node.verify import Indexed

_CHUNK = 500  # SQLite's default limit on host parameters is 999
# PostgreSQL NOTIFY channel: a transaction reached a final state (payload: its UID). Every
# node's tracker LISTENs and wakes its waiters at once (issue 16; node.db.Listener).
ENDED_CHANNEL = "nodectl_txn_ended"


@dataclass(frozen=True)
class Transaction:
    """One transaction we started, as the database has it."""

    transaction_uid: str
    state: State
    local_aet: str
    peer_aet: str
    peer_host: str
    peer_port: int
    created_at: float
    deadline: float
    action_status: int | None = None
    event_type: int | None = None
    report: Report | None = None
    report_data: bytes | None = None
    report_ts: str = ""
    report_from: str = ""


@dataclass(frozen=True)
class OutboxEntry:
    """A report the node owes a requester."""

    transaction_uid: str
    requester_aet: str
    called_aet: str
    peer_host: str
    request_hash: str
    report: Report
    state: Delivery
    attempts: int
    next_attempt: float
    expires: float
    last_error: str = ""


def report_to_json(report: Report) -> str:
    return json.dumps({"c": sc.refs_to_wire(report.committed), "f": sc.failed_to_wire(report.failed)})


def report_from_json(uid: str, text: str) -> Report:
    data = json.loads(text)
    return Report(uid, sc.refs_from_wire(data["c"]), sc.failed_from_wire(data["f"]))


def request_hash(refs: Sequence[Ref]) -> str:
    """A fingerprint of a request's instance set: tells a retried N-ACTION from a reused UID."""
    digest = hashlib.sha256()
    for ref in sorted(refs, key=lambda r: r.sop_instance_uid):
        digest.update(f"{ref.sop_class_uid}\0{ref.sop_instance_uid}\n".encode())
    return digest.hexdigest()


class TransactionStore:
    """Transactions and outbox in the index database (SQLite WAL + FULL sync, or PostgreSQL)."""

    def __init__(self, database: str, *, owner: str = "") -> None:
        self.index = Index(database)
        self.db = self.index.db
        self.conn = self.db
        # Who holds an outbox lease (the tracker passes host and run directory: one per node).
        self.owner = owner or f"{os.uname().nodename}:{os.getpid()}"

    @property
    def shared(self) -> bool:
        """True when other nodes' trackers use the same tables."""
        return self.db.shared

    def close(self) -> None:
        self.index.close()

    @contextmanager
    def _tx(self) -> Iterator[Any]:
        """One durable write transaction; StorageError when the database refuses it."""
        with self.db.transaction("commitment database write") as conn:
            yield conn

    # ----- SCU side: transactions we started ----------------------------------------------

    def record(
        self,
        uid: str,
        refs: Sequence[Ref],
        *,
        local_aet: str,
        peer_aet: str,
        peer_host: str,
        peer_port: int,
        timeout: float,
        now: float | None = None,
    ) -> Transaction:
        """Record a new transaction (state PENDING); an existing one is returned unchanged."""
        existing = self.get(uid)
        if existing is not None:
            return existing
        now = now or time.time()
        with self._tx() as conn:
            conn.execute(
                "INSERT INTO commit_transactions (transaction_uid, state, local_aet, peer_aet, peer_host, peer_port,"
                " created_at, deadline, updated_at) VALUES (?,?,?,?,?,?,?,?,?)",
                (uid, State.PENDING.value, local_aet, peer_aet, peer_host, peer_port, now, now + timeout, now),
            )
            conn.executemany(
                "INSERT INTO commit_items (transaction_uid, position, sop_class_uid, sop_instance_uid) VALUES (?,?,?,?)",
                [(uid, n, r.sop_class_uid, r.sop_instance_uid) for n, r in enumerate(refs)],
            )
        return self.get(uid)  # type: ignore[return-value]

    def get(self, uid: str) -> Transaction | None:
        row = self.conn.execute(
            "SELECT transaction_uid, state, local_aet, peer_aet, peer_host, peer_port, created_at, deadline,"
            " action_status, event_type, report, report_data, report_ts, report_from"
            " FROM commit_transactions WHERE transaction_uid = ?",
            (uid,),
        ).fetchone()
        if row is None:
            return None
        report = report_from_json(uid, row[10]) if row[10] else None
        return Transaction(
            row[0], State(row[1]), row[2], row[3], row[4], int(row[5]), float(row[6]), float(row[7]),
            row[8], row[9], report, bytes(row[11]) if row[11] is not None else None, row[12], row[13],
        )

    def refs(self, uid: str) -> tuple[Ref, ...]:
        rows = self.conn.execute(
            "SELECT sop_class_uid, sop_instance_uid FROM commit_items WHERE transaction_uid = ? ORDER BY position", (uid,)
        ).fetchall()
        return tuple(Ref(c, i) for c, i in rows)

    def mark_sent(self, uid: str, status: int, now: float | None = None) -> Transaction:
        """The N-ACTION-RSP arrived (``status``) or sending failed (``status`` < 0)."""
        txn = self._require(uid)
        event = "sent" if status == sc.STATUS_SUCCESS else "refused"
        if txn.state in (State.COMPLETED,) and event == "refused":
            return txn  # the report already proves the SCP took the request
        new = sc.advance(txn.state, event)
        with self._tx() as conn:
            conn.execute(
                "UPDATE commit_transactions SET state = ?, action_status = ?, updated_at = ? WHERE transaction_uid = ?",
                (new.value, status, now or time.time(), uid),
            )
            if new == State.REFUSED:
                conn.notify(ENDED_CHANNEL, uid)
        return self._require(uid)

    def complete(self, uid: str, report: Report, data: bytes | None, ts: str, sender: str, now: float | None = None) -> tuple[Transaction, bool]:
        """Commit a matched report; (transaction, False) when it had one already (a repeat)."""
        txn = self._require(uid)
        if txn.state == State.COMPLETED:
            return txn, False
        new = sc.advance(txn.state, "reported")
        with self._tx() as conn:
            conn.execute(
                "UPDATE commit_transactions SET state = ?, event_type = ?, report = ?, report_data = ?, report_ts = ?,"
                " report_from = ?, updated_at = ? WHERE transaction_uid = ?",
                (new.value, report.event_type, report_to_json(report), data, ts, sender, now or time.time(), uid),
            )
            conn.notify(ENDED_CHANNEL, uid)
        return self._require(uid), True

    def expire_due(self, now: float | None = None) -> list[str]:
        """Move transactions past their deadline to EXPIRED; return their UIDs."""
        now = now or time.time()
        rows = self.conn.execute(
            "SELECT transaction_uid FROM commit_transactions WHERE state IN (?, ?) AND deadline <= ?",
            (State.PENDING.value, State.REQUESTED.value, now),
        ).fetchall()
        uids = [r[0] for r in rows]
        if uids:
            with self._tx() as conn:
                conn.executemany(
                    "UPDATE commit_transactions SET state = ?, updated_at = ? WHERE transaction_uid = ?",
                    [(State.EXPIRED.value, now, uid) for uid in uids],
                )
                for uid in uids:
                    conn.notify(ENDED_CHANNEL, uid)
        return uids

    def unfinished(self) -> int:
        """Transactions still waiting for their report, plus reports kept for a transaction
        not seen yet: what a later run could still need this database for."""
        waiting = self.conn.execute(
            "SELECT COUNT(*) FROM commit_transactions WHERE state IN (?, ?)", (State.PENDING.value, State.REQUESTED.value),
        ).fetchone()[0]
        kept = self.conn.execute("SELECT COUNT(*) FROM commit_orphans").fetchone()[0]
        return int(waiting) + int(kept)

    def _require(self, uid: str) -> Transaction:
        txn = self.get(uid)
        if txn is None:
            raise StorageError(f"transaction {uid} is not recorded")
        return txn

    # ----- reports nobody was waiting for -------------------------------------------------

    def keep_orphan(self, report: Report, data: bytes | None, ts: str, sender: str, now: float | None = None) -> None:
        with self._tx() as conn:
            conn.execute(
                "INSERT INTO commit_orphans (transaction_uid, received_at, event_type, report, report_data,"
                " report_ts, report_from) VALUES (?,?,?,?,?,?,?) ON CONFLICT (transaction_uid, received_at) DO UPDATE SET"
                " event_type = excluded.event_type, report = excluded.report, report_data = excluded.report_data,"
                " report_ts = excluded.report_ts, report_from = excluded.report_from",
                (report.transaction_uid, now or time.time(), report.event_type, report_to_json(report), data, ts, sender),
            )

    def take_orphan(self, uid: str, window: float, now: float | None = None) -> tuple[Report, bytes | None, str, str] | None:
        """The newest kept report for ``uid`` received within ``window`` seconds, removed."""
        now = now or time.time()
        row = self.conn.execute(
            "SELECT received_at, report, report_data, report_ts, report_from FROM commit_orphans"
            " WHERE transaction_uid = ? AND received_at >= ? ORDER BY received_at DESC",
            (uid, now - window),
        ).fetchone()
        if row is None:
            return None
        with self._tx() as conn:
            conn.execute("DELETE FROM commit_orphans WHERE transaction_uid = ?", (uid,))
        return report_from_json(uid, row[1]), (bytes(row[2]) if row[2] is not None else None), row[3], row[4]

    def purge_orphans(self, window: float, now: float | None = None) -> int:
        now = now or time.time()
        with self._tx() as conn:
            cur = conn.execute("DELETE FROM commit_orphans WHERE received_at < ?", (now - window,))
        return cur.rowcount

    # ----- SCP side: the outbox -----------------------------------------------------------

    def outbox_get(self, uid: str) -> OutboxEntry | None:
        row = self.conn.execute(
            "SELECT transaction_uid, requester_aet, called_aet, peer_host, request_hash, report, state, attempts,"
            " next_attempt, expires, last_error FROM commit_outbox WHERE transaction_uid = ?",
            (uid,),
        ).fetchone()
        return _entry(row) if row else None

    def outbox_put(
        self, report: Report, *, requester_aet: str, called_aet: str, peer_host: str, request_hash: str,
        first_attempt: float, expires: float, now: float | None = None,
    ) -> None:
        """Queue a report before the N-ACTION-RSP goes back (durable on return). Nothing is
        read back: for 10,000 instances that was the report's JSON parsed again (~16 ms)
        while the requester waits for the N-ACTION-RSP."""
        now = now or time.time()
        with self._tx() as conn:
            conn.execute(
                "INSERT INTO commit_outbox (transaction_uid, requester_aet, called_aet, peer_host, request_hash, event_type,"
                " report, state, attempts, next_attempt, expires, created_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (report.transaction_uid, requester_aet, called_aet, peer_host, request_hash, report.event_type,
                 report_to_json(report), Delivery.QUEUED.value, 0, first_attempt, expires, now),
            )

    def outbox_state(self, uid: str) -> Delivery | None:
        """A queued report's delivery state (None: no such report), without its report: the
        same-association delivery's bookkeeping needs no more, and the requester's A-RELEASE
        waits for it."""
        row = self.conn.execute("SELECT state FROM commit_outbox WHERE transaction_uid = ?", (uid,)).fetchone()
        return Delivery(row[0]) if row else None

    def outbox_due(self, now: float | None = None, limit: int = 16) -> list[OutboxEntry]:
        now = now or time.time()
        rows = self.conn.execute(
            "SELECT transaction_uid, requester_aet, called_aet, peer_host, request_hash, report, state, attempts,"
            " next_attempt, expires, last_error FROM commit_outbox WHERE state = ? AND next_attempt <= ?"
            " ORDER BY next_attempt LIMIT ?",
            (Delivery.QUEUED.value, now, limit),
        ).fetchall()
        return [_entry(r) for r in rows]

    def outbox_claim(self, lease: float, now: float | None = None, limit: int = 16) -> list[OutboxEntry]:
        """Due reports leased to this tracker for ``lease`` seconds: no other tracker sends them.

        PostgreSQL skips rows another tracker's claim transaction holds (``FOR UPDATE SKIP
        LOCKED``); SQLite's BEGIN IMMEDIATE already lets one writer in at a time. A lease
        left by a tracker that died runs out and the row is claimed again.
        """
        now = now or time.time()
        if not self._claimable(now):
            return []  # the common case, answered by a read: no write lock taken every tick
        with self._tx() as conn:
            rows = conn.execute(
                "SELECT transaction_uid, requester_aet, called_aet, peer_host, request_hash, report, state, attempts,"
                " next_attempt, expires, last_error FROM commit_outbox WHERE state = ? AND next_attempt <= ?"
                " AND (lease_until <= ? OR lease_owner = ?) ORDER BY next_attempt LIMIT ?" + self.db.skip_locked(),
                (Delivery.QUEUED.value, now, now, self.owner, limit),
            ).fetchall()
            conn.executemany(
                "UPDATE commit_outbox SET lease_owner = ?, lease_until = ? WHERE transaction_uid = ?",
                [(self.owner, now + lease, r[0]) for r in rows],
            )
        return [_entry(r) for r in rows]

    def _claimable(self, now: float) -> bool:
        row = self.conn.execute(
            "SELECT 1 FROM commit_outbox WHERE state = ? AND next_attempt <= ? AND (lease_until <= ? OR lease_owner = ?) LIMIT 1",
            (Delivery.QUEUED.value, now, now, self.owner),
        ).fetchone()
        return row is not None

    def ended_since(self, since: float) -> list[Transaction]:
        """Transactions that reached a final state (completed, refused, expired) at or after ``since``."""
        try:
            rows = self.conn.execute(
                "SELECT transaction_uid FROM commit_transactions WHERE updated_at >= ? AND state IN (?, ?, ?)"
                " ORDER BY updated_at LIMIT 1000",
                (since, State.COMPLETED.value, State.REFUSED.value, State.EXPIRED.value),
            ).fetchall()
        except self.db.errors as exc:
            raise StorageError(f"commitment database read failed: {exc}") from None
        found = (self.get(r[0]) for r in rows)
        return [t for t in found if t is not None]

    def outbox_next_due(self) -> float | None:
        row = self.conn.execute("SELECT MIN(next_attempt) FROM commit_outbox WHERE state = ?", (Delivery.QUEUED.value,)).fetchone()
        return float(row[0]) if row and row[0] is not None else None

    def outbox_attempted(self, uid: str, *, delivered: bool, error: str, retry_at: float, now: float | None = None) -> OutboxEntry:
        """Record one delivery attempt: delivered, or retry at ``retry_at``, or expired."""
        now = now or time.time()
        row = self.conn.execute(  # not outbox_get: its report (JSON) is not needed here
            "SELECT state, next_attempt, expires FROM commit_outbox WHERE transaction_uid = ?", (uid,)).fetchone()
        if row is None:
            raise StorageError(f"no report for transaction {uid} in the outbox")
        if Delivery(row[0]) != Delivery.QUEUED:
            return self.outbox_get(uid)  # type: ignore[return-value]
        if delivered:
            state, next_attempt = Delivery.DELIVERED, float(row[1])
        elif retry_at >= float(row[2]):
            state, next_attempt = Delivery.EXPIRED, float(row[1])
        else:
            state, next_attempt = Delivery.QUEUED, retry_at
        with self._tx() as conn:
            conn.execute(
                "UPDATE commit_outbox SET state = ?, attempts = attempts + 1, next_attempt = ?, last_error = ?,"
                " delivered_at = ?, lease_owner = '', lease_until = 0 WHERE transaction_uid = ?",
                (state.value, next_attempt, error, now if delivered else None, uid),
            )
        return self.outbox_get(uid)  # type: ignore[return-value]

    def outbox_reschedule(self, uid: str, at: float) -> None:
        """Bring a queued report's next attempt forward (the same association was gone)."""
        with self._tx() as conn:
            conn.execute("UPDATE commit_outbox SET next_attempt = ? WHERE transaction_uid = ? AND state = ?", (at, uid, Delivery.QUEUED.value))

    # ----- the instance index, read for evaluation ----------------------------------------

    def facts(self, refs: Iterable[Ref]) -> dict[str, Indexed]:
        """{SOP Instance UID: its index row} for the referenced instances the index has
        (on a cluster's database: stored by any node, ``node_id`` says which)."""
        uids = [r.sop_instance_uid for r in refs]
        out: dict[str, Indexed] = {}
        for start in range(0, len(uids), _CHUNK):
            chunk = uids[start : start + _CHUNK]
            marks = ",".join("?" * len(chunk))
            for uid, cls, path, size, checksum, node_id in self.conn.execute(
                "SELECT sop_instance_uid, sop_class_uid, path, size, checksum, node_id FROM instances"
                f" WHERE sop_instance_uid IN ({marks})", chunk
            ):
                out[uid] = Indexed(cls, path, int(size), checksum, node_id)
        return out


def _entry(row: Sequence[object]) -> OutboxEntry:
    uid = str(row[0])
    return OutboxEntry(
        uid, str(row[1]), str(row[2]), str(row[3]), str(row[4]), report_from_json(uid, str(row[5])),
        Delivery(row[6]), int(row[7]), float(row[8]), float(row[9]), str(row[10]),  # type: ignore[arg-type]
    )


def to_facts(found: dict[str, Indexed], readable: dict[str, bool]) -> dict[str, Fact]:
    """Combine index rows with the file checks into the facts ``commitment.evaluate`` takes."""
    return {uid: Fact(row.sop_class_uid, readable.get(uid, False)) for uid, row in found.items()}


def counts_by_state(conn: Any) -> dict[str, dict[str, int]]:
    """How many transactions and report outbox entries are in each state, on any connection
    to the index database (``nodectl status`` and the metrics endpoint read it read-only);
    a table the tracker has not created yet counts as empty."""
    counts: dict[str, dict[str, int]] = {}
    for key, table in (("transactions", "commit_transactions"), ("outbox", "commit_outbox")):
        try:
            counts[key] = {str(state): int(n) for state, n in conn.execute(f"SELECT state, COUNT(*) FROM {table} GROUP BY state").fetchall()}
        except conn.errors:
            counts[key] = {}
    return counts
