"""``nodectl send`` as a job: the journal (resume after kill -9), the report, --rate, transient retries.

The journal and the token bucket are tested without sockets first; then real peers on
127.0.0.1: ``nodectl serve`` (whose index tells what it stored, and when), DCMTK storescp, and
a pynetdicom SCP in the test for an out-of-resources status that clears.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import struct
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any

import msgpack
import psutil
import pytest

from node.rate_limit import Pacer, TokenBucket, pacer, parse_rate
from node.send_journal import ACKNOWLEDGED, ACKS_BYTES, ACKS_SUFFIX, FAILED, JournalError, Outcome, SendJournal, read_acks
from node.tools.send_job import journal_key
from tests.nodes import serve
from tests.support import NODECTL, interruptible, make_ct, mount_tmpfs, wait_until
from tests.tools.storepeers import dcmtk_available, dcmtk_storescp, pynetdicom_scp, run_nodectl

needs_dcmtk = pytest.mark.skipif(not dcmtk_available(), reason="DCMTK storescp not installed")
REPO = Path(__file__).resolve().parents[2]


def make_files(directory: Path, count: int) -> dict[str, Path]:
    """``count`` small CT files; {SOP Instance UID: path}."""
    directory.mkdir(parents=True, exist_ok=True)
    return {make_ct(directory / f"{n:05d}.dcm", pixels=8, InstanceNumber=n + 1).SOPInstanceUID: directory / f"{n:05d}.dcm"
            for n in range(count)}


def journal_rows(path: Path) -> dict[str, tuple[str, int]]:
    """{SOP Instance UID: (outcome, run)} as the journal has it now (read-only): its files, and
    the acknowledgments of its log not yet written there."""
    if not path.exists():
        return {}
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    rows: dict[str, tuple[str, int]] = {}
    try:
        rows.update((uid, (outcome, run)) for uid, outcome, run in
                    conn.execute("SELECT sop_instance_uid, outcome, run FROM files WHERE sop_instance_uid != ''"))
    except sqlite3.OperationalError:  # the schema is not there yet
        pass
    finally:
        conn.close()
    rows.update((row[4], (row[5], row[9])) for row in read_acks(str(path) + ACKS_SUFFIX))
    return rows


# --- the journal, no network -------------------------------------------------------------------


def outcome(path: str, size: int = 10, mtime: int = 1, kind: str = ACKNOWLEDGED, **kw: Any) -> Outcome:
    return Outcome(path=path, size=size, mtime_ns=mtime, outcome=kind, sop_instance_uid=f"1.2.{abs(hash(path))}", **kw)


def test_journal_acknowledged_only_while_unchanged(tmp_path: Path) -> None:
    journal = SendJournal(str(tmp_path / "j"))
    journal.start_run({})
    journal.record(outcome("/a", bytes=10))
    journal.record(outcome("/b", kind=FAILED, status=0xC000, reason="Failure"))
    journal.end_run(1)
    journal.close()
    again = SendJournal(str(tmp_path / "j"))
    assert again.resuming
    assert acknowledged(again, "/a", (10, 1))
    assert not acknowledged(again, "/a", (10, 2)), "a file touched since is sent again"
    assert not acknowledged(again, "/a", (11, 1)), "a file grown since is sent again"
    assert not acknowledged(again, "/b", (10, 1)), "a failed file is sent again"
    assert not acknowledged(again, "/c", (10, 1))
    assert again.acknowledged_among({"/a": (10, 1), "/b": (10, 1), "/c": (1, 1)}) == {"/a"}
    again.close()


def acknowledged(journal: SendJournal, path: str, identity: tuple[int, int]) -> bool:
    return path in journal.acknowledged_among({path: identity})


def test_journal_totals_span_runs(tmp_path: Path) -> None:
    journal = SendJournal(str(tmp_path / "j"))
    journal.start_run({})
    journal.record(outcome("/a", bytes=100))
    journal.record(outcome("/b", kind=FAILED, status=0xA700))
    journal.end_run(1)
    journal.start_run({})
    journal.record(outcome("/b", bytes=50))
    journal.record(outcome("/c", kind="skipped", reason="not DICOM"))
    journal.end_run(0)
    first = journal.uncommitted(0, 10)
    assert [path for _row, path, _cls, _uid in first] == ["/a", "/b"]
    assert [path for _row, path, _cls, _uid in journal.uncommitted(first[0][0], 10)] == ["/b"]
    journal.record_commit([("/a", True, "")])
    totals = journal.totals()
    assert (totals.runs, totals.acknowledged, totals.sent_last_run, totals.already_there) == (2, 2, 1, 1)
    assert totals.failed_by_status == {}
    assert totals.skipped_by_reason == {"not DICOM": 1}
    assert (totals.bytes, totals.committed, totals.not_committed) == (150, 1, 1)
    journal.close()


def test_a_file_that_is_not_a_journal_is_refused(tmp_path: Path) -> None:
    (tmp_path / "j").write_bytes(b"not sqlite at all" * 100)
    result = run_nodectl("send", "--journal", str(tmp_path / "j"), "127.0.0.1", "9", str(tmp_path))
    assert result.returncode == 2
    assert "not a send journal" in result.stderr


# --- rate limits, no network -------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_token_bucket_keeps_the_rate_after_its_burst() -> None:
    clock = FakeClock()
    pacer = Pacer(files_per_s=20, clock=clock, sleep=clock.sleep)
    for _ in range(202):
        pacer.wait(1000)
    assert clock.now == pytest.approx(200 / 20, rel=0.01), "burst of 2, then 20 per second"


def test_byte_rate_waits_for_large_files() -> None:
    clock = FakeClock()
    pacer = Pacer(bytes_per_s=1e6, clock=clock, sleep=clock.sleep)
    for _ in range(11):
        pacer.wait(1_000_000)
    assert clock.now == pytest.approx(10.9, rel=0.01), "a burst of 0.1 s, then 1 s per MB"
    assert TokenBucket(rate=5, burst=1).take(1, now=0.0) == 0.0


def test_each_thread_has_its_own_pacer() -> None:
    """-j N threads each keep 1/N of --rate: one pacer shared by all would send at 1/N in all."""
    import threading

    theirs: list[Pacer] = []
    worker = threading.Thread(target=lambda: theirs.append(pacer(10.0, 0.0)))
    worker.start()
    worker.join(timeout=10)
    assert pacer(10.0, 0.0) is pacer(10.0, 0.0), "one thread's next association goes on with its bucket"
    assert theirs and theirs[0] is not pacer(10.0, 0.0)


def test_exit_statuses_combine_3_then_1_then_5_then_4() -> None:
    """Chunks and the commitment phase each end with a status; the job's is the worst of them."""
    from node.tools.send import worse

    ranked = [3, 1, 5, 4, 0]
    for i, better in enumerate(ranked):
        for worst in ranked[:i + 1]:
            assert worse(better, worst) == worse(worst, better) == worst


