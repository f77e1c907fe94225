"""The writer's journal seen from outside (issue 12): a node whose materialiser is held back
(``store.materialise_interval`` and ``materialise_idle`` 60 s), so acknowledged instances stay in the journal, not yet
at their final paths, while the test checks what must still hold:

* a Storage Commitment request finds them (the tracker waits for the writer's ``SyncStore``);
* duplicate policies see them (``reject`` answers 0x0111, ``keep`` 0x0000 with one file);
* ``nodectl status`` shows the backlog; SIGTERM materialises it before the node stops;
* SIGKILL of the writer: the restarted writer materialises them from the journal.

The materialiser's first batch is not held back (nothing came before it), so each test first
stores one instance of its own to use it up.

Also here: the order of flush and success seen in the system calls (strace), and, in one
process without sockets, the journal going back to its head lap after lap and a writer
killed with instances still unmaterialised (the later copy of an instance sent twice must win
the replay).
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import psutil
import pytest
from pydicom import dcmread

from tests.nodes import RunningNode, serve
from tests.support import (
    NODECTL, dataset_bytes, free_port, have, make_ct, mount_tmpfs, start_process, stop_process, wait_for_port, wait_until,
)

pytestmark = pytest.mark.skipif(not have("/usr/bin/storescu"), reason="DCMTK not installed")
DUPLICATE_REJECTED = 0x0111


def _node(tmp_path: Path, policy: str = "overwrite") -> RunningNode:
    (tmp_path / "node.toml").write_text(f'[store]\nduplicates = "{policy}"\nmaterialise_interval = 60.0\nmaterialise_idle = 60.0\n')
    node = serve(tmp_path, "--config", str(tmp_path / "node.toml"), workers=1)
    if policy == "overwrite":  # the worker journals instances itself once the writer adopted its journal
        wait_until(lambda: "journal-worker-0 adopted" in node.log(), 30, "the writer adopted the worker's journal")
    first = make_ct(tmp_path / "in" / "first.dcm")
    assert _store(node, tmp_path / "in" / "first.dcm") == 0
    wait_until(lambda: _indexed(tmp_path, first.SOPInstanceUID), 20, "the first instance materialised")
    return node


def _store(node: RunningNode, path: Path) -> int | None:
    """C-STORE one file with pynetdicom; the status, or None without one."""
    from pynetdicom import AE
    from pynetdicom.sop_class import CTImageStorage

    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(CTImageStorage, dcmread(path).file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", node.port, ae_title="NODE")
    assert assoc.is_established
    try:
        status = assoc.send_c_store(path)
        return int(status.Status) if status and "Status" in status else None
    finally:
        assoc.release()


def _indexed(tmp_path: Path, uid: str) -> str | None:
    with sqlite3.connect(tmp_path / "node.sqlite") as db:
        row = db.execute("SELECT path FROM instances WHERE sop_instance_uid = ?", (uid,)).fetchone()
    return row[0] if row else None


def _files(tmp_path: Path) -> list[Path]:
    store = tmp_path / "store"
    return [p for p in store.rglob("*") if p.is_file() and ".incoming" not in p.relative_to(store).parts]


def _status(tmp_path: Path) -> dict:
    result = subprocess.run([*NODECTL, "status", "--json", "--config", str(tmp_path / "node.toml")],
                            capture_output=True, text=True, timeout=30, cwd=tmp_path)
    return json.loads(result.stdout)


def test_commitment_finds_instances_acknowledged_but_not_yet_materialised(tmp_path: Path) -> None:
    node = _node(tmp_path)
    try:
        ds = make_ct(tmp_path / "in" / "held.dcm")
        assert _store(node, tmp_path / "in" / "held.dcm") == 0
        assert _indexed(tmp_path, ds.SOPInstanceUID) is None, "materialised at once: the test holds nothing back"
        out = tmp_path / "out"
        out.mkdir()
        result = subprocess.run([*NODECTL, "stcomscu", "-aec", "NODE", "-od", str(out), "+tuf", str(out / "tx.txt"), "-te", "20",
                                 "127.0.0.1", str(node.port), str(tmp_path / "in" / "held.dcm")],
                                capture_output=True, text=True, timeout=60, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        uid = (out / "tx.txt").read_text().strip()
        report = dcmread(out / f"{uid}.rsp.OK.dcm")
        assert [r.ReferencedSOPInstanceUID for r in report.ReferencedSOPSequence] == [ds.SOPInstanceUID]
        assert "FailedSOPSequence" not in report
        path = _indexed(tmp_path, ds.SOPInstanceUID)
        assert path is not None and dataset_bytes(Path(path)) == dataset_bytes(tmp_path / "in" / "held.dcm")
    finally:
        node.stop()


@pytest.mark.parametrize("policy", ["reject", "keep"])
def test_duplicate_policies_see_instances_still_in_the_journal(tmp_path: Path, policy: str) -> None:
    node = _node(tmp_path, policy)
    try:
        ds = make_ct(tmp_path / "in" / "dup.dcm")
        assert _store(node, tmp_path / "in" / "dup.dcm") == 0
        assert _indexed(tmp_path, ds.SOPInstanceUID) is None
        again = _store(node, tmp_path / "in" / "dup.dcm")
        assert again == (DUPLICATE_REJECTED if policy == "reject" else 0)
    finally:
        assert node.stop() == 0
    assert _indexed(tmp_path, ds.SOPInstanceUID) is not None
    assert len(_files(tmp_path)) == 2  # the first instance and this one, once


def test_status_shows_the_backlog_and_sigterm_materialises_it(tmp_path: Path) -> None:
    node = _node(tmp_path)
    sent = []
    try:
        for n in range(3):
            make_ct(tmp_path / "in" / f"b{n}.dcm")
            assert _store(node, tmp_path / "in" / f"b{n}.dcm") == 0
            sent.append(tmp_path / "in" / f"b{n}.dcm")
        status = _status(tmp_path)
        assert status["journal"]["enabled"] is True
        assert status["journal"]["instances"] == 3, status["journal"]
    finally:
        assert node.stop() == 0
    for path in sent:
        stored = _indexed(tmp_path, dcmread(path).SOPInstanceUID)
        assert stored is not None and dataset_bytes(Path(stored)) == dataset_bytes(path)


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_the_materialiser_runs_beside_the_writer_at_a_lower_priority_and_dies_with_it(tmp_path: Path) -> None:
    """What ``ps`` shows an operator: one materialiser process, a child of the writer, niced
    below it and in a session of its own (a SIGTERM to the node's group reaches the writer,
    which has it finish the backlog); SIGKILL of the writer takes it down too, and the
    restarted writer starts a new one. Nothing of it is left once the node stopped."""
    node = _node(tmp_path)
    try:
        (writer,) = node.children("run writer")
        (child,) = node.children("actors.materialiser")
        assert child.ppid() == writer.pid
        assert child.nice() > writer.nice()
        assert os.getsid(child.pid) == child.pid != os.getsid(writer.pid)
        os.kill(writer.pid, signal.SIGKILL)
        wait_until(lambda: not _alive(child.pid), 10, "the killed writer's materialiser gone")
        wait_until(lambda: [p.pid for p in node.children("actors.materialiser")] not in ([], [child.pid]), 30,
                   "the restarted writer's materialiser")
        (again,) = node.children("actors.materialiser")
        ds = make_ct(tmp_path / "in" / "after.dcm")
        assert _store(node, tmp_path / "in" / "after.dcm") == 0
    finally:
        assert node.stop() == 0
    assert not _alive(again.pid) and not node.leftover
    stored = _indexed(tmp_path, ds.SOPInstanceUID)
    assert stored is not None and dataset_bytes(Path(stored)) == dataset_bytes(tmp_path / "in" / "after.dcm")


@pytest.mark.parametrize("victim", ["run writer", "actors.materialiser"])
def test_a_killed_writer_or_materialiser_leaves_the_journal_to_the_restarted_writer(tmp_path: Path, victim: str) -> None:
    """SIGKILL of the writer, or of its materialiser, while an acknowledged instance waits in
    the journal: the writer is gone (a dead materialiser makes it exit without waiting for its
    next batch), supervisord restarts it, and its replay puts the instance at its final path
    and in the index."""
    node = _node(tmp_path)
    try:
        path = tmp_path / "in" / "k.dcm"
        ds = make_ct(path)
        assert _store(node, path) == 0
        assert _indexed(tmp_path, ds.SOPInstanceUID) is None
        (writer,) = node.children("run writer")
        (killed,) = node.children(victim)
        os.kill(killed.pid, signal.SIGKILL)
        wait_until(lambda: _indexed(tmp_path, ds.SOPInstanceUID) is not None, 30, "the restarted writer replayed the journal")
        assert not _alive(writer.pid)
        assert dataset_bytes(Path(_indexed(tmp_path, ds.SOPInstanceUID))) == dataset_bytes(path)
        # The writer logs its replay just after the index commit the wait above saw.
        wait_until(lambda: "materialised 1 acknowledged instance(s)" in node.log(), 10, "the replay's line")
        if victim == "actors.materialiser":
            assert "the materialiser process ended" in node.log()
    finally:
        node.stop()


# ----- ordering, from the system calls -------------------------------------------------------------

_SYSCALL = re.compile(r"^(\d+)\s+(\d+\.\d+) (?:<\.\.\. (\w+) resumed>|(\w+)\()(.*)$")
_FLUSHES = ("fsync", "fdatasync", "syncfs")


def _parse_trace(text: str) -> list[tuple[int, str, float, float, str]]:
    """(pid, syscall, entry time, return time, arguments text) from ``strace -f -ttt -T``."""
    calls = []
    unfinished: dict[int, tuple[str, float, str]] = {}
    for line in text.splitlines():
        m = _SYSCALL.match(line)
        if not m:
            continue
        pid, ts, resumed, name, rest = int(m[1]), float(m[2]), m[3], m[4], m[5]
        if rest.endswith(" <unfinished ...>"):
            unfinished[pid] = (name, ts, rest[: -len(" <unfinished ...>")])
            continue
        duration = re.search(r"<(\d+\.\d+)>$", rest)
        if resumed:
            if pid not in unfinished:
                continue
            name, ts, head = unfinished.pop(pid)
            rest = head + rest
        calls.append((pid, name, ts, ts + (float(duration[1]) if duration else 0.0), rest))
    return calls


@pytest.mark.skipif(not have("strace"), reason="strace not installed (bash .ci/run installs it)")
def test_every_success_leaves_after_the_flush_that_covers_it(tmp_path: Path) -> None:
    """strace the whole node while two DCMTK storescu store 40 instances each: for every
    instance, the journal write that holds it (a worker's journal once the writer adopted it,
    else the writer's), the first flush of that journal after it in the same thread, and the
    worker's C-STORE-RSP; the flush returned before the response was sent (a write with
    RWF_DSYNC is its own flush). Also counts the node's flushes (fsync, fdatasync, syncfs,
    RWF_DSYNC writes) per acknowledged instance."""
    sent: dict[str, Path] = {}
    for sender in range(2):
        for n in range(40):
            path = tmp_path / f"in{sender}" / f"{n}.dcm"
            sent[make_ct(path, pixels=32).SOPInstanceUID] = path
    port = free_port()
    trace = tmp_path / "trace"
    cmd = ["strace", "-f", "-qq", "--seccomp-bpf", "-ttt", "-T", "-s", "256", "-o", str(trace),
           "-e", "trace=pwritev,pwritev2,fsync,fdatasync,syncfs,sendto,sendmsg,write",
           *NODECTL, "serve", "--port", str(port), "--aet", "NODE", "--workers", "2"]
    strace = start_process(cmd, cwd=tmp_path, log=tmp_path / "node.log")
    try:
        wait_for_port(port, timeout=60)
        senders = [start_process(["/usr/bin/storescu", "-aec", "NODE", "127.0.0.1", str(port), *map(str, sorted((tmp_path / f"in{s}").iterdir()))],
                                 cwd=tmp_path, env={**os.environ, "TCP_NODELAY": "1"}, log=tmp_path / f"storescu{s}.log") for s in range(2)]
        assert [p.wait(timeout=120) for p in senders] == [0, 0]
    finally:
        nodectl = psutil.Process(strace.pid).children()
        for child in nodectl:  # SIGTERM nodectl itself (strace would only detach), then strace ends
            os.kill(child.pid, signal.SIGTERM)
        assert stop_process(strace, grace=60) == 0
    calls = _parse_trace(trace.read_text(errors="replace"))
    journal_fd: dict[int, str] = {}  # writer thread -> journal fd
    written: dict[str, tuple[int, str, float]] = {}  # uid -> (thread, fd, entry of its journal write)
    responses: dict[str, float] = {}
    # (thread, fd, entry, return) of every flush: fsync, fdatasync, syncfs, and a journal
    # write with RWF_DSYNC, which flushes what it wrote before it returns.
    flushes = [(pid, rest.split(")", 1)[0], entry, ret) for pid, name, entry, ret, rest in calls if name in _FLUSHES]
    flushes += [(pid, rest.split(",", 1)[0], entry, ret) for pid, name, entry, ret, rest in calls if name == "pwritev2" and "RWF_DSYNC" in rest]
    for pid, name, entry, _ret, rest in calls:
        if name.startswith("pwritev") and "NJR1" in rest:
            fd = rest.split(",", 1)[0]
            journal_fd[pid] = fd
            for uid in sent:
                if uid in rest:
                    written[uid] = (pid, fd, entry)
        elif name == "sendto" and re.match(r'\d+, "\\4\\0', rest):  # a P-DATA-TF PDU on the peer's socket
            for uid in sent:
                if uid in rest:
                    responses.setdefault(uid, entry)
    assert set(written) == set(sent), f"{len(sent) - len(written)} instance(s) not seen in a journal write"
    assert set(responses) == set(sent), f"{len(sent) - len(responses)} C-STORE-RSP(s) not seen"
    for uid, (pid, fd, wrote) in written.items():
        covering = [ret for fpid, ffd, entry, ret in flushes if fpid == pid and ffd == fd and entry >= wrote]
        assert covering, f"{uid}: no flush of the journal after its write"
        assert min(covering) < responses[uid], f"{uid}: C-STORE-RSP sent before the flush covering it returned"
    start = min(entry for _pid, _fd, entry in written.values())
    per_instance = len([f for f in flushes if f[2] >= start]) / len(sent)
    print(f"flushes per acknowledged instance (2 associations, 80 instances, until the node stopped): {per_instance:.2f}")
    assert per_instance <= 1.5
    for uid, path in sent.items():
        stored = _indexed(tmp_path, uid)
        assert stored is not None and dataset_bytes(Path(stored)) == dataset_bytes(path)


# ----- the journal's laps and the replay, in one process (no sockets) ----------------------------


def _requests(tmp_path: Path, count: int, start: int = 0, uid: str | None = None) -> list:
    """WriteInstance requests as the writer's loop receives them (header, body, meta, dataset)."""
    from actors.writer import _Request
    from node.messages import WriteInstance, pack, unpack

    out = []
    for n in range(start, start + count):
        path = tmp_path / "in" / f"j{n}.dcm"
        ds = make_ct(path, pixels=32 if uid is None else 16, sop_instance_uid=uid)
        blob = path.read_bytes()
        meta_len = len(blob) - 128 - len(dataset_bytes(path))
        msg = WriteInstance(assoc_id="t", relpath=f"lap/{ds.SOPInstanceUID}", sop_class_uid=ds.SOPClassUID,
                            sop_instance_uid=ds.SOPInstanceUID, transfer_syntax=ds.file_meta.TransferSyntaxUID,
                            calling_aet="T", called_aet="NODE")
        frames = pack(msg, sender="test", data=[blob[132:128 + meta_len], blob[128 + meta_len:]])  # after "DICM"
        out.append((_Request([b"t"], unpack([bytes(f) for f in frames])), path))
    return out


