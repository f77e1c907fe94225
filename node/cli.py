"""``nodectl``: one command, many subcommands, dispatched lazily.

Each subcommand lives in its own module under ``node.tools`` with a ``main(argv) -> int``
that parses its own arguments, because the compatibility subcommands each keep the parsing
rules of the tool they replace (DCMTK, dcm4che, pynetdicom); a shared argparse front end would
break those. Modules are imported only when chosen, so ``nodectl echoscu`` does not pay for
importing the actors.
"""

from __future__ import annotations

import importlib
import sys

# subcommand -> (module, one-line summary)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("node.tools.serve", "run a whole node under supervisor (C-ECHO, C-STORE)"),
    "storescp": ("node.tools.storescp", "dcm4che storescp: a node configured from its options"),
    "echoscp": ("node.tools.echoscp", "pynetdicom echoscp: a node configured from its options"),
    "echoscu": ("node.tools.echoscu", "DCMTK echoscu: C-ECHO a peer"),
    "echo": ("node.tools.echo", "short form of echoscu"),
    "storescu": ("node.tools.storescu", "pynetdicom storescu: C-STORE files to a peer"),
    "send": ("node.tools.send", "C-STORE many files over parallel associations"),
    "stcomscu": ("node.tools.stcomscu", "DCMTK stcomscu: Storage Commitment SCU"),
    "commit": ("node.tools.commit", "short form of stcomscu"),
    "status": ("node.tools.status", "show the processes and state of a running node"),
    "run": ("node.tools.run", "run one actor in the foreground (used by supervisor)"),
}


def usage() -> str:
    """The top-level help text."""
    width = max(len(name) for name in SUBCOMMANDS)
    lines = ["usage: nodectl <subcommand> [options ...]", "", "subcommands:"]
    for name, (_, summary) in SUBCOMMANDS.items():
        lines.append(f"  {name:<{width}}  {summary}")
    lines.append("")
    lines.append("Run 'nodectl <subcommand> --help' for a subcommand's options.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Dispatch to a subcommand's ``main``; its return value is the exit status."""
    args = sys.argv[1:] if argv is None else list(argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    name, rest = args[0], args[1:]
    if name not in SUBCOMMANDS:
        print(f"nodectl: unknown subcommand {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module_name = SUBCOMMANDS[name][0]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        print(f"nodectl {name}: not built yet in this version", file=sys.stderr)
        return 3
    return int(module.main(rest) or 0)


if __name__ == "__main__":  # pragma: no cover - `python -m node.cli`
    sys.exit(main())
