"""The storage writer: the only process that writes the store and the instance index.

Loop: wait for ``WriteInstance`` requests on a ROUTER, take every request already queued
(up to ``BATCH``, from every worker; with two or more associations storing, waiting up to
``store.commit_delay`` for more, as PostgreSQL's commit_delay) as one group, and make the
group durable with one flush:
each instance (its whole file and its index row) is appended to the journal
(``node.journal``), the journal is fdatasynced once, then every request of the group is
answered ``InstanceWritten``. A background thread (the materialiser) has journaled files copied
to their final paths and recorded in the index in batches (``Store.materialise``: two
``syncfs``, then one index transaction that also moves the journal checkpoint) by a child
process, so that this work never holds the GIL the main thread needs to answer
(``actors/materialiser.py``); on start the thread itself materialises whatever a crash left
past the checkpoint before the writer takes requests, and on SIGTERM it has everything
materialised before the writer exits.

Spooled instances (larger than ``store.inline_threshold``: the journal would write their
bytes twice, once synchronously), and every instance when the journal is off
(``store.journal = false``, or a PostgreSQL index shared by a cluster, where another node's
tracker could not see this node's journal), take the direct path as before issue 12: temp
file, fdatasync, rename, directory fsync, index transaction, then the answer.

Worker journals (``node/worker_journal.py``): under ``store.duplicates = overwrite`` each
worker journals the inline instances it receives itself and answers after its own flush;
no request reaches the writer for them. The materialiser thread reads every worker journal
as it grows (every WORKER_POLL_S) and materialises what it finds through the same child,
moving that journal's checkpoint; a starting worker has it adopt its journal first
(``AdoptJournal``), and the replay at start covers the worker journals too.

``SyncStore`` (the commitment tracker, before it checks instances) is answered once every
instance acknowledged before it arrived is materialised: the writer's journal up to then,
and a pass over the worker journals that began after it arrived.

Clusters (issue 16): every row names this node (``[cluster] node_id``) and, on a shared
PostgreSQL index, the file's checksum. With ``[cluster] endpoint`` (tcp://) a verifier
thread answers ``VerifyInstances`` from other nodes' trackers there (file present, size and
checksum as recorded) and registers the endpoint in the shared database.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import zmq

from actors import bus
from actors import materialiser
from actors import metrics
from node.config import NodeConfig
from node.errors import STATUS_OUT_OF_RESOURCES, MessageError, NodeError, PathError, StorageError
from node.index import Index, InstanceRow
from node import journal as journaling
from node.journal import Entry, Journal, Record, record_body
from node import verify
from node import worker_journal
from node.messages import (
    AdoptJournal, Envelope, ErrorReply, InstancesVerified, InstanceWritten, JournalAdopted, Ping, Pong, StoreSynced, SyncStore,
    VerifyInstances, WriteInstance,
)
from node.worker_journal import JournalTail
from node.storage import PREAMBLE, PendingWrite, Store

log = logging.getLogger("actors.writer")

BATCH = 64
NAME = "writer"
STATUS_DUPLICATE_REJECTED = 0x0111
LAP_BYTES = 16 << 20  # past this, start a new lap as soon as everything is materialised
JOURNAL_MAX_BYTES = 256 << 20  # past this, wait for the materialiser, then start a new lap
# A materialiser batch holds at most this many records and bytes (one record at least), and
# starts without waiting for ``materialise_interval`` once a whole batch is waiting: its two
# syncfs and its index commit are shared by up to a second of small instances, while a
# stream of large ones is materialised every 16 MiB, as often as at 0.2 s before. (Batches of
# 64 MiB of 512 KiB instances took 61-88 MB/s against 106-134, and more CPU: likely the journal's
# flushes waiting behind one large syncfs; docs/benchmarks.md, 2026-12-03 18:20.)
MATERIALISE_BATCH = 4096
MATERIALISE_BATCH_BYTES = 16 << 20
MATERIALISE_RETRY_S = 1.0
MATERIALISE_LOG_EVERY_S = 60.0  # a full disk fails every retry: one ERROR line a minute, not one a second
STOP_ATTEMPTS = 3  # on SIGTERM, give up materialising after this many failures in a row (the journal keeps them)
COMMIT_SIBLINGS = 2  # requesters active within SIBLING_WINDOW_S before a group waits for more
SIBLING_WINDOW_S = 0.1
SWITCH_INTERVAL_S = 0.0005  # the GIL's hand-over interval in the writer process (``main``)
WORKER_POLL_S = 0.05  # how often the materialiser thread reads the worker journals for new records


@dataclass
class _Request:
    identity: list[bytes]
    envelope: Envelope

    @property
    def message(self) -> WriteInstance:
        return self.envelope.message


@dataclass(frozen=True, slots=True)
class _Pending:
    """An acknowledged instance not yet materialised (duplicate checks must see it)."""

    path: str
    size: int
    seq: int


class Writer:
    """Group-commits write requests into the journal; materialises them in the background."""

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.store = Store(
            config.directory,
            rename_retries=config.store.rename_retries,
            rename_retry_jitter_ms=config.store.rename_retry_jitter,
        )
        self.index = Index(config.database, node_id=config.node_id)
        self.journal = Journal(journaling.path_for(self.store.directory)) if journaling.enabled(config) else None
        self.interval = config.store.materialise_interval
        self.idle = config.store.materialise_idle
        self.cond = threading.Condition()
        self.queue: list[Record] = []  # journaled, not yet checkpointed (in order)
        self.pending: dict[str, _Pending] = {}
        self.appended_seq = 0
        self.last_append = 0.0
        self.materialised_seq = 0
        self.urgent = False  # a SyncStore or a direct write waits: do not pace
        self.stopping = False
        self.failure: BaseException | None = None
        # Not writable (a journal append failed, or the replay at start could not finish, e.g.
        # a full disk): writes are answered 0xA700 at once until the materialiser has caught up.
        self.blocked: str | None = None
        self.recovering = False  # the replay at start has not finished yet
        self.resume_after_seq = 0  # the highest number a failed append may have written
        self.materialise_error: str | None = None  # the last batch failed (cleared by a success)
        # The workers' journals (node/worker_journal.py), read by the materialiser thread alone.
        self.tails: dict[str, JournalTail] = {}
        self.adoptions: list[tuple[list[bytes], str, AdoptJournal]] = []  # waiting for the thread
        self.adopted: list[tuple[list[bytes], object, str]] = []  # its answers, sent by the main thread
        self.passes_started = 0  # passes over the worker journals (read, then materialise what was found)
        self.passes_done = 0  # the last pass that materialised everything it found
        self.next_pass = 0.0
        self.urgent_pass = False  # a SyncStore or a direct write waits for the next pass
        self.worker_error: str | None = None  # the last pass failed (cleared by a success)
        self.worker_failures = 0  # passes failed in a row
        self.worker_last_batch = 0.0  # when worker journal records were last materialised
        self.worker_last_found = 0.0  # when a pass last found new records
        self.stop_pass_done = False  # a pass that began after the stop was asked for succeeded
        self.ready = threading.Event()
        self.thread: threading.Thread | None = None
        self.child: materialiser.Child | None = None  # started by the thread, which alone talks to it

    def prepare(self) -> None:
        """Remove temp files a crash left; with a journal, start the materialiser and let it
        materialise what the journal holds past the checkpoint. Returns when it has, or when
        its first attempt failed: then the writer serves, refusing writes, while it retries."""
        removed = self.store.prepare()
        if removed:
            log.warning("removed %d temp file(s) left by an earlier crash", removed)
        if self.journal is None:
            return
        self.journal.open()
        self.thread = threading.Thread(target=self._materialiser, name="materialiser", daemon=True)
        self.thread.start()
        while not self.ready.wait(0.2):
            if self.failure is not None or not self.thread.is_alive():
                raise StorageError(f"journal recovery failed: {self.failure}")

    def close(self) -> None:
        """Materialise everything journaled, then stop the materialiser (SIGTERM path; on a
        store that keeps failing, what is left stays in the journal for the next start)."""
        if self.thread is not None:
            with self.cond:
                self.stopping = True
                self.cond.notify_all()
            self.thread.join()
        if self.journal is not None:
            self.journal.close()
        self.index.close()

    @property
    def materialiser_alive(self) -> bool:
        """False once the materialiser process has ended on its own (the thread would only
        notice at its next batch, up to ``materialise_interval`` later)."""
        child = self.child
        return child is None or self.stopping or child.proc.poll() is None

    @property
    def backlog(self) -> int:
        with self.cond:
            return len(self.queue)

    # ----- requests (main thread) ---------------------------------------------------------------

    def handle(self, batch: list[_Request]) -> list[tuple[list[bytes], object, str]]:
        """Process one batch; return ``(identity, reply, corr)`` for each request."""
        replies: list[tuple[list[bytes], object, str]] = []
        to_write: list[_Request] = []
        seen: set[str] = set()
        for req in batch:
            msg = req.message
            early = self._early_answer(msg, seen)
            if early is not None:
                replies.append((req.identity, early, req.envelope.id))
            else:
                seen.add(msg.sop_instance_uid)
                to_write.append(req)
        if not to_write:
            return replies
        if self.journal is None:
            return replies + self._write(to_write)
        if not self._writable():
            reason = f"store not writable: {self.blocked}"
            return replies + [(r.identity, ErrorReply(status=STATUS_OUT_OF_RESOURCES, reason=reason), r.envelope.id) for r in to_write]
        inline = [r for r in to_write if not r.message.spool]
        spooled = [r for r in to_write if r.message.spool]
        if inline:
            replies.extend(self._journal(inline))
        if spooled:
            self._barrier()
            replies.extend(self._write(spooled))
        return replies

    def _writable(self) -> bool:
        """False while blocked; a failed append unblocks once everything before it is
        materialised, with a new lap numbered far above it (as a restart would do), so that
        no record of the failed group can ever join the new chain."""
        assert self.journal is not None
        with self.cond:
            if self.blocked is None:
                return True
            if self.recovering or self.queue:
                return False
            self.journal.start_after_recovery(self.resume_after_seq)
            self.appended_seq = self.materialised_seq = self.journal.next_seq - 1
            log.warning("journal writable again (was: %s); new lap from seq %d", self.blocked, self.journal.next_seq)
            self.blocked = None
            return True

    def _known(self, uid: str) -> _Pending | InstanceRow | None:
        with self.cond:
            pending = self.pending.get(uid)
        if pending is not None:
            return pending
        return self.index.get(uid)

    def _early_answer(self, msg: WriteInstance, seen: set[str]) -> object | None:
        """Answer duplicates under the ``keep`` and ``reject`` policies without writing.

        An instance acknowledged but not yet materialised counts as stored (``self.pending``).
        """
        policy = self.config.store.duplicates
        if policy == "overwrite":
            return None
        existing = self._known(msg.sop_instance_uid)
        if existing is None and msg.sop_instance_uid not in seen:
            return None
        if policy == "keep" and existing is not None:
            return InstanceWritten(sop_instance_uid=msg.sop_instance_uid, path=existing.path, size=existing.size, kept=True)
        return ErrorReply(status=STATUS_DUPLICATE_REJECTED, reason=f"duplicate SOP instance {msg.sop_instance_uid}")

    @metrics.durable_writes
    def _journal(self, requests: list[_Request]) -> list[tuple[list[bytes], object, str]]:
        """Append the group to the journal with one fdatasync; then the replies."""
        assert self.journal is not None
        replies: list[tuple[list[bytes], object, str] | None] = []
        entries: list[Entry] = []
        accepted: list[tuple[int, _Request, str]] = []
        now = time.time()
        for r in requests:
            msg = r.message
            try:
                final = self.store.check_target(msg.relpath)
                parts = [PREAMBLE, *r.envelope.data]
            except (PathError, StorageError) as exc:
                log.error("assoc=%s sop=%s not stored: %s", msg.assoc_id, msg.sop_instance_uid, exc)
                replies.append((r.identity, ErrorReply(status=exc.status, reason=str(exc)), r.envelope.id))
                continue
            accepted.append((len(replies), r, final))
            replies.append(None)
            entries.append(Entry(body=record_body(msg, final, now), parts=parts))
        if entries:
            try:
                self._make_room()
                records = self.journal.append(entries)
            except StorageError as exc:
                self._append_failed(exc, len(entries))
                for slot, r, _final in accepted:
                    replies[slot] = (r.identity, ErrorReply(status=exc.status, reason=str(exc)), r.envelope.id)
                return [x for x in replies if x is not None]
            with self.cond:
                for record in records:
                    self.pending[record.body["uid"]] = _Pending(record.body["path"], record.data_length, record.seq)
                idle = not self.queue
                self.queue.extend(records)
                self.appended_seq = records[-1].seq
                self.last_append = time.monotonic()
                # Only a materialiser waiting for an empty queue needs waking: one that paces
                # a batch wakes on its own deadline, and waking it per group only cost two
                # thread switches (futex calls, the GIL) per instance on one association.
                if idle:
                    self.cond.notify_all()
            for (slot, r, final), record in zip(accepted, records):
                msg = r.message
                replies[slot] = (r.identity, InstanceWritten(sop_instance_uid=msg.sop_instance_uid, path=final,
                                                             size=record.data_length), r.envelope.id)
                log.debug("assoc=%s sop=%s journaled seq=%d for %s", msg.assoc_id, msg.sop_instance_uid, record.seq, final)
        return [x for x in replies if x is not None]

    def _append_failed(self, exc: StorageError, count: int) -> None:
        """Part of the group may be on disk, and appending again at the same place could leave
        a record of this failed group after a shorter new one: block writes until everything
        acknowledged is materialised, then start a new lap above every number this group may
        have used (``_writable``). A crash meanwhile replays the journal as always."""
        log.error("journal append failed for %d instance(s): %s; refusing writes until the journal is materialised", count, exc)
        assert self.journal is not None
        with self.cond:
            self.blocked = str(exc)
            self.resume_after_seq = max(self.resume_after_seq, self.journal.next_seq + count)
            self.urgent = True
            self.cond.notify_all()

    def _make_room(self) -> None:
        """Past LAP_BYTES, go on in the journal's other segment once everything it holds is
        materialised; past JOURNAL_MAX_BYTES, wait for that. A steady stream keeps the queue
        from ever running dry, so waiting for an empty queue (one file, before) let the
        journal grow to its limit and then held every association while it drained."""
        assert self.journal is not None
        with self.cond:
            if self.journal.offset <= LAP_BYTES:
                return
            if self.journal.offset > JOURNAL_MAX_BYTES and self.journal.other_last_seq > self.materialised_seq:
                log.warning("journal full (%d bytes): waiting for the materialiser", self.journal.offset)
                self._wait_materialised(self.journal.other_last_seq)
            if self.journal.other_last_seq <= self.materialised_seq:
                self.journal.switch()

    def _wait_materialised(self, seq: int) -> None:
        """With ``self.cond`` held: until every record up to ``seq`` is materialised."""
        self.urgent = True
        self.cond.notify_all()
        while self.materialised_seq < seq and self.queue:
            self._check_materialiser()
            self.cond.wait(1.0)

    def _wait_drained(self) -> None:
        """With ``self.cond`` held: until the queue is empty (the materialiser not paced)."""
        self.urgent = True
        self.cond.notify_all()
        while self.queue:
            self._check_materialiser()
            self.cond.wait(1.0)
        self.urgent = False

    def _check_materialiser(self) -> None:
        """With ``self.cond`` held: StorageError when waiting for the materialiser is in vain."""
        if self.failure is not None or (self.thread is not None and not self.thread.is_alive()):
            raise StorageError(f"materialiser stopped: {self.failure}")
        if self.materialise_error is not None:
            raise StorageError(f"store not writable: {self.materialise_error}")

    def _barrier(self) -> None:
        """Everything journaled is materialised, in the writer's journal and the workers'
        (before a direct write of the same store, which an older record must not overwrite)."""
        with self.cond:
            self._wait_drained()
            number = self.passes_started + 1
            self.urgent_pass = True
            self.cond.notify_all()
            while self.passes_done < number:
                self._check_materialiser()
                if self.worker_error is not None:
                    raise StorageError(f"store not writable: {self.worker_error}")
                self.cond.wait(1.0)

    def sync_target(self) -> tuple[int, int]:
        """What a ``SyncStore`` arriving now waits for: the writer's journal materialised up to
        its last record, and a pass over the worker journals that starts after now."""
        with self.cond:
            return self.appended_seq, self.passes_started + 1

    def synced(self, target: tuple[int, int]) -> bool:
        """True when ``target`` (``sync_target``) is reached; else hurry the materialiser."""
        seq, number = target
        with self.cond:
            if self.recovering:
                return False
            own = self.materialised_seq >= seq or not self.queue
            workers = self.passes_done >= number
            if own and workers:
                return True
            self.urgent = self.urgent or not own
            self.urgent_pass = self.urgent_pass or not workers
            self.cond.notify_all()
            return False

    def adopt_later(self, identity: list[bytes], corr: str, message: AdoptJournal) -> None:
        """Hand a worker's ``AdoptJournal`` to the materialiser thread (answered via ``take_adopted``)."""
        with self.cond:
            self.adoptions.append((identity, corr, message))
            self.cond.notify_all()

    def take_adopted(self) -> list[tuple[list[bytes], object, str]]:
        """Answers to ``AdoptJournal`` requests ready to be sent (by the main thread)."""
        with self.cond:
            answers, self.adopted = self.adopted, []
            return answers

    @property
    def adopting(self) -> bool:
        """Adoptions waiting for the materialiser thread, or answers for the main thread."""
        with self.cond:
            return bool(self.adoptions or self.adopted)

    @metrics.durable_writes
    def _write(self, requests: list[_Request]) -> list[tuple[list[bytes], object, str]]:
        """The direct path: temp file, fdatasync, rename, directory fsync, index, replies."""
        writes = [
            PendingWrite(
                relpath=r.message.relpath,
                parts=list(r.envelope.data),
                spool=r.message.spool,
                spool_offset=r.message.spool_offset,
            )
            for r in requests
        ]
        outcomes = self.store.commit(writes)
        previous = {r.message.sop_instance_uid: self.index.get(r.message.sop_instance_uid) for r in requests}
        rows = [
            _row(r.message, outcome.path, outcome.size, self._checksum(r, outcome.path))
            for r, outcome in zip(requests, outcomes)
            if outcome.error is None and outcome.path is not None
        ]
        index_error: StorageError | None = None
        try:
            self.index.record(rows)
        except StorageError as exc:
            index_error = exc
            log.error("index write failed for %d instance(s): %s", len(rows), exc)
        replies: list[tuple[list[bytes], object, str]] = []
        for r, outcome in zip(requests, outcomes):
            error = outcome.error or index_error
            msg = r.message
            if error is not None:
                log.error("assoc=%s sop=%s not stored: %s", msg.assoc_id, msg.sop_instance_uid, error)
                replies.append((r.identity, ErrorReply(status=error.status, reason=str(error)), r.envelope.id))
                continue
            old = previous.get(msg.sop_instance_uid)
            if old is not None and old.path != str(outcome.path):
                self.store.remove(Path(old.path))
            replies.append((
                r.identity,
                InstanceWritten(sop_instance_uid=msg.sop_instance_uid, path=str(outcome.path), size=outcome.size),
                r.envelope.id,
            ))
            log.debug("assoc=%s sop=%s stored at %s", msg.assoc_id, msg.sop_instance_uid, outcome.path)
        return replies

    def _checksum(self, request: _Request, path: Path) -> str:
        """The file's checksum for a cluster's index (another node may ask us to verify it);
        a single node's SQLite index goes without (its tracker compares sizes)."""
        if not self.index.db.shared:
            return ""
        try:
            return verify.digest_file(str(path)) if request.message.spool else verify.digest_parts(request.envelope.data)
        except OSError as exc:
            log.warning("sop=%s no checksum taken: %s", request.message.sop_instance_uid, exc.strerror)
            return ""

    # ----- the materialiser (background thread) -------------------------------------------------

    def _materialiser(self) -> None:
        index = Index(self.config.database, node_id=self.config.node_id)  # its own connection: SQLite's belong to one thread
        try:
            assert self.journal is not None
            # Started before the replay, which runs here: the child's start (an interpreter
            # and its imports) overlaps it instead of delaying the writer's first answer.
            self.child = materialiser.Child(self.store, self.config.database, self.config.node_id, self.journal,
                                            self.config.log_level, self.config.log_format)
            if not self._recover_until_done(index):
                return
            last = 0.0
            failures = 0
            while True:
                if not self._serve_worker_journals(index):
                    return
                with self.cond:
                    if not self.queue:
                        if self.stopping and self.stop_pass_done:
                            return
                        if not (self.adoptions or ((self.urgent_pass or self.stopping) and self.worker_error is None)):
                            self.cond.wait(max(0.0, self.next_pass - time.monotonic()))
                        continue
                    # Pacing: while instances keep coming, a batch at most every ``interval`` s,
                    # so that a batch's flushes are shared by many instances; once they stop
                    # (``idle`` s without an append), a waiting SyncStore or shutdown: at once.
                    now = time.monotonic()
                    wait = min(last + self.interval - now, self.last_append + self.idle - now)
                    batch = next(batches(self.queue))
                    if wait > 0 and not (self.urgent or self.stopping or len(batch) < len(self.queue)):
                        self.cond.wait(min(wait, max(0.0, self.next_pass - now)))  # the worker journals' next pass too
                        continue
                last = time.monotonic()
                error = self._materialise(batch)
                with self.cond:
                    self.materialise_error = error
                    if error is not None:
                        failures += 1
                        self._log_failure(failures, f"{len(self.queue)} acknowledged instance(s) not materialised (will retry): {error}")
                        if self.stopping and failures >= STOP_ATTEMPTS:
                            log.warning("stopping with %d acknowledged instance(s) still in the journal (%s): "
                                        "they are materialised at the next start", len(self.queue), error)
                            return
                        self.cond.wait(MATERIALISE_RETRY_S)
                        continue
                    if failures:
                        log.warning("materialising again after %d failed attempt(s)", failures)
                    failures = 0
                    del self.queue[: len(batch)]
                    self.materialised_seq = batch[-1].seq
                    for record in batch:
                        uid = record.body["uid"]
                        pending = self.pending.get(uid)
                        if pending is not None and pending.seq == record.seq:
                            del self.pending[uid]
                    if not self.queue:
                        self.urgent = False
                    self.cond.notify_all()
        except BaseException as exc:  # the main loop sees it and exits: supervisord restarts us
            self.failure = exc
            log.exception("materialiser failed")
            with self.cond:
                self.cond.notify_all()
        finally:
            if self.child is not None:
                self.child.close()
            for tail in self.tails.values():
                tail.close()
            index.close()

    def _recover_until_done(self, index: Index) -> bool:
        """The replay at start; while it fails (a full disk), the writer serves, refusing writes
        (``blocked``), and the replay is retried; False if the writer stops meanwhile."""
        failures = 0
        while True:
            try:
                self._recover(index)
            except StorageError as exc:
                failures += 1
                with self.cond:
                    self.recovering = True
                    self.blocked = f"journal replay pending: {exc}"
                    self._log_failure(failures, f"journal replay failed (will retry): {exc}")
                    self.ready.set()
                    if self.stopping:
                        return False
                    self.cond.wait(MATERIALISE_RETRY_S)
                continue
            with self.cond:
                if self.recovering:
                    log.warning("journal replay done after %d failed attempt(s); writes accepted again", failures)
                self.recovering = False
                self.blocked = None
            self.ready.set()
            return True

    @staticmethod
    def _log_failure(failures: int, message: str) -> None:
        """The first failure of a run, then one a minute."""
        if failures == 1 or failures % max(1, int(MATERIALISE_LOG_EVERY_S / MATERIALISE_RETRY_S)) == 0:
            log.error("%s", message)

    def _recover(self, index: Index) -> None:
        """Materialise every journal record past the checkpoint; start a new lap."""
        assert self.journal is not None
        checkpoint = index.checkpoint(self.journal.journal_id)
        last = checkpoint
        todo: list[Record] = []
        for record in self.journal.records():
            last = max(last, record.seq)
            if record.seq > checkpoint:
                todo.append(record)
        for batch in batches(todo):
            error = materialiser.materialise(self.store, index, [seg.fd for seg in self.journal.segments], self.journal.journal_id, batch)
            if error is not None:
                raise StorageError(f"cannot materialise journal records {batch[0].seq}..{batch[-1].seq}: {error}")
        if todo:
            log.warning("journal: materialised %d acknowledged instance(s) a stop left (seq %d..%d)", len(todo), todo[0].seq, todo[-1].seq)
        self.journal.start_after_recovery(last)
        self.materialised_seq = self.appended_seq = self.journal.next_seq - 1
        self._recover_worker_journals(index)

    def _recover_worker_journals(self, index: Index) -> None:
        """Read every worker journal of the store from its head and materialise what lies past
        its checkpoint (in this thread, before the writer serves); then go on reading them
        as their workers append (a worker may still be running: only the writer restarted)."""
        for path in worker_journal.all_paths(self.store.directory):
            tail = self.tails.get(str(path)) or JournalTail(path)
            if not tail.open():
                continue
            tail.rescan(index.checkpoint(tail.journal_id))
            self.tails[str(path)] = tail
        count = sum(len(t.pending) for t in self.tails.values())
        error = self._materialise_tails(lambda tail, batch: materialiser.materialise(self.store, index, tail.fds, tail.journal_id, batch))
        if error is not None:
            raise StorageError(f"cannot materialise worker journal records: {error}")
        if count:
            log.warning("worker journals: materialised %d acknowledged instance(s) a stop left", count)

    def _materialise_tails(self, materialise_batch, tails: list[JournalTail] | None = None) -> str | None:
        """Materialise the pending records of the worker journals, journal by journal (a batch
        moves its journal's checkpoint); why not, on failure. Between journals the order does
        not matter: of two copies of one instance the materialiser keeps the one received last.
        (Cutting batches to interleave journals by arrival made them tiny: four associations
        over two workers paid 1.8 flushes per instance, docs/benchmarks.md 2026-12-03 12:34.)"""
        for tail in list(self.tails.values()) if tails is None else tails:
            for batch in batches(list(tail.pending)):
                error = materialise_batch(tail, batch)
                if error is not None:
                    return f"{tail.path.name} seq {batch[0].seq}..{batch[-1].seq}: {error}"
                tail.materialised(batch[-1].seq)
                if log.isEnabledFor(logging.DEBUG):
                    for record in batch:
                        log.debug("assoc=%s sop=%s materialised from %s seq=%d at %s", record.body.get("assoc", ""),
                                  record.body["uid"], tail.path.name, record.seq, record.body["path"])
        return None

    def _materialise_worker_batch(self, tail: JournalTail, batch: list[Record]) -> str | None:
        assert self.child is not None
        return self.child.materialise(tail.journal_id, batch, tail.paths)

    def _serve_worker_journals(self, index: Index) -> bool:
        """Adoptions waiting, then, every WORKER_POLL_S, a pass over the worker journals: read
        what they gained; materialise it paced as the writer's own queue is (a batch at most
        every ``materialise_interval`` s while records keep coming, at once after
        ``materialise_idle`` s without, or for a SyncStore, a direct write or a stop). A pass
        is done when it left nothing pending. False when stopping and the pass keeps failing."""
        with self.cond:
            adoptions, self.adoptions = self.adoptions, []
            hurried = (self.stopping or self.urgent_pass) and self.worker_error is None  # after a failure: retry paced
            now = time.monotonic()
            if not (adoptions or hurried or now >= self.next_pass):
                return True
            self.passes_started += 1
            number = self.passes_started
            stopping = self.stopping
            self.urgent_pass = False
        for identity, corr, message in adoptions:
            answer = self._adopt(index, message)
            with self.cond:
                self.adopted.append((identity, answer, corr))
        if sum(len(tail.poll()) for tail in self.tails.values()):
            self.worker_last_found = now
        error: str | None = None
        held = False
        if any(tail.pending for tail in self.tails.values()):
            wait = min(self.worker_last_batch + self.interval - now, self.worker_last_found + self.idle - now)
            if hurried or wait <= 0 or any(_holds_a_full_batch(tail.pending) for tail in self.tails.values()):
                self.worker_last_batch = now
                error = self._materialise_tails(self._materialise_worker_batch)
            else:
                held = True
        with self.cond:
            self.next_pass = time.monotonic() + (WORKER_POLL_S if error is None else MATERIALISE_RETRY_S)
            self.worker_error = error
            if error is None:
                self.worker_failures = 0
                if not held:
                    self.passes_done = number
                    self.stop_pass_done = stopping
            else:
                self.worker_failures += 1
                self._log_failure(self.worker_failures, f"worker journal records not materialised (will retry): {error}")
            self.cond.notify_all()
            if self.stopping and error is not None and self.worker_failures >= STOP_ATTEMPTS:
                log.warning("stopping with worker journal records not materialised (%s): they are materialised at the next start", error)
                return False
            return True

    def _adopt(self, index: Index, message: AdoptJournal) -> object:
        """A starting worker's journal: materialise what its predecessor left; the answer."""
        path = Path(message.path)
        if path.parent != self.store.directory / ".incoming" or not path.name.startswith(worker_journal.PREFIX):
            return ErrorReply(status=0x0110, reason=f"{path} is not a worker journal of this store")
        tail = JournalTail(path)
        if not tail.open() or tail.journal_id != message.journal_id:
            tail.close()
            return ErrorReply(status=STATUS_OUT_OF_RESOURCES, reason=f"cannot read journal {path} ({message.journal_id})")
        old = self.tails.pop(str(path), None)
        if old is not None:
            old.close()
        tail.rescan(index.checkpoint(tail.journal_id))
        self.tails[str(path)] = tail
        error = self._materialise_tails(self._materialise_worker_batch, [tail])
        if error is not None:
            return ErrorReply(status=STATUS_OUT_OF_RESOURCES, reason=f"cannot materialise {path.name}: {error}")
        if tail.seen:
            log.info("adopted %s: materialised up to seq %d", path.name, tail.seen)
        return JournalAdopted(seq=tail.seen)

    def _materialise(self, batch: list[Record]) -> str | None:
        """The batch's files and rows, by the child process (``materialiser.materialise``);
        why not, on failure. StorageError if the child is gone (the writer then exits and is
        restarted, and the replay materialises what it left)."""
        assert self.journal is not None and self.child is not None
        return self.child.materialise(self.journal.journal_id, batch)


