"""``nodectl stcomscu``: DCMTK's stcomscu (Storage Commitment SCU), option for option.

CLI form::

    nodectl stcomscu [options] [peer] [port] [dcmfile-in...]

Modes (``spec/stcomscu.md``): *client* (peer, port, files; N-ACTION, then wait for the
N-EVENT-REPORT on the same association unless ``-nwe``), *server* (``+P port``, no peer:
accept N-EVENT-REPORTs until killed) and *combined* (both: the listener is up before the
N-ACTION leaves, the N-ACTION association is released after ``-te`` and the report may come
on either association).

Every transaction goes through a commitment tracker, so all modes share one code path:
either the tracker of a running node (``--node CONFIG``, a nodectl extension: the report may
then arrive at any listener of that node), or an in-process one (the tracker as a thread,
``inproc://``; reports on a new association reach ``actors/report_listener.py``, a small
acceptor shell on the node's engine) whose database is ``<od>/.stcomscu.sqlite`` unless
``--database`` says otherwise; a run that created that file removes it when it ends with no
transaction waiting for a report. The transaction is recorded before the N-ACTION goes out; the
tracker publishes its end and this process writes the files.

Files (names are a nodectl convention, the manual's schemes are lost):
``<od>/<TransactionUID>.req.<OK|ERR>.dcm``, ``<od>/<TransactionUID>.rsp.<OK|ERR>.dcm``,
``<od>/<TransactionUID>.report.txt``; ``+tuf FILE`` holds the UID and a newline.

Exit codes: 0 done (also when the report lists failures), 1 syntax, 21 no input files,
22 invalid input file, 23 no valid input files (``-nh``), 41/42/43/44 request/response/
report/transaction-UID file not written, 45 bad ``-od``, 60 network set-up failed (also
``+ac``), 61 association not negotiated, 62 N-ACTION not sent or refused, 63 no report in
time (or the association was lost while waiting), 64 ``+P`` cannot listen, 71 the TLS
layer cannot be set up (unreadable key or certificate, a profile or suite OpenSSL lacks,
``--expect-sni``).

TLS (``+tls key cert`` and DCMTK's other TLS options, ``node/tools/dcmtk_tls.py``): the
N-ACTION association (``actors/ul_requestor.py``) is a TLS client with our certificate; in
server and combined mode the report listener accepts TLS only, with the same key, trust store (``+cf``/``+cd``),
profile and ``-rc``/``-vc``/``-ic``. With ``--node`` the reports reach the node's listeners,
whose TLS is the node's ``[tls]``.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import platform
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from actors import ul_requestor as rq
from actors.report_listener import ReportListener
from actors.tls import server_context
from actors.ul_requestor import Requestor
from node import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME, ul
from node.tools import dcmtk_args as da
from node.tools import dcmtk_tls as tls
from node.tools.dcmtk_args import App, CommandLine, Group, Option, Param, ToolExit

VERSION = "0.1.0"
APPLICATIONTITLE = "STCOMSCU"
PEERAPPLICATIONTITLE = "ANY-SCP"
SOP_CLASS = "1.2.840.10008.1.20.1"
SOP_INSTANCE = "1.2.840.10008.1.20.1.1"
VERIFICATION = "1.2.840.10008.1.1"
IMPLICIT, EXPLICIT_LE, EXPLICIT_BE, DEFLATED = "1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"

EXIT_NO_INPUT_FILES = 21
EXIT_INVALID_INPUT_FILE = 22
EXIT_NO_VALID_INPUT_FILES = 23
EXIT_CANNOT_WRITE_REQUEST_FILE = 41
EXIT_CANNOT_WRITE_RESPONSE_FILE = 42
EXIT_CANNOT_WRITE_REPORT_FILE = 43
EXIT_CANNOT_WRITE_TRANSACTION_FILE = 44
EXIT_INVALID_OUTPUT_DIRECTORY = 45
EXIT_CANNOT_INITIALIZE_NETWORK = 60
EXIT_CANNOT_NEGOTIATE_ASSOCIATION = 61
EXIT_CANNOT_SEND_REQUEST = 62
EXIT_CANNOT_WAIT_FOR_RESPONSE = 63
EXIT_CANNOT_START_SCP_AND_LISTEN = 64
EXIT_CANNOT_CREATE_TRANSPORT_LAYER = 71

DEFAULT_WAIT_S = 3600.0  # "unlimited" waits are bounded by the transaction deadline
POLL_S = 0.2
QUERY_EVERY_S = 1.0


def _flag(long: str, short: str, help: str, dest: str, const: Any) -> Option:
    return Option(long=long, short=short, help=help, dest=dest, const=const)


def build_spec(name: str = "stcomscu") -> da.ToolSpec:
    """The option table of DCMTK 3.6.9 stcomscu, in its usage order, plus ``--node``/``--database``."""
    table: tuple[Option | Group, ...] = (
        *da.general_options(),
        Option(long="--verbose-pc", short="+v", help="show presentation contexts in verbose mode"),
        Group("input options:"),
        Group("input file format:", sub=True),
        _flag("--read-file", "+f", "read file format or data set", "read_mode", "file"),
        _flag("--read-file-only", "+fo", "read file format only (default)", "read_mode", "file-only"),
        _flag("--read-dataset", "-f", "read data set without file meta information", "read_mode", "dataset"),
        Group("input files:", sub=True),
        Option(long="--scan-directories", short="+sd", help="scan directories for input files (dcmfile-in)"),
        Option(long="--scan-pattern", short="+sp", values=1, value_help="[p]attern: string (only with --scan-directories)",
               help="pattern for filename matching (wildcards)"),
        _flag("--no-recurse", "-r", "do not recurse within directories (default)", "recurse", False),
        _flag("--recurse", "+r", "recurse within specified directories", "recurse", True),
        Group("processing options:"),
        Group("deflate compression level:", sub=True),
        Option(long="--compression-level", short="+cl", values=1, value_help="[l]evel: integer (default: 6)",
               help="0=uncompressed, 1=fastest, 9=best compression", kind="int", low=0, high=9),
        Group("other processing options:", sub=True),
        Option(long="--no-halt", short="-nh", help="do not halt on first invalid input file"),
        Option(long="--no-uid-checks", short="-nuc", help="do not check UID values of input files"),
        Group("network options:"),
        Group("application entity titles:", sub=True),
        Option(long="--aetitle", short="-aet", values=1, value_help="[a]etitle: string", help=f"set my calling AE title (default: {APPLICATIONTITLE})"),
        Option(long="--call", short="-aec", values=1, value_help="[a]etitle: string", help=f"set called AE title of peer (default: {PEERAPPLICATIONTITLE})"),
        Group("preferred transmission transfer syntaxes (incoming associations):", sub=True),
        _flag("--prefer-uncompr", "+x=", "prefer explicit VR local byte ordering (default)", "prefer", "local"),
        _flag("--prefer-little", "+xe", "prefer explicit VR little endian transfer syntax", "prefer", "little"),
        _flag("--prefer-big", "+xb", "prefer explicit VR big endian transfer syntax", "prefer", "big"),
        _flag("--prefer-deflated", "+xd", "prefer deflated explicit VR little endian transfer syntax", "prefer", "deflated"),
        _flag("--implicit", "+xi", "accept implicit VR little endian transfer syntax only", "prefer", "implicit"),
        Group("proposed transmission transfer syntaxes (outgoing associations):", sub=True),
        _flag("--propose-uncompr", "-x=", "propose all uncompressed transfer syntaxes,\nexplicit VR with local byte ordering first (default)", "propose", "local"),
        _flag("--propose-little", "-xe", "propose all uncompressed transfer syntaxes,\nexplicit VR little endian first", "propose", "little"),
        _flag("--propose-big", "-xb", "propose all uncompressed transfer syntaxes,\nexplicit VR big endian first", "propose", "big"),
        _flag("--propose-deflated", "-xd", "propose deflated explicit VR little endian transfer\nsyntax and all uncompressed transfer syntaxes", "propose", "deflated"),
        _flag("--propose-implicit", "-xi", "propose implicit VR little endian transfer syntax\nonly", "propose", "implicit"),
        Group("network host access control (tcp wrapper):", sub=True),
        _flag("--access-full", "-ac", "accept connections from any host (default)", "access_control", False),
        _flag("--access-control", "+ac", "enforce host access control rules", "access_control", True),
        Group("incoming network associations:", sub=True),
        Option(long="--no-port", help="no port for incoming associations (default)", dest="port", const=None),
        Option(long="--port", short="+P", values=1, value_help="[n]umber: integer", help="port number for incoming associations",
               dest="port", kind="int", low=1, high=65535),
        _flag("--wait-for-event", "", "wait for N-EVENT-REPORT request on the same\nassociation (default for \"client mode\")", "wait_event", True),
        _flag("--no-wait-for-event", "-nwe", "do not wait for N-EVENT-REPORT request on the same\nassociation (not in \"server mode\")", "wait_event", False),
        _flag("--role-reject", "", "reject presentation contexts in case of\nunsuccessful SCP/SCU role selection (default)", "role_reject", True),
        _flag("--no-role-reject", "-nrr", "do not reject presentation contexts in case of\nunsuccessful SCP/SCU role selection", "role_reject", False),
        Group("other network options:", sub=True),
        Option(long="--timeout", short="-to", values=1, value_help="[s]econds: integer (default: unlimited)", help="timeout for connection requests", kind="int", low=1),
        Option(long="--acse-timeout", short="-ta", values=1, value_help="[s]econds: integer (default: 30)", help="timeout for ACSE messages", kind="int", low=1),
        Option(long="--dimse-timeout", short="-td", values=1, value_help="[s]econds: integer (default: unlimited)", help="timeout for DIMSE messages", kind="int", low=1),
        Option(long="--event-timeout", short="-te", values=1, value_help="[s]econds: integer (default: same as for -td)",
               help="timeout for N-EVENT-REPORT request messages", kind="int", low=1),
        Option(long="--max-pdu", short="-pdu", values=1, value_help="[n]umber of bytes: integer (4096..131072)",
               help="set max receive pdu to n bytes (default: 16384)", kind="uint", low=4096, high=131072),
        Option(long="--max-send-pdu", values=1, value_help="[n]umber of bytes: integer (4096..131072)",
               help="restrict max send pdu to n bytes", kind="uint", low=4096, high=131072),
        Option(long="--disable-host-lookup", short="-dhl", help="disable hostname lookup"),
        Option(long="--abort", help="abort association instead of releasing it"),
        *tls.option_rows(tls.ACCEPTOR_REQUESTOR),
        Group("output options:"),
        Group("general:", sub=True),
        Option(long="--output-directory", short="-od", values=1, value_help="[d]irectory: string (default: \".\")",
               help="write message and report files to directory d"),
        _flag("--message-files", "", "create DICOM files for request (N-ACTION) and\nresponse (N-EVENT-REPORT) messages (default)", "message_files", True),
        _flag("--no-message-files", "-nmf", "do not create any DICOM message files", "message_files", False),
        Option(long="--transaction-uid-file", short="+tuf", values=1, value_help="[f]ilename: string", help="write transaction UID to text file f"),
        Option(long="--create-report-file", short="+crf", help="create a detailed report on each successful\ntransaction and write it to a text file"),
        Group("output transfer syntax:", sub=True),
        _flag("--write-xfer-local", "+t=", "write with explicit VR local byte ordering (default)", "write_xfer", "local"),
        _flag("--write-xfer-little", "+te", "write with explicit VR little endian transfer syntax", "write_xfer", EXPLICIT_LE),
        _flag("--write-xfer-big", "+tb", "write with explicit VR big endian transfer syntax", "write_xfer", EXPLICIT_BE),
        _flag("--write-xfer-implicit", "+ti", "write with implicit VR little endian transfer syntax", "write_xfer", IMPLICIT),
        _flag("--write-xfer-deflated", "+td", "write with deflated explicit VR little endian transfer syntax", "write_xfer", DEFLATED),
        Group("nodectl extensions:"),
        Option(long="--node", values=1, value_help="[c]onfig: string", help="use the commitment tracker of the running node\nconfigured by file c"),
        Option(long="--database", values=1, value_help="[f]ilename: string", help="transaction database of the in-process tracker\n(default: <od>/.stcomscu.sqlite)"),
    )
    return da.ToolSpec(
        name=name,
        description="Storage Commitment SCU",
        rcsid=f"$nodectl: {name} v{VERSION} (DCMTK 3.6.9 command line) $",
        params=(Param("peer", "hostname of DICOM peer", optional=True), Param("port", "tcp/ip port number of peer", optional=True),
                Param("dcmfile-in...", "DICOM file or directory to be committed (\"-\" for stdin)", optional=True)),
        table=table,
        host_info=(f"Host type: {platform.machine()}-{platform.system().lower()}",),
        eval_order=("aetitle", "call", "port", "timeout", "acse_timeout", "dimse_timeout", "event_timeout", "max_pdu"),
    )


SPEC = build_spec()


@dataclass(slots=True)
class Settings:
    """What the command line decided, with DCMTK's defaults."""

    peer: str | None = None
    port: int | None = None
    inputs: list[str] = field(default_factory=list)
    aet: str = APPLICATIONTITLE
    aec: str = PEERAPPLICATIONTITLE
    listen_port: int | None = None
    wait_event: bool = True
    role_reject: bool = True
    read_mode: str = "file-only"
    scan_dirs: bool = False
    pattern: str | None = None
    recurse: bool = False
    halt: bool = True
    uid_checks: bool = True
    prefer: str = "local"
    propose: str = "local"
    connect_timeout: int | None = None
    acse_timeout: int = 30
    dimse_timeout: int | None = None
    event_timeout: int | None = None
    max_pdu: int = 16384
    max_send_pdu: int | None = None
    abort: bool = False
    od: str = "."
    message_files: bool = True
    tuf: str | None = None
    report_file: bool = False
    write_xfer: str = "local"
    node: str | None = None
    database: str | None = None
    verbose_pc: bool = False
    tls_settings: tls.TlsSettings = field(default_factory=tls.TlsSettings)

    @property
    def mode(self) -> str:
        """client, server or combined (spec/stcomscu.md)."""
        if self.peer is None:
            return "server"
        return "combined" if self.listen_port is not None else "client"

    def wait_s(self) -> float:
        """How long to wait for the report on the N-ACTION association (``-te``, else ``-td``)."""
        value = self.event_timeout if self.event_timeout is not None else self.dimse_timeout
        return float(value) if value is not None else DEFAULT_WAIT_S


