"""``nodectl storescu``: pynetdicom 3.0.4's storescu, option for option.

CLI form::

    nodectl storescu [options] addr port path [path ...]

Scripts written for ``python -m pynetdicom storescu`` must keep working unchanged, so this
module copies its argparse parser (prefix abbreviations included: ``--recur`` works,
``--recursive`` does not), its file collection (de-duplicated and sorted as strings), its
presentation contexts, its ``L: message`` log lines and its exit codes: 0 even when stores
fail or files are bad, 1 when no association is established (or an uncaught error such as
more than 128 contexts with ``-cx``), 2 for argparse errors. The behaviour is specified in
``spec/storescu.md``; ``nodectl send`` is the tool with the stricter exit status.

The association runs on the node's engine (``actors/ul_requestor.py``); pynetdicom is used for
its tables only (the storage SOP classes, status meanings). A file whose transfer syntax an
accepted context takes is streamed from disk in pieces; one that must be re-encoded (an
explicit file to an implicit-only SCP) is read whole, as pynetdicom would.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from actors import ul_requestor as rq
from actors.ul_requestor import Requestor
from node import ul
from node.tools.scu_options import (
    DEFAULT_MAX_PDU,
    LOG_FORMAT,
    LOG_LEVELS,
    ToolParser,
    add_logging_options,
    add_network_options,
)

__version__ = "0.3.0"  # the version pynetdicom 3.0.4's storescu reports

APP_LOGGER_NAME = "storescu"  # pynetdicom's app logger name, kept for identical output

# Explicit VR LE first: the code's order, not the manual's (see spec/storescu.md).
EXPLICIT_LE = "1.2.840.10008.1.2.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
DEFLATED_LE = "1.2.840.10008.1.2.1.99"
EXPLICIT_BE = "1.2.840.10008.1.2.2"
DEFAULT_SYNTAXES = [EXPLICIT_LE, IMPLICIT_LE, DEFLATED_LE, EXPLICIT_BE]
# a dataset may be re-encoded into another uncompressed syntax of its byte order (not deflated)
SAME_BYTE_ORDER = ((EXPLICIT_LE, IMPLICIT_LE, DEFLATED_LE), (EXPLICIT_BE,))
PRIORITY_LOW = 2  # pynetdicom's send_c_store default
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"


def build_parser() -> argparse.ArgumentParser:
    """pynetdicom 3.0.4 storescu's parser: same options, groups, help and error texts."""
    parser = ToolParser(
        prog="storescu",
        description=(
            "The storescu application implements a Service Class User "
            "(SCU) for the Storage Service Class. For each DICOM "
            "file on the command line it sends a C-STORE message to a "
            "Storage Service Class Provider (SCP) and waits for a response."
        ),
        usage="storescu [options] addr port path",
        epilog=(
            "Exit status: 0 when the association was established (also when stores "
            "failed or files were bad) or nothing was found to send; 1 when no "
            "association was established or on an unexpected error; 2 on a command "
            "line error."
        ),
    )
    req_opts = parser.add_argument_group("Parameters")
    req_opts.add_argument("addr", help="TCP/IP address or hostname of DICOM peer", type=str)
    req_opts.add_argument("port", help="TCP/IP port number of peer", type=int)
    req_opts.add_argument(
        "path", metavar="path", nargs="+", type=str,
        help="DICOM file or directory to be transmitted",
    )
    add_logging_options(parser)
    in_opts = parser.add_argument_group("Input Options")
    in_opts.add_argument(
        "-r", "--recurse", help="recursively search the given directory", action="store_true"
    )
    add_network_options(parser)
    ts_opts = parser.add_argument_group("Transfer Syntax Options")
    syntax = ts_opts.add_mutually_exclusive_group()
    syntax.add_argument(
        "-xe", "--request-little", action="store_true",
        help="request explicit VR little endian TS only",
    )
    syntax.add_argument(
        "-xb", "--request-big", action="store_true",
        help="request explicit VR big endian TS only",
    )
    syntax.add_argument(
        "-xi", "--request-implicit", action="store_true",
        help="request implicit VR little endian TS only",
    )
    misc_opts = parser.add_argument_group("Miscellaneous Options")
    misc_opts.add_argument(
        "-cx", "--required-contexts", action="store_true",
        help="only request the presentation contexts required for the input DICOM file(s)",
    )
    return parser


