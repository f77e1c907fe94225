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
its samples' directories until it ends, deletes them, and the next run starts at least
``RECENCY_S`` after it under the same scratch root. A ``sync`` after the deletion does not
shorten that to 60 s: the first new inode allocated in an inode table block dirties the block
again, and its other freed inodes then count as recent for 360 s; a receiver that never syncs
(DCMTK storescp) keeps them dirty. Measured (2026-12-03): 30,000 files deleted, ``sync``, then
5,000 new 5 KiB files without fsync: 1,343 files/s and 0.74 ms of system CPU each 65 s later,
25,319 files/s and 0.032 ms 400 s later. Deletions by anything else (a test suite) are not
seen here: wait six minutes after them.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

RECENCY_S = 361.0  # RECENTCY_MIN + RECENTCY_DIRTY, and a second
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
    os.sync()  # the deletion on disk before its time is noted
    try:
        (root / MARK).write_text(f"{time.time():.3f}")
    except OSError:
        pass
