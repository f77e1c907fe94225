"""Where receivers store during a benchmark, and when their files may be deleted.

This machine's root filesystem is ext4 without a journal. There, ext4 does not reuse an inode
freed less than 60 s ago, or 360 s while its inode table block is dirty (``RECENTCY_MIN`` and
``RECENTCY_DIRTY`` in fs/ext4/ialloc.c, 60 since Linux 5.7), and finding a free inode for a new
file scans past every such one (``find_inode_bit``, ``recently_deleted``). A store deleted right
before a sample made every file creation of that sample scan thousands of them: the node's
writer spent 0.98 ms of system CPU per 5 KiB instance instead of 0.36, and took 326 instead of
518 images/s (four associations, `perf record` of the writer, 2026-12-02); 35 s after a
deletion the materialiser still spent ~40% of its samples there and 0.39-0.74 ms of system CPU
per instance instead of 0.14 (2026-12-03). Every receiver that creates a file per instance
pays it (Orthanc and DCMTK too), and none does in production, where nothing deletes thousands
of files a second before an ingest (nor does a journaled ext4 or XFS check). So a run keeps
its samples' directories until it ends, flushes its deletion (``os.sync``: the inode table
blocks clean, so the 60 s window applies), and the next run starts at least ``RECENCY_S``
after it under the same scratch root. Deletions by anything else (a test suite) are not seen
here: wait six minutes after them, or ``sync`` and one.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

RECENCY_S = 61.0
MARK = ".bench-deleted-at"


def wait_for_old_deletions(root: Path, log: Callable[[str], None]) -> None:
    """Sleep until files an earlier run deleted under ``root`` no longer slow creations."""
    try:
        deleted_at = float((root / MARK).read_text())
    except (OSError, ValueError):
        return
    left = deleted_at + RECENCY_S - time.time()
    if left > 0:
        log(f"waiting {left:.0f} s: an earlier run deleted its files under {root} (see bench/scratch.py)")
        time.sleep(left)


def remove(path: Path, root: Path) -> None:
    """Delete a run's scratch directory and note when, for the next run's wait."""
    shutil.rmtree(path, ignore_errors=True)
    os.sync()  # the freed inodes' table blocks on disk: 60 s, not 360, until they are reusable
    try:
        (root / MARK).write_text(f"{time.time():.3f}")
    except OSError:
        pass
