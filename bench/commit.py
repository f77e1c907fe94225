"""``python -m bench commit``: Storage Commitment round trips against ``nodectl serve`` (issue 6).

What it measures (targets: 1000-instance N-ACTION to N-EVENT-REPORT under 1 s median; 100
concurrent transactions complete without loss):

1. ``nodectl serve`` starts in a temp dir on a free loopback port, with a peer entry
   (``--peer BENCHSCU@127.0.0.1:PORT``) so its tracker can call the requester back; 1000
   small instances (the corpus's 5 KiB secondary captures) are stored into it with
   ``nodectl send``, and the index is checked to hold every one.
2. *Single*: one warm-up transaction (reported, not counted), then ``--runs`` transactions of
   all 1000 instances, one after the other. Each: associate, N-ACTION-RQ, N-ACTION-RSP,
   A-RELEASE (a requester that does not wait on its association), then the N-EVENT-REPORT
   arrives on a new association opened by the node. Time = from just before
   ``send_n_action`` (the dataset is encoded by pynetdicom inside it; the encoding alone is
   timed and printed) to the moment the report receiver's handler is called (the whole
   N-EVENT-REPORT-RQ received and decoded by pynetdicom). Association set-up of the
   requester is outside the timed span.
3. *Concurrent*: ``--concurrent`` transactions of ``--per-transaction`` instances each
   (distinct slices of the stored instances), submitted at once to ``--threads`` requester
   threads, one association per transaction (associate, N-ACTION, release). It checks that
   every transaction's report arrives, with event type 1, exactly the requested instances
   committed and none failed, and counts repeats; it records the peak number of transactions
   in flight (N-ACTION sent, report not yet in), the time to the last report, and releases
   that were aborted or took over 1 s. The node's outbox table is read afterwards: every row
   must be ``delivered``.
4. *Held* (``--held-runs``): the same, with the report receiver's listener closed (SIGUSR2;
   connections refused) until every N-ACTION-RSP is in, then opened (SIGUSR1): all the
   transactions are in flight at once by construction, and every report has to come through
   the outbox's retry (back-off 1, 2, 4 ... s), so the time to the last report measures the
   back-off, not the node's speed.

Who does what: the requester is pynetdicom in this process (threads); the report receiver is
pynetdicom in a child process of its own (``python -m bench.commit receive``), so the
requester threads do not delay it; both stamp ``time.monotonic()`` (CLOCK_MONOTONIC, one
clock for every process on Linux). A report that comes back on the N-ACTION's own
association instead is recorded too (and said so): the node tries that first by default
(``[commitment] same_association``) and falls back to a new association when the requester
has released. ``--same-association off`` runs the node with that first try disabled. A
requester whose A-RELEASE-RQ comes more than the node's settle time (50 ms) after the
N-ACTION-RSP races the report the node then sends on that association: pynetdicom's
``release()`` does not answer it, the node waits its 3 s DIMSE cap and aborts. Such
releases are counted (``release_aborted``, ``release_over_1s``).

Every wait is bounded (report waits, the whole concurrent phase, sends, start-up), and
everything started here is stopped by PID in ``finally``. Results go to
``bench/results/commit-<timestamp>.json``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import queue
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import corpus, peers, procs

REPO = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
AET_SCU = "BENCHSCU"
SOP_CLASS = "1.2.840.10008.1.20.1"
SOP_INSTANCE = "1.2.840.10008.1.20.1.1"
REPORT_WAIT_S = 60.0  # one transaction's report
CONCURRENT_WAIT_S = 300.0  # a whole concurrent phase
SEND_TIMEOUT_S = 600.0
INDEX_WAIT_S = 10.0  # acknowledged to indexed: the writer materialises in the background
TARGET_S = 1.0


def ref_digest(uids: Sequence[str]) -> str:
    """A short fingerprint of a set of SOP Instance UIDs (requested vs committed)."""
    h = hashlib.sha256()
    for uid in sorted(uids):
        h.update(uid.encode() + b"\n")
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------- report receiver (child process)


def receive(port: int, aet: str) -> int:
    """Accept N-EVENT-REPORTs on 127.0.0.1:port; one JSON line per report on stdout, until SIGTERM."""
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
    from pynetdicom import AE, evt

    lock = threading.Lock()
    opened: dict[int, float] = {}

    def emit(record: dict) -> None:
        with lock:
            sys.stdout.write(json.dumps(record) + "\n")
            sys.stdout.flush()

    def on_open(event: Any) -> None:
        opened[id(event.assoc)] = time.monotonic()

    def on_report(event: Any) -> tuple[int, None]:
        t = time.monotonic()
        ds = event.event_information
        committed = [str(item.ReferencedSOPInstanceUID) for item in ds.get("ReferencedSOPSequence", [])]
        failed = [str(item.ReferencedSOPInstanceUID) for item in ds.get("FailedSOPSequence", [])]
        emit({"uid": str(ds.get("TransactionUID", "")), "t": t, "t_open": opened.get(id(event.assoc)), "where": "new",
              "event_type": int(event.event_type), "committed": len(committed), "failed": len(failed),
              "digest": ref_digest(committed), "calling": str(event.assoc.requestor.ae_title)})
        return 0x0000, None

    ae = AE(ae_title=aet)
    ae.maximum_associations = 32
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    # The node proposes the SCP role for itself (PS3.4 J.3.3); accept it.
    ae.add_supported_context(SOP_CLASS, [ExplicitVRLittleEndian, ImplicitVRLittleEndian], scu_role=False, scp_role=True)
    handlers = [(evt.EVT_CONN_OPEN, on_open), (evt.EVT_N_EVENT_REPORT, on_report)]
    commands: queue.Queue[str] = queue.Queue()
    signal.signal(signal.SIGTERM, lambda *_: commands.put("stop"))
    signal.signal(signal.SIGINT, lambda *_: commands.put("stop"))
    signal.signal(signal.SIGUSR1, lambda *_: commands.put("open"))  # gate: start listening
    signal.signal(signal.SIGUSR2, lambda *_: commands.put("close"))  # gate: stop listening (connections refused)
    server = ae.start_server((procs.LOOPBACK, port), block=False, evt_handlers=handlers)
    emit({"ready": port})
    deadline = time.monotonic() + 24 * 3600  # bounded; the bench stops it by PID long before
    while time.monotonic() < deadline:
        try:
            command = commands.get(timeout=1.0)
        except queue.Empty:
            continue
        if command == "stop":
            break
        if command == "close" and server is not None:
            server.shutdown()
            server = None
        elif command == "open" and server is None:
            server = ae.start_server((procs.LOOPBACK, port), block=False, evt_handlers=handlers)
        emit({"gate": command, "t": time.monotonic()})
    if server is not None:
        server.shutdown()
    return 0


class ReportLog:
    """Reports seen, from the receiver child (new associations) and the requester (same association)."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.reports: dict[str, list[dict]] = {}
        self.ready = False
        self.gates: list[dict] = []
        self.garbage: list[str] = []

    def add(self, record: dict) -> None:
        with self.cond:
            if "ready" in record:
                self.ready = True
            elif "gate" in record:
                self.gates.append(record)
            else:
                self.reports.setdefault(record["uid"], []).append(record)
            self.cond.notify_all()

    def wait(self, uid: str, timeout: float) -> dict | None:
        deadline = time.monotonic() + timeout
        with self.cond:
            while uid not in self.reports:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.cond.wait(min(left, 1.0))
            return self.reports[uid][0]

    def wait_all(self, uids: Sequence[str], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self.cond:
            while not all(u in self.reports for u in uids):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.cond.wait(min(left, 1.0))
            return True


class Receiver:
    """The report receiver child: started on a free port, read in a thread, stopped by PID."""

    def __init__(self, log: ReportLog) -> None:
        self.log = log
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self._thread: threading.Thread | None = None

    def start(self, directory: Path, env: dict[str, str]) -> None:
        self.port = procs.free_port()
        env = {**env, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)}
        err = open(directory / "receiver.err", "ab")
        try:
            self.proc = subprocess.Popen([sys.executable, "-m", "bench.commit", "receive", str(self.port), AET_SCU],
                                         cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err,
                                         start_new_session=True, text=True)
        finally:
            err.close()
        self._thread = threading.Thread(target=self._read, name="receiver-reader", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + peers.START_TIMEOUT
        with self.log.cond:
            while not self.log.ready:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"report receiver did not start: {(directory / 'receiver.err').read_text(errors='replace')[-2000:]}")
                self.log.cond.wait(0.2)

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                self.log.add(json.loads(line))
            except (ValueError, KeyError):
                self.log.garbage.append(line[:200])

    def gate(self, command: str, timeout: float = 10.0) -> None:
        """Close (connections refused) or open the report listener, and wait until it has."""
        assert self.proc is not None
        seen = len(self.log.gates)
        os.kill(self.proc.pid, signal.SIGUSR2 if command == "close" else signal.SIGUSR1)
        deadline = time.monotonic() + timeout
        with self.log.cond:
            while len(self.log.gates) == seen:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"report receiver did not {command}")
                self.log.cond.wait(0.2)

    def stop(self) -> None:
        if self.proc is not None:
            procs.stop(self.proc, grace=10)
            if self.proc.stdout is not None:
                self.proc.stdout.close()


