"""``python -m bench ingest``: C-STORE throughput of senders into receivers, side by side.

Every combination runs on the same corpus in the same invocation, interleaved (run 1 of
every combination, then run 2, ...) so drift on this noisy machine spreads over all of
them. Each sample starts its receiver fresh in an empty directory, takes the receiver's CPU
time, polls every process's RSS every 50 ms while the sender(s) run, takes the CPU time
again before stopping the receiver, checks that the sender exited 0 and the receiver holds
every instance, and stops everything by PID in ``finally``.

A sample's time runs from starting the sender process(es) to the exit of the last one: it
includes process start and association set-up, which weighs on the fastest, shortest runs
(DCMTK into DCMTK) and makes their figures lower bounds. nodectl's CPU is taken once it has
materialised every acknowledged instance (its writer's journal, issue 12).

Flushes per acknowledged instance (issue 12): fsync, fdatasync and syncfs calls, and
``pwritev2`` with ``RWF_DSYNC``, of the whole node, from the senders' start until everything
is materialised. Where ``perf stat`` can count system calls (the ``linux-perf`` package,
tracefs, root), every nodectl sample runs under it and is counted in the kernel, without
stopping the node. Elsewhere, after the timed runs, one more sample of every nodectl
combination runs under ``strace -f --seccomp-bpf``; that sample's time and CPU are not used,
and its count runs a little high (docs/benchmarks.md, 2026-12-04, 20:35: a traced node is
slower, and a slower node makes smaller group commits).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from bench import corpus, limits, peers, procs
from bench.scratch import remove as remove_scratch, wait_for_old_deletions

REPO = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True, slots=True)
class Profile:
    name: str
    ct: int  # 512 KiB files
    sc: int  # 5 KiB files
    nagle_sc: int  # 5 KiB files sent with DCMTK's defaults (Nagle on: ~40-90 ms each)
    runs: int
    limit_runs: int
    fsync_files: tuple[int, int]  # (5 KiB, 512 KiB) files per fsync measurement
    loopback_bytes: int
    time_limit_s: float  # no new sample starts after this


PROFILES = {
    "full": Profile("full", ct=400, sc=3000, nagle_sc=500, runs=5, limit_runs=5, fsync_files=(2000, 400), loopback_bytes=1 << 30, time_limit_s=3 * 3600),
    "quick": Profile("quick", ct=100, sc=500, nagle_sc=100, runs=3, limit_runs=3, fsync_files=(500, 100), loopback_bytes=1 << 30, time_limit_s=13 * 60),
}


@dataclass(frozen=True, slots=True)
class Combo:
    """One sender into one receiver, on one file set, in one Nagle mode."""

    fileset: str  # "sc", "ct", "sc-nagle"
    mode: str  # "nodelay" (TCP_NODELAY=1 for DCMTK-based processes) or "defaults"
    sender: str
    receiver: str

    @property
    def key(self) -> str:
        return f"{self.fileset}/{self.mode}/{self.sender}->{self.receiver}"


def _group(fileset: str, mode: str, senders: list[str], receivers: list[str]) -> list[Combo]:
    return [Combo(fileset, mode, s, r) for s in senders for r in receivers]


# The issue's targets, each computable from medians of one run (see TARGETS below).
COMBOS: list[Combo] = [
    *_group("sc", "nodelay", ["dcmtk-1"], ["nodectl", "dcmtk", "dcmtk-fork", "pynetdicom", "orthanc", "bare", "bare-noflush"]),
    *_group("sc", "nodelay", ["dcmtk-4"], ["nodectl", "dcmtk-fork", "orthanc", "bare", "bare-2", "bare-group-2", "bare-shared-2", "bare-noflush"]),
    *_group("sc", "nodelay", ["send-1", "send-4", "pynetdicom"], ["dcmtk-fork"]),
    *_group("sc", "nodelay", ["send-4"], ["nodectl"]),
    *_group("ct", "nodelay", ["dcmtk-1"], ["nodectl", "dcmtk", "pynetdicom", "orthanc", "bare"]),
    *_group("ct", "nodelay", ["dcmtk-4"], ["nodectl", "dcmtk-fork", "orthanc"]),
    *_group("ct", "nodelay", ["send-1", "send-4"], ["dcmtk-fork"]),
    *_group("sc-nagle", "defaults", ["dcmtk-1"], ["nodectl", "dcmtk", "pynetdicom", "orthanc"]),
    *_group("sc-nagle", "defaults", ["pynetdicom"], ["nodectl", "pynetdicom"]),
]


@dataclass(frozen=True, slots=True)
class Target:
    """``ours`` divided by ``peer`` (medians of ``metric``) should be at least ``ratio``."""

    label: str
    ours: str  # combo key
    peer: str
    metric: str  # "images_s" or "mb_s"
    ratio: float
    issue: int = 6


@dataclass(frozen=True, slots=True)
class Ceiling:
    """The median of ``metric`` in combo ``ours`` should be at most ``limit`` (issue 12's
    absolute targets: flushes and receiver CPU per acknowledged instance)."""

    label: str
    ours: str  # combo key
    metric: str  # a summary key: "flushes_per_instance" or "receiver_cpu_s_per_1000" (= ms per instance)
    limit: float
    issue: int = 12


TARGETS = [
    Target("5 KiB, 1 association: nodectl serve vs pynetdicom storescp", "sc/nodelay/dcmtk-1->nodectl", "sc/nodelay/dcmtk-1->pynetdicom", "images_s", 5.0),
    Target("5 KiB, 1 association: nodectl serve vs Orthanc", "sc/nodelay/dcmtk-1->nodectl", "sc/nodelay/dcmtk-1->orthanc", "images_s", 1.5),
    Target("5 KiB, 4 associations: nodectl serve vs DCMTK storescp --fork", "sc/nodelay/dcmtk-4->nodectl", "sc/nodelay/dcmtk-4->dcmtk-fork", "images_s", 0.5),
    Target("5 KiB, 4 associations: nodectl serve vs Orthanc", "sc/nodelay/dcmtk-4->nodectl", "sc/nodelay/dcmtk-4->orthanc", "images_s", 2.0),
    Target("512 KiB, 1 association: nodectl serve vs DCMTK storescp", "ct/nodelay/dcmtk-1->nodectl", "ct/nodelay/dcmtk-1->dcmtk", "mb_s", 0.5),
    Target("512 KiB, 1 association: nodectl serve vs Orthanc", "ct/nodelay/dcmtk-1->nodectl", "ct/nodelay/dcmtk-1->orthanc", "mb_s", 2.0),
    Target("sender, 5 KiB into storescp --fork: nodectl send -j 4 vs one DCMTK storescu", "sc/nodelay/send-4->dcmtk-fork", "sc/nodelay/dcmtk-1->dcmtk-fork", "images_s", 1.5),
    Target("sender, 5 KiB into storescp --fork: nodectl send -j 1 vs pynetdicom storescu", "sc/nodelay/send-1->dcmtk-fork", "sc/nodelay/pynetdicom->dcmtk-fork", "images_s", 5.0),
    # issue 12 (durable ingest at the disk's limit)
    Target("5 KiB, 1 association: nodectl serve vs Orthanc", "sc/nodelay/dcmtk-1->nodectl", "sc/nodelay/dcmtk-1->orthanc", "images_s", 2.0, 12),
    Target("5 KiB, 1 association: nodectl serve vs DCMTK storescp", "sc/nodelay/dcmtk-1->nodectl", "sc/nodelay/dcmtk-1->dcmtk", "images_s", 0.5, 12),
    Target("5 KiB, 4 associations: nodectl serve vs Orthanc", "sc/nodelay/dcmtk-4->nodectl", "sc/nodelay/dcmtk-4->orthanc", "images_s", 2.5, 12),
    Target("5 KiB, 4 associations: nodectl serve vs DCMTK storescp --fork", "sc/nodelay/dcmtk-4->nodectl", "sc/nodelay/dcmtk-4->dcmtk-fork", "images_s", 0.6, 12),
    Target("512 KiB, 1 association: nodectl serve vs Orthanc", "ct/nodelay/dcmtk-1->nodectl", "ct/nodelay/dcmtk-1->orthanc", "mb_s", 2.0, 12),
    Target("512 KiB, 1 association: nodectl serve vs DCMTK storescp", "ct/nodelay/dcmtk-1->nodectl", "ct/nodelay/dcmtk-1->dcmtk", "mb_s", 0.5, 12),
]

CEILINGS = [
    Ceiling("flushes per acknowledged instance, 5 KiB, 1 association", "sc/nodelay/dcmtk-1->nodectl", "flushes_per_instance", 1.0),
    Ceiling("flushes per acknowledged instance, 5 KiB, 4 associations", "sc/nodelay/dcmtk-4->nodectl", "flushes_per_instance", 0.5),
    Ceiling("receiver CPU ms per 5 KiB instance, 1 association", "sc/nodelay/dcmtk-1->nodectl", "receiver_cpu_s_per_1000", 1.5),
    Ceiling("receiver CPU ms per 5 KiB instance, 4 associations", "sc/nodelay/dcmtk-4->nodectl", "receiver_cpu_s_per_1000", 1.5),
    Ceiling("receiver CPU ms per 512 KiB instance, 1 association", "ct/nodelay/dcmtk-1->nodectl", "receiver_cpu_s_per_1000", 4.0),
]


def machine(scratch: Path, node_source: Path, node_rev: str) -> dict:
    """Cores, CPU model, kernel, Python, peers' versions, filesystem of the stores."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    fs = "?"
    try:
        best = ""
        for line in Path("/proc/mounts").read_text().splitlines():
            dev, mnt, fstype, *_ = line.split()
            if str(scratch.resolve()).startswith(mnt) and len(mnt) > len(best):
                best, fs = mnt, f"{fstype}{_ext4_journal(fstype, dev)} on {dev} ({mnt})"
    except OSError:
        pass
    return {
        "cores": os.cpu_count(),
        "cpu": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "memory_mib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20),
        "scratch_fs": fs,
        "versions": peers.versions(),
        "node_source": str(node_source),
        "node_revision": node_rev,
    }


