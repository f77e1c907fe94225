"""``nodectl status``: what a running node is doing, for people (text) and scripts (``--json``).

It finds the node by its run directory (``--run-dir``, or the one ``--config`` names, or
``./.nodectl`` as ``nodectl serve`` uses by default) and asks:

* supervisord (XML-RPC on ``<run_dir>/supervisor.sock``): every process, its state, PID and
  uptime; restarts are counted from supervisord's log ("spawned" lines, so a rotated log
  counts from its rotation);
* each listener (``StatusRequest`` on its ROUTER): associations in progress, per worker;
* the index database (read-only): instances stored, commitment transactions by state, the
  report outbox by state;
* the writer's journal (read-only, with the index's checkpoint): instances acknowledged but
  not yet at their final paths and in the index (the backlog, issue 12).

Exit status: 0 every process running; 1 the node is not running or a process is not
RUNNING; 2 usage or configuration error.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

from node import config as configuration
from node.config import NodeConfig
from node.errors import ConfigError

LISTENER_TIMEOUT_S = 2.0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nodectl status", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    where = p.add_mutually_exclusive_group()
    where.add_argument("--config", type=Path, help="the node's TOML configuration (finds its run directory)")
    where.add_argument("--run-dir", type=Path, help="the node's run directory")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    return p


def find_run_dir(opts: argparse.Namespace) -> Path:
    if opts.run_dir is not None:
        return opts.run_dir.resolve()
    base = configuration.load(opts.config) if opts.config else configuration.load(None)
    return configuration.short_run_dir(base.run_dir)


def processes(run_dir: Path) -> list[dict[str, Any]]:
    """Every supervised process with state, PID, uptime and restarts."""
    from xmlrpc.client import ServerProxy

    from supervisor.xmlrpc import SupervisorTransport

    transport = SupervisorTransport(None, None, serverurl=f"unix://{run_dir / 'supervisor.sock'}")
    proxy = ServerProxy("http://127.0.0.1", transport=transport)
    infos = proxy.supervisor.getAllProcessInfo()
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
    import zmq

    from actors import bus
    from node.messages import StatusRequest

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
    """Counts from the index (SQLite read-only, or the cluster's PostgreSQL); missing tables count as empty."""
    from node import db
    from node.errors import StorageError

    try:
        conn = db.connect(config.database, readonly=True)
    except StorageError as exc:
        return {"error": str(exc)}
    try:
        return {
            "instances": _scalar(conn, "SELECT COUNT(*) FROM instances"),
            "transactions": _by_state(conn, "commit_transactions"),
            "outbox": _by_state(conn, "commit_outbox"),
        }
    finally:
        conn.close()


def _scalar(conn: Any, sql: str) -> int:
    try:
        return int(conn.execute(sql).fetchone()[0])
    except conn.errors:
        return 0


def _by_state(conn: Any, table: str) -> dict[str, int]:
    try:
        return dict(conn.execute(f"SELECT state, COUNT(*) FROM {table} GROUP BY state").fetchall())
    except conn.errors:
        return {}


def collect(run_dir: Path) -> dict[str, Any]:
    """The whole status as one dict (the --json output)."""
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


def journal_backlog(config: NodeConfig) -> dict[str, Any]:
    """Acknowledged instances the writer has not materialised yet (from the journal file)."""
    from node import db, journal
    from node.errors import StorageError

    if not journal.enabled(config):
        return {"enabled": False}
    path = journal.path_for(config.directory)
    jid = journal.journal_id(path)
    checkpoint = 0
    if jid:
        try:
            conn = db.connect(config.database, readonly=True)
        except StorageError as exc:
            return {"enabled": True, "error": str(exc)}
        try:
            row = conn.execute("SELECT seq FROM journal_checkpoints WHERE journal_id = ?", (jid,)).fetchone()
            checkpoint = int(row[0]) if row else 0
        except conn.errors:
            checkpoint = 0
        finally:
            conn.close()
    try:
        return {"enabled": True, **journal.backlog(path, checkpoint)}
    except OSError as exc:
        return {"enabled": True, "error": str(exc)}


def render(status: dict[str, Any]) -> str:
    """The text form."""
    lines = [f"node {status['aet']}  (run dir {status['run_dir']})"]
    if not status["running"]:
        return "\n".join([*lines, f"not running: {status['error']}"])
    lines.append("processes:")
    for p in status["processes"]:
        uptime = time.strftime("%H:%M:%S", time.gmtime(p["uptime_s"]))
        lines.append(f"  {p['name']:<16} {p['state']:<9} pid {p['pid']:<8} up {uptime}  restarts {p['restarts']}")
    for lst in status["listeners"]:
        if "error" in lst:
            lines.append(f"listener {lst['listener']}: {lst['error']}")
            continue
        per_worker = ", ".join(f"{name} {w['associations']}" for name, w in sorted(lst["workers"].items()))
        lines.append(f"listener {lst['listener']} (port {lst['port']}): {lst['associations']}/{lst['max_associations']} associations ({per_worker})")
    db = status["database"]
    if "error" in db:
        lines.append(f"database: {db['error']}")
    else:
        lines.append(f"instances stored: {db['instances']}")
        lines.append(f"commitment transactions: {_states(db['transactions'])}")
        lines.append(f"report outbox: {_states(db['outbox'])}")
    jr = status.get("journal", {})
    if "error" in jr:
        lines.append(f"journal: {jr['error']}")
    elif jr.get("enabled"):
        lines.append(f"journal backlog (acknowledged, not yet at their final paths): {jr['instances']} instances, {jr['bytes']} bytes")
    return "\n".join(lines)


def _states(counts: dict[str, int]) -> str:
    return ", ".join(f"{state} {n}" for state, n in sorted(counts.items())) or "none"


def healthy(status: dict[str, Any]) -> bool:
    return bool(status["running"]) and all(p["state"] == "RUNNING" for p in status["processes"])


def main(argv: list[str]) -> int:
    opts = parser().parse_args(argv)
    try:
        status = collect(find_run_dir(opts))
    except ConfigError as exc:
        print(f"nodectl status: {exc}", file=sys.stderr)
        return 1 if "no running node" in str(exc) else 2
    print(json.dumps(status, indent=2) if opts.json else render(status))
    return 0 if healthy(status) else 1
