"""Children started and stopped by PID, free loopback ports, process-tree sampling.

Every child runs in its own session with its output in a log file. ``stop`` signals the PID
we started (SIGTERM), waits a bounded time, then SIGKILLs its process group and any
descendant still alive, and waits. Nothing is ever looked up or killed by name.

``TreeSampler`` polls the trees of the processes it is given every 50 ms while a transfer
runs and keeps each process's peak RSS; ``tree_cpu`` is the user+system CPU time of a tree,
counting descendants already reaped by a live member (``children_user``/``children_system``),
so a forking server's finished children are not lost.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil

LOOPBACK = "127.0.0.1"
POLL_S = 0.05


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, timeout: float, proc: subprocess.Popen | None = None) -> None:
    """Until something accepts on 127.0.0.1:port; fail early if ``proc`` exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process {proc.pid} exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection((LOOPBACK, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {LOOPBACK}:{port} after {timeout:.0f} s")


def start(cmd: Sequence[str], *, log: Path, cwd: Path | None = None, env: Mapping[str, str] | None = None) -> subprocess.Popen:
    """Start ``cmd`` in its own session, output appended to ``log``."""
    with open(log, "ab") as out:
        return subprocess.Popen(
            list(cmd),
            cwd=cwd,
            env=dict(env) if env is not None else None,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def wait_exited(proc: subprocess.Popen, timeout: float) -> int:
    """``proc.wait(timeout)`` that returns at the exit itself. ``Popen.wait`` with a timeout
    polls, sleeping up to 50 ms between looks, so every timed sample came out up to 50 ms
    long: ~4% of a 1.2 s sample, ~10% of DCMTK's 0.5 s ones (docs/benchmarks.md, 2026-12-04,
    20:35). A pidfd (Linux 5.3) wakes ``select`` when the process ends. Raises
    ``subprocess.TimeoutExpired`` as ``Popen.wait`` does."""
    if proc.returncode is not None:
        return proc.returncode
    fd = os.pidfd_open(proc.pid)  # the child stays a zombie, with its PID, until we reap it below
    try:
        if not select.select([fd], [], [], max(0.0, timeout))[0]:
            raise subprocess.TimeoutExpired(proc.args, timeout)
    finally:
        os.close(fd)
    return proc.wait()


def descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def stop(proc: subprocess.Popen, *, grace: float = 20.0) -> int | None:
    """SIGTERM the PID, wait up to ``grace``, then SIGKILL its group and leftovers, wait."""
    known = descendants(proc.pid)
    if proc.poll() is None:
        try:
            os.kill(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
    deadline = time.monotonic() + 5
    for child in known:
        try:
            child.wait(timeout=max(0.0, deadline - time.monotonic()))
        except (psutil.TimeoutExpired, psutil.NoSuchProcess, ChildProcessError):
            pass
        try:
            if child.is_running() and child.status() != psutil.STATUS_ZOMBIE:
                child.kill()
        except psutil.NoSuchProcess:
            pass
    return proc.returncode


def tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return []
    return [root, *descendants(pid)]


# An idle node: its whole tree spends under IDLE_CPU_S over IDLE_WINDOW_S.
IDLE_WINDOW_S = 0.3
IDLE_CPU_S = 0.02
IDLE_TIMEOUT_S = 15.0


def await_idle(pid: int) -> float:
    """Wait (at most IDLE_TIMEOUT_S) until the tree rooted at ``pid`` is idle; the seconds waited.

    A node answers its first association before its writer, tracker, metrics and further
    workers have started (issue 14): their start-up must not be counted in what a benchmark
    sample measures after it."""
    started = time.monotonic()
    before = tree_cpu(pid)
    while time.monotonic() - started < IDLE_TIMEOUT_S:
        time.sleep(IDLE_WINDOW_S)
        now = tree_cpu(pid)
        if now - before < IDLE_CPU_S:
            break
        before = now
    return time.monotonic() - started


def tree_cpu(pid: int) -> float:
    """User + system seconds of the live tree and of the descendants it has reaped."""
    total = 0.0
    for proc in tree(pid):
        try:
            t = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += t.user + t.system + t.children_user + t.children_system
    return total


def label(proc: psutil.Process) -> str:
    """A short name for a process: program and the words that tell actors apart."""
    try:
        cmd = proc.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return "?"
    if not cmd:
        return proc.name()
    words = [os.path.basename(cmd[0])]
    for i, word in enumerate(cmd[1:], 1):
        if word in ("-m", "run", "--worker-id", "--listener") and i + 1 < len(cmd):
            words.append(os.path.basename(cmd[i + 1]))
        if word in ("serve", "send", "storescp", "storescu", "--fork"):
            words.append(word)
        if len(words) >= 4:
            break
    return " ".join(dict.fromkeys(words))


@dataclass
class TreeSampler:
    """Peak RSS of every process under the given roots, polled every 50 ms in a thread."""

    roots: dict[str, int]  # role -> root PID
    interval: float = POLL_S
    peaks: dict[int, dict] = field(default_factory=dict)  # pid -> {role, label, rss}
    samples: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def add_root(self, role: str, pid: int) -> None:
        self.roots[role + f"#{pid}"] = pid

    def __enter__(self) -> "TreeSampler":
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.poll()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.poll()

    def poll(self) -> None:
        self.samples += 1
        for role, pid in list(self.roots.items()):
            for proc in tree(pid):
                try:
                    rss = proc.memory_info().rss
                except psutil.NoSuchProcess:
                    continue
                entry = self.peaks.get(proc.pid)
                if entry is None:
                    entry = self.peaks[proc.pid] = {"role": role.split("#")[0], "label": label(proc), "rss": 0}
                entry["rss"] = max(entry["rss"], rss)

    def by_role(self) -> dict[str, list[dict]]:
        out: dict[str, list[dict]] = {}
        for pid, entry in sorted(self.peaks.items()):
            out.setdefault(entry["role"], []).append({"pid": pid, "label": entry["label"], "peak_rss_mib": round(entry["rss"] / 2**20, 1)})
        return out
