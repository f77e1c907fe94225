"""The commitment tracker: owns every Storage Commitment transaction and the report outbox.

Sockets (endpoints from the config, ``tracker`` and ``events``):

* a ROUTER for requests from workers and clients, each answered once:
  ``RecordTransaction``/``MarkRequested``/``QueryTransaction`` -> ``TransactionState``;
  ``ForwardReport`` -> ``ReportAnswer``; ``RequestCommitment`` -> ``CommitmentAnswer``;
  ``ReportDelivered`` -> ``Ack``; ``Ping`` -> ``Pong``;
* a PUB on which it announces ``TransactionState`` with the Transaction UID as topic when a
  transaction ends (completed, refused, expired). It only wakes waiters: the state is in
  the database, committed before anything is published or answered.

The decisions are ``node.commitment``'s; the durable state is ``node.transactions``'. What
stays here is I/O: the loop, file checks, and the outbox sender, which opens a new
association to the requester (peer table, SCP role selection, calling AE title = the AE
title the requester called) in a small thread pool so a slow peer never blocks the loop.
Results come back through a queue and are recorded by the loop thread, which alone writes
the database.

Clusters (several nodes on one PostgreSQL database, docs/operations.md): due reports are
leased (``TransactionStore.outbox_claim``), so two trackers never send one report. A
transaction that ends anywhere is announced by PostgreSQL ``NOTIFY`` (issue 16); each
tracker LISTENs on a connection of its own, polled with the bus sockets, and publishes what
it did not end itself (``Tracker.ended``), so a client waiting on this node's tracker wakes
within milliseconds of the N-EVENT-REPORT reaching another node. While that connection is
down (a restart or failover of the database), the tracker looks for ended transactions once a
second instead (``Tracker.watch``), and once more when it is back, for what it missed.
"""

from __future__ import annotations

import logging
import os
import queue
import ssl
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import zmq
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from actors import bus as _bus, reload, ul_requestor
from node import ul
from node import commitment as sc
from node import journal as journaling
from node.commitment import CommitmentError, Ref, Report, State
from node.config import NodeConfig, PeerConfig
from node.db import Listener, redact
from node.errors import MessageError, NodeError, STATUS_PROCESSING_FAILURE
from node import verify
from node.messages import (
    Ack, CommitmentAnswer, Envelope, ErrorReply, ForwardReport, InstancesVerified, MarkRequested, Ping, Pong,
    QueryTransaction, RecordTransaction, ReportAnswer, ReportDelivered, RequestCommitment, SyncStore, TransactionState,
    VerifyInstances, new_id, pack, unpack,
)
from node.transactions import ENDED_CHANNEL, OutboxEntry, Transaction, TransactionStore, request_hash, to_facts

log = logging.getLogger("actors.tracker")

NAME = "tracker"
TICK_S = 0.25
SENDERS = 4
MAX_PER_LOOP = 256
WATCH_S = 1.0  # without a LISTEN connection: how often to look for transactions other nodes' trackers ended
PURGE_S = 30.0  # how often reports kept for unknown transactions are purged (orphan_window is minutes)
WATCH_OVERLAP_S = 5.0  # clocks of cluster hosts and commit order may disagree this much


def state_of(txn: Transaction | None, uid: str) -> TransactionState:
    """The wire form of a transaction's state."""
    if txn is None:
        return TransactionState(transaction_uid=uid, state="unknown")
    report = txn.report
    return TransactionState(
        transaction_uid=uid,
        state=txn.state.value,
        event_type=txn.event_type or 0,
        action_status=txn.action_status if txn.action_status is not None else -1,
        committed=len(report.committed) if report else 0,
        failed=len(report.failed) if report else 0,
        report_ts=txn.report_ts,
    )


