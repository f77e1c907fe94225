"""``nodectl send``'s job layer: the journal's resume filter and recording, transient retries.

Why a separate module: ``send.py`` orchestrates one run; what makes a run part of a job
(skip what an earlier run got acknowledged, record every outcome, retry 0xA7xx statuses on a
later association) lives here, next to the core's journal (``node.send_journal``), and the
throughput loop (``send_association``) knows nothing of it.
"""

from __future__ import annotations

import heapq
import itertools
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from node.send_journal import FAILED, SKIPPED, WRITE_SLICE, Outcome, SendJournal, file_identity
from node.tools.send_plan import FileEntry, Skipped
from node.tools.send_results import FileResult

ALREADY_ACKNOWLEDGED = "already acknowledged (journal)"


def collect_files(paths: Sequence[str], recurse: bool) -> tuple[Iterator[str], list[str]]:
    """The files named or found under ``paths``, streamed, in the order and with the rules of
    ``storescu.collect_files`` (sorted, de-duplicated, ``recurse`` for subdirectories); and the
    paths that are neither file nor directory, at once.

    Streamed so that a job of 1,000,000 files never holds its list: each directory is listed
    and sorted on its own, a subdirectory ordered as its name plus ``/`` (which is where its
    files fall in a sort of whole paths), and the named paths' streams merged.
    """
    named: list[str] = []  # files named one by one: one sorted stream (not a stream each: heapq.merge over
    streams: list[Iterator[str]] = []  # 5,000 one-file streams cost 4 ms)
    missing: list[str] = []
    for path in paths:
        if os.path.isfile(path):
            named.append(path)
        elif os.path.isdir(path):
            streams.append(_walk(path, recurse))
        else:
            missing.append(path)
    merged = heapq.merge(iter(sorted(named)), *streams)
    return (path for path, _same in itertools.groupby(merged)), missing


def _walk(directory: str, recurse: bool) -> Iterator[str]:
    """Files under ``directory`` in whole-path sort order (symlinked directories not followed).

    A directory's listing is held while its files are handed out: its names only, a
    subdirectory's marked by its trailing ``/`` (a million files in one directory hold ~70 MB so;
    (name, path) pairs held ~200 MB), each classified from the listing (``d_type``: no stat a file).
    """
    names: list[str] = []
    try:
        with os.scandir(directory) as listing:
            for entry in listing:
                if recurse and entry.is_dir(follow_symlinks=False):
                    names.append(entry.name + "/")
                elif entry.is_file():
                    names.append(entry.name)
    except OSError:
        return
    names.sort()
    for name in names:
        if name.endswith("/"):
            yield from _walk(os.path.join(directory, name[:-1]), recurse)
        else:
            yield os.path.join(directory, name)


def chunks(paths: Iterable[str], size: int) -> Iterator[list[str]]:
    """``paths`` in lists of at most ``size``."""
    stream = iter(paths)
    while chunk := list(itertools.islice(stream, size)):
        yield chunk


def is_transient(status: int | None) -> bool:
    """0xA7xx, Refused: Out of Resources (PS3.4 B.2.3): the peer may take it later.
    0xA900 (data set does not match SOP class) and the rest are final."""
    return status is not None and 0xA700 <= status <= 0xA7FF


@dataclass(slots=True)
class Resume:
    """What a journal says of this run's files: those to send, and how many it already has."""

    to_send: list[str] = field(default_factory=list)
    already: int = 0
    # path -> (absolute path, size, mtime_ns): what the journal records of each file sent
    identities: dict[str, tuple[str, int, int]] = field(default_factory=dict)


