"""``nodectl echoscu``: DCMTK's echoscu (Verification SCU), option for option.

CLI form::

    nodectl echoscu [options] peer port

Scripts written for DCMTK's ``echoscu`` must keep working, so this module keeps its option
spellings (DCMTK 3.7.0's set, see ``spec/echoscu.md``), defaults, log lines (``I: Requesting
Association`` ...) and exit codes: 0 on success, also when the C-ECHO status is not Success
or the peer aborts during the echoes; 1 for syntax errors and every association failure;
70 when a DIMSE failure (e.g. ``-td`` expired) made us abort; 22 when the offline certificate
checks ``+vc``/``+rc`` fail. 20, 40 and 60 are declared by DCMTK but never used, here too.

The association runs on the node's engine through ``actors/ul_requestor.py`` (no pynetdicom
association); TLS is Python's ``ssl`` module (profiles mapped to protocol versions and cipher lists, CA
files and CRLs loaded into the context; the offline checks ``+vc``/``+rc`` use the
``cryptography`` package). Anything we cannot honour exits with a message and status 1
instead of being ignored.
"""

from __future__ import annotations

import logging
import platform
import socket
import ssl
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from typing import Any

from actors import ul_requestor as rq
from actors.ul_requestor import Requestor
from node import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME, ul
from node.tools import dcmtk_args as da
from node.tools import dcmtk_tls as tls
from node.tools.dcmtk_args import App, CommandLine, Group, Option, Param, ToolExit

VERSION = "0.1.0"
VERIFICATION = "1.2.840.10008.1.1"
APPLICATIONTITLE = "ECHOSCU"
PEERAPPLICATIONTITLE = "ANY-SCP"
ASC_DEFAULTMAXPDU = 16384
ASC_MINIMUMPDUSIZE = 4096
ASC_MAXIMUMPDUSIZE = 131072
EXITCODE_INVALID_INPUT_FILE = tls.EXITCODE_INVALID_INPUT_FILE
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
        *tls.option_rows(tls.REQUESTOR),
        *tls.offline_rows(),
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
    tls_settings = tls.check_options(app, cmd, values, tls.REQUESTOR)
    settings = settings_from(values, peer, port)
    with da.log_handler(app, setup) as log:
        log.debug(app.spec.rcsid + "\n")
        tls.read_seed(log, tls_settings)
        try:
            context = tls.client_context(log, tls_settings)
        except tls.TlsSetupError as exc:  # DCMTK logs the condition as fatal and exits 1
            log.critical(str(exc))
            return 1
        if offline:
            return tls.offline_check(app, log, cmd, tls_settings)
        try:
            return echo_peer(log, settings, context, tls_settings.sni)
        finally:
            tls.write_seed(log, tls_settings)


def _exclusive_info(app: App, cmd: CommandLine) -> None:
    """``--version``, ``+cc`` and ``+ph`` print and exit 0; ``-h`` was handled by the parser."""
    if cmd.has("--version"):
        out = da.header_text(app.spec, host_info=True) + "\nExternal libraries used:\n"
        for dist in ("pynetdicom", "pydicom"):
            out += f"- {dist}, Version {_dist_version(dist)}\n"
        app.stdout.write(out + f"- {tls.openssl_version()}\n")
        raise ToolExit(0)
    tls.list_and_exit(app, cmd)


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


def build_contexts(n_contexts: int, n_syntaxes: int) -> list[ul.ProposedContext]:
    """``-ppc`` identical Verification contexts, each with the first ``-pts`` transfer syntaxes
    (the engine proposes any UID, whether pydicom knows it or not)."""
    syntaxes = TRANSFER_SYNTAXES[:n_syntaxes]
    return [ul.ProposedContext(context_id=2 * i + 1, abstract_syntax=VERIFICATION, transfer_syntaxes=tuple(syntaxes))
            for i in range(n_contexts)]


# DCMTK's dictionary names for the UIDs an echo negotiates (its dumps print "=Name").
DCMTK_NAMES = {
    VERIFICATION: "VerificationSOPClass",
    "1.2.840.10008.1.2": "LittleEndianImplicit",
    "1.2.840.10008.1.2.1": "LittleEndianExplicit",
    "1.2.840.10008.1.2.2": "BigEndianExplicit",
    "1.2.840.10008.1.2.1.99": "DeflatedLittleEndianExplicit",
}
CONTEXT_RESULTS = {0: "Accepted", 1: "User Rejection", 2: "Provider Rejection",
                   3: "Abstract Syntax Not Supported", 4: "Transfer Syntaxes Not Supported"}