# --------------------------------------------------------------------------- the node


@dataclass
class CommitNode(peers.NodectlServe):
    """``nodectl serve`` with a peer entry for the requester and, optionally, a config file."""

    peer: str = ""
    config: Path | None = None

    def command(self, directory: Path) -> list[str]:
        cmd = super().command(directory)
        if self.peer:
            cmd += ["--peer", self.peer]
        if self.config is not None:
            cmd += ["--config", str(self.config)]
        return cmd

    def indexed(self) -> int:
        assert self.directory is not None
        with sqlite3.connect(f"file:{self.directory / 'node.sqlite'}?mode=ro", uri=True, timeout=10) as conn:
            return int(conn.execute("SELECT COUNT(*) FROM instances").fetchone()[0])

    def outbox(self) -> dict[str, int]:
        assert self.directory is not None
        with sqlite3.connect(f"file:{self.directory / 'node.sqlite'}?mode=ro", uri=True, timeout=10) as conn:
            return {state: n for state, n in conn.execute("SELECT state, COUNT(*) FROM commit_outbox GROUP BY state")}


def read_refs(files: Sequence[Path]) -> list[tuple[str, str]]:
    """(SOP Class UID, SOP Instance UID) of each file, from its file meta."""
    from pydicom import dcmread

    out = []
    for path in files:
        ds = dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID", "SOPInstanceUID"])
        out.append((str(ds.SOPClassUID), str(ds.SOPInstanceUID)))
    return out