def _ext4_journal(fstype: str, dev: str) -> str:
    """Whether an ext4 has a journal, said in the report (this machine's root filesystem has none):
    there a flush costs differently and file creations scan recently deleted inodes
    (bench/scratch.py), so a report says which kind its figures come from. jbd2 lists each
    journal it runs as /proc/fs/jbd2/<device>-<inode>."""
    if fstype != "ext4":
        return ""
    try:
        journals = os.listdir("/proc/fs/jbd2")
    except OSError:
        return ""
    name = os.path.basename(dev)
    return " with a journal" if any(j.startswith(name + "-") for j in journals) else " without a journal"


def node_revision(source: Path, ref: str | None) -> str:
    """The commit of the node under test, with ``+dirty`` when node/ or actors/ differ from it."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=30).stdout.strip()

    if ref:
        return git("rev-parse", ref)
    head = git("rev-parse", "HEAD")
    dirty = git("status", "--porcelain", "--", "node", "actors")
    return head + ("+dirty" if dirty else "")


def export_ref(ref: str, into: Path) -> Path:
    """``git archive`` of ``ref``'s node/ and actors/ into ``into`` (a clean tree to run)."""
    into.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", ref, "node", "actors"], capture_output=True, timeout=60, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True, timeout=60)
    return into


def run_sample(combo: Combo, files: corpus.FileSet, scratch: Path, node_source: Path, log: Callable[[str], None],
               *, count_flushes: str = "") -> dict:
    """One timed transfer; everything started here is stopped here. ``count_flushes``: how a
    nodectl receiver's flushes are counted (``peers.NodectlServe.count``: "perf", or "strace",
    which distorts the sample's time and CPU)."""
    env = peers.base_env(combo.mode == "nodelay", node_source)
    receiver = peers.RECEIVERS[combo.receiver]()
    if isinstance(receiver, peers.NodectlServe):
        receiver.count = count_flushes
    workdir = Path(tempfile.mkdtemp(prefix="s-", dir=scratch))
    senders: list[subprocess.Popen] = []
    # Other work on the machine (load average at the start) is recorded: it explains outliers.
    result: dict = {"ok": False, "error": "", "loadavg_1m": os.getloadavg()[0]}
    try:
        # The disk starts every sample clean: what earlier samples wrote without a flush
        # (DCMTK's and pynetdicom's receivers do not flush) is written back now, not during
        # this one (it raised every receiver's CPU from run to run: docs/benchmarks.md,
        # 2026-12-03).
        os.sync()
        receiver.start(workdir / "rx", env)
        commands = peers.sender_commands(combo.sender, files.files, receiver.aet, receiver.port)
        timeout = 60 + 0.25 * files.count
        cpu0 = procs.tree_cpu(receiver.pid)
        ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        sampler = procs.TreeSampler({"receiver": receiver.pid})
        receiver.begin_flush_count()
        with sampler:
            start = time.perf_counter()
            for i, cmd in enumerate(commands):
                proc = procs.start(cmd, log=workdir / f"sender-{i}.log", cwd=workdir, env=env)
                senders.append(proc)
                sampler.add_root("sender", proc.pid)
            deadline = time.monotonic() + timeout
            codes = []
            for proc in senders:
                try:
                    codes.append(procs.wait_exited(proc, max(0.1, deadline - time.monotonic())))
                except subprocess.TimeoutExpired:
                    codes.append(None)
            elapsed = time.perf_counter() - start
            # nodectl acknowledges from its journal: its files and index rows follow within
            # ~50 ms; the CPU and flushes of that work belong to the sample.
            receiver.settle(files.count)
        receiver.end_flush_count()
        cpu1 = procs.tree_cpu(receiver.pid)
        ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        stored = receiver.stored()
        total = files.total_bytes
        result.update(
            seconds=elapsed,
            images=files.count,
            bytes=total,
            images_s=files.count / elapsed,
            mb_s=total / elapsed / 1e6,
            receiver_cpu_s=cpu1 - cpu0,
            receiver_cpu_s_per_1000=(cpu1 - cpu0) / files.count * 1000,
            sender_cpu_s=(ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime),
            peak_rss=sampler.by_role(),
            rss_samples=sampler.samples,
            sender_exit=codes,
            stored=stored,
        )
        problems = []
        if any(code != 0 for code in codes):
            problems.append(f"sender exit {codes}")
        if stored != files.count:
            problems.append(f"receiver holds {stored} of {files.count}")
        result["ok"] = not problems
        result["error"] = "; ".join(problems)
        if problems:
            tails = [(workdir / f"sender-{i}.log").read_text(errors="replace")[-800:] for i in range(len(senders))]
            result["log_tail"] = {"receiver": receiver.log_tail(1500), "senders": tails}
    except Exception as exc:  # a failed sample is recorded, the run goes on
        result["error"] = f"{type(exc).__name__}: {exc}"
        result["log_tail"] = {"receiver": receiver.log_tail(1500)}
    finally:
        for proc in senders:
            procs.stop(proc, grace=5)
        receiver.stop()
        # the directory stays until the run ends: deleted files slow the next sample's (bench/scratch.py)
    flushes = receiver.flushes()  # perf writes its counts as the node ends
    if flushes is not None and result.get("images"):
        result.update(flushes=flushes, flushes_per_instance=flushes / result["images"], flushes_counted_by=count_flushes)
    return result