def batches(records: Sequence[Record]) -> Iterator[list[Record]]:
    """``records`` in order, cut into materialiser batches (MATERIALISE_BATCH records and
    MATERIALISE_BATCH_BYTES bytes at most, one record at least)."""
    batch: list[Record] = []
    size = 0
    for record in records:
        if batch and (len(batch) >= MATERIALISE_BATCH or size + record.data_length > MATERIALISE_BATCH_BYTES):
            yield batch
            batch, size = [], 0
        batch.append(record)
        size += record.data_length
    if batch:
        yield batch


def _holds_a_full_batch(records: Sequence[Record]) -> bool:
    """More records wait than one batch takes: materialise now, not at the next interval."""
    return len(next(batches(records), records)) < len(records)


def _row(msg: WriteInstance, path: Path | None, size: int, checksum: str = "") -> InstanceRow:
    return InstanceRow(
        sop_instance_uid=msg.sop_instance_uid,
        sop_class_uid=msg.sop_class_uid,
        transfer_syntax=msg.transfer_syntax,
        path=str(path),
        size=size,
        study_uid=msg.study_uid,
        series_uid=msg.series_uid,
        patient_id=msg.patient_id,
        calling_aet=msg.calling_aet,
        called_aet=msg.called_aet,
        checksum=checksum,
    )


