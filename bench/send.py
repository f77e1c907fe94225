"""``python -m bench send``: the sender's speed, issue 13 item 6, in one run.

A 5,000-file job of 5 KiB Secondary Capture files (the ``sc`` corpus) into DCMTK storescp
``--fork``, sent by one DCMTK storescu, by ``nodectl send -j 1`` and by ``nodectl send -j 4``
(optionally ``--async N`` too). The senders take turns within each round, so a burst of load
from the machine's other users falls on all of them alike; each sample gets a fresh receiver
directory. A sample's time runs from starting the sender to its exit, interpreter start-up
included (that is what a scripted job pays), and counts only when the sender exited 0 and the
receiver holds every file; the receiver's directory is removed after each sample
(``--scratch /dev/shm`` keeps a slow disk out of the figures). The sender's CPU (its own and
its workers', from ``getrusage``) is recorded too. The node's modules are compiled to bytecode
first, as an installed nodectl has them (``compile_bytecode``; ``--from-source`` leaves them). Every DCMTK process gets ``TCP_NODELAY=1``
(see ``peers.py``) unless ``--dcmtk-defaults``: then storescp and storescu run with Nagle on, as
DCMTK does at a site unless told; nodectl always sets ``TCP_NODELAY`` on its own sockets. The load average is recorded with every sample: on a shared machine
the figures are only comparable within one run.
"""

from __future__ import annotations

import compileall
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import corpus, peers, procs

SENDER_TIMEOUT_S = 600.0
TARGETS = {"send-1": 0.7, "send-4": 1.5, "base-send-1": 0.7, "base-send-4": 1.5}  # x one DCMTK storescu (issue 13 item 6)


def sender_command(sender: str, files: list[Path], port: int) -> list[str]:
    """``dcmtk-1``, ``send-N`` or ``send-N-async-M`` (``base-`` in front: the baseline's) as one command line."""
    if sender == "dcmtk-1":
        return peers.sender_commands("dcmtk-1", files, "ANY-SCP", port)[0]
    parts = sender.removeprefix("base-").split("-")
    cmd = [sys.executable, "-m", "node.cli", "send", "-j", parts[1], "--progress", "none", "-aec", "ANY-SCP"]
    if len(parts) == 4 and parts[2] == "async":
        cmd += ["--async", parts[3]]
    return [*cmd, procs.LOOPBACK, str(port), *map(str, files)]


def sender_env(sender: str, env: dict[str, str], baseline: str | None) -> dict[str, str]:
    """A ``base-`` sender runs nodectl from the baseline's tree (PYTHONPATH first)."""
    if not sender.startswith("base-") or not baseline:
        return env
    return {**env, "PYTHONPATH": os.pathsep.join(p for p in (baseline, env.get("PYTHONPATH", "")) if p)}