def summarize(samples: list[dict]) -> dict:
    """Median, min and max of the good samples; the worst peak RSS per process label."""
    good = [s for s in samples if s.get("ok")]
    out: dict = {"runs": len(samples), "ok": len(good)}
    if not good:
        out["errors"] = sorted({s.get("error", "") for s in samples})
        return out
    for key in ("seconds", "images_s", "mb_s", "receiver_cpu_s_per_1000", "sender_cpu_s"):
        values = [s[key] for s in good]
        out[key] = {"median": statistics.median(values), "min": min(values), "max": max(values)}
    counted = [s["flushes_per_instance"] for s in good if "flushes_per_instance" in s]
    if counted:  # counted by perf in the timed samples themselves
        out["flushes_per_instance"] = {"median": statistics.median(counted), "min": min(counted), "max": max(counted)}
    rss: dict[str, dict[str, float]] = {}
    for s in good:
        for role, entries in s["peak_rss"].items():
            for entry in entries:
                slot = rss.setdefault(role, {})
                slot[entry["label"]] = max(slot.get(entry["label"], 0.0), entry["peak_rss_mib"])
    out["peak_rss_mib"] = rss
    out["peak_rss_mib_max"] = {role: max(labels.values()) for role, labels in rss.items()}
    bad = [s.get("error", "") for s in samples if not s.get("ok")]
    if bad:
        out["errors"] = bad
    return out