def _drain(sock: zmq.Socket, deadline_s: float) -> tuple[list[_Request], list[tuple[list[bytes], object, str]], list[tuple[list[bytes], str, object]]]:
    """Take every queued request (up to BATCH); answer pings, bad and expired messages at once;
    collect ``SyncStore`` requests (answered when the journals are materialised up to now) and
    ``AdoptJournal`` requests (answered by the materialiser thread).

    A request older than the requester's deadline is not written: its worker has already
    answered the peer with a failure, and storing it now would keep what was refused.
    """
    batch: list[_Request] = []
    immediate: list[tuple[list[bytes], object, str]] = []
    syncs: list[tuple[list[bytes], str, object]] = []
    while len(batch) < BATCH and (received := bus.receive_queued(sock)) is not None:
        identity, envelope = received
        if isinstance(envelope, MessageError):
            immediate.append((identity, ErrorReply(status=envelope.status, reason=str(envelope)), ""))
        elif isinstance(envelope.message, WriteInstance) and time.time() - envelope.sent > deadline_s:
            log.warning("assoc=%s sop=%s request expired before it was written", envelope.message.assoc_id, envelope.message.sop_instance_uid)
            immediate.append((identity, ErrorReply(status=0xA700, reason="request expired"), envelope.id))
        elif isinstance(envelope.message, WriteInstance):
            batch.append(_Request(identity, envelope))
        elif isinstance(envelope.message, (SyncStore, AdoptJournal)):
            syncs.append((identity, envelope.id, envelope.message))
        elif isinstance(envelope.message, Ping):
            immediate.append((identity, Pong(pid=os.getpid()), envelope.id))
        else:
            reason = f"the writer does not take {envelope.message.kind}"
            immediate.append((identity, ErrorReply(status=0x0110, reason=reason), envelope.id))
    return batch, immediate, syncs