def settings_from(values: dict[str, Any], params: list[str]) -> Settings:
    return Settings(
        peer=params[0] if params else None,
        port=int(params[1]) if len(params) > 1 else None,
        inputs=list(params[2:]),
        aet=values.get("aetitle", APPLICATIONTITLE), aec=values.get("call", PEERAPPLICATIONTITLE),
        listen_port=values.get("port"), wait_event=values.get("wait_event", True), role_reject=values.get("role_reject", True),
        read_mode=values.get("read_mode", "file-only"), scan_dirs=bool(values.get("scan_directories")),
        pattern=values.get("scan_pattern"), recurse=bool(values.get("recurse", False)),
        halt=not values.get("no_halt"), uid_checks=not values.get("no_uid_checks"),
        prefer=values.get("prefer", "local"), propose=values.get("propose", "local"),
        connect_timeout=values.get("timeout"), acse_timeout=values.get("acse_timeout", 30),
        dimse_timeout=values.get("dimse_timeout"), event_timeout=values.get("event_timeout"),
        max_pdu=values.get("max_pdu", 16384), max_send_pdu=values.get("max_send_pdu"), abort=bool(values.get("abort")),
        od=values.get("output_directory", "."), message_files=values.get("message_files", True),
        tuf=values.get("transaction_uid_file"), report_file=bool(values.get("create_report_file")),
        write_xfer=values.get("write_xfer", "local"), node=values.get("node"), database=values.get("database"),
        verbose_pc=bool(values.get("verbose_pc")),
    )