def test_rate_spellings() -> None:
    assert parse_rate("50/s") == parse_rate("50") == parse_rate("3000/min") == 50
    with pytest.raises(ValueError):
        parse_rate("0/s")
    with pytest.raises(ValueError):
        parse_rate("5/fortnight")


# --- real peers -----------------------------------------------------------------------------------


def index_rows(node_dir: Path) -> dict[str, float]:
    """{SOP Instance UID: received_at} from ``nodectl serve``'s index."""
    conn = sqlite3.connect(f"file:{node_dir / 'node.sqlite'}?mode=ro", uri=True)
    try:
        return {uid: at for uid, at in conn.execute("SELECT sop_instance_uid, received_at FROM instances")}
    finally:
        conn.close()


def test_kill_9_mid_job_then_resume_sends_only_the_rest(tmp_path: Path) -> None:
    """SIGKILL of a -j 2 sender (its worker threads die with it; no process outlives it), then
    the same command again: every file ends up stored, the resume sends exactly what the journal
    had not recorded as acknowledged, and the node received again at most one instance per
    association open at the kill (the one in flight): an acknowledgment is journaled before the
    association's next C-STORE goes out. At 200 files/s per thread, a journal that waited for a
    worker's batch of results (0.1 s) would leave some 20 per thread unjournaled."""
    sent = make_files(tmp_path / "in", 1200)
    journal = tmp_path / "job.journal"
    (tmp_path / "node").mkdir()
    node = serve(tmp_path / "node", workers=1)
    rate, threads = 400, 2  # files/s: the job takes 3 s or more, so the kill lands in its middle
    job = ["send", "-j", str(threads), "--journal", str(journal), "--progress", "none", "-aec", "NODE"]
    peer = ["127.0.0.1", str(node.port), str(tmp_path / "in")]
    try:
        sender = subprocess.Popen([*NODECTL, *job, "--rate", f"{rate}/s", *peer], cwd=REPO, stdin=subprocess.DEVNULL,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            wait_until(lambda: len(journal_rows(journal)) >= 300 or sender.poll() is not None, timeout=60,
                       what="300 outcomes in the journal")
            children = psutil.Process(sender.pid).children(recursive=True)
            os.kill(sender.pid, signal.SIGKILL)
            sender.wait(timeout=10)
        finally:
            if sender.poll() is None:
                sender.kill()
                sender.wait()
            sender.stderr.close()
        assert sender.returncode == -signal.SIGKILL, "the job ended before the kill: make it slower"
        assert children == [], "-j N runs threads of one process, nothing that could outlive a kill"
        before = journal_rows(journal)
        acknowledged = {uid for uid, (kind, _run) in before.items() if kind == ACKNOWLEDGED}
        assert 300 <= len(acknowledged) < len(sent)
        node.materialised()
        stored_before = set(index_rows(node.cwd))
        assert acknowledged <= stored_before, "the journal never claims what the peer has not stored"

        result = run_nodectl(*job, "--summary-json", str(tmp_path / "s.json"), *peer)
        assert result.returncode == 0, result.stderr
        summary = json.loads((tmp_path / "s.json").read_text())
        assert summary["already_acknowledged"] == len(acknowledged)
        resent = {item["sop_instance_uid"] for item in summary["files"]["sent"]}
        assert resent == set(sent) - acknowledged, "the resume sends exactly what was not acknowledged"
        twice = resent & stored_before
        assert len(twice) <= threads, f"{len(twice)} instances received twice, more than one per association"
        job_totals = summary["job"]
        assert (job_totals["acknowledged"], job_totals["files"]) == (len(sent), len(sent)), "each file once"
        assert (job_totals["already_there"], job_totals["sent_last_run"]) == (len(acknowledged), len(resent))
        node.materialised()
        assert set(index_rows(node.cwd)) == set(sent)
    finally:
        node.stop()


KILLED_JOURNAL = """
import os, signal, sys
from node.send_journal import ACKNOWLEDGED, Outcome, SendJournal
journal = SendJournal(sys.argv[1])
journal.start_run({})
journal.record(Outcome(path="/a", size=10, mtime_ns=1, outcome=ACKNOWLEDGED, sop_instance_uid="1.2.1", bytes=10))
journal.flush()
journal.manifest([(0, "/b", 10, 1, "", "1.2.2"), (1, "/c", 10, 1, "", "1.2.3")])
journal.record_ack(0, 0, 20)
journal.record_ack(1, 0, 30)
with open(sys.argv[1] + "-acks", "r+b") as log:  # the kill cut /c's record: its last bytes never stored
    log.seek(journal.acks.offset - 3)
    log.write(bytes(3))
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_acknowledgments_left_in_the_log_by_a_kill_are_read_and_kept(tmp_path: Path) -> None:
    """``record_ack`` stores into the mapped log at once; a journal killed before the main
    thread wrote them into ``files`` still resumes from them (a torn last record left out), and
    ``--report`` (read-only) counts them."""
    path = tmp_path / "j"
    killed = subprocess.run([sys.executable, "-c", KILLED_JOURNAL, str(path)], cwd=REPO, timeout=60)
    assert killed.returncode == -signal.SIGKILL
    assert [row[0] for row in read_acks(str(path) + ACKS_SUFFIX)] == ["/b"]
    readonly = SendJournal(str(path), readonly=True)
    totals = readonly.totals()
    assert (totals.acknowledged, totals.bytes) == (2, 30)
    readonly.conn.close()
    again = SendJournal(str(path))
    assert acknowledged(again, "/b", (10, 1)) and acknowledged(again, "/a", (10, 1))
    assert not acknowledged(again, "/c", (10, 1))
    assert read_acks(str(path) + ACKS_SUFFIX) == [], "the log's records are in files now"
    again.close()
    assert not os.path.exists(str(path) + ACKS_SUFFIX)


def test_acknowledgment_log_grows_past_its_first_mapping(tmp_path: Path) -> None:
    """More records than the first mapping holds: the log grows, and every record reads back."""
    journal = SendJournal(str(tmp_path / "j"))
    journal.start_run({})
    count = ACKS_BYTES // 40
    journal.manifest([(n, f"/data/{n:06d}.dcm", 10, 1, "1.2.840.10008.5.1.4.1.1.7", f"1.2.{n}") for n in range(count)])
    for n in range(count):
        journal.record_ack(n, 0, n)
    assert journal.acks is not None and journal.acks.offset > ACKS_BYTES
    assert os.path.getsize(str(tmp_path / "j") + ACKS_SUFFIX) > ACKS_BYTES
    rows = read_acks(str(tmp_path / "j") + ACKS_SUFFIX)
    assert [row[0] for row in rows] == [f"/data/{n:06d}.dcm" for n in range(count)]
    journal.close()


def test_rows_written_in_slices_are_committed_with_their_group(tmp_path: Path) -> None:
    """``write_some`` (while the sender waits for its peers) writes rows into the group's open
    transaction: nobody else sees them until ``flush`` commits the group with the rest."""
    path = tmp_path / "j"
    journal = SendJournal(str(path))
    journal.start_run({})
    journal.manifest([(n, f"/data/{n:02d}.dcm", 10, 1, "1.2.840.10008.5.1.4.1.1.7", f"1.2.{n}") for n in range(40)])
    for n in range(40):
        journal.record_ack(n, 0, 10)
    journal.record(outcome("/data/failed.dcm", kind=FAILED, status=0xA700))
    journal.write_some(16)
    journal.write_some(16)
    assert journal.queued() == 41 - 32
    reader = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    assert reader.execute("SELECT count(*) FROM files").fetchone()[0] == 0
    journal.flush()
    assert reader.execute("SELECT outcome, count(*) FROM files GROUP BY outcome ORDER BY outcome").fetchall() == [
        (ACKNOWLEDGED, 40), (FAILED, 1)]
    reader.close()
    journal.close()


def test_a_log_an_earlier_version_left_is_read(tmp_path: Path) -> None:
    """A run of the previous nodectl killed mid-job left whole rows in the log (msgpack, each
    framed by length and CRC): a resume with this version takes them as acknowledged."""
    path = tmp_path / "j"
    SendJournal(str(path)).close()
    row = ("/old", 10, 1, "", "1.2.9", ACKNOWLEDGED, 0, "", 10, 1, 1764633600.25)
    payload = msgpack.packb(row)
    Path(str(path) + ACKS_SUFFIX).write_bytes(struct.pack("<II", len(payload), zlib.crc32(payload)) + payload + bytes(64))
    journal = SendJournal(str(path))
    assert acknowledged(journal, "/old", (10, 1))
    journal.close()


def test_a_journal_in_use_is_refused(tmp_path: Path) -> None:
    """Two jobs on one journal would each take the other's log for a killed run's: the second is refused."""
    journal = SendJournal(str(tmp_path / "j"))
    with pytest.raises(JournalError, match="in use by another nodectl send"):
        SendJournal(str(tmp_path / "j"))
    readonly = SendJournal(str(tmp_path / "j"), readonly=True)  # --report reads it meanwhile
    readonly.conn.close()
    make_files(tmp_path / "in", 1)
    second = run_nodectl("send", "--journal", str(tmp_path / "j"), "127.0.0.1", "104", str(tmp_path / "in"))
    assert second.returncode == 2
    assert f"{tmp_path / 'j'}: the journal is in use by another nodectl send" in second.stderr
    journal.close()
    SendJournal(str(tmp_path / "j")).close()


def test_a_journal_on_a_full_disk_is_refused_before_anything_is_sent(tmp_path: Path) -> None:
    """The acknowledgment log's blocks are allocated when the journal opens (a store into a
    hole of a full disk would be a SIGBUS mid-job): no room is a clear error and exit 2."""
    small = tmp_path / "small"
    if not mount_tmpfs(small, "256k"):
        pytest.skip("cannot mount a tmpfs here")
    try:
        make_files(tmp_path / "in", 1)
        result = run_nodectl("send", "--journal", str(small / "job.journal"), "127.0.0.1", "104", str(tmp_path / "in"))
        assert result.returncode == 2, result.stderr
        assert "cannot make its acknowledgment log" in result.stderr and "No space left on device" in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
    finally:
        subprocess.run(["umount", "-l", str(small)], capture_output=True)


def test_journal_key_is_abspath() -> None:
    for path in ["a.dcm", "./a.dcm", "d/../a.dcm", "/x/y/a.dcm", "/x//y/a.dcm", "//x/a.dcm", "/x/./a.dcm", ".hidden/a"]:
        for cwd in ["/", "/work", "/work/sub"]:
            expected = os.path.normpath(os.path.join(cwd, path))
            assert journal_key(path, cwd) == expected, (path, cwd)


@needs_dcmtk
def test_report_table_at_the_end_and_again_from_the_journal(tmp_path: Path) -> None:
    make_files(tmp_path / "in", 5)
    (tmp_path / "in" / "notes.txt").write_text("not DICOM")
    journal = tmp_path / "job.journal"
    with dcmtk_storescp(tmp_path) as scp:
        first = run_nodectl("send", "--progress", "plain", "--journal", str(journal), "127.0.0.1", str(scp.port),
                            str(tmp_path / "in"))
        assert first.returncode == 0, first.stderr
        assert "sent (this run)" in first.stderr and "not committed" in first.stderr
        again = run_nodectl("send", "--progress", "plain", "--journal", str(journal), "127.0.0.1", str(scp.port),
                            str(tmp_path / "in"))
        assert again.returncode == 0, again.stderr
        assert "5 file(s) already acknowledged" in again.stderr
    report = run_nodectl("send", "--report", str(journal))
    assert report.returncode == 0, report.stderr
    lines = dict(line.strip().rsplit(None, 1) for line in report.stdout.splitlines() if line.strip())
    assert lines["sent (this run)"] == "0" and lines["already there"] == "5"
    assert lines["acknowledged (job)"] == "5" and lines["runs"] == "2"
    assert any(key.startswith("skipped: not a DICOM file") for key in lines)
    missing = run_nodectl("send", "--report", str(tmp_path / "nope.journal"))
    assert missing.returncode == 2 and "no such journal" in missing.stderr


@needs_dcmtk
def test_rate_limit_is_kept_and_shown(tmp_path: Path) -> None:
    make_files(tmp_path / "in", 41)
    journal = tmp_path / "job.journal"
    with dcmtk_storescp(tmp_path) as scp:
        result = run_nodectl("send", "-j", "2", "--rate", "20/s", "--progress", "plain", "--journal", str(journal),
                             "127.0.0.1", str(scp.port), str(tmp_path / "in"))
    assert result.returncode == 0, result.stderr
    assert "limit 20 files/s" in result.stderr
    conn = sqlite3.connect(str(journal))
    first, last = conn.execute("SELECT min(at), max(at) FROM files").fetchone()
    conn.close()
    # two worker threads of 10 files/s with a burst of 1 each: 39 files after the first two take
    # 1.95 s (at one shared share of 10 files/s: 3.9 s); journal times are per batch of 0.1 s
    assert 1.6 <= last - first <= 3.0, f"41 files at 20/s took {last - first:.2f} s"


def test_out_of_resources_is_sent_again_on_a_later_association(tmp_path: Path) -> None:
    """0xA700 for each file's first attempt, Success for the second; 0xA900 stays final."""
    files = make_files(tmp_path / "in", 6)
    final = sorted(files)[0]
    seen: dict[str, int] = {}

    def status_for(ds: Any, _event: Any) -> int:
        uid = str(ds.SOPInstanceUID)
        seen[uid] = seen.get(uid, 0) + 1
        if uid == final:
            return 0xA900
        return 0xA700 if seen[uid] == 1 else 0x0000

    with pynetdicom_scp(status_for) as (port, received):
        result = run_nodectl("send", "--progress", "plain", "--retry-transient", "2", "--retry-delay", "0.1",
                             "--summary-json", str(tmp_path / "s.json"), "--journal", str(tmp_path / "j"),
                             "127.0.0.1", str(port), str(tmp_path / "in"))
    assert result.returncode == 1, result.stderr
    summary = json.loads((tmp_path / "s.json").read_text())
    assert {f["sop_instance_uid"] for f in summary["files"]["sent"]} == set(files) - {final}
    assert [f["status_hex"] for f in summary["files"]["failed"]] == ["0xA900"]
    assert seen[final] == 1, "0xA900 is not retried"
    assert all(seen[uid] == 2 for uid in set(files) - {final})
    assert "sending them again" in result.stderr
    rows = journal_rows(tmp_path / "j")
    assert sum(kind == ACKNOWLEDGED for kind, _ in rows.values()) == 5
    assert received.uids.count(final) == 1