_NEGOTIATION_NONE = ["Requested Extended Negotiation: none", "Accepted Extended Negotiation:  none",
                     "Requested User Identity Negotiation: none", "User Identity Negotiation Response:  none"]


def _named(uid: str) -> str:
    name = DCMTK_NAMES.get(str(uid))
    return f"={name}" if name else str(uid)


def dump_request(s: Settings, contexts: list[ul.ProposedContext]) -> str:
    """``Request Parameters:`` as DCMTK's ``ASC_dumpParameters`` lays out an A-ASSOCIATE-RQ."""

    lines = ["Request Parameters:", "====================== BEGIN A-ASSOCIATE-RQ =====================",
             f"Our Implementation Class UID:      {IMPLEMENTATION_CLASS_UID}",
             f"Our Implementation Version Name:   {IMPLEMENTATION_VERSION_NAME}",
             "Their Implementation Class UID:    ", "Their Implementation Version Name: ",
             "Application Context Name:    1.2.840.10008.3.1.1.1",
             f"Calling Application Name:    {s.aet}", f"Called Application Name:     {s.aec}",
             f"Responding Application Name: {s.aec}",
             f"Our Max PDU Receive Size:    {s.max_pdu}", "Their Max PDU Receive Size:  0", "Presentation Contexts:"]
    for i, cx in enumerate(contexts):
        lines += [f"  Context ID:        {2 * i + 1} (Proposed)", f"    Abstract Syntax: {_named(VERIFICATION)}",
                  "    Proposed SCP/SCU Role: Default", "    Proposed Transfer Syntax(es):"]
        lines += [f"      {_named(uid)}" for uid in cx.transfer_syntaxes]
    lines += [*_NEGOTIATION_NONE, "======================= END A-ASSOCIATE-RQ ======================"]
    return "\n".join(lines)


def dump_accepted(s: Settings, assoc: Requestor) -> str:
    """``Association Parameters Negotiated:`` as DCMTK dumps the A-ASSOCIATE-AC."""
    them = assoc.accept
    assert them is not None and assoc.engine.request is not None
    proposed = {cx.context_id: cx.abstract_syntax for cx in assoc.engine.request.contexts}
    lines = ["Association Parameters Negotiated:", "====================== BEGIN A-ASSOCIATE-AC =====================",
             f"Our Implementation Class UID:      {IMPLEMENTATION_CLASS_UID}",
             f"Our Implementation Version Name:   {IMPLEMENTATION_VERSION_NAME}",
             f"Their Implementation Class UID:    {them.implementation_class_uid or ''}",
             f"Their Implementation Version Name: {them.implementation_version_name or ''}",
             "Application Context Name:    1.2.840.10008.3.1.1.1",
             f"Calling Application Name:    {s.aet}", f"Called Application Name:     {s.aec}",
             f"Responding Application Name: {them.called_ae.strip() or s.aec}",
             f"Our Max PDU Receive Size:    {s.max_pdu}", f"Their Max PDU Receive Size:  {them.max_pdu or 0}",
             "Presentation Contexts:"]
    for cx in sorted(them.contexts, key=lambda c: c.context_id):
        lines += [f"  Context ID:        {cx.context_id} ({CONTEXT_RESULTS.get(cx.result, cx.result)})",
                  f"    Abstract Syntax: {_named(proposed.get(cx.context_id, ''))}",
                  "    Proposed SCP/SCU Role: Default", "    Accepted SCP/SCU Role: Default"]
        if cx.result == ul.ACCEPTANCE:
            lines.append(f"    Accepted Transfer Syntax: {_named(cx.transfer_syntax)}")
    lines += [*_NEGOTIATION_NONE, "======================= END A-ASSOCIATE-AC ======================"]
    return "\n".join(lines)


def echo_peer(log: logging.Logger, s: Settings, tls_context: ssl.SSLContext | None, sni: str | None) -> int:
    """Associate, send ``--repeat`` C-ECHOs, release or abort: DCMTK's main flow and exit codes."""
    addr = resolve(log, s.peer, s.port, s.ip)
    contexts = build_contexts(s.n_contexts, s.n_syntaxes)
    log.debug(dump_request(s, contexts))
    log.info("Requesting Association")
    assoc = _request(log, s, addr, contexts, tls_context, sni)
    log.debug(dump_accepted(s, assoc))
    if not assoc.contexts:
        log.critical("No Acceptable Presentation Contexts")
        assoc.abort()
        return 1
    peer_max = assoc.engine.peer_max_pdu
    log.info(f"Association Accepted (Max Send PDV: {peer_max - 12 if peer_max else ASC_MAXIMUMPDUSIZE - 12})")
    outcome = _echo_loop(log, assoc, s)
    return _finish(log, assoc, outcome, s.abort)