# --------------------------------------------------------------------------- the requester


class Requester:
    """pynetdicom SCU in this process: one association per transaction, released after the RSP."""

    def __init__(self, port: int, log: ReportLog) -> None:
        from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
        from pynetdicom import AE

        self.port = port
        self.log = log
        self.ae = AE(ae_title=AET_SCU)
        self.ae.acse_timeout = self.ae.dimse_timeout = self.ae.network_timeout = 30
        self.ae.connection_timeout = 10
        self.ae.add_requested_context(SOP_CLASS, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])

    def transaction(self, refs: Sequence[tuple[str, str]]) -> dict:
        """Associate, N-ACTION, release; the request's times (the report is waited for elsewhere)."""
        from pydicom.uid import generate_uid
        from pynetdicom import evt

        from node import commitment as sc

        uid = str(generate_uid())
        ds = sc.request_dataset(sc.Request(uid, tuple(sc.Ref(c, i) for c, i in refs)))

        def same_association(event: Any) -> tuple[int, None]:
            t = time.monotonic()
            info = event.event_information
            committed = [str(item.ReferencedSOPInstanceUID) for item in info.get("ReferencedSOPSequence", [])]
            failed = [str(item.ReferencedSOPInstanceUID) for item in info.get("FailedSOPSequence", [])]
            self.log.add({"uid": str(info.get("TransactionUID", "")), "t": t, "t_open": None, "where": "same",
                          "event_type": int(event.event_type), "committed": len(committed), "failed": len(failed),
                          "digest": ref_digest(committed), "calling": ""})
            return 0x0000, None

        record = {"uid": uid, "instances": len(refs), "digest": ref_digest([i for _c, i in refs]), "status": None}
        t_assoc = time.monotonic()
        assoc = self.ae.associate(procs.LOOPBACK, self.port, ae_title="NODE", evt_handlers=[(evt.EVT_N_EVENT_REPORT, same_association)])
        if not assoc.is_established:
            record["error"] = "association not established"
            return record
        try:
            record["associate_s"] = time.monotonic() - t_assoc
            t0 = time.monotonic()
            rsp, _reply = assoc.send_n_action(ds, sc.ACTION_REQUEST_COMMITMENT, SOP_CLASS, SOP_INSTANCE)
            t_rsp = time.monotonic()
            record.update(t0=t0, t_rsp=t_rsp, rsp_s=t_rsp - t0)
            record["status"] = int(rsp.Status) if rsp is not None and "Status" in rsp else None
        finally:
            if assoc.is_established:
                assoc.release()
        record["released_s"] = time.monotonic() - record.get("t0", t_assoc)
        record["release_aborted"] = bool(assoc.is_aborted)
        return record