class Verifier:
    """Answers ``VerifyInstances`` from other nodes on ``[cluster] endpoint`` in its own thread
    (file reads and checksums must not hold up the group commits of the write loop)."""

    POLL_MS = 200

    def __init__(self, config: NodeConfig, ctx: zmq.Context, stop: threading.Event) -> None:
        self.config = config
        self.stop = stop
        self.sock = bus.router(ctx, config.cluster.endpoint)  # bound here: a busy port fails the start
        self.thread = threading.Thread(target=self._serve, name="verifier", daemon=True)

    def start(self, index: Index) -> None:
        index.register_node(self.config.node_id, self.config.cluster.endpoint)
        self.thread.start()
        log.info("verifier ready: node=%s endpoint=%s", self.config.node_id, self.config.cluster.endpoint)

    def close(self) -> None:
        if self.thread.is_alive():
            self.thread.join(timeout=2 * self.POLL_MS / 1000 + 1)
        self.sock.close(0)

    def _serve(self) -> None:
        while not self.stop.is_set():
            if not self.sock.poll(self.POLL_MS, zmq.POLLIN):
                continue
            identity, envelope = bus.receive(self.sock)
            if isinstance(envelope, MessageError):
                bus.reply(self.sock, identity, ErrorReply(status=envelope.status, reason=str(envelope)), sender=NAME, corr="")
            elif isinstance(envelope.message, VerifyInstances):
                bus.reply(self.sock, identity, self.check(envelope.message), sender=NAME, corr=envelope.id)
            elif isinstance(envelope.message, Ping):
                bus.reply(self.sock, identity, Pong(pid=os.getpid()), sender=NAME, corr=envelope.id)
            else:
                reason = f"the verifier does not take {envelope.message.kind}"
                bus.reply(self.sock, identity, ErrorReply(status=0x0110, reason=reason), sender=NAME, corr=envelope.id)

    def check(self, msg: VerifyInstances) -> InstancesVerified:
        """Each instance: the file at the recorded path, with the recorded size and checksum."""
        present: list[str] = []
        problems: dict[str, str] = {}
        for uid, (path, size, checksum) in msg.instances.items():
            why = verify.problem(str(path), int(size), str(checksum))
            if why:
                problems[uid] = why
            else:
                present.append(uid)
        if problems:
            log.warning("verify: %d of %d instance(s) not intact, e.g. %s", len(problems), len(msg.instances), next(iter(problems.items())))
        return InstancesVerified(node_id=self.config.node_id, present=present, problems=problems)


