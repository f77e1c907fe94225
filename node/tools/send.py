"""``nodectl send``: C-STORE many files over parallel associations, for scripted jobs.

CLI form::

    nodectl send [options] addr port path [path ...]
    nodectl send -j 4 --retry 2 --summary-json out.json 127.0.0.1 11112 /data/study

Compared with ``nodectl storescu`` (which keeps pynetdicom's exit 0 whatever happens):

- ``-j N`` associations run in N threads of this process (``send_worker.py``): no
  interpreter to start per worker; ``-j 1`` runs in the main thread;
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
  ``nodectl serve``'s ``--tls-*`` (``tls_options.py``), in every worker process.

Exit status (also in ``--help`` and docs/cli/send.md):
  0 every DICOM file was stored (Success or Warning status); skipped files allowed
  1 at least one file failed: failure status from the peer, no accepted context for it
  2 command line error (also an unreadable --tls-* file or a bad cipher string)
  3 association failure (also a failed TLS handshake): refused, rejected or aborted, retries exhausted; files unsent
  4 a path on the command line does not exist (the files that do exist were sent)
  130 interrupted (Ctrl-C); the summary lists what had been answered
When several apply, the lowest in this order wins: 3, 1, 4.
"""

from __future__ import annotations

import argparse
import logging
import queue
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from node import ul
from node.errors import ConfigError
from node.tools.send_association import PeerOptions, associate_request
from node.tools.send_plan import Scan, Task, plan, scan, tasks_for_worker
from node.tools.send_report import (
    Progress,
    ProgressLogHandler,
    Tally,
    make_progress,
    summary,
    write_summary,
)
from node.tools.send_results import FileResult, WorkerFinished
from node.tools.send_worker import run_tasks
from node.tools.storescu import (
    LOG_LEVELS,
    _Parser,
    add_logging_options,
    add_network_options,
    collect_files,
)
from node.tools.tls_options import ClientTls, add_client_arguments, client_tls

__version__ = "0.1.0"

EXIT_OK = 0
EXIT_STORE_FAILED = 1
EXIT_USAGE = 2
EXIT_ASSOCIATION = 3
EXIT_MISSING_PATH = 4
EXIT_INTERRUPTED = 130
MAX_ASSOCIATIONS = 64
MAX_ASYNC = 256  # C-STOREs in flight per association: enough to hide any loopback or LAN round trip
BATCH_FILES = 64
BATCH_SECONDS = 0.1  # the progress display moves at least this often
JOIN_GRACE = 10.0  # seconds a worker thread that has said its last word gets to end

EXIT_HELP = """\
exit status:
  0    every DICOM file was stored (Success or Warning); skipped non-DICOM files allowed
  1    at least one file failed (failure status from the peer, no accepted context)
  2    command line error; --tls-* files unreadable or a bad cipher string
  3    association refused, rejected or aborted (TLS handshake failed too) and --retry
       exhausted; files unsent
  4    a path named on the command line does not exist (the others were sent)
  130  interrupted
  When several apply: 3 before 1 before 4."""

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


