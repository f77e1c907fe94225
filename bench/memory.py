"""``python -m bench memory``: peak RSS of every node process while one huge instance arrives,
or (``--send-files N``) of every process of ``nodectl send`` while it sends N small files.

The issue's targets: receiving a single 1 GiB instance keeps every process under 150 MiB
RSS; ``nodectl send`` of 10,000 files stays under 150 MiB.

Receive: the instance (a secondary capture with ~1 GiB of pseudo-random pixel data, the same
bytes for the same seed) is cached in bench/corpus/, sent by DCMTK's storescu with
TCP_NODELAY=1 into ``nodectl serve`` (default workers), and the node's whole process tree
(serve, supervisord, listener, workers, writer, tracker) is sampled every 50 ms. The sender
(DCMTK) is not ours and not sampled.

Send: the first N files of the corpus's 5 KiB secondary captures, named one by one on the
command line, go with ``nodectl send -j J`` into DCMTK ``/usr/bin/storescp --fork`` (cheap;
by absolute path, since pynetdicom's console scripts shadow DCMTK's on PATH; TCP_NODELAY=1
in its environment). Every process of the send (since issue 13 one: ``-j J`` runs J threads)
is sampled every 50 ms: the peak of each process and the peak of their sum at one poll. The
receiver must hold N files afterwards and the send must exit 0.

Job (``--job-files N``, issue 15: memory flat for 1,000,000 files): N paths under /dev/shm, hard
links to the 5 KiB corpus (1,000 a directory, or one directory with ``--flat``), sent by
``nodectl send -j J --journal`` named as one directory (the file list streamed), into storescp
--fork; then the same command again, which finds every file acknowledged. The sender's RSS is
read every 0.1 s: its peak per run, and a value every 5 s to show it flat.

Each run writes ``bench/results/memory-<receive|send|job>-<timestamp>.json``.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from bench import corpus, procs
from bench.corpus import CORPUS_ROOT
from bench.peers import DcmtkStorescp, NodectlServe, base_env

RESULTS = Path(__file__).resolve().parent / "results"

SEND_TIMEOUT_S = 900.0
TARGET_MIB = 150


def huge_instance(size_mib: int, seed: int = 1) -> Path:
    """A deterministic multi-frame instance of ``size_mib`` one-MiB frames (written once)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    path = CORPUS_ROOT / f"huge-{size_mib}MiB-{seed}.dcm"
    if path.exists():
        return path
    rows, columns = 1024, 512  # 16-bit pixels: one MiB per frame
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7.3"  # Multi-frame Grayscale Word Secondary Capture
    ds.NumberOfFrames = size_mib
    ds.SOPInstanceUID = f"2.25.{seed}{size_mib}0042"
    ds.PatientID = "BENCH-HUGE"
    ds.Rows, ds.Columns = rows, columns
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.SamplesPerPixel, ds.PixelRepresentation = 1, 0
    ds.PhotometricInterpretation = "MONOCHROME2"
    block = random.Random(seed).randbytes(1 << 20)
    ds.PixelData = block * size_mib
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    ds.save_as(tmp, enforce_file_format=True)
    os.replace(tmp, path)
    return path