def run(config: NodeConfig, stop: threading.Event, ctx: zmq.Context | None = None) -> int:
    """Serve write requests until ``stop`` is set; then materialise everything journaled."""
    ctx = ctx or zmq.Context.instance()
    writer = Writer(config)
    verifier: Verifier | None = None
    try:
        writer.prepare()
        if config.cluster.endpoint:
            verifier = Verifier(config, ctx, stop)
            verifier.start(writer.index)
    except BaseException:
        if verifier is not None:
            verifier.sock.close(0)
        writer.close()
        raise
    sock = bus.router(ctx, config.endpoint(NAME))
    log.info("writer ready: store=%s index=%s journal=%s", writer.store.directory, config.database,
             "on" if writer.journal is not None else "off")
    syncs: list[tuple[list[bytes], str, tuple[int, int]]] = []  # SyncStore requests waiting: identity, corr, target
    siblings = _Siblings()
    code = 0
    poller = zmq.Poller()
    poller.register(sock, zmq.POLLIN)
    wakeup = bus.signal_wakeup_fd()  # SIGTERM ends the wait below at once, not after 200 ms
    if wakeup is not None:
        poller.register(wakeup, zmq.POLLIN)
    try:
        while not stop.is_set():
            if writer.failure is not None:
                log.error("exiting: %s; the journal is replayed at restart", writer.failure)
                code = 1
                break
            if syncs:
                syncs = _answer_syncs(sock, writer, syncs)
            for identity, message, corr in writer.take_adopted():
                bus.reply(sock, identity, message, sender=NAME, corr=corr)
            ready = dict(poller.poll(5 if syncs or writer.adopting else 200))
            if wakeup is not None and wakeup in ready:
                bus.drain_wakeup(wakeup)
            if sock not in ready:
                if not writer.materialiser_alive:
                    log.error("exiting: the materialiser process ended (exit status %s); the journal is replayed at restart",
                              writer.child.proc.returncode if writer.child else "?")
                    code = 1
                    break
                continue
            batch, replies, new_syncs = _drain(sock, config.network.write_timeout)
            # Only a group the journal takes gains from waiting: spooled instances go the
            # direct path, one flush each, and a wait only delays them.
            journaled = any(not r.message.spool for r in batch)
            active = siblings.active(batch)
            if journaled and writer.journal is not None and len(active) >= COMMIT_SIBLINGS:
                _wait_for_siblings(sock, config, batch, replies, new_syncs, active)
            for identity, corr, request in new_syncs:
                if isinstance(request, AdoptJournal) and writer.journal is not None:
                    writer.adopt_later(identity, corr, request)
                elif isinstance(request, AdoptJournal):
                    bus.reply(sock, identity, ErrorReply(status=0x0110, reason="the journal is off: no worker journal"), sender=NAME, corr=corr)
                else:
                    syncs.append((identity, corr, writer.sync_target()))
            try:
                replies += writer.handle(batch)
            except NodeError as exc:
                log.error("batch failed: %s", exc)
                replies += [(r.identity, ErrorReply(status=exc.status, reason=str(exc)), r.envelope.id) for r in batch]
            for identity, message, corr in replies:
                if not bus.reply(sock, identity, message, sender=NAME, corr=corr):
                    log.warning("requester gone before its reply (%s)", getattr(message, "kind", "?"))
    finally:
        sock.close(0)
        if verifier is not None:
            verifier.close()
        backlog = writer.backlog
        if backlog and writer.failure is None:
            log.info("stopping: materialising %d journaled instance(s)", backlog)
        writer.close()
    return code


