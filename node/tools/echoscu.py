"""``nodectl echoscu``: DCMTK's echoscu (Verification SCU), option for option.

CLI form::

    nodectl echoscu [options] peer port

Scripts written for DCMTK's ``echoscu`` must keep working, so this module keeps its option
spellings (DCMTK 3.7.0's set, see ``spec/echoscu.md``), defaults, log lines (``I: Requesting
Association`` ...) and exit codes: 0 on success, also when the C-ECHO status is not Success
or the peer aborts during the echoes; 1 for syntax errors and every association failure;
70 when a DIMSE failure (e.g. ``-td`` expired) made us abort; 22 when the offline certificate
checks ``+vc``/``+rc`` fail. 20, 40 and 60 are declared by DCMTK but never used, here too.

pynetdicom is the SCU engine (``AE.associate``, ``send_c_echo``), imported inside functions;
TLS is Python's ``ssl`` module (profiles mapped to protocol versions and cipher lists, CA
files and CRLs loaded into the context; the offline checks ``+vc``/``+rc`` use the
``cryptography`` package). Anything we cannot honour exits with a message and status 1
instead of being ignored.
"""

from __future__ import annotations

import logging
import os
import platform
import re
import socket
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

from node.tools import dcmtk_args as da
from node.tools.dcmtk_args import App, CommandLine, Group, Option, Param, ToolExit

VERSION = "0.1.0"
VERIFICATION = "1.2.840.10008.1.1"
APPLICATIONTITLE = "ECHOSCU"
PEERAPPLICATIONTITLE = "ANY-SCP"
ASC_DEFAULTMAXPDU = 16384
ASC_MINIMUMPDUSIZE = 4096
ASC_MAXIMUMPDUSIZE = 131072
EXITCODE_INVALID_INPUT_FILE = 22
EXITCODE_ASSOCIATION_ABORTED = 70

_J = "1.2.840.10008.1.2.4."
# The code's list (DCMTK 3.7.0 echoscu.cc), not the manual's: entry 4 is .1.98, 25 is .8.1,
# 51-53 are JPEG XL. ``-pts n`` proposes the first n in every context.
TRANSFER_SYNTAXES: tuple[str, ...] = (
    "1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.98",
    *(f"{_J}{n}" for n in range(50, 67)),
    f"{_J}70", "1.2.840.10008.1.2.5", "1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.8.1",
    *(f"{_J}{n}" for n in ("80", "81", "90", "91", "92", "93")),
    *(f"{_J}{n}" for n in range(100, 109)),
    *(f"{_J}{n}.1" for n in range(100, 107)),
    f"{_J}201", f"{_J}202", f"{_J}203", f"{_J}110", f"{_J}111", f"{_J}112",
)

# DCMTK condition texts we reproduce (module:code text), verified against DCMTK 3.6.7.
COND_UNKNOWN_HOST = "0006:0320 Attempt to connect to unknown host: {host}"
COND_TCP_INIT = "0006:031c TCP Initialization Error: {text}"
COND_PEER_ABORTED = "0006:0317 Peer aborted Association (or never connected)"
COND_READ_TIMEOUT = "0006:031a DUL network read timeout"
COND_DIMSE_TIMEOUT = "0006:0207 DIMSE No data available (timeout in non-blocking mode)"

REJECT_RESULTS = {1: "Rejected Permanent", 2: "Rejected Transient"}
REJECT_SOURCES = {1: "Service User", 2: "Service Provider (ACSE Related)",
                  3: "Service Provider (Presentation Related)"}
REJECT_REASONS = {(1, 1): "No Reason", (1, 2): "App Context Name Not Supported",
                  (1, 3): "Calling AE Title Not Recognized", (1, 7): "Called AE Title Not Recognized",
                  (2, 1): "No Reason", (2, 2): "Protocol Version Not Supported",
                  (3, 1): "Temporary Congestion", (3, 2): "Local Limit Exceeded"}


# --------------------------------------------------------------------------- declaration


def tls_rows() -> tuple[Option | Group, ...]:
    """The TLS option table of DCMTK 3.7.0 (``DcmTLSOptions::addTLSCommandlineOptions``)."""
    tlsopt = "transport layer security (TLS) options:"
    return (
        Group(tlsopt),
        Group("transport protocol stack:", sub=True),
        Option(long="--disable-tls", short="-tls", help="use normal TCP/IP connection (default)", dest="tls", const=False),
        Option(long="--enable-tls", short="+tls", values=2, value_help="[p]rivate key file, [c]ertificate file: string",
               help="use authenticated secure TLS connection", dest="tls"),
        Option(long="--anonymous-tls", short="+tla", help="use secure TLS connection without certificate",
               dest="tls", const="anonymous"),
        Group("private key password (only with --enable-tls):", sub=True),
        Option(long="--std-passwd", short="+ps", help="prompt user to type password on stdin (default)",
               dest="passwd", const=None),
        Option(long="--use-passwd", short="+pw", values=1, value_help="[p]assword: string ",
               help="use specified password", dest="passwd"),
        Option(long="--null-passwd", short="-pw", help="use empty string as password", dest="passwd", const=""),
        Group("key and certificate file format:", sub=True),
        Option(long="--pem-keys", short="-pem", help="read keys and certificates as PEM file (default)",
               dest="key_format", const="pem"),
        Option(long="--der-keys", short="-der", help="read keys and certificates as DER file",
               dest="key_format", const="der"),
        Group("certification authority:", sub=True),
        Option(long="--add-cert-file", short="+cf", values=1, value_help="[f]ilename: string",
               help="add certificate file to list of certificates", multi=True),
        Option(long="--add-cert-dir", short="+cd", values=1, value_help="[d]irectory: string",
               help="add certificates in d to list of certificates", multi=True),
        Option(long="--add-crl-file", short="+crl", values=1, value_help="[f]ilename: string",
               help="add certificate revocation list file\n(implies --enable-crl-vfy)", multi=True),
        Option(long="--enable-crl-vfy", short="+crv", help="enable leaf CRL verification"),
        Option(long="--enable-crl-all", short="+cra", help="enable full chain CRL verification"),
        Group("security profile:", sub=True),
        Option(long="--list-profiles", short="+ph", help="list supported TLS profiles and exit", exclusive=True),
        Option(long="--profile-8996", short="+pg", help="BCP 195 RFC 8996 TLS Profile (default)",
               dest="tls_profile", const="8996"),
        Option(long="--profile-8996-mod", short="+pm", help="Modified BCP 195 RFC 8996 TLS Profile",
               dest="tls_profile", const="8996-mod"),
        Option(long="--profile-bcp195-nd", short="+py", help="Non-downgrading BCP 195 TLS Profile (retired)",
               dest="tls_profile", const="bcp195-nd"),
        Option(long="--profile-bcp195", short="+px", help="BCP 195 TLS Profile (retired)",
               dest="tls_profile", const="bcp195"),
        Option(long="--profile-bcp195-ex", short="+pz", help="Extended BCP 195 TLS Profile (retired)",
               dest="tls_profile", const="bcp195-ex"),
        Option(long="--profile-basic", short="+pb", help="Basic TLS Secure Transport Connection Profile\n(retired)",
               dest="tls_profile", const="basic"),
        Option(long="--profile-aes", short="+pa", help="AES TLS Secure Transport Connection Profile\n(retired)",
               dest="tls_profile", const="aes"),
        Option(long="--profile-null", short="+pn",
               help="Authenticated unencrypted communication\n(retired, was used in IHE ATNA)",
               dest="tls_profile", const="null"),
        Group("ciphersuite:", sub=True),
        Option(long="--list-ciphers", short="+cc", help="list supported TLS ciphersuites and exit", exclusive=True),
        Option(long="--cipher", short="+cs", values=1, value_help="[c]iphersuite name: string",
               help="add ciphersuite to list of negotiated suites\n(not with --profile-bcp195-ex)", multi=True),
        Group("server name indication:", sub=True),
        Option(long="--no-sni", help="do not use SNI (default)", dest="sni", const=None),
        Option(long="--request-sni", values=1, value_help="[s]erver name: string", help="request server name s",
               dest="sni"),
        Group("pseudo random generator:", sub=True),
        Option(long="--seed", short="+rs", values=1, value_help="[f]ilename: string",
               help="seed random generator with contents of f"),
        Option(long="--write-seed", short="+ws", help="write back modified seed (only with --seed)",
               dest="write_seed", const=True),
        Option(long="--write-seed-file", short="+wf", values=1, value_help="[f]ilename: string (only with --seed)",
               help="write modified seed to file f", dest="write_seed"),
        Group("peer authentication:", sub=True),
        Option(long="--require-peer-cert", short="-rc", help="verify peer certificate, fail if absent (default)",
               dest="peer_cert", const="require"),
        Option(long="--ignore-peer-cert", short="-ic", help="don't verify peer certificate",
               dest="peer_cert", const="ignore"),
        Group("offline certificate verification:", sub=True),
        Option(long="--verify-cert", short="+vc", values=1, value_help="[f]ilename: string",
               help="verify certificate against CA settings", exclusive=True),
        Option(long="--is-root-cert", short="+rc", values=1, value_help="[f]ilename: string",
               help="check if certificate is self-signed root CA", exclusive=True),
    )