class Tracker:
    """Request handling and periodic duties; no sockets (the loop in ``run`` owns them)."""

    def __init__(self, config: NodeConfig, store: TransactionStore, sync_store: Callable[[], None] | None = None) -> None:
        self.config = config
        self.store = store
        # Issue 12: the writer acknowledges instances before they reach their final paths and
        # the index; before checking instances, wait until it has materialised them.
        self.sync_store = sync_store
        self.published: list[TransactionState] = []
        self.watched_since = time.time()
        self.announced: dict[str, float] = {}  # UID -> when published (watch must not repeat it)
        self.next_purge = 0.0  # monotonic time of the next purge of kept reports

    # ----- requests -----------------------------------------------------------------------

    def handle(self, envelope: Envelope) -> tuple[Any, list[bytes]]:
        """Answer one request; facts to publish are appended to ``self.published``."""
        message = envelope.message
        if isinstance(message, RecordTransaction):
            return self._record(message), []
        if isinstance(message, MarkRequested):
            txn = self.store.mark_sent(message.transaction_uid, message.status)
            log.info("txn=%s action_status=0x%04X state=%s", txn.transaction_uid, message.status & 0xFFFF, txn.state.value)
            if txn.state == State.REFUSED:
                self.published.append(state_of(txn, txn.transaction_uid))
            return state_of(txn, txn.transaction_uid), []
        if isinstance(message, QueryTransaction):
            txn = self.store.get(message.transaction_uid)
            data = [txn.report_data] if txn is not None and txn.report_data is not None else []
            return state_of(txn, message.transaction_uid), data
        if isinstance(message, ForwardReport):
            return self._report(message, envelope), []
        if isinstance(message, RequestCommitment):
            return self._request(message, envelope), []
        if isinstance(message, ReportDelivered):
            self._delivered(message)
            return Ack(), []
        if isinstance(message, Ping):
            return Pong(pid=os.getpid()), []
        raise MessageError(f"the tracker does not take {message.kind}")

    def _record(self, msg: RecordTransaction) -> TransactionState:
        refs = sc.refs_from_wire(msg.refs)
        txn = self.store.record(
            msg.transaction_uid, refs, local_aet=msg.local_aet, peer_aet=msg.peer_aet,
            peer_host=msg.peer_host, peer_port=msg.peer_port, timeout=msg.timeout,
        )
        log.info("txn=%s recorded instances=%d peer=%s deadline=%.0fs", msg.transaction_uid, len(refs), msg.peer_aet, msg.timeout)
        orphan = self.store.take_orphan(msg.transaction_uid, self.config.commitment.orphan_window)
        if orphan is not None:
            report, data, ts, sender = orphan
            log.info("txn=%s matched a report kept from %s", msg.transaction_uid, sender)
            txn = self._complete(txn, report, data, ts, sender)
        return state_of(txn, msg.transaction_uid)

    def _report(self, msg: ForwardReport, envelope: Envelope) -> ReportAnswer:
        """An N-EVENT-REPORT-RQ came in somewhere: check, match, commit, then answer."""
        data = bytes(envelope.data[0]) if envelope.data else None
        try:
            report = sc.parse_report(msg.event_type, msg.sop_class_uid, msg.sop_instance_uid, data, msg.transfer_syntax)
        except CommitmentError as exc:
            log.warning("assoc=%s calling=%s report refused: status=0x%04X %s", msg.assoc_id, msg.calling_aet, exc.status, exc)
            return ReportAnswer(status=exc.status, reason=str(exc))
        uid = report.transaction_uid
        txn = self.store.get(uid)
        if txn is None and self.config.commitment.accept_unknown:
            txn = self.store.record(uid, (), local_aet=msg.called_aet, peer_aet=msg.calling_aet, peer_host="", peer_port=0, timeout=0.0)
            log.info("txn=%s report for a transaction started elsewhere: accepted", uid)
        if txn is None:
            self.store.keep_orphan(report, data, msg.transfer_syntax, msg.calling_aet)
            log.warning("txn=%s assoc=%s calling=%s report for an unknown transaction: kept %.0f s, answered 0x%04X",
                        uid, msg.assoc_id, msg.calling_aet, self.config.commitment.orphan_window, sc.STATUS_INVALID_ARGUMENT_VALUE)
            return ReportAnswer(status=sc.STATUS_INVALID_ARGUMENT_VALUE, transaction_uid=uid, reason="unknown transaction")
        if txn.state == State.COMPLETED:
            log.info("txn=%s assoc=%s report arrived again: answered 0x0000, first outcome kept", uid, msg.assoc_id)
            return ReportAnswer(status=sc.STATUS_SUCCESS, transaction_uid=uid, matched=True, reason="repeated")
        self._complete(txn, report, data, msg.transfer_syntax, msg.calling_aet)
        return ReportAnswer(status=sc.STATUS_SUCCESS, transaction_uid=uid, matched=True)

    def _complete(self, txn: Transaction, report: Report, data: bytes | None, ts: str, sender: str) -> Transaction:
        done, _new = self.store.complete(txn.transaction_uid, report, data, ts, sender)
        requested = self.store.refs(txn.transaction_uid)
        for level, text in (sc.compare(requested, report) if requested else []):
            log.log(logging.ERROR if level == "error" else logging.WARNING, "txn=%s %s", txn.transaction_uid, text)
        log.info("txn=%s completed event_type=%d committed=%d failed=%d from=%s",
                 txn.transaction_uid, report.event_type, len(report.committed), len(report.failed), sender)
        self.published.append(state_of(done, done.transaction_uid))
        return done

    def _request(self, msg: RequestCommitment, envelope: Envelope) -> CommitmentAnswer:
        """An N-ACTION-RQ came in (we are the SCP): check, evaluate, queue the report."""
        cfg = self.config.commitment
        data = bytes(envelope.data[0]) if envelope.data else None
        try:
            request = sc.parse_request(
                msg.action_type, msg.sop_class_uid, msg.sop_instance_uid, data, msg.transfer_syntax, max_instances=cfg.max_instances
            )
        except CommitmentError as exc:
            log.warning("assoc=%s calling=%s N-ACTION refused: status=0x%04X %s", msg.assoc_id, msg.calling_aet, exc.status, exc)
            return CommitmentAnswer(status=exc.status, reason=str(exc))
        uid = request.transaction_uid
        fingerprint = request_hash(request.refs)
        existing = self.store.outbox_get(uid)
        if existing is not None:
            return self._repeated_request(existing, fingerprint, msg)
        if self.sync_store is not None:
            self.sync_store()
        report = sc.evaluate(request, self._facts(request.refs))
        now = time.time()
        first = now + (cfg.same_association_grace if cfg.same_association else 0.0)
        self.store.outbox_put(
            report, requester_aet=msg.calling_aet, called_aet=msg.called_aet, peer_host=msg.peer_host,
            request_hash=fingerprint, first_attempt=first, expires=now + cfg.report_expiry,
        )
        log.info("txn=%s assoc=%s calling=%s N-ACTION accepted: instances=%d committed=%d failed=%d (report queued)",
                 uid, msg.assoc_id, msg.calling_aet, len(request.refs), len(report.committed), len(report.failed))
        return self._answer(report, deliver_here=cfg.same_association)

    def _repeated_request(self, existing: OutboxEntry, fingerprint: str, msg: RequestCommitment) -> CommitmentAnswer:
        """Same Transaction UID again: a retry (same instances) gets the same report again."""
        uid = existing.transaction_uid
        if existing.request_hash != fingerprint:
            log.warning("txn=%s assoc=%s Transaction UID reused for other instances: refused", uid, msg.assoc_id)
            return CommitmentAnswer(status=sc.STATUS_INVALID_ARGUMENT_VALUE, reason="Transaction UID already used for other instances")
        log.info("txn=%s assoc=%s N-ACTION repeated: same report (state %s)", uid, msg.assoc_id, existing.state.value)
        if existing.state != sc.Delivery.QUEUED:
            return self._answer(existing.report, deliver_here=True)
        return self._answer(existing.report, deliver_here=self.config.commitment.same_association)

    @staticmethod
    def _answer(report: Report, *, deliver_here: bool) -> CommitmentAnswer:
        return CommitmentAnswer(
            status=sc.STATUS_SUCCESS, transaction_uid=report.transaction_uid, event_type=report.event_type,
            committed=sc.refs_to_wire(report.committed), failed=sc.failed_to_wire(report.failed), deliver_here=deliver_here,
        )

    def _facts(self, refs: tuple[Ref, ...]) -> dict[str, sc.Fact]:
        """What the index says, checked as far as ``[commitment] verify`` asks (issue 16):
        the row alone, or the file, here or by the node that holds it."""
        cfg = self.config.commitment
        found = self.store.facts(refs)
        endpoints = self._endpoints() if cfg.verify == "file" and any(r.node_id for r in found.values()) else {}
        todo = verify.plan(found, mode=cfg.verify, here=self.config.node_id, endpoints=endpoints)
        intact = {uid: True for uid in todo.trusted}
        for uid in todo.local:
            row = found[uid]
            why = verify.problem(row.path, row.size, row.checksum)
            if why:
                log.warning("sop=%s not committed: %s at %s", uid, why, row.path)
            intact[uid] = not why
        if todo.remote:
            asked = {endpoint: {uid: [found[uid].path, found[uid].size, found[uid].checksum] for uid in uids}
                     for endpoint, uids in todo.remote.items()}
            intact.update(ask_owners(asked, timeout=cfg.verify_timeout))
        return to_facts(found, intact)

    def _endpoints(self) -> dict[str, str]:
        """{node id: verifier endpoint} from the shared database (read per request: nodes come and go)."""
        return self.store.index.endpoints()

    def _delivered(self, msg: ReportDelivered) -> None:
        if self.store.outbox_state(msg.transaction_uid) is None:
            return
        if msg.status == sc.STATUS_SUCCESS:
            self.store.outbox_attempted(msg.transaction_uid, delivered=True, error="", retry_at=0.0)
            log.info("txn=%s assoc=%s report delivered on the same association", msg.transaction_uid, msg.assoc_id)
        else:
            self.store.outbox_reschedule(msg.transaction_uid, time.time())
            log.info("txn=%s assoc=%s report not delivered on the same association (status %d): new association",
                     msg.transaction_uid, msg.assoc_id, msg.status)

    # ----- periodic duties ----------------------------------------------------------------

    def lease(self) -> float:
        """How long an outbox claim lasts: longer than one delivery attempt can take."""
        return 4 * self.config.commitment.association_timeout + 10.0

    def ended(self, uids: list[str]) -> int:
        """Publish transactions another tracker announced as ended (NOTIFY); return how many."""
        found = 0
        for uid in dict.fromkeys(uids):
            if uid in self.announced:
                continue  # ended here (already published) or announced twice
            txn = self.store.get(uid)
            if txn is None or txn.state not in (State.COMPLETED, State.REFUSED, State.EXPIRED):
                continue
            self.announced[uid] = time.time()
            self.published.append(state_of(txn, uid))
            found += 1
        return found

    def watch(self, now: float | None = None) -> int:
        """Publish transactions that ended elsewhere (another node's tracker); return how many."""
        now = now or time.time()
        for uid, at in list(self.announced.items()):
            if at < now - 2 * WATCH_OVERLAP_S:
                del self.announced[uid]
        found = 0
        for txn in self.store.ended_since(self.watched_since - WATCH_OVERLAP_S):
            if txn.transaction_uid in self.announced:
                continue
            self.announced[txn.transaction_uid] = now
            self.published.append(state_of(txn, txn.transaction_uid))
            found += 1
        self.watched_since = now
        return found

    def expire(self) -> None:
        for uid in self.store.expire_due():
            log.warning("txn=%s expired without report", uid)
            self.published.append(state_of(self.store.get(uid), uid))
        now = time.monotonic()
        if now >= self.next_purge:
            # A write transaction: every tick, it was most of what an idle node asked of a
            # cluster's database (docs/scaling.md); kept reports live for minutes anyway.
            self.next_purge = now + PURGE_S
            self.store.purge_orphans(self.config.commitment.orphan_window)

    def attempted(self, entry: OutboxEntry, ok: bool, error: str) -> None:
        """Record the outcome of one outbox delivery attempt (back-off on failure)."""
        cfg = self.config.commitment
        retry_at = time.time() + sc.backoff(entry.attempts + 1, base=cfg.retry_base, cap=cfg.retry_max)
        after = self.store.outbox_attempted(entry.transaction_uid, delivered=ok, error=error, retry_at=retry_at)
        if ok:
            log.info("txn=%s report delivered to %s on a new association (attempt %d)", entry.transaction_uid, entry.requester_aet, after.attempts)
        elif after.state == sc.Delivery.EXPIRED:
            log.error("txn=%s report to %s expired after %d attempts: %s", entry.transaction_uid, entry.requester_aet, after.attempts, error)
        else:
            log.warning("txn=%s report to %s not delivered (attempt %d): %s; next in %.1f s",
                        entry.transaction_uid, entry.requester_aet, after.attempts, error, retry_at - time.time())


