"""``nodectl send -j N`` in one thread: the N workers' steps driven by one selector.

Why not N threads: every socket call of a worker thread hands the GIL to another one (a
futex wake and a context switch each). Measured on 5,000 x 5 KiB into DCMTK storescp --fork
at -j 4 (strace -c -f, 500 files: 21 futex calls a file; CPU of the whole sender, load ~1.5):
four threads 98-109 us a file, a prototype of this loop 80-85. One thread that resumes
whichever association has bytes to read does the same work without the hand-offs.

The steps are the workers' own (``send_worker.worker_steps``): connecting, C-STOREs, the
asynchronous operations window, retries, strikes and failures are the code ``-j 1`` runs;
only the waiting differs. A worker's step yields the socket it reads next (``Readable``:
resumed when the socket is readable, or given ``Lost`` at its timeout: the ACSE timeout for
the A-ASSOCIATE and A-RELEASE answers, the DIMSE timeout for C-STORE responses) or seconds of
back-off (resumed when they are over). The sockets stay blocking: a step resumed on a
readable socket does not wait in its read, and a C-STORE's write blocks only while the
kernel's send buffer is full, which the peer empties. The TCP connect is a blocking wait
(within the network timeout).

Not for TLS (an SSL socket can hold decrypted bytes that no selector sees), ``--rate`` /
``--max-mbps`` (a worker's pacer sleeps in the thread that calls it) or datasets over
``MAX_DATASET``: those run in worker threads (``send.start_threads``). A small C-STORE is
written at once into the socket's send buffer (16 KiB to start with on Linux, tcp_wmem); a
large one's write waits while the peer reads, and in the one thread that wait would hold up
every other association (all of them, for up to the network timeout, behind a peer that stops
reading), where a worker thread holds up only its own. (With ``--async N`` up to N small
C-STOREs can await their peer at once; a peer that grants a window reads on while it works.)
"""

from __future__ import annotations

import logging
import math
import selectors
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from node.tools.send_association import Lost, PeerOptions, Readable, Steps, Wait
from node.tools.send_plan import FileEntry, Task
from node.tools.send_results import FileResult, WorkerFinished
from node.tools.send_worker import worker_steps

LOGGER = logging.getLogger("node.tools.send")
MAX_DATASET = 16 << 10  # bytes: larger datasets are sent by worker threads (module docstring)

Report = Callable[[FileResult], None]


class Idle(Protocol):
    """Background work done in slices while every association waits for its peer."""

    def waiting(self) -> bool:
        """Whether a slice of work waits (cheap: asked before every wait for the sockets)."""

    def step(self) -> None:
        """Do one slice (short: an answer that arrives meanwhile waits for its end)."""


def can_multiplex(peer: PeerOptions, entries: Iterable[FileEntry]) -> bool:
    """Whether one thread can drive the associations for ``entries``: no TLS, no pacing, no
    dataset over ``MAX_DATASET`` (module docstring)."""
    if peer.tls is not None or peer.files_per_s or peer.bytes_per_s:
        return False
    return all(entry.size <= MAX_DATASET for entry in entries)


@dataclass(slots=True)
class Lane:
    """One worker on the selector: its steps, the socket it waits on, when it is due."""

    worker: int
    steps: Steps[WorkerFinished]
    waiting: Readable | None = None  # the wait whose socket is registered
    due: float = math.inf  # the end of a back-off, or the DIMSE timeout of a read
    done: bool = False


