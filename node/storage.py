"""Making received instances durable: temp file, fsync, atomic rename, directory fsync.

Only the storage writer calls this module, so there is exactly one writer of the store.
Two ways in: ``Store.materialise`` copies instances the writer's journal already made durable
(``node.journal``) to their final paths in batches, two ``syncfs`` per batch; ``Store.commit``
is the direct path (spooled instances, or no journal), after which the success is sent:

1. the file is written in full to ``<directory>/.incoming/tmp/`` (same filesystem), or, for
   a spooled instance, the worker's spool under ``<directory>/.incoming/spool/`` is that file
   already (preamble, file meta, dataset) and is used as it is (``Store._adopt_spool``);
2. the file is fdatasynced, so its bytes are on disk (fdatasync flushes the data and the
   metadata needed to read it back, such as its size and blocks; only timestamps may
   lag, and skipping them saved ~0.3 ms of ~1.2 ms per durable creation on this disk);
3. it is renamed over its final path (atomic: readers see the old file or the new one);
4. every directory whose entries changed is fsynced, so the rename itself is on disk.

Several instances waiting at once share step 4 (group commit). A crash at any point leaves
either the previous state or the complete new file, never a partial file at a final path;
temp files left by a crash are removed when the writer starts (``Store.prepare``).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import mmap
import os
import random
import stat
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from node.errors import PathError, StorageError

PREAMBLE = b"\x00" * 128 + b"DICM"
_COPY_CHUNK = 1 << 24
DIRECT_MIN = 256 << 10  # journal records this large reach their files by direct I/O (_copy_direct)
_DIRECT_CHUNK = 4 << 20  # the one buffer a direct copy goes through, reused for every file
_DIRECT_ALIGN = 4096  # offsets and lengths of direct writes: a multiple of any logical block size


@dataclass(frozen=True)
class PendingWrite:
    """One instance to make durable: final relative path and where its bytes are."""

    relpath: str
    parts: Sequence[bytes | memoryview]
    spool: str = ""
    spool_offset: int = 0


@dataclass(frozen=True)
class WriteOutcome:
    """What happened to one ``PendingWrite``: its final path and size, or an error."""

    path: Path | None
    size: int
    error: StorageError | None = None


class Store:
    """The store directory and the rules for writing into it."""

    def __init__(self, directory: Path, *, rename_retries: int = 3, rename_retry_jitter_ms: int = 50) -> None:
        self.directory = Path(directory).resolve()
        self.tmp_dir = self.directory / ".incoming" / "tmp"
        self._root = str(self.directory)
        self._incoming = str(self.directory / ".incoming")
        self._spools = str(self.directory / ".incoming" / "spool")  # node.config's spool_dir / "spool"
        self.rename_retries = rename_retries
        self.rename_retry_jitter_ms = rename_retry_jitter_ms
        self._direct_buffer: mmap.mmap | None = None  # made by the first direct copy, kept
        self._direct_lock = threading.Lock()  # one copy at a time through that buffer

    def prepare(self) -> int:
        """Create the directories and remove temp files a crash left; return how many."""
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        removed = 0
        for leftover in self.tmp_dir.iterdir():
            leftover.unlink(missing_ok=True)
            removed += 1
        fsync_directory(self.tmp_dir)
        return removed

    def final_path(self, relpath: str) -> Path:
        """Join a relative path to the store, refusing anything that would leave it."""
        # String operations on os.path.realpath (symlinks still followed): pathlib's resolve()
        # and .parents were a tenth of the writer's CPU per small instance.
        return Path(self._inside(self._resolve(relpath), relpath))

    def _inside(self, target: str, relpath: str) -> str:
        """``target`` (resolved ``relpath``) if it lies in the store and outside ``.incoming``."""
        if not target.startswith(self._root + os.sep):
            raise PathError(f"path {relpath!r} would leave the store")
        if target == self._incoming or target.startswith(self._incoming + os.sep):
            raise PathError(f"path {relpath!r} is inside the reserved .incoming directory")
        return target

    def _resolve(self, relpath: str) -> str:
        """``os.path.realpath(root/relpath)`` for a root that is already resolved.

        realpath lstats every component of the whole path (six or more system calls per
        instance in the writer); only the components below the root can be symlinks we have
        not resolved, and nothing below the first missing one exists. A path with ``..`` or
        a symlink below the root takes realpath itself, so the result is always realpath's.
        """
        parts = relpath.split(os.sep)
        if _needs_realpath(relpath, parts):
            return os.path.realpath(os.path.join(self._root, relpath))
        parts = [part for part in parts if part not in ("", ".")]
        path = self._root
        for n, part in enumerate(parts):
            path = path + os.sep + part
            try:
                mode = os.lstat(path).st_mode
            except OSError:  # missing (or under a file): realpath keeps the rest as written
                return os.sep.join([path, *parts[n + 1:]])
            if stat.S_ISLNK(mode):
                return os.path.realpath(os.path.join(self._root, relpath))
        return path

    def commit(self, writes: Sequence[PendingWrite]) -> list[WriteOutcome]:
        """Make every write durable; one outcome per write, in order.

        Each file is written and fsynced on its own; the directory fsyncs are shared.
        """
        outcomes: list[WriteOutcome] = []
        dirty_dirs: set[Path] = set()
        for write in writes:
            try:
                final, size, dirs = self._write_one(write)
            except StorageError as exc:
                outcomes.append(WriteOutcome(None, 0, exc))
                continue
            except PathError as exc:
                outcomes.append(WriteOutcome(None, 0, StorageError(str(exc), status=exc.status)))
                continue
            dirty_dirs.update(dirs)
            outcomes.append(WriteOutcome(final, size))
        try:
            for directory in sorted(dirty_dirs, key=lambda p: len(p.parts), reverse=True):
                fsync_directory(directory)
        except OSError as exc:
            failure = StorageError(f"fsync of directory failed: {exc.strerror}")
            return [WriteOutcome(None, 0, failure) for _ in outcomes]
        return outcomes

    def _write_one(self, write: PendingWrite) -> tuple[Path, int, set[Path]]:
        """Temp file, fsync, rename; return the final path, size and directories to fsync."""
        final = self.final_path(write.relpath)
        dirs = self._make_parents(final.parent)
        if write.spool:
            size = self._adopt_spool(write, final)
            if size is not None:
                dirs.add(final.parent)
                return final, size, dirs
        fd, tmp = self._open_temp(final.name)
        try:
            size = self._fill(fd, write)
            os.fdatasync(fd)
        except (OSError, StorageError) as exc:
            os.close(fd)
            os.unlink(tmp)
            if isinstance(exc, StorageError):
                raise
            raise StorageError(f"writing {final.name} failed: {exc.strerror}") from None
        os.close(fd)
        self._rename(tmp, final)
        # The final directory's fsync makes the rename durable (one journal transaction on
        # ext4 and XFS). The temp directory is not fsynced: at worst a crash leaves the
        # temp name too, and Store.prepare removes it when the writer starts.
        dirs.add(final.parent)
        return final, size, dirs

    def _adopt_spool(self, write: PendingWrite, final: Path) -> int | None:
        """Rename a worker's spool to the final path when it already is the file to store;
        return its size, or None when it must be copied instead.

        A worker spools a large instance as the whole Part 10 file (preamble, the file meta
        we store, the dataset), so copying it into a temp file only to rename that (a second
        copy of every byte, 512 KiB per CT image) is needed only if its head differs from the
        file meta sent with the request. Adopted only from ``.incoming/spool`` (workers' own
        files on this filesystem), a regular file with one link; its bytes are made durable
        before the rename, as a temp file's are, so a final path never names a partial file.
        """
        spool = os.path.normpath(write.spool)
        if not spool.startswith(self._spools + os.sep):
            return None
        try:
            fd = os.open(spool, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            return None  # the copy reports why it cannot read the spool
        try:
            info = os.fstat(fd)
            head = PREAMBLE + b"".join(write.parts)
            if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1 or len(head) != write.spool_offset \
                    or os.pread(fd, len(head), 0) != head:
                return None
            os.fdatasync(fd)
        except OSError as exc:
            raise StorageError(f"cannot make the spooled {final.name} durable: {exc.strerror}") from None
        finally:
            os.close(fd)
        self._rename(Path(spool), final)
        return info.st_size

    def _make_parents(self, parent: Path) -> set[Path]:
        """Create missing parent directories; return the directories whose entries changed."""
        changed: set[Path] = set()
        missing = []
        probe = parent
        while not probe.exists() and probe != self.directory:
            missing.append(probe)
            probe = probe.parent
        for directory in reversed(missing):
            try:
                directory.mkdir(exist_ok=True)
            except OSError as exc:
                raise StorageError(f"cannot create directory {directory}: {exc.strerror}") from None
            changed.add(directory.parent)
        return changed

    def _open_temp(self, name: str) -> tuple[int, Path]:
        """An exclusive new temp file named after the final file (``<name><digits>.part``)."""
        for _ in range(16):
            tmp = self.tmp_dir / f"{name[:200]}{random.getrandbits(40)}.part"
            try:
                return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644), tmp
            except FileExistsError:
                continue
            except OSError as exc:
                raise StorageError(f"cannot create temp file: {exc.strerror}") from None
        raise StorageError("cannot find a free temp file name")

    @staticmethod
    def _fill(fd: int, write: PendingWrite) -> int:
        """Write preamble, parts and spooled bytes; return the file size."""
        size = os.write(fd, PREAMBLE)
        for part in write.parts:
            view = memoryview(part)
            while view:
                n = os.write(fd, view)
                view = view[n:]
                size += n
        if write.spool:
            size += _copy_spool(write.spool, write.spool_offset, fd)
        return size

    def _rename(self, tmp: Path, final: Path) -> None:
        """Atomic rename with dcm4che's retries and jitter; the temp file never stays behind."""
        for attempt in range(self.rename_retries + 1):
            try:
                os.rename(tmp, final)
                return
            except OSError as exc:
                if attempt == self.rename_retries or exc.errno in (errno.EISDIR, errno.ENOTDIR):
                    tmp.unlink(missing_ok=True)
                    raise StorageError(f"rename to {final} failed: {exc.strerror}", status=0x0110) from None
                time.sleep(random.uniform(0, self.rename_retry_jitter_ms / 1000))

    def check_target(self, relpath: str) -> str:
        """The final path of ``relpath`` if a write there can succeed later (the journal's
        instances are materialised after their success was sent): inside the store, not a
        directory, and every existing ancestor a directory.

        One ``lstat`` per component down to the first missing one, which is the walk
        ``final_path`` makes anyway: ``final_path`` then ``isdir`` of the target and of its
        parent were three system calls per small instance in the worker, two of them failing
        (``python -m bench profile``, 2026-12-03: a tenth of a worker's CPU with pathlib's).
        A path with ``..``, an absolute path or a symlink below the root takes that longer
        check, so the answer is always the same."""
        parts = relpath.split(os.sep)
        if _needs_realpath(relpath, parts):
            return self._check_resolved(relpath)
        parts = [part for part in parts if part not in ("", ".")]
        path = self._root
        last = len(parts) - 1
        for n, part in enumerate(parts):
            path = path + os.sep + part
            try:
                mode = os.lstat(path).st_mode
            except OSError:  # missing (or unreadable): nothing below it exists, as realpath sees it
                break
            if stat.S_ISLNK(mode):
                return self._check_resolved(relpath)
            if n < last and not stat.S_ISDIR(mode):
                raise PathError(f"{path} is not a directory")
            if n == last and stat.S_ISDIR(mode):
                raise PathError(f"{path} is a directory")
        return self._inside(os.sep.join([self._root, *parts]), relpath)

    def _check_resolved(self, relpath: str) -> str:
        """``check_target`` through realpath: for paths with ``..`` or symlinks below the root."""
        final = str(self.final_path(relpath))
        if os.path.isdir(final):
            raise PathError(f"{final} is a directory")
        probe = os.path.dirname(final)
        while not os.path.isdir(probe):
            if os.path.lexists(probe):
                raise PathError(f"{probe} is not a directory")
            probe = os.path.dirname(probe)
        return final

    def materialise(
        self, items: Sequence[tuple[Path, int, int, int]], *, obsolete: Sequence[Path] = ()
    ) -> list[StorageError | None]:
        """Copy journaled files to their final paths with two flushes for the whole batch.

        ``items`` are (final path, source fd, offset, length): file bytes in a journal segment.
        Every temp file is filled (``copy_file_range``), then one ``syncfs`` makes all their data durable,
        then each is renamed over its final path and the ``obsolete`` files (replaced by an
        overwrite at another path) are removed, then a second ``syncfs`` makes the renames,
        removals and the parent directories created durable. A final path thus only ever
        names a file whose bytes were on disk before the name was. One error (or None) per item.
        """
        errors: list[StorageError | None] = []
        temps: list[tuple[Path, Path] | None] = []
        present: set[Path] = set()  # directories seen or made in this batch: one stat each, not one per file
        for final, source_fd, offset, length in items:
            try:
                if final.parent not in present:
                    self._make_parents(final.parent)
                    present.add(final.parent)
                fd, tmp = self._open_temp(final.name)
            except StorageError as exc:
                errors.append(exc)
                temps.append(None)
                continue
            try:
                if length < DIRECT_MIN or not self._copy_direct(source_fd, offset, length, fd):
                    _copy_range(source_fd, offset, length, fd)
            except OSError as exc:
                os.close(fd)
                os.unlink(tmp)
                errors.append(StorageError(f"writing {final.name} failed: {exc.strerror}"))
                temps.append(None)
                continue
            os.close(fd)
            errors.append(None)
            temps.append((tmp, final))
        try:
            sync_filesystem(self.tmp_dir)
        except OSError as exc:
            for pair in temps:
                if pair is not None:
                    pair[0].unlink(missing_ok=True)
            return [StorageError(f"syncfs failed: {exc.strerror}")] * len(items)
        for n, pair in enumerate(temps):
            if pair is None:
                continue
            try:
                self._rename(*pair)
            except StorageError as exc:
                errors[n] = exc
        for path in obsolete:
            path.unlink(missing_ok=True)
        try:
            sync_filesystem(self.tmp_dir)
        except OSError as exc:
            return [StorageError(f"syncfs failed: {exc.strerror}")] * len(items)
        return errors

    def _copy_direct(self, source_fd: int, offset: int, length: int, fd: int) -> bool:
        """Copy a large record through one reused buffer, writing with ``O_DIRECT``; False (nothing
        written) where the filesystem refuses direct I/O, for the caller to copy in the kernel.

        Why: a copy through the page cache takes a new page for every 4 KiB of every file, and
        on this kind of virtual machine a page freshly taken from free memory costs a fault in
        the hypervisor on first touch: the kernel's copy of a 512 KiB record was two thirds of
        the materialiser's CPU (``perf record``, docs/benchmarks.md, 2026-12-03 20:25). Direct
        writes go from a buffer that stays mapped. Durability is unchanged: the data is on the
        device when ``write`` returns, and the batch's first ``syncfs`` flushes the device's
        cache and the file's size and extents before any rename, as for a buffered copy. The
        last partial block goes through the page cache (``_copy_range``)."""
        with self._direct_lock:
            flags = fcntl.fcntl(fd, fcntl.F_GETFL)
            try:
                fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_DIRECT)
            except OSError:
                return False
            if self._direct_buffer is None:
                self._direct_buffer = mmap.mmap(-1, _DIRECT_CHUNK)  # page-aligned, as O_DIRECT needs
            view = memoryview(self._direct_buffer)
            done = 0
            try:
                while length - done >= _DIRECT_ALIGN:
                    n = min(_DIRECT_CHUNK, (length - done) // _DIRECT_ALIGN * _DIRECT_ALIGN)
                    _read_exact(source_fd, view[:n], offset + done)
                    try:
                        written = os.write(fd, view[:n])
                    except OSError as exc:
                        if done == 0 and exc.errno == errno.EINVAL:  # alignment refused: nothing written yet
                            return False
                        raise
                    if written != n:
                        raise OSError(errno.EIO, f"short direct write ({written} of {n} bytes)")
                    done += n
            finally:
                view.release()
                fcntl.fcntl(fd, fcntl.F_SETFL, flags)
            if done < length:
                _copy_range(source_fd, offset + done, length - done, fd)
            return True

    def remove(self, path: Path) -> None:
        """Remove a file that an overwrite made obsolete (its directory is fsynced)."""
        try:
            path.unlink()
            fsync_directory(path.parent)
        except FileNotFoundError:
            pass


def _needs_realpath(relpath: str, parts: list[str]) -> bool:
    """An absolute path, ``..`` or another separator: only realpath's own walk resolves it."""
    return os.path.isabs(relpath) or ".." in parts or bool(os.altsep and os.altsep in relpath)


def _copy_spool(spool: str, offset: int, fd: int) -> int:
    """Copy the spooled dataset into the temp file in the kernel (no user-space buffer)."""
    copied = 0
    try:
        with open(spool, "rb") as src:
            remaining = os.fstat(src.fileno()).st_size - offset
            src_offset = offset
            while remaining > 0:
                n = os.copy_file_range(src.fileno(), fd, min(remaining, _COPY_CHUNK), src_offset)
                if n == 0:
                    break
                src_offset += n
                remaining -= n
                copied += n
    except OSError as exc:
        raise StorageError(f"cannot read spooled dataset: {exc.strerror}") from None
    return copied


def _copy_range(source_fd: int, offset: int, length: int, fd: int) -> None:
    """Copy ``length`` bytes at ``offset`` of ``source_fd`` to the end of ``fd``, in the kernel."""
    while length > 0:
        n = os.copy_file_range(source_fd, fd, min(length, _COPY_CHUNK), offset)
        if n == 0:
            raise OSError(errno.EIO, "journal shorter than its record")
        offset += n
        length -= n


_libc = ctypes.CDLL(None, use_errno=True)


def _read_exact(source_fd: int, into: memoryview, offset: int) -> None:
    """Fill ``into`` from ``source_fd`` at ``offset`` (a journal segment: short only if truncated)."""
    got = 0
    while got < len(into):
        n = os.preadv(source_fd, [into[got:]], offset + got)
        if n == 0:
            raise OSError(errno.EIO, "journal shorter than its record")
        got += n


def sync_filesystem(directory: Path) -> None:
    """syncfs(2) on the filesystem holding ``directory``: every dirty page and pending journal
    transaction of that filesystem reaches the disk (one flush for many files)."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if _libc.syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
    finally:
        os.close(fd)


def fsync_directory(directory: Path) -> None:
    """fsync a directory so that renames and creations in it survive a crash."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
