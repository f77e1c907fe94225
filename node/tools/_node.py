"""Start a whole node under supervisord in the foreground and stop it cleanly.

``nodectl serve``, ``nodectl storescp`` and ``nodectl echoscp`` all end here: one node,
several front doors. The steps, each of which can fail with a clear message before any
process is started:

1. bind every port (kept, and handed to the listeners later), then check the configuration
   (pattern, SOP class list);
2. write the effective configuration and supervisord.conf into the run directory;
3. start supervisord and wait, under a deadline, until every listener has written its ready
   file;
4. forward SIGTERM/SIGINT to supervisord, which stops listeners, then workers, then the
   writer; return once it has exited.

The ports are bound in step 1 and kept: the listeners get them from us
(``_lifetime.ListeningSockets``), so a peer connecting while the actors start waits in the
backlog instead of being refused. While it waits for the node to come up or go away,
``nodectl`` wakes supervisord's loop every 50 ms by connecting to its control socket
(``_nudge``), so spawns and the ordered stop go as fast as the actors do rather than one
1 s tick per step; supervisord itself is run unchanged. Every process dies with its parent
(``_lifetime.die_with_parent``): a SIGKILL of ``nodectl`` takes the whole node down at once.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from node import config as configuration
from node.config import LISTEN_FROM_ENV, NodeConfig
from node.errors import ConfigError
from node.supervision import metrics_dir, render
from node.tools._effective import bind, resolve
from node.tools._lifetime import NODECTL_PID_ENV, ListeningSockets, die_with_parent

READY_TIMEOUT_S = 60.0
READY_FILE_ENV = "NODECTL_READY_FILE"


NUDGE_S = 0.05  # how often nodectl wakes supervisord while the node starts or stops


class Terminated(Exception):
    """The node was stopped by SIGTERM and the caller asked to die by it (``nodectl echoscp``,
    as pynetdicom's app does); raised once the node is down and cleaned up."""


@dataclass(frozen=True)
class Started:
    """What a caller may announce once the node accepts associations."""

    config: NodeConfig
    ports: dict[str, tuple[str, int]]


def bind_listeners(config: NodeConfig, into: ListeningSockets) -> None:
    """Bind every listener's port, listening; the listeners get them from ``into``."""
    for lc in config.listeners:
        into.add(lc.key, (lc.host, lc.port), bind(lc))


def preflight(config: NodeConfig) -> None:
    """Fail early, with the reason, on what would make an actor exit at start-up.

    Only what a user wrote can be wrong: a file path pattern, a SOP class list, TLS files. The
    modules that check them are imported only when there is something to check: pydicom under
    node.paths and node.receive costs ~0.2-0.3 s of CPU (python -X importtime), and nodectl
    spends it before supervisord starts, on the way to the first association (issue 14).
    """
    if config.store.filepath:
        from node.paths import FilePathPattern

        FilePathPattern.compile(config.store.filepath)
    if config.services.sop_classes:  # the other presentation context rules are the node's own constants
        from node.receive import context_rules

        context_rules(config)
    if any(lc.tls for lc in config.listeners):  # unreadable certificate or key: say so before starting
        from actors.tls import server_context

        server_context(config.tls)
    try:
        config.directory.mkdir(parents=True, exist_ok=True)
        config.run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create {exc.filename}: {exc.strerror}") from None


def run_node(
    config: NodeConfig,
    *,
    on_ready: Callable[[Started], None] | None = None,
    temporary_run_dir: bool = False,
    reload: Callable[[], NodeConfig] | None = None,
    die_by_sigterm: bool = False,
) -> int:
    """Run the node until a signal stops it; return the exit status (``Terminated`` on
    SIGTERM with ``die_by_sigterm``)."""
    config = resolve(config, temporary_run_dir=temporary_run_dir)
    listening = ListeningSockets()
    # From the start: the port is bound at once, so a peer (or a test) may think the node up
    # and signal it before supervisord runs; that stop must be as clean as a later one.
    stopping = {"signal": 0}
    running: list[subprocess.Popen[bytes]] = []

    def forward(signum: int, _frame: object) -> None:
        stopping["signal"] = signum
        for proc in running:
            try:
                os.kill(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        if running:  # supervisord acts on the SIGTERM at its loop's next turn: now, not when our wait ends (up to 0.5 s)
            _nudge(config.run_dir)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        bind_listeners(config, listening)  # first: a peer may connect from now on
        preflight(config)
        config_path = config.run_dir / "node.toml"
        configuration.dump(config, config_path)
        conf = config.run_dir / "supervisord.conf"
        conf.write_text(render(config, config_path))
        shutil.rmtree(metrics_dir(config), ignore_errors=True)  # counters start at zero with the node
        for path in (*(config.ready_path(lc) for lc in config.listeners), config.metrics_ready_path):
            path.unlink(missing_ok=True)  # a killed node's files would name its old ports
        listening.serve(config.run_dir / "listening.sock")
        if stopping["signal"]:
            status = 0
        else:
            status = _supervise(config, conf, on_ready, reload, listening, stopping, running)
        if die_by_sigterm and stopping["signal"] == signal.SIGTERM:
            raise Terminated()
        return status
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        listening.close()
        if temporary_run_dir:
            shutil.rmtree(config.run_dir, ignore_errors=True)


def _supervise(
    config: NodeConfig, conf: Path, on_ready: Callable[[Started], None] | None, reload: Callable[[], NodeConfig] | None,
    listening: ListeningSockets, stopping: dict[str, int], running: list[subprocess.Popen[bytes]],
) -> int:
    """Run supervisord until it exits; return the exit status. ``stopping`` is set by the
    signal handlers of ``run_node``, which signal what is in ``running``."""
    env = dict(os.environ)
    env[NODECTL_PID_ENV] = str(os.getpid())  # an actor spawned as nodectl dies checks it (_lifetime.die_with_parent)
    if listening.path is not None:
        env[LISTEN_FROM_ENV] = str(listening.path)
    proc = subprocess.Popen(
        [sys.executable, "-m", "supervisor.supervisord", "-n", "-c", str(conf)],
        preexec_fn=die_with_parent,
        stdin=subprocess.DEVNULL,
        env=env,
    )
    running.append(proc)
    listening.start()
    if stopping["signal"]:  # it came while supervisord was being started
        proc.terminate()
    previous = {}
    hup = {"pending": False}
    if reload is not None:  # SIGHUP: re-read the configuration (node/tools/reload.py), keep serving
        previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, lambda _s, _f: hup.update(pending=True))
    try:
        ports = _await_ready(config, proc, stopping)
        if ports is not None and on_ready is not None:
            on_ready(Started(config, ports))
        if ports is not None:
            _announce_ready(ports)
        while proc.poll() is None:
            if hup["pending"] and reload is not None and not stopping["signal"]:
                # Imported on the first SIGHUP only: its imports (supervisor's XML-RPC client, the
                # index and commitment modules through actors.introspect) cost ~0.47 s of a start
                # that must stay under 1 s (python -X importtime, load ~5).
                from node.tools import reload as reloading

                hup["pending"] = False
                config = reloading.reload(config, reload)
                listening.retain(config)  # a listener that moved binds its new address itself
            if stopping["signal"]:
                _nudge(config.run_dir)
            try:
                proc.wait(timeout=NUDGE_S if stopping["signal"] else 0.5)
            except subprocess.TimeoutExpired:
                pass
    finally:
        if proc.poll() is None:
            proc.terminate()
            deadline = time.monotonic() + 60
            while proc.poll() is None and time.monotonic() < deadline:
                _nudge(config.run_dir)
                try:
                    proc.wait(timeout=NUDGE_S)
                except subprocess.TimeoutExpired:
                    pass
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if os.environ.get(READY_FILE_ENV):
            Path(os.environ[READY_FILE_ENV]).unlink(missing_ok=True)
    if stopping["signal"]:
        return 0
    print(f"nodectl: supervisord exited with status {proc.returncode}", file=sys.stderr)
    return proc.returncode or 1


def _nudge(run_dir: Path) -> None:
    """Make supervisord's main loop turn now: connect to its control socket and close.

    Its loop waits up to 1 s in ``poll()`` and a signal does not cut that wait short, so a
    spawn, a child's exit or a stop request is acted on only at the next turn: ~1 s before
    the first spawn and one second per priority group when stopping. A connection on the
    socket it polls (its XML-RPC server, public interface) wakes it at once; it accepts, sees
    the close, and meanwhile runs its transitions, reaps children and handles signals.
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        try:
            sock.connect(str(run_dir / "supervisor.sock"))
        except OSError:  # not up yet, or already gone
            pass


def _announce_ready(ports: dict[str, tuple[str, int]]) -> None:
    """With ``$NODECTL_READY_FILE``: write there, atomically, one ``key host port`` line per
    listener once every listener accepts (the port itself is bound from the start, so a
    connection succeeding says nothing); removed when the node stops. For scripts and tests."""
    path = os.environ.get(READY_FILE_ENV)
    if not path:
        return
    tmp = f"{path}.tmp"
    with open(tmp, "w") as fh:
        fh.writelines(f"{key} {host} {port}\n" for key, (host, port) in ports.items())
    os.replace(tmp, path)


def _await_ready(config: NodeConfig, proc: subprocess.Popen[bytes], stopping: dict[str, int]) -> dict[str, tuple[str, int]] | None:
    """Wait until every listener wrote its ready file; None if stopped or failed first."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    ports: dict[str, tuple[str, int]] = {}
    while time.monotonic() < deadline and proc.poll() is None and not stopping["signal"]:
        for lc in config.listeners:
            path = config.ready_path(lc)
            if lc.key not in ports and path.exists():
                host, port = path.read_text().split()
                ports[lc.key] = (host, int(port))
        if len(ports) == len(config.listeners):
            return ports
        _nudge(config.run_dir)
        time.sleep(NUDGE_S)
    if proc.poll() is None and not stopping["signal"]:
        print(f"nodectl: the node did not become ready within {READY_TIMEOUT_S:.0f} s; stopping it", file=sys.stderr)
        proc.terminate()
    return None
