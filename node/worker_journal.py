"""Journals written by the association workers, read by the writer (issue 12).

A C-STORE success needs its instance durable, not yet at its final path. Each worker process
appends the instances its associations receive to a journal of its own (``node.journal``'s
format and segments, at ``.incoming/journal-<worker name>``), one ``RWF_DSYNC`` write for
every group of instances that arrived while the previous group was being flushed (group
commit across the worker's associations, ``GroupCommit``), and answers the peers once that
write has returned. Before, the worker asked the writer over the bus and waited for its
journal's flush: two more process hops on every acknowledged instance, with the writer's
work between them (docs/benchmarks.md, 2026-12-03: ~1.35x the rate on one association).

The writer reads these journals as they grow (``JournalTail``): the journal is the message.
It materialises what it finds exactly as it does its own records, moving the checkpoint of
that journal (``journal_checkpoints``, in the same transaction as the index rows). The worker
reads that checkpoint before it starts a lap in its other segment, so that it only ever
overwrites records that are materialised. A worker that starts asks the writer to adopt its
journal (``AdoptJournal``): the writer materialises every record past the checkpoint, and the
worker starts a new lap numbered far above them (``Journal.start_after_recovery``).

Only instances that need no decision against other instances take this path: under
``store.duplicates = overwrite`` (the default), inline (not spooled), with the journal on.
``keep`` and ``reject`` look at every instance the node holds or has acknowledged, which only
the writer sees: they keep the writer's path.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from node.errors import StorageError
from node.journal import (
    HEADER_SIZE,
    Entry,
    Journal,
    Record,
    header_id,
    read_record,
    scan,
    segment_paths,
)

PREFIX = "journal-"
LAP_BYTES = 16 << 20  # past this, start a lap in the other segment once everything there is materialised
JOURNAL_MAX_BYTES = 256 << 20  # past this, wait for the writer to materialise the other segment
CHECKPOINT_EVERY_S = 0.02  # the index's checkpoint is read at most this often while a switch waits for it
ROOM_POLL_S = 0.05
SIBLING_WINDOW_S = 0.1  # an association that appended within this long is expected in the next group
REPAIR_EVERY_S = 1.0  # after a failed append, how often the writer is asked to adopt the journal again


def path_for(store_directory: Path, worker_name: str) -> Path:
    """The first segment of worker ``worker_name``'s journal (inside ``.incoming``)."""
    return Path(store_directory) / ".incoming" / f"{PREFIX}{worker_name}"


def all_paths(store_directory: Path) -> list[Path]:
    """Every worker journal of a store (first segments), e.g. for the writer's replay at start."""
    incoming = Path(store_directory) / ".incoming"
    try:
        names = sorted(os.listdir(incoming))
    except FileNotFoundError:
        return []
    return [incoming / n for n in names if n.startswith(PREFIX) and "." not in n]


@dataclass(slots=True)
class _Slot:
    entry: Entry
    record: Record | None = None
    error: StorageError | None = None
    done: bool = False