class _Siblings:
    """Which requesters (one DEALER per association) sent writes in the last SIBLING_WINDOW_S."""

    def __init__(self) -> None:
        self.seen: dict[bytes, float] = {}

    def active(self, batch: list[_Request]) -> set[bytes]:
        """The requesters active now, those of ``batch`` included."""
        now = time.monotonic()
        for r in batch:
            self.seen[r.identity[0]] = now
        if len(self.seen) > 4 * BATCH:
            self.seen = {k: t for k, t in self.seen.items() if t > now - SIBLING_WINDOW_S}
        return {k for k, t in self.seen.items() if t > now - SIBLING_WINDOW_S}


def _wait_for_siblings(sock: zmq.Socket, config: NodeConfig, batch: list[_Request], replies: list, syncs: list,
                       active: set[bytes]) -> None:
    """PostgreSQL's commit_delay: with other associations storing, wait up to
    ``store.commit_delay`` for their requests so that one flush covers them too; no longer
    than until every active requester has one in the group. An association waits for its
    answer before it sends its next instance, so once all of them are in, nothing more can
    come: waiting out the delay then only held each group 3 ms (4 associations, 5 KiB: 699
    images/s, 0.41 flushes an instance; ``python -m bench ingest``, 2026-12-02 08:08)."""
    deadline = time.monotonic() + config.store.commit_delay
    waiting_for = active - {r.identity[0] for r in batch}
    while len(batch) < BATCH and waiting_for:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not sock.poll(max(1, int(remaining * 1000)), zmq.POLLIN):
            return
        more, more_replies, more_syncs = _drain(sock, config.network.write_timeout)
        batch.extend(more)
        replies.extend(more_replies)
        syncs.extend(more_syncs)
        waiting_for -= {r.identity[0] for r in more}