# --------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    """``nodectl stcomscu``: the return value is the exit status."""
    return da.run_app(run, SPEC, sys.argv[1:] if argv is None else argv)


def parse(app: App, argv: list[str]) -> CommandLine:
    """DCMTK parsing with a variable number of ``dcmfile-in`` parameters."""
    wide = replace(SPEC, params=SPEC.params + tuple(Param("dcmfile-in...", optional=True) for _ in range(len(argv))))
    try:
        cmd = da.parse(wide, argv)
    except da.CommandLineError as exc:
        app.print_error(str(exc))
        raise AssertionError("unreachable")  # pragma: no cover
    if cmd.status == "no-arguments" or (cmd.status == "exclusive" and cmd.has("--help")):
        app.print_usage()
    if cmd.status == "exclusive":
        if cmd.has("--version"):
            app.stdout.write(da.header_text(SPEC, host_info=True) + f"\nExternal libraries used:\n- {tls.openssl_version()}\n")
            raise ToolExit(0)
        tls.list_and_exit(app, cmd)
    return cmd


def run(app: App, argv: list[str]) -> int:
    """Parse, check what can be checked offline, then run the chosen mode."""
    cmd = parse(app, argv)
    setup = da.configure_logging(app, cmd, logging.WARNING)
    values = app.evaluate(cmd, skip=da.LOGGING_DESTS)
    params = list(cmd.params)
    if len(params) == 1:
        app.print_error("Missing parameter port")
    if len(params) > 1:
        app.guard(da.param_number, params[1], low=1, high=65535)
    s = settings_from(values, params)
    if s.peer is None and s.listen_port is None:
        app.print_error("Missing parameter peer")
    if s.mode == "server" and not s.wait_event:
        app.print_error("--no-wait-for-event not allowed in server mode")
    app.check_dependence("--scan-pattern", "--scan-directories", s.pattern is None or s.scan_dirs)
    s.tls_settings = tls.check_options(app, cmd, values, tls.ACCEPTOR_REQUESTOR)
    loggers = (("pynetdicom", logging.DEBUG), ("actors", logging.INFO)) if setup.level <= logging.DEBUG else (("actors", logging.WARNING),)
    with da.log_handler(app, setup, *loggers) as log:
        log.debug(SPEC.rcsid + "\n")
        return Session(log, s).run(values)


