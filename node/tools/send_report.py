"""What ``nodectl send`` tells its user: progress while sending, a summary at the end.

Progress goes to stderr: a tqdm bar on a terminal (bytes as the bar's unit so that rate
and ETA are in bytes, files as a postfix), plain ``send: ...`` lines at most once per
interval when stderr is not a terminal (logs, CI), or nothing. Log lines pass through
``Progress.write`` so they never tear the bar.

The summary (``--summary-json FILE``) is one JSON object, ``SUMMARY_VERSION`` 1::

    {"version": 1, "peer": {...}, "associations": 4,
     "sent": 298, "failed": 1, "skipped": 1, "bytes": 2453504, "seconds": 3.2,
     "exit_status": 1,
     "files": {"sent":    [{"path", "sop_class_uid", "sop_instance_uid", "status"}],
               "failed":  [{"path", "sop_class_uid", "sop_instance_uid", "status",
                            "status_hex", "reason", "network"}],
               "skipped": [{"path", "reason"}],
               "missing": ["path named on the command line that does not exist"]}}

``bytes`` counts dataset bytes acknowledged by the peer (file meta excluded: it is not
sent); ``status`` is the C-STORE status as an integer, ``null`` when none came back.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

from node.send_journal import JobTotals
from node.tools.send_plan import FileEntry, Skipped
from node.tools.send_results import FileResult

SUMMARY_VERSION = 1


class Progress:
    """No progress output at all; the base of the two visible kinds."""

    def __init__(self, total_files: int, total_bytes: int, stream: TextIO) -> None:
        self.total_files = total_files
        self.total_bytes = total_bytes
        self.files = 0
        self.failed = 0
        self.bytes = 0
        self.stream = stream
        self.started = time.monotonic()
        self.limit = ""  # --rate/--max-mbps as shown, e.g. "limit 50 files/s"

    def advance(self, result: FileResult, size: int) -> None:
        """Count one finished file; ``size`` is its dataset size, sent or not."""
        self.files += 1
        self.failed += 0 if result.sent else 1
        self.bytes += size

    def expect(self, files: int, size: int) -> None:
        """Count ``files`` more files of ``size`` dataset bytes in the totals (a job is planned
        chunk by chunk)."""
        self.total_files += files
        self.total_bytes += size

    def write(self, line: str) -> None:
        """Print a log line without disturbing the progress display."""
        print(line, file=self.stream, flush=True)

    def close(self) -> None:
        """Finish the display."""


class PlainProgress(Progress):
    """Plain lines for logs: at most one per ``interval`` seconds, and a last one."""

    def __init__(self, total_files: int, total_bytes: int, stream: TextIO, interval: float = 1.0) -> None:
        super().__init__(total_files, total_bytes, stream)
        self.interval = interval
        self.last = self.started

    def advance(self, result: FileResult, size: int) -> None:
        super().advance(result, size)
        now = time.monotonic()
        if now - self.last >= self.interval:
            self.last = now
            self.write(self.line(now))

    def line(self, now: float) -> str:
        """``send: 120/300 files, 1.2MB/3.0MB, 45.1 files/s, 460kB/s, ETA 00:04, 0 failed``."""
        from tqdm import tqdm

        elapsed = max(now - self.started, 1e-9)
        rate = self.bytes / elapsed
        eta = (self.total_bytes - self.bytes) / rate if rate > 0 else 0.0
        return (
            f"send: {self.files}/{self.total_files} files, "
            f"{tqdm.format_sizeof(self.bytes, 'B', 1024)}/{tqdm.format_sizeof(self.total_bytes, 'B', 1024)}, "
            f"{self.files / elapsed:.1f} files/s, {tqdm.format_sizeof(rate, 'B/s', 1024)}, "
            f"ETA {tqdm.format_interval(eta)}, {self.failed} failed"
            + (f", {self.limit}" if self.limit else "")
        )

    def close(self) -> None:
        self.write(self.line(time.monotonic()))


class BarProgress(Progress):
    """A tqdm bar: bytes with rate and ETA, files done and failed as postfix."""

    def __init__(self, total_files: int, total_bytes: int, stream: TextIO) -> None:
        from tqdm import tqdm

        super().__init__(total_files, total_bytes, stream)
        self.bar = tqdm(
            total=total_bytes, unit="B", unit_scale=True, unit_divisor=1024,
            file=stream, desc="send", dynamic_ncols=True, mininterval=0.2,
        )
        self._postfix()

    def _postfix(self) -> None:
        limit = f", {self.limit}" if self.limit else ""
        self.bar.set_postfix_str(f"files {self.files}/{self.total_files}, {self.failed} failed{limit}", refresh=False)

    def advance(self, result: FileResult, size: int) -> None:
        super().advance(result, size)
        self._postfix()
        self.bar.update(size)

    def expect(self, files: int, size: int) -> None:
        super().expect(files, size)
        self.bar.total = self.total_bytes
        self._postfix()
        self.bar.refresh()

    def write(self, line: str) -> None:
        self.bar.write(line, file=self.stream)

    def close(self) -> None:
        self.bar.close()


def make_progress(mode: str, total_files: int, total_bytes: int, stream: TextIO = sys.stderr) -> Progress:
    """``auto`` is a bar on a terminal and plain lines otherwise."""
    if mode == "auto":
        mode = "bar" if stream.isatty() else "plain"
    if mode == "bar":
        return BarProgress(total_files, total_bytes, stream)
    if mode == "plain":
        return PlainProgress(total_files, total_bytes, stream)
    return Progress(total_files, total_bytes, stream)


class ProgressLogHandler(logging.Handler):
    """Formats records as ``L: message`` and prints them through the current progress."""

    def __init__(self, progress: Progress) -> None:
        super().__init__()
        self.progress = progress
        self.setFormatter(logging.Formatter("%(levelname).1s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.progress.write(self.format(record))
        except Exception:  # a logging handler must never raise
            self.handleError(record)


@dataclass(slots=True)
class Tally:
    """Per-file outcomes as they arrive, indexed by the file's position in the list."""

    entries: dict[int, FileEntry]
    results: dict[int, FileResult] = field(default_factory=dict)

    def add(self, result: FileResult) -> None:
        self.results[result.index] = result

    def unreported(self) -> list[FileEntry]:
        """Files no worker reported on (a worker died): they count as failed."""
        return [entry for index, entry in self.entries.items() if index not in self.results]

    def sent(self) -> list[FileResult]:
        return [r for r in self.results.values() if r.sent]

    def failed(self) -> list[FileResult]:
        return [r for r in self.results.values() if not r.sent]

    @property
    def bytes(self) -> int:
        return sum(r.bytes for r in self.results.values())