def _timeouts(s: Settings) -> rq.Timeouts:
    """DCMTK's clocks: ``-to`` connect, ``-ta`` ACSE, ``-td`` DIMSE; without ``-td`` a read
    still ends after the socket timeout ``-ts`` (0: never)."""
    socket_timeout = s.socket_timeout if s.socket_timeout > 0 else None
    return rq.Timeouts(connect=s.connect_timeout, acse=s.acse_timeout,
                       dimse=s.dimse_timeout if s.dimse_timeout else socket_timeout)


def _request(log: logging.Logger, s: Settings, addr: str, contexts: list[ul.ProposedContext],
             tls_context: ssl.SSLContext | None, sni: str | None) -> Requestor:
    """``ASC_requestAssociation`` on the engine; every failure logs DCMTK's text and exits 1."""
    try:
        request = rq.request(s.aec[:16], s.aet[:16], contexts, max_pdu=s.max_pdu)
    except ValueError as exc:
        log.critical(f"Association Request Failed: {exc}")
        raise ToolExit(1) from None
    try:
        return rq.associate(addr, s.port, request, timeouts=_timeouts(s), tls=tls_context, server_hostname=sni)
    except rq.AssociationError as exc:
        _log_request_failure(log, exc)
        raise ToolExit(1) from None


def _log_request_failure(log: logging.Logger, exc: rq.AssociationError) -> None:
    """Rejection, or why the request failed, worded like DCMTK."""
    if exc.reject is not None:
        rsp = exc.reject
        result = REJECT_RESULTS.get(rsp.result, "UNKNOWN")
        source = REJECT_SOURCES.get(rsp.source, "UNKNOWN")
        reason = REJECT_REASONS.get((rsp.source, rsp.reason), "UNKNOWN")
        log.critical(f"Association Rejected:\nResult: {result}, Source: {source}\nReason: {reason}")
    elif exc.kind == "connect" and isinstance(exc.cause, OSError):
        log.critical("Association Request Failed: " + COND_TCP_INIT.format(text=rq.os_text(exc.cause)))
    elif exc.kind == "tls":
        log.critical("Association Request Failed: " + COND_TCP_INIT.format(text=str(exc.cause)))
    elif exc.kind == "acse-timeout":
        log.critical("Association Request Failed: " + COND_READ_TIMEOUT)
    else:
        log.critical("Association Request Failed: " + COND_PEER_ABORTED)


def _status_text(status: int) -> str:
    """``DU_cechoStatusString``."""
    return "Success" if status == 0 else f"Unknown Status: 0x{status:x}"


def _echo_loop(log: logging.Logger, assoc: Requestor, s: Settings) -> str:
    """Send C-ECHOs with MsgIDs 1, 2, ... on the first accepted context; stop at the first
    DIMSE failure. Returns "ok", "peer-aborted" or "failed" (DIMSE timeout or anything else
    we could not read a status from)."""
    context_id = min(assoc.contexts)
    for msg_id in range(1, s.repeat + 1):
        log.info(f"Sending Echo Request (MsgID {msg_id})")
        try:
            assoc.send(context_id, ul.CEchoRQ(message_id=msg_id))
            response = assoc.wait_response(msg_id)
        except rq.AssociationError as exc:
            return _why_no_response(log, exc, s.dimse_timeout)
        log.info(f"Received Echo Response ({_status_text(int(response.message.status))})")  # type: ignore[union-attr]
    return "ok"


def _why_no_response(log: logging.Logger, exc: rq.AssociationError, dimse_timeout: int | None) -> str:
    """Did the peer abort (exit 0) or did DIMSE fail (exit 70)?"""
    if exc.kind == "aborted":
        log.error(f"Echo Failed: {COND_PEER_ABORTED}")  # DCMTK prints it at every log level
        return "peer-aborted"
    cond = COND_DIMSE_TIMEOUT if dimse_timeout and exc.kind == "dimse-timeout" else "no response received"
    log.error(f"Echo Failed: {cond}")
    log.error(f"Echo SCU Failed: {cond}")
    return "failed"


def _finish(log: logging.Logger, assoc: Requestor, outcome: str, abort: bool) -> int:
    """Release or abort like DCMTK's tear-down switch; returns the exit status."""
    if outcome == "peer-aborted":
        log.info("Peer Aborted Association")
        assoc.close()
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
    try:
        assoc.release()
    except rq.AssociationError:
        log.critical("Association Release Failed: " + COND_PEER_ABORTED)
        return 1
    return 0
