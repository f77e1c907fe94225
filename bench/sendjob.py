"""``python -m bench sendjob``: issue 15's three targets for ``nodectl send`` jobs, in one run.

Files: 5 KiB Secondary Capture files made the way ``bench send`` makes them (``corpus``, set
``sc``), written under ``--corpus`` (default ``/dev/shm``) so that reading them costs no disk.
Receivers go under ``--scratch``, journals under ``--journal-dir`` (both by default the system
temp directory, a disk here).

a. **Journal overhead** (target ≤ 10%): ``nodectl send -j 4`` of ``--journal-files`` (5,000)
   into DCMTK storescp ``--fork``, with and without ``--journal``, taking turns within each
   round (a burst of load from the machine's other users falls on both alike); medians and
   their ratio, and the median of each round's ratio.
b. **--commit cost** (target ≤ 2 s added): ``--commit-files`` (10,000) into ``nodectl serve``
   with and without ``--commit`` (both with a journal), a fresh node each, turns within rounds.
c. **Kill and resume** (targets: total ≤ 1.2x an uninterrupted job; the node received again at
   most one instance per association open at each kill): a job of ``--files`` (100,000) into
   ``nodectl serve`` at ``-j 4``: once uninterrupted, then with three SIGKILLs of the sender at
   random moments of the job (once the journal holds a random number of acknowledged files,
   ``--seed``), each run started again with the same ``--journal``. After each kill, once the node's index has settled, the instances it holds
   that the journal does not list as acknowledged are the ones the next run sends again, i.e.
   received twice; their count is compared with the associations open at the kill (``-j``).

Times run from starting the sender to its exit (or its kill), interpreter start-up included.
The load average is recorded with every sample: on a shared machine the figures are only
comparable within one run.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import corpus, peers, procs
from bench.send import _children_cpu as children_cpu
from bench.send import compile_bytecode

SENDER_TIMEOUT_S = 3600.0
JOBS = 4  # -j of every job here (the issue's journal target is at -j 4)
KILLS = 3
SETTLE_QUIET_S = 1.0  # the node's index unchanged this long: what it stored is all there


def send_command(port: int, directory: Path, aet: str, *extra: str) -> list[str]:
    """``nodectl send -j 4`` of a directory (the file list streamed, as a migration job runs)."""
    return [sys.executable, "-m", "node.cli", "send", "-j", str(JOBS), "--progress", "none", "-aec", aet, *extra,
            procs.LOOPBACK, str(port), str(directory)]


def run_sender(cmd: list[str], log: Path, env: dict[str, str], kill_when=None) -> tuple[float, int | None]:
    """(seconds, exit code) of one sender; SIGKILLed as soon as ``kill_when()`` is true (polled
    every 0.2 s) if given. It runs in ``log``'s directory, where nothing may be called ``node``
    (``python -m`` would import that directory as the package)."""
    started = time.monotonic()
    proc = procs.start(cmd, log=log, cwd=log.parent, env=env)
    while time.monotonic() - started < SENDER_TIMEOUT_S:
        try:
            code = procs.wait_exited(proc, 0.2 if kill_when else SENDER_TIMEOUT_S)
            return time.monotonic() - started, code
        except subprocess.TimeoutExpired:
            if kill_when is not None and kill_when():
                os.kill(proc.pid, signal.SIGKILL)
                code = proc.wait(timeout=30)
                return time.monotonic() - started, code
    procs.stop(proc)
    return time.monotonic() - started, None


def acknowledged_count(journal: Path) -> int:
    """Files the journal's files table lists as acknowledged (0 before it exists); it lags the
    acknowledgment log by at most 0.1 s, which is good enough to pick a moment of the job."""
    if not journal.exists():
        return 0
    conn = sqlite3.connect(f"file:{journal}?mode=ro", uri=True, timeout=10)
    try:
        return int(conn.execute("SELECT count(*) FROM files WHERE outcome = 'acknowledged'").fetchone()[0])
    except sqlite3.OperationalError:
        return 0
    finally:
        conn.close()


def corpus_dir(opts, count: int) -> Path:
    """A directory holding exactly the first ``count`` files (symlinks into the corpus)."""
    fileset = corpus.ensure("sc", count, root=Path(opts.corpus))
    directory = Path(opts.corpus) / f"sendjob-{count}"
    if not directory.is_dir() or len(os.listdir(directory)) != count:
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True)
        for path in fileset.files:
            (directory / path.name).symlink_to(path)
    return directory


JOURNAL_DIR: Path | None = None  # --journal-dir, set by main


def journal_path(workdir: Path) -> str:
    """A fresh journal for the job of ``workdir``: in --journal-dir (a disk, as a job's journal
    would be, its checkpoints' fsyncs included) or else beside the receiver."""
    return str((JOURNAL_DIR or workdir) / f"{workdir.name}.journal")


# ----- a. journal overhead ------------------------------------------------------------------------


def journal_sample(directory: Path, count: int, journal: bool, env: dict[str, str], scratch: Path) -> dict:
    receiver = peers.DcmtkStorescp("DCMTK storescp --fork", fork=True)
    workdir = Path(tempfile.mkdtemp(prefix="journal-", dir=scratch))
    receiver.start(workdir, {k: v for k, v in env.items() if k != "PYTHONPATH"} | {"TCP_NODELAY": "1"})
    load = os.getloadavg()[0]
    extra = ["--journal", journal_path(workdir)] if journal else []
    try:
        cpu = children_cpu()
        seconds, code = run_sender(send_command(receiver.port, directory, "ANY-SCP", *extra), workdir / "sender.log", env)
        cpu = children_cpu() - cpu  # the sender's (storescp and its forks are waited for later)
        stored = settled(receiver.stored, count)
    finally:
        receiver.stop()
    shutil.rmtree(workdir, ignore_errors=True)
    return {"journal": journal, "seconds": seconds, "files_s": count / seconds, "exit": code, "stored": stored,
            "ok": code == 0 and stored == count, "load1": load, "sender_cpu_us_per_file": cpu / count * 1e6}


def settled(count, expected: int, timeout: float = 30.0) -> int:
    """``count()`` once it reaches ``expected`` or stops growing for ``SETTLE_QUIET_S``."""
    deadline = time.monotonic() + timeout
    last, since = count(), time.monotonic()
    while last < expected and time.monotonic() < deadline:
        time.sleep(0.1)
        now = count()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= SETTLE_QUIET_S:
            break
    return last


def interleaved(opts, runs: int, count: int, sample, describe) -> list[dict]:
    """``sample(directory of count files, on)`` for off then on, on then off in the next
    round...; each printed by ``describe``."""
    directory = corpus_dir(opts, count)
    samples = []
    for run in range(runs):
        for on in (False, True) if run % 2 == 0 else (True, False):
            result = sample(directory, on)
            result["run"] = run
            samples.append(result)
            print(f"run {run + 1}/{runs} {describe(result)} load1 {result['load1']:.2f}", flush=True)
    return samples


def medians(samples: list[dict], flag: str, value: str) -> tuple[float | None, float | None]:
    """Median ``value`` of the good samples without ``flag``, and with it."""
    off = [sample[value] for sample in samples if sample["ok"] and not sample[flag]]
    on = [sample[value] for sample in samples if sample["ok"] and sample[flag]]
    return (statistics.median(off) if off else None), (statistics.median(on) if on else None)


def journal_overhead(opts, env: dict[str, str], scratch: Path) -> dict:
    samples = interleaved(
        opts, opts.runs, opts.journal_files, lambda files, on: journal_sample(files, opts.journal_files, on, env, scratch),
        lambda s: f"a. journal={'on ' if s['journal'] else 'off'} {s['files_s']:7.0f} files/s {s['seconds']:6.2f} s "
                  f"sender CPU {s['sender_cpu_us_per_file']:4.0f} us/file "
                  f"exit={s['exit']} stored={s['stored']}")
    good = [s for s in samples if s["ok"]]
    rounds = [on_s["files_s"] / off_s["files_s"] for on_s in good if on_s["journal"]
              for off_s in good if not off_s["journal"] and off_s["run"] == on_s["run"]]
    without, with_journal = medians(samples, "journal", "files_s")
    cpu_without, cpu_with = medians(samples, "journal", "sender_cpu_us_per_file")
    result = {"files": opts.journal_files, "samples": samples, "without": without, "with": with_journal,
              "cpu_us_per_file": {"without": cpu_without, "with": cpu_with},
              "round_ratio": statistics.median(rounds) if rounds else None}
    if result["without"] and result["with"]:
        result["overhead"] = 1 - result["with"] / result["without"]
    return result


# ----- b. --commit cost ---------------------------------------------------------------------------


def commit_sample(directory: Path, count: int, commit: bool, env: dict[str, str], scratch: Path) -> dict:
    receiver = peers.NodectlServe("nodectl serve")
    workdir = Path(tempfile.mkdtemp(prefix="commit-", dir=scratch))
    receiver.start(workdir / "receiver", env)
    load = os.getloadavg()[0]
    # -v in both (the commitment phase's seconds are in its info line), so that only --commit differs
    extra = ["-v", "--journal", journal_path(workdir)] + (["--commit", "--commit-timeout", "120"] if commit else [])
    try:
        seconds, code = run_sender(send_command(receiver.port, directory, receiver.aet, *extra), workdir / "sender.log", env)
        log = (workdir / "sender.log").read_text(errors="replace")
        phase = [line.split("seconds=")[1].split()[0] for line in log.splitlines() if "commitment requested=" in line]
    finally:
        receiver.stop()
    shutil.rmtree(workdir, ignore_errors=True)
    return {"commit": commit, "seconds": seconds, "exit": code, "ok": code == 0, "load1": load,
            "commit_phase_s": float(phase[-1]) if phase else None}


def commit_cost(opts, env: dict[str, str], scratch: Path) -> dict:
    samples = interleaved(
        opts, opts.commit_runs, opts.commit_files, lambda files, on: commit_sample(files, opts.commit_files, on, env, scratch),
        lambda s: f"b. commit={'on ' if s['commit'] else 'off'} {s['seconds']:6.2f} s exit={s['exit']} "
                  f"commitment phase {s['commit_phase_s']} s")
    phase = [s["commit_phase_s"] for s in samples if s["ok"] and s["commit"] and s["commit_phase_s"] is not None]
    without, with_commit = medians(samples, "commit", "seconds")
    result = {"files": opts.commit_files, "samples": samples, "without_s": without, "with_s": with_commit,
              "commit_phase_s": statistics.median(phase) if phase else None}
    if result["without_s"] and result["with_s"]:
        result["added_s"] = result["with_s"] - result["without_s"]
    return result


# ----- c. kill and resume -------------------------------------------------------------------------


def index_receipts(database: Path) -> dict[str, float]:
    """{SOP Instance UID: received_at} from the node's index (read-only; empty before its schema
    exists). A receipt of an instance it holds already updates its received_at."""
    if not database.exists():
        return {}
    conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=10)
    try:
        return dict(conn.execute("SELECT sop_instance_uid, received_at FROM instances"))
    except sqlite3.OperationalError:
        return {}
    finally:
        conn.close()


