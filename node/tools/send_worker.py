"""A ``nodectl send`` worker: one process, its associations one after the other.

Workers are processes, not threads, so that N associations use N cores: pynetdicom does
its PDU encoding and its DUL polling in Python, under one GIL per process.

Each worker is started by ``send.py`` with its list of ``send_plan.Task`` and a queue. It
puts on that queue, and nothing else:

- ``FileResult`` once per file it was given (sent, or failed with a status or a reason),
- the ``logging.LogRecord`` of its log lines, printed by the parent (so they do not tear
  the progress bar),
- ``WorkerFinished`` last.

Datasets are never decoded: pynetdicom's chunked mode (``_config.STORE_SEND_CHUNKED_DATASET``,
pynetdicom >= 2.0) reads each dataset from its file in PDU-sized pieces, with the UIDs and
transfer syntax from the file meta, and needs an accepted context with exactly the file's
transfer syntax; the plan proposes exactly those. The flag is global to pynetdicom, which
is fine here because the worker process is ours alone.

TLS (``--tls-*``): the options arrive as plain data (``PeerOptions.tls``) and each worker
process builds its own ``ssl.SSLContext`` from them; the client socket is wrapped by
pynetdicom (``tls_args``) before it connects.

Retries (``--retry N``): an association that cannot be established (refused connection,
transient rejection, abort, ACSE timeout) is retried up to N times in a row, with
exponential back-off; a permanent rejection is not retried. When an association is lost
while a file is in flight, the remaining files go over a new association; the file in
flight is tried at most N + 1 times in all, then reported failed. Every loop is therefore
bounded by the number of files and N.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import queue
import signal
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from node import identify
from node.tools.send_plan import FileEntry, Task
from node.tools.tls_options import ClientTls, client_context

LOGGER = logging.getLogger("node.tools.send")
MAX_BACKOFF = 10.0  # seconds; a cap so that --retry 10 does not sleep for half an hour
PDU_BACKLOG = 16  # P-DATA PDUs queued ahead of the socket: 16 x max PDU, not the whole file


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerOptions:
    """Where and how to associate; the same for every worker."""

    host: str
    port: int
    calling_aet: str = "STORESCU"
    called_aet: str = "ANY-SCP"
    acse_timeout: float = 30.0
    dimse_timeout: float = 30.0
    network_timeout: float = 30.0
    max_pdu: int = 16382
    retry: int = 0
    retry_delay: float = 1.0
    tls: ClientTls | None = None  # --tls-*: each worker builds its own SSLContext from it


@dataclass(frozen=True, slots=True, kw_only=True)
class FileResult:
    """The outcome of one file. ``network`` marks a failure of the association, not the file."""

    index: int
    sent: bool
    status: int | None = None
    reason: str = ""
    network: bool = False
    bytes: int = 0
    worker: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerFinished:
    """The last message of a worker: every one of its files has a ``FileResult`` by now."""

    worker: int
    associations: int


@dataclass(frozen=True, slots=True)
class _Refusal:
    """Why an association was not established, and whether trying again can help."""

    reason: str
    retryable: bool
    network: bool = True


Report = Callable[[FileResult], None]


def _ae_class() -> type:
    """pynetdicom's AE with TCP_NODELAY on its client sockets.

    A C-STORE is a burst of small PDUs followed by a wait for the response; Nagle's
    algorithm would hold the last small segment back for an ACK that the peer delays.
    """
    from pynetdicom import AE

    class NoDelayAE(AE):  # type: ignore[misc]
        def _create_socket(self, assoc: Any, address: Any, tls_args: Any) -> Any:
            wrapped = super()._create_socket(assoc, address, tls_args)
            if wrapped.socket is not None:
                wrapped.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return wrapped

    return NoDelayAE


def make_ae(peer: PeerOptions, contexts: Sequence[tuple[str, str]]) -> Any:
    """An AE proposing one context per (SOP class, transfer syntax) pair, nothing else."""
    ae = identify(_ae_class()(ae_title=peer.calling_aet))
    ae.acse_timeout = peer.acse_timeout
    ae.dimse_timeout = peer.dimse_timeout
    ae.network_timeout = peer.network_timeout
    ae.connection_timeout = peer.network_timeout
    for abstract, transfer in contexts:
        ae.add_requested_context(abstract, transfer)
    return ae


class BoundedProviderQueue(queue.Queue):  # type: ignore[type-arg]
    """pynetdicom's DUL send queue, bounded so a large dataset is not queued whole.

    pynetdicom reads a chunked dataset from its file as fast as the disk allows and puts
    every P-DATA PDU on an unbounded queue that its DUL thread drains into the socket; for
    a 2 GB multi-frame file that is 2 GB of memory. Bounded, the reading waits for the
    socket. A put never waits for a dead DUL: once it stops, items are dropped (the
    association is gone and the response wait will say so). Each wait is bounded by the
    socket's network timeout, after which the DUL stops.
    """

    def __init__(self, dul: Any, maxsize: int) -> None:
        super().__init__(maxsize)
        self._dul = dul

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        while True:
            try:
                super().put(item, timeout=0.25)
                return
            except queue.Full:
                if self._dul._kill_thread or not self._dul.is_alive():
                    return


PARK_TIMEOUT_S = 5.0


class ReactorCheckpoint(threading.Event):
    """pynetdicom's reactor pause, with a handshake that cannot be fooled.

    Before each C-STORE, ``send_c_store`` clears ``assoc._reactor_checkpoint`` and spins
    until the association's reactor thread sets ``_is_paused``. But the reactor sets that
    flag *before* waiting on the checkpoint and clears it after; if the clear lands just
    after the reactor passed an open checkpoint, the flag is seen true while the reactor
    is about to run ``dimse.get_msg(block=False)``. It then takes the C-STORE-RSP off the
    queue ("Received unexpected C-STORE service message") and ``send_c_store`` waits the
    whole DIMSE timeout. Under load (4 workers on 2 cores) that hit about one file in 600.

    Here ``clear()`` returns only once the reactor is parked on this very clearing: the
    reactor records, under a lock, the generation it parks on before blocking. The wait is
    bounded: it ends when the reactor thread is killed or has exited, and after
    ``PARK_TIMEOUT_S`` in any case (then pynetdicom's own pause applies, as without this guard).
    """

    def __init__(self, reactor: threading.Thread) -> None:
        super().__init__()
        self._reactor = reactor
        self._lock = threading.Condition()
        self._generation = 0
        self._parked_generation = -1
        self.set()

    def wait(self, timeout: float | None = None) -> bool:
        if threading.current_thread() is self._reactor:
            with self._lock:
                if not self.is_set():
                    self._parked_generation = self._generation
                    self._lock.notify_all()
        return super().wait(timeout)

    def clear(self) -> None:
        with self._lock:
            super().clear()
            self._generation += 1
            generation = self._generation
            if threading.current_thread() is self._reactor:
                return
            deadline = time.monotonic() + PARK_TIMEOUT_S
            while self._parked_generation != generation:
                if getattr(self._reactor, "_kill", False) or not self._reactor.is_alive():
                    return
                if time.monotonic() > deadline:
                    # Never hang a send on this guard: fall back to pynetdicom's own pause.
                    LOGGER.warning("reactor did not park within %.0f s; continuing unguarded", PARK_TIMEOUT_S)
                    return
                self._lock.wait(timeout=0.05)


def guard_reactor(assoc: Any) -> None:
    """Swap in a ``ReactorCheckpoint`` on an established, idle association."""
    if assoc._reactor_checkpoint.is_set():
        assoc._reactor_checkpoint = ReactorCheckpoint(assoc)


def bound_send_queue(assoc: Any, backlog: int = PDU_BACKLOG) -> None:
    """Swap in a ``BoundedProviderQueue`` on an established, idle association."""
    dul = assoc.dul
    if dul.to_provider_queue.qsize() == 0:
        dul.to_provider_queue = BoundedProviderQueue(dul, backlog)


def refusal(assoc: Any, tls: bool = False) -> _Refusal:
    """Classify an association that is not established, from what pynetdicom recorded."""
    primitive = getattr(getattr(assoc, "acceptor", None), "primitive", None)
    result = getattr(primitive, "result", None)
    if assoc.is_rejected and result in (0x01, 0x02):
        text = f"association rejected ({primitive.result_str}: {primitive.reason_str})"
        return _Refusal(text, retryable=result == 0x02)
    if result == 0x00:
        # Accepted, but not one context: the peer supports none of these files.
        return _Refusal("no accepted presentation context", retryable=False, network=False)
    if tls:  # pynetdicom's error line names the TLS alert, if there was one
        return _Refusal("association failed: connection refused, timed out, TLS handshake failed or certificate refused",
                        retryable=True)
    if assoc.is_aborted:
        return _Refusal("association aborted", retryable=True)
    return _Refusal("association request failed (connection refused or timed out)", retryable=True)


def backoff(peer: PeerOptions, failures: int) -> float:
    """Seconds to wait before attempt ``failures + 1``: doubling from --retry-delay, capped."""
    return min(MAX_BACKOFF, peer.retry_delay * (2 ** max(0, failures - 1)))


def store_one(assoc: Any, entry: FileEntry, msg_id: int, worker: int) -> FileResult | None:
    """C-STORE one file streamed from its path; ``None`` means the association was lost."""
    try:
        rsp = assoc.send_c_store(entry.path, msg_id)
    except (ValueError, AttributeError, OSError) as exc:
        # No accepted context for this file, or the file changed or vanished since the scan.
        return FileResult(index=entry.index, sent=False, reason=str(exc), worker=worker)
    except RuntimeError:
        return None  # association no longer established
    if "Status" not in rsp:
        # Aborted by the peer, DIMSE timeout, or an invalid response: the association is
        # no longer to be trusted (pynetdicom may not have noticed the abort yet).
        if assoc.is_established:
            assoc.abort()
        return None
    return store_result(entry, int(rsp.Status), worker)


def store_result(entry: FileEntry, status: int, worker: int) -> FileResult:
    """The outcome of a C-STORE-RSP status: Success and Warning count as sent."""
    from pynetdicom.status import STORAGE_SERVICE_CLASS_STATUS, code_to_category

    category, meaning = STORAGE_SERVICE_CLASS_STATUS.get(status, (code_to_category(status), ""))
    ok = category in ("Success", "Warning")
    return FileResult(
        index=entry.index,
        sent=ok,
        status=status,
        reason="" if status == 0 else f"{category}: {meaning}".rstrip(": "),
        bytes=entry.size if ok else 0,
        worker=worker,
    )


def send_over(assoc: Any, pending: list[FileEntry], report: Report, worker: int,
              store: Callable[[Any, FileEntry, int, int], FileResult | None] | None = None) -> tuple[int, list[FileEntry]]:
    """Send ``pending`` in order; return how many got a response and what is left if lost."""
    store = store or store_one
    msg_id = 1
    answered = 0
    for position, entry in enumerate(pending):
        result = store(assoc, entry, msg_id, worker)
        if result is None:
            return answered, pending[position:]
        report(result)
        answered += 1
        msg_id = msg_id % 0xFFFF + 1
    return answered, []


def fail_all(files: Sequence[FileEntry], reason: str, network: bool, report: Report, worker: int) -> None:
    """Report every file in ``files`` failed for the same reason."""
    for entry in files:
        report(FileResult(index=entry.index, sent=False, reason=reason, network=network, worker=worker))


def run_task(task: Task, peer: PeerOptions, report: Report, worker: int, tls_context: Any = None) -> int:
    """Send one task's files, re-associating as --retry allows; return associations opened.

    The association is ``send_lean``'s unless ``NODECTL_SEND_PATH=pynetdicom``.
    """
    lean = os.environ.get("NODECTL_SEND_PATH", "lean") != "pynetdicom"
    pending = list(task.files)
    refused = 0  # consecutive association failures
    strikes: dict[int, int] = {}  # file index -> associations lost while it was in flight
    opened = 0
    while pending:
        assoc, why = _associate(task, peer, tls_context, lean)
        if why is not None:
            refused += 1
            if not why.retryable or refused > peer.retry:
                fail_all(pending, why.reason, why.network, report, worker)
                return opened
            LOGGER.warning(f"{why.reason}; retry {refused}/{peer.retry}")
            time.sleep(backoff(peer, refused))
            continue
        opened += 1
        refused = 0
        if not lean:
            bound_send_queue(assoc)
            guard_reactor(assoc)
        try:
            _answered, pending = send_over(assoc, pending, report, worker, _lean_store if lean else store_one)
        finally:
            if assoc.is_established:
                assoc.release()
        if pending:
            pending = _after_loss(pending, strikes, peer, report, worker)
    return opened


def _associate(task: Task, peer: PeerOptions, tls_context: Any, lean: bool) -> tuple[Any, _Refusal | None]:
    """An established association for ``task``, or why there is none."""
    if lean:
        from node.tools import send_lean

        scu = send_lean.connect(peer, task.contexts, tls_context)
        return (None, scu) if isinstance(scu, _Refusal) else (scu, None)
    ae = make_ae(peer, task.contexts)
    tls_args = (tls_context, None) if tls_context is not None else None
    assoc = ae.associate(peer.host, peer.port, ae_title=peer.called_aet, max_pdu=peer.max_pdu, tls_args=tls_args)
    if not assoc.is_established:
        return None, refusal(assoc, tls=tls_args is not None)
    return assoc, None


def _lean_store(scu: Any, entry: FileEntry, msg_id: int, worker: int) -> FileResult | None:
    return scu.store(entry, msg_id, worker)


def _after_loss(
    pending: list[FileEntry], strikes: dict[int, int], peer: PeerOptions, report: Report, worker: int
) -> list[FileEntry]:
    """Count a strike against the file in flight; give it up after --retry + 1 strikes."""
    head = pending[0]
    strikes[head.index] = strikes.get(head.index, 0) + 1
    if strikes[head.index] > peer.retry:
        report(
            FileResult(
                index=head.index, sent=False, network=True, worker=worker,
                reason="association lost while sending (aborted or no response)",
            )
        )
        pending = pending[1:]
    if pending:
        LOGGER.warning(f"association lost; {len(pending)} file(s) left, re-associating")
        time.sleep(backoff(peer, strikes[head.index]))
    return pending


def _without_traceback(record: logging.LogRecord) -> bool:
    """Drop the exception trace of a pynetdicom record; its message already names the error."""
    if record.name.startswith("pynetdicom"):
        record.exc_info = None
        record.exc_text = None
    return True


def _forward_logging(queue: Any, level: int, pynetdicom_level: int) -> None:
    """Send this process's log records to the parent, which prints them."""
    handler = logging.handlers.QueueHandler(queue)
    if pynetdicom_level > logging.DEBUG:  # pynetdicom logs a TLS failure with its traceback: keep the line
        handler.addFilter(_without_traceback)
    for name, lvl in (("node.tools.send", level), ("pynetdicom", pynetdicom_level)):
        lg = logging.getLogger(name)
        lg.handlers = [handler]
        lg.setLevel(lvl)
        lg.propagate = False


def run_worker(
    worker: int, tasks: list[Task], peer: PeerOptions, queue: Any, level: int, pynetdicom_level: int
) -> None:
    """Process entry point: every task in turn, then ``WorkerFinished``.

    Ctrl-C reaches the whole process group; the parent decides, and terminates us.
    """
    from pynetdicom import _config

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _forward_logging(queue, level, pynetdicom_level)
    _config.STORE_SEND_CHUNKED_DATASET = True
    tls_context = client_context(peer.tls) if peer.tls is not None else None  # checked by the parent already
    opened = 0
    for task in tasks:
        opened += run_task(task, peer, queue.put, worker, tls_context)
    queue.put(WorkerFinished(worker=worker, associations=opened))
