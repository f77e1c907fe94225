"""A listener: owns one listening TCP port and the node's association count for it.

It never parses DICOM, so it stays small and hard to crash. Workers announce on the
listener's ROUTER how many associations they can take (``WorkerReady``, which doubles as a
heartbeat) and report ends (``AssociationEnded``): the load-balancing pattern of the ZeroMQ
guide. The listener accepts a connection only when some worker has room, passes the
descriptor to that worker over the worker's Unix socket (``socket.send_fds``) and closes its
own copy. While no worker has room, connections wait in the kernel's backlog. When the
node's association limit is reached, a new connection gets an A-ASSOCIATE-RJ (transient,
service-provider presentation, local limit exceeded). A worker not heard from for
``WORKER_EXPIRY_S`` is forgotten with its associations: supervisor restarts it and it
announces itself again.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from dataclasses import dataclass, field

import zmq

from actors import _bus
from actors import metrics, reload
from node.config import ListenerConfig, NodeConfig
from node.errors import ConfigError
from node.messages import AssociationEnded, HandOff, ListenerStatus, NodeLoad, Ping, Pong, StatusRequest, WorkerReady, new_id, pack

log = logging.getLogger("actors.listener")

WORKER_EXPIRY_S = 3.5
MAX_REJECTING = 32


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


class Listener:
    """The association bookkeeping of one port (no sockets of its own but the workers')."""

    def __init__(self, config: NodeConfig, lc: ListenerConfig) -> None:
        self.config = config
        self.lc = lc
        self.name = f"listener-{lc.key}"
        self.workers: dict[str, WorkerSlot] = {}
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

    def load_for(self, worker: str) -> NodeLoad:
        """What the other workers run: a worker adds its own to check the node-wide caps."""
        others = [w for w in self.workers.values() if w.name != worker]
        aets: dict[str, int] = {}
        for w in others:
            for aet, n in w.aets.items():
                aets[aet] = aets.get(aet, 0) + n
        return NodeLoad(associations=sum(w.counted for w in others), aets=aets)

    def on_message(self, message: object) -> None:
        if isinstance(message, WorkerReady):
            self._on_ready(message)
        elif isinstance(message, AssociationEnded):
            slot = self.workers.get(message.worker)
            if slot is not None:
                slot.assocs.discard(message.assoc_id)
                slot.last_seen = time.monotonic()

    def _on_ready(self, msg: WorkerReady) -> None:
        slot = self.workers.get(msg.worker)
        if slot is None or (msg.pid != slot.pid and msg.handoff):
            if slot is not None:
                log.warning("%s restarted (pid %d -> %d): forgetting %d association(s)", msg.worker, slot.pid, msg.pid, len(slot.assocs))
                slot.close()
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
        """Forget workers that stopped sending heartbeats (dead or hung)."""
        now = time.monotonic()
        for name, slot in list(self.workers.items()):
            if now - slot.last_seen > WORKER_EXPIRY_S:
                log.warning("%s silent for %.1f s: forgetting it and %d association(s)", name, now - slot.last_seen, len(slot.assocs))
                slot.close()
                del self.workers[name]

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

    @metrics.handed_off
    def hand_off(self, conn: socket.socket, peer: tuple[str, int]) -> bool:
        """Pass an accepted socket to the worker with most room; False if none took it."""
        assoc_id = new_id()[:12]
        message = HandOff(assoc_id=assoc_id, listener=self.lc.key, peer_host=peer[0], peer_port=peer[1], accepted_at=time.time())
        payload = b"".join(len(f).to_bytes(4, "big") + bytes(f) for f in pack(message, sender=self.name))
        for slot in sorted(self.workers.values(), key=lambda w: w.room, reverse=True):
            if slot.room <= 0 or not slot.handoff:
                continue
            try:
                if slot.conn is None:
                    slot.conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    slot.conn.settimeout(2.0)
                    slot.conn.connect(slot.handoff)
                socket.send_fds(slot.conn, [payload], [conn.fileno()])
            except OSError as exc:
                log.warning("hand-off to %s failed (%s): trying another worker", slot.name, exc)
                slot.close()
                slot.capacity = 0
                continue
            slot.handed += 1
            slot.assocs.add(assoc_id)
            log.info("assoc=%s peer=%s:%d -> %s (active %d)", assoc_id, peer[0], peer[1], slot.name, self.active)
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
        from pynetdicom.pdu import A_ASSOCIATE_RJ

        pdu = A_ASSOCIATE_RJ()
        pdu.result, pdu.source, pdu.reason_diagnostic = 0x02, 0x03, 0x02
        try:
            conn.settimeout(2.0)
            try:
                conn.recv(65536)  # the A-ASSOCIATE-RQ; its content does not matter
            except OSError:
                pass
            conn.sendall(pdu.encode())
            time.sleep(self.config.network.soclose_delay_ms / 1000)
        except OSError:
            pass
        finally:
            conn.close()
            with self._lock:
                self.rejecting -= 1


def bind(config: NodeConfig, lc: ListenerConfig) -> socket.socket:
    """The listening socket, with the TCP options the config asks for on accepted sockets."""
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


def _tune(conn: socket.socket, config: NodeConfig) -> None:
    """TCP_NODELAY on unless --tcp-delay (Nagle costs ~40 ms per small C-STORE round trip)."""
    net = config.network
    if net.tcp_nodelay:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if net.send_buffer:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, net.send_buffer)
    if net.receive_buffer:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, net.receive_buffer)


