"""``nodectl run <actor> [--config FILE] [actor options]``: one actor in the foreground.

supervisor starts every process of a node this way; the Procfile does too. The actor
modules are imported only here, so the rest of ``node`` never depends on them. The actor
gets SIGKILL when its parent dies (``_lifetime.die_with_parent``).

The first association needs a listener and one worker; the writer, the tracker, the metrics
endpoint and the other workers are not on its way, and on two cores their imports (~0.2-0.6 s
of CPU each) would delay it. They wait, before importing anything, until a listener accepts
(its ready file, written once a worker joined it), for at most ``AFTER_READY_S``: a node
answers C-ECHO sooner, and a C-STORE that arrives meanwhile waits in its worker for the
writer as it would for a busy one (issue 14).
"""

from __future__ import annotations

import importlib
import os
import sys
import time
from pathlib import Path

from node import config as configuration
from node.config import NodeConfig
from node.errors import ConfigError, NodeError
from node.tools._lifetime import die_with_parent

ACTORS = ("listener", "worker", "writer", "tracker", "metrics")
AFTER_READY = ("writer", "tracker", "metrics")  # and every worker but worker 0
AFTER_READY_S = 3.0
READY_POLL_S = 0.02


def starts_after_ready(actor: str, args: list[str]) -> bool:
    """Is ``actor`` (with its options) off the way to the node's first association?"""
    if actor == "worker":
        at = args.index("--worker-id") + 1 if "--worker-id" in args else len(args)
        return at < len(args) and args[at] != "0"
    return actor in AFTER_READY


def await_a_listener(config: NodeConfig, timeout: float = AFTER_READY_S) -> bool:
    """Wait until one of the node's listeners accepts associations (or ``timeout``); True if one does.

    A restarted actor finds the ready file already there and does not wait.
    """
    paths = [config.ready_path(lc) for lc in config.listeners]
    deadline = time.monotonic() + timeout
    while paths and not any(path.exists() for path in paths):
        if time.monotonic() >= deadline:
            return False
        time.sleep(READY_POLL_S)
    return True


def main(argv: list[str]) -> int:
    # First, before the imports: an actor never outlives the process that started it
    # (supervisord, honcho, a test), so a killed node leaves nothing holding its port.
    die_with_parent(from_nodectl=True)
    if not argv or argv[0] in ("-h", "--help"):
        print(f"usage: nodectl run {{{','.join(ACTORS)}}} [--config FILE] [actor options]")
        return 0 if argv else 2
    actor, rest = argv[0], list(argv[1:])
    if actor not in ACTORS:
        print(f"nodectl run: unknown actor {actor!r} (one of {', '.join(ACTORS)})", file=sys.stderr)
        return 2
    path = None
    if "--config" in rest:
        i = rest.index("--config")
        if i + 1 >= len(rest):
            print("nodectl run: --config needs a file", file=sys.stderr)
            return 2
        path = Path(rest[i + 1])
        del rest[i : i + 2]
        os.environ["NODECTL_CONFIG"] = str(path)  # actors/reload.py re-reads the same file on SIGHUP
    try:
        config = configuration.load(path)
        if starts_after_ready(actor, rest):
            await_a_listener(config)
        module = importlib.import_module(f"actors.{actor}")
        from actors import bus  # after the wait above, like the actor's own imports

        bus.setup_logging(actor, config.log_level, config.log_format)
        return int(module.main(config, rest) or 0)
    except ConfigError as exc:
        print(f"nodectl run {actor}: {exc}", file=sys.stderr)
        return 2
    except NodeError as exc:
        print(f"nodectl run {actor}: {exc}", file=sys.stderr)
        return 1
