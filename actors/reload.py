"""Live reload (SIGHUP) of the settings an actor can apply without dropping anything.

``nodectl serve`` on SIGHUP rewrites the effective configuration and signals the tracker and
the listeners (supervisord ``signalProcess``); each re-reads the file between two turns of
its loop. What they apply live: the tracker its ``[[peers]]`` and ``[commitment]`` settings
(its state is in the database), a listener its ``[network]`` limits (``max_associations``).
Associations in progress are not touched. Workers and the writer are not signalled (their
settings take effect when they next start); programs added or removed (a listener, the
worker count) are supervisord's ``reread``/``update`` in ``node.tools._node``.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from pathlib import Path

from node import config as configuration
from node.config import NodeConfig
from node.errors import ConfigError

log = logging.getLogger("actors.reload")


def on_sighup() -> threading.Event:
    """An event SIGHUP sets (main thread only; elsewhere the event is never set)."""
    flag = threading.Event()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGHUP, lambda _signum, _frame: flag.set())
    return flag


def reread(current: NodeConfig, flag: threading.Event) -> NodeConfig:
    """The configuration again when SIGHUP came (file and environment as at start), else ``current``."""
    if not flag.is_set():
        return current
    flag.clear()
    path = os.environ.get("NODECTL_CONFIG")
    try:
        fresh = configuration.load(Path(path) if path else None)
    except ConfigError as exc:
        log.error("reload refused, keeping the running configuration: %s", exc)
        return current
    log.info("configuration reloaded from %s", path or "the embedded defaults")
    return fresh
