"""``nodectl storescp``: dcm4che 5 storescp's command line, served by a whole node.

Accepts dcm4che's options, spellings and defaults (``../shared/spec/storescp.md``): parse
errors print ``storescp: <message>`` and ``Try `storescp --help' ...`` and exit 2; every
start-up failure exits 2; ``-h``/``-V`` exit 0. The node runs until killed. Deviations, all
documented in docs/cli/storescp.md: attribute values in ``--filepath`` never place a file
outside ``--directory`` (refused with 0x0110); files are fsynced before the response;
TLS key and trust stores are PKCS12 or PEM files (tls_options); the asynchronous operations
window is negotiated and each worker performs up to 16 operations of an association at once.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import NoReturn

from node.config import ListenerConfig, NetworkConfig, NodeConfig, ServicesConfig, StoreConfig, check_aet, validate
from node.errors import ConfigError
from node.tools import tls_options
from node.tools._node import Started, run_node

VERSION = "nodectl storescp 0.1.0 (dcm4che storescp 5 command line)"

# TLS options: node/tools/tls_options.py (PKCS12 or PEM stores, dcm4che's cipher sets).
NOT_BUILT: dict[str, str] = {}


class _Parser(argparse.ArgumentParser):
    """argparse speaking like commons-cli: ``storescp: <message>`` then exit 2."""

    def error(self, message: str) -> NoReturn:
        fail(message)


def fail(message: str) -> NoReturn:
    print(f"storescp: {message}", file=sys.stderr)
    print("Try `storescp --help' for more information.", file=sys.stderr)
    raise SystemExit(2)


def dcm4che_int(text: str) -> int:
    """Decimal, or hexadecimal with an ``H`` suffix (``A700H``); ``0x`` is refused as dcm4che does."""
    try:
        if text.upper().endswith("H"):
            return int(text[:-1], 16)
        return int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"For input string: \"{text}\"") from None


def parser() -> _Parser:
    p = _Parser(prog="storescp", add_help=False, allow_abbrev=True,
                usage="storescp [options] -b [<aet>[@<ip>]:]<port>",
                description="The storescp application implements a Service Class Provider (SCP) for the "
                "Storage and Verification SOP Class, served by nodectl's distributed node.")
    p.add_argument("-h", "--help", action="store_true", help="display this help and exit")
    p.add_argument("-V", "--version", action="store_true", help="output version information and exit")
    p.add_argument("-b", "--bind", metavar="[aet[@ip]:]port", help="AE title, IP and port to listen on (required)")
    p.add_argument("--accept", nargs="+", action="extend", default=[], metavar="aet", help="accepted calling AE titles")
    p.add_argument("--directory", default=".", help="storage directory (default: working directory)")
    p.add_argument("--filepath", help="file path pattern, e.g. {00100020}/{0020000D}/{00080018}.dcm")
    p.add_argument("--ignore", action="store_true", help="do not store received objects")
    p.add_argument("--status", type=dcm4che_int, default=0, help="status of every C-STORE-RSP (e.g. A700H)")
    p.add_argument("--receive-delay", nargs="+", type=int, action="extend", default=[], metavar="ms")
    p.add_argument("--response-delay", nargs="+", type=int, action="extend", default=[], metavar="ms")
    p.add_argument("--rename-retries", type=int, default=3)
    p.add_argument("--rename-retry-jitter", type=int, default=50, metavar="ms")
    p.add_argument("--accept-unknown", action="store_true", help="accept any SOP class with any transfer syntax")
    p.add_argument("--sop-classes", metavar="file", help="accepted SOP classes (<sop-class>:<ts>[,<ts>...] lines)")
    p.add_argument("--max-pdulen-rcv", type=dcm4che_int, default=16378)
    p.add_argument("--max-pdulen-snd", type=dcm4che_int, default=16378)
    p.add_argument("--max-ops-invoked", type=dcm4che_int)
    p.add_argument("--max-ops-performed", type=dcm4che_int)
    p.add_argument("--not-async", action="store_true")
    p.add_argument("--not-pack-pdv", action="store_true", help="command and data in separate P-DATA PDUs (always so)")
    p.add_argument("--request-timeout", type=dcm4che_int, default=0, metavar="ms")
    p.add_argument("--idle-timeout", type=dcm4che_int, default=0, metavar="ms")
    p.add_argument("--release-timeout", type=dcm4che_int, default=0, metavar="ms")
    p.add_argument("--soclose-delay", type=dcm4che_int, default=50, metavar="ms")
    p.add_argument("--sosnd-buffer", type=dcm4che_int, default=0)
    p.add_argument("--sorcv-buffer", type=dcm4che_int, default=0)
    p.add_argument("--tcp-delay", action="store_true", help="set TCP_NODELAY off (on by default)")
    p.add_argument("--workers", type=int, help="nodectl: association worker processes (default: CPU count)")
    p.add_argument("--max-associations", type=int, default=64, help="nodectl: association limit of the node")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"], default="info", help="nodectl: log level")
    tls_options.add_arguments(p)
    return p


def parse_bind(value: str) -> ListenerConfig:
    """``[aet[@ip]:]port``, split at the first ``:`` as dcm4che does."""
    aet, host = "", ""
    if ":" in value:
        left, port_text = value.split(":", 1)
        aet, _, host = left.partition("@")
        if not aet:
            raise ConfigError(f"invalid AE title in -b {value}: empty")
        check_aet(aet)
    else:
        port_text = value
    try:
        port = int(port_text)
    except ValueError:
        raise ConfigError(f"invalid port in -b {value}: {port_text!r}") from None
    if not 0 <= port <= 65535:
        raise ConfigError(f"port {port} out of range")
    return ListenerConfig(port=port, host=host, aet=aet)


def _refuse_not_built(argv: list[str]) -> None:
    for arg in argv:
        name = arg.split("=", 1)[0]
        if arg == "--":
            return
        if name in NOT_BUILT:
            print(f"storescp: {name}: {NOT_BUILT[name]} is not built yet in nodectl; refusing rather than "
                  "serving without it", file=sys.stderr)
            raise SystemExit(2)


def async_window(opts: argparse.Namespace) -> tuple[int, int]:
    """dcm4che's window options: 0 (unlimited) unless given; ``--not-async`` makes both 1."""
    if opts.not_async:
        return 1, 1
    invoked = 0 if opts.max_ops_invoked is None else opts.max_ops_invoked
    performed = 0 if opts.max_ops_performed is None else opts.max_ops_performed
    if invoked < 0 or performed < 0:
        raise ConfigError("--max-ops-invoked and --max-ops-performed take 0 (unlimited) or more")
    return invoked, performed