def _journal_then_die(tmp_path: Path, lap_bytes: int) -> None:
    """In a child: a writer with small laps journals instances, the last ones held back, then
    the process ends without closing anything (as after SIGKILL)."""
    from actors import writer
    from node.config import NodeConfig, StoreConfig

    writer.LAP_BYTES = lap_bytes
    config = NodeConfig(directory=tmp_path / "store", database=str(tmp_path / "index.sqlite"), run_dir=tmp_path / "run",
                        store=StoreConfig(materialise_interval=0.0, materialise_idle=0.0))
    w = writer.Writer(config)
    w.prepare()
    laps, offset = 0, 0
    for req, _path in _requests(tmp_path, 30):
        assert [m.kind for _i, m, _c in w.handle([req])] == ["instance.written"]
        laps += w.journal.offset < offset  # the record went to the journal's head again
        offset = w.journal.offset
        w._barrier()  # everything materialised, so that the next append may start a new lap
    (tmp_path / "laps").write_text(str(laps))
    w.interval = w.idle = 3600.0  # from here on nothing is materialised before the "crash"
    held = _requests(tmp_path, 5, start=30)
    again = dcmread(held[0][1]).SOPInstanceUID  # sent again with other pixels: the later copy must win
    for req, _path in held + _requests(tmp_path, 1, start=35, uid=again):
        assert [m.kind for _i, m, _c in w.handle([req])] == ["instance.written"]
    assert w.backlog >= 5
    os._exit(0)


