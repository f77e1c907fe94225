"""The effective configuration of a node that ``nodectl`` starts or reloads: absolute paths,
a run directory short enough for ipc socket names, and every listener's address proven by
binding it. ``_node`` (start) and ``reload`` (SIGHUP) both use it.
"""

from __future__ import annotations

import socket
import tempfile
from dataclasses import replace
from pathlib import Path

from node import config as configuration
from node.config import ListenerConfig, NodeConfig
from node.errors import ConfigError


def resolve(config: NodeConfig, *, temporary_run_dir: bool = False) -> NodeConfig:
    """Absolute paths everywhere, and a run directory short enough for ipc socket names."""
    run_dir = Path(tempfile.mkdtemp(prefix="nodectl-")) if temporary_run_dir else configuration.short_run_dir(config.run_dir)
    database = config.database
    if "://" not in database:
        database = str(Path(database).resolve())
    return replace(config, directory=config.directory.resolve(), database=database, run_dir=run_dir)


def check_bind(lc: ListenerConfig) -> None:
    """ConfigError unless ``lc``'s address can be bound (a check only)."""
    bind(lc).close()


def bind(lc: ListenerConfig) -> socket.socket:
    """``lc``'s address bound and listening, as the listener would bind it; else ConfigError."""
    family = socket.AF_INET6 if ":" in lc.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((lc.host, lc.port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {lc.host or '*'}:{lc.port}: {exc.strerror}") from None
    return sock
