"""What ``nodectl send``'s workers report: one ``FileResult`` per file, ``WorkerFinished`` last.

Plain frozen data, handed from a worker thread to the main thread; imported by the
association loop (``send_association``), the workers (``send_worker``), the display
(``send_report``) and the main thread (``send``), and importing none of them.
"""

from __future__ import annotations

from dataclasses import dataclass

from node.tools.send_plan import FileEntry


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


def store_result(entry: FileEntry, status: int, worker: int) -> FileResult:
    """The outcome of a C-STORE-RSP status: Success and Warning count as sent."""
    if status == 0x0000:
        return FileResult(index=entry.index, sent=True, status=0, bytes=entry.size, worker=worker)
    category, meaning = status_meaning(status)
    ok = category in ("Success", "Warning")
    return FileResult(index=entry.index, sent=ok, status=status, reason=f"{category}: {meaning}".rstrip(": "),
                      bytes=entry.size if ok else 0, worker=worker)


def status_meaning(status: int) -> tuple[str, str]:
    """(category, meaning) of a Storage Service status from pynetdicom's table (PS3.4 B.2.3).

    Imported here, only for a status that is not plain Success: ``import pynetdicom`` costs
    ~0.2 s of start-up that a job of successes never needs.
    """
    from pynetdicom.status import STORAGE_SERVICE_CLASS_STATUS, code_to_category

    category, meaning = STORAGE_SERVICE_CLASS_STATUS.get(status, (code_to_category(status), ""))
    return str(category), str(meaning)