def finish(record: dict, report: dict | None) -> dict:
    """Join a request with its (first) report."""
    if report is None or "t0" not in record:
        return {**record, "report": None, "ok": False}
    ok = (record["status"] == 0 and report["event_type"] == 1 and report["failed"] == 0
          and report["committed"] == record["instances"] and report["digest"] == record["digest"])
    return {
        **record,
        "report": report,
        "where": report["where"],
        "latency_s": report["t"] - record["t0"],
        "after_rsp_s": report["t"] - record["t_rsp"],
        "open_after_rsp_s": (report["t_open"] - record["t_rsp"]) if report.get("t_open") else None,
        "ok": ok,
    }


def spread(values: Sequence[float]) -> dict | None:
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def peak_in_flight(rows: Sequence[dict]) -> int:
    """Most transactions at one moment with the N-ACTION sent and no report arrived yet."""
    events = []
    for row in rows:
        if "t0" in row:
            events.append((row["t0"], 1))
            end = row["report"]["t"] if row.get("report") else float("inf")
            events.append((end, -1))
    events.sort(key=lambda e: (e[0], e[1]))
    now = peak = 0
    for _t, delta in events:
        now += delta
        peak = max(peak, now)
    return peak


def single_runs(requester: Requester, log: ReportLog, refs: list[tuple[str, str]], runs: int, node_pid: int, say: Any) -> list[dict]:
    out = []
    for run in range(runs + 1):  # run 0: warm-up
        cpu0 = procs.tree_cpu(node_pid)
        record = requester.transaction(refs)
        row = finish(record, log.wait(record["uid"], REPORT_WAIT_S))
        time.sleep(0.2)  # the outbox records the delivery; count it in this run's CPU
        row["node_cpu_s"] = procs.tree_cpu(node_pid) - cpu0
        row["run"] = run
        row["warmup"] = run == 0
        out.append(row)
        if row["ok"]:
            say(f"{'warm-up' if run == 0 else f'run {run}/{runs}'}: {len(refs)} instances, N-ACTION-RSP {row['rsp_s'] * 1000:.0f} ms, "
                f"report ({row['where']} association) {row['latency_s'] * 1000:.0f} ms after the N-ACTION; node CPU {row['node_cpu_s']:.2f} s")
        else:
            why = row.get("error") or (f"no report in {REPORT_WAIT_S:.0f} s" if row.get("report") is None else f"report {row['report']}")
            say(f"run {run}: FAILED (N-ACTION status {row.get('status')}): {why}")
    return out


