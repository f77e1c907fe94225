"""A worker's journal (node/worker_journal.py): appended by several threads, one flush per
group; read by another party as it grows, across laps, restarts and a torn group."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from node.errors import StorageError
from node.journal import Entry, Journal
from node.worker_journal import GroupCommit, JournalTail


def _entry(uid: str, size: int = 5000, at: float = 0.0) -> Entry:
    return Entry(body={"uid": uid, "path": f"/store/{uid}", "received_at": at}, parts=[os.urandom(size)])


def _opened(path: Path) -> Journal:
    journal = Journal(path)
    journal.open()
    journal.start_after_recovery(0)
    return journal


def test_concurrent_appends_share_flushes_and_each_gets_its_own_record(tmp_path: Path) -> None:
    journal = _opened(tmp_path / "journal-worker-0")
    group = GroupCommit(journal, checkpoint=lambda: 0, readopt=lambda: None, delay=0.003)
    records: dict[str, int] = {}

    def store(thread: int) -> None:
        for n in range(50):
            uid = f"{thread}.{n}"
            records[uid] = group.append(_entry(uid)).seq

    threads = [threading.Thread(target=store, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(records.values()) == list(range(min(records.values()), min(records.values()) + 200))
    assert group.flushes < 200, "every append flushed on its own: no group formed"
    tail = JournalTail(journal.path)
    assert tail.open()
    tail.rescan(0)
    assert {r.body["uid"]: r.seq for r in tail.pending} == records


def test_a_tail_follows_appends_laps_and_a_restart_but_not_a_torn_group(tmp_path: Path) -> None:
    journal = _opened(tmp_path / "journal-worker-0")
    journal.append([_entry("a"), _entry("b")])
    tail = JournalTail(journal.path)
    assert tail.open()
    tail.rescan(0)
    assert [r.body["uid"] for r in tail.pending] == ["a", "b"]
    journal.append([_entry("c")])
    assert [r.body["uid"] for r in tail.poll()] == ["c"]
    tail.materialised(tail.seen)
    journal.switch()  # the next lap, at the head of the other segment
    journal.append([_entry("d")])
    assert [r.body["uid"] for r in tail.poll()] == ["d"]
    journal.switch()  # back to the first segment's head, over a, b, c
    journal.append([_entry("e")])
    assert [r.body["uid"] for r in tail.poll()] == ["e"]
    # A group torn by a crash: its bytes are there, its CRC fails; nothing of it is read.
    start = journal.offset
    journal.append([_entry("torn")])
    os.pwrite(journal.fd, b"\xff" * 64, start + 200)
    assert tail.poll() == []
    # The restarted worker's new lap, numbered far above: found at the head.
    journal.start_after_recovery(tail.seen)
    journal.append([_entry("f")])
    assert [r.body["uid"] for r in tail.poll()] == ["f"]
    assert [r.body["uid"] for r in tail.pending] == ["d", "e", "f"]


def test_a_lap_waits_for_the_writers_checkpoint_before_overwriting(tmp_path: Path, monkeypatch) -> None:
    """The other segment is only written again once everything there is materialised."""
    import node.worker_journal as wj

    monkeypatch.setattr(wj, "LAP_BYTES", 20_000)
    monkeypatch.setattr(wj, "CHECKPOINT_EVERY_S", 0.0)
    journal = _opened(tmp_path / "journal-worker-0")
    checkpoint = [0]
    group = GroupCommit(journal, checkpoint=lambda: checkpoint[0], readopt=lambda: None)
    for n in range(12):  # fills the first segment past LAP_BYTES, then a lap in the second
        group.append(_entry(f"x{n}"))
    assert journal.current == 1
    first_lap_last = journal.other_last_seq
    for n in range(12):  # the second segment passes LAP_BYTES too; the first is not materialised
        group.append(_entry(f"y{n}"))
    assert journal.current == 1, "went back over records the writer had not materialised"
    checkpoint[0] = first_lap_last
    group.append(_entry("z"))
    assert journal.current == 0


def test_after_a_failed_append_nothing_is_appended_until_the_writer_adopted_the_journal_again(tmp_path: Path) -> None:
    journal = _opened(tmp_path / "journal-worker-0")
    adopted: list[int] = []
    answer: list[int | None] = [None]

    def readopt() -> int | None:
        adopted.append(1)
        return answer[0]

    group = GroupCommit(journal, checkpoint=lambda: 0, readopt=readopt)
    first = group.append(_entry("a"))
    fd = journal.segments[0].fd
    journal.segments[0].fd = 10_000  # a bad descriptor: the next append fails
    try:
        group.append(_entry("b"))
        raise AssertionError("an append on a bad descriptor succeeded")
    except StorageError:
        pass
    journal.segments[0].fd = fd
    try:
        group.append(_entry("c"))  # the writer does not adopt it (answer None): still refused
        raise AssertionError("appended before the writer adopted the journal again")
    except StorageError:
        pass
    assert adopted == [1]
    answer[0] = first.seq
    group.last_repair = 0.0
    record = group.append(_entry("d"))
    assert record.seq > first.seq + (1 << 31), "the new lap is not numbered far above what the writer read"
    tail = JournalTail(journal.path)
    assert tail.open()
    tail.rescan(0)
    assert [r.body["uid"] for r in tail.pending][-1] == "d"