def journal_acknowledged(journal: Path) -> set[str]:
    """SOP Instance UIDs the journal lists as acknowledged (its files and its acknowledgment log)."""
    from node.send_journal import ACKS_SUFFIX, read_acks

    if not journal.exists():  # killed before it opened its journal
        return set()
    conn = sqlite3.connect(f"file:{journal}?mode=ro", uri=True, timeout=10)
    try:
        uids = {uid for (uid,) in conn.execute("SELECT sop_instance_uid FROM files WHERE outcome = 'acknowledged'")}
    finally:
        conn.close()
    return uids | {row[4] for row in read_acks(str(journal) + ACKS_SUFFIX) if row[5] == "acknowledged"}


def settled_index(database: Path) -> dict[str, float]:
    """The index once its size has not changed for ``SETTLE_QUIET_S`` (30 s at most)."""
    settled(lambda: len(index_receipts(database)), expected=sys.maxsize)
    return index_receipts(database)


def received_again(before: dict[str, float], after: dict[str, float]) -> int:
    """Instances the node held at ``before`` and received again by ``after`` (one run apart: a
    run sends a file once, so a changed received_at is one more receipt)."""
    return sum(1 for uid, at in before.items() if after.get(uid, at) != at)


def job(opts, directory: Path, env: dict[str, str], workdir: Path, kills: list[int]) -> dict:
    """One job into a fresh node: runs killed once the journal holds each of ``kills``
    acknowledged files, then one to the end.
    After each kill (the index settled) and at the end, a snapshot of the index: a kill's
    duplicates are the instances its snapshot holds that the next run delivered again."""
    receiver = peers.NodectlServe("nodectl serve")
    receiver.start(workdir / "receiver", env)
    database = workdir / "receiver" / "node.sqlite"
    journal = Path(journal_path(workdir))
    cmd = send_command(receiver.port, directory, receiver.aet, "--journal", str(journal))
    runs, snapshots = [], []
    try:
        for number, kill_at in enumerate([*kills, None]):
            kill_when = None if kill_at is None else (lambda at=kill_at: acknowledged_count(journal) >= at)
            load = os.getloadavg()[0]
            seconds, code = run_sender(cmd, workdir / f"sender-{number}.log", env, kill_when)
            run = {"seconds": seconds, "exit": code, "killed": code == -signal.SIGKILL, "load1": load}
            if code not in (0, -signal.SIGKILL):
                run["log_tail"] = (workdir / f"sender-{number}.log").read_text(errors="replace")[-1500:]
                print(run["log_tail"])
            if run["killed"]:
                snapshots.append(settled_index(database))
                acknowledged = journal_acknowledged(journal)
                run.update(stored=len(snapshots[-1]), acknowledged=len(acknowledged), open_associations=JOBS,
                           stored_not_journaled=len(set(snapshots[-1]) - acknowledged),
                           journal_not_stored=len(acknowledged - set(snapshots[-1])))
            runs.append(run)
            print(f"c. {'killed' if run['killed'] else 'run'} after {seconds:6.2f} s exit={code}"
                  + (f" stored={run['stored']} acknowledged={run['acknowledged']} stored, not journaled="
                     f"{run['stored_not_journaled']}" if run["killed"] else "") + f" load1 {load:.2f}", flush=True)
            if code == 0:
                break
        receiver.settle(opts.files)
        snapshots.append(settled_index(database))
    finally:
        receiver.stop()
    killed = [run for run in runs if run["killed"]]
    for run, before, after in zip(killed, snapshots, snapshots[1:]):
        run["received_twice"] = received_again(before, after)
    return {"runs": runs, "seconds": sum(r["seconds"] for r in runs), "complete": len(snapshots[-1]) == opts.files,
            "exit": runs[-1]["exit"]}


