"""node.db, node.index and node.transactions on both backends: SQLite (always) and a
throwaway PostgreSQL server (skipped with the reason when it cannot be started here)."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from node import db
from node.commitment import Delivery, Ref, Report, State
from node.errors import StorageError
from node.index import MIGRATIONS, Index, InstanceRow
from node.transactions import TransactionStore
from tests.postgres import create_database, missing, running_postgres

_names = itertools.count()


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    reason = missing()
    if reason:
        pytest.skip(reason)
    with running_postgres() as pg:
        yield pg.url


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty database URL of each kind."""
    if request.param == "sqlite":
        return str(tmp_path / "node.sqlite")
    url: str = request.getfixturevalue("server")
    return create_database(url, f"t{next(_names)}")


def test_dialects_and_placeholders() -> None:
    assert db.dialect_of("/var/lib/node.sqlite") == db.SQLITE
    assert db.dialect_of("sqlite:///tmp/x.sqlite") == db.SQLITE
    assert db.dialect_of("postgresql://u@h/d") == db.dialect_of("postgres://u@h/d") == db.POSTGRESQL
    with pytest.raises(StorageError):
        db.dialect_of("mysql://u@h/d")
    assert db.translate("a = ? AND b LIKE '1%'", db.POSTGRESQL) == "a = %s AND b LIKE '1%%'"
    assert db.translate("a = ?", db.SQLITE) == "a = ?"
    assert db.redact("postgresql://node:secret@db:5432/node") == "postgresql://node@db:5432/node"


def test_migrations_apply_once_and_instances_upsert(database: str) -> None:
    first, second = Index(database), Index(database)
    try:
        assert second.migrate() == MIGRATIONS[-1][0]
        versions = first.db.execute("SELECT version FROM schema_version ORDER BY version").fetchall()
        assert [v for (v,) in versions] == [n for n, _ in MIGRATIONS]
        row = InstanceRow("1.2.3", "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.1.2.1", "/a.dcm", 10)
        first.record([row])
        first.record([InstanceRow("1.2.3", row.sop_class_uid, row.transfer_syntax, "/b.dcm", 20)])
        got = second.get("1.2.3")
        assert got is not None and (got.path, got.size) == ("/b.dcm", 20)
        assert second.count() == 1
    finally:
        first.close()
        second.close()


def test_migrations_from_two_processes_at_once(database: str) -> None:
    """Writer and tracker (and every node of a cluster) migrate at start-up together."""
    errors: list[BaseException] = []

    def open_one() -> None:
        try:
            Index(database).close()
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors


def test_transaction_round_trip_with_binary_report(database: str) -> None:
    store = TransactionStore(database)
    try:
        refs = (Ref("1.2.840.10008.5.1.4.1.1.2", "1.2.3.1"), Ref("1.2.840.10008.5.1.4.1.1.2", "1.2.3.2"))
        store.record("9.9.1", refs, local_aet="SCU", peer_aet="SCP", peer_host="h", peer_port=104, timeout=60)
        store.mark_sent("9.9.1", 0)
        report = Report("9.9.1", refs, ())
        txn, new = store.complete("9.9.1", report, b"\x00\x01\xff", "1.2.840.10008.1.2", "SCP")
        assert new and txn.state == State.COMPLETED and txn.report_data == b"\x00\x01\xff"
        assert store.refs("9.9.1") == refs
        assert [t.transaction_uid for t in store.ended_since(0.0)] == ["9.9.1"]
        store.keep_orphan(Report("9.9.2", refs, ()), None, "", "X", now=5.0)
        store.keep_orphan(Report("9.9.2", refs, ()), b"x", "", "Y", now=5.0)  # same key: replaced
        assert store.take_orphan("9.9.2", window=1e12, now=6.0)[3] == "Y"  # type: ignore[index]
    finally:
        store.close()


def test_an_outbox_row_is_claimed_by_one_tracker_only(database: str) -> None:
    """Two trackers on one database: a due report is leased to one of them, until it runs out."""
    a, b = TransactionStore(database, owner="a"), TransactionStore(database, owner="b")
    try:
        report = Report("7.7.1", (Ref("1.2", "1.2.3"),), ())
        a.outbox_put(report, requester_aet="SCU", called_aet="NODE", peer_host="h", request_hash="x",
                     first_attempt=100.0, expires=10_000.0, now=100.0)
        assert [e.transaction_uid for e in a.outbox_claim(lease=30, now=101.0)] == ["7.7.1"]
        assert b.outbox_claim(lease=30, now=102.0) == []
        assert [e.transaction_uid for e in b.outbox_claim(lease=30, now=140.0)] == ["7.7.1"]  # a's lease ran out
        after = b.outbox_attempted("7.7.1", delivered=True, error="", retry_at=0.0, now=141.0)
        assert after.state == Delivery.DELIVERED
        assert a.outbox_claim(lease=30, now=500.0) == []
    finally:
        a.close()
        b.close()


def test_a_database_from_before_the_cluster_migration_is_upgraded(tmp_path: Path) -> None:
    """A node's existing SQLite file (schema 2) gains the lease columns when it starts."""
    import sqlite3

    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        for version, statements in MIGRATIONS[:2]:
            for statement in statements:
                conn.execute(statement)
            conn.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))
        conn.execute("INSERT INTO commit_outbox (transaction_uid, requester_aet, called_aet, request_hash, event_type, report,"
                     " state, next_attempt, expires, created_at) VALUES ('1.2', 'A', 'B', 'h', 1, '{\"c\": [], \"f\": []}', 'queued', 0, 1e12, 0)")
    store = TransactionStore(str(path), owner="me")
    try:
        assert [e.transaction_uid for e in store.outbox_claim(lease=10, now=1.0)] == ["1.2"]
    finally:
        store.close()


def test_a_completed_transaction_is_notified_at_commit_and_a_lost_listen_connection_says_so(server: str) -> None:
    """Issue 16: ``complete`` NOTIFYs in its own transaction; a Listener on another connection
    gets the UID without polling (its socket becomes readable); after the server drops the
    connection, ``drain`` says None and ``connect`` listens again."""
    import select

    import psycopg

    from node.transactions import ENDED_CHANNEL

    url = create_database(server, f"t{next(_names)}")
    store = TransactionStore(url)
    listener = db.Listener(url, ENDED_CHANNEL)
    try:
        assert listener.connect()
        store.record("1.2.3.9", [Ref("1.2.840.10008.5.1.4.1.1.2", "1.2.3.9.1")], local_aet="A", peer_aet="B",
                     peer_host="", peer_port=0, timeout=60)
        assert listener.drain() == []  # recording a transaction ends nothing
        store.complete("1.2.3.9", Report("1.2.3.9", (), ()), None, "", "B")
        readable, _, _ = select.select([listener.fileno()], [], [], 5)
        assert readable, "no notification within 5 s"
        assert listener.drain() == ["1.2.3.9"]
        with psycopg.connect(url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'nodectl-listen'")
        # The server's error message and its end of the connection may come in two reads: the
        # socket stays readable until drain() has seen both (a poll loop calls it again).
        outcomes = []
        while listener.connected and len(outcomes) < 5 and select.select([listener.fileno()], [], [], 5)[0]:
            outcomes.append(listener.drain())
        assert outcomes[-1] is None and not listener.connected, outcomes
        assert listener.connect() and listener.drain() == []
    finally:
        listener.close()
        store.close()
