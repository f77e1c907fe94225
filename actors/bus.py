"""What every actor shares: ZeroMQ sockets set up one way, requests with deadlines, logging,
and a stop flag set by SIGTERM/SIGINT.

Sockets: linger 0 so a dying process never hangs on unsent messages; ROUTERs are
``ROUTER_MANDATORY`` so a reply to a peer that went away is an error, not a silent drop.
An actor runs either as its own process (``nodectl run <actor>``) or as a thread of one
process with ``inproc://`` endpoints; both take a ``threading.Event`` to stop on.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

import zmq

from node.errors import MessageError
from node.messages import Envelope, new_id, pack, unpack

log = logging.getLogger(__name__)


def router(ctx: zmq.Context, endpoint: str) -> zmq.Socket:
    """A bound ROUTER that refuses to drop replies silently."""
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    _prepare_ipc(endpoint)
    sock.bind(endpoint)
    return sock


def dealer(ctx: zmq.Context, endpoint: str, identity: str | None = None) -> zmq.Socket:
    """A connected DEALER; ZeroMQ reconnects it by itself when the peer restarts."""
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RECONNECT_IVL, 100)
    sock.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)
    if identity:
        sock.setsockopt(zmq.IDENTITY, identity.encode())
    sock.connect(endpoint)
    return sock


def _prepare_ipc(endpoint: str) -> None:
    """Remove a stale ipc socket file left by a crashed predecessor."""
    if endpoint.startswith("ipc://"):
        path = endpoint.removeprefix("ipc://")
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def request(sock: zmq.Socket, message: Any, *, sender: str, timeout: float, data: Sequence[bytes | memoryview] = ()) -> Envelope:
    """Send a request on a DEALER and wait for the reply that carries its id.

    Replies to earlier requests that timed out are discarded, so a late answer can never be
    taken for the answer to this request. Raises TimeoutError after ``timeout`` seconds.
    """
    msg_id = new_id()
    sock.send_multipart(pack(message, sender=sender, msg_id=msg_id, data=data), copy=False)
    deadline = time.monotonic() + timeout
    try:
        while True:
            frames = _receive_until(sock, deadline)
            if frames is None:
                raise TimeoutError(f"no reply to {message.kind} within {timeout} s")
            try:
                envelope = unpack([f.buffer for f in frames])
            except MessageError as exc:
                log.warning("discarding undecodable reply: %s", exc)
                continue
            if envelope.corr == msg_id:
                return envelope
    finally:
        # The socket's other readers block as before. setsockopt, not ``sock.rcvtimeo =``:
        # pyzmq's attribute setter cost 2.7 us against 0.6 (twice per C-STORE in a worker).
        sock.setsockopt(zmq.RCVTIMEO, -1)


def _receive_until(sock: zmq.Socket, deadline: float) -> list[zmq.Frame] | None:
    """The next message, or None at the deadline: a blocking receive under a receive
    timeout, not a poll then a receive (``Socket.poll`` builds a Poller and makes two or
    three more system calls per request, once per C-STORE in a worker)."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        return None
    sock.setsockopt(zmq.RCVTIMEO, int(remaining * 1000) + 1)
    try:
        return sock.recv_multipart(copy=False)
    except zmq.Again:
        return None


def receive(sock: zmq.Socket) -> tuple[list[bytes], Envelope | MessageError]:
    """Receive on a ROUTER: identity frames and the envelope, or the decoding error."""
    return _routed(sock.recv_multipart(copy=False))


def receive_queued(sock: zmq.Socket) -> tuple[list[bytes], Envelope | MessageError] | None:
    """What ``receive`` gives for a message already queued on a ROUTER, else None at once
    (a non-blocking receive: ``Socket.poll(0)`` before each made a Poller and a poll(2))."""
    # ZMQ_EVENTS first: the zmq.Again that ended every drain (once per group in the writer)
    # cost an exception object and its message, 3.0 us against 1.8.
    if not sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
        return None
    try:
        return _routed(sock.recv_multipart(zmq.NOBLOCK, copy=False))
    except zmq.Again:
        return None