def collect_files(paths: Sequence[str], recurse: bool) -> tuple[list[str], list[str]]:
    """Files named or found under ``paths``, de-duplicated and sorted; and the bad paths.

    Same rules as pynetdicom's ``apps.common.get_files``: a directory gives the files
    directly in it (or, with ``recurse``, every file below it), a path that is neither a
    file nor a directory is returned as bad. No DICOM check here: that happens on sending.
    """
    found: list[str] = []
    bad: list[str] = []
    for fpath in paths:
        if os.path.isfile(fpath):
            found.append(fpath)
        elif os.path.isdir(fpath):
            if recurse:
                for root, _dirs, files in os.walk(fpath):
                    found.extend(os.path.join(root, name) for name in files)
            else:
                found.extend(os.path.join(fpath, name) for name in os.listdir(fpath))
        else:
            bad.append(fpath)
    return sorted({path for path in found if os.path.isfile(path)}), bad


@contextmanager
def tool_logging(
    log_type: str | None, log_level: str | None, app_name: str
) -> Iterator[logging.Logger]:
    """Handlers for the app and pynetdicom loggers, as pynetdicom's ``setup_logging`` sets.

    Default level ERROR; -q silences both loggers, -v INFO, -d DEBUG, -ll overrides.
    The handlers are removed on exit so that ``main`` can be called repeatedly in one
    process (tests) without doubling every line.
    """
    formatter = logging.Formatter(LOG_FORMAT)
    loggers = [logging.getLogger(app_name), logging.getLogger("pynetdicom")]
    saved = [(lg, lg.level, lg.propagate) for lg in loggers]
    level = {"v": logging.INFO, "d": logging.DEBUG}.get(log_type or "", logging.ERROR)
    if log_level:
        level = LOG_LEVELS[log_level]
    handler: logging.Handler
    if log_type == "q":
        handler = logging.NullHandler()
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(formatter)
    for lg in loggers:
        lg.addHandler(handler)
        lg.setLevel(level)
        lg.propagate = False
    try:
        yield loggers[0]
    finally:
        for lg, old_level, old_propagate in saved:
            lg.removeHandler(handler)
            lg.setLevel(old_level)
            lg.propagate = old_propagate


def required_contexts(
    fpaths: Sequence[str], logger: logging.Logger
) -> tuple[list[str], dict[str, list[str]]]:
    """For ``-cx``: the readable files (as absolute paths) and {SOP class: [syntaxes]}.

    Every file is read in full, as pynetdicom does; unreadable files and files without
    SOP Class UID or file meta Transfer Syntax UID are logged after the scan and dropped.
    """
    from pydicom import dcmread

    good: list[str] = []
    bad: list[tuple[str, str]] = []
    contexts: dict[str, list[str]] = {}
    for fpath in fpaths:
        path = os.fspath(Path(fpath).resolve())
        try:
            ds = dcmread(path)
        except Exception:
            bad.append(("Bad DICOM file", path))
            continue
        try:
            sop_class = ds.SOPClassUID
            tsyntax = ds.file_meta.TransferSyntaxUID
        except Exception:
            bad.append(("Unknown SOP Class or Transfer Syntax UID", path))
            continue
        syntaxes = contexts.setdefault(sop_class, [])
        if tsyntax not in syntaxes:
            syntaxes.append(tsyntax)
        good.append(path)
    for reason, path in bad:
        logger.error(f"{reason}: {path}")
    return good, contexts


def default_syntaxes(args: argparse.Namespace) -> list[str]:
    """The transfer syntaxes proposed for every storage SOP class without ``-cx``."""
    if args.request_little:
        return [EXPLICIT_LE]
    if args.request_big:
        return [EXPLICIT_BE]
    if args.request_implicit:
        return [IMPLICIT_LE]
    return list(DEFAULT_SYNTAXES)