def _replayed_after(tmp_path: Path, child_work, *args):
    """Run ``child_work(tmp_path, *args)`` in a forked child that ends as after SIGKILL; then
    a new writer on the same store replays its journal: the writer and the index's paths."""
    import multiprocessing

    from actors import writer
    from node.config import NodeConfig

    child = multiprocessing.get_context("fork").Process(target=child_work, args=(tmp_path, *args))
    child.start()
    child.join(60)
    assert child.exitcode == 0
    config = NodeConfig(directory=tmp_path / "store", database=str(tmp_path / "index.sqlite"), run_dir=tmp_path / "run")
    w = writer.Writer(config)
    w.prepare()  # the replay
    with sqlite3.connect(tmp_path / "index.sqlite") as db:
        rows = dict(db.execute("SELECT sop_instance_uid, path FROM instances").fetchall())
    return w, rows


def test_laps_restart_and_a_killed_writer_replays_what_it_acknowledged(tmp_path: Path) -> None:
    w, rows = _replayed_after(tmp_path, _journal_then_die, 8 * 1024)
    assert int((tmp_path / "laps").read_text()) >= 5  # the journal went back to its head again and again
    try:
        last: dict[str, Path] = {}  # the copy acknowledged last, per SOP Instance UID
        for n in range(36):
            path = tmp_path / "in" / f"j{n}.dcm"
            last[dcmread(path).SOPInstanceUID] = path
        assert len(last) == 35
        for uid, path in last.items():
            assert uid in rows, f"{path.name} acknowledged, not indexed after the replay"
            assert dataset_bytes(Path(rows[uid])) == dataset_bytes(path), path.name
        assert not list((tmp_path / "store" / ".incoming" / "tmp").iterdir())
        assert w.journal.next_seq > 1 << 32  # the new lap starts far above the old numbers
    finally:
        w.close()



