"""``nodectl echo``: the short verb for "can I reach this DICOM node?".

CLI form::

    nodectl echo [options] peer [port]

The same engine and options as ``nodectl echoscu`` (DCMTK's echoscu command line, see
``docs/cli/echoscu.md``) with two friendlier defaults, stated in its ``--help``: the port may
be left out (104, the DICOM well-known port), and the log level is ``info``, so a plain run
says what happened (``I: Received Echo Response (Success)``). ``-q`` or ``-ll warn`` give
echoscu's silence back. Exit codes are echoscu's: 0, 1, 22, 70.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from node.tools import dcmtk_args as da
from node.tools import echoscu

SPEC = echoscu.build_spec(
    "echo",
    port_optional=True,
    port_help="tcp/ip port number of peer (default: 104)",
    description="DICOM verification (C-ECHO) SCU, verbose by default (nodectl echoscu with friendlier defaults)",
)


def main(argv: Sequence[str] | None = None) -> int:
    """``nodectl echo``: echoscu with an optional port and info-level logging by default."""

    def body(app: da.App, args: list[str]) -> int:
        return echoscu.run(app, args, default_level=logging.INFO, default_port=104)

    return da.run_app(body, SPEC, sys.argv[1:] if argv is None else argv)
