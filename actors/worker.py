"""An association worker: serves acceptor associations on sockets a listener hands it.

The main thread owns the ZeroMQ sockets and the hand-off Unix socket:

* it tells every listener, once a second and whenever its load changes, how many more
  associations it can take (``WorkerReady``), and that an association ended
  (``AssociationEnded``);
* it receives accepted TCP sockets as descriptors (``socket.recv_fds``) with a ``HandOff``
  and starts an association thread on each: the engine shell (actors/_ul_association.py
  on node/ul), which serves every acceptor association the node takes (C-ECHO, C-STORE,
  Storage Commitment both ways).

For each C-STORE, the association's thread parses the dataset (in memory, or spooled under
``<store>/.incoming/spool`` when large) and asks ``node.receive`` where it goes. An inline
instance under ``store.duplicates = overwrite`` goes into this worker's own journal
(``node.worker_journal``: one flush shared by every association of the worker that stores
meanwhile) and is answered once that flush returned; the writer reads the journal and
materialises it. Any other instance is sent as ``WriteInstance`` to the storage writer on the
thread's own DEALER socket, and the peer is answered only when the writer says the file is
durable (or with a failure status when it does not answer in time).
"""

from __future__ import annotations

import ctypes
import logging
import os
import queue
import select
import shutil
import socket
import threading
import time
from dataclasses import dataclass, field
from collections.abc import Callable
from typing import Any

import zmq

from node import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from actors import bus as _bus
from actors import metrics, reload
from actors._ul_association import EngineAssociation
from node.config import ListenerConfig, NodeConfig
from node.errors import NodeError, STATUS_OUT_OF_RESOURCES, MessageError
from node.access import AssociateRequest, Refusal, allowed
from node import journal as journaling
from node import worker_journal
from node.index import Index
from node.journal import Entry, Journal, record_body
from node.messages import (
    AdmitAnswer, AdmitAssociation, AdoptJournal, AssociationEnded, ErrorReply, HandOff, InstanceWritten, JournalAdopted, WorkerReady, unpack,
)
from node.storage import PREAMBLE, Store
from node.supervision import verification_only
from node.paths import FilePathPattern
from node.receive import FileMetaCache, acceptor_policy, check_dataset, context_rules, delay_ms, plan_write, read_in_memory, read_own_spool, wanted_tags

log = logging.getLogger("actors.worker")

HEARTBEAT_S = 1.0
# glibc's mallopt(3) parameters and the largest mmap threshold it accepts on 64-bit systems
# (half its per-thread heap size).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD_MAX = 32 << 20
ADOPT_WAIT_S = 60.0  # a worker starting beside the writer waits this long for it to adopt its journal
ADMIT_TIMEOUT_S = 2.0  # past it, an association is refused (transient): only the listener counts exactly


@dataclass
class _Live:
    """One running association, where it came from, and its DEALERs to the writer.

    A DEALER per thread that stores (the association's own, and with an asynchronous
    window those storing for it): ZeroMQ sockets are not thread-safe. The main thread closes
    them once the association's threads have ended.
    """

    assoc: Any  # an EngineAssociation (actors/_ul_association.py)
    handoff: HandOff
    stores: int = 0  # C-STOREs received: the k of dcm4che's per-store delay lists (engine shell)
    stored: int = 0  # instances stored (success returned), for the summary line at its end
    dealers: dict[int, zmq.Socket] = field(default_factory=dict)
    calling: str | None = None  # set once its A-ASSOCIATE-RQ was admitted (node.access)
    lock: threading.Lock = field(default_factory=threading.Lock)  # an asynchronous window stores from several threads

    def count_stored(self) -> None:
        with self.lock:
            self.stored += 1

    def close(self) -> None:
        for dealer in self.dealers.values():
            dealer.close(0)
        self.dealers.clear()

    def drop_dealer(self) -> None:
        """This thread's DEALER: a late reply must not be read as its next request's answer."""
        dealer = self.dealers.pop(threading.get_ident(), None)
        if dealer is not None:
            dealer.close(0)