class _HeldMaterialiser:
    """Holds each of the writer's materialise batches until the test lets it go, so that the
    test decides what the materialiser's queue holds at every append."""

    def __init__(self, w) -> None:
        self.real = w._materialise
        self.entered: list[Path] = []  # the last final path of each batch that came in
        self.tokens = threading.Semaphore(0)
        self.released = 0
        w._materialise = self

    def __call__(self, batch):
        self.entered.append(Path(batch[-1].body["path"]))
        self.tokens.acquire(timeout=60)
        return self.real(batch)

    def release(self) -> None:
        self.released += 1
        self.tokens.release()

    def holding(self, final: Path) -> bool:
        """The materialiser waits here with a batch that ends with ``final``."""
        return len(self.entered) > self.released and self.entered[-1] == final

    def open_for_good(self) -> None:
        for _ in range(1000):
            self.tokens.release()


def _writer_with_small_laps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, lap_bytes: int):
    from actors import writer
    from node.config import NodeConfig, StoreConfig

    monkeypatch.setattr(writer, "LAP_BYTES", lap_bytes)
    config = NodeConfig(directory=tmp_path / "store", database=str(tmp_path / "index.sqlite"), run_dir=tmp_path / "run",
                        store=StoreConfig(materialise_interval=0.0, materialise_idle=0.0))
    w = writer.Writer(config)
    w.prepare()
    return w