def build_spec(name: str = "echoscu", *, port_optional: bool = False, port_help: str = "tcp/ip port number of peer",
               description: str = "DICOM verification (C-ECHO) SCU") -> da.ToolSpec:
    """The declarative option table; ``nodectl echo`` reuses it with an optional port."""
    n = len(TRANSFER_SYNTAXES)
    table: tuple[Option | Group, ...] = (
        *da.general_options(),
        Group("network options:"),
        Group("IP protocol version:", sub=True),
        Option(long="--ipv4", short="-i4", help="use IPv4 only (default)", dest="ip", const="ipv4"),
        Option(long="--ipv6", short="-i6", help="use IPv6 only", dest="ip", const="ipv6"),
        Option(long="--ip-auto", short="-i0", help="use DNS lookup to determine IP protocol", dest="ip", const="auto"),
        Group("application entity titles:", sub=True),
        Option(long="--aetitle", short="-aet", values=1, value_help="[a]etitle: string",
               help=f"set my calling AE title (default: {APPLICATIONTITLE})"),
        Option(long="--call", short="-aec", values=1, value_help="[a]etitle: string",
               help=f"set called AE title of peer (default: {PEERAPPLICATIONTITLE})"),
        Group("association negotiation debugging:", sub=True),
        Option(long="--propose-ts", short="-pts", values=1, value_help=f"[n]umber: integer (1..{n})",
               help="propose n transfer syntaxes", kind="uint", low=1, high=n),
        Option(long="--propose-pc", short="-ppc", values=1, value_help="[n]umber: integer (1..128)",
               help="propose n presentation contexts", kind="uint", low=1, high=128),
        Group("other network options:", sub=True),
        Option(long="--timeout", short="-to", values=1, value_help="[s]econds: integer (default: unlimited)",
               help="timeout for connection requests", kind="int", low=1),
        Option(long="--socket-timeout", short="-ts", values=1, value_help="[s]econds: integer (default: 60)",
               help="timeout for network socket (0 for none)", kind="int", low=-1),
        Option(long="--acse-timeout", short="-ta", values=1, value_help="[s]econds: integer (default: 30)",
               help="timeout for ACSE messages", kind="int", low=1),
        Option(long="--dimse-timeout", short="-td", values=1, value_help="[s]econds: integer (default: unlimited)",
               help="timeout for DIMSE messages", kind="int", low=1),
        Option(long="--max-pdu", short="-pdu", values=1,
               value_help=f"[n]umber of bytes: integer ({ASC_MINIMUMPDUSIZE}..{ASC_MAXIMUMPDUSIZE})",
               help=f"set max receive pdu to n bytes (default: {ASC_DEFAULTMAXPDU})",
               kind="uint", low=ASC_MINIMUMPDUSIZE, high=ASC_MAXIMUMPDUSIZE),
        Option(long="--repeat", values=1, value_help="[n]umber: integer", help="repeat n times", kind="uint", low=1),
        Option(long="--abort", help="abort association instead of releasing it"),
        *tls_rows(),
    )
    return da.ToolSpec(
        name=name,
        description=description,
        rcsid=f"$nodectl: {name} v{VERSION} (DCMTK 3.7.0 command line) $",
        params=(Param("peer", "hostname of DICOM peer"), Param("port", port_help, optional=port_optional)),
        table=table,
        host_info=(f"Host type: {platform.machine()}-{platform.system().lower()}",
                   f"Character encoding: {sys.getfilesystemencoding()}",
                   f"Build options: python{platform.python_version()}"),
        eval_order=("aetitle", "call", "timeout", "socket_timeout", "acse_timeout", "dimse_timeout",
                    "max_pdu", "repeat", "abort", "propose_ts", "propose_pc"),
    )


SPEC = build_spec()


# --------------------------------------------------------------------------- settings


@dataclass(slots=True)
class Settings:
    """Everything the command line decided, with DCMTK's defaults."""

    peer: str = "localhost"
    port: int = 104
    aet: str = APPLICATIONTITLE
    aec: str = PEERAPPLICATIONTITLE
    ip: str = "ipv4"
    connect_timeout: int | None = None
    socket_timeout: int = 60
    acse_timeout: int = 30
    dimse_timeout: int | None = None
    max_pdu: int = ASC_DEFAULTMAXPDU
    repeat: int = 1
    abort: bool = False
    n_syntaxes: int = 1
    n_contexts: int = 1


