"""A ``nodectl send`` worker: its tasks' associations one after the other, with ``--retry``.

With ``-j 1`` the worker runs in the main thread of ``nodectl send``; with ``-j N`` each
worker is a thread of the same process (``send.py`` starts them once everything is
imported and planned), so a worker costs no interpreter start-up and no import: the spawned
interpreters used before took longer to start than a 5,000-file job took to send. Threads
were measured against forked processes here and took less CPU and less time (the socket
calls release the GIL; nothing is pickled between workers).

A worker reports through one callable, ``report``: a ``FileResult`` once per file it was
given (sent, or failed with a status or a reason); ``run_tasks`` returns ``WorkerFinished``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from node.tools.send_association import Interrupt, PeerOptions, Refusal, Steps, connect, drive
from node.tools.send_plan import FileEntry, Task
from node.tools.send_results import FileResult, WorkerFinished
from node.tools.tls_options import client_context

LOGGER = logging.getLogger("node.tools.send")
MAX_BACKOFF = 10.0  # seconds; a cap so that --retry 10 does not sleep for half an hour

Report = Callable[[FileResult], None]


def backoff(peer: PeerOptions, failures: int) -> float:
    """Seconds to wait before attempt ``failures + 1``: doubling from --retry-delay, capped."""
    return min(MAX_BACKOFF, peer.retry_delay * (2 ** max(0, failures - 1)))


def fail_all(files: Sequence[FileEntry], reason: str, network: bool, report: Report, worker: int) -> None:
    """Report every file in ``files`` failed for the same reason."""
    for entry in files:
        report(FileResult(index=entry.index, sent=False, reason=reason, network=network, worker=worker))


def run_task(task: Task, peer: PeerOptions, report: Report, worker: int, tls_context: Any = None,
             interrupt: Interrupt | None = None) -> int:
    """Send one task's files, re-associating as --retry allows; return associations opened."""
    return drive(task_steps(task, peer, report, worker, tls_context, interrupt))


def task_steps(task: Task, peer: PeerOptions, report: Report, worker: int, tls_context: Any = None,
               interrupt: Interrupt | None = None) -> Steps[int]:
    """``run_task`` as steps (``send_association.store_steps``): its reads and back-offs are
    yielded, so one thread can run several workers' tasks at once (``send_multiplex``)."""
    pending = list(task.files)
    refused = 0  # consecutive association failures
    strikes: dict[int, int] = {}  # file index -> associations lost while it was in flight
    opened = 0
    while pending:
        scu = yield from connect(peer, task.contexts, tls_context, interrupt)
        if isinstance(scu, Refusal):
            refused += 1
            if not scu.retryable or refused > peer.retry:
                fail_all(pending, scu.reason, scu.network, report, worker)
                return opened
            LOGGER.warning(f"{scu.reason}; retry {refused}/{peer.retry}")
            yield backoff(peer, refused)
            continue
        opened += 1
        refused = 0
        try:
            pending = yield from scu.store_steps(pending, report, worker)
        except BaseException:  # Ctrl-C (in the main thread, or Interrupted in a worker thread), a bug, or the steps
            scu.abort()        # closed: the peer hears an A-ABORT, not a release that would wait for the answer to
            raise              # a C-STORE maybe cut in half
        if scu.is_established:
            yield from scu.release_steps()
        if pending:
            pending, delay = _after_loss(pending, strikes, peer, report, worker, scu.lost_because)
            if pending:
                yield delay
    return opened


def _after_loss(
    pending: list[FileEntry], strikes: dict[int, int], peer: PeerOptions, report: Report, worker: int, why: str
) -> tuple[list[FileEntry], float]:
    """Count a strike against the oldest file in flight; give it up after --retry + 1 strikes.
    The files left, and the back-off before re-associating for them."""
    head = pending[0]
    strikes[head.index] = strikes.get(head.index, 0) + 1
    if strikes[head.index] > peer.retry:
        report(
            FileResult(
                index=head.index, sent=False, network=True, worker=worker,
                reason=f"association lost while sending ({why or 'aborted or no response'})",
            )
        )
        pending = pending[1:]
    if pending:
        LOGGER.warning(f"association with {peer.host}:{peer.port} lost ({why}); {len(pending)} file(s) left, re-associating")
    return pending, backoff(peer, strikes[head.index])


def run_tasks(worker: int, tasks: list[Task], peer: PeerOptions, report: Report,
              interrupt: Interrupt | None = None) -> WorkerFinished:
    """Every task of one worker in turn, in the thread that calls it; ``interrupt`` (worker
    threads) ends it with ``Interrupted`` after aborting the association."""
    return drive(worker_steps(worker, tasks, peer, report, interrupt))


def worker_steps(worker: int, tasks: list[Task], peer: PeerOptions, report: Report,
                 interrupt: Interrupt | None = None) -> Steps[WorkerFinished]:
    """``run_tasks`` as steps, for ``send_multiplex`` to drive several workers in one thread."""
    tls_context = client_context(peer.tls) if peer.tls is not None else None  # send.py checked it already
    opened = 0
    for task in tasks:
        opened += yield from task_steps(task, peer, report, worker, tls_context, interrupt)
    return WorkerFinished(worker=worker, associations=opened)