def _write_ready(path: str, host: str, port: int) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        fh.write(f"{host or '0.0.0.0'} {port}\n")
    os.replace(tmp, path)


def run(config: NodeConfig, lc: ListenerConfig, stop: threading.Event, ctx: zmq.Context | None = None) -> int:
    """Accept and hand off connections until ``stop``."""
    ctx = ctx or zmq.Context.instance()
    state = Listener(config, lc)
    tcp = bind(config, lc)
    port = tcp.getsockname()[1]
    state.port = port
    router = _bus.router(ctx, config.endpoint(state.name))
    ready_path = str(config.ready_path(lc))
    announced = False
    poller = zmq.Poller()
    poller.register(router, zmq.POLLIN)
    tcp_registered = False
    hup = reload.on_sighup()
    try:
        while not stop.is_set():
            if hup.is_set():  # SIGHUP: [network] limits apply to the next connection
                state.config = config = reload.reread(config, hup)
            want_tcp = state.has_room() or state.at_limit()
            if want_tcp != tcp_registered:
                (poller.register(tcp, zmq.POLLIN) if want_tcp else poller.unregister(tcp))
                tcp_registered = want_tcp
            for sock, _ in poller.poll(200):
                if sock is router:
                    _drain_router(router, state)
                else:
                    _accept(tcp, state, config)
            state.expire()
            if not announced and state.workers:
                _write_ready(ready_path, lc.host, port)
                log.info("Start TCP Listener on %s:%d", lc.host or "0.0.0.0", port)
                announced = True
    finally:
        tcp.close()
        router.close(0)
        for slot in state.workers.values():
            slot.close()
        try:
            os.unlink(ready_path)
        except FileNotFoundError:
            pass
    return 0


def _drain_router(router: zmq.Socket, state: Listener) -> None:
    while router.poll(0, zmq.POLLIN):
        identity, envelope = _bus.receive(router)
        if isinstance(envelope, Exception):
            log.warning("bad message on %s: %s", state.name, envelope)
            continue
        if isinstance(envelope.message, Ping):
            _bus.reply(router, identity, Pong(pid=os.getpid()), sender=state.name, corr=envelope.id)
            continue
        if isinstance(envelope.message, StatusRequest):
            _bus.reply(router, identity, state.status(), sender=state.name, corr=envelope.id)
            continue
        state.on_message(envelope.message)
        if isinstance(envelope.message, WorkerReady):
            _send_load(router, identity, state.load_for(envelope.message.worker), state.name)


def _send_load(router: zmq.Socket, identity: list[bytes], load: NodeLoad, sender: str) -> None:
    """Never block on a worker that stopped reading: its next heartbeat brings a fresh one."""
    try:
        router.send_multipart([*identity, *pack(load, sender=sender)], flags=zmq.NOBLOCK, copy=False)
    except zmq.error.ZMQError as exc:
        if exc.errno not in (zmq.EHOSTUNREACH, zmq.EAGAIN):
            raise


def _accept(tcp: socket.socket, state: Listener, config: NodeConfig) -> None:
    """Accept what is waiting while workers have room (or reject at the limit)."""
    for _ in range(64):
        if not (state.has_room() or state.at_limit()):
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
        if not state.hand_off(conn, peer):
            log.error("no worker took %s:%d: closing it", *peer)
        conn.close()


def main(config: NodeConfig, args: list[str]) -> int:
    """Entry point for ``nodectl run listener --listener KEY``."""
    import argparse

    parser = argparse.ArgumentParser(prog="nodectl run listener")
    parser.add_argument("--listener", default=config.listeners[0].key, help="port or name of the [[listeners]] entry")
    opts = parser.parse_args(args)
    matches = [lc for lc in config.listeners if lc.key == opts.listener]
    if not matches:
        raise ConfigError(f"no listener {opts.listener!r} in the configuration")
    stop = threading.Event()
    _bus.stop_on_signals(stop)
    return run(config, matches[0], stop)