def requested_contexts(args: argparse.Namespace, files: list[str],
                       logger: logging.Logger) -> tuple[list[ul.ProposedContext], list[str]]:
    """The presentation contexts to propose, and the files to send.

    With ``-cx`` only the (SOP class, transfer syntax) pairs of the files are proposed, one
    context each, and more than 128 of them raise ``ValueError`` like the original; without
    it every storage SOP class of pynetdicom's table (120) with the default syntaxes.
    """
    from pynetdicom.presentation import StoragePresentationContexts

    pairs: list[tuple[str, tuple[str, ...]]] = []
    if args.required_contexts:
        files, contexts = required_contexts(files, logger)
        pairs = [(abstract, (tsyntax,)) for abstract, syntaxes in contexts.items() for tsyntax in syntaxes]
        if len(pairs) > 128:
            raise ValueError(
                "More than 128 presentation contexts required with "
                "the '--required-contexts' flag, please try again "
                "without it or with fewer files"
            )
    else:
        syntaxes = tuple(default_syntaxes(args))
        pairs = [(str(cx.abstract_syntax), syntaxes) for cx in StoragePresentationContexts]
    proposed = [ul.ProposedContext(context_id=2 * i + 1, abstract_syntax=abstract, transfer_syntaxes=syntaxes)
                for i, (abstract, syntaxes) in enumerate(pairs)]
    return proposed, files


def send_files(assoc: Requestor, files: list[str], logger: logging.Logger) -> None:
    """One C-STORE per file; a bad or failed file is logged and the next one goes.

    The Message ID advances only after a send that raised nothing, and the statuses are
    only logged: storescu's exit status ignores them.
    """
    from pydicom.errors import InvalidDicomError

    msg_id = 1
    for fpath in files:
        logger.info(f"Sending file: {fpath}")
        try:
            store_file(assoc, fpath, msg_id, logger)
            msg_id += 1
        except InvalidDicomError:
            logger.error(f"Bad DICOM file: {fpath}")
        except Exception as exc:
            logger.error(f"Store failed: {fpath}")
            logger.exception(exc)


def store_file(assoc: Requestor, fpath: str, msg_id: int, logger: logging.Logger) -> None:
    """C-STORE one file: its dataset bytes streamed from the file when a context takes its
    transfer syntax, else re-encoded into an accepted uncompressed one (pynetdicom's rule);
    the SOP Class and Instance UIDs are the dataset's, not the file meta's."""
    from pydicom import dcmread

    if not assoc.established:
        raise RuntimeError("Failed to send a C-STORE request: the association is not established")
    head = dcmread(fpath, stop_before_pixels=True)
    sop_class, sop_instance = str(head.SOPClassUID), str(head.SOPInstanceUID)
    file_syntax = str(getattr(head.file_meta, "TransferSyntaxUID", "") or "")
    offset = dataset_offset(head)
    context = assoc.context_for(sop_class, file_syntax) if offset is not None else None
    request = ul.CStoreRQ(message_id=msg_id, affected_sop_class_uid=sop_class, affected_sop_instance_uid=sop_instance,
                          priority=PRIORITY_LOW)
    if context is not None:
        _log_sending(logger, request)
        with open(fpath, "rb") as fh:
            fh.seek(offset)  # type: ignore[arg-type]
            assoc.send_stream(context.context_id, request, fh)
    else:
        context = _converting_context(assoc, sop_class, file_syntax)
        data = encode_dataset(dcmread(fpath), context.transfer_syntax)
        _log_sending(logger, request)
        assoc.send(context.context_id, request, data)
    _await_store_response(assoc, msg_id, sop_class, logger)


def dataset_offset(head: Any) -> int | None:
    """Where the dataset starts in a file with a preamble and file meta: 128 + 4 bytes, the
    group length element (12 bytes) and the group; None when the group length is absent."""
    length = getattr(head.file_meta, "FileMetaInformationGroupLength", None)
    return None if length is None else 128 + 4 + 12 + int(length)


