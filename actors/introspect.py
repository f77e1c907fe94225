"""What a running node is doing, asked from outside its actors: ``nodectl status`` prints it,
the metrics endpoint (``actors/metrics.py``) turns it into gauges.

Each question goes to the part of the node that knows the answer:

* supervisord (XML-RPC on ``<run_dir>/supervisor.sock``): every process, its state, PID and
  uptime; restarts are counted from supervisord's log ("spawned" lines, so a rotated log
  counts from its rotation);
* each listener (``StatusRequest`` on its ROUTER): associations in progress, per worker;
* the index database, read-only, through the modules that own its tables (``node.index``,
  ``node.transactions``): instances stored, commitment transactions and report outbox by state;
* the writer's journal (read-only, with the index's checkpoint): instances acknowledged but
  not yet at their final paths and in the index.

Every function answers with plain dicts and lists (the ``nodectl status --json`` shape) and
reports a part it cannot reach as ``{"error": ...}`` instead of raising.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any
from xmlrpc.client import ServerProxy

import zmq
from supervisor.xmlrpc import SupervisorTransport

from actors import bus
from node import config as configuration
from node import journal, transactions, worker_journal
from node.config import NodeConfig
from node.errors import ConfigError, StorageError
from node.index import Index
from node.messages import StatusRequest

LISTENER_TIMEOUT_S = 2.0


def supervisor(run_dir: Path) -> Any:
    """An XML-RPC proxy to the node's supervisord (its Unix socket in the run directory)."""
    transport = SupervisorTransport(None, None, serverurl=f"unix://{run_dir / 'supervisor.sock'}")
    return ServerProxy("http://127.0.0.1", transport=transport)


def processes(run_dir: Path) -> list[dict[str, Any]]:
    """Every supervised process with state, PID, uptime and restarts; OSError when
    supervisord does not answer."""
    infos = supervisor(run_dir).supervisor.getAllProcessInfo()
    spawns = spawn_counts(run_dir / "supervisord.log")
    out = []
    for info in infos:
        name = info["name"]
        out.append({
            "name": name,
            "state": info["statename"],
            "pid": info["pid"],
            "uptime_s": max(0, info["now"] - info["start"]) if info["statename"] == "RUNNING" else 0,
            "restarts": max(0, spawns.get(name, 1) - 1),
        })
    return sorted(out, key=lambda p: p["name"])


def spawn_counts(log: Path) -> dict[str, int]:
    """How often supervisord spawned each process, from its log."""
    counts: dict[str, int] = {}
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return counts
    for name in re.findall(r"spawned: '([^']+)' with pid", text):
        counts[name] = counts.get(name, 0) + 1
    return counts


def listeners(config: NodeConfig) -> list[dict[str, Any]]:
    """Ask each listener for its associations; an unreachable one is reported as such."""
    ctx = zmq.Context.instance()
    out = []
    for lc in config.listeners:
        sock = bus.dealer(ctx, config.endpoint(f"listener-{lc.key}"))
        try:
            reply = bus.request(sock, StatusRequest(), sender="nodectl-status", timeout=LISTENER_TIMEOUT_S).message
            out.append({"listener": reply.listener, "port": reply.port, "associations": reply.associations,
                        "max_associations": reply.max_associations, "workers": reply.workers})
        except TimeoutError:
            out.append({"listener": lc.key, "port": lc.port, "error": "no answer"})
        finally:
            sock.close(0)
    return out


def database(config: NodeConfig) -> dict[str, Any]:
    """Counts from the index (SQLite read-only, or the cluster's PostgreSQL); tables not
    created yet count as empty."""
    try:
        index = Index(config.database, readonly=True)
    except StorageError as exc:
        return {"error": str(exc)}
    try:
        try:
            instances = index.count()
        except index.db.errors:
            instances = 0
        return {"instances": instances, **transactions.counts_by_state(index.db)}
    finally:
        index.close()


def journal_backlog(config: NodeConfig) -> dict[str, Any]:
    """Acknowledged instances the writer has not materialised yet: in its journal and in the
    workers' (``node.worker_journal``), read from the files and the index's checkpoints."""
    if not journal.enabled(config):
        return {"enabled": False}
    path = journal.path_for(config.directory)
    workers_paths = worker_journal.all_paths(config.directory)
    if not journal.journal_id(path) and not workers_paths:  # the node never ran: no index to ask either
        return {"enabled": True, "instances": 0, "bytes": 0}
    try:
        index = Index(config.database, readonly=True)
    except StorageError as exc:
        return {"enabled": True, "error": str(exc)}

    def checkpoint(journal_id: str) -> int:
        try:
            return index.checkpoint(journal_id)
        except StorageError:  # no checkpoint table yet: nothing materialised
            return 0

    try:
        jid = journal.journal_id(path)
        own = journal.backlog(path, checkpoint(jid) if jid else 0)
        workers = worker_journal.backlog(workers_paths, checkpoint)
    except OSError as exc:
        return {"enabled": True, "error": str(exc)}
    finally:
        index.close()
    return {"enabled": True, "instances": own["instances"] + workers["instances"], "bytes": own["bytes"] + workers["bytes"],
            "writer": own, "workers": workers}


def collect(run_dir: Path) -> dict[str, Any]:
    """The whole status of the node whose run directory is ``run_dir``, as one dict;
    ConfigError when no node was started there."""
    effective = run_dir / "node.toml"
    if not effective.exists():
        raise ConfigError(f"no running node found: {effective} does not exist")
    config = configuration.load_file(effective)
    try:
        procs = processes(run_dir)
    except OSError as exc:
        return {"running": False, "run_dir": str(run_dir), "aet": config.aet, "error": f"supervisord not reachable: {exc}"}
    return {
        "running": True,
        "run_dir": str(run_dir),
        "aet": config.aet,
        "time": time.time(),
        "processes": procs,
        "listeners": listeners(config),
        "database": database(config),
        "journal": journal_backlog(config),
    }