# --------------------------------------------------------------------------- other nodes' writers


def ask_owners(asked: dict[str, dict[str, list[Any]]], *, timeout: float) -> dict[str, bool]:
    """Ask each owner's writer (``VerifyInstances`` on its tcp:// endpoint) at once; wait at
    most ``timeout`` in all. {UID: intact}: an owner that does not answer in time leaves its
    instances False (reported failed, 0x0110: the requester may ask again later), never True.
    """
    ctx = zmq.Context.instance()
    intact = {uid: False for uids in asked.values() for uid in uids}
    pending: dict[zmq.Socket, tuple[str, str]] = {}  # socket -> (endpoint, request id)
    sockets: list[zmq.Socket] = []
    poller = zmq.Poller()
    try:
        for endpoint, instances in asked.items():
            sock = _bus.dealer(ctx, endpoint)
            sockets.append(sock)
            msg_id = new_id()
            sock.send_multipart(pack(VerifyInstances(instances=instances), sender=NAME, msg_id=msg_id), copy=False)
            pending[sock] = (endpoint, msg_id)
            poller.register(sock, zmq.POLLIN)
        deadline = time.monotonic() + timeout
        while pending and (remaining := deadline - time.monotonic()) > 0:
            for sock, _ in poller.poll(int(remaining * 1000) + 1):
                answer = _owner_answer(sock, pending[sock][1])
                if answer is None:
                    continue
                for uid in answer.present:
                    if uid in asked[pending[sock][0]]:
                        intact[uid] = True
                for uid, why in answer.problems.items():
                    log.warning("sop=%s not committed: %s on node %s", uid, why, answer.node_id)
                poller.unregister(sock)
                del pending[sock]
        for endpoint, _ in pending.values():
            log.warning("node at %s did not answer within %.1f s: %d instance(s) reported failed",
                        endpoint, timeout, len(asked[endpoint]))
    finally:
        for sock in sockets:
            sock.close(0)
    return intact