def test_out_of_resources_without_retries_left_is_a_failure(tmp_path: Path) -> None:
    make_files(tmp_path / "in", 2)
    with pynetdicom_scp(lambda ds, ev: 0xA700) as (port, received):
        result = run_nodectl("send", "--progress", "plain", "--retry-transient", "1", "--retry-delay", "0.1",
                             "--summary-json", str(tmp_path / "s.json"), "127.0.0.1", str(port), str(tmp_path / "in"))
    assert result.returncode == 1, result.stderr
    summary = json.loads((tmp_path / "s.json").read_text())
    assert [f["status_hex"] for f in summary["files"]["failed"]] == ["0xA700", "0xA700"]
    assert len(received.uids) == 4, "each file: the first attempt and one retry"


# --- Storage Commitment (--commit) -----------------------------------------------------------------


def job_summary(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def test_commit_on_the_same_association_with_nodectl_serve(tmp_path: Path) -> None:
    """The node reports on the N-ACTION's association; a re-run asks for nothing already committed."""
    make_files(tmp_path / "in", 6)
    (tmp_path / "node").mkdir()
    node = serve(tmp_path / "node", workers=1)
    journal = tmp_path / "job.journal"
    args = ["send", "-v", "--progress", "plain", "--commit", "--commit-timeout", "30", "--journal", str(journal),
            "-aec", "NODE", "--summary-json", str(tmp_path / "s.json"), "127.0.0.1", str(node.port), str(tmp_path / "in")]
    try:
        first = run_nodectl(*args)
        assert first.returncode == 0, first.stderr + node.log()[-3000:]
        job = job_summary(tmp_path / "s.json")["job"]
        assert (job["acknowledged"], job["committed"], job["not_committed"]) == (6, 6, 0)
        assert "commitment requested=6 committed=6" in first.stderr
        again = run_nodectl(*args)
        assert again.returncode == 0, again.stderr
        assert "commitment requested=0" in again.stderr, "nothing is asked twice"
        (tmp_path / "in" / "00002.dcm").touch()  # changed since: sent and committed again
        third = run_nodectl(*args)
        assert third.returncode == 0, third.stderr
        assert "commitment requested=1 committed=1" in third.stderr
    finally:
        node.stop()


def test_commit_of_a_copy_sent_twice_marks_both_files(tmp_path: Path) -> None:
    """Two files holding one instance (a copy) are both acknowledged; the instance is asked for
    once a transaction and both files are committed, in one transaction and in batches of one."""
    import shutil

    make_files(tmp_path / "in", 2)
    shutil.copy(tmp_path / "in" / "00000.dcm", tmp_path / "in" / "copy.dcm")
    (tmp_path / "node").mkdir()
    node = serve(tmp_path / "node", workers=1)
    try:
        for batch in ("100", "1"):
            journal = tmp_path / f"job-{batch}.journal"
            result = run_nodectl("send", "-v", "--progress", "plain", "--commit", "--commit-batch", batch,
                                 "--commit-timeout", "30", "--journal", str(journal), "-aec", "NODE",
                                 "--summary-json", str(tmp_path / "s.json"), "127.0.0.1", str(node.port), str(tmp_path / "in"))
            assert result.returncode == 0, result.stderr + node.log()[-3000:]
            job = job_summary(tmp_path / "s.json")["job"]
            assert (job["acknowledged"], job["committed"], job["not_committed"]) == (3, 3, 0), batch
    finally:
        node.stop()


@needs_dcmtk
def test_commit_with_a_peer_without_commitment_fails_clearly_and_the_stores_count(tmp_path: Path) -> None:
    make_files(tmp_path / "in", 3)
    with dcmtk_storescp(tmp_path) as scp:
        result = run_nodectl("send", "--progress", "plain", "--commit", "--summary-json", str(tmp_path / "s.json"),
                             "127.0.0.1", str(scp.port), str(tmp_path / "in"))
        assert len(scp.received()) == 3
    assert result.returncode == 5, result.stderr
    assert "Storage Commitment not possible: the peer accepts no Storage Commitment Push Model context" in result.stderr
    summary = job_summary(tmp_path / "s.json")
    assert summary["sent"] == 3
    assert (summary["job"]["acknowledged"], summary["job"]["committed"]) == (3, 0)


@pytest.mark.skipif(not __import__("tests.peers.orthanc", fromlist=["x"]).orthanc_available(), reason="no Orthanc")
def test_commit_report_from_orthanc_on_a_new_association(tmp_path: Path) -> None:
    from tests.peers.orthanc import Orthanc
    from tests.support import free_port

    sent = make_files(tmp_path / "in", 4)
    port = free_port()
    with Orthanc.start(tmp_path / "orthanc", modalities={"sender": ("STORESCU", "127.0.0.1", port)}) as orthanc:
        result = run_nodectl("send", "-v", "--progress", "plain", "--commit", "--commit-port", str(port),
                             "--commit-timeout", "30", "-aec", orthanc.aet, "--summary-json", str(tmp_path / "s.json"),
                             "127.0.0.1", str(orthanc.dicom_port), str(tmp_path / "in"))
        assert result.returncode == 0, result.stderr + orthanc.log.read_text()[-3000:]
        assert set(orthanc.rest.sop_instance_uids().values()) == set(sent) or len(orthanc.rest.instances()) == 4
    job = job_summary(tmp_path / "s.json")["job"]
    assert (job["committed"], job["not_committed"]) == (4, 0)


def test_commit_report_from_nodectl_serve_on_a_new_association(tmp_path: Path) -> None:
    """A node that reports on a new association (``[commitment] same_association = false``,
    the job's AE title in its peer table): the job takes the report on --commit-port, and
    every instance is committed."""
    from tests.support import free_port

    make_files(tmp_path / "in", 4)
    port = free_port()
    (tmp_path / "node").mkdir()
    config = tmp_path / "node" / "node.toml"
    config.write_text(f'[commitment]\nsame_association = false\nretry_base = 0.5\nretry_max = 2.0\n'
                      f'[[peers]]\naet = "JOBSCU"\nhost = "127.0.0.1"\nport = {port}\n')
    node = serve(tmp_path / "node", "--config", str(config), workers=1)
    try:
        result = run_nodectl("send", "-v", "--progress", "plain", "--commit", "--commit-port", str(port),
                             "--commit-timeout", "30", "-aet", "JOBSCU", "-aec", "NODE", "--summary-json",
                             str(tmp_path / "s.json"), "127.0.0.1", str(node.port), str(tmp_path / "in"))
        assert result.returncode == 0, result.stderr + node.log()[-3000:]
        wait_until(lambda: "report delivered to JOBSCU on a new association" in node.log(), 10, "the node's delivery line")
    finally:
        node.stop()
    job = job_summary(tmp_path / "s.json")["job"]
    assert (job["acknowledged"], job["committed"], job["not_committed"]) == (4, 4, 0)


def test_commit_failure_is_recorded_with_its_reason_and_exits_5(tmp_path: Path) -> None:
    """An instance the node acknowledged but lost since (its file removed) fails commitment with
    0x0110; the others commit; the job exits 5 and the report says which."""
    sent = make_files(tmp_path / "in", 4)
    (tmp_path / "node").mkdir()
    node = serve(tmp_path / "node", workers=1)
    journal = tmp_path / "job.journal"
    peer = ["-aec", "NODE", "127.0.0.1", str(node.port), str(tmp_path / "in")]
    try:
        stored = run_nodectl("send", "--progress", "none", "--journal", str(journal), *peer)
        assert stored.returncode == 0, stored.stderr
        node.materialised()
        lost = sorted(sent)[1]
        (node.cwd / "store" / lost).unlink()
        result = run_nodectl("send", "--progress", "plain", "--commit", "--commit-timeout", "30", "--journal",
                             str(journal), "--summary-json", str(tmp_path / "s.json"), *peer)
    finally:
        node.stop()
    assert result.returncode == 5, result.stderr
    job = job_summary(tmp_path / "s.json")["job"]
    assert (job["committed"], job["commit_failed"], job["not_committed"]) == (3, 1, 1)
    conn = sqlite3.connect(str(journal))
    rows = dict(conn.execute("SELECT sop_instance_uid, commit_reason FROM files WHERE commit_state = 'failed'"))
    conn.close()
    assert rows == {lost: "0x0110 Processing failure"}
    report = run_nodectl("send", "--report", str(journal))
    assert "commitment failed" in report.stdout


def test_commit_batch_commits_every_n_files_as_the_job_goes(tmp_path: Path) -> None:
    """--commit-batch 3: 3 files sent, their commitment, the next 3...; one summary for the run."""
    sent = make_files(tmp_path / "in", 7)
    (tmp_path / "node").mkdir()
    node = serve(tmp_path / "node", workers=1)
    try:
        result = run_nodectl("send", "-v", "--progress", "plain", "--commit", "--commit-batch", "3", "-aec", "NODE",
                             "--summary-json", str(tmp_path / "s.json"), "127.0.0.1", str(node.port), str(tmp_path / "in"))
    finally:
        node.stop()
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if "commitment requested=" in line]
    assert [line.split("requested=")[1].split()[0] for line in lines] == ["3", "3", "1"]
    summary = job_summary(tmp_path / "s.json")
    assert summary["sent"] == 7 and {f["sop_instance_uid"] for f in summary["files"]["sent"]} == set(sent)
    assert (summary["job"]["committed"], summary["job"]["not_committed"]) == (7, 0)
    assert "send: 7/7 files" in result.stderr