def concurrent_run(requester: Requester, log: ReportLog, refs: list[tuple[str, str]], count: int, per: int, threads: int, say: Any,
                   receiver: Receiver | None = None) -> dict:
    """``count`` transactions at once; with ``receiver``, reports are held (listener closed) until every RSP is in."""
    slices = [refs[(i * per) % len(refs):(i * per) % len(refs) + per] for i in range(count)]
    if receiver is not None:
        receiver.gate("close")
    started = time.monotonic()
    try:
        with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="requester") as pool:
            records = list(pool.map(requester.transaction, slices, timeout=CONCURRENT_WAIT_S))
    finally:
        if receiver is not None:
            receiver.gate("open")
    sent_all = time.monotonic()
    uids = [r["uid"] for r in records if "t0" in r]
    log.wait_all(uids, max(1.0, CONCURRENT_WAIT_S - (sent_all - started)))
    time.sleep(1.0)  # late repeats of a report would show up here
    with log.cond:
        reports = {r["uid"]: list(log.reports.get(r["uid"], [])) for r in records}
    rows = [finish(r, reports[r["uid"]][0] if reports[r["uid"]] else None) for r in records]
    arrived = [row["report"]["t"] for row in rows if row.get("report")]
    result = {
        "held": receiver is not None,
        "transactions": count,
        "instances_each": per,
        "threads": threads,
        "rsp_success": sum(1 for r in records if r.get("status") == 0),
        "reported": sum(1 for row in rows if row.get("report")),
        "complete_and_correct": sum(1 for row in rows if row["ok"]),
        "repeats": sum(max(0, len(v) - 1) for v in reports.values()),
        "same_association": sum(1 for row in rows if row.get("where") == "same"),
        "release_aborted": sum(1 for r in records if r.get("release_aborted")),
        "release_over_1s": sum(1 for r in records if r.get("released_s", 0) - r.get("rsp_s", 0) > 1.0),
        "peak_in_flight": peak_in_flight(rows),
        "all_rsp_s": sent_all - started,
        "last_report_s": (max(arrived) - started) if arrived else None,
        "latency_s": spread([row.get("latency_s") for row in rows]),
        "rsp_s": spread([row.get("rsp_s") for row in rows]),
        "associate_s": spread([row.get("associate_s") for row in rows]),
        "released_s": spread([row.get("released_s") for row in rows]),
        "lost": [row["uid"] for row in rows if not row["ok"]],
        "rows": [{k: v for k, v in row.items() if k not in ("digest",)} for row in rows],
    }
    result["ok"] = result["complete_and_correct"] == count and result["repeats"] == 0
    say(f"concurrent{' (reports held until every RSP)' if receiver else ''}: {count} x {per} instances from {threads} threads: "
        f"{result['complete_and_correct']}/{count} complete and correct, {result['release_aborted']} releases aborted, "
        f"{result['repeats']} repeated, peak in flight {result['peak_in_flight']}, all N-ACTION-RSPs after {result['all_rsp_s']:.2f} s, "
        f"last report after {result['last_report_s'] or float('nan'):.2f} s")
    return result


def start_spies(node_pid: int, seconds: float, scratch: Path) -> dict[str, tuple[subprocess.Popen, Path]]:
    """``py-spy record`` (200 Hz, raw, non-blocking) on the node's tracker and workers during the single runs."""
    spies = {}
    stamp = time.strftime("%Y%m%dT%H%M%S")
    RESULTS.mkdir(parents=True, exist_ok=True)
    for proc in procs.descendants(node_pid):
        words = proc.cmdline()
        if "run" not in words or words.index("run") + 1 >= len(words):
            continue
        actor = words[words.index("run") + 1]
        if actor == "worker" and "--worker-id" in words:
            actor += words[words.index("--worker-id") + 1]
        if actor not in ("tracker", "worker0", "worker1"):
            continue
        out = RESULTS / f"profile-commit-{stamp}-{actor}.txt"
        spies[actor] = (procs.start(["py-spy", "record", "--pid", str(proc.pid), "--duration", str(int(seconds)), "--rate", "200",
                                     "--format", "raw", "--output", str(out), "--nonblocking"], log=scratch / f"py-spy-{actor}.log"), out)
    time.sleep(1.0)  # py-spy attaches
    return spies


