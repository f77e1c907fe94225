"""``nodectl status``: what a running node is doing, for people (text) and scripts (``--json``).

It finds the node by its run directory (``--run-dir``, or the one ``--config`` names, or
``./.nodectl`` as ``nodectl serve`` uses by default) and asks it through the runtime's
introspection (``actors/introspect.py``, which the metrics endpoint uses too): supervisord for
every process, each listener for its associations, the index database for instances and
commitment transactions by state, the writer's journal for its backlog.

Exit status: 0 every process running; 1 the node is not running or a process is not
RUNNING; 2 usage or configuration error.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from actors import introspect
from node import config as configuration
from node.errors import ConfigError


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
        status = introspect.collect(find_run_dir(opts))
    except ConfigError as exc:
        print(f"nodectl status: {exc}", file=sys.stderr)
        return 1 if "no running node" in str(exc) else 2
    print(json.dumps(status, indent=2) if opts.json else render(status))
    return 0 if healthy(status) else 1