def evaluate(summaries: dict[str, dict]) -> list[dict]:
    out = []
    for t in TARGETS:
        ours, peer = summaries.get(t.ours, {}), summaries.get(t.peer, {})
        entry = {**asdict(t), "measured": None, "met": None}
        if t.metric in ours and t.metric in peer:
            measured = ours[t.metric]["median"] / peer[t.metric]["median"]
            entry.update(
                measured=measured,
                met=measured >= t.ratio,
                # the ratio the spread allows: worst ours / best peer .. best ours / worst peer
                low=ours[t.metric]["min"] / peer[t.metric]["max"],
                high=ours[t.metric]["max"] / peer[t.metric]["min"],
                shortfall=max(0.0, 1 - measured / t.ratio),
            )
        out.append(entry)
    return out


def evaluate_ceilings(summaries: dict[str, dict]) -> list[dict]:
    """Each ceiling with the median, the runs' range, met, and by how much it is exceeded."""
    out = []
    for c in CEILINGS:
        figures = summaries.get(c.ours, {}).get(c.metric)
        entry = {**asdict(c), "measured": None, "met": None}
        if figures:
            entry.update(measured=figures["median"], low=figures["min"], high=figures["max"],
                         met=figures["median"] <= c.limit, excess=max(0.0, figures["median"] / c.limit - 1))
        out.append(entry)
    return out