def finish_spies(spies: dict[str, tuple[subprocess.Popen, Path]], seconds: float, say: Any) -> dict:
    from bench import profile

    out = {}
    for role, (proc, path) in spies.items():
        try:
            proc.wait(timeout=seconds + 60)
        finally:
            procs.stop(proc, grace=5)
        if not path.exists():
            say(f"profile {role}: nothing written")
            continue
        top = profile.top(path, 12)
        out[role] = {"file": path.name, **top}
        say(f"profile {role} ({path.name}, {top['total'][0][1]} samples): own " +
            "; ".join(f"{pct:.0f}% {name}" for name, _n, pct in top["own"][:6]) +
            " | inclusive " + "; ".join(f"{pct:.0f}% {name}" for name, _n, pct in top["inclusive"][:10]))
    return out


def encode_ms(refs: list[tuple[str, str]]) -> float:
    """Client-side cost inside the timed span: encoding the N-ACTION dataset (median of 5)."""
    from pydicom.uid import generate_uid
    from pynetdicom.dsutils import encode

    from node import commitment as sc

    times = []
    for _ in range(5):
        ds = sc.request_dataset(sc.Request(str(generate_uid()), tuple(sc.Ref(c, i) for c, i in refs)))
        t = time.perf_counter()
        encode(ds, True, True)
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