def resume(journal: SendJournal | None, paths: Iterable[str]) -> Resume:
    """The files not yet acknowledged, or changed (size, mtime) since they were; without a
    journal, or in a job's first run (nothing to skip), every file and no stat: the scan
    takes each file's identity with its own fstat (``scan(..., identities=True)``)."""
    if journal is None or not journal.resuming:
        return Resume(to_send=list(paths))
    cwd = os.getcwd()
    found = Resume(to_send=list(paths))  # a file without an identity too: the scan says why it cannot be read
    for path in found.to_send:
        identity = file_identity(path)
        if identity is not None:
            found.identities[path] = (journal_key(path, cwd), *identity)
    earlier = journal.acknowledged_among({key: (size, mtime_ns) for key, size, mtime_ns in found.identities.values()})
    if earlier:
        skip = {path for path, (key, _size, _mtime) in found.identities.items() if key in earlier}
        found.to_send = [path for path in found.to_send if path not in skip]
        found.already = len(skip)
        for path in skip:
            del found.identities[path]
    return found


def journal_key(path: str, cwd: str) -> str:
    """``os.path.abspath(path)``, the name a journal knows a file by, without its normalising
    pass where there is nothing to normalise (a directory walk's paths: ~2 µs a file)."""
    full = path if path.startswith("/") else os.path.join(cwd, path)
    return os.path.normpath(full) if "/." in full or "//" in full or full.endswith("/") else full


class JobRecorder:
    """Writes each outcome to the journal (a no-op without ``--journal``): the chunk's files
    once, before any is sent (``begin``); an acknowledgment at once to the journal's log, before
    the thread that received it sends its next C-STORE (so a kill -9 leaves at most the instance
    in flight per association unjournaled); all of them grouped into its files table."""

    def __init__(self, journal: SendJournal | None, identities: dict[str, tuple[str, int, int]]) -> None:
        self.journal = journal
        self.identities = identities
        self.cwd = os.getcwd()

    def _identity(self, path: str) -> tuple[str, int, int]:
        """(absolute path, size, mtime_ns) of ``path``: from the resume filter's stat, or now."""
        known = self.identities.get(path)
        if known is not None:
            return known
        size, mtime_ns = file_identity(path) or (-1, -1)
        return journal_key(path, self.cwd), size, mtime_ns

    def _entry_identity(self, entry: FileEntry) -> tuple[str, int, int]:
        """A sent file's identity: the scan's fstat (a first run), else the resume filter's."""
        if entry.mtime_ns >= 0:
            return journal_key(entry.path, self.cwd), entry.offset + entry.size, entry.mtime_ns
        return self._identity(entry.path)

    def begin(self, entries: Sequence[FileEntry]) -> None:
        """The chunk's files, before any is sent: what its acknowledgments' records refer to."""
        if self.journal is not None:
            self.journal.manifest([(entry.index, *self._entry_identity(entry), entry.sop_class_uid, entry.sop_instance_uid)
                                   for entry in entries])

    def file(self, entry: FileEntry, result: FileResult) -> None:
        """Record one file's outcome; called from the thread that got it from the peer (for an
        acknowledgment) or from the main thread (any outcome)."""
        if self.journal is None:
            return
        if result.sent:
            self.journal.record_ack(entry.index, result.status, result.bytes)
            return
        key, size, mtime_ns = self._entry_identity(entry)
        self.journal.record(Outcome(
            path=key, size=size, mtime_ns=mtime_ns, outcome=FAILED, sop_class_uid=entry.sop_class_uid,
            sop_instance_uid=entry.sop_instance_uid, status=result.status, reason=result.reason, bytes=result.bytes))

    def skipped(self, items: Sequence[Skipped]) -> None:
        if self.journal is None:
            return
        for item in items:
            key, size, mtime_ns = self._identity(item.path)
            self.journal.record(Outcome(path=key, size=size, mtime_ns=mtime_ns,
                                        outcome=SKIPPED, reason=item.reason))

    def flush_due(self) -> None:
        if self.journal is not None:
            self.journal.flush_due()

    def waiting(self) -> bool:
        """Whether a slice of rows waits (``send_multiplex.Idle``: written while the peers work)."""
        return self.journal is not None and self.journal.queued() >= WRITE_SLICE

    def step(self) -> None:
        assert self.journal is not None
        self.journal.write_some(WRITE_SLICE)

    def flush(self) -> None:
        if self.journal is not None:
            self.journal.flush()

    def settle(self) -> None:
        """Once no worker runs: every outcome in the journal's files, its acknowledgment log emptied."""
        if self.journal is not None:
            self.journal.settle()