def test_the_streamed_file_list_is_storescus_list(tmp_path: Path) -> None:
    """Same files, same order, same missing paths as ``storescu.collect_files``, which holds the list."""
    from node.tools.send_job import collect_files as streamed
    from node.tools.storescu import collect_files as held

    for name in ("a.dcm", "a/1", "a/b/2", "a-b/3", "z", "b.x", "a0", "sub/deep/er/f", "a/b.c"):
        (tmp_path / "t" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "t" / name).write_text("x")
    (tmp_path / "t" / "link").symlink_to(tmp_path / "t" / "a")
    root = str(tmp_path / "t")
    for paths in ([root], [root, f"{root}/z", f"{root}/nope"], [f"{root}/a", root]):
        for recurse in (True, False):
            files, missing = streamed(paths, recurse)
            assert (list(files), missing) == held(paths, recurse)


@needs_dcmtk
def test_ctrl_c_ends_the_run_with_130_and_its_outcomes_kept(tmp_path: Path) -> None:
    """SIGINT mid-job: exit 130, the run closed in the journal with 130, what was acknowledged
    kept (the worker threads stop sending and hand over their last results first: the peer has
    nothing the journal lacks, but for one file in flight per thread that outlived the grace),
    and the next run sends the rest only."""
    sent = make_files(tmp_path / "in", 600)
    journal = tmp_path / "job.journal"
    with dcmtk_storescp(tmp_path) as scp:
        job = ["send", "-j", "2", "--progress", "none", "--journal", str(journal), "127.0.0.1", str(scp.port),
               str(tmp_path / "in")]
        sender = subprocess.Popen([*NODECTL, *job[:1], "--rate", "300/s", *job[1:]], cwd=REPO, stdin=subprocess.DEVNULL,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=interruptible)
        try:
            wait_until(lambda: len(journal_rows(journal)) >= 100 or sender.poll() is not None, timeout=60,
                       what="100 outcomes in the journal")
            sender.send_signal(signal.SIGINT)
            assert sender.wait(timeout=30) == 130
        finally:
            if sender.poll() is None:
                sender.kill()
                sender.wait()
        conn = sqlite3.connect(str(journal))
        runs = conn.execute("SELECT exit_status FROM runs").fetchall()
        conn.close()
        assert runs == [(130,)]
        first = {uid for uid, (kind, _run) in journal_rows(journal).items() if kind == ACKNOWLEDGED}
        assert 100 <= len(first) < len(sent)
        unjournaled = set(scp.received()) - first
        assert len(unjournaled) <= 2, f"{len(unjournaled)} files stored by the peer but not in the journal"
        rest = run_nodectl(*job, "--summary-json", str(tmp_path / "s.json"))
        assert rest.returncode == 0, rest.stderr
    summary = json.loads((tmp_path / "s.json").read_text())
    assert {f["sop_instance_uid"] for f in summary["files"]["sent"]} == set(sent) - first
    assert summary["job"]["acknowledged"] == len(sent)