def _save(kind: str, started: dt.datetime, body: dict) -> Path:
    from bench import ingest

    results = {
        "schema": 1,
        "kind": f"memory-{kind}",
        "command": "python -m bench " + " ".join(sys.argv[1:]),
        "started": started.isoformat(timespec="seconds"),
        "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": ingest.machine(Path(tempfile.gettempdir()), ingest.REPO, ingest.node_revision(ingest.REPO, None)),
        "loadavg": os.getloadavg(),
        "pythonpath": os.environ.get("PYTHONPATH", ""),  # node/ and actors/ from an export, when set
        "target_mib": TARGET_MIB,
        **body,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"memory-{kind}-{started.strftime('%Y%m%dT%H%M%SZ')}.json"
    out.write_text(json.dumps(results, indent=1))
    return out


def _spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def receive_once(path: Path) -> dict:
    """Send the huge instance once into a fresh node; every node process's peak RSS."""
    receiver = NodectlServe(name="nodectl")
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as scratch:
        receiver.start(Path(scratch), base_env(nodelay=True, node_source=None))
        try:
            sampler = procs.TreeSampler(roots={"node": receiver.pid})
            started = time.monotonic()
            with sampler:
                sent = subprocess.run(["/usr/bin/storescu", "-aec", receiver.aet, procs.LOOPBACK, str(receiver.port), str(path)],
                                      env={**os.environ, "TCP_NODELAY": "1"}, capture_output=True, text=True, timeout=SEND_TIMEOUT_S, check=False)
            seconds = time.monotonic() - started
            stored = receiver.stored()
        finally:
            receiver.stop()
    peaks = sampler.by_role()["node"]
    worst = max(p["peak_rss_mib"] for p in peaks)
    return {"seconds": seconds, "mib_s": path.stat().st_size / 2**20 / seconds, "exit": sent.returncode, "stored": stored,
            "largest_mib": worst, "peaks": peaks, "samples": sampler.samples,
            "ok": sent.returncode == 0 and stored == 1 and worst < TARGET_MIB}


def main(size_mib: int = 1024, runs: int = 1) -> int:
    """Send the huge instance ``runs`` times; print every process's peak RSS and whether it met the target."""
    started = dt.datetime.now(dt.timezone.utc)
    path = huge_instance(size_mib)
    done = []
    for run in range(runs):
        r = receive_once(path)
        done.append(r)
        print(f"run {run + 1}/{runs}: {path.name}: {path.stat().st_size / 2**20:.0f} MiB sent in {r['seconds']:.1f} s "
              f"({r['mib_s']:.0f} MiB/s), storescu exit {r['exit']}, stored {r['stored']}")
        for peak in sorted(r["peaks"], key=lambda p: -p["peak_rss_mib"]):
            print(f"  {peak['peak_rss_mib']:7.1f} MiB  {peak['label']}")
    largest = _spread([r["largest_mib"] for r in done])
    ok = all(r["ok"] for r in done)
    out = _save("receive", started, {"size_mib": size_mib, "runs": done, "largest_mib": largest, "met": ok})
    print(f"largest process, median of {runs}: {largest['median']:.1f} MiB ({largest['min']:.1f}–{largest['max']:.1f}): "
          f"target < {TARGET_MIB} MiB {'met' if ok else 'MISSED'}; results {out}")
    return 0 if ok else 1


class SumSampler(procs.TreeSampler):
    """TreeSampler that also keeps the largest sums over the tree at one poll: RSS, and PSS
    (proportional set size: a page shared by k processes counts 1/k in each, so the PSS sum
    is what the send as a whole holds; the RSS sum counts shared library pages again per process)."""

    peak_total: int = 0
    peak_pss: int = 0

    def poll(self) -> None:
        super().poll()
        total = pss = 0
        for pid in self.roots.values():
            for proc in procs.tree(pid):
                try:
                    info = proc.memory_full_info()
                except (psutil.NoSuchProcess, psutil.AccessDenied):  # gone between listing and reading
                    continue
                total += info.rss
                pss += info.pss
        self.peak_total = max(self.peak_total, total)
        self.peak_pss = max(self.peak_pss, pss)


def send_once(files: corpus.FileSet, jobs: int, scratch: Path) -> dict:
    """``nodectl send -j jobs`` of every file into a fresh storescp --fork; peak RSS of the send's processes."""
    env = base_env(nodelay=True, node_source=None)
    receiver = DcmtkStorescp("DCMTK storescp --fork", fork=True)
    receiver.start(scratch / "rx", env)
    try:
        cmd = [sys.executable, "-m", "node.cli", "send", "-j", str(jobs), "--progress", "none", "-aec", receiver.aet,
               procs.LOOPBACK, str(receiver.port), *map(str, files.files)]
        sampler = SumSampler(roots={})
        started = time.monotonic()
        proc = procs.start(cmd, log=scratch / "send.log", cwd=scratch, env=env)
        sampler.add_root("send", proc.pid)
        try:
            with sampler:
                code = procs.wait_exited(proc, SEND_TIMEOUT_S)
        finally:
            procs.stop(proc)
        seconds = time.monotonic() - started
        stored = receiver.stored()
    finally:
        receiver.stop()
    peaks = sampler.by_role().get("send", [])
    for peak in peaks:
        peak["role"] = "parent" if peak["pid"] == proc.pid else "child"
    worst = max((p["peak_rss_mib"] for p in peaks), default=0.0)
    total = round(sampler.peak_total / 2**20, 1)
    pss = round(sampler.peak_pss / 2**20, 1)
    return {"seconds": seconds, "files_s": files.count / seconds, "exit": code, "stored": stored, "largest_mib": worst,
            "total_mib": total, "total_pss_mib": pss, "peaks": peaks, "samples": sampler.samples,
            "ok": code == 0 and stored == files.count and worst < TARGET_MIB,
            "log_tail": (scratch / "send.log").read_text(errors="replace")[-1500:] if code != 0 else ""}


def send_main(count: int, jobs: int, runs: int) -> int:
    """``nodectl send`` of ``count`` files, ``runs`` times; every process's peak RSS against the target."""
    started = dt.datetime.now(dt.timezone.utc)
    files = corpus.ensure("sc", count)
    done = []
    for run in range(runs):
        with tempfile.TemporaryDirectory(prefix="bench-memory-send-") as scratch:
            r = send_once(files, jobs, Path(scratch))
        done.append(r)
        print(f"run {run + 1}/{runs}: nodectl send -j {jobs}, {files.count} files ({files.total_bytes / 1e6:.1f} MB) in {r['seconds']:.1f} s "
              f"({r['files_s']:.0f} files/s), exit {r['exit']}, stored {r['stored']}; largest process {r['largest_mib']:.1f} MiB, "
              f"all processes together {r['total_mib']:.1f} MiB RSS, {r['total_pss_mib']:.1f} MiB PSS")
        for peak in sorted(r["peaks"], key=lambda p: -p["peak_rss_mib"]):
            print(f"  {peak['peak_rss_mib']:7.1f} MiB  {peak['role']} {peak['label']} (pid {peak['pid']})")
        if r["log_tail"]:
            print(r["log_tail"])
    largest = _spread([r["largest_mib"] for r in done])
    total = _spread([r["total_mib"] for r in done])
    pss = _spread([r["total_pss_mib"] for r in done])
    ok = all(r["ok"] for r in done)
    out = _save("send", started, {"files": files.count, "bytes": files.total_bytes, "jobs": jobs, "runs": done,
                                  "largest_mib": largest, "total_mib": total, "total_pss_mib": pss, "met": ok})
    print(f"largest process, median of {runs}: {largest['median']:.1f} MiB ({largest['min']:.1f}–{largest['max']:.1f}); "
          f"sum of the send's processes {total['median']:.1f} MiB RSS ({total['min']:.1f}–{total['max']:.1f}), "
          f"{pss['median']:.1f} MiB PSS ({pss['min']:.1f}–{pss['max']:.1f}): "
          f"target < {TARGET_MIB} MiB per process {'met' if ok else 'MISSED'}; results {out}")
    return 0 if ok else 1


# ----- a job of a million files (issue 15: memory flat) -------------------------------------------

JOB_DIR_FILES = 1000  # files per directory of the job's tree (a series-like layout)
JOB_TIMEOUT_S = 3600.0


def job_tree(count: int, flat: bool) -> Path:
    """``count`` paths under /dev/shm, each a hard link to one of the corpus's 5 KiB secondary
    captures (distinct paths, as a job sees them; links cost no data): ``JOB_DIR_FILES`` per
    directory, or all in one directory with ``flat``. Made once, kept for later runs."""
    files = corpus.ensure("sc", min(count, 100_000), root=Path("/dev/shm/bench-sendjob"))
    root = Path("/dev/shm") / f"bench-job-{count}{'-flat' if flat else ''}"
    done = root.with_name(root.name + ".complete")  # beside the tree: the job sends what is in it
    if done.exists():
        return root
    for n in range(count):
        directory = root if flat else root / f"series-{n // JOB_DIR_FILES:05d}"
        if flat or n % JOB_DIR_FILES == 0:
            directory.mkdir(parents=True, exist_ok=True)
        target = directory / f"{n:07d}.dcm"
        if not target.exists():
            os.link(files.files[n % files.count], target)
    done.touch()
    return root


def job_run(tree: Path, jobs: int, journal: Path, scratch: Path) -> dict:
    """One run of ``nodectl send -j jobs --journal`` of the whole tree into storescp --fork;
    the sender's peak RSS, and its RSS every 5 s (flat, or growing with the files done)."""
    env = base_env(nodelay=True, node_source=None)
    receiver = DcmtkStorescp("DCMTK storescp --fork", fork=True)
    receiver.start(scratch / "rx", env)
    cmd = [sys.executable, "-m", "node.cli", "send", "-j", str(jobs), "--progress", "none", "-aec", receiver.aet,
           "--recurse", "--journal", str(journal), "--summary-json", str(scratch / "summary.json"),
           procs.LOOPBACK, str(receiver.port), str(tree)]
    series: list[tuple[float, float]] = []
    peak = 0
    started = time.monotonic()
    try:
        proc = procs.start(cmd, log=scratch / "send.log", cwd=scratch, env=env)
        watched = psutil.Process(proc.pid)
        try:
            while proc.poll() is None and time.monotonic() - started < JOB_TIMEOUT_S:
                try:
                    rss = watched.memory_info().rss
                except psutil.NoSuchProcess:
                    break
                peak = max(peak, rss)
                if not series or time.monotonic() - started - series[-1][0] >= 5.0:
                    series.append((round(time.monotonic() - started, 1), round(rss / 2**20, 1)))
                time.sleep(0.1)
            code = proc.wait(timeout=30)
        finally:
            procs.stop(proc)
    finally:
        receiver.stop()
    summary = json.loads((scratch / "summary.json").read_text()) if (scratch / "summary.json").exists() else {}
    return {"seconds": round(time.monotonic() - started, 1), "exit": code, "peak_rss_mib": round(peak / 2**20, 1),
            "rss_every_5s_mib": series, "job": summary.get("job", {}), "already": summary.get("already_acknowledged")}


def job_main(count: int, jobs: int, flat: bool) -> int:
    """A ``count``-file job sent, then run again (every file already acknowledged: the resume
    filter alone); the sender's peak RSS in each against the target."""
    started = dt.datetime.now(dt.timezone.utc)
    tree = job_tree(count, flat)
    runs = []
    with tempfile.TemporaryDirectory(prefix="bench-memory-job-") as scratch:
        journal = Path(scratch) / "job.journal"
        for label in ("first run", "run again"):
            run_dir = Path(scratch) / label.replace(" ", "-")
            run_dir.mkdir()
            r = job_run(tree, jobs, journal, run_dir)
            r["label"] = label
            runs.append(r)
            job = r["job"]
            print(f"{label}: {count} files ({'one directory' if flat else f'{JOB_DIR_FILES} a directory'}) in {r['seconds']} s, "
                  f"exit {r['exit']}, acknowledged {job.get('acknowledged')} (sent this run {job.get('sent_last_run')}, "
                  f"already there {r['already']}); sender peak RSS {r['peak_rss_mib']} MiB; "
                  f"RSS every 5 s: {[mib for _, mib in r['rss_every_5s_mib']]}", flush=True)
    ok = all(r["exit"] == 0 and r["job"].get("acknowledged") == count and r["peak_rss_mib"] < TARGET_MIB for r in runs)
    out = _save("job", started, {"files": count, "flat": flat, "jobs": jobs, "runs": runs, "met": ok})
    print(f"target < {TARGET_MIB} MiB, every file acknowledged: {'met' if ok else 'MISSED'}; results {out}")
    return 0 if ok else 1
