"""The materialiser's batch (actors/materialiser.py ``materialise``), in one process: an
instance sent twice through two workers' journals keeps the copy received last, whichever
journal is materialised first."""

from __future__ import annotations

import os
from pathlib import Path

from actors.materialiser import materialise
from node.index import Index
from node.journal import Entry, Journal
from node.storage import Store


def _journal_with(path: Path, uid: str, final: Path, data: bytes, received_at: float) -> tuple[Journal, list]:
    journal = Journal(path)
    journal.open()
    journal.start_after_recovery(0)
    body = {"uid": uid, "path": str(final), "relpath": final.name, "sop_class_uid": "1.2.840.10008.5.1.4.1.1.2",
            "transfer_syntax": "1.2.840.10008.1.2.1", "study_uid": "1.2", "series_uid": "1.2.3", "patient_id": "P",
            "calling_aet": "SCU", "called_aet": "NODE", "received_at": received_at}
    return journal, journal.append([Entry(body=body, parts=[data])])


def test_the_copy_received_last_wins_whichever_journal_comes_first(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    store.prepare()
    index = Index(str(tmp_path / "index.sqlite"))
    final = store.directory / "1.2.3.4"
    older, newer = os.urandom(3000), os.urandom(3000)
    a, a_records = _journal_with(store.directory / ".incoming" / "journal-worker-0", "1.2.3.4", final, older, 100.0)
    b, b_records = _journal_with(store.directory / ".incoming" / "journal-worker-1", "1.2.3.4", final, newer, 200.0)
    try:
        assert materialise(store, index, [s.fd for s in b.segments], b.journal_id, b_records) is None
        assert materialise(store, index, [s.fd for s in a.segments], a.journal_id, a_records) is None
        assert final.read_bytes() == newer
        assert index.get("1.2.3.4").received_at == 200.0
        assert index.checkpoint(a.journal_id) == a_records[-1].seq, "the skipped record's journal must still move on"
    finally:
        a.close()
        b.close()
        index.close()
