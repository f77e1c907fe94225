"""The writer's journal (node/journal.py): what a scan after a crash takes as acknowledged.

No sockets, no node: a journal file in a temp directory, damaged the ways a crash can damage
it (a group cut short, a torn record, a new lap shorter than the old one).
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import msgpack
import pytest

from node import journal
from node.errors import StorageError
from node.journal import HEADER_SIZE, RECORD, Entry, Journal
from node.storage import Store


def _entry(n: int, size: int = 100) -> Entry:
    return Entry(body={"uid": f"1.2.{n}", "path": f"/x/{n}"}, parts=[bytes([n % 256]) * size, b"tail"])


def _open(tmp_path: Path) -> Journal:
    j = Journal(tmp_path / "journal")
    j.open()
    return j


def test_records_come_back_in_order_with_their_bytes(tmp_path: Path) -> None:
    j = _open(tmp_path)
    written = j.append([_entry(1), _entry(2)]) + j.append([_entry(3, 5000)])
    scanned = list(j.records())
    assert [r.seq for r in scanned] == [1, 2, 3] == [r.seq for r in written]
    assert [r.body["uid"] for r in scanned] == ["1.2.1", "1.2.2", "1.2.3"]
    third = scanned[2]
    assert os.pread(j.fd, third.data_length, third.data_offset) == bytes([3]) * 5000 + b"tail"
    j.close()


def test_a_record_checked_with_zlibs_crc32_is_read_back(tmp_path: Path) -> None:
    """The CRC is zlib's CRC-32 (computed by ISA-L since 2026-12-05): a journal a node left
    unmaterialised before an upgrade is replayed by the upgraded one, not cut at its first record."""
    j = _open(tmp_path)
    body, data = msgpack.packb({"uid": "1.2.9", "path": "/x/9"}, use_bin_type=True), b"\x07" * 70000
    crc = zlib.crc32(struct.pack("<QIQ", 1, len(body), len(data)) + body + data)
    os.pwrite(j.fd, RECORD.pack(b"NJR1", crc, 1, len(body), len(data)) + body + data, HEADER_SIZE)
    [record] = j.records()
    assert (record.seq, record.body["uid"]) == (1, "1.2.9")
    assert os.pread(j.fd, record.data_length, record.data_offset) == data
    os.pwrite(j.fd, b"\x08", record.data_offset + 69999)  # and a byte changed is still caught
    assert list(j.records()) == []
    j.close()


def test_a_second_writer_of_the_same_journal_waits_then_gives_up(tmp_path: Path, monkeypatch) -> None:
    """The lock a restarted writer waits on until its predecessor's materialiser is gone; a
    process that still holds the first segment's descriptor (the materialiser) keeps it."""
    monkeypatch.setattr(journal, "LOCK_WAIT_S", 0.3)
    first = _open(tmp_path)
    inherited = os.dup(first.segments[0].fd)  # what the materialiser process holds
    first.close()
    try:
        with pytest.raises(StorageError, match="locked by another writer"):
            _open(tmp_path)
    finally:
        os.close(inherited)
    _open(tmp_path).close()


def test_reopening_keeps_the_id(tmp_path: Path) -> None:
    j = _open(tmp_path)
    first = j.journal_id
    j.close()
    again = _open(tmp_path)
    assert again.journal_id == first == journal.journal_id(tmp_path / "journal")
    assert len(first) == 32
    again.close()


def test_a_group_cut_short_ends_the_scan_at_the_last_whole_record(tmp_path: Path) -> None:
    j = _open(tmp_path)
    j.append([_entry(1)])
    second = j.append([_entry(2), _entry(3)])
    # a crash before the group's fdatasync: the first record of the group is torn, the second whole
    os.pwrite(j.fd, b"\xff" * 10, second[0].data_offset + 5)
    assert [r.seq for r in j.records()] == [1]
    j.close()


def test_a_truncated_file_ends_the_scan(tmp_path: Path) -> None:
    j = _open(tmp_path)
    records = j.append([_entry(1), _entry(2)])
    os.ftruncate(j.fd, records[1].data_offset + 3)
    assert [r.seq for r in j.records()] == [1]
    j.close()


def test_a_new_lap_never_continues_into_the_old_one(tmp_path: Path) -> None:
    j = _open(tmp_path)
    j.append([_entry(n, 1000) for n in range(1, 6)])  # seq 1..5 in the first segment
    j.switch()
    j.append([_entry(8, 1000)])  # seq 6 in the second
    j.switch()
    j.append([_entry(n, 1000) for n in range(6, 8)])  # seq 7, 8 over the old 1, 2 (same sizes)
    # old 3 follows 8 in the first segment: not 9, so the chain ends; 6 is still in the second
    assert [r.seq for r in j.records()] == [6, 7, 8]
    assert [r.segment for r in j.records()] == [1, 0, 0]
    j.close()


def test_segments_are_written_in_turn_and_scanned_in_order(tmp_path: Path) -> None:
    """Each switch starts a lap at the head of the other segment; the records of both come
    back in order of their numbers, each read from its own segment, also after reopening."""
    j = _open(tmp_path)
    first = j.append([_entry(1), _entry(2)])
    assert j.other_last_seq == 0  # the second segment holds nothing yet
    j.switch()
    second = j.append([_entry(3, 3000)])
    assert j.other_last_seq == 2 and second[0].offset == HEADER_SIZE and second[0].segment == 1
    j.close()
    again = _open(tmp_path)
    assert again.journal_id == journal.journal_id(tmp_path / "journal")
    scanned = list(again.records())
    assert [(r.seq, r.segment) for r in scanned] == [(1, 0), (2, 0), (3, 1)]
    assert [r.offset for r in scanned] == [r.offset for r in first + second]
    assert os.pread(again.fd_of(scanned[2]), 3004, scanned[2].data_offset) == bytes([3]) * 3000 + b"tail"
    assert journal.backlog(tmp_path / "journal", checkpoint=1) == {"instances": 2, "bytes": 104 + 3004}
    again.close()