def build_config(opts: argparse.Namespace, tls_dir: Path | None = None) -> NodeConfig:
    """A node configuration equivalent to dcm4che storescp's options."""
    invoked, performed = async_window(opts)
    listener = parse_bind(opts.bind)
    directory = Path(opts.directory)
    listener = replace(listener, accept=tuple(check_aet(a) for a in opts.accept))
    config = NodeConfig(
        aet=listener.aet or "STORESCP",
        directory=directory,
        database=str(directory / ".incoming" / "index.sqlite"),
        workers=opts.workers or NodeConfig().workers,
        listeners=(listener,),
        log_level=opts.log_level,
        store=StoreConfig(
            filepath=opts.filepath or "",
            ignore=opts.ignore,
            status=opts.status,
            receive_delay=tuple(opts.receive_delay),
            response_delay=tuple(opts.response_delay),
            rename_retries=opts.rename_retries,
            rename_retry_jitter=opts.rename_retry_jitter,
        ),
        network=NetworkConfig(
            max_pdu_receive=opts.max_pdulen_rcv,
            max_pdu_send=opts.max_pdulen_snd,
            max_associations=opts.max_associations,
            request_timeout_ms=opts.request_timeout,
            idle_timeout_ms=opts.idle_timeout,
            release_timeout_ms=opts.release_timeout,
            soclose_delay_ms=opts.soclose_delay,
            send_buffer=opts.sosnd_buffer,
            receive_buffer=opts.sorcv_buffer,
            tcp_nodelay=not opts.tcp_delay,
            max_ops_invoked=invoked,
            max_ops_performed=performed,
        ),
        services=ServicesConfig(accept_unknown=opts.accept_unknown, sop_classes=opts.sop_classes or ""),
    )
    if tls_dir is None and tls_options.requested(opts):
        tls_dir = Path(tempfile.mkdtemp(prefix="nodectl-tls-"))
    return validate(tls_options.apply(config, opts, tls_dir or Path(".")))


def announce(started: Started) -> None:
    for host, port in started.ports.values():
        print(f"Start TCP Listener on /{host}:{port}", flush=True)


def main(argv: list[str]) -> int:
    _refuse_not_built(argv)
    opts = parser().parse_args(argv)
    if opts.help:
        parser().print_help()
        return 0
    if opts.version:
        print(f"storescp: {VERSION}")
        return 0
    if opts.bind is None:
        fail("missing required option -b")
    tls_dir = Path(tempfile.mkdtemp(prefix="nodectl-tls-"))  # PEM copies of PKCS12 stores, 0600
    try:
        config = build_config(opts, tls_dir)
        return run_node(config, on_ready=announce, temporary_run_dir=True)
    except ConfigError as exc:
        print(f"storescp: {exc}", file=sys.stderr)
        return 2
    finally:
        shutil.rmtree(tls_dir, ignore_errors=True)