def _answer_syncs(sock: zmq.Socket, writer: Writer, syncs: list[tuple[list[bytes], str, tuple[int, int]]]) -> list[tuple[list[bytes], str, tuple[int, int]]]:
    waiting = []
    for identity, corr, target in syncs:
        if writer.synced(target):
            bus.reply(sock, identity, StoreSynced(seq=target[0]), sender=NAME, corr=corr)
        else:
            waiting.append((identity, corr, target))
    return waiting


def main(config: NodeConfig, args: list[str]) -> int:
    """Entry point for ``nodectl run writer``.

    The main thread answers the workers; the materialiser thread copies files and writes the
    index meanwhile. Every blocking call of the main thread (the journal's ``fdatasync``, a
    socket, a stat) lets the materialiser take the GIL, and getting it back waited up to
    Python's switch interval, 5 ms, while a batch was being materialised: a tenth of that
    bounds the wait at a small cost in switches (with one index lookup less per instance in
    ``_journal``: +41-72% images/s on one association, +17-34% on four, less receiver CPU;
    docs/benchmarks.md, 2026-12-02). Set here, not in ``run``: a process that runs the actors
    as threads (``nodectl storescp``, tests) keeps its own setting."""
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    stop = threading.Event()
    bus.stop_on_signals(stop)
    return run(config, stop)