def test_a_steady_stream_goes_on_in_the_other_segment_without_waiting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The materialiser never runs dry: at every append it still holds the previous instance.
    The journal goes on at the head of its other segment lap after lap, each segment never
    past the lap size by more than one record, and no append waits; in the end every instance
    is at its final path with its bytes and in the index. (One file could go back to its head
    only with the queue empty: here it grew with every instance.)"""
    w = _writer_with_small_laps(tmp_path, monkeypatch, 12 * 1024)
    held = _HeldMaterialiser(w)
    sent = _requests(tmp_path, 40)
    largest, switches, segment, longest_append = 0, 0, w.journal.current, 0.0
    try:
        for n, (req, path) in enumerate(sent):
            with w.cond:
                assert n == 0 or w.queue, "the materialiser ran dry"
            started = time.monotonic()
            assert [m.kind for _i, m, _c in w.handle([req])] == ["instance.written"]
            longest_append = max(longest_append, time.monotonic() - started)
            largest = max(largest, w.journal.offset)
            switches += w.journal.current != segment
            segment = w.journal.current
            if n:
                held.release()  # the batch holding the previous instance goes on
            final = w.store.final_path(req.message.relpath)
            wait_until(lambda: held.holding(final), 30, f"the materialiser holding instance {n}")
        record = max(len(path.read_bytes()) for _req, path in sent) + 1024
        assert switches >= 4, f"{switches} switch(es) of segment for {len(sent)} instances"
        assert largest <= 12 * 1024 + record
        assert longest_append < 5.0, "an append waited for the materialiser"
    finally:
        held.open_for_good()
        w._barrier()
        w.close()
    with sqlite3.connect(tmp_path / "index.sqlite") as db:
        rows = dict(db.execute("SELECT sop_instance_uid, path FROM instances").fetchall())
    for req, path in sent:
        assert dataset_bytes(Path(rows[req.message.sop_instance_uid])) == dataset_bytes(path), path.name


def test_a_whole_batch_waiting_is_materialised_before_the_interval(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A stream of large instances does not pile up in the journal for ``materialise_interval``:
    once more than one batch's bytes wait, a batch goes at once, never above the byte cap; what
    is left (one batch or less) waits for the interval, so that small instances share a batch's
    flushes."""
    from actors import writer

    w = _writer_with_small_laps(tmp_path, monkeypatch, 64 << 20)  # laps are not under test
    sent = _requests(tmp_path, 10)
    records = []
    try:
        assert [m.kind for _i, m, _c in w.handle([sent[0][0]])] == ["instance.written"]
        w._barrier()  # the first batch, which never waits
        w.interval = w.idle = 3600.0
        size = max(path.stat().st_size for _req, path in sent)  # above each record's data, not 4/3 of it
        monkeypatch.setattr(writer, "MATERIALISE_BATCH_BYTES", 3 * size)
        real = w._materialise
        w._materialise = lambda batch: (records.append([r.data_length for r in batch]), real(batch))[1]
        for req, _path in sent[1:]:
            assert [m.kind for _i, m, _c in w.handle([req])] == ["instance.written"]
        wait_until(lambda: w.backlog <= 3, 30, "two batches materialised without waiting for the interval")
        time.sleep(0.5)  # ten polls of the queue: nothing more goes before the interval
        assert [len(batch) for batch in records] == [3, 3]
        assert all(sum(batch) <= 3 * size for batch in records)
        assert w.backlog == 3
    finally:
        w.interval = w.idle = 0.0
        w._barrier()
        w.close()
    with sqlite3.connect(tmp_path / "index.sqlite") as db:
        assert db.execute("SELECT count(*) FROM instances").fetchone()[0] == 10