def _converting_context(assoc: Requestor, sop_class: str, file_syntax: str) -> ul.AcceptedContext:
    """An accepted context to re-encode an uncompressed dataset into, or pynetdicom's error."""
    from pydicom.uid import UID

    for group in SAME_BYTE_ORDER:
        if file_syntax in group:
            for syntax in group:
                context = assoc.context_for(sop_class, syntax)
                if context is not None and syntax != DEFLATED_LE:
                    return context
    msg = f"No presentation context for '{UID(sop_class).name}' has been accepted by the peer"
    if file_syntax:
        msg += f" with '{UID(file_syntax).name}' transfer syntax"
    raise ValueError(msg + " for the SCU role")


def encode_dataset(ds: Any, transfer_syntax: str) -> bytes:
    """A whole dataset in an uncompressed, non-deflated transfer syntax."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset
    from pydicom.uid import UID

    fp = DicomBytesIO()
    fp.is_little_endian = UID(transfer_syntax).is_little_endian
    fp.is_implicit_VR = UID(transfer_syntax).is_implicit_VR
    write_dataset(fp, ds)
    return fp.getvalue()


def _log_sending(logger: logging.Logger, request: ul.CStoreRQ) -> None:
    kind = {CT_IMAGE: ", (CT)", MR_IMAGE: ", (MR)"}.get(request.affected_sop_class_uid, "")
    logger.info(f"Sending Store Request: MsgID {request.message_id}{kind}")
    if logger.isEnabledFor(logging.DEBUG):
        for line in outgoing_store_dump(request):
            logger.debug(line)


def outgoing_store_dump(request: ul.CStoreRQ) -> list[str]:
    """The C-STORE-RQ as pynetdicom's ``-d`` dumps one it sends (``_handlers._send_c_store_rq``)."""
    priority = {2: "Low", 0: "Medium", 1: "High"}.get(request.priority, str(request.priority))
    return [f"{' OUTGOING DIMSE MESSAGE ':=^76}",
            "Message Type                  : C-STORE RQ",
            f"Message ID                    : {request.message_id}",
            f"Affected SOP Class UID        : {uid_name(request.affected_sop_class_uid)}",
            f"Affected SOP Instance UID     : {request.affected_sop_instance_uid}",
            "Data Set                      : Present",
            f"Priority                      : {priority}",
            f"{' END DIMSE MESSAGE ':=^76}"]


def incoming_store_dump(context_id: int, response: ul.CStoreRSP, status_text: str) -> list[str]:
    """The C-STORE-RSP as pynetdicom's ``-d`` dumps one it receives (``_handlers._recv_c_store_rsp``):
    the optional UIDs only when the peer sent them."""
    lines = [f"{' INCOMING DIMSE MESSAGE ':=^76}",
             "Message Type                  : C-STORE RSP",
             f"Presentation Context ID       : {context_id}",
             f"Message ID Being Responded To : {response.message_id_being_responded_to}"]
    if response.affected_sop_class_uid is not None:
        lines.append(f"Affected SOP Class UID        : {uid_name(response.affected_sop_class_uid)}")
    if response.affected_sop_instance_uid is not None:
        lines.append(f"Affected SOP Instance UID     : {response.affected_sop_instance_uid}")
    return [*lines, f"Status                        : {status_text}", f"{' END DIMSE MESSAGE ':=^76}"]


def uid_name(uid: str) -> str:
    """pydicom's name of a UID (``Secondary Capture Image Storage``), the UID itself if unknown."""
    from pydicom.uid import UID

    return str(UID(uid).name)


def _await_store_response(assoc: Requestor, msg_id: int, sop_class: str, logger: logging.Logger) -> None:
    """Log the C-STORE-RSP as pynetdicom does; a DIMSE timeout aborts the association."""
    try:
        response = assoc.wait_response(msg_id)
    except rq.AssociationError as exc:
        if exc.kind == "dimse-timeout":
            logger.error("DIMSE timeout reached while waiting for message response")
            logger.info("Aborting Association")
            assoc.abort()
        elif exc.kind == "aborted":
            logger.error("Association Aborted")
        else:
            logger.error("Connection closed while waiting for DIMSE message")
        return
    debug = logger.isEnabledFor(logging.DEBUG)
    if debug:  # pynetdicom decodes each command set with pydicom, and says so
        logger.debug('pydicom.read_dataset() TransferSyntax="Little Endian Implicit"')
    status_text = store_status_text(int(response.message.status), sop_class)  # type: ignore[union-attr]
    logger.info(f"Received Store Response (Status: {status_text})")
    if debug and isinstance(response.message, ul.CStoreRSP):
        for line in incoming_store_dump(response.context_id, response.message, status_text):
            logger.debug(line)


