"""``nodectl run <actor> [--config FILE] [actor options]``: one actor in the foreground.

supervisor starts every process of a node this way; the Procfile does too. The actor
modules are imported only here, so the rest of ``node`` never depends on them. The actor
gets SIGKILL when its parent dies (``_lifetime.die_with_parent``).
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

from node import config as configuration
from node.errors import ConfigError, NodeError
from node.tools._lifetime import die_with_parent

ACTORS = ("listener", "worker", "writer", "tracker", "metrics")


def main(argv: list[str]) -> int:
    # First, before the imports: an actor never outlives the process that started it
    # (supervisord, honcho, a test), so a killed node leaves nothing holding its port.
    die_with_parent()
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
        module = importlib.import_module(f"actors.{actor}")
        from actors import bus

        bus.setup_logging(actor, config.log_level, config.log_format)
        return int(module.main(config, rest) or 0)
    except ConfigError as exc:
        print(f"nodectl run {actor}: {exc}", file=sys.stderr)
        return 2
    except NodeError as exc:
        print(f"nodectl run {actor}: {exc}", file=sys.stderr)
        return 1
