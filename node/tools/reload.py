"""``nodectl serve`` on SIGHUP: apply a changed configuration without dropping associations.

1. Re-read the configuration (same file, environment and options as at start); refuse it,
   keeping the running one, when it is invalid or names a port that cannot be bound.
2. Rewrite ``<run_dir>/node.toml`` and ``supervisord.conf``.
3. supervisord ``reloadConfig`` (what ``supervisorctl reread`` does), then ``update``:
   programs removed are stopped and removed (a listener: its port closes, associations it
   handed to workers go on), programs added are started (a new listener), programs changed
   are stopped and started again (the worker group when the worker count changed: each
   worker drains like on shutdown, its associations get up to 10 s to end).
4. SIGHUP to the tracker, the listeners and the workers, which re-read the file
   (``actors/reload.py``).

Unchanged: the run directory, the ``[supervisord]`` section (``[metrics] enabled`` needs a
restart for the multiprocess directory), the writer, and a running worker's settings other
than the listener list (they apply when it next starts).
"""

from __future__ import annotations

import sys
import time
from dataclasses import replace
from typing import Any

from actors import introspect
from node import config as configuration
from node.config import NodeConfig
from node.errors import ConfigError
from node.supervision import render
from node.tools._effective import check_bind, resolve

LIVE_GROUPS = ("tracker", "listener-", "worker")  # programs that apply a SIGHUP (the writer would exit)
STARTING_WAIT_S = 3.0  # supervisord's startsecs (1 s) and some: how long a reload waits for STARTING actors


def prepare(running: NodeConfig, fresh: NodeConfig) -> NodeConfig:
    """The new effective configuration, in the running node's run directory; ConfigError if unusable."""
    fresh = replace(resolve(fresh), run_dir=running.run_dir)
    fresh = configuration.validate(fresh)
    bound = {lc.key: lc for lc in running.listeners}
    for lc in fresh.listeners:
        old = bound.get(lc.key)
        if old is None or (old.host, old.port) != (lc.host, lc.port):
            check_bind(lc)
    return fresh


def apply(running: NodeConfig, fresh: NodeConfig) -> NodeConfig:
    """Write the files, update supervisord, signal the live-reloading actors; return ``fresh``."""
    fresh = prepare(running, fresh)
    config_path = fresh.run_dir / "node.toml"
    configuration.dump(fresh, config_path)
    (fresh.run_dir / "supervisord.conf").write_text(render(fresh, config_path))
    rpc = introspect.supervisor(fresh.run_dir).supervisor
    [[added, changed, removed]] = rpc.reloadConfig()
    for name in removed + changed:
        rpc.stopProcessGroup(name, True)
        rpc.removeProcessGroup(name)
    for name in changed + added:
        rpc.addProcessGroup(name)
    signalled = signal_live(rpc, skip=set(added + changed))
    print(f"nodectl: configuration reloaded: added {added or '-'}, restarted {changed or '-'}, removed {removed or '-'},"
          f" signalled {signalled or '-'}", file=sys.stderr, flush=True)
    return fresh


def signal_live(rpc: Any, skip: set[str], wait_s: float = STARTING_WAIT_S) -> list[str]:
    """SIGHUP every live-reloading actor (not those just started: they read the new file).

    Only RUNNING ones: an actor still STARTING (supervisord's ``startsecs``, 1 s) may not have
    its SIGHUP handler yet, and the signal's default action would end it. It may also have read
    the old file, so it is waited for (bounded) and signalled once RUNNING: a SIGHUP in a
    node's first second used to reach only the actors already past it ("signalled -")."""
    signalled: list[str] = []
    deadline = time.monotonic() + wait_s
    while True:
        starting = False
        for info in rpc.getAllProcessInfo():
            if not info["group"].startswith(LIVE_GROUPS) or info["group"] in skip or info["name"] in signalled:
                continue
            if info["statename"] == "RUNNING":
                rpc.signalProcess(f"{info['group']}:{info['name']}", "HUP")
                signalled.append(info["name"])
            elif info["statename"] == "STARTING":
                starting = True
        if not starting or time.monotonic() >= deadline:
            return signalled
        time.sleep(0.1)


def reload(running: NodeConfig, load: Any) -> NodeConfig:
    """SIGHUP's whole job; on any failure the running configuration stays and the reason is printed."""
    try:
        return apply(running, load())
    except (ConfigError, OSError) as exc:
        print(f"nodectl: reload refused, configuration unchanged: {exc}", file=sys.stderr, flush=True)
    except Exception as exc:  # an XML-RPC fault from supervisord: report it, keep serving
        print(f"nodectl: reload failed part way ({type(exc).__name__}: {exc}); see supervisord.log", file=sys.stderr, flush=True)
    return running
