"""A listener: owns one listening TCP port and the node's association count for it.

It never parses DICOM, so it stays small and hard to crash. Workers announce on the
listener's ROUTER how many associations they can take (``WorkerReady``, which doubles as a
heartbeat) and report ends (``AssociationEnded``): the load-balancing pattern of the ZeroMQ
guide. The listener accepts a connection only when some worker has room, passes the
descriptor to that worker over the worker's Unix socket (``socket.send_fds``) and keeps its
own copy until the worker acknowledges the hand-off with one byte on the same socket. A
worker that dies before acknowledging (its socket hangs up, a send fails, or a restarted
worker announces a new PID) gets nothing lost: its unacknowledged connections go back to
the front of the queue and the next worker with room takes them. While no worker has room,
new connections wait in the kernel's backlog and accepted ones in that queue.

The listener is also the one place that admits associations of its port against the
node-wide caps (``AdmitAssociation``): it answers them one at a time from the admissions it
made itself, so a cap holds exactly however associations spread over workers. When the
node's association limit is reached, a new connection gets an A-ASSOCIATE-RJ (transient,
service-provider presentation, local limit exceeded). A worker not heard from for
``WORKER_EXPIRY_S`` is handed nothing more; the associations it admitted count until it
speaks again or supervisor's restart of it announces a new PID.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field

import zmq

from actors import bus
from actors import metrics, reload
from node.access import AssociateRequest, within_caps
from node.config import LISTEN_FROM_ENV, ListenerConfig, NodeConfig, write_address
from node.errors import ConfigError
from node.messages import (
    AdmitAnswer, AdmitAssociation, AssociationEnded, HandOff, ListenerStatus, Ping, Pong, StatusRequest,
    WorkerReady, new_id, pack,
)

log = logging.getLogger("actors.listener")

WORKER_EXPIRY_S = 3.5
MAX_REJECTING = 32
# A-ASSOCIATE-RJ (PS3.8 9.3.4): rejected-transient (2), by the service provider's presentation
# layer (3), local limit exceeded (2). Fixed bytes: the listener imports no DICOM codec for them.
REJECT_AT_LIMIT = bytes((0x03, 0, 0, 0, 0, 4, 0, 0x02, 0x03, 0x02))
MAX_WAITING = 256  # accepted connections held for a worker; beyond, the kernel's backlog holds them


@dataclass
class Waiting:
    """An accepted connection not yet acknowledged by a worker (the listener's copy)."""

    conn: socket.socket
    peer: tuple[str, int]
    assoc_id: str
    since: float

    def close(self) -> None:
        self.conn.close()


@dataclass
class WorkerSlot:
    """What the listener knows of one worker."""

    name: str
    capacity: int = 0
    handoff: str = ""
    pid: int = 0
    received: int = 0
    handed: int = 0
    last_seen: float = 0.0
    assocs: set[str] = field(default_factory=set)
    conn: socket.socket | None = None
    running: int = -1  # associations past their A-ASSOCIATE-RQ, as the worker reported (-1: unknown)
    aets: dict[str, int] = field(default_factory=dict)
    unacked: deque[Waiting] = field(default_factory=deque)  # handed over, in order, not yet acknowledged
    admitted: dict[str, str] = field(default_factory=dict)  # assoc_id -> calling AE, admitted by us

    def admitted_counts(self) -> tuple[int, Counter[str]]:
        """This worker's associations for the caps: ours exactly, or more if it reported more
        (associations of other ports, or admitted before this listener restarted)."""
        mine = Counter(self.admitted.values())
        per_aet = Counter({aet: max(mine.get(aet, 0), self.aets.get(aet, 0)) for aet in set(mine) | set(self.aets)})
        return max(len(self.admitted), self.running), per_aet

    @property
    def counted(self) -> int:
        """What counts against the node's limit: running ones and hand-offs in flight, not
        connections still silent (a peer holding 500 of them must not lock others out)."""
        if self.running < 0:
            return len(self.assocs)
        return self.running + max(0, self.handed - self.received)

    @property
    def room(self) -> int:
        """Capacity it announced, less the hand-offs it had not seen when it announced."""
        return self.capacity - max(0, self.handed - self.received)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def take_acks(self) -> tuple[list[Waiting], bool]:
        """Read the worker's acknowledgements without blocking: the hand-offs it confirmed,
        and False when its socket hung up or failed (the worker is gone)."""
        confirmed: list[Waiting] = []
        if self.conn is None:
            return confirmed, False
        while True:
            try:
                data = self.conn.recv(4096, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                return confirmed, True
            except OSError:
                data = b""
            if not data:
                return confirmed, False
            for _ in range(min(len(data), len(self.unacked))):
                confirmed.append(self.unacked.popleft())


class Listener:
    """The association bookkeeping of one port (no sockets of its own but the workers')."""

    def __init__(self, config: NodeConfig, lc: ListenerConfig) -> None:
        self.config = config
        self.lc = lc
        self.name = f"listener-{lc.key}"
        self.workers: dict[str, WorkerSlot] = {}
        self.waiting: deque[Waiting] = deque()  # accepted, for the next worker with room
        self.rejecting = 0
        self.port = lc.port
        self._lock = threading.Lock()

    @property
    def active(self) -> int:
        return sum(len(w.assocs) for w in self.workers.values())

    @property
    def node_active(self) -> int:
        """Running associations of every worker (each reports its total over all listeners)."""
        return sum(w.counted for w in self.workers.values())

    def on_message(self, message: object) -> None:
        if isinstance(message, WorkerReady):
            self._on_ready(message)
        elif isinstance(message, AssociationEnded):
            slot = self.workers.get(message.worker)
            if slot is not None:
                slot.assocs.discard(message.assoc_id)
                slot.admitted.pop(message.assoc_id, None)
                slot.last_seen = time.monotonic()

    def admit(self, request: AdmitAssociation) -> AdmitAnswer:
        """The node-wide caps for one association, from this listener's exact counts.

        Admissions of this port are counted as they are made, so two workers asking at once
        are answered one after the other; associations of other ports count as their workers
        last reported them (on every change).
        """
        node_total = 0
        aet_totals: Counter[str] = Counter()
        for slot in self.workers.values():
            total, per_aet = slot.admitted_counts()
            node_total += total
            aet_totals.update(per_aet)
        slot = self.workers.get(request.worker)
        if slot is None:  # cannot happen for a worker we handed the connection to; never admit uncounted
            return AdmitAnswer(admitted=False, result=2, source=3, reason=2, why=f"{request.worker} is not known to {self.name}")
        rq = AssociateRequest(called=request.called, calling=request.calling)
        refusal = within_caps(rq, self.config, node_total=node_total, aet_totals=aet_totals)
        if refusal is not None:
            return AdmitAnswer(admitted=False, result=refusal.result, source=refusal.source, reason=refusal.reason, why=refusal.why)
        slot.admitted[request.assoc_id] = request.calling
        return AdmitAnswer(admitted=True)

    def _on_ready(self, msg: WorkerReady) -> None:
        slot = self.workers.get(msg.worker)
        if slot is None or (msg.pid != slot.pid and msg.handoff):
            if slot is not None:
                log.warning("%s restarted (pid %d -> %d): forgetting %d association(s)", msg.worker, slot.pid, msg.pid, len(slot.assocs))
                self.take_acks(slot)
                self._forget(slot)
            else:
                log.info("%s joined (pid %d)", msg.worker, msg.pid)
            slot = WorkerSlot(name=msg.worker, pid=msg.pid, handed=msg.received)
            self.workers[msg.worker] = slot
        slot.capacity = msg.capacity
        slot.received = msg.received
        slot.running = msg.associations
        slot.aets = dict(msg.aets)
        if msg.handoff:
            slot.handoff = msg.handoff
        slot.last_seen = time.monotonic()

    def expire(self) -> None:
        """Stop handing connections to workers that stopped sending heartbeats (hung or dead).

        Silence proves nothing: a worker that is only slow may still read the hand-offs in its
        socket and runs the associations it admitted. So what it holds stays where it is and
        keeps counting against the caps; it is handed back (``_forget``) only on proof of
        death: the hand-off socket hangs up, or a restart announces a new PID. A silent worker
        holding nothing is dropped.
        """
        now = time.monotonic()
        for name, slot in list(self.workers.items()):
            if now - slot.last_seen <= WORKER_EXPIRY_S:
                continue
            if slot.capacity:
                log.warning("%s silent for %.1f s: handing it nothing more (%d association(s) still counted)",
                            name, now - slot.last_seen, len(slot.admitted))
                slot.capacity = 0
            if not slot.admitted and not slot.unacked and slot.conn is None:
                del self.workers[name]

    def _forget(self, slot: WorkerSlot) -> None:
        """A worker is gone: close our end, and give what it never acknowledged to another."""
        slot.close()
        slot.capacity = 0
        if slot.unacked:
            log.warning("%s took %d hand-off(s) without acknowledging them: queued for another worker", slot.name, len(slot.unacked))
            for waiting in slot.unacked:
                slot.assocs.discard(waiting.assoc_id)
            self.waiting.extendleft(reversed(slot.unacked))
            slot.unacked.clear()

    def take_acks(self, slot: WorkerSlot) -> None:
        """Close our copies of the connections a worker confirmed; forget it if it hung up."""
        confirmed, alive = slot.take_acks()
        for waiting in confirmed:
            self._confirmed(slot, waiting)
        if not alive and slot.conn is not None:
            self._forget(slot)

    @metrics.handed_off
    def _confirmed(self, slot: WorkerSlot, waiting: Waiting) -> bool:
        log.info("assoc=%s peer=%s:%d -> %s (active %d)", waiting.assoc_id, waiting.peer[0], waiting.peer[1], slot.name, self.active)
        waiting.close()
        return True

    def serve_waiting(self) -> None:
        """Hand queued connections over, oldest first, while some worker has room."""
        deadline = time.monotonic() - self.config.network.acse_timeout
        while self.waiting and self.has_room():
            waiting = self.waiting.popleft()
            if waiting.since < deadline:
                log.error("no worker took %s:%d within %.0f s: closing it", *waiting.peer, self.config.network.acse_timeout)
                waiting.close()
            elif not self.hand_off(waiting):
                self.waiting.appendleft(waiting)
                return

    def status(self) -> ListenerStatus:
        """What ``nodectl status`` shows for this port."""
        return ListenerStatus(
            listener=self.lc.key,
            port=self.port,
            associations=self.active,
            max_associations=self.config.network.max_associations,
            workers={w.name: {"pid": w.pid, "capacity": max(0, w.room), "associations": len(w.assocs)} for w in self.workers.values()},
        )

    def has_room(self) -> bool:
        return any(w.room > 0 and w.handoff for w in self.workers.values())

    def at_limit(self) -> bool:
        return self.node_active >= self.config.network.max_associations

    def hand_off(self, waiting: Waiting) -> bool:
        """Pass an accepted socket to a worker with room, the one holding fewest of this
        port's connections first (then most room); False if none took it.

        Fewest connections, not most room alone: a connection whose peer has not spoken yet
        leaves its worker's capacity as it was, so that worker's next report made it look
        empty again, and connections arriving together piled onto it (3 + 1 over two workers).
        The worker acknowledges with one byte (``take_acks``); until then the connection is
        the listener's too, and goes back to the queue if that worker dies.
        """
        message = HandOff(assoc_id=waiting.assoc_id, listener=self.lc.key, peer_host=waiting.peer[0],
                          peer_port=waiting.peer[1], accepted_at=time.time())
        payload = b"".join(len(f).to_bytes(4, "big") + bytes(f) for f in pack(message, sender=self.name))
        for slot in sorted(self.workers.values(), key=lambda w: (len(w.assocs), -w.room)):
            if slot.room <= 0 or not slot.handoff:
                continue
            try:
                if slot.conn is None:
                    slot.conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    slot.conn.settimeout(2.0)
                    slot.conn.connect(slot.handoff)
                    # Never wait on it again: acknowledgements are read when the poller says so,
                    # and a worker too busy to read its hand-offs is skipped, not waited for.
                    slot.conn.setblocking(False)
                socket.send_fds(slot.conn, [payload], [waiting.conn.fileno()])
            except BlockingIOError:
                log.warning("%s is not reading its hand-offs: trying another worker", slot.name)
                continue
            except OSError as exc:
                log.warning("hand-off to %s failed (%s): trying another worker", slot.name, exc)
                self._forget(slot)
                continue
            slot.handed += 1
            slot.assocs.add(waiting.assoc_id)
            slot.unacked.append(waiting)
            return True
        return False

    @metrics.rejected
    def reject_busy(self, conn: socket.socket, peer: tuple[str, int]) -> None:
        """Answer A-ASSOCIATE-RJ (transient, provider presentation, local limit) in a thread."""
        with self._lock:
            if self.rejecting >= MAX_REJECTING:
                conn.close()
                return
            self.rejecting += 1
        log.warning("association limit %d reached: rejecting %s:%d", self.config.network.max_associations, *peer)
        threading.Thread(target=self._reject, args=(conn,), daemon=True).start()

    def _reject(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(2.0)
            try:
                conn.recv(65536)  # the A-ASSOCIATE-RQ; its content does not matter
            except OSError:
                pass
            conn.sendall(REJECT_AT_LIMIT)
            time.sleep(self.config.network.soclose_delay_ms / 1000)
        except OSError:
            pass
        finally:
            conn.close()
            with self._lock:
                self.rejecting -= 1


def bind(config: NodeConfig, lc: ListenerConfig) -> socket.socket:
    """The listening socket: the one ``nodectl`` bound for this listener, else our own."""
    sock = fetch_listening_socket(lc.key)
    if sock is not None:
        sock.setblocking(False)
        return sock
    family = socket.AF_INET6 if ":" in lc.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((lc.host, lc.port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {lc.host or '*'}:{lc.port}: {exc.strerror}") from None
    sock.listen(128)
    sock.setblocking(False)
    return sock


def fetch_listening_socket(key: str, timeout: float = 5.0) -> socket.socket | None:
    """The socket ``nodectl`` bound for listener ``key`` before starting the node, or None.

    ``nodectl`` binds its ports first thing, so peers wait in the backlog while the actors
    start, and serves them on the Unix socket named by ``$NODECTL_LISTEN_FROM``: send the key
    and a newline, get ``b"1"`` with the descriptor, or ``b"0"`` (node/tools/_lifetime.py).
    """
    path = os.environ.get(LISTEN_FROM_ENV)
    if not path:
        return None
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(timeout)
        try:
            conn.connect(path)
            conn.sendall(key.encode() + b"\n")
            data, fds, _flags, _addr = socket.recv_fds(conn, 1, 1)
        except OSError as exc:
            log.warning("no listening socket from %s (%s): binding our own", path, exc)
            return None
    if data != b"1" or not fds:
        for fd in fds:
            os.close(fd)
        return None
    return socket.socket(fileno=fds[0])


def _tune(conn: socket.socket, config: NodeConfig) -> None:
    """TCP_NODELAY on unless --tcp-delay (Nagle costs ~40 ms per small C-STORE round trip)."""
    net = config.network
    if net.tcp_nodelay:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if net.send_buffer:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, net.send_buffer)
    if net.receive_buffer:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, net.receive_buffer)


def run(config: NodeConfig, lc: ListenerConfig, stop: threading.Event, ctx: zmq.Context | None = None) -> int:
    """Accept and hand off connections until ``stop``."""
    ctx = ctx or zmq.Context.instance()
    state = Listener(config, lc)
    tcp = bind(config, lc)
    port = tcp.getsockname()[1]
    state.port = port
    router = bus.router(ctx, config.endpoint(state.name))
    ready_path = config.ready_path(lc)
    announced = False
    poller = zmq.Poller()
    poller.register(router, zmq.POLLIN)
    tcp_registered = False
    handoff_conns: dict[int, WorkerSlot] = {}
    hup = reload.on_sighup()
    wakeup = bus.signal_wakeup_fd()  # SIGTERM ends the poll below at once, not after 200 ms
    if wakeup is not None:
        poller.register(wakeup, zmq.POLLIN)
    try:
        while not stop.is_set():
            if hup.is_set():  # SIGHUP: [network] limits apply to the next connection
                state.config = config = reload.reread(config, hup)
            want_tcp = (state.has_room() and len(state.waiting) < MAX_WAITING) or state.at_limit()
            if want_tcp != tcp_registered:
                (poller.register(tcp.fileno(), zmq.POLLIN) if want_tcp else poller.unregister(tcp.fileno()))
                tcp_registered = want_tcp
            _watch_handoff_sockets(poller, handoff_conns, state)
            for sock, _ in poller.poll(200):
                if sock is router:
                    _drain_router(router, state)
                elif sock == tcp.fileno():  # plain sockets come back as descriptors
                    _accept(tcp, state, config)
                elif sock in handoff_conns:
                    state.take_acks(handoff_conns[sock])
                elif sock == wakeup:
                    bus.drain_wakeup(wakeup)
            state.expire()
            state.serve_waiting()
            if not announced and state.workers:
                write_address(ready_path, lc.host or "0.0.0.0", port)
                log.info("Start TCP Listener on %s:%d", lc.host or "0.0.0.0", port)
                announced = True
    finally:
        tcp.close()
        router.close(0)
        for slot in state.workers.values():
            slot.close()
            for waiting in slot.unacked:
                waiting.close()
        for waiting in state.waiting:
            waiting.close()
        ready_path.unlink(missing_ok=True)
    return 0


def _watch_handoff_sockets(poller: zmq.Poller, watched: dict[int, WorkerSlot], state: Listener) -> None:
    """Poll every worker's hand-off socket: acknowledgements, or the hang-up of a dead worker.

    ``watched`` maps descriptors (what ``zmq.Poller`` reports for plain sockets) to slots.
    """
    current = {slot.conn.fileno(): slot for slot in state.workers.values() if slot.conn is not None}
    for fd in [fd for fd in watched if fd not in current or watched[fd] is not current[fd]]:
        poller.unregister(fd)
        del watched[fd]
    for fd, slot in current.items():
        if fd not in watched:
            poller.register(fd, zmq.POLLIN)
            watched[fd] = slot


def _drain_router(router: zmq.Socket, state: Listener) -> None:
    while router.poll(0, zmq.POLLIN):
        identity, envelope = bus.receive(router)
        if isinstance(envelope, Exception):
            log.warning("bad message on %s: %s", state.name, envelope)
            continue
        if isinstance(envelope.message, Ping):
            bus.reply(router, identity, Pong(pid=os.getpid()), sender=state.name, corr=envelope.id)
            continue
        if isinstance(envelope.message, StatusRequest):
            bus.reply(router, identity, state.status(), sender=state.name, corr=envelope.id)
            continue
        if isinstance(envelope.message, AdmitAssociation):
            bus.reply(router, identity, state.admit(envelope.message), sender=state.name, corr=envelope.id)
            continue
        state.on_message(envelope.message)


def _accept(tcp: socket.socket, state: Listener, config: NodeConfig) -> None:
    """Accept what is waiting while workers have room (or reject at the limit)."""
    for _ in range(64):
        if not ((state.has_room() and len(state.waiting) < MAX_WAITING) or state.at_limit()):
            return
        try:
            conn, addr = tcp.accept()
        except BlockingIOError:
            return
        conn.setblocking(True)
        peer = (addr[0], addr[1])
        if state.at_limit():
            state.reject_busy(conn, peer)
            continue
        _tune(conn, config)
        state.waiting.append(Waiting(conn=conn, peer=peer, assoc_id=new_id()[:12], since=time.monotonic()))
        state.serve_waiting()


def main(config: NodeConfig, args: list[str]) -> int:
    """Entry point for ``nodectl run listener --listener KEY``."""
    parser = argparse.ArgumentParser(prog="nodectl run listener")
    parser.add_argument("--listener", default=config.listeners[0].key, help="port or name of the [[listeners]] entry")
    opts = parser.parse_args(args)
    matches = [lc for lc in config.listeners if lc.key == opts.listener]
    if not matches:
        raise ConfigError(f"no listener {opts.listener!r} in the configuration")
    stop = threading.Event()
    bus.stop_on_signals(stop)
    return run(config, matches[0], stop)