def _owner_answer(sock: zmq.Socket, msg_id: str) -> InstancesVerified | None:
    """The owner's answer to request ``msg_id``; None for anything else (skipped)."""
    try:
        envelope = unpack(sock.recv_multipart(copy=False))
    except MessageError as exc:
        log.warning("unreadable answer from an owner node: %s", exc)
        return None
    if envelope.corr != msg_id:
        return None
    if isinstance(envelope.message, ErrorReply):
        log.warning("owner node refused verification: %s", envelope.message.reason)
        return InstancesVerified(node_id="?", present=[])
    return envelope.message if isinstance(envelope.message, InstancesVerified) else None


# --------------------------------------------------------------------------- outbox sender


# PS3.4 J.3.3: the SCP opening the association for a report proposes the SCP role for itself.
_REPORT_ROLE = ul.RoleSelection(sop_class_uid=sc.SOP_CLASS, scu_role=False, scp_role=True)
_REPORT_CONTEXTS = (ul.ProposedContext(context_id=1, abstract_syntax=sc.SOP_CLASS,
                                       transfer_syntaxes=(ExplicitVRLittleEndian, ImplicitVRLittleEndian)),)


def deliver(entry: OutboxEntry, config: NodeConfig) -> tuple[bool, str]:
    """Send one queued report on a new association to its requester; (delivered, error)."""
    peer = config.peer(entry.requester_aet)
    if peer is None:
        return False, f"no [[peers]] entry for {entry.requester_aet}"
    where = f"{entry.requester_aet}@{peer.host}:{peer.port}"
    timeout = config.commitment.association_timeout
    try:
        tls_context = peer_tls_context(peer, config) if peer.tls else None
    except (OSError, ssl.SSLError) as exc:
        return False, f"TLS to {where}: {exc}"
    request = ul_requestor.request(entry.requester_aet, entry.called_aet or config.aet, _REPORT_CONTEXTS, roles=[_REPORT_ROLE])
    try:
        with ul_requestor.associate(peer.host, peer.port, request, timeouts=ul_requestor.Timeouts(timeout, timeout, timeout),
                                    tls=tls_context, server_hostname=peer.server_name or peer.host) as assoc:
            status = _send_report(assoc, entry)
            _release_quietly(assoc)
    except ul_requestor.AssociationError as exc:
        return False, f"association to {where}: {exc}"
    if status is None:
        return False, f"{where} accepted no Storage Commitment context with the SCP role for us"
    if status != sc.STATUS_SUCCESS:
        return False, f"N-EVENT-REPORT-RSP status 0x{status:04X}"
    return True, ""


