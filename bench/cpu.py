"""``python -m bench cpu``: receiver CPU per 5 KiB (``--kind ct``: 512 KiB) instance, split by node process.

The ingest benchmark's CPU column is one number for the whole tree; to know what to cut we
need it per process (supervisord, listener, workers, writer, tracker, metrics). Each sample
starts ``nodectl serve`` fresh, reads the user+system time of every process in its tree,
sends the files with DCMTK storescu (TCP_NODELAY=1) over 1 or 4 associations, waits until
every instance is materialised, reads the times again and stops the node by PID. CPU time is
meaningful on a loaded machine (wall time is not), so only the CPU is reported as a figure;
the wall time and the load average are printed beside it for context.

``--flushes`` also counts every node process's flushes (fsync, fdatasync, syncfs, and
``pwritev2`` with ``RWF_DSYNC``) per instance, including the materialiser's batches until the
last file is at its final path: ``perf stat --per-thread`` attached to the node's processes
once they are up (a thread started later, such as an association's, is counted with the
thread that started it). ``bench ingest`` counts the whole tree in its timed samples; this
says which process made the flushes.

Beside the receiver, each sample counts the senders' CPU (DCMTK storescu, reaped children of
this process) and the whole machine's busy time per instance (``/proc/stat``): on a small
machine the senders share the cores with the receiver, so a receiver's rate on four
associations is bounded by what the senders leave it. ``--with-dcmtk`` adds DCMTK storescp
(``--fork`` for four associations, as in ``bench ingest``) as a receiver in every round.
"""

from __future__ import annotations

import os
import resource
import signal
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import psutil

from bench import corpus, peers, procs
from bench.scratch import remove as remove_scratch, wait_for_old_deletions


def process_times(root: int) -> dict[int, tuple[str, float, float]]:
    """pid -> (label, user s, system s, reaped children included) for the tree under ``root``:
    user time is what Python code costs, system time what the syscalls (files, sockets) cost."""
    out: dict[int, tuple[str, float, float]] = {}
    for proc in procs.tree(root):
        try:
            t = proc.cpu_times()
            out[proc.pid] = (procs.label(proc), t.user + t.children_user, t.system + t.children_system)
        except psutil.NoSuchProcess:
            continue
    return out


def role(label: str) -> str:
    """The actor a process label names (workers pooled), or the program."""
    for name in ("listener", "worker", "writer", "materialiser", "tracker", "metrics"):
        if name in label:
            return name
    return "supervisord" if "supervisord" in label else label


class Serve(peers.NodectlServe):
    """``nodectl serve`` at a chosen log level: the ingest benchmark runs it at ``warning``,
    an operator's node runs at ``info``, where per-instance lines would cost CPU."""

    log_level: str = "warning"

    def command(self, directory: Path) -> list[str]:
        cmd = super().command(directory)
        cmd[cmd.index("--log-level") + 1] = self.log_level
        return cmd


DCMTK = "DCMTK storescp"


class FlushCounter:
    """``perf stat --per-thread`` attached to a node's processes: their flushes, by role."""

    def __init__(self, roles: dict[int, str], directory: Path) -> None:
        self.roles: dict[int, str] = {}  # thread id -> role of its process
        for pid, name in roles.items():
            try:
                self.roles.update((thread.id, name) for thread in psutil.Process(pid).threads())
            except psutil.NoSuchProcess:
                continue
        self.output = directory / "flushes.perf"
        self.finished = False
        ctl, ack = directory / "perf.ctl", directory / "perf.ack"
        command = peers.perf_stat_controlled(directory, ["--per-thread", "-t", ",".join(map(str, self.roles))])
        self.proc = procs.start(command, log=directory / "perf.log", cwd=directory)
        ack_fd = os.open(ack, os.O_RDONLY | os.O_NONBLOCK)
        deadline = time.monotonic() + peers.PERF_ACK_S
        while True:  # opening a FIFO to write fails (ENXIO) until perf has opened it to read
            try:
                self.fifos = (os.open(ctl, os.O_WRONLY | os.O_NONBLOCK), ack_fd)
                break
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    os.close(ack_fd)
                    procs.stop(self.proc, grace=5)
                    raise RuntimeError(f"perf stat did not attach: {(directory / 'perf.log').read_text(errors='replace')}")
                time.sleep(0.01)
        peers.perf_control(self.fifos, "enable")

    def finish(self) -> dict[str, int]:
        """Stop counting and perf; the flushes of each role (nothing on a second call)."""
        if self.finished:
            return {}
        self.finished = True
        try:
            peers.perf_control(self.fifos, "disable")
        finally:
            for fd in self.fifos:
                os.close(fd)
            self.proc.send_signal(signal.SIGINT)  # perf writes its counts and exits
            procs.wait_exited(self.proc, 30)
        counts: dict[str, int] = {}
        for line in self.output.read_text(errors="replace").splitlines():
            fields = line.split(",")  # comm-tid, count, unit, event, ...
            if len(fields) > 3 and fields[3] in peers.PERF_EVENTS and fields[1].isdigit():
                name = self.roles.get(int(fields[0].rsplit("-", 1)[-1]), "?")
                counts[name] = counts.get(name, 0) + int(fields[1])
        return counts