def _journal_in_both_segments_then_die(tmp_path: Path) -> None:
    """In a child: nothing is ever materialised; instances fill the first segment past the
    lap size, then go on in the second (free: it was never written); one is sent again there
    with other pixels. Then the process ends as after SIGKILL."""
    import _pytest.monkeypatch

    w = _writer_with_small_laps(tmp_path, _pytest.monkeypatch.MonkeyPatch(), 12 * 1024)
    _HeldMaterialiser(w)  # never released
    sent = _requests(tmp_path, 12)
    again = sent[0][0].message.sop_instance_uid
    for req, _path in sent + _requests(tmp_path, 1, start=12, uid=again):
        assert [m.kind for _i, m, _c in w.handle([req])] == ["instance.written"]
    assert w.journal.current == 1 and w.journal.other_last_seq > 0
    os._exit(0)


def test_a_killed_writer_replays_both_segments_in_order(tmp_path: Path) -> None:
    w, rows = _replayed_after(tmp_path, _journal_in_both_segments_then_die)
    try:
        last = {dcmread(tmp_path / "in" / f"j{n}.dcm").SOPInstanceUID: tmp_path / "in" / f"j{n}.dcm" for n in range(13)}
        assert len(last) == 12 and len(rows) == 12
        for uid, path in last.items():  # j12 (second segment) replaced j0 (first)
            assert dataset_bytes(Path(rows[uid])) == dataset_bytes(path), path.name
        assert w.journal.current == 0 and w.journal.next_seq > 1 << 32
    finally:
        w.close()