def store_status_text(status: int, sop_class: str) -> str:
    """``0x0000 - Success``: the meaning from the storage service class's status table."""
    from pynetdicom.sop_class import uid_to_service_class

    try:
        statuses = uid_to_service_class(sop_class).statuses
    except Exception:  # an unknown SOP class has no table
        statuses = {}
    return f"0x{status:04X} - {statuses[status][0]}" if status in statuses else f"0x{status:04X} - Unknown"


# --------------------------------------------------------------------------- association


REJECT_RESULTS = {1: "Rejected (Permanent)", 2: "Rejected (Transient)"}
REJECT_SOURCES = {1: "DUL service-user", 2: "DUL service-provider (ACSE related)",
                  3: "DUL service-provider (presentation related)"}
REJECT_REASONS = {(1, 1): "No reason given", (1, 2): "Application context name not supported",
                  (1, 3): "Calling AE title not recognised", (1, 7): "Called AE title not recognised",
                  (2, 1): "No reason given", (2, 2): "Protocol version not supported",
                  (3, 1): "Temporary congestion", (3, 2): "Local limit exceeded"}
CONTEXT_RESULTS = {0: "Accepted", 1: "User Rejection", 2: "Provider Rejection", 3: "Abstract Syntax Not Supported",
                   4: "Transfer Syntax(es) Not Supported"}


def _name(uid: str) -> str:
    from pydicom.uid import UID

    return UID(uid).name


def dump_request(request: ul.AssociateRequest) -> list[str]:
    """pynetdicom's debug layout of an outgoing A-ASSOCIATE-RQ (scripts grep it)."""
    lines = ["Request Parameters:", f"{' OUTGOING A-ASSOCIATE-RQ PDU ':=^76}",
             f"Our Implementation Class UID:      {request.implementation_class_uid}"]
    if request.implementation_version_name:
        lines.append(f"Our Implementation Version Name:   {request.implementation_version_name}")
    lines += [f"Application Context Name:    {request.application_context}",
              f"Calling Application Name:    {request.calling_ae}", f"Called Application Name:     {request.called_ae}",
              f"Our Max PDU Receive Size:    {request.max_pdu}",
              "Presentation Context:" if len(request.contexts) == 1 else "Presentation Contexts:"]
    for cx in request.contexts:
        lines += [f"  Context ID:        {cx.context_id} (Proposed)", f"    Abstract Syntax: ={_name(cx.abstract_syntax)}",
                  "    Proposed SCP/SCU Role: Default",
                  "    Proposed Transfer Syntax:" if len(cx.transfer_syntaxes) == 1 else "    Proposed Transfer Syntaxes:"]
        lines += [f"      ={_name(ts)}" for ts in cx.transfer_syntaxes]
    lines += ["Requested Extended Negotiation: None", "Requested Common Extended Negotiation: None",
              "Requested Asynchronous Operations Window Negotiation: None", "Requested User Identity Negotiation: None",
              f"{' END A-ASSOCIATE-RQ PDU ':=^76}"]
    return lines