def _non_negative(text: str) -> int:
    """argparse type: an integer >= 0."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return value


def build_parser() -> argparse.ArgumentParser:
    """storescu's spellings for what both tools share, plus the options of bulk sending."""
    parser = _Parser(
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


def peer_options(args: argparse.Namespace, tls: ClientTls | None = None) -> PeerOptions:
    return PeerOptions(
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


def start_threads(tasks: list[Task], workers: int, peer: PeerOptions, results: queue.SimpleQueue) -> list[threading.Thread]:
    """One thread per worker with tasks, each putting its results and last word on ``results``.

    Threads, not processes: measured here (2 cores, 5,000 x 5 KiB into storescp --fork), four
    threads took less CPU and less time than four forked workers; the socket calls release
    the GIL, and nothing needs pickling between them.
    """
    threads = []
    for worker in range(workers):
        mine = tasks_for_worker(tasks, worker)
        if mine:
            thread = threading.Thread(target=_worker_thread, args=(worker, mine, peer, results),
                                      name=f"send-worker-{worker}", daemon=True)
            thread.start()
            threads.append(thread)
    return threads


def _worker_thread(worker: int, tasks: list[Task], peer: PeerOptions, results: queue.SimpleQueue) -> None:
    """A worker thread's body: its last word is put even if it fails (the main thread stops waiting)."""
    finished = WorkerFinished(worker=worker, associations=0)
    batch = Batch(results)
    try:
        finished = run_tasks(worker, tasks, peer, batch)
    except Exception:  # a bug: reported, its files counted as unreported below
        LOGGER.exception(f"worker {worker} failed")
    finally:
        batch.flush()
        results.put(finished)


class Batch:
    """A worker thread's ``report``: results go to the main thread in lists of up to 64 (or
    after 0.1 s), so it wakes, and takes the GIL from the workers, once a batch, not once a file."""

    def __init__(self, results: queue.SimpleQueue) -> None:
        self.results = results
        self.items: list[FileResult] = []
        self.since = time.monotonic()

    def __call__(self, result: FileResult) -> None:
        self.items.append(result)
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

    def __init__(self, tally: Tally, progress: Progress, printer: logging.Handler) -> None:
        self.tally = tally
        self.progress = progress
        self.printer = printer
        self.finished: dict[int, int] = {}

    def __call__(self, item: Any) -> None:
        if isinstance(item, FileResult):
            self.result(item)
        elif isinstance(item, list):
            for result in item:
                self.result(result)
        elif isinstance(item, logging.LogRecord):
            self.printer.handle(item)
        elif isinstance(item, WorkerFinished):
            self.finished[item.worker] = item.associations

    def result(self, item: FileResult) -> None:
        self.tally.add(item)
        entry = self.tally.entries[item.index]
        self.progress.advance(item, entry.size)
        if not item.sent:
            status = "" if item.status is None else f" status=0x{item.status:04X}"
            LOGGER.error(f"Store failed: {entry.path}{status} reason={item.reason!r}")
        elif item.status:
            LOGGER.warning(f"Stored with warning: {entry.path} status=0x{item.status:04X}")

    @property
    def associations(self) -> int:
        return sum(self.finished.values())


def collect_results(results: queue.SimpleQueue, threads: list[threading.Thread], collector: Collector) -> int:
    """Take worker messages until every worker thread has said its last word; return associations.

    Bounded: each wait is 0.2 s, and the loop also ends once no worker thread is alive and
    the queue is empty.
    """
    while len(collector.finished) < len(threads):
        try:
            collector(results.get(timeout=0.2))
        except queue.Empty:
            if not any(thread.is_alive() for thread in threads) and results.empty():
                break
    while not results.empty():
        collector(results.get())
    for thread in threads:
        thread.join(timeout=JOIN_GRACE)
    for entry in collector.tally.unreported():
        collector.result(FileResult(index=entry.index, sent=False, reason="worker ended without reporting", network=True))
    return collector.associations


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
         tls: ClientTls | None = None) -> tuple[int, Tally, int]:
    """Plan, run the worker(s), gather results: (exit status, tally, associations)."""
    tally = Tally(entries={entry.index: entry for entry in found.entries})
    if not found.entries:
        return exit_status(tally, missing), tally, 0
    workers = min(args.associations, len(found.entries))
    tasks = plan(found.entries, workers)
    LOGGER.info(
        f"sending files={len(found.entries)} bytes={found.total_bytes} "
        f"contexts={len({e.context for e in found.entries})} associations={workers} tasks={len(tasks)}"
    )
    collector = Collector(tally, progress, printer)
    peer = peer_options(args, tls)
    try:
        if workers == 1:  # no thread at all: the main thread is the worker
            collector(run_tasks(0, tasks, peer, collector))
            return exit_status(tally, missing), tally, collector.associations
        results: queue.SimpleQueue = queue.SimpleQueue()
        with records_via(results, printer):
            associations = collect_results(results, start_threads(tasks, workers, peer, results), collector)
    except KeyboardInterrupt:  # the worker threads are daemons: they end with the process
        return EXIT_INTERRUPTED, tally, 0
    return exit_status(tally, missing), tally, associations


def run(args: argparse.Namespace) -> int:
    """Check the TLS options and AE titles, then collect, scan, send, report."""
    try:
        tls = client_tls(args)
        check_request(peer_options(args, tls))
    except ConfigError as exc:
        print(f"nodectl send: {exc}", file=sys.stderr)
        return EXIT_USAGE
    started = time.monotonic()
    level = log_level(args)
    files, missing = collect_files(args.path, args.recurse)
    found = scan(files)
    progress = make_progress(args.progress, len(found.entries), found.total_bytes)
    with progress_logging(progress, level) as printer:
        for path in missing:
            LOGGER.error(f"Cannot access path: {path}")
        for item in found.skipped:
            LOGGER.warning(f"Skipped: {item.path}: {item.reason}")
        try:
            status, tally, associations = send(args, found, missing, progress, printer, tls)
        finally:
            progress.close()
        seconds = time.monotonic() - started
        LOGGER.info(
            f"done sent={len(tally.sent())} failed={len(tally.failed())} skipped={len(found.skipped)} "
            f"bytes={tally.bytes} seconds={seconds:.2f} exit={status}"
        )
    if args.summary_json:
        peer = {"host": args.addr, "port": args.port, "called_aet": args.called_aet, "calling_aet": args.calling_aet}
        write_summary(
            args.summary_json,
            summary(tally=tally, skipped=found.skipped, missing=missing, seconds=seconds,
                    exit_status=status, peer=peer, associations=associations),
        )
    return status


def main(argv: list[str] | None = None) -> int:
    """Entry point for ``nodectl send``; returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    if args.version:
        print(f"nodectl send v{__version__}")
        return EXIT_OK
    return run(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
