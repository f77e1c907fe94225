"""The materialiser: the writer's helper process that copies journaled instances to their
final paths and records them in the index (issue 12).

Why a process of its own: as a thread of the writer, the file creations, renames and index
transactions held the writer's GIL between their system calls, and the writer's main thread
(which answers every C-STORE) waited for it to come back: with the materialiser held back,
one association stored 20-30% more images a second and four 35% more (docs/benchmarks.md,
2026-12-02). In its own process, at a lower CPU priority, it takes nothing from the writer
but the CPU it uses.

The writer keeps every decision: its materialiser thread (``actors/writer.py``) paces the
batches, keeps the queue, the pending instances and the checkpoint, and hands each batch
here as ``MaterialiseRecords``; this process does the work (``materialise``) and answers
``RecordsMaterialised``. The replay at the writer's start runs the same function in the
writer itself, so that a node serves without waiting for this process to start.

The two talk over a pipe pair (the child's stdin and stdout; each message is the bus's
frames, ``node.messages.pack``, each frame length-prefixed): only the writer can reach it, and
either side sees the other's death as the end of the pipe. The child reads the journal
through the writer's own descriptors (inherited; ``copy_file_range`` at explicit offsets),
and the first of them carries the writer's lock on the journal (``Journal.open``): a writer
restarted after a SIGKILL waits for the lock, so the old materialiser, SIGKILLed with its
parent (``PR_SET_PDEATHSIG``), is gone, its last system call finished, before the replay
begins.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import struct
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from node.errors import MessageError, StorageError
from node.index import Index, InstanceRow
from node.journal import Journal, Record, header_id
from node.messages import MaterialiseRecords, RecordsMaterialised, pack, unpack
from node.storage import Store

log = logging.getLogger("actors.materialiser")

NAME = "materialiser"
NICE = 10  # below the actors that answer peers: it only has to keep up, not to be quick
_LEN = struct.Struct("<I")
_PR_SET_PDEATHSIG = 1


def materialise(store: Store, index: Index, fds: Sequence[int], journal_id: str, batch: Sequence[Record]) -> str | None:
    """Files to final paths (two syncfs), rows and checkpoint in one transaction; why not, on failure.

    Only the last record of an instance in the batch is materialised (an overwrite
    replaces the earlier one anyway), and not at all when the index already holds a copy
    received later: the writer's journal and each worker's are materialised in batches of
    their own, so a copy sent again through another worker may reach the index first, and
    the one received last must stay (``overwrite``). A file made obsolete by an overwrite at
    another path is removed before the second syncfs: until the transaction its row names a
    missing file, which a crash leaves only until the replay (which runs before the writer serves).
    """
    last: dict[str, Record] = {}
    for record in batch:
        last[record.body["uid"]] = record
    previous = {uid: index.get(uid) for uid in last}
    for uid, old in previous.items():
        if old is not None and old.received_at > last[uid].body.get("received_at", 0.0):
            del last[uid]
    if not last:
        try:
            index.record([], checkpoint=(journal_id, batch[-1].seq))
        except StorageError as exc:
            return f"index write failed: {exc}"
        return None
    records = list(last.values())
    obsolete = [Path(old.path) for uid, old in previous.items() if uid in last and old is not None and old.path != last[uid].body["path"]]
    errors = store.materialise(
        [(Path(r.body["path"]), fds[r.segment], r.data_offset, r.data_length) for r in records], obsolete=obsolete
    )
    failed = [(r, e) for r, e in zip(records, errors) if e is not None]
    if failed:
        record, error = failed[0]
        return f"{len(failed)} file(s) not written, first seq={record.seq} sop={record.body['uid']}: {error}"
    try:
        index.record([row_from_body(r.body, r.data_length) for r in records], checkpoint=(journal_id, batch[-1].seq))
    except StorageError as exc:
        return f"index write failed for {len(records)} journaled instance(s): {exc}"
    return None


def row_from_body(body: dict, size: int) -> InstanceRow:
    """The index row a journal record's body describes."""
    return InstanceRow(
        sop_instance_uid=body["uid"],
        sop_class_uid=body["sop_class_uid"],
        transfer_syntax=body["transfer_syntax"],
        path=body["path"],
        size=size,
        study_uid=body["study_uid"],
        series_uid=body["series_uid"],
        patient_id=body["patient_id"],
        calling_aet=body["calling_aet"],
        called_aet=body["called_aet"],
        received_at=body["received_at"],
    )


# ----- the pipe ---------------------------------------------------------------------------------


def send(fd: int, frames: Sequence[bytes | memoryview]) -> None:
    """Write one message: a frame count, then each frame with its length."""
    out = [_LEN.pack(len(frames))]
    for frame in frames:
        out += [_LEN.pack(len(frame)), bytes(frame)]
    data = memoryview(b"".join(out))
    while data:
        data = data[os.write(fd, data):]


def receive(fd: int) -> list[bytes] | None:
    """Read one message's frames; None when the other side closed the pipe."""
    head = _read_exact(fd, _LEN.size)
    if head is None:
        return None
    frames = []
    for _ in range(_LEN.unpack(head)[0]):
        size = _read_exact(fd, _LEN.size)
        frame = _read_exact(fd, _LEN.unpack(size)[0]) if size is not None else None
        if frame is None:
            return None
        frames.append(frame)
    return frames


def _read_exact(fd: int, n: int) -> bytes | None:
    chunks: list[bytes] = []
    while n:
        chunk = os.read(fd, n)
        if not chunk:
            return None
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


# ----- the writer's side --------------------------------------------------------------------------


