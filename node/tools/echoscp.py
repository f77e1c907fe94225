"""``nodectl echoscp``: pynetdicom 3.0.4 echoscp's command line, served by a whole node.

Same options, defaults and exit codes as the original (``../shared/spec/echoscp.md``):
argparse errors exit 2, ``--version PORT`` prints ``echoscp.py v0.7.0``, a port that cannot
be bound exits 1, SIGINT stops cleanly with 0, SIGTERM stops the node and then kills us by
the signal (status -15/143, as the app dies by it). Silent at the default level; with -v/-d
the log is pynetdicom's association log as the engine shell writes it (actors/_app_log.py:
``Accepting Association``, ``Received Echo Request``, ``Association Released``, with -d the
PDU and DIMSE dumps), level-letter prefix ``I: ...``; the actors' own lines show only with -d. Only the Verification SOP class is accepted, with the
transfer syntax preference the -x options select; AE titles are not enforced.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from node.config import ListenerConfig, NetworkConfig, NodeConfig, ServicesConfig, validate
from node.errors import ConfigError
from node.tools._node import Terminated, run_node

VERSION = "echoscp.py v0.7.0"
IMPLICIT, EXPLICIT_LE, EXPLICIT_BE = "1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"

# pynetdicom 3.0.4's ALL_TRANSFER_SYNTAXES, in its order (the server walks it in order).
PYNETDICOM_ORDER = (
    IMPLICIT, EXPLICIT_LE, "1.2.840.10008.1.2.1.99", EXPLICIT_BE,
    *(f"1.2.840.10008.1.2.4.{n}" for n in (
        "50", "51", "57", "70", "80", "81", "90", "91", "92", "93", "94", "95", "100", "100.1", "101", "101.1",
        "102", "102.1", "103", "103.1", "104", "104.1", "105", "105.1", "106", "106.1", "107", "108", "110",
        "111", "112", "201", "202", "203", "204", "205")),
    "1.2.840.10008.1.2.5", "1.2.840.10008.1.2.7.1", "1.2.840.10008.1.2.7.2", "1.2.840.10008.1.2.7.3",
    "1.2.840.10008.1.2.8.1",
)
LEVELS = {"critical": "critical", "error": "error", "warn": "warning", "info": "info", "debug": "debug"}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="echoscp",
        description="The echoscp application implements a Service Class Provider (SCP) for the Verification "
        "SOP Class. It listens for a DICOM C-ECHO message from a Service Class User (SCU) and sends a response.",
        usage="echoscp [options] port",
    )
    p.add_argument("port", type=int, help="TCP/IP port number to listen on")
    p.add_argument("--version", action="store_true", help="print version information and exit")
    out = p.add_mutually_exclusive_group()
    out.add_argument("-q", "--quiet", action="store_true", help="quiet mode, print no warnings and errors")
    out.add_argument("-v", "--verbose", action="store_true", help="verbose mode, print processing details")
    out.add_argument("-d", "--debug", action="store_true", help="debug mode, print debug information")
    p.add_argument("-ll", "--log-level", metavar="[l]", choices=list(LEVELS), help="use level l for the logger (critical, error, warn, info, debug)")
    p.add_argument("-aet", "--ae-title", metavar="[a]etitle", default="ECHOSCP", help="set my AE title (default: ECHOSCP)")
    p.add_argument("-ta", "--acse-timeout", metavar="[s]econds", type=float, default=30)
    p.add_argument("-td", "--dimse-timeout", metavar="[s]econds", type=float, default=30)
    p.add_argument("-tn", "--network-timeout", metavar="[s]econds", type=float, default=30)
    p.add_argument("-pdu", "--max-pdu", metavar="[n]umber of bytes", type=int, default=16382)
    p.add_argument("-ba", "--bind-address", metavar="[a]ddress", default="", help="the address of the network interface to listen on")
    ts = p.add_mutually_exclusive_group()
    ts.add_argument("-x=", "--prefer-uncompr", action="store_true", help="prefer explicit VR local byte order")
    ts.add_argument("-xe", "--prefer-little", action="store_true", help="prefer explicit VR little endian TS")
    ts.add_argument("-xb", "--prefer-big", action="store_true", help="prefer explicit VR big endian TS")
    ts.add_argument("-xi", "--implicit", action="store_true", help="accept implicit VR little endian TS only")
    p.add_argument("--workers", type=int, default=1,
                   help="nodectl: association worker processes (default 1: each takes the 10 associations; more only start slower)")
    return p


def transfer_syntaxes(opts: argparse.Namespace) -> tuple[str, ...]:
    """The accepted list in the order the -x options make it."""
    order = list(PYNETDICOM_ORDER)
    if opts.implicit:
        return (IMPLICIT,)
    if opts.prefer_uncompr:
        order.remove(IMPLICIT)
        order.append(IMPLICIT)
    elif opts.prefer_little:
        order.remove(EXPLICIT_LE)
        order.insert(0, EXPLICIT_LE)
    elif opts.prefer_big:
        order.remove(EXPLICIT_BE)
        order.insert(0, EXPLICIT_BE)
    return tuple(order)


def log_level(opts: argparse.Namespace) -> str:
    if opts.quiet:
        return "critical"
    if opts.verbose:
        return "info"
    if opts.debug:
        return "debug"
    return LEVELS[opts.log_level] if opts.log_level else "error"


def build_config(opts: argparse.Namespace, run_root: Path) -> NodeConfig:
    return validate(NodeConfig(
        aet=opts.ae_title[:16] or "ECHOSCP",
        directory=run_root / "store",
        database=str(run_root / "index.sqlite"),
        workers=opts.workers or 1,
        log_level=log_level(opts),
        log_format="letter",
        listeners=(ListenerConfig(port=opts.port, host=opts.bind_address, aet=""),),
        network=NetworkConfig(
            max_pdu_receive=opts.max_pdu,
            max_associations=10,
            acse_timeout=opts.acse_timeout,
            dimse_timeout=opts.dimse_timeout,
            network_timeout=opts.network_timeout,
        ),
        services=ServicesConfig(storage=False, verification_transfer_syntaxes=transfer_syntaxes(opts)),
    ))


def main(argv: list[str]) -> int:
    opts = parser().parse_args(argv)
    if opts.version:
        print(VERSION)
        return 0
    if log_level(opts) == "debug":  # the app's first lines with -d
        print(f"D: {VERSION}\nD: ", file=sys.stderr, flush=True)
    import tempfile

    try:
        with tempfile.TemporaryDirectory(prefix="nodectl-echoscp-") as root:
            try:
                config = build_config(opts, Path(root))
                return run_node(config, temporary_run_dir=True, die_by_sigterm=True)
            except ConfigError as exc:
                print(f"E: {exc}", file=sys.stderr)
                return 1
    except Terminated:  # the node is down and cleaned up; now die as the app does
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
        return 128 + signal.SIGTERM