def machine_busy() -> tuple[int, int]:
    """(busy, all) clock ticks of every CPU since boot (``/proc/stat``; idle and iowait are not busy)."""
    with open("/proc/stat") as fh:
        ticks = [int(x) for x in fh.readline().split()[1:]]
    return sum(ticks) - ticks[3] - ticks[4], sum(ticks)


def _receiver(source: Path | str | None, senders: str, log_level: str) -> peers.Receiver:
    if source == DCMTK:
        dcmtk = peers.DcmtkStorescp("DCMTK storescp")
        dcmtk.fork = senders == "dcmtk-4"
        return dcmtk
    receiver = Serve("nodectl serve")
    receiver.log_level = log_level
    return receiver


def sample(files: corpus.FileSet, senders: str, scratch: Path, node_source: Path | str | None, log_level: str,
           flushes: bool = False) -> dict:
    """One run: CPU ms per instance for every role and in total, plus wall time and load;
    the senders' CPU and the machine's busy time per instance beside them; with ``flushes``
    (a node only) each role's flushes per instance."""
    env = peers.base_env(True, node_source if isinstance(node_source, Path) else None)
    receiver = _receiver(node_source, senders, log_level)
    workdir = Path(tempfile.mkdtemp(prefix="cpu-", dir=scratch))
    started: list[subprocess.Popen] = []
    counter: FlushCounter | None = None
    try:
        receiver.start(workdir / "rx", env)
        time.sleep(0.5)  # every actor is up; their start-up CPU is not the per-instance cost
        before = process_times(receiver.pid)
        if flushes and isinstance(receiver, Serve):
            counter = FlushCounter({pid: role(label) for pid, (label, _, _) in before.items()}, workdir)
        load = os.getloadavg()[0]
        reaped = resource.getrusage(resource.RUSAGE_CHILDREN)
        busy0, ticks0 = machine_busy()
        t0 = time.perf_counter()
        for i, cmd in enumerate(peers.sender_commands(senders, files.files, receiver.aet, receiver.port)):
            started.append(procs.start(cmd, log=workdir / f"sender-{i}.log", cwd=workdir, env=env))
        codes = [procs.wait_exited(proc, 60 + 0.25 * files.count) for proc in started]
        senders_done = resource.getrusage(resource.RUSAGE_CHILDREN)  # only the senders were reaped meanwhile
        sent_s = time.perf_counter() - t0
        receiver.settle(files.count)
        wall = time.perf_counter() - t0
        after = process_times(receiver.pid)
        busy1, ticks1 = machine_busy()
        flush_counts, counter = (counter.finish() if counter else {}), None
        stored = receiver.stored()
        if any(codes) or stored != files.count:
            raise RuntimeError(f"senders exited {codes}, node holds {stored} of {files.count}:\n{receiver.log_tail()}")
        per_role: dict[str, float] = {}
        for pid, (label, user, system) in after.items():
            _, user0, system0 = before.get(pid, (label, 0.0, 0.0))
            for kind, spent in (("user", user - user0), ("sys", system - system0)):
                key = f"{role(label)} {kind}"
                per_role[key] = per_role.get(key, 0.0) + spent * 1000 / files.count
        sender_s = (senders_done.ru_utime - reaped.ru_utime) + (senders_done.ru_stime - reaped.ru_stime)
        tick_s = 1 / os.sysconf("SC_CLK_TCK")
        return {"ms": per_role, "total_ms": sum(per_role.values()), "wall_s": wall, "sent_s": sent_s, "load_1m": load,
                "senders_ms": sender_s * 1000 / files.count, "machine_ms": (busy1 - busy0) * tick_s * 1000 / files.count,
                "idle": 1 - (busy1 - busy0) / max(1, ticks1 - ticks0),
                "flushes": {name: n / files.count for name, n in flush_counts.items()}}
    finally:
        if counter is not None:
            counter.finish()
        for proc in started:
            procs.stop(proc, grace=5)
        receiver.stop()
        # the directory stays until the run ends: deleted files slow the next sample's (bench/scratch.py)