class GroupCommit:
    """A worker's journal, appended to by its association threads; one flush per group.

    The first thread to find no flush under way leads: it takes every entry queued so far,
    waits (up to ``delay`` s, PostgreSQL's commit_delay) for associations that appended in the
    last SIBLING_WINDOW_S and are not in the group yet, appends the group with one flush,
    and wakes the others. Entries that arrive meanwhile form the next group.
    """

    def __init__(self, journal: Journal, checkpoint: Callable[[], int], readopt: Callable[[], int | None], *,
                 delay: float = 0.0, wait_s: float = 10.0) -> None:
        self.journal = journal
        self.checkpoint = checkpoint  # the writer's checkpoint of this journal (from the index)
        self.readopt = readopt  # the writer adopts the journal again: the seq it answers, or None
        self.last_repair = 0.0
        self.delay = delay
        self.wait_s = wait_s  # the longest an append waits for room (then: out of resources)
        self.cond = threading.Condition()
        self.queue: list[_Slot] = []
        self.flushing = False
        self.broken: str | None = None  # set by a failed append: nothing more is appended
        self.recent: dict[int, float] = {}  # thread -> when it last appended
        self.flushes = 0
        self._known_checkpoint = 0
        self._checkpoint_read = 0.0

    def append(self, entry: Entry) -> Record:
        """Journal ``entry``; returns once the group holding it is durable. StorageError if not."""
        slot = _Slot(entry)
        if self.broken is not None:
            self._repair()
        with self.cond:
            if self.broken is not None:
                raise StorageError(f"worker journal not writable: {self.broken}")
            self.recent[threading.get_ident()] = time.monotonic()
            self.queue.append(slot)
            if self.flushing:
                self.cond.notify_all()  # a leader may be waiting for this association
            while self.flushing and not slot.done:
                self.cond.wait()
            if not slot.done and self.broken is not None:  # the group before failed, or a repair did
                self.queue.remove(slot)
                raise StorageError(f"worker journal not writable: {self.broken}")
            if not slot.done:
                group = self._lead()
        if not slot.done:
            self._flush(group)
        if slot.error is not None:
            raise slot.error
        assert slot.record is not None
        return slot.record

    def _repair(self) -> None:
        """After a failed append, part of that group may be on disk, readable by the writer:
        appending at the same place again could change bytes it has read. So the writer
        adopts the journal again (it reads and materialises all it can, without racing a
        poll), and appends go on in a new lap numbered above anything it read. Tried at most
        every REPAIR_EVERY_S; until then appends are refused (out of resources)."""
        with self.cond:
            if self.broken is None or self.flushing or time.monotonic() - self.last_repair < REPAIR_EVERY_S:
                return
            self.flushing = True
            self.last_repair = time.monotonic()
        seq: int | None = None
        try:
            seq = self.readopt()
        finally:
            with self.cond:
                if seq is not None:
                    self.journal.start_after_recovery(seq)
                    self.broken = None
                self.flushing = False
                self.cond.notify_all()

    def _lead(self) -> list[_Slot]:
        """With ``cond`` held: take the queue as the next group, after waiting for siblings."""
        self.flushing = True
        if self.delay > 0:
            deadline = time.monotonic() + self.delay
            while self._siblings() > len(self.queue) and (left := deadline - time.monotonic()) > 0:
                self.cond.wait(left)
        group, self.queue = self.queue, []
        return group

    def _siblings(self) -> int:
        now = time.monotonic()
        self.recent = {t: at for t, at in self.recent.items() if at > now - SIBLING_WINDOW_S}
        return len(self.recent)

    def _flush(self, group: list[_Slot]) -> None:
        try:
            self._make_room()
            records = self.journal.append([s.entry for s in group])
        except Exception as failure:  # noqa: BLE001 - any failure must release the group's waiters
            exc = failure if isinstance(failure, StorageError) else StorageError(f"worker journal append failed: {failure}")
            with self.cond:
                self.broken = str(exc)
                for s in group:
                    s.error, s.done = exc, True
                self.flushing = False
                self.cond.notify_all()
            return
        with self.cond:
            self.flushes += 1
            for s, record in zip(group, records):
                s.record, s.done = record, True
            self.flushing = False
            self.cond.notify_all()

    def _make_room(self) -> None:
        """Past LAP_BYTES, go on at the head of the other segment once the writer has
        materialised everything there; past JOURNAL_MAX_BYTES, wait for it (bounded)."""
        journal = self.journal
        if journal.offset <= LAP_BYTES:
            return
        deadline = time.monotonic() + self.wait_s
        while journal.other_last_seq > self._materialised():
            if journal.offset <= JOURNAL_MAX_BYTES:
                return
            if time.monotonic() >= deadline:
                raise StorageError(f"worker journal full ({journal.offset} bytes): the writer has not materialised it")
            time.sleep(ROOM_POLL_S)
        journal.switch()

    def _materialised(self) -> int:
        now = time.monotonic()
        if now - self._checkpoint_read >= CHECKPOINT_EVERY_S:
            self._known_checkpoint = self.checkpoint()
            self._checkpoint_read = now
        return self._known_checkpoint