# --------------------------------------------------------------------------- input


def collect_inputs(log: logging.Logger, s: Settings) -> list[tuple[str, str]]:
    """(SOP Class UID, SOP Instance UID) of every input; exits 21/22/23 as DCMTK does."""
    from pydicom import dcmread
    from pydicom.uid import UID

    refs: list[tuple[str, str]] = []
    bad = 0
    files = list(_expand(log, s))
    for name in files:
        try:
            source: Any = sys.stdin.buffer if name == "-" else name
            ds = dcmread(source, force=s.read_mode != "file-only", stop_before_pixels=True)
            found = _refs_of(ds)
            if s.uid_checks and not all(UID(c).is_valid and UID(i).is_valid for c, i in found):
                raise ValueError("invalid UID value")
            refs.extend(found)
            log.info("checking input file %s", name)
        except Exception as exc:  # unreadable or not DICOM: pydicom raises many types
            bad += 1
            if s.halt:
                log.error("invalid input file %s: %s", name, exc)
                raise ToolExit(EXIT_INVALID_INPUT_FILE)
            log.warning("ignoring invalid input file %s: %s", name, exc)
    if not files:
        log.error("no input files to be processed")
        raise ToolExit(EXIT_NO_INPUT_FILES)
    if not refs:
        log.error("no valid input files to be processed")
        raise ToolExit(EXIT_NO_VALID_INPUT_FILES if bad else EXIT_NO_INPUT_FILES)
    return list(dict.fromkeys(refs))


def _refs_of(ds: Any) -> list[tuple[str, str]]:
    """One instance, or the items of a request file (a dataset with a Referenced SOP Sequence)."""
    if "SOPInstanceUID" not in ds and "ReferencedSOPSequence" in ds:
        return [(str(item.ReferencedSOPClassUID), str(item.ReferencedSOPInstanceUID)) for item in ds.ReferencedSOPSequence]
    meta = getattr(ds, "file_meta", None)
    cls = ds.get("SOPClassUID") or (meta.get("MediaStorageSOPClassUID") if meta else None)
    inst = ds.get("SOPInstanceUID") or (meta.get("MediaStorageSOPInstanceUID") if meta else None)
    if not cls or not inst:
        raise ValueError("SOP Class UID or SOP Instance UID missing")
    return [(str(cls), str(inst))]


def _expand(log: logging.Logger, s: Settings) -> Iterator[str]:
    for arg in s.inputs:
        if arg != "-" and os.path.isdir(arg):
            if not s.scan_dirs:
                log.warning("ignoring directory because option --scan-directories is not set: %s", arg)
                continue
            yield from _scan(arg, s.pattern, s.recurse)
        else:
            yield arg


def _scan(directory: str, pattern: str | None, recurse: bool) -> Iterator[str]:
    for root, dirs, names in os.walk(directory):
        dirs.sort()
        for name in sorted(names):
            if pattern is None or fnmatch.fnmatch(name, pattern):
                yield os.path.join(root, name)
        if not recurse:
            return


# --------------------------------------------------------------------------- the session