def _send_report(assoc: ul_requestor.Requestor, entry: OutboxEntry) -> int | None:
    """The N-EVENT-REPORT and its response status; None when no context allows it (the peer
    refused us the SCP role, or the SOP class)."""
    context = assoc.context_for(sc.SOP_CLASS)
    if context is None or not context.requestor_scp:
        return None
    ident = assoc.next_message_id()
    assoc.send(context.context_id, ul.NEventReportRQ(message_id=ident, affected_sop_class_uid=sc.SOP_CLASS,
                                                     affected_sop_instance_uid=sc.SOP_INSTANCE,
                                                     event_type_id=entry.report.event_type),
               sc.report_bytes(entry.report, context.transfer_syntax))
    return int(assoc.wait_response(ident).message.status)  # type: ignore[union-attr]


def _release_quietly(assoc: ul_requestor.Requestor) -> None:
    """Release; a peer that answered the report but botches the release still got it."""
    try:
        assoc.release()
    except ul_requestor.AssociationError as exc:
        log.info("report association: release failed after the response: %s", exc)


def peer_tls_context(peer: PeerConfig, config: NodeConfig) -> ssl.SSLContext:
    """The client side for a ``tls = true`` peer: its CA, the node's certificate (the peer's
    own entry, else ``[tls]``'s)."""
    certificate, key = (peer.certificate, peer.key) if peer.certificate else (config.tls.certificate, config.tls.key)
    return ul_requestor.client_context(peer.ca, certificate, key, config.tls.key_password if not peer.certificate else "")