def run_lanes(work: dict[int, list[Task]], peer: PeerOptions, report: Report, idle: Idle | None = None) -> list[WorkerFinished]:
    """Run every worker's tasks at once in this thread; their last words, in the order they
    finished. On any exception (Ctrl-C too) every association still open is aborted.

    ``idle``: work to do while every association waits for its peer (a job's journal writes
    its rows then, ``SendJournal.write_some``), in slices, each only once no socket is
    readable: this thread waits for the peers' answers anyway for a part of every file (at
    -j 4 into DCMTK storescp, some 20% of the time), and work done then costs the job nothing."""
    selector = selectors.DefaultSelector()
    lanes = [Lane(worker, worker_steps(worker, tasks, peer, report)) for worker, tasks in work.items() if tasks]
    finished: list[WorkerFinished] = []
    try:
        for lane in lanes:
            _resume(lane, selector, finished, None)
        while live := [lane for lane in lanes if not lane.done]:
            soonest = min(lane.due for lane in live)
            timeout = None if soonest == math.inf else max(0.0, soonest - time.monotonic())
            for key, _events in _ready(selector, timeout, idle):
                _resume(key.data, selector, finished, None)
            now = time.monotonic()
            for lane in live:
                if not lane.done and lane.due <= now:
                    _resume(lane, selector, finished, _timeout(lane))
    except BaseException:
        for lane in lanes:
            _close(lane)
        raise
    finally:
        selector.close()
    return finished


def _ready(selector: selectors.BaseSelector, timeout: float | None, idle: Idle | None) -> list[tuple[selectors.SelectorKey, int]]:
    """The readable sockets; before blocking for them, slices of ``idle`` while none is."""
    if idle is not None and timeout != 0:
        while idle.waiting():
            ready = selector.select(0)
            if ready:
                return ready
            idle.step()
    return selector.select(timeout)


def _close(lane: Lane) -> None:
    """End a lane's steps where they wait (GeneratorExit there: task_steps aborts its association);
    a failure to do so is logged, so that every other lane is still closed."""
    try:
        lane.steps.close()
    except Exception:  # noqa: BLE001 - the exception being raised out of run_lanes matters more
        LOGGER.exception(f"worker {lane.worker} did not end cleanly")


def _timeout(lane: Lane) -> Lost | None:
    """What a due lane is resumed with: nothing after a back-off, ``Lost`` after a read's wait."""
    if lane.waiting is None:
        return None
    return Lost(f"no answer within {lane.waiting.timeout:g} s")


def _resume(lane: Lane, selector: selectors.BaseSelector, finished: list[WorkerFinished], error: Lost | None) -> None:
    """Run ``lane`` up to its next wait, and register that wait (or its end)."""
    try:
        wait = lane.steps.send(None) if error is None else lane.steps.throw(error)
    except StopIteration as stop:
        _ended(lane, selector)
        finished.append(stop.value)
        return
    except Exception:  # a bug: reported; its files are counted as unreported by the caller
        LOGGER.exception(f"worker {lane.worker} failed")
        _ended(lane, selector)
        finished.append(WorkerFinished(worker=lane.worker, associations=0))
        return
    _wait(lane, selector, wait)


def _wait(lane: Lane, selector: selectors.BaseSelector, wait: Wait) -> None:
    """Register the socket the lane reads next, or its back-off; a socket stays registered
    from one file to the next (no syscall per file)."""
    if isinstance(wait, Readable):
        if lane.waiting is None or lane.waiting.sock is not wait.sock:
            _forget(lane, selector)
            selector.register(wait.sock, selectors.EVENT_READ, lane)
        lane.waiting = wait
        lane.due = time.monotonic() + wait.timeout if wait.timeout else math.inf
        return
    _forget(lane, selector)
    lane.due = time.monotonic() + wait


def _ended(lane: Lane, selector: selectors.BaseSelector) -> None:
    _forget(lane, selector)
    lane.done = True
    lane.due = math.inf


def _forget(lane: Lane, selector: selectors.BaseSelector) -> None:
    """Unregister the lane's old socket (closed by now, most likely: found by identity, and its
    descriptor number free for the next connection)."""
    if lane.waiting is None:
        return
    sock: socket.socket = lane.waiting.sock
    try:
        selector.unregister(sock)
    except (KeyError, ValueError):
        pass
    lane.waiting = None