def test_a_second_segment_of_another_journal_is_made_anew(tmp_path: Path) -> None:
    """The first segment removed (a new journal, a new id): what the old second segment
    holds belongs to the old journal's numbers and must not be replayed as this one's."""
    j = _open(tmp_path)
    j.switch()
    j.append([_entry(1), _entry(2)])
    j.close()
    (tmp_path / "journal").unlink()
    again = _open(tmp_path)
    assert list(again.records()) == []
    assert journal.journal_id(tmp_path / "journal.1") == again.journal_id != j.journal_id
    again.close()


def test_after_recovery_a_left_over_record_cannot_join_the_new_lap(tmp_path: Path) -> None:
    j = _open(tmp_path)
    old = j.append([_entry(1), _entry(2), _entry(3)])
    # the crash tore record 2 of that group; record 3 (never acknowledged) is whole
    os.pwrite(j.fd, b"\x00" * 4, old[1].offset)
    assert [r.seq for r in j.records()] == [1]
    j.start_after_recovery(1)
    j.append([_entry(4)])  # the same size as record 1: record 2's slot follows, then 3
    os.pwrite(j.fd, os.pread(j.fd, RECORD.size, old[2].offset), old[1].offset)  # worst case: a whole old record right behind
    scanned = list(j.records())
    assert [r.body["uid"] for r in scanned] == ["1.2.4"]
    j.close()


def test_backlog_counts_records_past_the_checkpoint(tmp_path: Path) -> None:
    j = _open(tmp_path)
    j.append([_entry(1), _entry(2), _entry(3, 400)])
    info = journal.backlog(tmp_path / "journal", checkpoint=1)
    assert info == {"instances": 2, "bytes": (100 + 4) + (400 + 4)}
    assert journal.backlog(tmp_path / "nothing", 0) == {"instances": 0, "bytes": 0}
    j.close()


def test_materialise_puts_exact_bytes_at_final_paths(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    store.prepare()
    j = Journal(tmp_path / "store" / ".incoming" / "journal")
    j.open()
    records = j.append([_entry(1, 3000), _entry(2, 70000)])
    finals = [Path(store.check_target("a/b/one.dcm")), Path(store.check_target("c/two.dcm"))]
    errors = store.materialise([(f, j.fd_of(r), r.data_offset, r.data_length) for f, r in zip(finals, records)])
    assert errors == [None, None]
    assert finals[0].read_bytes() == bytes([1]) * 3000 + b"tail"
    assert finals[1].read_bytes() == bytes([2]) * 70000 + b"tail"
    assert list(store.tmp_dir.iterdir()) == []
    assert records[0].offset == HEADER_SIZE
    j.close()


def test_check_target_refuses_what_a_later_rename_could_not_do(tmp_path: Path) -> None:
    import pytest

    from node.errors import PathError

    store = Store(tmp_path / "store")
    store.prepare()
    (tmp_path / "store" / "dir.dcm").mkdir()
    (tmp_path / "store" / "file").write_bytes(b"x")
    with pytest.raises(PathError):
        store.check_target("dir.dcm")
    with pytest.raises(PathError):
        store.check_target("file/below/x.dcm")
    with pytest.raises(PathError):
        store.check_target("../outside.dcm")
    assert store.check_target("new/dir/x.dcm") == str((tmp_path / "store" / "new" / "dir" / "x.dcm").resolve())


def test_a_group_past_the_end_extends_the_file_with_zeros_that_end_the_scan(tmp_path: Path) -> None:
    """Preallocation: later small groups overwrite blocks already written (no growth per flush),
    and a reopened journal's scan stops at the zeros after the last record."""
    j = _open(tmp_path)
    first = j.append([_entry(1)])
    size = os.fstat(j.fd).st_size
    assert size == first[-1].end + journal.PREALLOCATE
    second = j.append([_entry(2, 5000), _entry(3, 5000)])
    assert os.fstat(j.fd).st_size == size and second[-1].end < size
    j.close()
    again = _open(tmp_path)
    assert [r.seq for r in again.records()] == [1, 2, 3] and again.allocated == size
    again.close()


def test_a_large_group_past_the_end_grows_the_file_without_zeros(tmp_path: Path) -> None:
    """Zeros ahead of a large group would double the bytes written for it: the file ends at
    its last record, a small group after it preallocates again, and a scan reads all three."""
    j = _open(tmp_path)
    large = j.append([_entry(1, journal.ZERO_FILL_MAX_GROUP)])
    assert os.fstat(j.fd).st_size == large[-1].end == j.allocated
    small = j.append([_entry(2)])
    assert os.fstat(j.fd).st_size == small[-1].end + journal.PREALLOCATE == j.allocated
    inside = j.append([_entry(3, 2 * journal.ZERO_FILL_MAX_GROUP)])
    assert os.fstat(j.fd).st_size == small[-1].end + journal.PREALLOCATE and inside[-1].end < j.allocated
    j.close()
    again = _open(tmp_path)
    scanned = list(again.records())
    assert [r.seq for r in scanned] == [1, 2, 3]
    assert os.pread(again.fd, 4, scanned[0].data_offset + journal.ZERO_FILL_MAX_GROUP) == b"tail"
    again.close()