# ----- a full disk ---------------------------------------------------------------------------------

OUT_OF_RESOURCES = "Refused: OutOfResources"


def _store_all(tmp_path: Path, node: RunningNode, paths: list[Path]) -> list[str | None]:
    """C-STORE every file on one association with DCMTK storescu (which goes on after a
    failed store); each file's status as storescu names it (None: no response)."""
    result = subprocess.run(["/usr/bin/storescu", "-v", "--no-halt", "-aec", "NODE", "127.0.0.1", str(node.port), *map(str, paths)],
                            capture_output=True, text=True, timeout=300, cwd=tmp_path)
    statuses: dict[str, str] = {}
    current = None
    for line in (result.stdout + result.stderr).splitlines():
        if m := re.match(r"I: Sending file: (.*)$", line):
            current = m[1].strip()
        elif (m := re.match(r"I: Received Store Response \((.*)\)", line)) and current is not None:
            statuses[current] = m[1]
            current = None
    return [statuses.get(str(p)) for p in paths]


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root (CI runs as root)")
def test_a_full_disk_answers_out_of_resources_and_loses_nothing_acknowledged(tmp_path: Path) -> None:
    """The store on a 3 MiB tmpfs, 90 instances of 51 KiB on one association: the journal or
    the materialiser runs out of space. Every answer is a success or an out-of-resources
    status (0xA7xx), never another failure or a dropped association, and at once (the
    writer refuses writes until it has caught up, instead of leaving each one to time out).
    The writer, SIGKILLed then, cannot replay its journal on the full disk: it serves anyway,
    refusing writes, and retries. Once the filesystem grows, every acknowledged instance reaches its final path byte-identical and indexed, the
    refused ones store on a second try, and nothing partial is left at a final path."""
    store = tmp_path / "store"
    if not mount_tmpfs(store, "3m"):
        pytest.skip("cannot mount a tmpfs here")
    node: RunningNode | None = None
    try:
        (tmp_path / "node.toml").write_text('[store]\nduplicates = "overwrite"\n')
        node = serve(tmp_path, "--config", str(tmp_path / "node.toml"), workers=1)
        paths = [tmp_path / "in" / f"f{n}.dcm" for n in range(90)]
        for path in paths:
            make_ct(path, pixels=160)
        statuses = _store_all(tmp_path, node, paths)
        acknowledged = [p for p, s in zip(paths, statuses) if s == "Success"]
        refused = [p for p, s in zip(paths, statuses) if s != "Success"]
        assert acknowledged and refused, f"the disk did not fill up: {statuses}"
        assert {s for s in statuses if s != "Success"} == {OUT_OF_RESOURCES}, statuses
        (writer,) = node.children("run writer")
        os.kill(writer.pid, signal.SIGKILL)
        wait_until(lambda: "journal replay failed" in node.log(), 60, "the restarted writer tried its replay")
        assert _store_all(tmp_path, node, refused[:1]) == [OUT_OF_RESOURCES], "a writer that cannot replay must refuse"
        subprocess.run(["mount", "-o", "remount,size=64m", str(store)], check=True)
        for path in acknowledged:
            uid = dcmread(path).SOPInstanceUID
            wait_until(lambda: _indexed(tmp_path, uid) is not None, 90, f"acknowledged {path.name} indexed after the disk grew")
            assert dataset_bytes(Path(_indexed(tmp_path, uid))) == dataset_bytes(path)
        again = _store_all(tmp_path, node, refused)
        assert again == ["Success"] * len(refused), again
        assert node.stop() == 0
        node = None
        sent = {dataset_bytes(p) for p in paths}
        assert len(_files(tmp_path)) == len(paths)
        assert all(dataset_bytes(f) in sent for f in _files(tmp_path)), "a partial or foreign file at a final path"
    finally:
        if node is not None:
            node.stop()
        subprocess.run(["umount", "-l", str(store)], capture_output=True)


