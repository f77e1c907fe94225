"""``nodectl serve``: run a whole node with embedded defaults, a config file, or both.

Precedence: embedded defaults < ``--config FILE`` (or ``$NODECTL_CONFIG``) < ``NODECTL_*``
environment < the options below. Defaults: port 11112, AE title NODE, store ``./store`` and
index ``./node.sqlite`` in the working directory, one worker per CPU.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from node import config as configuration
from node.config import NodeConfig
from node.errors import ConfigError
from node.tools._node import Started, run_node


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nodectl serve", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, help="TOML configuration file")
    p.add_argument("--port", type=int, help="listening port of the first listener (0 = any free port)")
    p.add_argument("--host", help="bind address of the first listener (default all interfaces)")
    p.add_argument("--aet", help="our AE title")
    called = p.add_mutually_exclusive_group()
    called.add_argument("--require-called-aet", action="store_true",
                        help="refuse associations whose called AE title is not ours (A-ASSOCIATE-RJ reason 7)")
    called.add_argument("--any-called-aet", action="store_true",
                        help="accept any called AE title (the default; overrides a listener's aet from --config)")
    p.add_argument("--directory", type=Path, help="store directory")
    p.add_argument("--database", help="index database: SQLite file, or postgresql://user@host/db shared by a cluster")
    p.add_argument("--workers", type=int, help="association worker processes")
    p.add_argument("--filepath", help="dcm4che file path pattern, e.g. '{00100020}/{0020000D}/{00080018}.dcm'")
    p.add_argument("--run-dir", type=Path, help="directory for sockets, pid and ready files")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"], help="actor log level")
    p.add_argument("--log-format", choices=["text", "json"], help="json: one JSON object a line")
    p.add_argument("--tls-cert", metavar="PEM", help="TLS on the first listener: certificate chain (and key, if --tls-key is not given)")
    p.add_argument("--tls-key", metavar="PEM", help="private key of --tls-cert")
    p.add_argument("--tls-ca", metavar="PEM", help="trust store for client certificates; clients must then present one")
    p.add_argument("--peer", action="append", default=[], metavar="AET@HOST:PORT",
                   help="a remote AE the node may call back (Storage Commitment reports); repeatable")
    p.add_argument("--print-supervisor-config", action="store_true",
                   help="print the supervisord configuration this node would run and exit (see deploy/)")
    return p


def build_config(opts: argparse.Namespace) -> NodeConfig:
    """The effective configuration: file and environment, then these options."""
    config = configuration.load(opts.config)
    node_updates: dict[str, object] = {}
    for name in ("aet", "directory", "database", "workers", "run_dir", "log_level", "log_format"):
        value = getattr(opts, name)
        if value is not None:
            node_updates[name] = value
    config = replace(config, **node_updates)
    first = config.listeners[0]
    listener_updates: dict[str, object] = {}
    if opts.port is not None:
        listener_updates["port"] = opts.port
    if opts.host is not None:
        listener_updates["host"] = opts.host
    # Any called AE title is accepted unless asked otherwise, as DCMTK's storescp and Orthanc
    # do: a new user's first C-ECHO names whatever AE title their tool defaults to.
    if opts.any_called_aet:
        listener_updates["aet"] = ""
    elif opts.require_called_aet or (opts.aet is not None and first.aet):
        listener_updates["aet"] = config.aet  # a listener that checks the title follows --aet
    if listener_updates:
        config = replace(config, listeners=(replace(first, **listener_updates), *config.listeners[1:]))
    if opts.filepath is not None:
        config = replace(config, store=replace(config.store, filepath=opts.filepath))
    config = _tls_options(config, opts)
    if opts.peer:
        config = replace(config, peers=(*config.peers, *(configuration.parse_peer(text) for text in opts.peer)))
    return configuration.validate(config)


def _tls_options(config: NodeConfig, opts: argparse.Namespace) -> NodeConfig:
    """--tls-cert/--tls-key/--tls-ca: TLS on the first listener; a CA means client certificates are required."""
    if not (opts.tls_cert or opts.tls_key or opts.tls_ca):
        return config
    if not opts.tls_cert and not config.tls.certificate:
        raise ConfigError("--tls-key and --tls-ca need --tls-cert")
    updates: dict[str, object] = {}
    for option, name in ((opts.tls_cert, "certificate"), (opts.tls_key, "key"), (opts.tls_ca, "ca")):
        if option:
            updates[name] = str(Path(option).resolve())
    if opts.tls_ca:
        updates["require_client_cert"] = True
    first = replace(config.listeners[0], tls=True)
    return replace(config, tls=replace(config.tls, **updates), listeners=(first, *config.listeners[1:]))


def announce(started: Started) -> None:
    for key, (host, port) in started.ports.items():
        print(f"nodectl: node {started.config.aet} listening on {host}:{port} (listener {key}, workers {started.config.workers})", file=sys.stderr, flush=True)


def main(argv: list[str]) -> int:
    opts = parser().parse_args(argv)
    try:
        config = build_config(opts)
        if opts.print_supervisor_config:
            from node.supervision import render

            config_path = opts.config.resolve() if opts.config else Path("/etc/nodectl/node.toml")
            print(render(config, config_path, python="nodectl", log_to="/var/log/nodectl/%(program_name)s.log").replace("nodectl -m node.cli", "nodectl"))
            return 0
        return run_node(config, on_ready=announce, reload=lambda: build_config(opts))
    except ConfigError as exc:
        print(f"nodectl serve: {exc}", file=sys.stderr)
        return 2