def settings_from(values: dict[str, Any], peer: str, port: int) -> Settings:
    """Map the evaluated option values onto :class:`Settings`."""
    return Settings(
        peer=peer, port=port,
        aet=values.get("aetitle", APPLICATIONTITLE), aec=values.get("call", PEERAPPLICATIONTITLE),
        ip=values.get("ip", "ipv4"),
        connect_timeout=values.get("timeout"), socket_timeout=values.get("socket_timeout", 60),
        acse_timeout=values.get("acse_timeout", 30), dimse_timeout=values.get("dimse_timeout"),
        max_pdu=values.get("max_pdu", ASC_DEFAULTMAXPDU), repeat=values.get("repeat", 1),
        abort=bool(values.get("abort", False)),
        n_syntaxes=values.get("propose_ts", 1), n_contexts=values.get("propose_pc", 1),
    )


# --------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    """``nodectl echoscu``: the return value is the exit status."""
    return da.run_app(run, SPEC, sys.argv[1:] if argv is None else argv)


def run(app: App, argv: list[str], *, default_level: int = logging.WARNING, default_port: int = 104) -> int:
    """Parse like DCMTK, then either answer an exclusive option or C-ECHO the peer."""
    cmd = app.parse(argv)
    if cmd.status == "exclusive":
        _exclusive_info(app, cmd)
    offline = cmd.has("--verify-cert") or cmd.has("--is-root-cert")
    peer, port = "localhost", default_port
    if not offline:
        peer = cmd.params[0]
        if len(cmd.params) > 1:
            port = app.guard(da.param_number, cmd.params[1], low=1, high=65535)
    setup = da.configure_logging(app, cmd, default_level)
    values = app.evaluate(cmd, skip=da.LOGGING_DESTS)
    tls_settings = check_tls_options(app, cmd, values)
    settings = settings_from(values, peer, port)
    with da.log_handler(app, setup, *_library_loggers(setup)) as log:
        log.debug(app.spec.rcsid + "\n")
        context = create_context(log, tls_settings)
        if offline:
            return offline_check(app, log, cmd, tls_settings)
        try:
            return echo_peer(log, settings, context, tls_settings.sni)
        finally:
            write_seed(log, tls_settings)


def _library_loggers(setup: da.LogSetup) -> tuple[tuple[str, int], ...]:
    """pynetdicom's own log lines are shown only in debug mode (DCMTK's library debug output)."""
    return (("pynetdicom", logging.DEBUG),) if setup.level <= logging.DEBUG else ()


def _exclusive_info(app: App, cmd: CommandLine) -> None:
    """``--version``, ``+cc`` and ``+ph`` print and exit 0; ``-h`` was handled by the parser."""
    if cmd.has("--version"):
        out = da.header_text(app.spec, host_info=True) + "\nExternal libraries used:\n"
        for dist in ("pynetdicom", "pydicom"):
            out += f"- {dist}, Version {_dist_version(dist)}\n"
        app.stdout.write(out + f"- {openssl_version()}\n")
        raise ToolExit(0)
    if cmd.has("--list-ciphers"):
        app.stdout.write(da.header_text(app.spec, host_info=True) + "\nSupported TLS ciphersuites are:\n"
                         + "".join(f"  {name}\n" for name in supported_ciphersuites()))
        raise ToolExit(0)
    if cmd.has("--list-profiles"):
        app.stdout.write(da.header_text(app.spec, host_info=True) + "\nSupported TLS profiles are:\n"
                         + "".join(f"  {name}\n" for name in supported_profiles()))
        raise ToolExit(0)


def _dist_version(dist: str) -> str:
    """An installed distribution's version, without importing it."""
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


# --------------------------------------------------------------------------- network