class Sender:
    """Runs deliveries in threads; results come back through ``results`` for the loop."""

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.pool = ThreadPoolExecutor(max_workers=SENDERS, thread_name_prefix="outbox")
        self.results: queue.Queue[tuple[OutboxEntry, bool, str]] = queue.Queue()
        self.in_flight: set[str] = set()

    def submit(self, entry: OutboxEntry) -> None:
        if entry.transaction_uid in self.in_flight:
            return
        self.in_flight.add(entry.transaction_uid)
        self.pool.submit(self._run, entry)

    def _run(self, entry: OutboxEntry) -> None:
        try:
            ok, error = deliver(entry, self.config)
        except Exception as exc:  # a delivery that crashes must still be retried, not lost
            ok, error = False, f"{type(exc).__name__}: {exc}"
        self.results.put((entry, ok, error))

    def drain(self) -> list[tuple[OutboxEntry, bool, str]]:
        out = []
        while True:
            try:
                item = self.results.get_nowait()
            except queue.Empty:
                return out
            self.in_flight.discard(item[0].transaction_uid)
            out.append(item)

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


# --------------------------------------------------------------------------- the loop


def run(config: NodeConfig, stop: threading.Event, ctx: zmq.Context | None = None, ready: threading.Event | None = None) -> int:
    """Serve requests, expire transactions and deliver reports until ``stop``."""
    ctx = ctx or zmq.Context.instance()
    # The lease owner names the node, not the process: a restarted tracker takes back at once
    # the reports its predecessor had claimed; only another node waits for the lease to end.
    store = TransactionStore(config.database, owner=f"{os.uname().nodename}:{config.run_dir}")
    writer_sock = _bus.dealer(ctx, config.endpoint("writer")) if journaling.enabled(config) else None
    tracker = Tracker(config, store, sync_store=(lambda: sync_store(writer_sock, config)) if writer_sock is not None else None)
    sender = Sender(config)
    router = _bus.router(ctx, config.endpoint(NAME))
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    events = config.endpoint("events")
    _bus._prepare_ipc(events)
    pub.bind(events)
    log.info("tracker ready: database=%s endpoint=%s events=%s", redact(config.database), config.endpoint(NAME), events)
    if ready is not None:
        ready.set()
    next_tick = next_watch = 0.0
    hup = reload.on_sighup()
    poller = zmq.Poller()
    poller.register(router, zmq.POLLIN)
    wakeup = _bus.signal_wakeup_fd()  # SIGTERM ends the poll below at once
    if wakeup is not None:
        poller.register(wakeup, zmq.POLLIN)
    notices = Notices(config.database, poller) if store.shared else None
    try:
        while not stop.is_set():
            if hup.is_set():  # SIGHUP: peers and [commitment] apply from the next request on
                tracker.config = sender.config = config = reload.reread(config, hup)
            events = dict(poller.poll(int(TICK_S * 1000 / 2)))
            if wakeup in events:
                _bus.drain_wakeup(wakeup)
            if router in events:
                _serve(router, tracker)
            for entry, ok, error in sender.drain():
                _guard(tracker.attempted, entry, ok, error)
            now = time.monotonic()
            if now >= next_tick:
                next_tick = now + TICK_S
                _guard(tracker.expire)
                for entry in _guard(store.outbox_claim, tracker.lease()) or []:
                    sender.submit(entry)
            if notices is not None:
                uids = notices.take(events)
                if uids and _guard(tracker.ended, uids):
                    log.info("woke waiters for transactions completed by another node (notified)")
                if notices.caught_up:
                    tracker.watched_since = time.time()  # up to now, NOTIFY told us everything
            if store.shared and now >= next_watch and (notices is None or not notices.listening(now)):
                next_watch = now + WATCH_S
                if _guard(tracker.watch):
                    log.info("woke waiters for transactions completed by another node")
                if notices is not None:
                    notices.watched()
            _publish(pub, tracker)
    finally:
        if notices is not None:
            notices.close()
        sender.close()
        if writer_sock is not None:
            writer_sock.close(0)
        router.close(0)
        pub.close(0)
        store.close()
    return 0