def dump_accept(assoc: Requestor) -> list[str]:
    """pynetdicom's debug layout of an incoming A-ASSOCIATE-AC."""
    ac, rq_ = assoc.accept, assoc.engine.request
    assert ac is not None and rq_ is not None
    proposed = {cx.context_id: cx.abstract_syntax for cx in rq_.contexts}
    lines = ["Accept Parameters:", f"{' INCOMING A-ASSOCIATE-AC PDU ':=^76}",
             f"Their Implementation Class UID:    {ac.implementation_class_uid or 'unknown'}",
             f"Their Implementation Version Name: {ac.implementation_version_name or 'unknown'}",
             f"Application Context Name:    {ac.application_context}",
             f"Calling Application Name:    {ac.calling_ae}", f"Called Application Name:     {ac.called_ae}",
             f"Their Max PDU Receive Size:  {ac.max_pdu}", "Presentation Contexts:"]
    for cx in sorted(ac.contexts, key=lambda c: c.context_id):
        lines += [f"  Context ID:        {cx.context_id} ({CONTEXT_RESULTS.get(cx.result, cx.result)})",
                  f"    Abstract Syntax: ={_name(proposed[cx.context_id])}"]
        if cx.result == ul.ACCEPTANCE:
            lines += ["    Accepted SCP/SCU Role: Default", f"    Accepted Transfer Syntax: ={_name(cx.transfer_syntax)}"]
    window = ac.async_window
    lines += ["Accepted Extended Negotiation: None"]
    if window is not None:
        lines += ["Accepted Asynchronous Operations Window Negotiation:",
                  f"  Maximum Invoked Operations:     {window.max_invoked}",
                  f"  Maximum Performed Operations:   {window.max_performed}"]
    else:
        lines.append("Accepted Asynchronous Operations Window Negotiation: None")
    lines += [f"User Identity Negotiation Response: {'Yes' if ac.user_identity_response else 'None'}",
              f"{' END A-ASSOCIATE-AC PDU ':=^76}"]
    return lines


def associate(args: argparse.Namespace, proposed: list[ul.ProposedContext], logger: logging.Logger) -> Requestor | None:
    """Request the association; None (after pynetdicom's log lines) when it is not established."""
    request = rq.request(args.called_aet, args.calling_aet, proposed, max_pdu=args.max_pdu)
    logger.info("Requesting Association")
    for line in dump_request(request):
        logger.debug(line)
    timeouts = rq.Timeouts(connect=args.network_timeout, acse=args.acse_timeout, dimse=args.dimse_timeout)
    try:
        assoc = rq.associate(args.addr, args.port, request, timeouts=timeouts)
    except rq.AssociationError as exc:
        _log_request_failure(logger, exc)
        return None
    for line in dump_accept(assoc):
        logger.debug(line)
    if not assoc.contexts:
        logger.error("No accepted presentation contexts")
        assoc.abort()
        return None
    logger.info("Association Accepted")
    return assoc


def _log_request_failure(logger: logging.Logger, exc: rq.AssociationError) -> None:
    if exc.reject is not None:
        rj = exc.reject
        logger.error("Association Rejected")
        logger.error(f"Result: {REJECT_RESULTS.get(rj.result, rj.result)}, Source: {REJECT_SOURCES.get(rj.source, rj.source)}")
        logger.error(f"Reason: {REJECT_REASONS.get((rj.source, rj.reason), 'Reserved')}")
    elif exc.kind in ("connect", "tls"):
        logger.error("Association request failed: unable to connect to remote")
        logger.error(f"TCP Initialisation Error: {exc.cause}")
    elif exc.kind == "acse-timeout":
        logger.error("ACSE timeout reached while waiting for response to association request")
    elif exc.kind == "aborted":
        logger.error("Association Aborted")
    else:
        logger.error(f"Association request failed: {exc}")


def run(args: argparse.Namespace, logger: logging.Logger) -> int:
    """Collect, associate, send, release; the exit status as the original gives it."""
    logger.debug(f"storescu.py v{__version__}")
    logger.debug("")
    files, bad_paths = collect_files(args.path, args.recurse)
    for bad in bad_paths:
        logger.error(f"Cannot access path: {bad}")

    proposed, files = requested_contexts(args, files, logger)
    if not files:
        logger.warning("No suitable DICOM files found")
        return 0
    assoc = associate(args, proposed, logger)
    if assoc is None:
        return 1
    try:
        send_files(assoc, files, logger)
    finally:
        if assoc.established:
            logger.info("Releasing Association")
            try:
                assoc.release()
            except rq.AssociationError:
                logger.info("Association Aborted")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point for ``nodectl storescu``; returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    if args.version:
        print(f"storescu.py v{__version__}")
        return 0
    with tool_logging(args.log_type, args.log_level, APP_LOGGER_NAME) as logger:
        try:
            return run(args, logger)
        except Exception:
            # The original dies with a traceback (exit 1); say the same without dying.
            traceback.print_exc()
            return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
