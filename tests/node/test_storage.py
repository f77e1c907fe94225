"""The store: complete files at final paths only, nothing left behind on failure."""

from __future__ import annotations

import errno
import fcntl
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from node import storage
from node.errors import PathError
from node.storage import PREAMBLE, PendingWrite, Store


def make_store(tmp_path: Path) -> Store:
    store = Store(tmp_path / "store")
    store.prepare()
    return store


def visible_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and ".incoming" not in p.parts)


def test_inline_write_lands_complete_at_its_path(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    [outcome] = store.commit([PendingWrite("a/b/c.dcm", [b"META", b"DATA"])])
    assert outcome.error is None
    assert outcome.path == store.directory / "a/b/c.dcm"
    assert outcome.path.read_bytes() == PREAMBLE + b"METADATA"
    assert list(store.tmp_dir.iterdir()) == []


def test_spooled_write_copies_from_the_offset(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    spool = tmp_path / "spool.bin"
    spool.write_bytes(b"OLDMETA" + b"x" * 100_000)
    [outcome] = store.commit([PendingWrite("big", [b"NEWMETA"], spool=str(spool), spool_offset=7)])
    assert outcome.path.read_bytes() == PREAMBLE + b"NEWMETA" + b"x" * 100_000


def test_existing_file_is_replaced(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    store.commit([PendingWrite("same", [b"one"])])
    store.commit([PendingWrite("same", [b"two"])])
    assert (store.directory / "same").read_bytes() == PREAMBLE + b"two"


def test_group_commit_reports_each_write(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    outcomes = store.commit([PendingWrite(f"s/{i}", [str(i).encode()]) for i in range(10)])
    assert all(o.error is None for o in outcomes)
    assert visible_files(store.directory) == sorted(f"s/{i}" for i in range(10))


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_read_only_target_fails_and_leaves_no_temp_file(tmp_path: Path) -> None:  # pragma: no cover - root here
    store = make_store(tmp_path)
    ro = store.directory / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    [outcome] = store.commit([PendingWrite("ro/x", [b"x"])])
    assert outcome.error is not None and outcome.error.status == 0x0110
    assert list(store.tmp_dir.iterdir()) == []


def test_target_that_is_a_directory_fails_with_processing_failure(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    (store.directory / "taken" / "sub").mkdir(parents=True)
    [outcome] = store.commit([PendingWrite("taken", [b"x"])])
    assert outcome.error is not None and outcome.error.status == 0x0110
    assert list(store.tmp_dir.iterdir()) == []


def worker_spool(store: Store, head: bytes, data: bytes) -> Path:
    """A spool where a worker writes one: ``.incoming/spool/<worker>/``."""
    directory = store.directory / ".incoming" / "spool" / "worker-0"
    directory.mkdir(parents=True, exist_ok=True)
    spool = directory / "a-1.dcm"
    spool.write_bytes(head + data)
    return spool


def test_a_workers_spool_that_is_the_file_becomes_it_without_a_copy(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    data = os.urandom(300_000)
    spool = worker_spool(store, PREAMBLE + b"META", data)
    inode = spool.stat().st_ino
    [outcome] = store.commit([PendingWrite("s/big.dcm", [b"META"], spool=str(spool), spool_offset=len(PREAMBLE) + 4)])
    assert outcome.error is None and outcome.size == len(PREAMBLE) + 4 + len(data)
    assert outcome.path.read_bytes() == PREAMBLE + b"META" + data
    assert outcome.path.stat().st_ino == inode  # renamed, not copied
    assert not spool.exists() and list(store.tmp_dir.iterdir()) == []


def test_a_workers_spool_with_other_file_meta_is_copied(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    spool = worker_spool(store, PREAMBLE + b"OLDMETA", b"x" * 100_000)
    [outcome] = store.commit([PendingWrite("big", [b"NEWMETA"], spool=str(spool), spool_offset=len(PREAMBLE) + 7)])
    assert outcome.path.read_bytes() == PREAMBLE + b"NEWMETA" + b"x" * 100_000
    assert spool.read_bytes() == PREAMBLE + b"OLDMETA" + b"x" * 100_000


def test_a_spool_outside_the_workers_directory_is_copied_never_moved(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    spool = tmp_path / "elsewhere.dcm"
    spool.write_bytes(PREAMBLE + b"META" + b"y" * 1000)
    [outcome] = store.commit([PendingWrite("c", [b"META"], spool=str(spool), spool_offset=len(PREAMBLE) + 4)])
    assert outcome.path.read_bytes() == spool.read_bytes()
    assert outcome.path.stat().st_ino != spool.stat().st_ino


def test_a_symlink_in_the_workers_directory_is_copied_never_moved(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    target = tmp_path / "target.dcm"
    target.write_bytes(PREAMBLE + b"META" + b"z" * 1000)
    link = worker_spool(store, b"", b"")
    link.unlink()
    link.symlink_to(target)
    [outcome] = store.commit([PendingWrite("d", [b"META"], spool=str(link), spool_offset=len(PREAMBLE) + 4)])
    assert not outcome.path.is_symlink() and outcome.path.read_bytes() == target.read_bytes()
    assert target.exists()


def test_a_missing_spool_fails_without_leftovers(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    [outcome] = store.commit([PendingWrite("x", [b"m"], spool=str(tmp_path / "gone"))])
    assert outcome.error is not None
    assert visible_files(store.directory) == []
    assert list(store.tmp_dir.iterdir()) == []


@pytest.mark.parametrize("relpath", ["../escape", "a/../../escape", ".incoming/tmp/x", "/../../etc/passwd"])
def test_paths_outside_the_store_are_refused(tmp_path: Path, relpath: str) -> None:
    store = make_store(tmp_path)
    with pytest.raises(PathError):
        store.final_path(relpath)
    [outcome] = store.commit([PendingWrite(relpath, [b"x"])])
    assert outcome.error is not None
    assert not (tmp_path / "escape").exists()


def test_prepare_removes_temp_files_left_by_a_crash(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    (store.tmp_dir / "1.2.3123.part").write_bytes(b"half")
    assert Store(store.directory).prepare() == 1
    assert list(store.tmp_dir.iterdir()) == []


RESOLVE_CASES = ["x", "a/x", "a/b/x", "a/b", "f/x", "out/x", "in/x", "in/lb/y", "a/lb/../x", "a/./b//x", "./x", "x/.",
                 "a/", "nope/deeper/x", "a/../../x", "out", "in", "in/lb"]


def _store_with_links(tmp_path: Path) -> Store:
    """A store holding directories a/b, a file f, and symlinks out of it (out), inside it (in)
    and relative below the root (a/lb)."""
    store = Store(tmp_path / "store")
    store.prepare()
    (tmp_path / "store" / "a" / "b").mkdir(parents=True)
    (tmp_path / "store" / "f").write_text("a file")
    os.symlink(tmp_path, tmp_path / "store" / "out")
    os.symlink("a", tmp_path / "store" / "in")
    os.symlink("b", tmp_path / "store" / "a" / "lb")
    return store


@pytest.mark.parametrize("relpath", RESOLVE_CASES)
def test_final_paths_resolve_as_realpath_does(tmp_path: Path, relpath: str) -> None:
    """The writer's short resolve (lstat below the root only) gives realpath's answer, through
    symlinks inside the store, out of it, relative ones, ``..`` and paths under a file."""
    store = _store_with_links(tmp_path)
    assert store._resolve(relpath) == os.path.realpath(os.path.join(store._root, relpath))


def _answer(check: Callable[[str], str], relpath: str) -> str:
    try:
        return check(relpath)
    except PathError as exc:
        return f"refused: {exc}"


@pytest.mark.parametrize("relpath", [*RESOLVE_CASES, "a", "a/b", "f/x", "a/b/new.dcm", "in/b/new.dcm", "out/x", ""])
def test_check_target_answers_as_the_check_through_realpath(tmp_path: Path, relpath: str) -> None:
    """The worker's one walk of lstats refuses, or accepts at the same path, exactly what the
    check through realpath and isdir does: directories, paths under a file, symlinks out."""
    store = _store_with_links(tmp_path)
    assert _answer(store.check_target, relpath) == _answer(store._check_resolved, relpath)


def _journal_like(tmp_path: Path, records: list[bytes], skew: int = 123) -> tuple[Path, list[int]]:
    """A file holding ``records`` one after the other from an unaligned offset, as a journal
    segment holds them; their offsets."""
    path = tmp_path / "segment"
    offsets, blob = [], bytearray(b"h" * skew)
    for data in records:
        offsets.append(len(blob))
        blob += data
    path.write_bytes(bytes(blob))
    return path, offsets


@pytest.mark.parametrize("length", [
    1000, storage.DIRECT_MIN, storage.DIRECT_MIN + 1234, 2 * storage._DIRECT_CHUNK + 777,
])
def test_materialised_records_are_byte_identical_small_or_direct(tmp_path: Path, length: int) -> None:
    store = make_store(tmp_path)
    records = [os.urandom(length), os.urandom(length)]
    segment, offsets = _journal_like(tmp_path, records)
    fd = os.open(segment, os.O_RDONLY)
    try:
        errors = store.materialise([(store.directory / f"d/{n}", fd, off, length) for n, off in enumerate(offsets)])
    finally:
        os.close(fd)
    assert errors == [None, None]
    assert [(store.directory / f"d/{n}").read_bytes() for n in range(2)] == records
    assert list(store.tmp_dir.iterdir()) == []


def test_a_large_record_goes_by_direct_io_where_the_filesystem_takes_it(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    data = os.urandom(storage.DIRECT_MIN + 5)
    segment, [offset] = _journal_like(tmp_path, [data])
    src, (dst, tmp) = os.open(segment, os.O_RDONLY), store._open_temp("probe")
    try:
        try:
            os.close(os.open(store.tmp_dir / "odirect-probe", os.O_WRONLY | os.O_CREAT | os.O_DIRECT, 0o644))
        except OSError:
            pytest.skip("this filesystem refuses O_DIRECT")
        assert store._copy_direct(src, offset, len(data), dst) is True
        assert not fcntl.fcntl(dst, fcntl.F_GETFL) & os.O_DIRECT  # the descriptor's flags as they were
    finally:
        os.close(src)
        os.close(dst)
    assert tmp.read_bytes() == data


def test_where_direct_io_is_refused_the_copy_goes_through_the_kernel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A filesystem without O_DIRECT (some FUSE or network ones) refuses the flag: same bytes."""
    real = fcntl.fcntl

    def no_direct(fd: int, cmd: int, arg: int = 0) -> int:
        if cmd == fcntl.F_SETFL and arg & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real(fd, cmd, arg)

    monkeypatch.setattr(storage.fcntl, "fcntl", no_direct)
    store = make_store(tmp_path)
    data = os.urandom(storage.DIRECT_MIN + 77)
    segment, [offset] = _journal_like(tmp_path, [data])
    fd = os.open(segment, os.O_RDONLY)
    try:
        assert store.materialise([(store.directory / "x", fd, offset, len(data))]) == [None]
    finally:
        os.close(fd)
    assert (store.directory / "x").read_bytes() == data


def test_a_record_cut_short_by_the_journals_end_leaves_nothing(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    data = os.urandom(storage.DIRECT_MIN * 2)
    segment, [offset] = _journal_like(tmp_path, [data])
    fd = os.open(segment, os.O_RDONLY)
    try:
        [error] = store.materialise([(store.directory / "cut", fd, offset, len(data) + storage.DIRECT_MIN)])
    finally:
        os.close(fd)
    assert error is not None and "journal shorter than its record" in str(error)
    assert not (store.directory / "cut").exists()
    assert list(store.tmp_dir.iterdir()) == []
