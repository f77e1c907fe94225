"""Live reload (SIGHUP) of the settings an actor can apply without dropping anything.

``nodectl serve`` on SIGHUP rewrites the effective configuration and signals the tracker,
the listeners and the workers (supervisord ``signalProcess``); each re-reads the file between two turns of
its loop. What they apply live: the tracker its ``[[peers]]`` and ``[commitment]`` settings
(its state is in the database), a listener its ``[network]`` limits (``max_associations``),
a worker the listener list (it announces itself to listeners a reload added), the
``[access]`` table and the node-wide caps it checks new associations against. Associations
in progress are not touched. The writer is not signalled, and a worker's other settings take
effect when it next starts; programs added or removed (a listener, the worker count) are
supervisord's ``reread``/``update`` in ``node.tools.reload``.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

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
    fresh = _fresh()
    if fresh is None:
        return current
    log.info("configuration reloaded from %s", os.environ.get("NODECTL_CONFIG") or "the embedded defaults")
    return fresh


def _fresh() -> NodeConfig | None:
    """The configuration file and environment as they are now; None (logged) when invalid."""
    path = os.environ.get("NODECTL_CONFIG")
    try:
        fresh = configuration.load(Path(path) if path else None)
    except ConfigError as exc:
        log.error("reload refused, keeping the running configuration: %s", exc)
        return None
    return fresh


def new_listeners(worker: Any, known: dict[str, Any], flag: threading.Event, connect: Callable[[str], Any]) -> dict[str, Any]:
    """A worker on SIGHUP: take the file's listeners and admission rules, return sockets to the
    listeners it lacked.

    Only the listener list, the ``[access]`` table and the association caps change; every
    other setting of a running worker stays as it started (its associations were negotiated
    with them). A removed listener's socket stays open and unused: messages to it are
    dropped, never block.
    """
    flag.clear()
    worker.config = with_listeners(worker.config)
    added = {lc.key: connect(lc.key) for lc in worker.config.listeners if lc.key not in known}
    log.info("listeners and access rules reloaded: %s new listener(s)", ", ".join(added) or "no")
    return added


def with_listeners(current: NodeConfig) -> NodeConfig:
    """``current`` with the configuration file's listeners, access table and caps as they are now."""
    fresh = _fresh()
    if fresh is None:
        return current
    network = replace(current.network, max_associations=fresh.network.max_associations,
                      max_associations_per_aet=fresh.network.max_associations_per_aet)
    return replace(current, listeners=fresh.listeners, access=fresh.access, network=network)
