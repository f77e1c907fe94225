"""``nodectl commit``: the short form of ``nodectl stcomscu`` (same options, same exit codes).

CLI form::

    nodectl commit [options] peer port dcmfile-in...      # client mode, wait for the report
    nodectl commit --node node.toml peer port files...    # the report may reach any listener of the node
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from node.tools import dcmtk_args as da
from node.tools import stcomscu


def main(argv: Sequence[str] | None = None) -> int:
    """Run stcomscu under the name ``commit``."""
    return da.run_app(stcomscu.run, stcomscu.SPEC, sys.argv[1:] if argv is None else argv)
