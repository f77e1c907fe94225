"""The receivers and senders the benchmark compares, each with its own defaults.

Receivers start on a free 127.0.0.1 port in a fresh directory, report how many instances
they hold, and stop by PID. Senders are command lines (several for parallel DCMTK storescu
processes).

pynetdicom installs console scripts named ``storescu``/``storescp``/``echoscu`` that shadow
DCMTK's on PATH, so DCMTK is always called by absolute path, and pynetdicom and nodectl as
``python -m`` (no pyenv shim in the timing).

Nagle: DCMTK 3.6.7 sets TCP_NODELAY on a connection only when the environment variable
``TCP_NODELAY`` parses as a non-zero integer (``dulfsm.cc`` for the requestor, ``dul.cc``
for the acceptor; the compiled-in default is 0 unless built with DISABLE_NAGLE_ALGORITHM).
Orthanc uses DCMTK's network layer, so the same variable applies to it. In ``nodelay`` mode
every DCMTK-based process gets ``TCP_NODELAY=1``; in ``defaults`` mode the variable is
removed from their environment. pynetdicom never sets the option; nodectl (listener and
``send``) always does.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from bench import procs

DCMTK_STORESCP = "/usr/bin/storescp"
DCMTK_STORESCU = "/usr/bin/storescu"
ORTHANC = "/usr/sbin/Orthanc"
START_TIMEOUT = 60.0
_BARE = Path(__file__).resolve().parent / "bare.py"


def base_env(nodelay: bool, node_source: Path | None) -> dict[str, str]:
    """The environment of every child: TCP_NODELAY as the mode says, PYTHONPATH to the node."""
    env = dict(os.environ)
    env.pop("TCP_NODELAY", None)
    if nodelay:
        env["TCP_NODELAY"] = "1"
    if node_source is not None:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(node_source), env.get("PYTHONPATH", "")) if p)
    return env


@dataclass
class Receiver:
    """One storage SCP under test; subclasses say how to start it and count what it holds."""

    name: str
    aet: str = "ANY-SCP"
    port: int = 0
    proc: subprocess.Popen | None = None
    directory: Path | None = None
    info: dict = field(default_factory=dict)

    def command(self, directory: Path) -> list[str]:
        raise NotImplementedError

    def start(self, directory: Path, env: dict[str, str]) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.port = procs.free_port()
        self.proc = procs.start(self.command(directory), log=directory / "receiver.log", cwd=directory, env=env)
        procs.wait_for_port(self.port, START_TIMEOUT, self.proc)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stored(self) -> int:
        raise NotImplementedError

    def settle(self, expected: int) -> None:
        """Return once the receiver holds what it acknowledged (nodectl: materialised)."""

    def begin_flush_count(self) -> None:
        """Count the receiver's flushes from now on (nodectl started with a ``count``)."""

    def end_flush_count(self) -> None:
        """Stop counting them."""

    def flushes(self) -> int | None:
        """Its fsync/fdatasync/syncfs calls (and writes with RWF_DSYNC) between the two, asked
        once the receiver has stopped; None: not counted."""
        return None

    def stop(self) -> None:
        if self.proc is not None:
            procs.stop(self.proc)

    def log_tail(self, n: int = 2000) -> str:
        try:
            return (self.directory / "receiver.log").read_text(errors="replace")[-n:]  # type: ignore[operator]
        except OSError:
            return ""


def _count_files(root: Path, skip: str = "") -> int:
    n = 0
    for dirpath, dirnames, filenames in os.walk(root):
        if skip and skip in dirnames:
            dirnames.remove(skip)
        n += len(filenames)
    return n


FLUSH_SYSCALLS = ("fsync", "fdatasync", "syncfs")
# A write with RWF_DSYNC flushes what it wrote (the writer's journal groups): counted as a flush.
TRACED_SYSCALLS = (*FLUSH_SYSCALLS, "pwritev2")


def is_flush(call: str) -> bool:
    """Whether an strace line's call (its text from the name on) is a flush."""
    return call.startswith(FLUSH_SYSCALLS) or (call.startswith("pwritev2(") and "RWF_DSYNC" in call)


