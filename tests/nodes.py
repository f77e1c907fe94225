"""Start a real node (``nodectl serve`` / ``storescp`` / ``echoscp``) for a test, stop it by PID.

``RunningNode`` starts the command in its own process group with its output in a log file
(opened in append mode, because every supervised actor appends to the same file), waits
under a deadline until the node is ready (``$NODECTL_READY_FILE``; the port alone is bound
before the actors start), and on ``stop()`` sends SIGTERM to the ``nodectl`` PID, waits, and
checks that every process it started is gone.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import psutil

from tests.support import NODECTL, die_with_parent, free_port, wait_for_port, wait_until


class RunningNode:
    """One ``nodectl`` node process tree started by a test."""

    def __init__(self, args: Sequence[str], *, cwd: Path, port: int, env: dict[str, str] | None = None,
                 wrapper: Sequence[str] = ()) -> None:
        """``wrapper``: a command that execs nodectl (``unshare -m ...``), keeping its PID."""
        self.cwd = cwd
        self.port = port
        self.args = list(args)
        self.log_path = cwd / f"nodectl-{port}.log"
        # nodectl binds its ports before the actors start: an open port is not a ready node.
        self.ready_path = cwd / f"nodectl-{port}.ready"
        self.ready_path.unlink(missing_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [*wrapper, *NODECTL, *args],
                cwd=cwd,
                env={**os.environ, "NODECTL_READY_FILE": str(self.ready_path), **(env or {})},
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=die_with_parent,
            )
        self.pids: set[int] = set()

    def wait_ready(self, timeout: float = 30.0) -> "RunningNode":
        """Wait until nodectl says every listener accepts, and remember every PID of the tree."""
        try:
            wait_until(lambda: self.ready_path.exists() or self.proc.poll() is not None, timeout=timeout, what="the node's ready file")
            if self.proc.poll() is not None:
                raise TimeoutError(f"nodectl exited with {self.proc.returncode}")
            wait_for_port(self.port, timeout=timeout)
        except TimeoutError:
            self.stop()
            raise AssertionError(f"node did not start; log:\n{self.log()}")
        self.pids = self.tree_pids()
        return self

    def tree_pids(self) -> set[int]:
        try:
            parent = psutil.Process(self.proc.pid)
            return {parent.pid, *(child.pid for child in parent.children(recursive=True))}
        except psutil.NoSuchProcess:
            return set()

    def children(self, name_part: str) -> list[psutil.Process]:
        """Actor processes whose command line contains ``name_part`` (e.g. ``run worker``).

        A process the actor has forked but not yet exec'd (the writer starting its
        materialiser) still shows the actor's command line for that moment: a match whose
        parent matches too is that fork, not a second actor."""
        out = []
        for pid in self.tree_pids():
            try:
                proc = psutil.Process(pid)
                if name_part in " ".join(proc.cmdline()):
                    out.append(proc)
            except psutil.NoSuchProcess:
                continue
        matched = {proc.pid for proc in out}
        return [proc for proc in out if _parent_pid(proc) not in matched]

    def materialised(self, timeout: float = 30.0) -> "RunningNode":
        """Wait until every instance the node acknowledged is at its final path and indexed.

        The writer answers C-STORE from its journal and materialises shortly after (issue 12);
        a test that reads the store or the index right after a sender exits asks the writer,
        as the commitment tracker does (``SyncStore``), instead of guessing a delay.
        """
        materialised(self.children("run writer"), timeout)
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 40.0) -> int:
        """Signal nodectl by PID, wait, and return its exit status (SIGKILL the group if stuck)."""
        pids = self.pids | self.tree_pids()
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(psutil.pid_exists(p) and _alive(p) for p in pids):
            time.sleep(0.1)
        self.leftover = [p for p in pids if psutil.pid_exists(p) and _alive(p)]
        for pid in self.leftover:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return self.proc.returncode


def materialised(writers: Sequence[psutil.Process], timeout: float = 30.0) -> None:
    """``SyncStore`` to the writer whose process is in ``writers`` (its --config names the endpoint)."""
    import zmq

    from actors import bus
    from node import config as configuration
    from node.messages import SyncStore

    assert len(writers) == 1, f"expected one writer process, found {len(writers)}"
    cmdline = writers[0].cmdline()
    config = configuration.load_file(Path(cmdline[cmdline.index("--config") + 1]))
    sock = bus.dealer(zmq.Context.instance(), config.endpoint("writer"))
    try:
        bus.request(sock, SyncStore(), sender="test", timeout=timeout)
    finally:
        sock.close(0)


def _parent_pid(proc: psutil.Process) -> int | None:
    try:
        return proc.ppid()
    except psutil.NoSuchProcess:
        return None


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def serve(tmp_path: Path, *extra: str, workers: int = 2, aet: str = "NODE") -> RunningNode:
    """``nodectl serve`` on a free port in ``tmp_path`` (store and index there)."""
    port = free_port()
    node = RunningNode(["serve", "--port", str(port), "--aet", aet, "--workers", str(workers), *extra], cwd=tmp_path, port=port)
    return node.wait_ready()
