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

pynetdicom is the SCU engine and is imported inside functions, as for every tool module.
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

from node import identify

__version__ = "0.3.0"  # the version pynetdicom 3.0.4's storescu reports

DEFAULT_MAX_PDU = 16382  # pynetdicom._globals.DEFAULT_MAX_LENGTH
LOG_FORMAT = "%(levelname).1s: %(message)s"
LOG_LEVELS = {
    "critical": logging.CRITICAL,
    "error": logging.ERROR,
    "warn": logging.WARNING,
    "info": logging.INFO,
    "debug": logging.DEBUG,
}
APP_LOGGER_NAME = "storescu"  # pynetdicom's app logger name, kept for identical output

# Explicit VR LE first: the code's order, not the manual's (see spec/storescu.md).
EXPLICIT_LE = "1.2.840.10008.1.2.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
DEFLATED_LE = "1.2.840.10008.1.2.1.99"
EXPLICIT_BE = "1.2.840.10008.1.2.2"
DEFAULT_SYNTAXES = [EXPLICIT_LE, IMPLICIT_LE, DEFLATED_LE, EXPLICIT_BE]


class _Parser(argparse.ArgumentParser):
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


def build_parser() -> argparse.ArgumentParser:
    """pynetdicom 3.0.4 storescu's parser: same options, groups, help and error texts."""
    parser = _Parser(
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


def add_contexts(ae: Any, args: argparse.Namespace, files: list[str], logger: logging.Logger) -> list[str]:
    """Add the requested presentation contexts to ``ae``; return the files to send.

    With ``-cx`` only the (SOP class, transfer syntax) pairs of the files are proposed,
    and more than 128 of them raise ``ValueError`` like the original.
    """
    from pynetdicom import StoragePresentationContexts

    if args.required_contexts:
        files, contexts = required_contexts(files, logger)
        try:
            for abstract, syntaxes in contexts.items():
                for tsyntax in syntaxes:
                    ae.add_requested_context(abstract, tsyntax)
        except ValueError:
            raise ValueError(
                "More than 128 presentation contexts required with "
                "the '--required-contexts' flag, please try again "
                "without it or with fewer files"
            ) from None
        return files
    syntaxes = default_syntaxes(args)
    for cx in StoragePresentationContexts:
        ae.add_requested_context(cx.abstract_syntax, syntaxes)
    return files


def send_files(assoc: Any, files: list[str], logger: logging.Logger) -> None:
    """One C-STORE per file; a bad or failed file is logged and the next one goes.

    The Message ID advances only after a send that raised nothing, and the statuses are
    only logged (by pynetdicom): storescu's exit status ignores them.
    """
    from pydicom import dcmread
    from pydicom.errors import InvalidDicomError

    msg_id = 1
    for fpath in files:
        logger.info(f"Sending file: {fpath}")
        try:
            ds = dcmread(fpath)
            assoc.send_c_store(ds, msg_id)
            msg_id += 1
        except InvalidDicomError:
            logger.error(f"Bad DICOM file: {fpath}")
        except Exception as exc:
            logger.error(f"Store failed: {fpath}")
            logger.exception(exc)


def run(args: argparse.Namespace, logger: logging.Logger) -> int:
    """Collect, associate, send, release; the exit status as the original gives it."""
    from pynetdicom import AE

    logger.debug(f"storescu.py v{__version__}")
    logger.debug("")
    files, bad_paths = collect_files(args.path, args.recurse)
    for bad in bad_paths:
        logger.error(f"Cannot access path: {bad}")

    ae = identify(AE(ae_title=args.calling_aet))
    ae.acse_timeout = args.acse_timeout
    ae.dimse_timeout = args.dimse_timeout
    ae.network_timeout = args.network_timeout
    files = add_contexts(ae, args, files, logger)
    if not files:
        logger.warning("No suitable DICOM files found")
        return 0

    assoc = ae.associate(args.addr, args.port, ae_title=args.called_aet, max_pdu=args.max_pdu)
    if not assoc.is_established:
        return 1
    try:
        send_files(assoc, files, logger)
    finally:
        assoc.release()
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