def resolve(log: logging.Logger, host: str, port: int, ip: str) -> str:
    """Resolve ``host`` for ``-i4``/``-i6``/``-i0``; an unknown host is DCMTK's 0006:0320, exit 1."""
    family = {"ipv4": socket.AF_INET, "ipv6": socket.AF_INET6}.get(ip, socket.AF_UNSPEC)
    try:
        infos = socket.getaddrinfo(host, port, family, socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        infos = []
    if not infos:
        log.info("Requesting Association")
        log.critical("Association Request Failed: " + COND_UNKNOWN_HOST.format(host=host))
        raise ToolExit(1)
    return str(infos[0][4][0])


def build_contexts(n_contexts: int, n_syntaxes: int) -> list[Any]:
    """``-ppc`` identical Verification contexts, each with the first ``-pts`` transfer syntaxes."""
    from pydicom.uid import UID
    from pynetdicom.presentation import PresentationContext

    syntaxes = TRANSFER_SYNTAXES[:n_syntaxes]
    unknown = [uid for uid in syntaxes if not UID(uid).is_transfer_syntax]
    if unknown:  # guard for an older pydicom: say so instead of proposing less
        raise ValueError(f"transfer syntax {unknown[0]} is unknown to pydicom and cannot be proposed")
    contexts = []
    for _ in range(n_contexts):
        cx = PresentationContext()
        cx.abstract_syntax = VERIFICATION
        cx.transfer_syntax = list(syntaxes)
        contexts.append(cx)
    return contexts


def dump_request(s: Settings, contexts: list[Any]) -> str:
    """``Request Parameters:`` in the layout of DCMTK's A-ASSOCIATE-RQ dump (UIDs numeric)."""
    lines = ["Request Parameters:", "====================== BEGIN A-ASSOCIATE-RQ =====================",
             "Application Context Name:    1.2.840.10008.3.1.1.1",
             f"Calling Application Name:    {s.aet}", f"Called Application Name:     {s.aec}",
             f"Our Max PDU Receive Size:    {s.max_pdu}", "Presentation Contexts:"]
    for i, cx in enumerate(contexts):
        lines += [f"  Context ID:        {2 * i + 1} (Proposed)", f"    Abstract Syntax: {VERIFICATION}",
                  "    Proposed SCP/SCU Role: Default", "    Proposed Transfer Syntax(es):"]
        lines += [f"      {uid}" for uid in cx.transfer_syntax]
    lines.append("======================= END A-ASSOCIATE-RQ ======================")
    return "\n".join(lines)


class _TransportLog(logging.Handler):
    """Keeps pynetdicom's connection error texts: it logs them instead of raising."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@dataclass(slots=True)
class _Acse:
    """ACSE primitives seen on this association, to tell a peer abort from our own."""

    received: list[str] = field(default_factory=list)
    sent: list[str] = field(default_factory=list)

    def handlers(self) -> list[Any]:
        """pynetdicom event bindings that record primitive class names."""
        from pynetdicom import evt

        return [(evt.EVT_ACSE_RECV, lambda e: self.received.append(type(e.primitive).__name__)),
                (evt.EVT_ACSE_SENT, lambda e: self.sent.append(type(e.primitive).__name__))]


def echo_peer(log: logging.Logger, s: Settings, tls_context: Any, sni: str | None) -> int:
    """Associate, send ``--repeat`` C-ECHOs, release or abort: DCMTK's main flow and exit codes."""
    addr = resolve(log, s.peer, s.port, s.ip)
    try:
        contexts = build_contexts(s.n_contexts, s.n_syntaxes)
    except ValueError as exc:
        log.critical(str(exc))
        return 1
    log.debug(dump_request(s, contexts))
    log.info("Requesting Association")
    acse = _Acse()
    assoc = _request(log, s, addr, contexts, tls_context, sni, acse)
    log.debug("Association Parameters Negotiated:\n" + _dump_accepted(assoc))
    peer_max = int(assoc.acceptor.maximum_length or 0)
    log.info(f"Association Accepted (Max Send PDV: {peer_max - 12 if peer_max else ASC_MAXIMUMPDUSIZE - 12})")
    outcome = _echo_loop(log, assoc, s.repeat, acse, s.dimse_timeout)
    return _finish(log, assoc, outcome, s.abort)


def _request(log: logging.Logger, s: Settings, addr: str, contexts: list[Any], tls_context: Any,
             sni: str | None, acse: _Acse) -> Any:
    """``ASC_requestAssociation`` with pynetdicom; every failure logs DCMTK's text and exits 1."""
    from pynetdicom import AE

    ae = AE(ae_title=s.aet[:16])
    ae.acse_timeout = s.acse_timeout
    ae.dimse_timeout = s.dimse_timeout
    ae.network_timeout = s.socket_timeout if s.socket_timeout > 0 else None
    ae.connection_timeout = s.connect_timeout
    capture = _TransportLog()
    transport_logger = logging.getLogger("pynetdicom")
    transport_logger.addHandler(capture)
    try:
        assoc = ae.associate(addr, s.port, contexts=contexts, ae_title=s.aec[:16], max_pdu=s.max_pdu,
                             tls_args=(tls_context, sni) if tls_context is not None else None,
                             evt_handlers=acse.handlers())
    except ValueError as exc:  # AE title pynetdicom refuses (empty, backslash, control characters)
        log.critical(f"Association Request Failed: {exc}")
        raise ToolExit(1) from None
    finally:
        transport_logger.removeHandler(capture)
    if assoc.is_established:
        return assoc
    _log_request_failure(log, assoc, capture.messages, acse)
    raise ToolExit(1)


def _log_request_failure(log: logging.Logger, assoc: Any, messages: list[str], acse: _Acse) -> None:
    """Rejection, no acceptable context, or why the request failed, worded like DCMTK."""
    rsp = assoc.acceptor.primitive
    if assoc.is_rejected and rsp is not None:
        result = REJECT_RESULTS.get(rsp.result, "UNKNOWN")
        source = REJECT_SOURCES.get(rsp.result_source, "UNKNOWN")
        reason = REJECT_REASONS.get((rsp.result_source, rsp.diagnostic), "UNKNOWN")
        log.critical(f"Association Rejected:\nResult: {result}, Source: {source}\nReason: {reason}")
        return
    if rsp is not None and getattr(rsp, "result", None) == 0:
        log.critical("No Acceptable Presentation Contexts")
        return
    tcp = [m.split(":", 1)[1].strip() for m in messages if m.startswith("TCP Initialisation Error")]
    if tcp:
        text = tcp[0].split("] ", 1)[1] if tcp[0].startswith("[Errno") else tcp[0]
        if text == "timed out":
            text = "Connection timed out"
        log.critical("Association Request Failed: " + COND_TCP_INIT.format(text=text))
    elif any(m.startswith("ACSE timeout") for m in messages):
        log.critical("Association Request Failed: " + COND_READ_TIMEOUT)
    else:
        log.critical("Association Request Failed: " + COND_PEER_ABORTED)


def _dump_accepted(assoc: Any) -> str:
    """The negotiated contexts, one line each: ID, result, transfer syntax."""
    lines = []
    for cx in assoc.accepted_contexts + assoc.rejected_contexts:
        state = "Accepted" if cx.result == 0 else f"Refused ({cx.result})"
        lines.append(f"  Context ID:        {cx.context_id} ({state}) {cx.transfer_syntax[0] if cx.result == 0 else ''}")
    return "\n".join(lines)


def _status_text(status: int) -> str:
    """``DU_cechoStatusString``."""
    return "Success" if status == 0 else f"Unknown Status: 0x{status:x}"


def _echo_loop(log: logging.Logger, assoc: Any, repeat: int, acse: _Acse, dimse_timeout: int | None) -> str:
    """Send C-ECHOs with MsgIDs 1, 2, ...; stop at the first DIMSE failure.

    Returns "ok", "peer-aborted" or "failed" (DIMSE timeout or anything else we could not
    read a status from).
    """
    for msg_id in range(1, repeat + 1):
        log.info(f"Sending Echo Request (MsgID {msg_id})")
        status = assoc.send_c_echo(msg_id=msg_id)
        if "Status" in status:
            log.info(f"Received Echo Response ({_status_text(int(status.Status))})")
            continue
        return _why_no_response(log, assoc, acse, dimse_timeout)
    return "ok"


def _why_no_response(log: logging.Logger, assoc: Any, acse: _Acse, dimse_timeout: int | None) -> str:
    """After an empty response: did the peer abort (exit 0) or did DIMSE fail (exit 70)?"""
    deadline = time.monotonic() + 2.0
    while assoc.is_alive() and time.monotonic() < deadline:  # let the reactor record the abort
        assoc.join(timeout=0.05)
    peer_abort = any(name in ("A_ABORT", "A_P_ABORT") for name in acse.received)
    if peer_abort and "A_ABORT" not in acse.sent:
        return "peer-aborted"
    cond = COND_DIMSE_TIMEOUT if dimse_timeout else "no response received"
    log.error(f"Echo Failed: {cond}")
    log.error(f"Echo SCU Failed: {cond}")
    return "failed"


def _finish(log: logging.Logger, assoc: Any, outcome: str, abort: bool) -> int:
    """Release or abort like DCMTK's tear-down switch; returns the exit status."""
    if outcome == "peer-aborted":
        log.info("Peer Aborted Association")
        return 0
    if outcome == "failed":
        log.info("Aborting Association")
        assoc.abort()
        return EXITCODE_ASSOCIATION_ABORTED
    if abort:
        log.info("Aborting Association")
        assoc.abort()
        return 0
    log.info("Releasing Association")
    assoc.release()
    if not assoc.is_released:
        log.critical("Association Release Failed: " + COND_PEER_ABORTED)
        return 1
    return 0


# --------------------------------------------------------------------------- TLS

# DCMTK's ciphersuite table (tlsciphr.cc), weakest first: TLS name -> OpenSSL name.
CIPHERSUITES: tuple[tuple[str, str], ...] = (
    ("TLS_RSA_WITH_NULL_SHA", "NULL-SHA"),
    ("TLS_RSA_WITH_3DES_EDE_CBC_SHA", "DES-CBC3-SHA"),
    ("TLS_RSA_WITH_AES_128_CBC_SHA", "AES128-SHA"),
    ("TLS_RSA_WITH_CAMELLIA_128_CBC_SHA", "CAMELLIA128-SHA"),
    ("TLS_RSA_WITH_AES_128_CBC_SHA256", "AES128-SHA256"),
    ("TLS_RSA_WITH_AES_128_GCM_SHA256", "AES128-GCM-SHA256"),
    ("TLS_ECDH_ECDSA_WITH_AES_128_CBC_SHA", "ECDH-ECDSA-AES128-SHA"),
    ("TLS_ECDH_RSA_WITH_AES_128_CBC_SHA", "ECDH-RSA-AES128-SHA"),
    ("TLS_ECDH_ECDSA_WITH_AES_128_CBC_SHA256", "ECDH-ECDSA-AES128-SHA256"),
    ("TLS_ECDH_RSA_WITH_AES_128_CBC_SHA256", "ECDH-RSA-AES128-SHA256"),
    ("TLS_ECDH_ECDSA_WITH_AES_128_GCM_SHA256", "ECDH-ECDSA-AES128-GCM-SHA256"),
    ("TLS_ECDH_RSA_WITH_AES_128_GCM_SHA256", "ECDH-RSA-AES128-GCM-SHA256"),
    ("TLS_RSA_WITH_CAMELLIA_256_CBC_SHA", "CAMELLIA256-SHA"),
    ("TLS_RSA_WITH_AES_256_CBC_SHA", "AES256-SHA"),
    ("TLS_RSA_WITH_AES_256_CBC_SHA256", "AES256-SHA256"),
    ("TLS_RSA_WITH_AES_256_GCM_SHA384", "AES256-GCM-SHA384"),
    ("TLS_ECDH_ECDSA_WITH_AES_256_CBC_SHA", "ECDH-ECDSA-AES256-SHA"),
    ("TLS_ECDH_RSA_WITH_AES_256_CBC_SHA", "ECDH-RSA-AES256-SHA"),
    ("TLS_ECDH_ECDSA_WITH_AES_256_CBC_SHA384", "ECDH-ECDSA-AES256-SHA384"),
    ("TLS_ECDH_RSA_WITH_AES_256_CBC_SHA384", "ECDH-RSA-AES256-SHA384"),
    ("TLS_ECDH_ECDSA_WITH_AES_256_GCM_SHA384", "ECDH-ECDSA-AES256-GCM-SHA384"),
    ("TLS_ECDH_RSA_WITH_AES_256_GCM_SHA384", "ECDH-RSA-AES256-GCM-SHA384"),
    ("TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA", "ECDHE-ECDSA-AES128-SHA"),
    ("TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA", "ECDHE-RSA-AES128-SHA"),
    ("TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256", "ECDHE-ECDSA-AES128-SHA256"),
    ("TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256", "ECDHE-RSA-AES128-SHA256"),
    ("TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256", "ECDHE-ECDSA-AES128-GCM-SHA256"),
    ("TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256", "ECDHE-RSA-AES128-GCM-SHA256"),
    ("TLS_DHE_DSS_WITH_AES_128_CBC_SHA", "DHE-DSS-AES128-SHA"),
    ("TLS_DHE_DSS_WITH_CAMELLIA_128_CBC_SHA", "DHE-DSS-CAMELLIA128-SHA"),
    ("TLS_DHE_RSA_WITH_AES_128_CBC_SHA", "DHE-RSA-AES128-SHA"),
    ("TLS_DHE_RSA_WITH_CAMELLIA_128_CBC_SHA", "DHE-RSA-CAMELLIA128-SHA"),
    ("TLS_DHE_DSS_WITH_AES_128_CBC_SHA256", "DHE-DSS-AES128-SHA256"),
    ("TLS_DHE_RSA_WITH_AES_128_CBC_SHA256", "DHE-RSA-AES128-SHA256"),
    ("TLS_DHE_DSS_WITH_AES_128_GCM_SHA256", "DHE-DSS-AES128-GCM-SHA256"),
    ("TLS_DHE_RSA_WITH_AES_128_GCM_SHA256", "DHE-RSA-AES128-GCM-SHA256"),
    ("TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA", "ECDHE-ECDSA-AES256-SHA"),
    ("TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA", "ECDHE-RSA-AES256-SHA"),
    ("TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA384", "ECDHE-ECDSA-AES256-SHA384"),
    ("TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA384", "ECDHE-RSA-AES256-SHA384"),
    ("TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256", "ECDHE-ECDSA-CHACHA20-POLY1305"),
    ("TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256", "ECDHE-RSA-CHACHA20-POLY1305"),
    ("TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384", "ECDHE-ECDSA-AES256-GCM-SHA384"),
    ("TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384", "ECDHE-RSA-AES256-GCM-SHA384"),
    ("TLS_DHE_DSS_WITH_AES_256_CBC_SHA", "DHE-DSS-AES256-SHA"),
    ("TLS_DHE_RSA_WITH_AES_256_CBC_SHA", "DHE-RSA-AES256-SHA"),
    ("TLS_DHE_DSS_WITH_CAMELLIA_256_CBC_SHA", "DHE-DSS-CAMELLIA256-SHA"),
    ("TLS_DHE_RSA_WITH_CAMELLIA_256_CBC_SHA", "DHE-RSA-CAMELLIA256-SHA"),
    ("TLS_DHE_DSS_WITH_AES_256_CBC_SHA256", "DHE-DSS-AES256-SHA256"),
    ("TLS_DHE_RSA_WITH_AES_256_CBC_SHA256", "DHE-RSA-AES256-SHA256"),
    ("TLS_DHE_RSA_WITH_CHACHA20_POLY1305_SHA256", "DHE-RSA-CHACHA20-POLY1305"),
    ("TLS_DHE_DSS_WITH_AES_256_GCM_SHA384", "DHE-DSS-AES256-GCM-SHA384"),
    ("TLS_DHE_RSA_WITH_AES_256_GCM_SHA384", "DHE-RSA-AES256-GCM-SHA384"),
)
_OPENSSL_NAME = dict(CIPHERSUITES)
_ND = ("TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256", "TLS_DHE_RSA_WITH_AES_128_GCM_SHA256",
       "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384", "TLS_DHE_RSA_WITH_AES_256_GCM_SHA384")
_8996 = ("TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256", "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
         "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384", "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384")
_3DES = "TLS_RSA_WITH_3DES_EDE_CBC_SHA"


@dataclass(frozen=True, slots=True)
class Profile:
    """A DCMTK security profile as ``ssl`` settings: suites, optional 3DES, versions."""

    name: str
    suites: tuple[str, ...]
    tls13: bool
    min_tls12: bool
    optional_3des: bool = False
    secure_only: bool = True  # NULL ciphers refused with +cs


PROFILES: dict[str, Profile] = {
    "8996": Profile("BCP 195 RFC 8996 TLS Profile", _8996, tls13=True, min_tls12=True),
    "8996-mod": Profile("Modified BCP 195 RFC 8996 TLS Profile",
                        _8996 + _ND[1::2], tls13=True, min_tls12=True),
    "bcp195-nd": Profile("Non-downgrading BCP 195 TLS Profile", _ND, tls13=True, min_tls12=True),
    "bcp195": Profile("BCP 195 TLS Profile", _ND + ("TLS_RSA_WITH_AES_128_CBC_SHA",), tls13=True,
                      min_tls12=False, optional_3des=True),
    "bcp195-ex": Profile("Extended BCP 195 TLS Profile", _ND + ("TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
                         "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256"), tls13=False, min_tls12=True),
    "basic": Profile("Basic TLS Secure Transport Connection Profile", (_3DES,), tls13=False, min_tls12=False),
    "aes": Profile("AES TLS Secure Transport Connection Profile", ("TLS_RSA_WITH_AES_128_CBC_SHA",),
                   tls13=False, min_tls12=False, optional_3des=True),
    "null": Profile("Authenticated unencrypted communication", ("TLS_RSA_WITH_NULL_SHA",), tls13=False,
                    min_tls12=False, secure_only=False),
}
PROMPT = object()  # +ps: ask on the terminal when the key is encrypted


@dataclass(slots=True)
class TlsSettings:
    """The TLS options after DCMTK's dependency checks."""

    secure: bool = False
    key: str | None = None
    cert: str | None = None
    passwd: Any = PROMPT
    der: bool = False
    cert_files: list[str] = field(default_factory=list)
    cert_dirs: list[str] = field(default_factory=list)
    crl_files: list[str] = field(default_factory=list)
    crl_mode: str | None = None  # None, "leaf", "all"
    profile: str = "8996"
    ciphers: list[str] = field(default_factory=list)
    sni: str | None = None
    seed: str | None = None
    write_seed_to: str | None = None
    verify_peer: bool = True


def check_tls_options(app: App, cmd: CommandLine, values: dict[str, Any]) -> TlsSettings:
    """``DcmTLSOptions::parseArguments``: which options need ``+tls``/``+tla`` and which conflict."""
    tls = values.get("tls", False)
    t = TlsSettings(secure=tls is not False, profile=values.get("tls_profile", "8996"))
    auth = isinstance(tls, tuple)
    if auth:
        t.key, t.cert = tls
    needs = "--enable-tls or --anonymous-tls"
    for dest, base, condition in (("passwd", "--enable-tls", auth), ("key_format", needs, t.secure)):
        occ = cmd.rightmost(dest)
        if occ is not None:
            app.check_dependence(occ.option.long, base, condition)
    t.passwd = values.get("passwd", PROMPT)
    t.der = values.get("key_format") == "der"
    if cmd.has("--seed"):
        app.check_dependence("--seed", needs, t.secure)
        t.seed = values["seed"]
    occ = cmd.rightmost("write_seed")
    if occ is not None:
        app.check_dependence(occ.option.long, needs, t.secure)
        app.check_dependence(occ.option.long, "--seed", t.seed is not None)
        t.write_seed_to = t.seed if values["write_seed"] is True else values["write_seed"]
    for dest in ("peer_cert", "tls_profile"):
        occ = cmd.rightmost(dest)
        if occ is not None:
            app.check_dependence(occ.option.long, needs, t.secure)
    t.verify_peer = values.get("peer_cert", "require") == "require"
    for long in ("--add-cert-file", "--add-cert-dir", "--add-crl-file", "--enable-crl-vfy"):
        if cmd.has(long):
            app.check_dependence(long, needs, t.secure)
    if cmd.has("--enable-crl-all"):
        app.check_dependence("--enable-crl-all", needs, t.secure)
        app.check_conflict("--enable-crl-all", "--enable-crl-vfy", cmd.has("--enable-crl-vfy"))
    if cmd.has("--cipher"):
        app.check_dependence("--cipher", needs, t.secure)
        app.check_conflict("--cipher", "--profile-bcp195-ex", t.profile == "bcp195-ex")
    occ = cmd.rightmost("sni")
    if occ is not None and occ.option.long == "--request-sni":
        app.check_dependence("--request-sni", needs, t.secure)
    t.sni = values.get("sni")
    t.cert_files = values.get("add_cert_file", [])
    t.cert_dirs = values.get("add_cert_dir", [])
    t.crl_files = values.get("add_crl_file", [])
    t.crl_mode = "all" if cmd.has("--enable-crl-all") else (
        "leaf" if cmd.has("--enable-crl-vfy") or t.crl_files else None)
    t.ciphers = values.get("cipher", [])
    return t


def openssl_version() -> str:
    """The OpenSSL behind Python's ``ssl`` module."""
    import ssl

    return ssl.OPENSSL_VERSION


def _openssl_ciphers(spec: str) -> set[str]:
    """OpenSSL names a client context would offer for cipher string ``spec`` (TLS <= 1.2)."""
    import ssl

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        ctx.set_ciphers(spec)
    except ssl.SSLError:
        return set()
    return {c["name"] for c in ctx.get_ciphers()}


def supported_ciphersuites() -> list[str]:
    """DCMTK's table filtered by what this OpenSSL offers, weakest first (``+cc``)."""
    available = _openssl_ciphers("ALL:eNULL:@SECLEVEL=0")
    return [tls_name for tls_name, name in CIPHERSUITES if name in available]


def supported_profiles() -> list[str]:
    """Profiles whose required suites this OpenSSL has (``+ph``)."""
    available = set(supported_ciphersuites())
    return [f"{p.name}" for p in PROFILES.values() if all(s in available for s in p.suites)]


def _fatal(log: logging.Logger, text: str) -> None:
    """DCMTK logs the condition as fatal and exits 1 when the TLS layer cannot be set up."""
    log.critical(text)
    raise ToolExit(1)


def create_context(log: logging.Logger, t: TlsSettings) -> Any:
    """``DcmTLSOptions::createTransportLayer``: an ``ssl.SSLContext`` for the client, or None."""
    if not t.secure:
        return None
    import ssl

    _read_seed(log, t.seed)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False  # DICOM TLS authenticates the certificate chain, not host names
    ctx.verify_mode = ssl.CERT_REQUIRED if t.verify_peer else ssl.CERT_NONE
    _load_trust(log, ctx, t)
    if t.key is not None and t.cert is not None:
        _load_identity(log, ctx, t)
    _apply_profile(log, ctx, t)
    return ctx


def _load_trust(log: logging.Logger, ctx: Any, t: TlsSettings) -> None:
    """+cf, +cd, +crl and the CRL mode; unreadable files are warnings, as in DCMTK."""
    import ssl

    for path in t.cert_files:
        try:
            for der in _read_certs_der(path, t.der):
                ctx.load_verify_locations(cadata=der)
        except (OSError, ValueError, ssl.SSLError):
            log.warning(f"unable to load certificate file '{path}', ignoring")
    for path in t.cert_dirs:
        try:
            if t.der:  # OpenSSL's hashed-directory lookup reads PEM only: load every file
                for name in sorted(os.listdir(path)):
                    for der in _read_certs_der(os.path.join(path, name), True):
                        ctx.load_verify_locations(cadata=der)
            else:
                ctx.load_verify_locations(capath=path)
        except (OSError, ValueError, ssl.SSLError):
            log.warning(f"unable to load certificates from directory '{path}', ignoring")
    for path in t.crl_files:
        try:
            _load_crl(ctx, path, t.der)
        except (OSError, ValueError, ssl.SSLError):
            log.warning(f"unable to load CRL file '{path}', ignoring")
    if t.crl_mode == "leaf":
        ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    elif t.crl_mode == "all":
        ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_CHAIN


def _read_certs_der(path: str, der: bool) -> list[bytes]:
    """Certificates of a PEM file (all of them) or a DER file, as DER bytes."""
    import ssl

    data = open(path, "rb").read()
    if der:
        return [data]
    blocks = re.findall(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", data, re.S)
    if not blocks:
        raise ValueError(f"no certificate in {path}")
    return [ssl.PEM_cert_to_DER_cert(b.decode("ascii")) for b in blocks]


def _load_crl(ctx: Any, path: str, der: bool) -> None:
    """Add a CRL to the context's store: OpenSSL loads CRLs from a PEM file given as ``cafile``."""
    if not der:
        ctx.load_verify_locations(cafile=path)
        return
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    pem = x509.load_der_x509_crl(open(path, "rb").read()).public_bytes(Encoding.PEM)
    with tempfile.NamedTemporaryFile(suffix=".pem") as tmp:  # a CRL is public data
        tmp.write(pem)
        tmp.flush()
        ctx.load_verify_locations(cafile=tmp.name)


def _load_identity(log: logging.Logger, ctx: Any, t: TlsSettings) -> None:
    """+tls key cert with +ps/+pw/-pw and -pem/-der; DCMTK's messages on failure (exit 1)."""
    import ssl

    try:
        key_pem, cert_pem = _identity_pem(t)
    except ImportError:
        _fatal(log, "+tls needs the 'cryptography' package to read keys, and it is not installed")
    except _KeyError:
        _fatal(log, f"000b:0004 Unable to load private TLS key from '{t.key}'")
    except _CertError:
        _fatal(log, f"Unable to load certificate from '{t.cert}'")
    # ssl only loads files: re-encrypt the key under a random one-time password for the copy
    secret = os.urandom(24).hex()
    with tempfile.TemporaryDirectory() as tmp:
        key_path, cert_path = os.path.join(tmp, "key.pem"), os.path.join(tmp, "cert.pem")
        _write_private(key_path, _encrypt_key(key_pem, secret))
        _write_private(cert_path, cert_pem)
        try:
            ctx.load_cert_chain(cert_path, key_path, password=secret)
        except ssl.SSLError:
            _fatal(log, f"Private key '{t.key}' and certificate '{t.cert}' do not match")


class _KeyError(Exception):
    """The private key could not be read or decrypted."""


class _CertError(Exception):
    """The certificate could not be read."""


def _identity_pem(t: TlsSettings) -> tuple[bytes, bytes]:
    """Read key (asking for its password only when encrypted) and certificate with cryptography."""
    from cryptography import x509  # ImportError: reported by the caller
    from cryptography.hazmat.primitives import serialization as ser

    load_key = ser.load_der_private_key if t.der else ser.load_pem_private_key
    try:
        raw = open(str(t.key), "rb").read()
        try:
            key = load_key(raw, password=None)
        except TypeError:  # encrypted: now the password matters
            key = load_key(raw, password=_password(t.passwd).encode())
    except (OSError, ValueError, TypeError):
        raise _KeyError() from None
    try:
        raw = open(str(t.cert), "rb").read()
        cert = x509.load_der_x509_certificate(raw) if t.der else x509.load_pem_x509_certificate(raw)
    except (OSError, ValueError):
        raise _CertError() from None
    key_pem = key.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.PKCS8, ser.NoEncryption())
    return key_pem, cert.public_bytes(ser.Encoding.PEM)


def _password(passwd: Any) -> str:
    """+pw/-pw give it; +ps asks on the terminal like OpenSSL's PEM callback."""
    if passwd is PROMPT:
        import getpass

        return getpass.getpass("Enter PEM pass phrase:")
    return str(passwd)


def _encrypt_key(key_pem: bytes, secret: str) -> bytes:
    """The key as encrypted PKCS#8 PEM, so no plain private key is ever written to disk."""
    from cryptography.hazmat.primitives import serialization as ser

    key = ser.load_pem_private_key(key_pem, password=None)
    return key.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.PKCS8,
                             ser.BestAvailableEncryption(secret.encode()))