class Worker:
    """Runs associations; one instance per worker process (or thread in inproc mode)."""

    def __init__(self, config: NodeConfig, worker_id: str, ctx: zmq.Context) -> None:
        self.config = config
        self.name = f"worker-{worker_id}"
        self.ctx = ctx
        self.pattern = FilePathPattern.compile(config.store.filepath) if config.store.filepath else None
        self.wanted = wanted_tags(self.pattern)  # what a small dataset's header walk keeps
        self.rules = context_rules(config)
        self.live: dict[str, _Live] = {}
        # Handed sockets whose peer has not sent its first byte yet: no thread until it does.
        self.pending: dict[socket.socket, tuple[HandOff, float]] = {}
        self.received: dict[str, int] = {lc.key: 0 for lc in config.listeners}
        self.spool_dir = config.spool_dir / "spool" / self.name
        self._policies: dict[str, Any] = {}  # node.ul.AcceptorPolicy per listener
        # DEALERs to listeners for admissions (node-wide caps), taken by one association thread at a time.
        self._admission_sockets: dict[str, queue.SimpleQueue[zmq.Socket]] = {}
        # TLS listeners: handshakes run in short threads and report here (issue 7).
        self.tls_context: Any = None
        self.handshaking = 0
        self.handshaken: queue.SimpleQueue[tuple[Any, HandOff]] = queue.SimpleQueue()
        self.max_pdu_read = pdu_read_limit(config.network.max_pdu_receive)
        self.meta_cache = FileMetaCache()
        self.store = Store(config.directory)
        self.group: worker_journal.GroupCommit | None = None  # this worker's journal, once the writer adopted it

    # ----- set-up -------------------------------------------------------------------------

    def prepare_spool(self) -> None:
        """A private spool directory, emptied of what a crashed predecessor left."""
        shutil.rmtree(self.spool_dir, ignore_errors=True)
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        # Values are read for the index and the path pattern, which make them safe; pydicom's
        # per-value VR checks (a regex per UID) were ~15% of a worker's CPU per small C-STORE
        # and only ever warned.
        import pydicom.config

        pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
        if any(lc.tls for lc in self.config.listeners):
            from actors.tls import server_context

            self.tls_context = server_context(self.config.tls)

    def open_journal(self, stop: threading.Event) -> None:
        """This worker's journal, adopted by the writer (which first materialises what a
        predecessor of the same name left in it); on failure, or where it does not apply,
        every instance goes to the writer as before."""
        if not uses_worker_journal(self.config):
            return
        journal = Journal(worker_journal.path_for(self.store.directory, self.name))
        try:
            journal.open()
        except NodeError as exc:
            log.error("%s: no journal of its own (%s): instances go to the writer", self.name, exc)
            return
        adopted = self._adopt(journal, stop)
        if adopted is None:
            log.error("%s: instances go to the writer", self.name)
            journal.close()
            return
        journal.start_after_recovery(adopted)
        journal_id = journal.journal_id
        database = self.config.database

        def checkpoint() -> int:
            index = Index(database, readonly=True)
            try:
                return index.checkpoint(journal_id)
            finally:
                index.close()

        def readopt() -> int | None:
            return self._adopt(journal, threading.Event(), wait_s=self.config.network.write_timeout)

        self.group = worker_journal.GroupCommit(journal, checkpoint, readopt, delay=self.config.store.commit_delay,
                                                wait_s=self.config.network.write_timeout)
        log.info("%s: journal %s adopted (up to seq %d)", self.name, journal.path.name, adopted)

    def _adopt(self, journal: Journal, stop: threading.Event, wait_s: float = ADOPT_WAIT_S) -> int | None:
        """Ask the writer to adopt ``journal``; the seq it answers, or None."""
        request = AdoptJournal(path=str(journal.path), journal_id=journal.journal_id)
        deadline = time.monotonic() + wait_s
        dealer = _bus.dealer(self.ctx, self.config.endpoint("writer"))
        try:
            while not stop.is_set() and time.monotonic() < deadline:
                try:
                    reply = _bus.request(dealer, request, sender=self.name, timeout=min(5.0, wait_s))
                except TimeoutError:
                    continue
                if isinstance(reply.message, JournalAdopted):
                    return reply.message.seq
                log.warning("%s: the writer did not adopt %s: %s", self.name, journal.path.name, getattr(reply.message, "reason", reply.message))
                if wait_s < ADOPT_WAIT_S:
                    break  # a repair after a failed append: the next append asks again
                stop.wait(1.0)
        finally:
            dealer.close(0)
        log.error("%s: journal %s not adopted", self.name, journal.path.name)
        return None

    def close_journal(self) -> None:
        """Close the journal (and release its lock) once no association thread can append:
        with threads still running after the drain's abort, the process's exit closes it."""
        group, self.group = self.group, None
        if group is not None and not any(live.assoc is not None and live.assoc.is_alive() for live in self.live.values()):
            group.journal.close()

    # ----- associations -------------------------------------------------------------------

    def start_association(self, conn: socket.socket, handoff: HandOff) -> None:
        """Serve an accepted socket on the engine shell (node/ul), in a thread of its own."""
        live = _Live(assoc=None, handoff=handoff)
        live.assoc = EngineAssociation(self, conn, handoff, live)
        self.live[handoff.assoc_id] = live
        log.info("assoc=%s peer=%s:%d listener=%s started", handoff.assoc_id, handoff.peer_host, handoff.peer_port, handoff.listener)
        live.assoc.start()

    def _listener(self, key: str) -> ListenerConfig:
        for lc in self.config.listeners:
            if lc.key == key:
                return lc
        raise MessageError(f"hand-off from unknown listener {key!r}")

    def running(self) -> dict[str, int]:
        """Admitted associations of this worker by calling AE title."""
        counts: dict[str, int] = {}
        for live in list(self.live.values()):
            if live.calling is not None:
                counts[live.calling] = counts.get(live.calling, 0) + 1
        return counts

    def admit_request(self, live: _Live, called: str, calling: str) -> Refusal | None:
        """An A-ASSOCIATE-RQ's admission: ``_admit``, then the listener's AE title checks as
        pynetdicom's acceptor makes them (called AE reason 7 wins over calling AE reason 3), logged."""
        refusal = self._admit(live, called, calling)
        if refusal is not None:
            return refusal
        listener = self._listener(live.handoff.listener)
        ae_title = self.called_aet(live)
        if listener.aet and called != ae_title:
            refusal = Refusal(1, 1, 7, f"called AE {called!r} is not {ae_title!r}")
        elif listener.accept and calling not in [aet.strip() for aet in listener.accept]:
            refusal = Refusal(1, 1, 3, f"calling AE {calling!r} is not in --accept")
        if refusal is not None:
            live.calling = None
            log.warning("assoc=%s rejected: peer=%s:%d calling=%s called=%s result=%d source=%d reason=%d: %s",
                        live.handoff.assoc_id, live.handoff.peer_host, live.handoff.peer_port, calling, called,
                        refusal.result, refusal.source, refusal.reason, refusal.why)
        return refusal

    def _admit(self, live: _Live, called: str, calling: str) -> Refusal | None:
        """The access table, this worker's capacity, then the node-wide caps as the listener
        that handed the association over counts them; records the calling AE when admitted."""
        rq = AssociateRequest(called=called, calling=calling)
        refusal = allowed(rq, self.config)
        if refusal is None and sum(self.running().values()) >= self.config.network.worker_capacity:
            refusal = Refusal(2, 3, 2, f"worker capacity {self.config.network.worker_capacity} reached")
        if refusal is None:
            refusal = self._caps(live, rq)
        if refusal is None:
            return None
        log.warning("assoc=%s refused: peer=%s:%d calling=%s called=%s result=%d source=%d reason=%d: %s",
                    live.handoff.assoc_id, live.handoff.peer_host, live.handoff.peer_port, rq.calling, rq.called,
                    refusal.result, refusal.source, refusal.reason, refusal.why)
        return refusal

    def _caps(self, live: _Live, rq: AssociateRequest) -> Refusal | None:
        """Ask the listener that handed the association over: it alone counts every admission
        of its port, so the caps hold exactly. If it does not answer in time the association is
        refused as transient (the peer retries): admitting on a stale view could overshoot."""
        answer = self._ask_listener(live, rq)
        if answer is None:
            return Refusal(2, 3, 2, f"listener-{live.handoff.listener} did not answer the admission within {ADMIT_TIMEOUT_S:.0f} s")
        if answer.admitted:
            live.calling = rq.calling
            return None
        return Refusal(answer.result, answer.source, answer.reason, answer.why)

    def _ask_listener(self, live: _Live, rq: AssociateRequest) -> AdmitAnswer | None:
        key = live.handoff.listener
        pool = self._admission_sockets.setdefault(key, queue.SimpleQueue())
        try:
            sock = pool.get_nowait()
        except queue.Empty:
            sock = _bus.dealer(self.ctx, self.config.endpoint(f"listener-{key}"))
        request = AdmitAssociation(worker=self.name, assoc_id=live.handoff.assoc_id, calling=rq.calling, called=rq.called)
        try:
            envelope = _bus.request(sock, request, sender=self.name, timeout=ADMIT_TIMEOUT_S)
        except TimeoutError:
            log.warning("assoc=%s listener-%s did not answer the admission within %.0f s: refusing it",
                        live.handoff.assoc_id, key, ADMIT_TIMEOUT_S)
            sock.close(0)
            return None
        pool.put(sock)
        return envelope.message if isinstance(envelope.message, AdmitAnswer) else None

    def close_admission_sockets(self) -> None:
        for pool in self._admission_sockets.values():
            while not pool.empty():
                pool.get_nowait().close(0)

    def called_aet(self, live: _Live) -> str:
        """The node's AE title on this listener."""
        listener = self._listener(live.handoff.listener)
        return (listener.aet or self.config.aet).strip()

    def acceptor_policy(self, live: _Live) -> Any:
        """The engine's negotiation policy on this association's listener (built once per listener)."""
        key = live.handoff.listener
        policy = self._policies.get(key)
        if policy is None:
            net = self.config.network
            policy = self._policies[key] = acceptor_policy(
                self.rules, max_pdu=net.max_pdu_receive, implementation_class_uid=IMPLEMENTATION_CLASS_UID,
                implementation_version_name=IMPLEMENTATION_VERSION_NAME, accept_unknown=self.config.services.accept_unknown,
                max_ops_invoked=net.max_ops_invoked, max_ops_performed=net.max_ops_performed)
        return policy

    def store_instance(self, live: _Live, incoming: Any) -> int:
        """An engine association's complete dataset: make it durable, return the status."""
        return self._store(incoming, live)

    def store_with_options(self, store_number: int, store: Callable[[], int]) -> int:
        """dcm4che's store options around one C-STORE: the receive and
        response delays (``--receive-delay``/``--response-delay``), ``--ignore`` and ``--status``."""
        store_cfg = self.config.store
        _sleep_ms(delay_ms(store_cfg.receive_delay, store_number))
        status = store_cfg.status
        if not store_cfg.ignore:
            status = store()
            if status == 0 and store_cfg.status:
                status = store_cfg.status
        _sleep_ms(delay_ms(store_cfg.response_delay, store_number))
        return status

    @metrics.c_store
    def _store(self, job: Any, live: _Live) -> int:
        """Check the dataset, plan its path, and wait for the writer; return the DIMSE status.

        ``job`` is an engine association's ``_Incoming``: the dataset in memory (``data``), or spooled
        with our file meta.
        """
        received = job.received
        try:
            spool: str | None = None
            data: bytes | None
            if job.spool is not None:  # larger than the inline threshold: the writer takes the file
                spool, meta, data = job.spool_path, job.meta, None
                ds, offset = read_own_spool(spool, meta, job.size, received.transfer_syntax)
            else:
                data, meta = job.data, job.meta
                ds, offset = read_in_memory(data, meta, received.transfer_syntax, self.wanted, values_only=self.pattern is None), 0
            check_dataset(ds, received)
            write = plan_write(received, ds, self.pattern)
            if data is not None and self.group is not None:
                return self._journal(live, write, [PREAMBLE, meta, data])
            if data is None:
                from dataclasses import replace

                write = replace(write, spool=spool, spool_offset=offset)
                frames = [meta]
            else:
                frames = [meta, data]
            reply = _bus.request(self._dealer(live), write, sender=self.name, timeout=self.config.network.write_timeout, data=frames)
        except NodeError as exc:
            log.warning("assoc=%s peer=%s sop=%s refused: status=0x%04X %s", received.assoc_id, _peer(live), received.sop_instance_uid, exc.status, exc)
            return exc.status
        except TimeoutError as exc:
            log.error("assoc=%s peer=%s sop=%s writer did not answer: %s", received.assoc_id, _peer(live), received.sop_instance_uid, exc)
            live.drop_dealer()  # a late reply must not be read as the next request's answer
            return STATUS_OUT_OF_RESOURCES
        message = reply.message
        if isinstance(message, InstanceWritten):
            # Per instance at DEBUG (DCMTK storescp without -v): at INFO its formatting and
            # supervisord's relaying cost more CPU than the upper layer's decoding of the
            # C-STORE; the association's summary line (``reap``) says how many were stored.
            log.debug("assoc=%s calling=%s sop=%s stored", received.assoc_id, received.calling_aet, received.sop_instance_uid)
            live.count_stored()
            return 0
        if isinstance(message, ErrorReply):
            log.warning("assoc=%s peer=%s sop=%s writer failed: 0x%04X %s", received.assoc_id, _peer(live), received.sop_instance_uid, message.status,
                        message.reason)
            return message.status
        return STATUS_OUT_OF_RESOURCES

    @metrics.durable_journal
    def _journal(self, live: _Live, write: Any, parts: list[bytes | memoryview]) -> int:
        """Into this worker's journal; success once the flush that covers it returned.
        PathError or StorageError (a NodeError, answered by ``_store``) when not."""
        assert self.group is not None
        final = self.store.check_target(write.relpath)
        self.group.append(Entry(body=record_body(write, final, time.time()), parts=parts))
        log.debug("assoc=%s calling=%s sop=%s journaled", write.assoc_id, write.calling_aet, write.sop_instance_uid)
        live.count_stored()
        return 0

    def _dealer(self, live: _Live) -> zmq.Socket:
        """This thread's DEALER to the writer for the association, opened on its first C-STORE."""
        ident = threading.get_ident()
        dealer = live.dealers.get(ident)
        if dealer is None:
            dealer = live.dealers[ident] = _bus.dealer(self.ctx, self.config.endpoint("writer"))
        return dealer

    def hold(self, conn: socket.socket, handoff: HandOff) -> None:
        """Keep a new connection aside until its A-ASSOCIATE-RQ starts arriving."""
        net = self.config.network
        wait = net.request_timeout_ms / 1000 if net.request_timeout_ms else net.acse_timeout
        self.pending[conn] = (handoff, time.monotonic() + wait)

    def wake(self, conn: socket.socket) -> HandOff | None:
        """The peer sent something or closed: start its association, or return it as ended.

        A peer that connects and closes without a word (a load balancer's health check, a
        port probe) ends here at once instead of holding a slot for the whole ACSE timeout.
        """
        handoff, _ = self.pending.pop(conn)
        try:
            first = conn.recv(1, socket.MSG_PEEK)
        except OSError:
            first = b""
        if not first:
            conn.close()
            return handoff
        if self.tls_context is not None and self._listener(handoff.listener).tls:
            self.handshaking += 1
            threading.Thread(target=self._handshake, args=(conn, handoff), name=f"tls-{handoff.assoc_id}", daemon=True).start()
            return None
        try:
            self.start_association(conn, handoff)
        except NodeError as exc:
            log.error("assoc=%s cannot start: %s", handoff.assoc_id, exc)
            conn.close()
            return handoff
        return None

    def _handshake(self, conn: socket.socket, handoff: HandOff) -> None:
        """In its own thread: the server-side TLS handshake, bounded; the result goes to the main loop."""
        import ssl

        from actors.tls import peer_subject

        assert self.tls_context is not None
        try:
            conn.settimeout(self.config.tls.handshake_timeout)
            wrapped = self.tls_context.wrap_socket(conn, server_side=True)
            wrapped.settimeout(None)
        except (ssl.SSLError, OSError) as exc:
            log.warning("assoc=%s peer=%s:%d TLS handshake failed: %s", handoff.assoc_id, handoff.peer_host, handoff.peer_port, exc)
            conn.close()
            self.handshaken.put((None, handoff))
            return
        log.info("assoc=%s peer=%s:%d TLS %s %s client=%s", handoff.assoc_id, handoff.peer_host, handoff.peer_port,
                 wrapped.version(), (wrapped.cipher() or ("?",))[0], peer_subject(wrapped))
        self.handshaken.put((wrapped, handoff))

    def finish_handshakes(self) -> list[HandOff]:
        """Start associations on sockets whose TLS handshake ended; return the failed ones as ended."""
        ended = []
        while not self.handshaken.empty():
            wrapped, handoff = self.handshaken.get_nowait()
            self.handshaking -= 1
            if wrapped is None:
                ended.append(handoff)
                continue
            try:
                self.start_association(wrapped, handoff)
            except NodeError as exc:
                log.error("assoc=%s cannot start: %s", handoff.assoc_id, exc)
                wrapped.close()
                ended.append(handoff)
        return ended

    def expire_pending(self) -> list[HandOff]:
        """Close connections that sent nothing within the request timeout."""
        now = time.monotonic()
        expired = [conn for conn, (_, deadline) in self.pending.items() if deadline <= now]
        ended = []
        for conn in expired:
            handoff, _ = self.pending.pop(conn)
            log.warning("assoc=%s peer=%s:%d sent no A-ASSOCIATE-RQ in time: closing", handoff.assoc_id, handoff.peer_host, handoff.peer_port)
            conn.close()
            ended.append(handoff)
        return ended

    def reap(self) -> list[HandOff]:
        """Forget associations whose threads ended; return their hand-offs."""
        ended = [aid for aid, live in self.live.items() if not live.assoc.is_alive()]
        handoffs = []
        for aid in ended:
            live = self.live.pop(aid)
            live.close()
            if live.stored:
                log.info("assoc=%s stored %d instance(s)", aid, live.stored)
            handoffs.append(live.handoff)
        return handoffs

    def capacity(self) -> int:
        """Room for running associations; silent connections cost only a descriptor each and
        count only when ``network.max_pending`` of them wait (then nothing more is taken)."""
        if len(self.pending) + self.handshaking >= self.config.network.max_pending:
            return 0
        return max(0, self.config.network.worker_capacity - len(self.live))

    def abort_all(self) -> None:
        for live in list(self.live.values()):
            try:
                live.assoc.abort()
            except Exception as exc:  # an association already gone cannot be aborted twice
                log.debug("abort failed: %s", exc)