def kill_and_resume(opts, env: dict[str, str], scratch: Path) -> dict:
    directory = corpus_dir(opts, opts.files)
    rng = random.Random(opts.seed)
    workdir = Path(tempfile.mkdtemp(prefix="whole-", dir=scratch))
    try:
        whole = job(opts, directory, env, workdir, [])
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    kills = sorted(int(rng.uniform(0.05, 0.95) * opts.files) for _ in range(KILLS))  # files acknowledged
    workdir = Path(tempfile.mkdtemp(prefix="killed-", dir=scratch))
    try:
        killed = job(opts, directory, env, workdir, kills)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    twice = [r["received_twice"] for r in killed["runs"] if r["killed"]]
    return {"files": opts.files, "uninterrupted": whole, "interrupted": killed, "kill_at_acknowledged": kills,
            "ratio": killed["seconds"] / whole["seconds"], "received_twice": twice,
            "within_bound": all(n <= JOBS for n in twice)}


# ----- main ---------------------------------------------------------------------------------------


def print_summary(results: dict) -> None:
    a, b, c = results.get("journal"), results.get("commit"), results.get("resume")
    if a:
        print(f"\na. journal overhead, -j {JOBS}, {a['files']} files into storescp --fork: without {a['without']:.0f} "
              f"files/s, with {a['with']:.0f} files/s (medians): overhead {a.get('overhead', float('nan')):.1%}, "
              f"per-round ratio {a['round_ratio']:.3f} (target: overhead <= 10%); sender CPU per file "
              f"{a['cpu_us_per_file']['without']:.0f} us without, {a['cpu_us_per_file']['with']:.0f} us with")
    if b:
        print(f"b. --commit, {b['files']} files into nodectl serve: without {b['without_s']:.2f} s, with {b['with_s']:.2f} s "
              f"(medians): added {b.get('added_s', float('nan')):.2f} s, commitment phase {b['commit_phase_s']} s "
              f"(target: <= 2 s added)")
    if c:
        print(f"c. kill and resume, {c['files']} files into nodectl serve: uninterrupted {c['uninterrupted']['seconds']:.2f} s, "
              f"killed {len(c['received_twice'])}x and resumed {c['interrupted']['seconds']:.2f} s: x{c['ratio']:.2f} "
              f"(target <= 1.2); received twice per kill {c['received_twice']} (bound {JOBS} each: "
              f"{'met' if c['within_bound'] else 'NOT met'}); every instance stored: {c['interrupted']['complete']}")