class Child:
    """The materialiser process as the writer's materialiser thread sees it.

    Started by that thread, so that the kernel's parent-death signal (sent when the thread
    that started a child ends) takes it down with the thread, the writer, or both."""

    def __init__(self, store: Store, database: str, node_id: str, journal: Journal, log_level: str, log_format: str) -> None:
        fds = [seg.fd for seg in journal.segments]
        command = [
            sys.executable, "-m", "actors.materialiser",
            "--store", str(store.directory), "--database", database, "--node-id", node_id,
            "--rename-retries", str(store.rename_retries), "--rename-jitter-ms", str(store.rename_retry_jitter_ms),
            "--journal-id", journal.journal_id, "--journal-fds", ",".join(map(str, fds)),
            "--log-level", log_level, "--log-format", log_format,
        ]
        # Its own session: a SIGTERM or SIGINT sent to the node's process group (supervisord,
        # a terminal) must not end it before the writer had it materialise the backlog.
        self.proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, pass_fds=fds,
                                     start_new_session=True)
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self._to = self.proc.stdin.fileno()
        self._from = self.proc.stdout.fileno()

    def materialise(self, journal_id: str, batch: Sequence[Record], paths: Sequence[Path] = ()) -> str | None:
        """Have the child materialise ``batch`` (of the worker journal whose segments are
        ``paths``, or of the writer's); its answer. StorageError if the child died."""
        records = [[r.seq, r.offset, r.data_offset, r.data_length, r.body, r.segment] for r in batch]
        request = MaterialiseRecords(journal_id=journal_id, seq=batch[-1].seq, records=records, paths=[str(p) for p in paths])
        try:
            send(self._to, pack(request, sender="writer"))
            frames = receive(self._from)
        except OSError as exc:
            frames = None
            log.error("materialiser pipe: %s", exc.strerror)
        if frames is None:
            raise StorageError(f"the materialiser process ended (exit status {self.proc.wait()})")
        answer = unpack(frames).message
        if not isinstance(answer, RecordsMaterialised) or answer.seq != batch[-1].seq:
            raise StorageError(f"the materialiser answered {answer!r} to the batch up to seq {batch[-1].seq}")
        return answer.error or None

    def close(self) -> None:
        """End of its input: the child exits; wait for it (it is idle between batches)."""
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# ----- the child's side -----------------------------------------------------------------------------


def serve(store: Store, index: Index, fds: Sequence[int], journal_id: str, requests: int, answers: int) -> int:
    """Answer batches until the writer closes the pipe."""
    while (frames := receive(requests)) is not None:
        try:
            message = unpack(frames).message
        except MessageError as exc:
            log.error("bad request from the writer: %s", exc)
            return 1
        if not isinstance(message, MaterialiseRecords) or (message.journal_id != journal_id and not message.paths):
            log.error("unexpected request from the writer: %r", message)
            return 1
        batch = [Record(*fields) for fields in message.records]
        if not batch:
            error = None
        elif message.paths:
            error = _materialise_worker_records(store, index, message)
        else:
            error = materialise(store, index, fds, journal_id, batch)
        send(answers, pack(RecordsMaterialised(seq=message.seq, error=error or ""), sender=NAME))
    return 0


def _materialise_worker_records(store: Store, index: Index, message: MaterialiseRecords) -> str | None:
    """A batch of a worker's journal, read through descriptors opened for it alone: a worker
    journal made anew (another id) is never read through a descriptor of its predecessor."""
    fds: list[int] = []
    try:
        for path in message.paths:
            fds.append(os.open(path, os.O_RDONLY))
            if header_id(fds[-1]) != message.journal_id:
                return f"{path} is no longer journal {message.journal_id}"
        return materialise(store, index, fds, message.journal_id, [Record(*fields) for fields in message.records])
    except OSError as exc:
        return f"cannot read worker journal: {exc.strerror}"
    finally:
        for fd in fds:
            os.close(fd)


def _die_with_the_writer() -> None:
    """SIGKILL when the thread that started us ends (``PR_SET_PDEATHSIG``), or now if the
    writer died before we asked: a materialiser never outlives its writer. (``nodectl run``
    asks the same for every actor, with a check of the chain up to nodectl that does not
    apply to a child of the writer.)"""
    parent = os.getppid()
    prctl = getattr(ctypes.CDLL(None, use_errno=True), "prctl", None)
    if prctl is None or prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
        return  # not Linux
    if os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGKILL)


def main(argv: list[str]) -> int:
    """``python -m actors.materialiser``, started by the writer only (see ``Child``)."""
    import argparse

    from actors import bus

    _die_with_the_writer()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):  # the writer ends it, by closing the pipe
        signal.signal(sig, signal.SIG_IGN)
    parser = argparse.ArgumentParser(prog="actors.materialiser")
    for option in ("--store", "--database", "--node-id", "--journal-id", "--journal-fds", "--log-level", "--log-format"):
        parser.add_argument(option, required=option != "--node-id", default="")
    parser.add_argument("--rename-retries", type=int, default=3)
    parser.add_argument("--rename-jitter-ms", type=int, default=50)
    args = parser.parse_args(argv)
    bus.setup_logging(NAME, args.log_level, args.log_format)
    os.nice(NICE)
    store = Store(Path(args.store), rename_retries=args.rename_retries, rename_retry_jitter_ms=args.rename_jitter_ms)
    index = Index(args.database, node_id=args.node_id)
    try:
        fds = [int(fd) for fd in args.journal_fds.split(",")]
        return serve(store, index, fds, args.journal_id, sys.stdin.fileno(), sys.stdout.fileno())
    finally:
        index.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
