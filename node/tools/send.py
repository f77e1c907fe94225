"""``nodectl send``: C-STORE many files over parallel associations, for scripted jobs.

CLI form::

    nodectl send [options] addr port path [path ...]
    nodectl send -j 4 --retry 2 --summary-json out.json 127.0.0.1 11112 /data/study

Compared with ``nodectl storescu`` (which keeps pynetdicom's exit 0 whatever happens):

- ``-j N`` associations are driven by the main thread at once (``send_multiplex.py``), or
  with TLS, pacing or datasets over 16 KiB by N threads of this process (``send_worker.py``):
  no interpreter to start per worker; ``-j 1`` runs in the main thread;
- each file's preamble and file meta are read to plan (``send_plan.py``); datasets are
  streamed from their files onto the core's association engine (``send_association.py``),
  never decoded, so memory stays flat;
- ``--async N``: up to N C-STOREs in flight on each association, if the peer agrees;
- contexts are the files' own (SOP class, transfer syntax) pairs; more than 128 pairs
  are sent over further associations;
- non-DICOM files are skipped and counted; peer failure statuses are reported per file
  and change the exit status; ``--retry`` re-associates after refusals and aborts;
- a progress display and ``--summary-json`` (``send_report.py``);
- TLS with ``--tls-ca/--tls-cert/--tls-key/--tls-min-version/--tls-ciphers``, named like
  ``nodectl serve``'s ``--tls-*`` (``tls_options.py``), one SSLContext per worker;
- a job's options (``send_job.py``, ``node/send_journal.py``, ``node/rate_limit.py``,
  ``send_commit.py``): ``--journal`` (resume), ``--rate``/``--max-mbps``,
  ``--retry-transient`` (0xA7xx sent again on a later pass), ``--commit`` (Storage
  Commitment), a table at the end and ``nodectl send --report FILE.journal``; the file list
  is streamed and sent in chunks, so memory does not grow with the job.

Exit status (also in ``--help`` and docs/cli/send.md):
  0 every DICOM file was stored (Success or Warning status); skipped files allowed
  1 at least one file failed: failure status from the peer, no accepted context for it
  2 command line error (also an unreadable --tls-* file or a bad cipher string)
  3 association failure (also a failed TLS handshake): refused, rejected or aborted, retries exhausted; files unsent
  4 a path on the command line does not exist (the files that do exist were sent)
  5 --commit: an acknowledged instance is not committed
  130 interrupted (Ctrl-C); the summary lists what had been answered
When several apply, the first in this order wins: 3, 1, 5, 4.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from node import ul
from node.errors import ConfigError
from node.rate_limit import parse_rate
from node.send_journal import JobTotals, JournalError, SendJournal
from node.tools.send_association import Interrupt, Interrupted, Lost, PeerOptions, associate_request
from node.tools.send_job import JobRecorder, chunks, is_transient, resume
from node.tools.send_job import collect_files as stream_files
from node.tools.send_multiplex import can_multiplex, run_lanes
from node.tools.send_plan import FileEntry, Scan, Task, plan, scan, tasks_for_worker
from node.tools.send_report import (
    Progress,
    ProgressLogHandler,
    Tally,
    add_totals,
    job_table,
    make_progress,
    summary,
    tally_totals,
    SummaryWriter,
)
from node.tools.send_results import FileResult, WorkerFinished
from node.tools.send_worker import backoff, run_tasks
from node.tools.scu_options import (
    LOG_LEVELS,
    ToolParser,
    add_logging_options,
    add_network_options,
)
from node.tools.tls_options import ClientTls, add_client_arguments, client_tls

__version__ = "0.1.0"

EXIT_OK = 0
EXIT_STORE_FAILED = 1
EXIT_USAGE = 2
EXIT_ASSOCIATION = 3
EXIT_MISSING_PATH = 4
EXIT_NOT_COMMITTED = 5
EXIT_INTERRUPTED = 130
MAX_ASSOCIATIONS = 64
MAX_ASYNC = 256  # C-STOREs in flight per association: enough to hide any loopback or LAN round trip
CHUNK_FILES = 20_000  # files scanned, planned and sent at a time: a job's memory grows with this, not with the job
COMMIT_BATCH = 10_000  # instances per N-ACTION when --commit-batch does not say
BATCH_FILES = 64
BATCH_SECONDS = 0.1  # the progress display (and the journal) move at least this often
JOIN_GRACE = 10.0  # seconds a worker thread that has said its last word gets to end
STOP_GRACE = 0.5  # seconds, on Ctrl-C, for worker threads to hand over their last results

EXIT_HELP = """\
exit status:
  0    every DICOM file was stored (Success or Warning); skipped non-DICOM files allowed
  1    at least one file failed (failure status from the peer, no accepted context)
  2    command line error; --tls-* files unreadable or a bad cipher string
  3    association refused, rejected or aborted (TLS handshake failed too) and --retry
       exhausted; files unsent
  4    a path named on the command line does not exist (the others were sent)
  5    --commit: an acknowledged instance is not committed (failed, no report in time,
       or the peer does not do Storage Commitment)
  130  interrupted
  When several apply: 3 before 1 before 5 before 4.

  nodectl send --report FILE.journal   prints a job's table again from its journal"""