class JournalTail:
    """A worker's journal as the writer reads it while the worker appends.

    ``seen`` is the highest number read (or known materialised). The next record, if any, is
    the one with the smallest number above ``seen`` at one of three places: right after the
    last record read, or at the head of either segment (a new lap, or the first lap after the
    worker restarted). Records of earlier laps have lower numbers; a group still being
    written, or torn by a crash, fails its CRC. ``pending`` holds what was read and is not
    materialised yet, in order.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.paths = segment_paths(self.path)
        self.fds = [-1, -1]
        self.journal_id = ""
        self.seen = 0
        self.position: tuple[int, int] | None = None  # (segment, offset) after the last record read
        self.pending: list[Record] = []

    def open(self) -> bool:
        """Open both segments read-only; False if the journal is not there (yet) or not one."""
        self.close()
        try:
            self.fds[0] = os.open(self.paths[0], os.O_RDONLY)
            self.journal_id = header_id(self.fds[0])
            if not self.journal_id:
                self.close()
                return False
            second = os.open(self.paths[1], os.O_RDONLY)
        except FileNotFoundError:
            self.close()
            return False
        if header_id(second) == self.journal_id:
            self.fds[1] = second
        else:
            os.close(second)  # not this journal's (yet): the worker makes it anew before it writes there
        return True

    def close(self) -> None:
        for n, fd in enumerate(self.fds):
            if fd >= 0:
                os.close(fd)
                self.fds[n] = -1

    def rescan(self, checkpoint: int) -> None:
        """Read both segments from their heads: ``pending`` becomes every record past
        ``checkpoint``; ``seen`` the highest number found (at least ``checkpoint``)."""
        found = sorted((r for n, fd in enumerate(self.fds) if fd >= 0 for r in scan(fd, segment=n)), key=lambda r: r.seq)
        self.pending = [r for r in found if r.seq > checkpoint]
        self.seen = max([checkpoint, *(r.seq for r in found)])
        self.position = (found[-1].segment, found[-1].end) if found else None

    def poll(self) -> list[Record]:
        """Records appended since the last poll (also kept in ``pending``), in order."""
        new: list[Record] = []
        sizes = [os.fstat(fd).st_size if fd >= 0 else 0 for fd in self.fds]  # once a poll, not once a record
        while (record := self._next(sizes)) is not None:
            new.append(record)
            self.seen = record.seq
            self.position = (record.segment, record.end)
        self.pending.extend(new)
        return new

    def _next(self, sizes: list[int]) -> Record | None:
        if self.position is not None:
            segment, offset = self.position
            record = read_record(self.fds[segment], offset, sizes[segment], segment=segment)
            if record is not None and record.seq == self.seen + 1:
                return record
        heads = [read_record(fd, HEADER_SIZE, sizes[n], segment=n) for n, fd in enumerate(self.fds) if fd >= 0]
        later = [r for r in heads if r is not None and r.seq > self.seen]
        return min(later, key=lambda r: r.seq) if later else None

    def materialised(self, upto: int) -> None:
        """Records up to ``upto`` are materialised: drop them from ``pending``."""
        self.pending = [r for r in self.pending if r.seq > upto]


def backlog(paths: Sequence[Path], checkpoint: Callable[[str], int]) -> dict[str, int]:
    """Records past the checkpoints of the worker journals at ``paths`` (for status)."""
    instances = size = 0
    for path in paths:
        tail = JournalTail(path)
        if not tail.open():
            continue
        try:
            tail.rescan(checkpoint(tail.journal_id))
            instances += len(tail.pending)
            size += sum(r.data_length for r in tail.pending)
        finally:
            tail.close()
    return {"instances": instances, "bytes": size}
