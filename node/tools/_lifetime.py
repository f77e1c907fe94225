"""How the processes of a node started by ``nodectl`` die with it, and share its ports.

The chain is ``nodectl`` -> supervisord -> each actor (``nodectl run ACTOR``). Every link
asks the kernel for SIGKILL when its parent dies (``PR_SET_PDEATHSIG``), set in the child
itself: ``nodectl`` sets it for supervisord between fork and exec, each actor sets it as the
first thing ``nodectl run`` does. A SIGKILL of ``nodectl`` therefore takes supervisord down,
whose death takes every actor down, at once; nothing is left holding the port. (A stop asked
for with SIGTERM/SIGINT still goes through supervisord's ordered stop.)

The listening sockets are bound by ``nodectl`` itself, first thing, so a peer that connects
while the actors are still importing waits in the kernel's backlog instead of being refused.
``nodectl`` hands them to the listener over a Unix socket (``ListeningSockets``) whose path
is in ``$NODECTL_LISTEN_FROM`` (``actors/listener.py`` fetches them): supervisord closes
every descriptor its children would inherit. A restarted listener gets the same socket, and
the connections waiting on it, again.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import threading
from pathlib import Path

from node.config import NodeConfig

PR_SET_PDEATHSIG = 1


NODECTL_PID_ENV = "NODECTL_PID"  # set by nodectl for supervisord, inherited by every actor


def die_with_parent(sig: int = signal.SIGKILL, *, from_nodectl: bool = False) -> None:
    """Get ``sig`` when the parent dies; get it now if the parent died while we asked.

    An actor asks only once its interpreter has started: had supervisord died before that
    (nodectl SIGKILLed while supervisord was spawning it), the actor would already belong to
    init and ask too late. So an actor (``from_nodectl``) also checks that its parent is still
    a child of the ``nodectl`` named in ``$NODECTL_PID``, and dies if not.
    """
    parent = os.getppid()
    prctl = getattr(ctypes.CDLL(None, use_errno=True), "prctl", None)
    if prctl is None or prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        return  # not Linux: nothing to ask for
    if os.getppid() != parent or (from_nodectl and _orphaned_from_nodectl(parent)):
        os.kill(os.getpid(), sig)


def _orphaned_from_nodectl(parent: int) -> bool:
    """True if ``$NODECTL_PID`` names a nodectl that is not our parent's parent (nor our parent)."""
    expected = os.environ.get(NODECTL_PID_ENV, "")
    if not expected.isdigit() or int(expected) == parent:
        return False
    try:
        stat = Path(f"/proc/{parent}/stat").read_text()
    except OSError:
        return True  # the parent is gone already
    grandparent = int(stat.rsplit(")", 1)[1].split()[1])  # after "pid (comm) state": ppid
    return grandparent != int(expected)


class ListeningSockets:
    """Listening sockets by listener key, served to listeners over a Unix socket.

    Protocol: the listener connects, sends its key and a newline; the answer is one byte,
    ``b"1"`` with the descriptor attached, or ``b"0"`` (no socket for that key: bind it
    yourself).
    """

    def __init__(self) -> None:
        self.sockets: dict[str, socket.socket] = {}
        self.addresses: dict[str, tuple[str, int]] = {}  # as configured, port 0 included
        self._lock = threading.Lock()
        self.server: socket.socket | None = None
        self.path: Path | None = None

    def add(self, key: str, address: tuple[str, int], sock: socket.socket) -> None:
        self.sockets[key] = sock
        self.addresses[key] = address

    def serve(self, path: Path) -> None:
        """Listen on ``path``; listeners that connect wait until ``start``."""
        self.path = path
        path.unlink(missing_ok=True)
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(str(path))
        os.chmod(path, 0o600)
        server.listen(16)
        self.server = server

    def start(self) -> None:
        """Answer in a daemon thread. Call it after forking supervisord: a fork (and its
        ``preexec_fn``) in a process with no other thread cannot inherit a lock held by one."""
        assert self.server is not None
        threading.Thread(target=self._loop, args=(self.server,), name="listening-sockets", daemon=True).start()

    def _loop(self, server: socket.socket) -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return  # closed
            with conn:
                try:
                    conn.settimeout(5.0)
                    key = b""
                    while not key.endswith(b"\n") and len(key) < 256:
                        chunk = conn.recv(256)
                        if not chunk:
                            break
                        key += chunk
                    with self._lock:
                        sock = self.sockets.get(key.decode(errors="replace").strip())
                        if sock is None:
                            conn.sendall(b"0")
                        else:
                            socket.send_fds(conn, [b"1"], [sock.fileno()])
                except OSError:
                    continue

    def retain(self, config: NodeConfig) -> None:
        """After a reload: close the sockets of listeners removed or given another address."""
        wanted = {lc.key: (lc.host, lc.port) for lc in config.listeners}
        with self._lock:
            for key in [k for k in self.sockets if wanted.get(k) != self.addresses.get(k)]:
                self.sockets.pop(key).close()

    def close(self) -> None:
        if self.server is not None:
            try:
                self.server.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept()
            except OSError:
                pass
            self.server.close()
            self.server = None
        if self.path is not None:
            self.path.unlink(missing_ok=True)
        with self._lock:
            for sock in self.sockets.values():
                sock.close()
            self.sockets.clear()