class Session:
    """One run: a tracker (in process or a node's), the association, the files."""

    def __init__(self, log: logging.Logger, s: Settings) -> None:
        self.log = log
        self.s = s
        self.od = Path(s.od)
        self.node: Any = None
        self._database_was_there = True
        self._started_at = time.time()
        self.config: Any = None
        self.ctx: Any = None
        self.sub: Any = None
        self.client: Any = None
        self.tls_context: Any = None  # ssl.SSLContext for the N-ACTION association (+tls)
        self.listener: ReportListener | None = None
        self._tmp: str | None = None

    def run(self, values: dict[str, Any]) -> int:
        s = self.s
        if values.get("access_control"):
            self.log.error("host access control (TCP wrapper) is not supported")
            return EXIT_CANNOT_INITIALIZE_NETWORK
        if values.get("compression_level") not in (None, 6):
            # pydicom deflates at zlib's default level; another level cannot be honoured.
            self.log.error("--compression-level %s is not supported: deflated data sets use level 6", values["compression_level"])
            return 1
        if not self.od.is_dir() or not os.access(self.od, os.W_OK):
            self.log.error("invalid output directory: %s", self.od)
            return EXIT_INVALID_OUTPUT_DIRECTORY
        refs = collect_inputs(self.log, s) if s.mode != "server" else []
        try:
            tls.read_seed(self.log, s.tls_settings)
            if s.mode != "server":
                self.tls_context = tls.client_context(self.log, s.tls_settings)
            code = self._start_tracker()
            if code:
                return code
            if s.mode == "server":
                return self._serve_forever()
            return self._client(refs)
        except tls.TlsSetupError as exc:
            self.log.error("cannot create TLS transport layer: %s", exc)
            return EXIT_CANNOT_CREATE_TRANSPORT_LAYER
        except ToolExit as exc:
            return exc.code
        finally:
            self._stop()
            tls.write_seed(self.log, s.tls_settings)

    # ----- tracker and listener -----------------------------------------------------------

    def _start_tracker(self) -> int:
        import zmq

        from actors import commitment_io
        from node import config as configuration
        from node.errors import NodeError

        s = self.s
        if s.node:
            self.config = configuration.load(Path(s.node))
            if s.listen_port is not None:
                self.log.warning("--port ignored with --node: the node's listeners receive the reports")
            self.ctx = zmq.Context()
        else:
            if s.listen_port is not None and not _can_bind(s.listen_port):
                self.log.error("cannot listen on port %d", s.listen_port)
                return EXIT_CANNOT_START_SCP_AND_LISTEN
            self.config = replace(self._inproc_config(), listeners=())  # reports: our own listener below
            from actors import tracker
            from actors.inproc import InprocNode

            self.node = InprocNode(self.config, extra={"tracker": tracker.run})
            try:
                self._start_node()
            except NodeError as exc:
                self.log.error("cannot start SCP and listen: %s", exc)
                return EXIT_CANNOT_START_SCP_AND_LISTEN
            self.config = self.node.config
            self.ctx = self.node.ctx
        self.client = commitment_io.TrackerClient(self.config, self.ctx, "stcomscu")
        if not s.node and s.listen_port is not None:
            try:
                self.listener = self._start_listener(s.listen_port)
            except OSError as exc:
                self.log.error("cannot start SCP and listen: %s", exc)
                return EXIT_CANNOT_START_SCP_AND_LISTEN
        self.sub = self.ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.LINGER, 0)
        self.sub.connect(self.config.endpoint("events"))
        return 0

    def _start_listener(self, port: int) -> ReportListener:
        """Reports on a new association (server and combined mode): the engine's acceptor
        shell, TLS only with ``+tls`` (same key, trust store and profile as the client)."""
        s = self.s
        server_tls = self.config.tls
        context = server_context(server_tls) if server_tls.certificate else None
        policy = ul.AcceptorPolicy(
            contexts={VERIFICATION: tuple(self.config.services.verification_transfer_syntaxes),
                      SOP_CLASS: tuple(self.config.services.verification_transfer_syntaxes)},
            roles={SOP_CLASS: (True, True)}, max_pdu=s.max_pdu,
            implementation_class_uid=IMPLEMENTATION_CLASS_UID, implementation_version_name=IMPLEMENTATION_VERSION_NAME)
        return ReportListener(port, policy, self.client.ask, self.log, sop_class=SOP_CLASS, tls=context,
                              handshake_timeout=server_tls.handshake_timeout, role_reject=s.role_reject).start()

    def _start_node(self) -> None:
        """Start the in-process actors (without a listener in client mode)."""
        if self.config.listeners:
            self.node.start()
            return
        cfg, stop, ctx = self.node.config, self.node.stop_event, self.node.ctx
        cfg.run_dir.mkdir(parents=True, exist_ok=True)
        from actors import tracker

        ready = threading.Event()
        self.node._spawn("tracker", lambda: tracker.run(cfg, stop, ctx, ready))
        if not ready.wait(10):
            from node.errors import NodeError

            raise NodeError("tracker not ready")

    def _inproc_config(self) -> Any:
        from node.config import CommitmentConfig, ListenerConfig, NodeConfig, ServicesConfig, TlsConfig

        s = self.s
        self._tmp = tempfile.mkdtemp(prefix="stcomscu-")
        # +tls: the listener's workers do the server side with the same key, trust and profile
        accept_tls = s.tls_settings.secure and s.listen_port is not None
        server_tls = tls.server_config(self.log, s.tls_settings, Path(self._tmp) / "tls") if accept_tls else TlsConfig()
        database = s.database or str((self.od / ".stcomscu.sqlite").resolve())
        self._database_was_there = Path(database).exists()
        syntaxes = {"local": (EXPLICIT_LE, EXPLICIT_BE, IMPLICIT), "little": (EXPLICIT_LE, EXPLICIT_BE, IMPLICIT),
                    "big": (EXPLICIT_BE, EXPLICIT_LE, IMPLICIT), "deflated": (DEFLATED, EXPLICIT_LE, EXPLICIT_BE, IMPLICIT),
                    "implicit": (IMPLICIT,)}[s.prefer]
        return NodeConfig(
            aet=s.aet, directory=Path(self._tmp) / "store", database=database, workers=2, run_dir=Path(self._tmp),
            transport="inproc", listeners=(ListenerConfig(port=s.listen_port or 0, host="", aet="", tls=accept_tls),), tls=server_tls,
            services=ServicesConfig(storage=False, commitment_only=True, verification_transfer_syntaxes=syntaxes),
            commitment=CommitmentConfig(role_reject=s.role_reject, accept_unknown=True, same_association=False),
        )

    def _stop(self) -> None:
        if self.listener is not None:
            self.listener.stop()
        if self.sub is not None:
            self.sub.close(0)
        if self.node is not None:
            self.node.stop()
            self._remove_idle_database()
        elif self.ctx is not None:
            self.ctx.term()
        if self._tmp:
            import shutil

            shutil.rmtree(self._tmp, ignore_errors=True)

    def _remove_idle_database(self) -> None:
        """The default ``<od>/.stcomscu.sqlite`` stays only while a later run may need it (a
        transaction still waiting for its report); an output directory is the user's. One this
        run found there is left alone: a server-mode run may share it."""
        if self.s.database or self._database_was_there or self.node is None or self.node.config.transport != "inproc":
            return
        from node.transactions import TransactionStore

        database = Path(self.node.config.database)
        if not database.exists():
            return
        store = TransactionStore(str(database))
        try:
            unfinished = store.unfinished()
        finally:
            store.close()
        if unfinished == 0:
            for path in (database, Path(f"{database}-wal"), Path(f"{database}-shm")):
                path.unlink(missing_ok=True)

    # ----- client and combined ------------------------------------------------------------

    def _client(self, refs: list[tuple[str, str]]) -> int:
        from pydicom.uid import generate_uid

        from node import commitment as sc
        from node.messages import MarkRequested, RecordTransaction

        s = self.s
        uid = str(generate_uid())
        request = sc.Request(uid, tuple(sc.Ref(c, i) for c, i in refs))
        self.sub.setsockopt(__import__("zmq").SUBSCRIBE, uid.encode())
        timeout = (s.wait_s() if s.wait_event else 60.0) + (DEFAULT_WAIT_S if s.mode == "combined" or s.node else 0.0)
        self._ask(RecordTransaction(transaction_uid=uid, refs=sc.refs_to_wire(request.refs), local_aet=s.aet,
                                    peer_aet=s.aec, peer_host=s.peer or "", peer_port=s.port or 0, timeout=timeout))
        try:
            assoc = self._associate()
        except ToolExit:
            self._ask(MarkRequested(transaction_uid=uid, status=-1))  # never sent: refused, not pending
            raise
        status = self._n_action(assoc, request)
        ok = status == sc.STATUS_SUCCESS
        if ok and not s.wait_event:
            self._end(assoc)  # release at once: an SCP may try the report on this association
        self._ask(MarkRequested(transaction_uid=uid, status=status))
        self._write_request(request, ok)
        if not ok:
            self.log.error("N-ACTION failed: %s", "no response" if status < 0 else f"status 0x{status:04X}")
            self._end(assoc)
            return EXIT_CANNOT_SEND_REQUEST
        self.log.info("Received N-ACTION Response (Success)")
        self._write_tuf(uid)
        if not s.wait_event:
            self._end(assoc)
            return 0
        state = self._wait(uid, s.wait_s(), assoc=assoc)
        if state is None and (s.mode == "combined" or s.node):
            self.log.info("no N-EVENT-REPORT within %.0f s on the N-ACTION association: waiting for one on a new association", s.wait_s())
            self._end(assoc)
            state = self._wait(uid, DEFAULT_WAIT_S)
        self._end(assoc)
        if state is None:
            self.log.error("no N-EVENT-REPORT received for transaction %s", uid)
            return EXIT_CANNOT_WAIT_FOR_RESPONSE
        return self._write_outcome(uid, request)

    def _associate(self) -> Requestor:
        """The N-ACTION association, on the node's engine; its N-EVENT-REPORTs are answered
        while ``_wait`` waits (``_answer_report``)."""
        s = self.s
        contexts = [ul.ProposedContext(context_id=2 * i + 1, abstract_syntax=SOP_CLASS, transfer_syntaxes=syntaxes)
                    for i, syntaxes in enumerate(proposed_contexts(s.propose))]
        self.log.info("Requesting Association")
        timeouts = rq.Timeouts(connect=s.connect_timeout, acse=s.acse_timeout, dimse=s.dimse_timeout)
        try:
            request = rq.request(s.aec, s.aet, contexts, max_pdu=s.max_pdu)
            assoc = rq.associate(s.peer or "", s.port or 0, request, timeouts=timeouts, tls=self.tls_context,
                                 server_hostname=s.tls_settings.sni, send_cap=s.max_send_pdu or 0)
        except (rq.AssociationError, ValueError) as exc:
            self.log.error("Association Request Failed: %s", exc)
            raise ToolExit(EXIT_CANNOT_NEGOTIATE_ASSOCIATION) from None
        if assoc.context_for(SOP_CLASS) is None:
            self.log.error("Association Request Failed: %s", "no acceptable presentation context")
            self._end(assoc)
            raise ToolExit(EXIT_CANNOT_NEGOTIATE_ASSOCIATION)
        self.log.info("Association Accepted (Max Send PDV: %s)", assoc.engine.peer_max_pdu)
        if s.verbose_pc and assoc.accept is not None:
            proposed = {cx.context_id: cx for cx in contexts}
            for result in assoc.accept.contexts:
                cx = proposed[result.context_id]
                syntaxes = result.transfer_syntax if result.result == ul.ACCEPTANCE else ", ".join(cx.transfer_syntaxes)
                self.log.info("  Context ID %s (%s): %s, %s", result.context_id, CONTEXT_RESULTS.get(result.result, result.result),
                              cx.abstract_syntax, syntaxes)
        return assoc

    def _n_action(self, assoc: Requestor, request: Any) -> int:
        """Send the N-ACTION-RQ; its response status, or -1 when there was none."""
        from node import commitment as sc

        self.log.info("Sending Storage Commitment Request (N-ACTION-RQ), Transaction UID %s", request.transaction_uid)
        context = assoc.context_for(SOP_CLASS)
        assert context is not None
        ident = assoc.next_message_id()
        try:
            data = (encode_dataset(sc.request_dataset(request), DEFLATED) if context.transfer_syntax == DEFLATED
                    else sc.request_bytes(request, context.transfer_syntax))
            assoc.send(context.context_id, ul.NActionRQ(message_id=ident, requested_sop_class_uid=SOP_CLASS,
                                                        requested_sop_instance_uid=SOP_INSTANCE,
                                                        action_type_id=sc.ACTION_REQUEST_COMMITMENT), data)
            return int(assoc.wait_response(ident).message.status)  # type: ignore[union-attr]
        except (rq.AssociationError, ValueError) as exc:
            self.log.error("cannot send N-ACTION request: %s", exc)
            return -1

    def _answer_report(self, assoc: Requestor, received: rq.Received) -> None:
        """An N-EVENT-REPORT on the N-ACTION association: forward it to the tracker as a
        worker would, answer with the tracker's status (0x0110 when it gives none)."""
        from node import commitment as sc
        from node.messages import ErrorReply, ForwardReport, ReportAnswer

        message = received.message
        if not isinstance(message, ul.NEventReportRQ):  # nothing else is ours to perform here
            self.log.warning("unexpected %s on the N-ACTION association: aborting", type(message).__name__)
            assoc.abort()
            return
        context = assoc.contexts[received.context_id]
        status = sc.STATUS_PROCESSING_FAILURE
        forward = ForwardReport(event_type=message.event_type_id, sop_class_uid=message.affected_sop_class_uid,
                                sop_instance_uid=message.affected_sop_instance_uid, transfer_syntax=context.transfer_syntax,
                                calling_aet=self.s.aec, called_aet=self.s.aet, assoc_id="stcomscu")
        try:
            answer = self.client.ask(forward, [received.dataset] if received.dataset is not None else [])
        except TimeoutError as exc:
            self.log.error("N-EVENT-REPORT: tracker did not answer: %s", exc)
            answer = None
        if isinstance(answer, (ReportAnswer, ErrorReply)):
            status = answer.status
        self.log.info("Received N-EVENT-REPORT, answered with status 0x%04X", status)
        assoc.respond(received.context_id, ul.NEventReportRSP(
            message_id_being_responded_to=message.message_id, status=status, affected_sop_class_uid=message.affected_sop_class_uid,
            affected_sop_instance_uid=message.affected_sop_instance_uid, event_type_id=message.event_type_id))

    def _end(self, assoc: Requestor | None) -> None:
        if assoc is not None and assoc.established:
            if self.s.abort:
                self.log.info("Aborting Association")
                assoc.abort()
            else:
                self.log.info("Releasing Association")
                try:
                    assoc.release()
                except rq.AssociationError as exc:
                    self.log.warning("Association Release Failed: %s", exc)

    def _ask(self, message: Any) -> Any:
        try:
            return self.client.ask(message)
        except TimeoutError as exc:
            self.log.error("commitment tracker not answering: %s", exc)
            raise ToolExit(EXIT_CANNOT_INITIALIZE_NETWORK) from None

    def _wait(self, uid: str, seconds: float, *, assoc: Requestor | None = None) -> Any:
        """The transaction's final state, or None after ``seconds`` (or when the association
        dies). The tracker's events and the association's reports are waited on together."""
        import zmq

        from node.messages import QueryTransaction, TransactionState, unpack

        deadline = time.monotonic() + seconds
        next_query = 0.0
        poller = zmq.Poller()
        poller.register(self.sub, zmq.POLLIN)
        watching = assoc is not None and assoc.established
        if watching:
            poller.register(assoc.fileno(), zmq.POLLIN)  # type: ignore[union-attr]
        while time.monotonic() < deadline:
            ready = dict(poller.poll(0 if watching and assoc.buffered else int(POLL_S * 1000)))  # type: ignore[union-attr]
            if watching and (assoc.buffered or assoc.fileno() in ready):  # type: ignore[union-attr]
                watching = self._serve_association(assoc)  # type: ignore[arg-type]
                if not watching:
                    poller.unregister(assoc.fileno())  # type: ignore[union-attr]
                    if self.s.mode == "client":
                        self.log.error("association lost while waiting for the N-EVENT-REPORT")
                        return self._final_state(uid)
            if self.sub in ready:
                frames = self.sub.recv_multipart()
                state = unpack(frames[1:]).message
                if isinstance(state, TransactionState) and state.transaction_uid == uid and state.state in ("completed", "expired"):
                    return state if state.state == "completed" else None
            if time.monotonic() >= next_query:  # a missed wake-up (tracker restart) is found here
                next_query = time.monotonic() + QUERY_EVERY_S
                state = self._ask(QueryTransaction(transaction_uid=uid))
                if state.state == "completed":
                    return state
                if state.state == "expired":
                    return None
        return None

    def _serve_association(self, assoc: Requestor) -> bool:
        """Take what the peer sent on the N-ACTION association; False once it is over."""
        try:
            received = assoc.poll_request(POLL_S)
            if received is not None:
                self._answer_report(assoc, received)
        except rq.AssociationError as exc:
            self.log.info("N-ACTION association ended: %s", exc)
            return False
        return assoc.established

    def _final_state(self, uid: str) -> Any:
        """After the association died: completed if a report got through before it did."""
        from node.messages import QueryTransaction

        state = self._ask(QueryTransaction(transaction_uid=uid))
        return state if state.state == "completed" else None

    # ----- server mode --------------------------------------------------------------------

    def _serve_forever(self) -> int:
        import zmq

        from node.messages import TransactionState, unpack

        from node.transactions import TransactionStore

        self.sub.setsockopt(zmq.SUBSCRIBE, b"")
        port = self.listener.port if self.listener is not None else 0
        self.log.info("listening for N-EVENT-REPORTs on port %d", port)
        stop = threading.Event()
        _stop_on_signals(stop)
        # The listener takes reports from the moment it is up, before this subscription is in
        # place: a report completed in between publishes to nobody. So the database is asked
        # too, now and then, for transactions completed since we started, and each
        # transaction's files are written once, whichever way it is seen first.
        store = TransactionStore(self.config.database)
        written: set[str] = set()
        since, next_query = self._started_at, 0.0
        try:
            while not stop.is_set():
                completed: list[str] = []
                if self.sub.poll(int(POLL_S * 1000), zmq.POLLIN):
                    state = unpack(self.sub.recv_multipart()[1:]).message
                    if isinstance(state, TransactionState) and state.state == "completed":
                        completed.append(state.transaction_uid)
                elif time.monotonic() >= next_query:
                    now = time.time()
                    completed += [t.transaction_uid for t in store.ended_since(since) if t.state.value == "completed"]
                    since, next_query = now - QUERY_EVERY_S, time.monotonic() + QUERY_EVERY_S
                for uid in completed:
                    if uid not in written:
                        written.add(uid)
                        code = self._write_outcome(uid, None)
                        if code:
                            self.log.error("could not write the files of transaction %s (exit code %d)", uid, code)
        finally:
            store.close()
        return 0

    # ----- files --------------------------------------------------------------------------

    def _write_outcome(self, uid: str, request: Any) -> int:
        """Response file, report file and the abnormality check for a completed transaction."""
        from node import commitment as sc

        ds = self._report_dataset(uid)
        report = sc.parse_report(2 if "FailedSOPSequence" in ds else 1, SOP_CLASS, SOP_INSTANCE, ds)
        ok = report.event_type == sc.EVENT_ALL_COMMITTED
        self.log.info("Received N-EVENT-REPORT (event type %d) for transaction %s", report.event_type, uid)
        if request is not None:
            for level, text in sc.compare(request.refs, report):
                self.log.log(logging.ERROR if level == "error" else logging.WARNING, "%s", text)
        if self.s.message_files:
            path = self.od / f"{uid}.rsp.{'OK' if ok else 'ERR'}.dcm"
            if not self._save(ds, path):
                return EXIT_CANNOT_WRITE_RESPONSE_FILE
        if self.s.report_file:
            if not self._write_text(self.od / f"{uid}.report.txt", report_text(uid, request, report)):
                return EXIT_CANNOT_WRITE_REPORT_FILE
        return 0

    def _report_dataset(self, uid: str) -> Any:
        """The report as received (raw bytes kept by the tracker), else rebuilt from the database."""
        from node import commitment as sc
        from node.transactions import TransactionStore

        from node.messages import QueryTransaction
        from actors import bus as _bus

        sock = _bus.dealer(self.ctx, self.config.endpoint("tracker"))
        try:
            env = _bus.request(sock, QueryTransaction(transaction_uid=uid), sender="stcomscu", timeout=10.0)
        finally:
            sock.close(0)
        if env.data:
            return sc.decode(bytes(env.data[0]), env.message.report_ts or sc.ImplicitVRLittleEndian)
        store = TransactionStore(self.config.database)
        try:
            txn = store.get(uid)
            return sc.report_dataset(txn.report if txn and txn.report else sc.Report(uid, (), ()))
        finally:
            store.close()

    def _write_request(self, request: Any, ok: bool) -> None:
        from node import commitment as sc

        if self.s.message_files:
            path = self.od / f"{request.transaction_uid}.req.{'OK' if ok else 'ERR'}.dcm"
            if not self._save(sc.request_dataset(request), path):
                raise ToolExit(EXIT_CANNOT_WRITE_REQUEST_FILE)

    def _write_tuf(self, uid: str) -> None:
        if self.s.tuf and not self._write_text(Path(self.s.tuf), uid + "\n"):
            raise ToolExit(EXIT_CANNOT_WRITE_TRANSACTION_FILE)

    def _write_text(self, path: Path, text: str) -> bool:
        try:
            path.write_text(text)
            return True
        except OSError as exc:
            self.log.error("cannot write %s: %s", path, exc.strerror)
            return False

    def _save(self, ds: Any, path: Path) -> bool:
        """A message dataset as a DICOM file in the ``+t`` transfer syntax."""
        from pydicom.dataset import FileMetaDataset

        ts = {"local": EXPLICIT_LE if sys.byteorder == "little" else EXPLICIT_BE}.get(self.s.write_xfer, self.s.write_xfer)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = SOP_CLASS
        meta.MediaStorageSOPInstanceUID = SOP_INSTANCE
        meta.TransferSyntaxUID = ts
        ds.file_meta = meta
        try:
            ds.save_as(path, enforce_file_format=True)
            self.log.info("writing %s", path)
            return True
        except (OSError, ValueError) as exc:
            self.log.error("cannot write %s: %s", path, exc)
            return False