class Notices:
    """The tracker's LISTEN connection (``node.db.Listener``) inside its zmq poller.

    ``take`` returns the UIDs notified since the last call ([] when none), or None while the
    connection is down. ``listening`` is False while it is down (a reconnection is tried every
    ``RETRY_S``) and after each (re)connection until the loop has polled the tables once
    (``watched``): that poll covers what ended before the LISTEN was in place again.
    """

    RETRY_S = 1.0

    def __init__(self, database: str, poller: zmq.Poller) -> None:
        self.listener = Listener(database, ENDED_CHANNEL)
        self.poller = poller
        self.fd: int | None = None
        self.retry_at = 0.0
        self.caught_up = False
        self._connect(time.monotonic())

    def _connect(self, now: float) -> None:
        self.retry_at = now + self.RETRY_S
        if self.listener.connect():
            self.fd = self.listener.fileno()
            self.poller.register(self.fd, zmq.POLLIN)
            log.info("listening for transactions ended on other nodes (PostgreSQL NOTIFY)")

    def listening(self, now: float) -> bool:
        if self.fd is None and now >= self.retry_at:
            self._connect(now)
        return self.fd is not None and self.caught_up

    def watched(self) -> None:
        """The loop polled the tables: from now on NOTIFY alone tells what ends."""
        self.caught_up = self.fd is not None

    def take(self, events: dict[Any, int]) -> list[str] | None:
        if self.fd is None:
            return None
        if self.fd not in events:
            return []
        uids = self.listener.drain()
        if uids is None:
            log.warning("LISTEN connection lost: looking for ended transactions every %.0f s until it is back", WATCH_S)
            self._drop()
        return uids

    def _drop(self) -> None:
        if self.fd is not None:
            self.poller.unregister(self.fd)
            self.fd = None
        self.caught_up = False
        self.listener.close()

    def close(self) -> None:
        self._drop()