def uses_worker_journal(config: NodeConfig) -> bool:
    """Whether workers journal inline instances themselves (``node.worker_journal``)."""
    return (config.store.worker_journal and config.store.duplicates == "overwrite" and journaling.enabled(config)
            and not verification_only(config) and not config.store.ignore)


def _peer(live: _Live) -> str:
    """host:port of an association's peer, as every WARNING line about it names it."""
    return f"{live.handoff.peer_host}:{live.handoff.peer_port}"


def pdu_read_limit(max_pdu_receive: int) -> int:
    """The largest PDU body we read: 4x what we advertise (a compliant P-DATA is never larger;
    an A-ASSOCIATE-RQ with user identity can be), at least 1 MiB, 64 MiB when unlimited (0).
    Anything longer is refused before a byte of it is buffered."""
    if max_pdu_receive <= 0:
        return 1 << 26
    return max(4 * max_pdu_receive, 1 << 20)


def _sleep_ms(ms: int) -> None:
    if ms > 0:
        time.sleep(ms / 1000)


def _handoff_server(path: str) -> socket.socket:
    """The Unix socket listeners connect to in order to pass accepted descriptors."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    os.makedirs(os.path.dirname(path), exist_ok=True)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(16)
    server.setblocking(False)
    return server


def _receive_handoff(conn: socket.socket) -> tuple[socket.socket, HandOff] | None:
    """One descriptor and its HandOff message from a listener; None when it disconnected."""
    msg, fds, _flags, _addr = socket.recv_fds(conn, 4096, 4)
    if not msg and not fds:
        return None
    if len(fds) != 1:
        for fd in fds:
            os.close(fd)
        raise MessageError(f"hand-off carried {len(fds)} descriptors")
    tcp = socket.socket(fileno=fds[0])
    tcp.setblocking(True)
    envelope = unpack(_split_frames(msg))
    if not isinstance(envelope.message, HandOff):
        tcp.close()
        raise MessageError(f"expected a hand-off, got {envelope.message.kind}")
    return tcp, envelope.message


def _acknowledge(conn: socket.socket) -> None:
    """One byte per hand-off taken: until it arrives the listener keeps the connection, and
    gives it to another worker if this one dies first."""
    try:
        conn.send(b"\x01")
    except OSError as exc:  # the listener is gone; a restarted one starts afresh
        log.warning("cannot acknowledge a hand-off: %s", exc)


def _split_frames(blob: bytes) -> list[bytes]:
    """Hand-off payloads are length-prefixed frames (a stream socket has no message edges)."""
    frames, pos = [], 0
    while pos < len(blob):
        n = int.from_bytes(blob[pos : pos + 4], "big")
        frames.append(blob[pos + 4 : pos + 4 + n])
        pos += 4 + n
    return frames


def run(config: NodeConfig, worker_id: str, stop: threading.Event, ctx: zmq.Context | None = None) -> int:
    """Take associations until ``stop``; then let open ones finish (bounded) and abort the rest."""
    ctx = ctx or zmq.Context.instance()
    worker = Worker(config, worker_id, ctx)
    worker.prepare_spool()
    # Adopted in the background: until the writer has answered, instances go to the writer, so
    # the worker serves as soon as it starts, whatever the writer is still doing.
    adoption = threading.Thread(target=worker.open_journal, args=(stop,), name="adopt-journal", daemon=True)
    adoption.start()
    handoff_path = str(config.handoff_path(worker.name))
    server = _handoff_server(handoff_path)
    listeners = {lc.key: _bus.dealer(ctx, config.endpoint(f"listener-{lc.key}"), identity=worker.name) for lc in config.listeners}
    conns: list[socket.socket] = []
    last_beat = 0.0
    last_capacity = -1
    last_running: dict[str, int] = {}
    last_received = 0
    log.info("%s ready: handoff=%s", worker.name, handoff_path)
    hup = reload.on_sighup()
    wakeup = _bus.signal_wakeup_fd()  # SIGTERM ends the select below at once
    woken = [wakeup] if wakeup is not None else []
    try:
        while not stop.is_set():
            if hup.is_set():  # SIGHUP: serve listeners a reload added (actors/reload.py)
                listeners.update(reload.new_listeners(worker, listeners, hup, lambda key: _bus.dealer(ctx, config.endpoint(f"listener-{key}"), identity=worker.name)))
            # The first pass does not wait: the listeners learn at once that this worker is ready.
            readable, _, _ = select.select([server, *conns, *worker.pending, *woken], [], [], 0.1 if last_beat else 0)
            ended: list[HandOff] = []
            for sock in readable:
                if sock is wakeup:
                    _bus.drain_wakeup(wakeup)
                    continue
                if sock in worker.pending:
                    gone = worker.wake(sock)
                    if gone is not None:
                        ended.append(gone)
                    continue
                if sock is server:
                    conn, _ = server.accept()
                    conn.setblocking(True)
                    conns.append(conn)
                    continue
                try:
                    got = _receive_handoff(sock)
                except (MessageError, OSError) as exc:
                    log.error("bad hand-off: %s", exc)
                    got = None
                if got is None:
                    conns.remove(sock)
                    sock.close()
                    continue
                tcp, handoff = got
                worker.received[handoff.listener] = worker.received.get(handoff.listener, 0) + 1
                _acknowledge(sock)
                worker.hold(tcp, handoff)
            for handoff in [*ended, *worker.finish_handshakes(), *worker.expire_pending(), *worker.reap()]:
                log.info("assoc=%s ended", handoff.assoc_id)
                _send(listeners.get(handoff.listener), AssociationEnded(worker=worker.name, assoc_id=handoff.assoc_id), worker.name)
            now = time.monotonic()
            running = worker.running()
            # A changed ``received`` matters too: silent connections leave capacity as it is,
            # and the listener counts hand-offs we have not acknowledged against our room.
            received = sum(worker.received.values())
            if worker.capacity() != last_capacity or running != last_running or received != last_received or now - last_beat >= HEARTBEAT_S:
                last_capacity = worker.capacity()
                last_running = running
                last_received = received
                last_beat = now
                for key, sock in listeners.items():
                    ready = WorkerReady(worker=worker.name, capacity=last_capacity, handoff=handoff_path, pid=os.getpid(),
                                        received=worker.received.get(key, 0), associations=sum(running.values()), aets=running)
                    _send(sock, ready, worker.name)
    finally:
        server.close()
        _drain(worker, listeners)
        for conn in conns:
            conn.close()
        for sock in listeners.values():
            sock.close(0)
        worker.close_admission_sockets()
        adoption.join(timeout=10)
        worker.close_journal()
        try:
            os.unlink(handoff_path)
        except FileNotFoundError:
            pass
    return 0


def _drain(worker: Worker, listeners: dict[str, zmq.Socket], grace: float = 10.0) -> None:
    """Stop taking work (capacity 0), let open associations end within ``grace``, abort the rest."""
    for key, sock in listeners.items():
        _send(sock, WorkerReady(worker=worker.name, capacity=0, handoff="", pid=os.getpid(), received=worker.received.get(key, 0)), worker.name)
    for conn in list(worker.pending):
        conn.close()
    worker.pending.clear()
    deadline = time.monotonic() + grace
    while worker.live and time.monotonic() < deadline:
        for handoff in worker.reap():
            _send(listeners.get(handoff.listener), AssociationEnded(worker=worker.name, assoc_id=handoff.assoc_id), worker.name)
        time.sleep(0.05)
    if worker.live:
        log.warning("aborting %d association(s) still open after %.0f s", len(worker.live), grace)
        worker.abort_all()


def _send(sock: zmq.Socket | None, message: Any, sender: str) -> None:
    """Fire-and-forget to a listener; a full queue (listener down) drops the message."""
    if sock is None:
        return
    from node.messages import pack

    try:
        sock.send_multipart(pack(message, sender=sender), flags=zmq.NOBLOCK)
    except zmq.Again:
        pass


def keep_dataset_memory(inline_threshold: int) -> bool:
    """Have malloc keep the memory of freed datasets for the next ones; False where it cannot.

    An association thread allocates its dataset's buffers (each read, each fragment, the
    joined dataset, up to ``inline_threshold``) per instance and frees them after the answer.
    With glibc's defaults a buffer of 128 KiB or more may be mapped for itself and unmapped
    when freed, and a thread's heap is trimmed as soon as 128 KiB lie free at its top: the
    next instance faults the same pages in again, zeroed by the kernel. A worker took 20 to
    200 minor faults per 512 KiB instance that way, ~2.3 with the thresholds set here
    (docs/benchmarks.md, 2026-12-03, 15:41–17:25 UTC). Memory is not lost: a heap keeps at
    most what its thread held at once (a dataset up to ``inline_threshold`` and its
    fragments; larger ones are spooled in chunks), and it is reused by the next instance.
    Process-wide, so only a worker process sets it (``main``), never a node made of threads
    in a CLI tool.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    mmap_threshold = min(_MMAP_THRESHOLD_MAX, max(4 << 20, 2 * inline_threshold))
    return bool(mallopt(_M_MMAP_THRESHOLD, mmap_threshold)) and bool(mallopt(_M_TRIM_THRESHOLD, 4 * mmap_threshold))


def main(config: NodeConfig, args: list[str]) -> int:
    """Entry point for ``nodectl run worker --worker-id N``."""
    import argparse

    parser = argparse.ArgumentParser(prog="nodectl run worker")
    parser.add_argument("--worker-id", default=str(os.getpid()))
    opts = parser.parse_args(args)
    if not keep_dataset_memory(config.store.inline_threshold):
        log.debug("malloc thresholds not set (not glibc): freed datasets may be unmapped")
    stop = threading.Event()
    _bus.stop_on_signals(stop)
    return run(config, opts.worker_id, stop)