def _status_hex(status: int | None) -> str | None:
    return None if status is None else f"0x{status:04X}"


def summary(
    *,
    tally: Tally,
    skipped: Sequence[Skipped],
    missing: Sequence[str],
    seconds: float,
    exit_status: int,
    peer: dict[str, Any],
    associations: int,
) -> dict[str, Any]:
    """The summary object described in the module docstring, files in list order."""

    def describe(result: FileResult) -> dict[str, Any]:
        entry = tally.entries[result.index]
        item: dict[str, Any] = {
            "path": entry.path,
            "sop_class_uid": entry.sop_class_uid,
            "sop_instance_uid": entry.sop_instance_uid,
            "status": result.status,
        }
        if not result.sent:
            item.update(status_hex=_status_hex(result.status), reason=result.reason, network=result.network)
        return item

    sent = sorted(tally.sent(), key=lambda r: r.index)
    failed = sorted(tally.failed(), key=lambda r: r.index)
    return {
        "version": SUMMARY_VERSION,
        "peer": peer,
        "associations": associations,
        "sent": len(sent),
        "failed": len(failed),
        "skipped": len(skipped),
        "bytes": tally.bytes,
        "seconds": round(seconds, 3),
        "exit_status": exit_status,
        "files": {
            "sent": [describe(r) for r in sent],
            "failed": [describe(r) for r in failed],
            "skipped": [{"path": s.path, "reason": s.reason} for s in skipped],
            "missing": list(missing),
        },
    }


