"""The runtime's introspection against a real index database: the counts ``nodectl status``
and the metrics endpoint show, read-only, through the modules that own the tables. (Against
a whole running node: tests/tools/test_status.py and tests/actors/test_metrics.py.)"""

from __future__ import annotations

import sqlite3
from dataclasses import replace
from pathlib import Path

from actors import introspect
from node import config as configuration
from node.commitment import Ref
from node.index import Index, InstanceRow
from node.transactions import TransactionStore


def node_config(tmp_path: Path) -> configuration.NodeConfig:
    return replace(configuration.load(None), database=str(tmp_path / "node.sqlite"), directory=tmp_path / "store")


def test_a_database_not_created_yet_is_reported_not_raised(tmp_path: Path) -> None:
    counts = introspect.database(node_config(tmp_path))
    assert "node.sqlite" in counts["error"]


def test_tables_not_created_yet_count_as_empty(tmp_path: Path) -> None:
    config = node_config(tmp_path)
    sqlite3.connect(config.database).close()  # the file exists, the writer has not migrated it yet
    assert introspect.database(config) == {"instances": 0, "transactions": {}, "outbox": {}}


def test_instances_and_transactions_by_state(tmp_path: Path) -> None:
    config = node_config(tmp_path)
    index = Index(config.database)
    index.record([InstanceRow(sop_instance_uid=f"1.2.{n}", sop_class_uid="1.2.840.10008.5.1.4.1.1.2", transfer_syntax="1.2.840.10008.1.2.1",
                              path=f"{n}.dcm", size=10) for n in range(3)])
    index.close()
    store = TransactionStore(config.database)
    for uid in ("9.1", "9.2"):
        store.record(uid, [Ref("1.2.840.10008.5.1.4.1.1.2", "1.2.0")], local_aet="NODE", peer_aet="PEER", peer_host="127.0.0.1",
                     peer_port=104, timeout=60)
    store.mark_sent("9.2", 0)
    store.close()
    assert introspect.database(config) == {"instances": 3, "transactions": {"pending": 1, "requested": 1}, "outbox": {}}