def _routed(frames: list[zmq.Frame]) -> tuple[list[bytes], Envelope | MessageError]:
    identity = [frames[0].bytes]
    try:
        return identity, unpack([f.buffer for f in frames[1:]])
    except MessageError as exc:
        return identity, exc


def reply(sock: zmq.Socket, identity: list[bytes], message: Any, *, sender: str, corr: str) -> bool:
    """Answer through a ROUTER; False when the requester is gone (it will time out)."""
    try:
        sock.send_multipart([*identity, *pack(message, sender=sender, corr=corr)], copy=False)
        return True
    except zmq.error.ZMQError as exc:
        if exc.errno == zmq.EHOSTUNREACH:
            return False
        raise


def stop_on_signals(stop: threading.Event) -> None:
    """SIGTERM and SIGINT set ``stop`` (only in the main thread of a process)."""

    def handler(signum: int, _frame: object) -> None:
        log.info("signal %s: stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


_wakeup: list[int] = []


def signal_wakeup_fd() -> int | None:
    """A descriptor that becomes readable when a signal arrives (main thread only; else None).

    A loop that polls with a timeout registers it, so a stop asked by SIGTERM is seen at once
    instead of at the end of the timeout (``drain_wakeup`` empties it).
    """
    if threading.current_thread() is not threading.main_thread():
        return None
    if not _wakeup:
        read_end, write_end = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
        _wakeup.append(read_end)
    return _wakeup[0]


def drain_wakeup(fd: int) -> None:
    try:
        while os.read(fd, 512):
            pass
    except BlockingIOError:
        pass


_FIELDS = re.compile(r"\b(assoc|sop|calling|called|peer|status)=([^\s,]+?):?(?=[\s,]|$)")


class _JsonFormatter(logging.Formatter):
    """One JSON object a line, for log shippers.

    The ``key=value`` pairs our lines carry (assoc, sop, calling, called, peer, status) become
    fields too, and a line logged by an association's thread (pynetdicom's included) gets its
    ``assoc`` from the thread name: one ``assoc`` value follows an association through the
    listener, the worker and the writer.
    """

    def __init__(self, actor: str = "") -> None:
        super().__init__()
        self.actor = actor

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        entry: dict[str, object] = {
            "time": self.formatTime(record),
            "level": record.levelname.lower(),
            "actor": getattr(record, "actor", "") or self.actor,
            "pid": record.process,
            "logger": record.name,
            "message": message,
        }
        for key, value in _FIELDS.findall(message):
            entry.setdefault(key, value)
        if "assoc" not in entry and record.threadName.startswith("assoc-"):
            entry["assoc"] = record.threadName.removeprefix("assoc-")
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def setup_logging(actor: str, level: str = "info", fmt: str = "text") -> None:
    """Configure the root logger of an actor process (entry points only)."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(_JsonFormatter(actor))
    elif fmt == "letter":  # pynetdicom's and DCMTK's apps: "I: message"
        handler.setFormatter(logging.Formatter("%(levelname).1s: %(message)s"))
    else:
        handler.setFormatter(logging.Formatter(f"%(asctime)s %(levelname).1s {actor}[%(process)d] %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    if fmt == "letter":
        # The face of an app (nodectl echoscp): its log is pynetdicom's association log, at the
        # level asked for, as the app prints it; our actors' own lines only with debug.
        logging.getLogger("pynetdicom").setLevel(root.level)
        for name in ("actors", "node"):
            logging.getLogger(name).setLevel(max(logging.WARNING, root.level) if root.level > logging.DEBUG else root.level)
    else:
        # pynetdicom logs every PDU at INFO/DEBUG; keep it quieter than our own lines.
        logging.getLogger("pynetdicom").setLevel(max(logging.WARNING, root.level))
    if root.level > logging.DEBUG:
        logging.getLogger("pynetdicom").addFilter(_without_traceback)


def _without_traceback(record: logging.LogRecord) -> bool:
    """pynetdicom logs a traceback for every undecodable PDU a peer sends: keep the line, drop
    the traceback (above DEBUG), so a hostile peer cannot fill the disk with stack traces."""
    record.exc_info = None
    record.exc_text = None
    return True