def _write_private(path: str, data: bytes) -> None:
    """Write a file only we can read."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def _apply_profile(log: logging.Logger, ctx: Any, t: TlsSettings) -> None:
    """Protocol versions and cipher list of the profile, plus ``+cs`` suites (TLS <= 1.2 only)."""
    import ssl
    import warnings

    profile = PROFILES[t.profile]
    available = set(supported_ciphersuites())
    suites = list(profile.suites)
    for name in suites:
        if name not in available:
            _fatal(log, f"Ciphersuite '{name}' not supported by the OpenSSL library used by this application.")
    if profile.optional_3des:
        if _3DES in available:
            suites.append(_3DES)
        else:
            log.warning(f"Ciphersuite '{_3DES}' not supported by the OpenSSL library used by this application, "
                        "no backward compatibility with DICOM Basic TLS profile.")
    for name in t.ciphers:
        suites.append(_check_extra_cipher(log, profile, name, available))
    with warnings.catch_warnings():  # TLS 1.0/1.1 are deprecated in ssl; retired profiles need them
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2 if profile.min_tls12 else ssl.TLSVersion.TLSv1
        ctx.maximum_version = ssl.TLSVersion.MAXIMUM_SUPPORTED if profile.tls13 else ssl.TLSVersion.TLSv1_2
    level = "" if profile.min_tls12 and profile.secure_only else ":@SECLEVEL=0"
    ctx.set_ciphers(":".join(_OPENSSL_NAME[s] for s in suites) + level)


def _check_extra_cipher(log: logging.Logger, profile: Profile, name: str, available: set[str]) -> str:
    """``DcmTLSCiphersuiteHandler::addCipherSuite``: known, supported, encrypted where required."""
    if name not in _OPENSSL_NAME:
        _fatal(log, f"ciphersuite '{name}' is unknown")
    if name not in available:
        _fatal(log, f"Ciphersuite '{name}' not supported by the OpenSSL library used by this application.")
    if profile.secure_only and "_NULL_" in name:
        _fatal(log, f"Unencrypted ciphersuite '{name}' not permitted with security profile '{profile.name}'")
    return name


def _read_seed(log: logging.Logger, path: str | None) -> None:
    """``+rs``: mix the file's bytes into OpenSSL's PRNG."""
    if path is None:
        return
    import ssl

    try:
        data = open(path, "rb").read()
    except OSError:
        log.warning(f"unable to read random seed file '{path}'")
        return
    ssl.RAND_add(data, float(len(data)))


def write_seed(log: logging.Logger, t: TlsSettings) -> None:
    """``+ws``/``+wf``: write 1024 fresh PRNG bytes back, like ``RAND_write_file``; failure warns."""
    if t.write_seed_to is None or not t.secure:
        return
    import ssl

    try:
        with open(t.write_seed_to, "wb") as fh:
            fh.write(ssl.RAND_bytes(1024))
    except OSError:
        log.warning(f"Failed to write random seed file '{t.write_seed_to}'")


# --------------------------------------------------------------------------- offline checks


def offline_check(app: App, log: logging.Logger, cmd: CommandLine, t: TlsSettings) -> int:
    """``+vc``: would this certificate pass our CA settings? ``+rc``: is it a self-signed root?"""
    occ = cmd.find("--verify-cert")
    if occ is not None:
        path = occ.values[0]
        ok = t.secure and _verify_certificate(log, path, t)
        app.stdout.write(f"Verification of certificate '{path}' {'passed' if ok else 'failed'}.\n")
        return 0 if ok else EXITCODE_INVALID_INPUT_FILE
    path = cmd.find("--is-root-cert").values[0]  # type: ignore[union-attr]
    ok = _is_root_certificate(log, path, t.der)
    verdict = "is a valid" if ok else "is not a valid"
    app.stdout.write(f"Certificate '{path}' {verdict}, self-signed root CA.\n")
    return 0 if ok else EXITCODE_INVALID_INPUT_FILE


def _load_cert(path: str, der: bool) -> Any:
    """One certificate (the first of a PEM file)."""
    from cryptography import x509

    data = open(path, "rb").read()
    return x509.load_der_x509_certificate(data) if der else x509.load_pem_x509_certificate(data)


def _valid_now(cert: Any) -> bool:
    """Inside its validity period."""
    import datetime

    now = datetime.datetime.now(datetime.timezone.utc)
    return bool(cert.not_valid_before_utc <= now <= cert.not_valid_after_utc)


def _signed_by(cert: Any, issuer: Any) -> bool:
    """``cert``'s issuer name and signature match ``issuer``."""
    try:
        cert.verify_directly_issued_by(issuer)
        return True
    except Exception:  # noqa: BLE001 - InvalidSignature, ValueError, TypeError: all mean "no"
        return False