def flush_counter(choice: str) -> str:
    """The counter of the timed samples: "perf" (asked, or auto where perf can count), else ""."""
    if choice == "perf" and not peers.perf_counts_flushes():
        raise SystemExit("bench: perf cannot count system calls here (install linux-perf; needs tracefs and root)")
    if choice == "perf" or (choice == "auto" and peers.perf_counts_flushes()):
        return "perf"
    return ""


def main(opts) -> int:
    profile = PROFILES["quick" if opts.quick else "full"]
    if opts.runs:
        profile = Profile(**{**asdict(profile), "runs": opts.runs})
    overrides = {"time_limit_s": opts.time_limit, "sc": opts.sc, "ct": opts.ct, "nagle_sc": opts.nagle_sc}
    profile = Profile(**{**asdict(profile), **{k: v for k, v in overrides.items() if v}})
    command = "python -m bench " + " ".join(sys.argv[1:])
    started = dt.datetime.now(dt.timezone.utc)
    t0 = time.monotonic()

    def log(text: str) -> None:
        print(f"[{time.monotonic() - t0:7.1f}s] {text}", flush=True)

    for program in (peers.DCMTK_STORESCP, peers.DCMTK_STORESCU, peers.ORTHANC):
        if not os.access(program, os.X_OK):
            print(f"bench: {program} is missing (bash .ci/run installs DCMTK and Orthanc)", file=sys.stderr)
            return 2
    scratch_root = Path(opts.scratch) if opts.scratch else Path(tempfile.gettempdir())
    wait_for_old_deletions(scratch_root, log)
    scratch = Path(tempfile.mkdtemp(prefix="bench-", dir=scratch_root))
    try:
        if opts.node_ref:
            node_source = export_ref(opts.node_ref, scratch / "node-src")
        else:
            node_source = REPO
        rev = node_revision(node_source, opts.node_ref)
        log(f"profile {profile.name}: {profile.runs} runs, node {rev} from {node_source}, scratch {scratch}")

        sets = {
            "sc": corpus.ensure("sc", profile.sc, log=log),
            "ct": corpus.ensure("ct", profile.ct, log=log),
        }
        sets["sc-nagle"] = sets["sc"].head(profile.nagle_sc)
        corpus_info = {name: {"files": fs.count, "bytes": fs.total_bytes, "sha256": corpus.digest(fs)} for name, fs in sets.items()}
        log("corpus: " + ", ".join(f"{k} {v['files']} files {v['bytes'] / 1e6:.1f} MB" for k, v in corpus_info.items()))

        info = machine(scratch, node_source, rev)
        combos = [c for c in COMBOS if not opts.only or any(part in c.key for part in opts.only)]
        limit_values = None
        if not opts.skip_limits:
            limit_values = limits.measure(scratch, sets["sc"].files, runs=profile.limit_runs, creates=profile.fsync_files,
                                          loop_bytes=profile.loopback_bytes, log=log)

        samples: dict[str, list[dict]] = {c.key: [] for c in combos}
        skipped = 0
        # Flushes (issue 12) are counted in the timed samples themselves when perf can count
        # system calls here; otherwise in one more sample per nodectl combination under strace.
        counter = flush_counter(opts.count_flushes)
        if counter:
            log(f"flushes counted by {counter}, in the timed samples")
        else:
            log("flushes counted " + ("by strace, in samples of their own" if opts.count_flushes != "none" else "by nobody"))
        for run in range(profile.runs):
            for combo in combos:
                if time.monotonic() - t0 > profile.time_limit_s:
                    skipped += 1
                    continue
                sample = run_sample(combo, sets[combo.fileset], scratch, node_source, log, count_flushes=counter)
                sample["run"] = run + 1
                samples[combo.key].append(sample)
                if sample["ok"]:
                    flushes = f" flushes {sample['flushes_per_instance']:.3f}/instance" if "flushes_per_instance" in sample else ""
                    log(f"run {run + 1}/{profile.runs} {combo.key}: {sample['images_s']:.0f} img/s {sample['mb_s']:.1f} MB/s "
                        f"rx cpu {sample['receiver_cpu_s_per_1000']:.2f} s/1000{flushes}")
                else:
                    log(f"run {run + 1}/{profile.runs} {combo.key}: FAILED {sample['error']}")
        if skipped:
            log(f"time limit {profile.time_limit_s:.0f} s reached: {skipped} sample(s) not run")

        # Without perf: one more sample of every nodectl combination under strace, counted
        # apart, since tracing distorts the time and CPU of the sample it watches.
        traced: dict[str, list[dict]] = {}
        if not counter and opts.count_flushes in ("auto", "strace") and shutil.which("strace"):
            for combo in combos:
                if combo.receiver != "nodectl" or time.monotonic() - t0 > profile.time_limit_s:
                    continue
                sample = run_sample(combo, sets[combo.fileset], scratch, node_source, log, count_flushes="strace")
                traced.setdefault(combo.key, []).append(sample)
                if sample.get("ok") and "flushes_per_instance" in sample:
                    log(f"flush count {combo.key}: {sample['flushes']} flushes, {sample['flushes_per_instance']:.3f} per instance")
                else:
                    log(f"flush count {combo.key}: FAILED {sample.get('error')}")

        summaries = {key: summarize(s) for key, s in samples.items()}
        for key, runs in traced.items():
            values = [s["flushes_per_instance"] for s in runs if s.get("ok") and "flushes_per_instance" in s]
            if values and key in summaries:
                summaries[key]["flushes_per_instance"] = {"median": statistics.median(values), "min": min(values), "max": max(values)}
        finished = dt.datetime.now(dt.timezone.utc)
        results = {
            "schema": 1,
            "command": command,
            "started": started.isoformat(timespec="seconds"),
            "finished": finished.isoformat(timespec="seconds"),
            "profile": asdict(profile),
            "flushes_counted_by": counter or ("strace" if traced else ""),
            "machine": info,
            "corpus": corpus_info,
            "limits": limit_values,
            "combos": [{**asdict(c), "key": c.key} for c in combos],
            "summaries": summaries,
            "targets": evaluate(summaries),
            "ceilings": evaluate_ceilings(summaries),
            "skipped_samples": skipped,
            "samples": samples,
            "flush_samples": traced,
        }
        RESULTS.mkdir(parents=True, exist_ok=True)
        out = RESULTS / f"{started.strftime('%Y%m%dT%H%M%SZ')}.json"
        out.write_text(json.dumps(results, indent=1))
        log(f"results: {out}")
        if not opts.no_doc:
            from bench import report

            report.update_doc(results, out)
            log(f"table regenerated in {report.DOC}")
        return 0
    finally:
        remove_scratch(scratch, scratch_root)
