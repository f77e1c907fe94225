"""The storage writer: the only process that writes the store and the instance index.

Loop: wait for ``WriteInstance`` requests on a ROUTER, take every request already queued
(up to ``BATCH``) as one group, make them durable together (``node.storage.Store.commit``:
per-file fsync, shared directory fsyncs), record them in the index in one transaction, then
answer each worker with ``InstanceWritten`` or ``ErrorReply``. Nothing is answered before
the file and its index row are on disk.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import zmq

from actors import _bus
from actors import metrics
from node.config import NodeConfig
from node.errors import MessageError, NodeError, StorageError
from node.index import Index, InstanceRow
from node.messages import Envelope, ErrorReply, InstanceWritten, Ping, Pong, WriteInstance
from node.storage import PendingWrite, Store

log = logging.getLogger("actors.writer")

BATCH = 64
NAME = "writer"
STATUS_DUPLICATE_REJECTED = 0x0111


@dataclass
class _Request:
    identity: list[bytes]
    envelope: Envelope

    @property
    def message(self) -> WriteInstance:
        return self.envelope.message


class Writer:
    """Group-commits write requests into the store and the index."""

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.store = Store(
            config.directory,
            rename_retries=config.store.rename_retries,
            rename_retry_jitter_ms=config.store.rename_retry_jitter,
        )
        self.index = Index(config.database)

    def prepare(self) -> None:
        removed = self.store.prepare()
        if removed:
            log.warning("removed %d temp file(s) left by an earlier crash", removed)

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
        if to_write:
            replies.extend(self._write(to_write))
        return replies

    def _early_answer(self, msg: WriteInstance, seen: set[str]) -> object | None:
        """Answer duplicates under the ``keep`` and ``reject`` policies without writing."""
        policy = self.config.store.duplicates
        if policy == "overwrite":
            return None
        existing = self.index.get(msg.sop_instance_uid)
        if existing is None and msg.sop_instance_uid not in seen:
            return None
        if policy == "keep" and existing is not None:
            return InstanceWritten(sop_instance_uid=msg.sop_instance_uid, path=existing.path, size=existing.size, kept=True)
        return ErrorReply(status=STATUS_DUPLICATE_REJECTED, reason=f"duplicate SOP instance {msg.sop_instance_uid}")

    @metrics.durable_writes
    def _write(self, requests: list[_Request]) -> list[tuple[list[bytes], object, str]]:
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
            _row(r.message, outcome.path, outcome.size)
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
                InstanceWritten(sop_instance_uid=msg.sop_instance_uid, path=str(outcome.path), size=outcome.size, replaced=old is not None),
                r.envelope.id,
            ))
            log.debug("assoc=%s sop=%s stored at %s", msg.assoc_id, msg.sop_instance_uid, outcome.path)
        return replies


def _row(msg: WriteInstance, path: Path | None, size: int) -> InstanceRow:
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
    )


def _drain(sock: zmq.Socket, deadline_s: float) -> tuple[list[_Request], list[tuple[list[bytes], object, str]]]:
    """Take every queued request (up to BATCH); answer pings, bad and expired messages at once.

    A request older than the requester's deadline is not written: its worker has already
    answered the peer with a failure, and storing it now would keep what was refused.
    """
    batch: list[_Request] = []
    immediate: list[tuple[list[bytes], object, str]] = []
    while len(batch) < BATCH and sock.poll(0, zmq.POLLIN):
        identity, envelope = _bus.receive(sock)
        if isinstance(envelope, MessageError):
            immediate.append((identity, ErrorReply(status=envelope.status, reason=str(envelope)), ""))
        elif isinstance(envelope.message, WriteInstance) and time.time() - envelope.sent > deadline_s:
            log.warning("assoc=%s sop=%s request expired before it was written", envelope.message.assoc_id, envelope.message.sop_instance_uid)
            immediate.append((identity, ErrorReply(status=0xA700, reason="request expired"), envelope.id))
        elif isinstance(envelope.message, WriteInstance):
            batch.append(_Request(identity, envelope))
        elif isinstance(envelope.message, Ping):
            immediate.append((identity, Pong(pid=os.getpid()), envelope.id))
        else:
            reason = f"the writer does not take {envelope.message.kind}"
            immediate.append((identity, ErrorReply(status=0x0110, reason=reason), envelope.id))
    return batch, immediate


def run(config: NodeConfig, stop: threading.Event, ctx: zmq.Context | None = None) -> int:
    """Serve write requests until ``stop`` is set; finish the batch in hand first."""
    ctx = ctx or zmq.Context.instance()
    writer = Writer(config)
    writer.prepare()
    sock = _bus.router(ctx, config.endpoint(NAME))
    log.info("writer ready: store=%s index=%s", writer.store.directory, config.database)
    try:
        while not stop.is_set():
            if not sock.poll(200, zmq.POLLIN):
                continue
            batch, replies = _drain(sock, config.network.write_timeout)
            try:
                replies += writer.handle(batch)
            except NodeError as exc:
                log.error("batch failed: %s", exc)
                replies += [(r.identity, ErrorReply(status=exc.status, reason=str(exc)), r.envelope.id) for r in batch]
            for identity, message, corr in replies:
                if not _bus.reply(sock, identity, message, sender=NAME, corr=corr):
                    log.warning("requester gone before its reply (%s)", getattr(message, "kind", "?"))
    finally:
        sock.close(0)
        writer.index.close()
    return 0


def main(config: NodeConfig, args: list[str]) -> int:
    """Entry point for ``nodectl run writer``."""
    stop = threading.Event()
    _bus.stop_on_signals(stop)
    return run(config, stop)
