"""Start a whole node under supervisord in the foreground and stop it cleanly.

``nodectl serve``, ``nodectl storescp`` and ``nodectl echoscp`` all end here: one node,
several front doors. The steps, each of which can fail with a clear message before any
process is started:

1. check the configuration (pattern, SOP class list) and that every port can be bound;
2. write the effective configuration and supervisord.conf into the run directory;
3. start supervisord (it dies with us: PR_SET_PDEATHSIG) and wait, under a deadline, until
   every listener has written its ready file;
4. forward SIGTERM/SIGINT to supervisord, which stops listeners, then workers, then the
   writer; return once it has exited.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from node import config as configuration
from node.config import ListenerConfig, NodeConfig
from node.errors import ConfigError
from node.supervision import metrics_dir, render

READY_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Started:
    """What a caller may announce once the node accepts associations."""

    config: NodeConfig
    ports: dict[str, tuple[str, int]]


def resolve(config: NodeConfig, *, temporary_run_dir: bool = False) -> NodeConfig:
    """Absolute paths everywhere, and a run directory short enough for ipc socket names."""
    run_dir = Path(tempfile.mkdtemp(prefix="nodectl-")) if temporary_run_dir else configuration.short_run_dir(config.run_dir)
    database = config.database
    if "://" not in database:
        database = str(Path(database).resolve())
    return replace(config, directory=config.directory.resolve(), database=database, run_dir=run_dir)


def preflight(config: NodeConfig) -> None:
    """Fail early, with the reason, on what would make an actor exit at start-up."""
    from node.paths import FilePathPattern
    from node.receive import context_rules

    if config.store.filepath:
        FilePathPattern.compile(config.store.filepath)
    context_rules(config)
    if any(lc.tls for lc in config.listeners):  # unreadable certificate or key: say so before starting
        from actors.tls import server_context

        server_context(config.tls)
    for lc in config.listeners:
        _check_bind(lc)
    try:
        config.directory.mkdir(parents=True, exist_ok=True)
        config.run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create {exc.filename}: {exc.strerror}") from None


def _check_bind(lc: ListenerConfig) -> None:
    family = socket.AF_INET6 if ":" in lc.host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((lc.host, lc.port))
        except OSError as exc:
            raise ConfigError(f"cannot listen on {lc.host or '*'}:{lc.port}: {exc.strerror}") from None


def _die_with_parent() -> None:
    """In the child: get SIGTERM when nodectl dies, so supervisord never outlives it."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def run_node(
    config: NodeConfig,
    *,
    on_ready: Callable[[Started], None] | None = None,
    temporary_run_dir: bool = False,
    reload: Callable[[], NodeConfig] | None = None,
) -> int:
    """Run the node until a signal stops it; return the exit status."""
    config = resolve(config, temporary_run_dir=temporary_run_dir)
    try:
        preflight(config)
        config_path = config.run_dir / "node.toml"
        configuration.dump(config, config_path)
        conf = config.run_dir / "supervisord.conf"
        conf.write_text(render(config, config_path))
        shutil.rmtree(metrics_dir(config), ignore_errors=True)  # counters start at zero with the node
        for lc in config.listeners:
            config.ready_path(lc).unlink(missing_ok=True)
        return _supervise(config, conf, on_ready, reload)
    finally:
        if temporary_run_dir:
            shutil.rmtree(config.run_dir, ignore_errors=True)


def _supervise(
    config: NodeConfig, conf: Path, on_ready: Callable[[Started], None] | None, reload: Callable[[], NodeConfig] | None = None
) -> int:
    proc = subprocess.Popen(
        [sys.executable, "-m", "supervisor.supervisord", "-n", "-c", str(conf)],
        preexec_fn=_die_with_parent,
        stdin=subprocess.DEVNULL,
    )
    stopping = {"signal": 0}

    def forward(signum: int, _frame: object) -> None:
        stopping["signal"] = signum
        try:
            os.kill(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    hup = {"pending": False}
    if reload is not None:  # SIGHUP: re-read the configuration (node/tools/reload.py), keep serving
        previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, lambda _s, _f: hup.update(pending=True))
    try:
        ports = _await_ready(config, proc, stopping)
        if ports is not None and on_ready is not None:
            on_ready(Started(config, ports))
        while proc.poll() is None:
            if hup["pending"] and reload is not None and not stopping["signal"]:
                from node.tools import reload as reloading

                hup["pending"] = False
                config = reloading.reload(config, reload)
            try:
                proc.wait(timeout=0.5)
            except subprocess.TimeoutExpired:
                pass
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if stopping["signal"]:
        return 0
    print(f"nodectl: supervisord exited with status {proc.returncode}", file=sys.stderr)
    return proc.returncode or 1


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
        time.sleep(0.05)
    if proc.poll() is None and not stopping["signal"]:
        print(f"nodectl: the node did not become ready within {READY_TIMEOUT_S:.0f} s; stopping it", file=sys.stderr)
        proc.terminate()
    return None