def _is_root_certificate(log: logging.Logger, path: str, der: bool) -> bool:
    """Self-issued, self-signed and currently valid (X509_verify_cert with itself as anchor)."""
    try:
        cert = _load_cert(path, der)
    except (OSError, ValueError):
        log.error(f"Cannot read certificate file '{path}'")
        return False
    return _signed_by(cert, cert) and _valid_now(cert)


def _trusted(t: TlsSettings) -> list[Any]:
    """The certificates of +cf files and +cd directories, as the offline check's trust store."""
    from cryptography import x509

    out = []
    paths = list(t.cert_files)
    for d in t.cert_dirs:
        paths += [os.path.join(d, n) for n in sorted(os.listdir(d))] if os.path.isdir(d) else []
    for path in paths:
        try:
            out += [x509.load_der_x509_certificate(der) for der in _read_certs_der(path, t.der)]
        except (OSError, ValueError):
            continue
    return out


def _verify_certificate(log: logging.Logger, path: str, t: TlsSettings) -> bool:
    """Build a chain from ``path`` to a trusted self-signed root (depth <= 10), check dates,
    CA flags of issuers and, with +crl/+crv/+cra, revocation like OpenSSL's CRL flags."""
    try:
        cert = _load_cert(path, t.der)
    except (OSError, ValueError):
        log.error(f"Cannot read certificate file '{path}'")
        return False
    store = _trusted(t)
    chain = [cert]
    for _ in range(10):
        current = chain[-1]
        if not _valid_now(current):
            return False
        issuer = next((c for c in store if _signed_by(current, c)), None)
        if issuer is None:
            return False
        if issuer is not current and not _is_ca(issuer):
            return False
        if _signed_by(issuer, issuer):  # reached a trusted root
            chain.append(issuer)
            return _valid_now(issuer) and _not_revoked(log, chain, t)
        chain.append(issuer)
    return False


def _is_ca(cert: Any) -> bool:
    """BasicConstraints cA=TRUE (or a v1 certificate, which OpenSSL accepts as a CA)."""
    from cryptography import x509

    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return cert.version == x509.Version.v1


def _not_revoked(log: logging.Logger, chain: list[Any], t: TlsSettings) -> bool:
    """With CRL checking on, every checked certificate needs its issuer's CRL and must not be in it."""
    if t.crl_mode is None:
        return True
    from cryptography import x509

    crls = []
    for path in t.crl_files:
        try:
            data = open(path, "rb").read()
            crls.append(x509.load_der_x509_crl(data) if t.der else x509.load_pem_x509_crl(data))
        except (OSError, ValueError):
            log.warning(f"unable to load CRL file '{path}', ignoring")
    checked = chain[:1] if t.crl_mode == "leaf" else chain[:-1]
    for cert, issuer in zip(checked, chain[1:]):
        crl = next((c for c in crls if c.issuer == issuer.subject and c.is_signature_valid(issuer.public_key())), None)
        if crl is None or crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None:
            return False
    return True