def one_sample(sender: str, files: list[Path], env: dict[str, str], scratch: Path) -> dict:
    """Start a fresh storescp --fork, time the sender, count what arrived, stop the receiver.

    The receiver gets the sender's ``TCP_NODELAY`` setting (``peers.base_env``)."""
    receiver = peers.DcmtkStorescp("DCMTK storescp --fork", fork=True)
    workdir = Path(tempfile.mkdtemp(prefix=f"{sender}-", dir=scratch))
    receiver.start(workdir, {k: v for k, v in env.items() if k != "PYTHONPATH"})
    load = os.getloadavg()[0]
    try:
        started, cpu = time.monotonic(), _children_cpu()
        # cwd: the scratch directory, so ``python -m`` imports nodectl from PYTHONPATH (a baseline) or
        # the installed tree, never from whatever directory the benchmark was started in
        proc = procs.start(sender_command(sender, files, receiver.port), log=workdir / "sender.log", cwd=workdir, env=env)
        try:
            code = procs.wait_exited(proc, SENDER_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            procs.stop(proc)
            code = None
        seconds = time.monotonic() - started
        sender_cpu = _children_cpu() - cpu  # the sender and every process it waited for (its forked workers)
        stored = _settled_count(receiver, len(files))
    finally:
        receiver.stop()
    ok = code == 0 and stored == len(files)
    log_tail = (workdir / "sender.log").read_text(errors="replace")[-1500:]
    shutil.rmtree(workdir, ignore_errors=True)  # now, so no sample pays for an earlier one's files
    result = {"sender": sender, "seconds": seconds, "images_s": len(files) / seconds, "exit": code,
              "sender_cpu_us_per_file": sender_cpu / len(files) * 1e6,
              "stored": stored, "ok": ok, "load1": load}
    if not ok:
        result["log_tail"] = log_tail
    return result


def _children_cpu() -> float:
    """User + system seconds of every child this process has waited for so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _settled_count(receiver: peers.DcmtkStorescp, expected: int, timeout: float = 10.0) -> int:
    """storescp --fork children may still be writing the last file when the sender exits."""
    deadline = time.monotonic() + timeout
    stored = receiver.stored()
    while stored < expected and time.monotonic() < deadline:
        time.sleep(0.05)
        stored = receiver.stored()
    return stored


def summarise(samples: list[dict], senders: list[str]) -> dict:
    """Median and spread of images/s per sender, and each nodectl median over DCMTK's."""
    out: dict = {}
    for sender in senders:
        rates = [s["images_s"] for s in samples if s["sender"] == sender and s["ok"]]
        loads = [s["load1"] for s in samples if s["sender"] == sender]
        cpu = [s["sender_cpu_us_per_file"] for s in samples if s["sender"] == sender and s["ok"]]
        out[sender] = {"median": statistics.median(rates) if rates else None, "min": min(rates, default=None),
                       "max": max(rates, default=None), "good": len(rates),
                       "runs": sum(1 for s in samples if s["sender"] == sender),
                       "load1": [round(x, 2) for x in loads],
                       "cpu_us_per_file": statistics.median(cpu) if cpu else None}
    base = out.get("dcmtk-1", {}).get("median")
    for sender in senders:
        median = out[sender]["median"]
        out[sender]["ratio"] = median / base if base and median else None
        paired = round_ratios(samples, sender)
        out[sender]["round_ratio"] = statistics.median(paired) if paired else None
    return out


def round_ratios(samples: list[dict], sender: str) -> list[float]:
    """Each round's images/s of ``sender`` over DCMTK storescu's in the same round: steadier than a
    ratio of medians when the machine's load drifts between rounds."""
    dcmtk = {s["run"]: s["images_s"] for s in samples if s["sender"] == "dcmtk-1" and s["ok"]}
    return [s["images_s"] / dcmtk[s["run"]] for s in samples if s["sender"] == sender and s["ok"] and s["run"] in dcmtk]


def print_table(summary: dict, files: int) -> None:
    print(f"\n{files} x 5 KiB into DCMTK storescp --fork; images/s median (min-max), ratio to one DCMTK storescu")
    for sender, row in summary.items():
        if row["median"] is None:
            print(f"  {sender:18} no good run ({row['good']}/{row['runs']})")
            continue
        target = TARGETS.get(sender)
        verdict = "" if target is None or row["ratio"] is None else f"  target >= {target}: {'met' if row['ratio'] >= target else 'NOT met'} (ratio of medians)"
        print(f"  {sender:18} {row['median']:7.0f} ({row['min']:.0f}-{row['max']:.0f})  x{row['ratio']:.2f}"
              f" (per round x{row['round_ratio']:.2f})"
              f"  sender CPU {row['cpu_us_per_file']:.0f} us/file  good {row['good']}/{row['runs']}"
              f"  load1 {row['load1']}{verdict}")


def compile_bytecode(trees: list[Path]) -> None:
    """Compile node/ and actors/ of every tree that senders run from, as ``pip install`` does for
    an installed nodectl. Why: this machine's environment sets PYTHONDONTWRITEBYTECODE=1, under
    which each sender compiled its ~40 modules from source at every start (import CPU 70 -> 50
    ms, ``time`` of ``import node.cli, node.tools.send``), a cost no installed copy pays and
    DCMTK's storescu has no counterpart of. The work tree and the baseline alike."""
    for tree in trees:
        for package in ("node", "actors"):
            if (tree / package).is_dir():
                compileall.compile_dir(str(tree / package), quiet=1)


def main(opts) -> int:
    """Rounds of every sender in turn; print and optionally save medians, spread, load."""
    fileset = corpus.ensure("sc", opts.files)
    senders = ["dcmtk-1", "send-1", "send-4", *opts.extra]
    if opts.baseline:
        senders += ["base-send-1", "base-send-4"]
    if not opts.from_source:
        compile_bytecode([Path(opts.node_source) if opts.node_source else Path(__file__).resolve().parents[1],
                          *([Path(opts.baseline)] if opts.baseline else [])])
    env = peers.base_env(not opts.dcmtk_defaults, Path(opts.node_source) if opts.node_source else None)
    samples: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="bench-send-", dir=opts.scratch) as scratch:
        for run in range(opts.runs):
            for sender in senders:
                sample = one_sample(sender, list(fileset.files), sender_env(sender, env, opts.baseline), Path(scratch))
                sample["run"] = run
                samples.append(sample)
                flag = "" if sample["ok"] else f"  FAILED exit={sample['exit']} stored={sample['stored']}"
                print(f"run {run + 1}/{opts.runs} {sender:18} {sample['images_s']:7.0f} images/s "
                      f"{sample['seconds']:6.2f} s  CPU {sample['sender_cpu_us_per_file']:4.0f} us/file"
                      f"  load1 {sample['load1']:.2f}{flag}", flush=True)
    summary = summarise(samples, senders)
    print_table(summary, fileset.count)
    if opts.json:
        Path(opts.json).write_text(json.dumps({"files": fileset.count, "digest": corpus.digest(fileset),
                                               "bytecode": "source" if opts.from_source else "compiled",
                                               "node_source": opts.node_source, "baseline": opts.baseline, "versions": peers.versions(),
                                               "cpus": os.cpu_count(), "summary": summary, "samples": samples},
                                              indent=2))
    return 0 if all(row["good"] for row in summary.values()) else 1