# --- group commit: how long a group waits for the other associations (no node) -----------------


def test_a_group_waits_for_absent_associations_only() -> None:
    """commit_delay gathers the next requests of associations storing meanwhile; once every
    active association has a request in the group nothing more can come (each waits for its
    answer), so the flush goes at once instead of after the whole delay."""
    import time
    from dataclasses import replace

    import zmq

    from actors.writer import _Request, _Siblings, _wait_for_siblings
    from node.config import NodeConfig

    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.bind("inproc://writer-group-test")
    try:
        slow = replace(NodeConfig(), store=replace(NodeConfig().store, commit_delay=30.0))
        siblings = _Siblings()
        both = [_Request(identity=[b"association-a"], envelope=None), _Request(identity=[b"association-b"], envelope=None)]  # type: ignore[arg-type]
        active = siblings.active(both)
        started = time.monotonic()
        _wait_for_siblings(router, slow, both, [], [], active)
        assert time.monotonic() - started < 5.0, "every active association is in the group: no wait"

        short = replace(NodeConfig(), store=replace(NodeConfig().store, commit_delay=0.3))
        siblings.active([_Request(identity=[b"association-c"], envelope=None)])  # type: ignore[arg-type]
        only_a = both[:1]
        active = siblings.active(only_a)
        assert active == {b"association-a", b"association-b", b"association-c"}
        started = time.monotonic()
        _wait_for_siblings(router, short, only_a, [], [], active)
        assert time.monotonic() - started >= 0.25, "b and c may still send: the group waits for them"
    finally:
        router.close(0)
        ctx.term()
