"""``python -m bench profile``: py-spy on ``nodectl serve``'s processes during a small-file run.

Starts ``nodectl serve --workers 1`` (so the one association lands on a known worker),
starts ``py-spy record`` on the worker and on the writer, sends the 5 KiB files (``--kind ct``:
512 KiB) with DCMTK
storescu over one association (TCP_NODELAY=1) in a bounded loop until the recording ends,
then prints the top functions by own samples and by inclusive samples. Everything started
here is stopped by PID in ``finally``. Needs ``pip install py-spy`` and ptrace rights.
"""

from __future__ import annotations

import collections
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from bench import corpus, peers, procs

RESULTS = Path(__file__).resolve().parent / "results"


def top(raw: Path, n: int = 15) -> dict[str, list[tuple[str, int, float]]]:
    """Own and inclusive sample counts per function from py-spy's ``--format raw`` output."""
    own: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        c = int(count)
        frames = [f.split(" (")[0] + " (" + f.split(" (")[1].split(":")[0].rsplit("/", 1)[-1] + ")" if " (" in f else f
                  for f in stack.split(";")]
        total += c
        own[frames[-1]] += c
        for frame in set(frames):
            incl[frame] += c
    def rows(counter: collections.Counter[str]) -> list[tuple[str, int, float]]:
        return [(name, count, 100 * count / total if total else 0.0) for name, count in counter.most_common(n)]
    return {"total": [("samples", total, 100.0)], "own": rows(own), "inclusive": rows(incl)}


def main(opts) -> int:
    if shutil.which("py-spy") is None:
        print("python -m bench profile: py-spy is not installed (pip install py-spy)")
        return 2
    files = corpus.ensure(opts.kind, opts.files)
    scratch = Path(tempfile.mkdtemp(prefix="bench-profile-"))
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    env = peers.base_env(True, Path(opts.node_source) if opts.node_source else None)
    receiver = peers.NodectlServe("nodectl serve", workers=1)
    spies: list[subprocess.Popen] = []
    senders: list[subprocess.Popen] = []
    outputs: dict[str, Path] = {}
    try:
        receiver.start(scratch / "rx", env)
        for proc in procs.descendants(receiver.pid):
            text = " ".join(proc.cmdline())
            for role in ("worker", "writer"):
                if f"run {role}" in text:
                    out = RESULTS / f"profile-{stamp}-{role}.txt"
                    outputs[role] = out
                    spies.append(procs.start(["py-spy", "record", "--pid", str(proc.pid), "--duration", str(opts.duration),
                                              "--rate", "200", "--format", "raw", "--output", str(out), "--nonblocking",
                                              *(["--gil"] if opts.gil else [])],
                                             log=scratch / f"py-spy-{role}.log"))
        time.sleep(1.0)  # py-spy attaches
        deadline = time.monotonic() + opts.duration
        sent = 0
        for _ in range(100):  # bounded: at most 100 rounds of the file set
            if time.monotonic() >= deadline:
                break
            cmd = peers.sender_commands("dcmtk-1", files.files, receiver.aet, receiver.port)[0]
            proc = procs.start(cmd, log=scratch / "sender.log", env=env)
            senders.append(proc)
            proc.wait(timeout=opts.duration + 60)
            sent += files.count
        for spy in spies:
            spy.wait(timeout=opts.duration + 60)
        print(f"sent {sent} files during the recording")
        for role, out in outputs.items():
            if not out.exists():
                print(f"{role}: no profile written (see {scratch}/py-spy-{role}.log)")
                continue
            print(f"\n## {role} ({out.name})")
            for kind, entries in top(out, opts.top).items():
                print(f"\n{kind}:")
                for name, count, pct in entries:
                    print(f"  {pct:5.1f}%  {count:6d}  {name}")
        return 0
    finally:
        for proc in [*senders, *spies]:
            procs.stop(proc, grace=5)
        receiver.stop()
        shutil.rmtree(scratch, ignore_errors=True)