class SummaryWriter:
    """``--summary-json`` built chunk by chunk without holding its file lists: each chunk's
    entries go, JSON-encoded, to an unnamed temporary file per list, and the object is written
    once at the end, atomically (temp file, fsync, rename), or to stdout for ``-``. Holding the
    lists as dicts took 1.4 GiB for a 1,000,000-file job (``python -m bench memory --job-files``)."""

    LISTS = ("sent", "failed", "skipped")
    COUNTS = ("sent", "failed", "skipped", "bytes", "associations")

    def __init__(self, path: str) -> None:
        self.path = path
        self.head: dict[str, Any] = {}  # the first chunk's version and peer, then the counts
        self.missing: list[str] = []
        self.lists = {name: tempfile.TemporaryFile("w+", encoding="utf-8") for name in self.LISTS}
        self.items = dict.fromkeys(self.LISTS, 0)

    def add(self, part: dict[str, Any]) -> None:
        """One chunk's summary (``summary``): its counts added, its file entries written out."""
        if not self.head:
            self.head = {key: value for key, value in part.items() if key != "files"}
        else:
            for key in self.COUNTS:
                self.head[key] += part[key]
        self.missing.extend(part["files"]["missing"])
        for name in self.LISTS:
            out = self.lists[name]
            for item in part["files"][name]:
                out.write(("," if self.items[name] else "") + "\n      " + json.dumps(item))
                self.items[name] += 1

    def write(self, **final: Any) -> None:
        """The whole object, with ``final`` (seconds, exit status, the job's table...) set."""
        head = self.head | final
        if self.path == "-":
            self._write_to(sys.stdout, head)
            sys.stdout.flush()
            return
        tmp = f"{self.path}.tmp{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as out:
            self._write_to(out, head)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, self.path)

    def _write_to(self, out: TextIO, head: dict[str, Any]) -> None:
        out.write("{\n")
        for key, value in head.items():
            out.write(f"  {json.dumps(key)}: {json.dumps(value)},\n")
        out.write('  "files": {\n')
        for name in self.LISTS:
            out.write(f'    "{name}": [')
            part = self.lists[name]
            part.seek(0)
            shutil.copyfileobj(part, out)
            out.write("\n    ],\n" if self.items[name] else "],\n")
        out.write(f'    "missing": {json.dumps(self.missing)}\n  }}\n}}\n')

    def close(self) -> None:
        for part in self.lists.values():
            part.close()


def tally_totals(tally: Tally, skipped: Sequence[Skipped], seconds: float) -> JobTotals:
    """One run's outcomes as the job table counts them, for a run without a journal."""
    totals = JobTotals(runs=1, seconds=seconds, bytes=tally.bytes)
    totals.acknowledged = totals.sent_last_run = len(tally.sent())
    for result in tally.failed():
        key = "no status" if result.status is None else f"0x{result.status:04X}"
        totals.failed_by_status[key] = totals.failed_by_status.get(key, 0) + 1
    for item in skipped:
        totals.skipped_by_reason[item.reason] = totals.skipped_by_reason.get(item.reason, 0) + 1
    totals.files = len(tally.results) + len(skipped)
    return totals


def job_table(totals: JobTotals) -> str:
    """The short table a person reads at the end of a job (and ``nodectl send --report``)::

        sent (this run)          120
        already there            880
        failed 0xA700              2
        skipped: not DICOM         1
        committed               1000
        not committed              0
        MB/s                    4.21
    """
    rows: list[tuple[str, str]] = [
        ("sent (this run)", str(totals.sent_last_run)),
        ("already there", str(totals.already_there)),
        ("acknowledged (job)", str(totals.acknowledged)),
    ]
    rows += [(f"failed {status}", str(count)) for status, count in sorted(totals.failed_by_status.items())]
    if not totals.failed_by_status:
        rows.append(("failed", "0"))
    rows += [(f"skipped: {reason}", str(count)) for reason, count in sorted(totals.skipped_by_reason.items())]
    rows += [("committed", str(totals.committed)), ("not committed", str(totals.not_committed))]
    if totals.commit_failed:
        rows.append(("commitment failed", str(totals.commit_failed)))
    rate = totals.bytes / totals.seconds / 1e6 if totals.seconds > 0 else 0.0
    rows += [("MB", f"{totals.bytes / 1e6:.2f}"), ("MB/s", f"{rate:.2f}"), ("runs", str(totals.runs))]
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"  {label:<{width}}  {value:>10}" for label, value in rows)


def add_totals(into: JobTotals, part: JobTotals) -> None:
    """Add one chunk's counts to a run's (without a journal, the run's table is built so)."""
    for name in ("files", "acknowledged", "sent_last_run", "already_there", "committed", "commit_failed", "bytes"):
        setattr(into, name, getattr(into, name) + getattr(part, name))
    into.runs = 1
    for mine, theirs in ((into.failed_by_status, part.failed_by_status), (into.skipped_by_reason, part.skipped_by_reason)):
        for key, count in theirs.items():
            mine[key] = mine.get(key, 0) + count