def main(opts: Any) -> int:
    from bench import ingest

    command = "python -m bench " + " ".join(sys.argv[1:])
    started = dt.datetime.now(dt.timezone.utc)
    t_start = time.monotonic()

    def say(text: str) -> None:
        print(f"[{time.monotonic() - t_start:7.1f}s] {text}", flush=True)

    files = corpus.ensure("sc", opts.instances, log=say)
    refs = read_refs(files.files)
    say(f"corpus: {files.count} files, {files.total_bytes / 1e6:.1f} MB; N-ACTION dataset of {len(refs)} refs encodes in {encode_ms(refs):.1f} ms (client side)")
    log = ReportLog()
    receiver = Receiver(log)
    node = None
    scratch = Path(tempfile.mkdtemp(prefix="bench-commit-"))
    try:
        node_source = ingest.export_ref(opts.node_ref, scratch / "node-src") if opts.node_ref else REPO
        revision = ingest.node_revision(node_source, opts.node_ref)
        env = peers.base_env(nodelay=True, node_source=node_source if opts.node_ref else None)
        say(f"node under test: {revision} from {node_source}")
        receiver.start(scratch, env)
        config = None
        if opts.same_association == "off":
            config = scratch / "commit.toml"
            config.write_text("[commitment]\nsame_association = false\n")
        node = CommitNode(name="nodectl serve", peer=f"{AET_SCU}@{procs.LOOPBACK}:{receiver.port}", config=config)
        node.start(scratch / "node", env)
        say(f"nodectl serve on {node.port} (pid {node.pid}), report receiver {AET_SCU} on {receiver.port} (pid {receiver.proc.pid})")
        sent = subprocess.run([sys.executable, "-m", "node.cli", "send", "-j", "2", "--progress", "none", "-aec", node.aet,
                               procs.LOOPBACK, str(node.port), *map(str, files.files)],
                              env=env, capture_output=True, text=True, timeout=SEND_TIMEOUT_S, check=False)
        # Acknowledged instances reach the index in the writer's background batches (the
        # journal, issue 12): up to materialise_interval after the last success.
        deadline = time.monotonic() + INDEX_WAIT_S
        while (indexed := node.indexed()) < len(refs) and sent.returncode == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        if sent.returncode != 0 or indexed != len(refs):
            say(f"storing failed: nodectl send exit {sent.returncode}, {indexed}/{len(refs)} indexed\n{sent.stderr[-2000:]}")
            return 1
        say(f"stored {indexed} instances with nodectl send -j 2")
        time.sleep(1.0)
        idle0 = procs.tree_cpu(node.pid)
        time.sleep(2.0)
        idle_cpu = (procs.tree_cpu(node.pid) - idle0) / 2.0
        requester = Requester(node.port, log)
        spies = start_spies(node.pid, opts.profile, scratch) if opts.profile else {}
        with procs.TreeSampler(roots={"node": node.pid}) as sampler:
            singles = single_runs(requester, log, refs, opts.runs, node.pid, say)
            profiles = finish_spies(spies, opts.profile, say)
            concurrent = [concurrent_run(requester, log, refs, opts.concurrent, opts.per_transaction, opts.threads, say,
                                         receiver if held else None)
                          for held in [False] * opts.concurrent_runs + [True] * opts.held_runs]
        outbox = node.outbox()
        say(f"node outbox: {outbox}")
        node_log = node.log_tail(4000)
    finally:
        if node is not None:
            node.stop()
        receiver.stop()
        import shutil

        shutil.rmtree(scratch, ignore_errors=True)

    counted = [r for r in singles if not r["warmup"]]
    single = {
        "instances": len(refs),
        "runs": len(counted),
        "ok": sum(1 for r in counted if r["ok"]),
        "latency_s": spread([r.get("latency_s") for r in counted]),
        "rsp_s": spread([r.get("rsp_s") for r in counted]),
        "after_rsp_s": spread([r.get("after_rsp_s") for r in counted]),
        "open_after_rsp_s": spread([r.get("open_after_rsp_s") for r in counted]),
        "node_cpu_s": spread([r.get("node_cpu_s") for r in counted]),
        "where": sorted({r.get("where", "?") for r in counted}),
        "warmup_latency_s": singles[0].get("latency_s"),
    }
    lat = single["latency_s"]
    single["met"] = bool(lat and single["ok"] == single["runs"] and lat["median"] < TARGET_S)
    undelivered = sum(n for state, n in outbox.items() if state != "delivered")
    conc_ok = all(c["ok"] for c in concurrent) and undelivered == 0 if concurrent else None
    results = {
        "schema": 1,
        "kind": "commit",
        "command": command,
        "started": started.isoformat(timespec="seconds"),
        "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": ingest.machine(Path(tempfile.gettempdir()), node_source, revision),
        "loadavg": os.getloadavg(),
        "options": {k: v for k, v in vars(opts).items() if k != "command"},
        "corpus": {"files": files.count, "bytes": files.total_bytes, "sha256": corpus.digest(files)},
        "client_encode_ms": encode_ms(refs),
        "node_idle_cpu_s_per_s": idle_cpu,
        "single": single,
        "concurrent": concurrent,
        "concurrent_met": conc_ok,
        "outbox": outbox,
        "node_peak_rss_mib": sampler.by_role().get("node", []),
        "profiles": profiles,
        "samples": singles,
        "node_log_tail": node_log if not (single["met"] and conc_ok) else "",
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"commit-{started.strftime('%Y%m%dT%H%M%SZ')}.json"
    out.write_text(json.dumps(results, indent=1))
    if lat:
        say(f"single: {single['ok']}/{single['runs']} ok; N-ACTION to N-EVENT-REPORT median {lat['median'] * 1000:.0f} ms "
            f"({lat['min'] * 1000:.0f}–{lat['max'] * 1000:.0f}); target < {TARGET_S * 1000:.0f} ms {'met' if single['met'] else 'MISSED'}")
    say(f"concurrent: {'not run' if conc_ok is None else 'all complete, none lost' if conc_ok else 'LOSS or failure'}; results {out}")
    return 0 if single["ok"] == single["runs"] and conc_ok is not False else 1


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "receive":
        sys.exit(receive(int(sys.argv[2]), sys.argv[3]))
    print("usage: python -m bench commit [...] (python -m bench.commit receive PORT AET is the report receiver)", file=sys.stderr)
    sys.exit(2)