CONTEXT_RESULTS = {0: "Accepted", 1: "User Rejected", 2: "Provider Rejected", 3: "Abstract Syntax Not Supported",
                   4: "Transfer Syntax(es) Not Supported"}


def encode_dataset(ds: Any, transfer_syntax: str) -> bytes:
    """A request dataset in the context's transfer syntax; deflated is explicit little endian
    through raw deflate (PS3.5 A.5)."""
    import zlib

    from node import commitment as sc

    if transfer_syntax != DEFLATED:
        return sc.encode(ds, transfer_syntax)
    compressor = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    return compressor.compress(sc.encode(ds, EXPLICIT_LE)) + compressor.flush()


def proposed_contexts(propose: str) -> list[tuple[str, ...]]:
    """DCMTK's two contexts: the preferred syntax, then the other uncompressed ones."""
    local = EXPLICIT_LE if sys.byteorder == "little" else EXPLICIT_BE
    other = EXPLICIT_BE if local == EXPLICIT_LE else EXPLICIT_LE
    if propose == "implicit":
        return [(IMPLICIT,)]
    first = {"local": local, "little": EXPLICIT_LE, "big": EXPLICIT_BE, "deflated": DEFLATED}[propose]
    rest = tuple(ts for ts in (local, other, IMPLICIT) if ts != first)
    return [(first,), rest]


def report_text(uid: str, request: Any, report: Any) -> str:
    """The ``+crf`` report (layout a nodectl convention)."""
    from node import commitment as sc

    lines = ["Storage Commitment Report", f"Transaction UID: {uid}",
             f"Event Type ID: {report.event_type} ({'all committed' if report.event_type == 1 else 'failures exist'})"]
    if request is not None:
        lines.append(f"Requested instances: {len(request.refs)}")
    lines.append(f"Committed instances: {len(report.committed)}")
    lines += [f"  {r.sop_class_uid} {r.sop_instance_uid}" for r in report.committed]
    lines.append(f"Failed instances: {len(report.failed)}")
    lines += [f"  {f.sop_class_uid} {f.sop_instance_uid} 0x{f.reason:04X} {sc.reason_text(f.reason)}" for f in report.failed]
    return "\n".join(lines) + "\n"


def _can_bind(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("", port))
            return True
        except OSError:
            return False


def _stop_on_signals(stop: threading.Event) -> None:
    import signal

    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