def sync_store(sock: zmq.Socket, config: NodeConfig) -> None:
    """Wait until the writer has materialised every instance it acknowledged so far; a writer
    that does not answer within half the worker's patience is a processing failure (0x0110)."""
    try:
        _bus.request(sock, SyncStore(), sender=NAME, timeout=config.commitment.request_timeout / 2)
    except TimeoutError:
        raise NodeError("the storage writer did not confirm its journal is materialised", status=STATUS_PROCESSING_FAILURE) from None


def _guard(func: Any, *args: Any) -> Any:
    """Run a periodic duty; a NodeError (database busy, say) is logged and retried next tick."""
    try:
        return func(*args)
    except NodeError as exc:
        log.error("%s failed: %s", getattr(func, "__name__", func), exc)
        return None


def _serve(router: zmq.Socket, tracker: Tracker) -> None:
    for _ in range(MAX_PER_LOOP):
        if not router.poll(0, zmq.POLLIN):
            return
        identity, envelope = _bus.receive(router)
        if isinstance(envelope, MessageError):
            _bus.reply(router, identity, ErrorReply(status=envelope.status, reason=str(envelope)), sender=NAME, corr="")
            continue
        try:
            answer, data = tracker.handle(envelope)
        except NodeError as exc:
            log.error("%s from %s failed: %s", envelope.message.kind, envelope.sender, exc)
            answer, data = ErrorReply(status=getattr(exc, "status", STATUS_PROCESSING_FAILURE), reason=str(exc)), []
        try:
            router.send_multipart([*identity, *pack(answer, sender=NAME, corr=envelope.id, data=data)], copy=False)
        except zmq.error.ZMQError as exc:
            if exc.errno != zmq.EHOSTUNREACH:
                raise
            log.warning("requester %s gone before its %s reply", envelope.sender, answer.kind)


def _publish(pub: zmq.Socket, tracker: Tracker) -> None:
    """Wake waiters: topic = Transaction UID (state is already committed)."""
    while tracker.published:
        state = tracker.published.pop(0)
        tracker.announced.setdefault(state.transaction_uid, time.time())
        pub.send_multipart([state.transaction_uid.encode(), *pack(state, sender=NAME)])


def main(config: NodeConfig, args: list[str]) -> int:
    """Entry point for ``nodectl run tracker``."""
    stop = threading.Event()
    _bus.stop_on_signals(stop)
    return run(config, stop)