def report(name: str, senders: str, kind: str, count: int, log_level: str, runs: list[dict]) -> None:
    """Median CPU per instance in total and per role and process kind, with the load beside it."""
    roles = sorted({r for run in runs for r in run["ms"]})
    size = "512 KiB" if kind == "ct" else "5 KiB"
    print(f"\n{name}, {senders}: {count} x {size}, log level {log_level}, {len(runs)} runs, load (1 min) at start "
          + ", ".join(f"{run['load_1m']:.1f}" for run in runs))
    print(f"  total CPU ms/instance: median {statistics.median(r['total_ms'] for r in runs):.3f}  runs "
          + ", ".join(f"{r['total_ms']:.3f}" for r in runs))
    for role_kind in roles:
        values = [r["ms"].get(role_kind, 0.0) for r in runs]
        if max(values) >= 0.01:
            print(f"  {role_kind:12s} {statistics.median(values):.3f}")
    print(f"  senders      {statistics.median(r['senders_ms'] for r in runs):.3f}  (DCMTK storescu, ms of CPU per instance)")
    print(f"  machine busy {statistics.median(r['machine_ms'] for r in runs):.3f}  (every CPU, ms per instance; idle "
          + ", ".join(f"{r['idle']:.0%}" for r in runs) + ")")
    if any(r["flushes"] for r in runs):
        flushers = sorted({who for r in runs for who in r["flushes"]})
        totals = [sum(r["flushes"].values()) for r in runs]
        print(f"  flushes/instance: median {statistics.median(totals):.4f}  runs " + ", ".join(f"{t:.4f}" for t in totals))
        for who in flushers:
            value = statistics.median(r["flushes"].get(who, 0.0) for r in runs)
            if value:
                print(f"    {who:12s} {value:.4f}")
    print("  wall s (not a claim under load): " + ", ".join(f"{r['wall_s']:.1f}" for r in runs))
    # The senders' time alone: the wall time above includes waiting until every file is at its
    # final path, which a change to materialisation moves without changing what a sender sees.
    print("  senders s, start to last exit: " + ", ".join(f"{r['sent_s']:.2f}" for r in runs))


def main(opts) -> int:
    """Every run of every source in turn (run 1 of each, then run 2, ...): a before/after
    comparison shares the machine's load instead of meeting a different one. The source that
    goes first changes from round to round: whichever went first in every round spent ~10% more
    worker user CPU on one association, in both orders (docs/benchmarks.md, 2026-12-04 22:25)."""
    files = corpus.ensure(opts.kind, opts.files)
    root = Path(opts.scratch) if opts.scratch else Path(tempfile.gettempdir())
    wait_for_old_deletions(root, print)
    scratch = Path(tempfile.mkdtemp(prefix="cpu-run-", dir=root))  # samples' directories, deleted at the end
    try:
        return _run_all(opts, files, scratch)
    finally:
        remove_scratch(scratch, root)


def rotated(items: list, n: int) -> list:
    """``items`` starting at its ``n``-th (modulo its length): round ``n``'s order."""
    k = n % len(items) if items else 0
    return items[k:] + items[:k]


def _run_all(opts, files: corpus.FileSet, scratch: Path) -> int:
    sources: dict[str, Path | str | None] = {"this tree" if not opts.node_source else opts.node_source:
                                       Path(opts.node_source) if opts.node_source else None}
    if opts.baseline:
        sources[f"baseline {opts.baseline}"] = Path(opts.baseline)
    if opts.with_dcmtk:
        sources[DCMTK] = DCMTK
    for senders in opts.senders:
        runs: dict[str, list[dict]] = {name: [] for name in sources}
        for n in range(opts.runs):
            for name, source in rotated(list(sources.items()), n):
                runs[name].append(sample(files, senders, scratch, source, opts.log_level, opts.flushes))
        for name in sources:
            report(name, senders, opts.kind, files.count, opts.log_level, runs[name])
    return 0