LOGGER = logging.getLogger("node.tools.send")
IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"


def _positive(text: str) -> int:
    """argparse type: an integer from 1 to MAX_ASSOCIATIONS."""
    value = int(text)
    if not 1 <= value <= MAX_ASSOCIATIONS:
        raise argparse.ArgumentTypeError(f"must be between 1 and {MAX_ASSOCIATIONS}")
    return value


def _async_ops(text: str) -> int:
    """argparse type: an integer from 1 to MAX_ASYNC."""
    value = int(text)
    if not 1 <= value <= MAX_ASYNC:
        raise argparse.ArgumentTypeError(f"must be between 1 and {MAX_ASYNC}")
    return value


def _checked(convert: Callable[[str], Any], ok: Callable[[Any], bool], message: str) -> Callable[[str], Any]:
    """An argparse type: ``convert`` the text, and refuse a value that is not ``ok``."""
    def parse(text: str) -> Any:
        value = convert(text)
        if not ok(value):
            raise argparse.ArgumentTypeError(message)
        return value
    return parse


_non_negative = _checked(int, lambda value: value >= 0, "must be 0 or more")
_positive_float = _checked(float, lambda value: value > 0, "must be more than 0")


def _rate(text: str) -> float:
    """argparse type: --rate N/s (or /min, /h) as files per second."""
    try:
        return parse_rate(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    """storescu's spellings for what both tools share, plus the options of bulk sending."""
    parser = ToolParser(
        prog="nodectl send",
        usage="nodectl send [options] addr port path [path ...]",
        description=(
            "Send DICOM files with C-STORE over one or more parallel associations. "
            "Each file is streamed from disk with its own SOP class and transfer syntax; "
            "files that are not DICOM are skipped and counted."
        ),
        epilog=EXIT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    req = parser.add_argument_group("Parameters")
    req.add_argument("addr", help="TCP/IP address or hostname of DICOM peer")
    req.add_argument("port", type=int, help="TCP/IP port number of peer")
    req.add_argument("path", nargs="+", help="DICOM file or directory to be transmitted")
    add_logging_options(parser)
    inp = parser.add_argument_group("Input Options")
    inp.add_argument("-r", "--recurse", action="store_true", help="recursively search the given directories")
    add_network_options(parser)
    bulk = parser.add_argument_group("Sending Options")
    bulk.add_argument(
        "-j", "--associations", type=_positive, default=1, metavar="N",
        help=f"parallel associations, one thread each (1..{MAX_ASSOCIATIONS}, default: 1)",
    )
    bulk.add_argument(
        "--async", dest="async_ops", type=_async_ops, default=1, metavar="N",
        help=f"C-STOREs in flight at once on each association, if the peer negotiates the asynchronous "
             f"operations window; one at a time if it does not (1..{MAX_ASYNC}, default: 1)",
    )
    bulk.add_argument(
        "--retry", type=_non_negative, default=0, metavar="N",
        help="retry a refused, transiently rejected or aborted association N times (default: 0)",
    )
    bulk.add_argument(
        "--retry-delay", type=float, default=1.0, metavar="[s]econds",
        help="first wait before a retry, doubled each time, at most 10 s (default: 1)",
    )
    add_client_arguments(parser.add_argument_group(
        "TLS Options", "TLS on every association (any --tls-* option turns it on); names as in nodectl serve"))
    job = parser.add_argument_group(
        "Job Options", "for long jobs: resume, pace, retry what the peer could not take yet (docs/cli/send.md)")
    job.add_argument(
        "--journal", metavar="FILE",
        help="SQLite journal of every file's outcome; running the same command again sends only what the "
             "peer has not acknowledged, and files changed since (size, mtime)",
    )
    job.add_argument(
        "--rate", type=_rate, default=0.0, metavar="N/s",
        help="at most N files per second over all associations (also N/min, N/h)",
    )
    job.add_argument(
        "--max-mbps", type=_positive_float, default=0.0, metavar="MB/s",
        help="at most this many megabytes (10^6 bytes) of datasets per second over all associations",
    )
    job.add_argument(
        "--retry-transient", type=_non_negative, default=None, metavar="N",
        help="send a file answered 0xA7xx (out of resources) again up to N times, on a later association "
             "(default: --retry's value); other failure statuses are final",
    )
    job.add_argument(
        "--commit", action="store_true",
        help="after the stores, ask the peer for Storage Commitment of every acknowledged instance not yet "
             "committed (journal); exit 5 unless every one is committed",
    )
    job.add_argument(
        "--commit-batch", type=_checked(int, lambda value: value >= 1, "must be 1 or more"), default=0,
        metavar="N", help=f"send N files, ask for their commitment, send the next N... (default: commitment after "
                          f"all the stores, {COMMIT_BATCH} instances per N-ACTION)",
    )
    job.add_argument(
        "--commit-port", type=int, default=0, metavar="PORT",
        help="also listen on PORT for the report on a new association (peers such as Orthanc); "
             "the peer must know our AE title at this port (default: same association only)",
    )
    job.add_argument(
        "--commit-timeout", type=_positive_float, default=60.0, metavar="[s]econds",
        help="wait at most this long for each N-EVENT-REPORT (default: 60)",
    )
    out = parser.add_argument_group("Output Options")
    out.add_argument(
        "--summary-json", metavar="FILE",
        help="write a JSON summary (sent, failed with status, skipped, bytes, seconds); - for stdout",
    )
    out.add_argument(
        "--progress", choices=["auto", "bar", "plain", "none"], default="auto",
        help="progress display on stderr: a bar on a terminal, plain lines otherwise (default: auto)",
    )
    return parser


def log_level(args: argparse.Namespace) -> int:
    """Our level: WARNING by default, so skips and failures show."""
    if args.log_type == "q":
        return logging.CRITICAL + 1
    level = {"v": logging.INFO, "d": logging.DEBUG}.get(args.log_type or "", logging.WARNING)
    return LOG_LEVELS[args.log_level] if args.log_level else level


@contextmanager
def progress_logging(progress: Progress, level: int) -> Iterator[logging.Handler]:
    """Route our records via ``progress``; yields the handler that prints them."""
    handler = ProgressLogHandler(progress)
    saved = LOGGER.level, LOGGER.propagate
    LOGGER.addHandler(handler)
    LOGGER.setLevel(level)
    LOGGER.propagate = False
    try:
        yield handler
    finally:
        LOGGER.removeHandler(handler)
        LOGGER.setLevel(saved[0])
        LOGGER.propagate = saved[1]


def peer_options(args: argparse.Namespace, tls: ClientTls | None = None, workers: int = 1) -> PeerOptions:
    """Where and how to associate; ``--rate``/``--max-mbps`` as each of ``workers`` workers' share."""
    return PeerOptions(
        files_per_s=args.rate / workers, bytes_per_s=args.max_mbps * 1e6 / workers,
        host=args.addr, port=args.port, calling_aet=args.calling_aet, called_aet=args.called_aet,
        acse_timeout=args.acse_timeout, dimse_timeout=args.dimse_timeout,
        network_timeout=args.network_timeout, max_pdu=args.max_pdu,
        retry=args.retry, retry_delay=args.retry_delay, async_ops=args.async_ops, tls=tls,
    )


def check_request(peer: PeerOptions) -> None:
    """ConfigError for what the A-ASSOCIATE-RQ cannot carry (an AE title over 16 characters),
    before any file is scanned: the engine checks it when the request is built."""
    try:
        associate_request(peer, [(ul.VERIFICATION, IMPLICIT_VR_LITTLE_ENDIAN)])
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def start_threads(tasks: list[Task], workers: int, peer: PeerOptions, results: queue.SimpleQueue,
                  stop: Interrupt, recorder: JobRecorder) -> list[threading.Thread]:
    """One thread per worker with tasks, each putting its results and last word on ``results``
    (for what one thread should not multiplex: TLS, pacing, large datasets; ``send_multiplex.can_multiplex``).

    Threads, not processes: measured here (2 cores, 5,000 x 5 KiB into storescp --fork), four
    threads took less CPU and less time than four forked workers; the socket calls release
    the GIL, and nothing needs pickling between them.
    """
    threads = []
    for worker in range(workers):
        mine = tasks_for_worker(tasks, worker)
        if mine:
            thread = threading.Thread(target=_worker_thread, args=(worker, mine, peer, results, stop, recorder),
                                      name=f"send-worker-{worker}", daemon=True)
            thread.start()
            threads.append(thread)
    return threads


def _worker_thread(worker: int, tasks: list[Task], peer: PeerOptions, results: queue.SimpleQueue,
                   stop: Interrupt, recorder: JobRecorder) -> None:
    """A worker thread's body: its last word is put even if it fails (the main thread stops waiting)."""
    finished = WorkerFinished(worker=worker, associations=0)
    batch = Batch(results, stop, JournalAcks(recorder, tasks))
    try:
        finished = run_tasks(worker, tasks, peer, batch, stop)
    except Interrupted:  # Ctrl-C: its association was aborted; the main thread takes what the batch holds, then exits
        pass
    except Exception:  # a bug: reported, its files counted as unreported below
        LOGGER.exception(f"worker {worker} failed")
    finally:
        batch.flush()
        results.put(finished)


class JournalAcks:
    """A worker thread's journal of acknowledgments: each committed as it comes, before the
    worker's next C-STORE (``JobRecorder.file``); the main thread records the other outcomes."""

    def __init__(self, recorder: JobRecorder, tasks: list[Task]) -> None:
        self.recorder = recorder
        self.entries = {entry.index: entry for task in tasks for entry in task.files} if recorder.journal else {}

    def __call__(self, result: FileResult) -> None:
        if result.sent and self.entries:
            self.recorder.file(self.entries[result.index], result)


class Batch:
    """A worker thread's ``report``: results go to the main thread in lists of up to 64 (or
    after 0.1 s), so it wakes, and takes the GIL from the workers, once a batch, not once a file;
    an acknowledgment is journaled at once (``JournalAcks``), not with the batch.

    Once ``stop`` is set (Ctrl-C), the next result is handed over with the batch and
    ``Interrupted`` raised: the association is aborted, so no file is sent that the journal would
    not hear of before the process exits."""

    def __init__(self, results: queue.SimpleQueue, stop: Interrupt, journal: JournalAcks) -> None:
        self.results = results
        self.stop = stop
        self.journal = journal
        self.items: list[FileResult] = []
        self.since = time.monotonic()

    def __call__(self, result: FileResult) -> None:
        self.journal(result)
        self.items.append(result)
        if self.stop.is_set():
            self.flush()
            raise Interrupted
        if len(self.items) >= BATCH_FILES or time.monotonic() - self.since >= BATCH_SECONDS:
            self.flush()

    def flush(self) -> None:
        if self.items:
            self.results.put(self.items)
            self.items = []
        self.since = time.monotonic()


class ThreadRecords(logging.Handler):
    """While worker threads run, their log records go through ``results`` and the main thread
    prints them, so that only one thread writes to the terminal (a record never tears the
    progress bar); the main thread's own records are printed at once."""

    def __init__(self, results: queue.SimpleQueue, printer: logging.Handler) -> None:
        super().__init__()
        self.results = results
        self.printer = printer
        self.owner = threading.current_thread()

    def emit(self, record: logging.LogRecord) -> None:
        if threading.current_thread() is self.owner:
            self.printer.handle(record)
        else:
            self.results.put(record)


@contextmanager
def records_via(results: queue.SimpleQueue, printer: logging.Handler) -> Iterator[None]:
    """``ThreadRecords`` in place of the printer for as long as the worker threads run."""
    saved = LOGGER.handlers
    LOGGER.handlers = [ThreadRecords(results, printer)]
    try:
        yield
    finally:
        LOGGER.handlers = saved


class Collector:
    """Takes every worker message: file results (one or a batch), log records, last words."""

    def __init__(self, tally: Tally, progress: Progress, printer: logging.Handler,
                 recorder: JobRecorder | None = None, retry_transient: bool = False) -> None:
        self.tally = tally
        self.progress = progress
        self.printer = printer
        self.recorder = recorder or JobRecorder(None, {})
        self.retry_transient = retry_transient  # hold 0xA7xx answers back for a later pass
        self.later: list[int] = []  # indexes of files to send again
        self.finished: dict[int, int] = {}
        self.acks_journaled = False  # worker threads journal their acknowledgments themselves (JournalAcks)

    def __call__(self, item: Any) -> None:
        if isinstance(item, FileResult):  # -j 1: the main thread's own results, one by one
            self.result(item)
        elif isinstance(item, list):
            for result in item:
                self.result(result)
        elif isinstance(item, logging.LogRecord):
            self.printer.handle(item)
        elif isinstance(item, WorkerFinished):
            self.finished[item.worker] = item.associations
        # acknowledgments are in the journal's log already (JobRecorder.file); into its files
        # table every outcome goes grouped: one transaction per GROUP_SECONDS
        self.recorder.flush_due()

    def result(self, item: FileResult) -> None:
        entry = self.tally.entries[item.index]
        if self.retry_transient and not item.sent and is_transient(item.status):
            LOGGER.warning(f"Peer out of resources for {entry.path} (status=0x{item.status:04X}): sending it again later")
            self.tally.add(item)
            self.later.append(item.index)
            return
        self.tally.add(item)
        if not (item.sent and self.acks_journaled):
            self.recorder.file(entry, item)
        self.progress.advance(item, entry.size)
        if not item.sent:
            status = "" if item.status is None else f" status=0x{item.status:04X}"
            LOGGER.error(f"Store failed: {entry.path}{status} reason={item.reason!r}")
        elif item.status:
            LOGGER.warning(f"Stored with warning: {entry.path} status=0x{item.status:04X}")

    @property
    def associations(self) -> int:
        return sum(self.finished.values())


def collect_results(results: queue.SimpleQueue, threads: list[threading.Thread], collector: Collector,
                    stop: Interrupt) -> int:
    """Take worker messages until every worker thread has said its last word, or ``stop``
    (Ctrl-C) is set; return associations.

    Bounded: each wait is 0.2 s, and the loop also ends once no worker thread is alive and
    the queue is empty.
    """
    while len(collector.finished) < len(threads):
        if stop.is_set():
            return collector.associations
        try:
            collector(results.get(timeout=0.2))
        except queue.Empty:
            if not any(thread.is_alive() for thread in threads) and results.empty():
                break
    while not results.empty():
        collector(results.get())
    for thread in threads:
        thread.join(timeout=JOIN_GRACE)
    report_unreported(collector)
    return collector.associations


def report_unreported(collector: Collector) -> None:
    """Files no worker reported on (a worker failed): failed, as lost with their association."""
    for entry in collector.tally.unreported():
        collector.result(FileResult(index=entry.index, sent=False, reason="worker ended without reporting", network=True))


def exit_status(tally: Tally, missing: list[str]) -> int:
    """3 before 1 before 4 before 0: the worst thing that happened, for scripts."""
    failed = tally.failed()
    if any(result.network for result in failed):
        return EXIT_ASSOCIATION
    if failed:
        return EXIT_STORE_FAILED
    if missing:
        return EXIT_MISSING_PATH
    return EXIT_OK


def send(args: argparse.Namespace, found: Scan, missing: list[str], progress: Progress, printer: logging.Handler,
         tls: ClientTls | None = None, recorder: JobRecorder | None = None) -> tuple[int, Tally, int]:
    """Plan, run the worker(s), gather results: (exit status, tally, associations).

    Files answered 0xA7xx (out of resources) are sent again in a later pass, on new
    associations, after a back-off, up to --retry-transient times; other outcomes are final.
    """
    tally = Tally(entries={entry.index: entry for entry in found.entries})
    if not found.entries:
        return exit_status(tally, missing), tally, 0
    retries = args.retry if args.retry_transient is None else args.retry_transient
    entries: Sequence[FileEntry] = found.entries
    associations = 0
    for attempt in range(retries + 1):
        collector = Collector(tally, progress, printer, recorder, retry_transient=attempt < retries)
        interrupted = send_pass(args, entries, collector, tls)
        associations += collector.associations
        if interrupted:
            return EXIT_INTERRUPTED, tally, associations
        if not collector.later:
            break
        entries = [tally.entries[index] for index in sorted(collector.later)]
        delay = backoff(peer_options(args, tls), attempt + 1)
        LOGGER.warning(f"{len(entries)} file(s) answered out of resources: sending them again in {delay:g} s "
                       f"(retry {attempt + 1}/{retries})")
        time.sleep(delay)
    return exit_status(tally, missing), tally, associations


def send_pass(args: argparse.Namespace, entries: Sequence[FileEntry], collector: Collector,
              tls: ClientTls | None) -> bool:
    """One pass over ``entries``: plan, send in the main thread or in worker threads; whether
    it was interrupted (Ctrl-C). Every outcome the main thread has received is in the journal
    when this returns, also after Ctrl-C: the next run sends only the rest."""
    workers = min(args.associations, len(entries))
    tasks = plan(entries, workers)
    LOGGER.info(
        f"sending files={len(entries)} bytes={sum(e.size for e in entries)} "
        f"contexts={len({e.context for e in entries})} associations={workers} tasks={len(tasks)}"
    )
    peer = peer_options(args, tls, workers)
    results: queue.SimpleQueue = queue.SimpleQueue()
    stop = Interrupt()  # Ctrl-C: wakes every worker thread, each aborts its association
    try:
        if workers == 1:  # no thread at all: the main thread is the worker
            collector(run_tasks(0, tasks, peer, collector))
            return False
        if can_multiplex(peer, entries):  # one thread, one selector, every association (send_multiplex.py)
            work = {worker: tasks_for_worker(tasks, worker) for worker in range(workers)}
            idle = collector.recorder if collector.recorder.journal is not None else None
            for finished in run_lanes(work, peer, collector, idle):
                collector(finished)
            report_unreported(collector)
            return False
        with records_via(results, collector.printer), ctrl_c_sets(stop):
            collector.acks_journaled = True
            threads = start_threads(tasks, workers, peer, results, stop, collector.recorder)
            collect_results(results, threads, collector, stop)
            if stop.is_set():  # Ctrl-C: the worker threads are daemons, they end with the process
                join_all(threads, STOP_GRACE)  # each writes its A-ABORT; one stuck writing is not waited for longer
                take_waiting(results, collector)
                return True
    except KeyboardInterrupt:  # -j 1: its association was aborted on the way out
        return True
    finally:
        collector.recorder.flush()
    return False


@contextmanager
def ctrl_c_sets(stop: Interrupt) -> Iterator[None]:
    """While worker threads run, Ctrl-C sets ``stop`` instead of raising KeyboardInterrupt: an
    exception landing in the middle of a batch would lose the batch's rest from the journal.
    Only in the main thread (the only one that may set handlers), and not where SIGINT is ignored."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        yield
        return
    previous = signal.signal(signal.SIGINT, lambda _signum, _frame: stop.set())
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def join_all(threads: list[threading.Thread], seconds: float) -> None:
    """Wait for ``threads`` to end, ``seconds`` at most in all."""
    deadline = time.monotonic() + seconds
    for thread in threads:
        thread.join(timeout=max(0.0, deadline - time.monotonic()))


def take_waiting(results: queue.SimpleQueue, collector: Collector) -> None:
    """On Ctrl-C: the results worker threads have already handed over are outcomes the peer
    gave; take them into the tally and the journal, so the next run does not send them again."""
    while True:
        try:
            collector(results.get_nowait())
        except queue.Empty:
            return


def open_journal(args: argparse.Namespace, peer: dict[str, Any]) -> SendJournal | None:
    """The job's journal with a new run started; in memory for ``--commit`` without
    ``--journal`` (the commitment phase reads what was acknowledged from it); else None."""
    if not args.journal and not args.commit:
        return None
    journal = SendJournal(args.journal or ":memory:")
    journal.start_run(peer)
    return journal


def limits_text(args: argparse.Namespace) -> str:
    """The limits the progress line shows, e.g. ``limit 50 files/s, 2 MB/s``."""
    parts = ([f"{args.rate:g} files/s"] if args.rate else []) + ([f"{args.max_mbps:g} MB/s"] if args.max_mbps else [])
    return f"limit {', '.join(parts)}" if parts else ""


_EXIT_RANK = {EXIT_ASSOCIATION: 0, EXIT_STORE_FAILED: 1, EXIT_NOT_COMMITTED: 2, EXIT_MISSING_PATH: 3, EXIT_OK: 4}


def worse(a: int, b: int) -> int:
    """The exit status that wins of two: 3 before 1 before 5 before 4 before 0."""
    return a if _EXIT_RANK.get(a, -1) <= _EXIT_RANK.get(b, -1) else b


@dataclass(slots=True)
class RunSoFar:
    """What a run has done over the chunks sent so far."""

    status: int = EXIT_OK
    associations: int = 0
    already: int = 0
    sent: int = 0
    failed: int = 0
    skipped: int = 0
    totals: JobTotals = field(default_factory=JobTotals)  # without a journal: this run's table
    summary: SummaryWriter | None = None  # --summary-json, written out chunk by chunk


def run(args: argparse.Namespace) -> int:
    """Check the TLS options and AE titles, then collect, and chunk by chunk skip what the
    journal has, scan, send (and commit, with --commit-batch); then commit, report."""
    peer = {"host": args.addr, "port": args.port, "called_aet": args.called_aet, "calling_aet": args.calling_aet}
    try:
        tls = client_tls(args)
        check_request(peer_options(args, tls))
        if args.commit and args.commit_port and tls is not None:
            raise ConfigError("--commit-port over TLS is not supported yet (the report would come to a plain TCP "
                              "listener); without --commit-port the report is asked for on the N-ACTION's TLS association")
        journal = open_journal(args, peer)
    except (ConfigError, JournalError) as exc:
        print(f"nodectl send: {exc}", file=sys.stderr)
        return EXIT_USAGE
    started = time.monotonic()
    level = log_level(args)
    files, missing = stream_files(args.path, args.recurse)
    progress = make_progress(args.progress, 0, 0)
    progress.limit = limits_text(args)
    done = RunSoFar()
    chunk = args.commit_batch or CHUNK_FILES
    try:
        with progress_logging(progress, level) as printer:
            for path in missing:
                LOGGER.error(f"Cannot access path: {path}")
            try:
                for number, paths in enumerate(itertools.chain(chunks(files, chunk), [[]])):
                    if number and not paths:
                        break  # the empty list after the last chunk: only a job without files sends it
                    send_chunk(args, paths, missing if number == 0 else [], journal, progress, printer, tls, done, peer)
                    if done.status == EXIT_INTERRUPTED:
                        break
            finally:
                progress.close()
            if done.already:
                LOGGER.warning(f"Resuming: {done.already} file(s) already acknowledged by the peer (journal), not sent again")
            if args.commit and not args.commit_batch and journal is not None and done.status != EXIT_INTERRUPTED:
                done.status = worse(done.status, commit(args, journal, tls))
            seconds = time.monotonic() - started
            LOGGER.info(f"done sent={done.sent} failed={done.failed} skipped={done.skipped} "
                        f"bytes={done.totals.bytes} seconds={seconds:.2f} exit={done.status}")
        if journal is not None:
            journal.end_run(done.status)
        done.totals.seconds = seconds
        totals = journal.totals() if journal is not None else done.totals
        if args.progress != "none" and level <= logging.CRITICAL:
            print(job_table(totals), file=sys.stderr)
        if done.summary is not None:
            job = {"job": totals.as_dict()} if journal is not None else {}
            done.summary.write(seconds=round(seconds, 3), exit_status=done.status, already_acknowledged=done.already, **job)
    finally:
        if done.summary is not None:
            done.summary.close()
        if journal is not None:
            journal.close()
    return done.status


def send_chunk(args: argparse.Namespace, paths: list[str], missing: list[str], journal: SendJournal | None,
               progress: Progress, printer: logging.Handler, tls: ClientTls | None, done: RunSoFar,
               peer: dict[str, Any]) -> None:
    """One chunk of the file list: skip what the journal has, scan, send, record; so that a job's
    memory grows with the chunk (``CHUNK_FILES``, or ``--commit-batch``), not with the job."""
    todo = resume(journal, paths)
    found = scan(todo.to_send, identities=journal is not None and not journal.resuming)
    recorder = JobRecorder(journal, todo.identities)
    recorder.skipped(found.skipped)
    recorder.begin(found.entries)
    progress.expect(len(found.entries), found.total_bytes)
    for item in found.skipped:
        LOGGER.warning(f"Skipped: {item.path}: {item.reason}")
    status, tally, associations = send(args, found, missing, progress, printer, tls, recorder)
    if status == EXIT_INTERRUPTED:
        done.status = status
    else:
        recorder.settle()  # every worker thread has ended
        done.status = worse(done.status, status)
    if args.commit and args.commit_batch and journal is not None and status != EXIT_INTERRUPTED:
        done.status = worse(done.status, commit(args, journal, tls))
    done.associations += associations
    done.already += todo.already
    done.sent += len(tally.sent())
    done.failed += len(tally.failed())
    done.skipped += len(found.skipped)
    add_totals(done.totals, tally_totals(tally, found.skipped, 0.0))
    if args.summary_json:
        if done.summary is None:
            done.summary = SummaryWriter(args.summary_json)
        done.summary.add(summary(tally=tally, skipped=found.skipped, missing=missing, seconds=0.0,
                            exit_status=status, peer=peer, associations=associations))


def commit(args: argparse.Namespace, journal: SendJournal, tls: ClientTls | None) -> int:
    """The commitment phase for what the journal has acknowledged and not committed: 5 unless
    every acknowledged instance of the job is committed, else 0."""
    # here, not at module top: send_commit imports pydicom (0.1 s of CPU, 20 us a file of a
    # 5,000-file job), which a job without --commit never needs (measured, docs/benchmarks.md)
    from node.tools.send_commit import CommitUnsupported, run_commitment

    journal.flush()
    peer = peer_options(args, tls)
    started = time.monotonic()
    try:
        outcome = run_commitment(journal, peer, batch=args.commit_batch or COMMIT_BATCH, timeout=args.commit_timeout,
                                 commit_port=args.commit_port or None)
        for error in outcome.errors:
            LOGGER.error(f"Storage Commitment: {error}")
        LOGGER.info(f"commitment requested={outcome.requested} committed={outcome.committed} failed={outcome.failed} "
                    f"unanswered={outcome.unanswered} seconds={time.monotonic() - started:.2f}")
    except CommitUnsupported as exc:
        LOGGER.error(f"Storage Commitment not possible: {exc}; the stores still count, nothing is committed")
    except (Lost, OSError, ul.LocalProtocolError) as exc:
        LOGGER.error(f"Storage Commitment failed: {exc}")
    return EXIT_NOT_COMMITTED if journal.totals().not_committed else EXIT_OK


def report(path: str) -> int:
    """``nodectl send --report FILE.journal``: the job's table again, from its journal."""
    try:
        journal = SendJournal(path, readonly=True)
    except JournalError as exc:
        print(f"nodectl send: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        print(job_table(journal.totals()))
        for file_path, status, reason in journal.failures():
            print(f"failed: {file_path}: {'no status' if status is None else f'0x{status:04X}'} {reason}")
    finally:
        journal.conn.close()
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """Entry point for ``nodectl send``; returns the exit status."""
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--report":
        if len(argv) != 2:
            print("usage: nodectl send --report FILE.journal", file=sys.stderr)
            return EXIT_USAGE
        return report(argv[1])
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    if args.version:
        print(f"nodectl send v{__version__}")
        return EXIT_OK
    return run(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