# The same calls counted by perf in the kernel (syscall tracepoints; pwritev2 only with
# RWF_DSYNC = 2 or RWF_SYNC = 4 in its flags): no stop of the node at each call, unlike strace.
PERF_EVENTS = (*(f"syscalls:sys_enter_{name}" for name in FLUSH_SYSCALLS), "syscalls:sys_enter_pwritev2")
PERF_PWRITEV2_FILTER = "flags & 6"
PERF_ACK_S = 10.0


def perf_counts_flushes() -> bool:
    """Whether ``perf stat`` can count syscall tracepoints here (perf installed, tracefs, rights)."""
    if shutil.which("perf") is None:
        return False
    try:
        done = subprocess.run(["perf", "stat", "-x", ",", *perf_event_args(), "--", "true"], check=False, capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def perf_event_args() -> list[str]:
    args: list[str] = []
    for event in PERF_EVENTS:
        args += ["-e", event]
    return [*args, "--filter", PERF_PWRITEV2_FILTER]  # --filter applies to the event before it: pwritev2


def perf_stat_controlled(directory: Path, target: list[str]) -> list[str]:
    """``perf stat`` of the flush events, started disabled and driven by ``perf_control``
    through the FIFOs ``perf.ctl`` and ``perf.ack`` it makes in ``directory``; the counts go
    to ``directory/flushes.perf``. ``target`` says what to count (``-- command``, or
    ``--per-thread -t TIDS``)."""
    ctl, ack = directory / "perf.ctl", directory / "perf.ack"
    for fifo in (ctl, ack):
        os.mkfifo(fifo)
    return ["perf", "stat", "-x", ",", "--delay=-1", "--control", f"fifo:{ctl},{ack}",
            "-o", str(directory / "flushes.perf"), *perf_event_args(), *target]


def perf_control(fifos: tuple[int, int], word: str) -> None:
    """Send ``perf stat --control`` a command (its control and ack FIFOs, opened) and wait for
    its ack: perf acts before it answers."""
    control, ack = fifos
    os.write(control, f"{word}\n".encode())
    deadline = time.monotonic() + PERF_ACK_S
    answer = b""
    while b"ack\n" not in answer:  # perf writes "ack\n" and its NUL
        if not select.select([ack], [], [], max(0.0, deadline - time.monotonic()))[0]:
            raise TimeoutError(f"perf did not acknowledge {word!r} in {PERF_ACK_S:.0f} s")
        answer += os.read(ack, 64)


def perf_flushes(output: str) -> int | None:
    """The flushes in ``perf stat -x ,`` output: the sum of the events' counts; None if any is missing."""
    counts: dict[str, int] = {}
    for line in output.splitlines():
        fields = line.split(",")
        if len(fields) > 2 and fields[2] in PERF_EVENTS and fields[0].isdigit():
            counts[fields[2]] = int(fields[0])
    return sum(counts.values()) if len(counts) == len(PERF_EVENTS) else None


@dataclass
class NodectlServe(Receiver):
    """``nodectl serve`` with default workers (CPU count), on 127.0.0.1, port 0 read back.

    ``count`` says how its flushes are counted, between ``begin_flush_count`` and
    ``end_flush_count``:

    * ``"perf"``: under ``perf stat``, which counts the calls in the kernel (syscall
      tracepoints), enabled and disabled through its control FIFO. The node never stops for
      it, so the sample's time and CPU stay usable, and so does the count itself: a group
      commit is as large as the associations that arrive while it waits, and a node slowed
      by tracing makes smaller groups.
    * ``"strace"``: under ``strace -f --seccomp-bpf`` tracing only the flush calls, counted
      from the trace's timestamps. Every traced call stops the node (a worker's CPU per small
      instance went from ~1.0 to ~1.6 ms here), so such a sample counts flushes only, and
      counts a few more than an undisturbed node makes (docs/benchmarks.md, 2026-12-04, 20:35).
    """

    aet: str = "NODE"
    workers: int | None = None
    node_proc: psutil.Process | None = None
    count: str = ""  # "", "perf" or "strace"
    _window: tuple[float, float] = (0.0, 0.0)  # strace: wall clock of begin and end
    _control: tuple[int, int] = (-1, -1)  # perf: its control FIFO (written) and ack FIFO (read)

    def command(self, directory: Path) -> list[str]:
        cmd = [sys.executable, "-m", "node.cli", "serve", "--host", procs.LOOPBACK, "--port", "0", "--aet", self.aet,
               "--directory", str(directory / "store"), "--database", str(directory / "node.sqlite"),
               "--run-dir", str(directory / "run"), "--log-level", "warning"]
        if self.workers:
            cmd += ["--workers", str(self.workers)]
        return cmd

    def start(self, directory: Path, env: dict[str, str]) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        log = directory / "receiver.log"
        command = self._counted(self.command(directory), directory)
        self.proc = procs.start(command, log=log, cwd=directory, env=env)
        if self.count:
            deadline = time.monotonic() + 10
            while self.node_proc is None and time.monotonic() < deadline and self.proc.poll() is None:
                for child in psutil.Process(self.proc.pid).children():
                    try:
                        if "node.cli" in child.cmdline():  # after strace's or perf's exec of the command
                            self.node_proc = child
                    except psutil.NoSuchProcess:
                        pass
                time.sleep(0.01)
        deadline = time.monotonic() + START_TIMEOUT
        marker = "listening on "
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nodectl serve exited with {self.proc.returncode}:\n{self.log_tail()}")
            text = log.read_text(errors="replace")
            if marker in text:
                address = text.split(marker, 1)[1].split()[0]
                self.port = int(address.rsplit(":", 1)[1])
                procs.wait_for_port(self.port, 10, self.proc)
                procs.await_idle(self.pid)  # the actors that start after the first listener is ready
                self._await_workers(env, deadline)
                if self.count == "perf":  # perf opened both FIFOs before it started the node
                    self._control = (os.open(directory / "perf.ctl", os.O_WRONLY | os.O_NONBLOCK),
                                     os.open(directory / "perf.ack", os.O_RDONLY | os.O_NONBLOCK))
                return
            time.sleep(0.05)
        raise TimeoutError(f"nodectl serve not ready after {START_TIMEOUT:.0f} s:\n{self.log_tail()}")

    def _counted(self, command: list[str], directory: Path) -> list[str]:
        """``command`` under the flush counter ``count`` names."""
        if self.count == "strace":
            return ["strace", "-f", "-qq", "--seccomp-bpf", "-ttt", "-e", "trace=" + ",".join(TRACED_SYSCALLS),
                    "-o", str(directory / "flushes.trace"), *command]
        if self.count == "perf":
            return perf_stat_controlled(directory, ["--", *command])
        return command

    def _await_workers(self, env: dict[str, str], deadline: float) -> None:
        """Wait until the listener can hand connections to every worker (``nodectl status``).

        The listener hands a connection to the worker with fewest of its connections among
        those that have announced themselves; a worker still waiting for the writer to adopt its journal is
        idle but not there yet, and a sample that started then put all four associations into
        one worker (one group commit for four: 0.29 flushes per instance in the traced sample of
        2026-12-03 16:54, 0.52-0.53 with two per worker)."""
        assert self.directory is not None
        expected = self.workers or int(env.get("NODECTL_WORKERS", 0)) or os.cpu_count() or 1
        command = [sys.executable, "-m", "node.cli", "status", "--json", "--run-dir", str(self.directory / "run")]
        ready = 0
        while time.monotonic() < deadline:
            out = subprocess.run(command, capture_output=True, text=True, env=env, cwd=self.directory, timeout=30)
            try:
                listeners = json.loads(out.stdout)["listeners"]
                ready = min(sum(1 for w in lst["workers"].values() if w["capacity"] > 0) for lst in listeners)
            except (ValueError, KeyError, TypeError):
                ready = 0
            if ready >= expected:
                return
            time.sleep(0.2)
        raise TimeoutError(f"nodectl serve: {ready} of {expected} workers ready after {START_TIMEOUT:.0f} s:\n{self.log_tail()}")

    @property
    def pid(self) -> int:
        """nodectl's PID (not strace's): CPU is counted over nodectl's tree."""
        assert self.proc is not None
        return self.node_proc.pid if self.node_proc is not None else self.proc.pid

    def stored(self) -> int:
        assert self.directory is not None
        return _count_files(self.directory / "store", skip=".incoming")

    def settle(self, expected: int) -> None:
        """Acknowledged instances reach their final paths shortly after (the writer's journal)."""
        deadline = time.monotonic() + 60
        while self.stored() < expected and time.monotonic() < deadline:
            time.sleep(0.02)

    def begin_flush_count(self) -> None:
        self._window = (time.time(), 0.0)
        self._perf_command("enable")

    def end_flush_count(self) -> None:
        self._window = (self._window[0], time.time())
        self._perf_command("disable")

    def _perf_command(self, word: str) -> None:
        if self._control[0] >= 0:
            perf_control(self._control, word)

    def flushes(self) -> int | None:
        assert self.directory is not None
        if self.count == "perf":
            try:
                return perf_flushes((self.directory / "flushes.perf").read_text(errors="replace"))
            except OSError:
                return None
        if self.count != "strace":
            return None
        try:
            text = (self.directory / "flushes.trace").read_text(errors="replace")
        except OSError:
            return None
        start, end = self._window
        count = 0
        for line in text.splitlines():
            fields = line.split(None, 2)
            if len(fields) == 3 and is_flush(fields[2]) and start <= float(fields[1]) <= end:
                count += 1
        return count

    def stop(self) -> None:
        """SIGTERM nodectl itself (strace would detach from it, perf would die without its
        counts), wait for the counter to end with it, then stop what is left."""
        for fd in self._control:
            if fd >= 0:
                os.close(fd)
        self._control = (-1, -1)
        if self.node_proc is not None:
            try:
                self.node_proc.terminate()
            except psutil.NoSuchProcess:
                pass
            if self.proc is not None:
                try:
                    self.proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    pass
        super().stop()


@dataclass
class DcmtkStorescp(Receiver):
    """DCMTK storescp writing every instance to a directory (it never fsyncs); optionally --fork.

    DCMTK 3.6.7's storescp has no bind-address option: it listens on every interface.
    """

    fork: bool = False

    def command(self, directory: Path) -> list[str]:
        (directory / "out").mkdir(exist_ok=True)
        cmd = [DCMTK_STORESCP, "-od", str(directory / "out")]
        if self.fork:
            cmd.append("--fork")
        return [*cmd, str(self.port)]

    def stored(self) -> int:
        assert self.directory is not None
        return _count_files(self.directory / "out")


@dataclass
class BareReceiver(Receiver):
    """``bench/bare.py``: the node's engine and one durable write per instance, nothing else
    (``flush=False``: the write without its flush). The floor under ``nodectl serve``."""

    flush: bool = True
    processes: int = 1
    group: bool = False
    shared: bool = False

    def command(self, directory: Path) -> list[str]:
        # By path: the node it imports is the one under test (PYTHONPATH), the script this tree's.
        cmd = [sys.executable, str(_BARE), str(self.port), str(directory / "out"), "--processes", str(self.processes)]
        cmd += ["--shared"] if self.shared else []
        return cmd + (["--group"] if self.group else []) + ([] if self.flush else ["--no-flush"])

    def stored(self) -> int:
        assert self.directory is not None
        try:
            return sum(int(path.read_text()) for path in (self.directory / "out").glob("stored*") if path.suffix != ".tmp")
        except (OSError, ValueError):
            return 0

    def settle(self, expected: int) -> None:
        """Its counts are written as each association ends, just after the sender sees the release."""
        deadline = time.monotonic() + 5.0
        while self.stored() < expected and time.monotonic() < deadline:
            time.sleep(0.01)


@dataclass
class PynetdicomStorescp(Receiver):
    """pynetdicom's storescp app (one thread per association, writes files, no fsync)."""

    def command(self, directory: Path) -> list[str]:
        (directory / "out").mkdir(exist_ok=True)
        return [sys.executable, "-m", "pynetdicom", "storescp", str(self.port), "-od", str(directory / "out"), "-ba", procs.LOOPBACK]

    def stored(self) -> int:
        assert self.directory is not None
        return _count_files(self.directory / "out")


@dataclass
class Orthanc(Receiver):
    """Orthanc with a generated configuration: storage and index in the directory, fsync on.

    ``SyncStorageArea`` (Orthanc >= 1.7.4) fsyncs each file written to the storage area, as
    our writer does. Orthanc 1.10 binds its DICOM port on every interface; its HTTP server
    answers 127.0.0.1 only.
    """

    aet: str = "ORTHANC"
    http_port: int = 0

    def configuration(self, directory: Path) -> dict:
        return {
            "Name": "bench",
            "StorageDirectory": str(directory / "storage"),
            "IndexDirectory": str(directory / "index"),
            "StorageCompression": False,
            "SyncStorageArea": True,
            "Plugins": [],
            "LuaScripts": [],
            "HttpServerEnabled": True,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "OrthancExplorerEnabled": False,
            "DicomServerEnabled": True,
            "DicomAet": self.aet,
            "DicomPort": self.port,
            "DicomCheckCalledAet": False,
            "DicomAlwaysAllowStore": True,
            "DicomAlwaysAllowEcho": True,
            "UnknownSopClassAccepted": True,
            "OverwriteInstances": True,
            "SaveJobs": False,
            "StableAge": 3600,
        }

    def command(self, directory: Path) -> list[str]:
        self.http_port = procs.free_port()
        path = directory / "orthanc.json"
        path.write_text(json.dumps(self.configuration(directory), indent=2))
        return [ORTHANC, str(path)]

    def start(self, directory: Path, env: dict[str, str]) -> None:
        super().start(directory, env)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            try:
                self._get("/system")
                return
            except (urllib.error.URLError, OSError, ValueError):
                time.sleep(0.1)
        raise TimeoutError("Orthanc REST API not answering")

    def _get(self, path: str) -> dict:
        with urllib.request.urlopen(f"http://{procs.LOOPBACK}:{self.http_port}{path}", timeout=10) as rsp:
            return json.loads(rsp.read())

    def stored(self) -> int:
        return int(self._get("/statistics")["CountInstances"])


RECEIVERS = {
    "nodectl": lambda: NodectlServe("nodectl serve"),
    "dcmtk": lambda: DcmtkStorescp("DCMTK storescp"),
    "dcmtk-fork": lambda: DcmtkStorescp("DCMTK storescp --fork", fork=True),
    "pynetdicom": lambda: PynetdicomStorescp("pynetdicom storescp"),
    "orthanc": lambda: Orthanc("Orthanc"),
    "bare": lambda: BareReceiver("bare engine + 1 flush per instance"),
    "bare-noflush": lambda: BareReceiver("bare engine, no flush", flush=False),
    "bare-2": lambda: BareReceiver("bare engine + 1 flush per instance, 2 processes", processes=2),
    "bare-group-2": lambda: BareReceiver("bare engine + 1 flush per group, 2 processes", processes=2, group=True),
    "bare-shared-2": lambda: BareReceiver("bare engine + 1 flush shared by 2 processes", processes=2, group=True, shared=True),
}


# ----- senders ----------------------------------------------------------------------------

SENDER_NAMES = {
    "dcmtk-1": "DCMTK storescu, 1 association",
    "dcmtk-4": "4 DCMTK storescu processes",
    "send-1": "nodectl send -j 1",
    "send-4": "nodectl send -j 4",
    "pynetdicom": "pynetdicom storescu",
}


def sender_commands(sender: str, files: Sequence[Path], aet: str, port: int) -> list[list[str]]:
    """The command line(s) that send ``files`` to 127.0.0.1:port, called AE ``aet``."""
    paths = [str(p) for p in files]
    host = procs.LOOPBACK
    if sender == "dcmtk-1":
        return [[DCMTK_STORESCU, "-aec", aet, host, str(port), *paths]]
    if sender == "dcmtk-4":
        n = len(paths)
        chunks = [paths[i * n // 4 : (i + 1) * n // 4] for i in range(4)]
        return [[DCMTK_STORESCU, "-aec", aet, host, str(port), *chunk] for chunk in chunks if chunk]
    if sender in ("send-1", "send-4"):
        jobs = sender.split("-")[1]
        return [[sys.executable, "-m", "node.cli", "send", "-j", jobs, "--progress", "none", "-aec", aet, host, str(port), *paths]]
    if sender == "pynetdicom":
        return [[sys.executable, "-m", "pynetdicom", "storescu", host, str(port), *paths, "-aec", aet]]
    raise ValueError(f"unknown sender {sender!r}")


def versions() -> dict[str, str]:
    """Versions of the peers, as they print them."""
    out: dict[str, str] = {}

    def first_line(cmd: list[str]) -> str:
        try:
            text = subprocess.run(cmd, capture_output=True, text=True, timeout=20).stdout
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"unavailable ({exc})"
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        return lines[0] if lines else "?"

    out["dcmtk"] = first_line([DCMTK_STORESCP, "--version"]).strip("$ ")
    out["orthanc"] = first_line([ORTHANC, "--version"])
    import pydicom
    import pynetdicom

    out["pynetdicom"] = pynetdicom.__version__
    out["pydicom"] = pydicom.__version__
    return out
