"""Options that ``nodectl storescu`` and ``nodectl send`` share, in pynetdicom's spellings.

Their own module, not storescu's: ``nodectl send`` needs only these, and importing storescu
(with the requestor shell under it) cost a plain send job ~12 ms of start-up CPU
(issue 13 item 6 counts start-up in the sender's time, docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import logging
import sys

DEFAULT_MAX_PDU = 16382  # pynetdicom._globals.DEFAULT_MAX_LENGTH
LOG_FORMAT = "%(levelname).1s: %(message)s"
LOG_LEVELS = {
    "critical": logging.CRITICAL,
    "error": logging.ERROR,
    "warn": logging.WARNING,
    "info": logging.INFO,
    "debug": logging.DEBUG,
}


class ToolParser(argparse.ArgumentParser):
    """An argparse parser that raises instead of exiting, so ``main`` returns the code."""

    def exit(self, status: int = 0, message: str | None = None) -> None:  # type: ignore[override]
        if message:
            self._print_message(message, sys.stderr)
        raise SystemExit(status)


def add_logging_options(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """The pynetdicom family's General Options: --version, -q/-v/-d (exclusive), -ll."""
    gen_opts = parser.add_argument_group("General Options")
    gen_opts.add_argument(
        "--version", help="print version information and exit", action="store_true"
    )
    output = gen_opts.add_mutually_exclusive_group()
    for short, long, const, text in (
        ("-q", "--quiet", "q", "quiet mode, print no warnings and errors"),
        ("-v", "--verbose", "v", "verbose mode, print processing details"),
        ("-d", "--debug", "d", "debug mode, print debug information"),
    ):
        output.add_argument(
            short, long, help=text, action="store_const", dest="log_type", const=const
        )
    gen_opts.add_argument(
        "-ll",
        "--log-level",
        metavar="[l]",
        help="use level l for the logger (critical, error, warn, info, debug)",
        type=str,
        choices=list(LOG_LEVELS),
    )
    return gen_opts


def add_network_options(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """Network Options shared with ``nodectl send``: -aet -aec -ta -td -tn -pdu."""
    net_opts = parser.add_argument_group("Network Options")
    net_opts.add_argument(
        "-aet", "--calling-aet", metavar="[a]etitle", type=str, default="STORESCU",
        help="set my calling AE title (default: STORESCU)",
    )
    net_opts.add_argument(
        "-aec", "--called-aet", metavar="[a]etitle", type=str, default="ANY-SCP",
        help="set called AE title of peer (default: ANY-SCP)",
    )
    for short, long, text in (
        ("-ta", "--acse-timeout", "timeout for ACSE messages (default: 30 s)"),
        ("-td", "--dimse-timeout", "timeout for DIMSE messages (default: 30 s)"),
        ("-tn", "--network-timeout", "timeout for the network (default: 30 s)"),
    ):
        net_opts.add_argument(short, long, metavar="[s]econds", help=text, type=float, default=30)
    net_opts.add_argument(
        "-pdu", "--max-pdu", metavar="[n]umber of bytes", type=int, default=DEFAULT_MAX_PDU,
        help=f"set max receive pdu to n bytes (0 for unlimited, default: {DEFAULT_MAX_PDU})",
    )
    return net_opts