def main(opts) -> int:
    global JOURNAL_DIR
    if not opts.from_source:  # as an installed nodectl runs (bench.send.compile_bytecode)
        compile_bytecode([Path(opts.node_source) if opts.node_source else Path(__file__).resolve().parents[1]])
    env = peers.base_env(True, Path(opts.node_source) if opts.node_source else None)
    JOURNAL_DIR = Path(tempfile.mkdtemp(prefix="bench-sendjob-journals-", dir=opts.journal_dir))
    results: dict = {"load_start": os.getloadavg(), "cpus": os.cpu_count(), "node_source": opts.node_source,
                     "bytecode": "source" if opts.from_source else "compiled"}
    with tempfile.TemporaryDirectory(prefix="bench-sendjob-", dir=opts.scratch) as scratch:
        if "journal" in opts.parts:
            results["journal"] = journal_overhead(opts, env, Path(scratch))
        if "commit" in opts.parts:
            results["commit"] = commit_cost(opts, env, Path(scratch))
        if "resume" in opts.parts:
            results["resume"] = kill_and_resume(opts, env, Path(scratch))
    shutil.rmtree(JOURNAL_DIR, ignore_errors=True)
    results["load_end"] = os.getloadavg()
    print_summary(results)
    if opts.json:
        Path(opts.json).write_text(json.dumps(results, indent=2))
    return 0
