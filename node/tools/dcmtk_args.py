"""DCMTK's command line conventions (``OFCommandLine``/``OFConsoleApplication``/``OFLog``), declaratively.

Scripts written for DCMTK tools must keep working unchanged, so ``nodectl echoscu`` (and later
``stcomscu``) parse their arguments exactly the way DCMTK does, which argparse cannot do:

- An argument is an *option* when it is at least two characters long, starts with ``-`` or
  ``+`` and its second character is not a digit (``-5`` and ``+5`` are parameters). The sign is
  part of the name: ``+tls`` and ``-tls`` are different options.
- Each option has a long spelling and usually a short one; values are the *following separate
  arguments*, taken verbatim even when they look like options (``-aet -x`` sets ``-x``).
- Options and parameters may be interleaved. Parsing stops at the first unknown option.
- ``@file`` is replaced by the whitespace separated words of that file (double quotes group
  words); words read from a command file are not expanded again.
- Options are looked up from the right: when an option is repeated, or several options of one
  block (same ``dest``) are given, the rightmost wins, and only its value is checked.
- No argument at all prints the usage on stdout and exits 0 (if parameters are required);
  ``-h``/``--version`` and other *exclusive* options bypass the parameter count check.
- Errors print the tool header and ``error: <text>`` on stderr and exit 1; quiet mode (``-q``
  or an equivalent ``-ll fatal``) suppresses the text but not the exit code.
- Numbers are read like C's ``sscanf``: ``%li`` for signed values (``0x10`` is 16, ``010`` is
  8, ``4096x`` is 4096), ``%lu`` for unsigned ones, and range-checked with DCMTK's texts.

A tool declares a :class:`ToolSpec`: parameters plus a table of :class:`Option` and
:class:`Group` rows, in the order the usage text shows them. :func:`parse` applies the rules
above and returns a :class:`CommandLine`; :meth:`App.evaluate` turns it into one value per
``dest`` (rightmost wins), and :func:`configure_logging` handles ``-q -v -d -ll -lc
--arguments`` like ``OFLog::configureFromCommandLine``. Log lines look like ``I: text``: level
letter, colon, space, one prefix per line of a multi-line message.

Pure: no sockets and no pynetdicom here, so syntax errors cost no network library import.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import IO, Any, Literal

EXITCODE_NO_ERROR = 0
EXITCODE_COMMANDLINE_SYNTAX_ERROR = 1

# Python logging levels for DCMTK's six (log4cplus) levels; TRACE sits below DEBUG.
TRACE = 5
LEVELS = {
    "fatal": logging.CRITICAL,
    "error": logging.ERROR,
    "warn": logging.WARNING,
    "info": logging.INFO,
    "debug": logging.DEBUG,
    "trace": TRACE,
}
LEVEL_LETTERS = {logging.CRITICAL: "F", logging.ERROR: "E", logging.WARNING: "W",
                 logging.INFO: "I", logging.DEBUG: "D", TRACE: "T"}

LONG_COLUMN = 19  # LONGCOL in the DCMTK tools
SHORT_COLUMN = 4  # SHORTCOL
_COLUMN_SPACE = 2

ValueKind = Literal["str", "int", "uint"]


# --------------------------------------------------------------------------- declarations


@dataclass(frozen=True, slots=True, kw_only=True)
class Option:
    """One row of a tool's option table (``OFCommandLine::addOption``).

    ``dest`` groups options into a block where the rightmost wins (``-i4``/``-i6``/``-i0``);
    a flag stores ``const`` (default ``True``) into it. An option with ``values`` stores its
    value(s): one converted value, or a tuple when it takes several. ``multi`` collects every
    occurrence in command line order instead (``+cf a +cf b``).
    """

    long: str
    short: str = ""
    values: int = 0
    value_help: str = ""
    help: str = ""
    exclusive: bool = False
    dest: str = ""
    const: Any = True
    kind: ValueKind = "str"
    low: int | None = None
    high: int | None = None
    multi: bool = False
    internal: bool = False  # accepted but not listed in the usage text

    @property
    def key(self) -> str:
        """The ``dest`` this option writes (its long name without dashes by default)."""
        return self.dest or self.long.lstrip("+-").replace("-", "_")


@dataclass(frozen=True, slots=True)
class Group:
    """A group (``sub=False``) or sub-group heading of the usage text, with its column widths."""

    title: str
    sub: bool = False
    long_column: int = 0  # 0: the tool's default column width
    short_column: int = 0


@dataclass(frozen=True, slots=True)
class Param:
    """A positional parameter; ``optional`` parameters follow the mandatory ones."""

    name: str
    help: str = ""
    optional: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class ToolSpec:
    """Everything the parser needs to know about one tool."""

    name: str
    description: str
    rcsid: str
    params: tuple[Param, ...]
    table: tuple[Option | Group, ...]
    param_column: int = LONG_COLUMN + SHORT_COLUMN + 4
    long_column: int = LONG_COLUMN
    short_column: int = SHORT_COLUMN
    host_info: tuple[str, ...] = ()
    # dests checked before the rest of the table (DCMTK checks in code order, not usage order)
    eval_order: tuple[str, ...] = ()

    def options(self) -> Iterator[Option]:
        """The option rows, without headings."""
        return (row for row in self.table if isinstance(row, Option))

    def lookup(self, arg: str) -> Option | None:
        """The option spelled ``arg`` (long or short form), or None."""
        for opt in self.options():
            if arg == opt.long or (opt.short and arg == opt.short):
                return opt
        return None

    def by_long(self, long: str) -> Option:
        """The option whose long spelling is ``long`` (a programming error if absent)."""
        for opt in self.options():
            if opt.long == long:
                return opt
        raise KeyError(long)


# --------------------------------------------------------------------------- errors


class CommandLineError(Exception):
    """A syntax error; its text is what DCMTK prints after ``error:``. Exit code 1."""


class ToolExit(Exception):
    """Leave ``main`` with this exit code (DCMTK calls ``exit()`` from deep inside)."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


# --------------------------------------------------------------------------- parsing


def is_option(arg: str) -> bool:
    """``OFCommandLine::checkOption``: a sign followed by a non-digit, two characters or more."""
    return len(arg) >= 2 and arg[0] in "+-" and not arg[1].isdigit()


def split_command_file(text: str) -> list[str]:
    """Words of a command file: whitespace separates, double quotes group (and are removed)."""
    words: list[str] = []
    for match in re.finditer(r'"([^"]*)"|(\S+)', text):
        quoted, plain = match.groups()
        words.append(quoted if quoted is not None else plain)
    return words


def expand_command_files(argv: Sequence[str]) -> list[str]:
    """Replace every ``@file`` argument by the file's words; nested ``@`` stay literal."""
    out: list[str] = []
    for arg in argv:
        if len(arg) > 1 and arg.startswith("@"):
            try:
                with open(arg[1:], encoding="utf-8", errors="surrogateescape") as fh:
                    out.extend(split_command_file(fh.read()))
            except OSError:
                raise CommandLineError(f"Cannot open command file '{arg[1:]}'") from None
        else:
            out.append(arg)
    return out


@dataclass(slots=True)
class Occurrence:
    """One option found on the command line: its long name, its values, its position."""

    option: Option
    values: tuple[str, ...]
    position: int


@dataclass(slots=True)
class CommandLine:
    """The parsed command line, searched from the right like DCMTK's ``findOption``."""

    spec: ToolSpec
    expanded: list[str]  # options in long form, as ``--arguments`` prints them
    occurrences: list[Occurrence] = field(default_factory=list)
    params: list[str] = field(default_factory=list)
    status: Literal["normal", "no-arguments", "exclusive"] = "normal"

    def find(self, long: str) -> Occurrence | None:
        """The rightmost occurrence of option ``long``."""
        for occ in reversed(self.occurrences):
            if occ.option.long == long:
                return occ
        return None

    def find_all(self, long: str) -> list[Occurrence]:
        """Every occurrence of ``long`` in command line order (DCMTK's FOM_First/FOM_Next)."""
        return [occ for occ in self.occurrences if occ.option.long == long]

    def has(self, long: str) -> bool:
        """Whether option ``long`` was given at all."""
        return self.find(long) is not None

    def rightmost(self, dest: str) -> Occurrence | None:
        """The rightmost occurrence among all options of block ``dest`` (an option block)."""
        for occ in reversed(self.occurrences):
            if occ.option.key == dest:
                return occ
        return None


def parse(spec: ToolSpec, argv: Sequence[str]) -> CommandLine:
    """``OFCommandLine::parseLine``: expand ``@files``, split options from parameters, count.

    Raises :class:`CommandLineError` for an unreadable command file, an unknown option, a
    missing option value, a missing parameter or too many parameters.
    """
    args = expand_command_files(argv)
    cmd = CommandLine(spec=spec, expanded=[])
    i = 0
    while i < len(args):
        arg = args[i]
        if not is_option(arg):
            cmd.params.append(arg)
            cmd.expanded.append(arg)
            i += 1
            continue
        opt = spec.lookup(arg)
        if opt is None:
            raise CommandLineError(f"Unknown option {arg}")
        if opt.values and i + opt.values >= len(args):
            raise CommandLineError(f"Missing value for option {opt.long}")
        values = tuple(args[i + 1 : i + 1 + opt.values])
        cmd.occurrences.append(Occurrence(opt, values, len(cmd.expanded)))
        cmd.expanded.append(opt.long)
        cmd.expanded.extend(values)
        i += 1 + opt.values
    cmd.status = _check_param_count(spec, cmd)
    return cmd


def _check_param_count(spec: ToolSpec, cmd: CommandLine) -> Literal["normal", "no-arguments", "exclusive"]:
    """``OFCommandLine::checkParamCount``: no arguments, exclusive option, then the counts."""
    if not cmd.expanded:
        return "no-arguments"
    if any(occ.option.exclusive for occ in cmd.occurrences):
        return "exclusive"
    mandatory = [p for p in spec.params if not p.optional]
    if len(cmd.params) < len(mandatory):
        raise CommandLineError(f"Missing parameter {spec.params[len(cmd.params)].name}")
    if len(cmd.params) > len(spec.params):
        raise CommandLineError("Too many parameters")
    return "normal"


# --------------------------------------------------------------------------- numbers


_SIGNED_RE = re.compile(r"\s*([+-]?)(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)")
_UNSIGNED_RE = re.compile(r"\s*([+-]?)([0-9]+)")
_LONG_MAX = 2**63 - 1
_ULONG_MAX = 2**64 - 1


def scan_signed(text: str) -> int | None:
    """C ``sscanf(text, "%li")``: base from the prefix, longest valid prefix, saturating."""
    match = _SIGNED_RE.match(text)
    if not match:
        return None
    sign, digits = match.groups()
    if digits[:2] in ("0x", "0X"):
        value = int(digits, 16)
    elif digits.startswith("0") and len(digits) > 1:
        value = int(digits, 8)
    else:
        value = int(digits)
    value = -value if sign == "-" else value
    return max(-_LONG_MAX - 1, min(_LONG_MAX, value))


def scan_unsigned(text: str) -> int | None:
    """C ``sscanf(text, "%lu")``: decimal; a minus sign wraps around like strtoul does."""
    match = _UNSIGNED_RE.match(text)
    if not match:
        return None
    sign, digits = match.groups()
    value = min(int(digits), _ULONG_MAX)
    return (_ULONG_MAX + 1 - value) % (_ULONG_MAX + 1) if sign == "-" else value


def option_number(occ: Occurrence, kind: ValueKind, low: int | None, high: int | None, index: int = 0) -> int:
    """Convert and range-check an option value with DCMTK's ``Invalid value for option`` texts.

    Unsigned option values refuse a leading minus sign (DCMTK >= 3.6.x prints the bare value).
    """
    text = occ.values[index]
    name = occ.option.long
    if kind == "uint":
        value = None if text.lstrip().startswith("-") else scan_unsigned(text)
    else:
        value = scan_signed(text)
    if value is None:
        raise CommandLineError(f"Invalid value for option {name} ({text})")
    if low is not None and value < low:
        raise CommandLineError(f"Invalid value for option {name} (underflow: {text})")
    if high is not None and value > high:
        raise CommandLineError(f"Invalid value for option {name} (overflow: {text})")
    return value


def param_number(text: str, *, low: int | None, high: int | None, signed: bool = False) -> int:
    """Convert and range-check a parameter (``getParamAndCheckMinMax``)."""
    value = scan_signed(text) if signed else scan_unsigned(text)
    if value is None:
        raise CommandLineError(f"Invalid parameter value {text}")
    if low is not None and value < low:
        raise CommandLineError(f"Invalid parameter value {text} (underflow)")
    if high is not None and value > high:
        raise CommandLineError(f"Invalid parameter value {text} (overflow)")
    return value


# --------------------------------------------------------------------------- usage text


def usage_text(spec: ToolSpec) -> str:
    """``printUsage``: header, syntax line, parameter and option tables, as DCMTK lays them out."""
    syntax = " [options]" if any(True for _ in spec.options()) else ""
    for p in spec.params:
        syntax += f" [{p.name}]" if p.optional else f" {p.name}"
    parts = [header_text(spec), f"usage: {spec.name}{syntax}\n"]
    params = _param_string(spec)
    if params:
        parts.append("\n" + params)
    parts.append("\n" + _option_string(spec))
    return "".join(parts) + "\n"


def header_text(spec: ToolSpec, host_info: bool = False) -> str:
    """``printHeader``: identification, blank line, ``name: description``, optional host info."""
    text = f"{spec.rcsid}\n\n{spec.name}: {spec.description}\n"
    if host_info and spec.host_info:
        text += "\n" + "".join(line + "\n" for line in spec.host_info)
    return text


def _param_string(spec: ToolSpec) -> str:
    """``getParamString``: two-space indent, names padded to the parameter column."""
    width = max([spec.param_column] + [len(p.name) for p in spec.params if p.help])
    lines = [f"  {p.name:<{width}}  " + p.help.replace("\n", "\n" + " " * (width + 4))
             for p in spec.params if p.help]
    return "parameters:\n" + "".join(line + "\n" for line in lines) if lines else ""


def _option_string(spec: ToolSpec) -> str:
    """``getOptionString``: per-group column widths, value help on its own line, wrapped help."""
    out: list[str] = []
    rows = [r for r in spec.table if not (isinstance(r, Option) and r.internal)]
    short_size, long_size, indent, new_group = spec.short_column, spec.long_column, 0, True
    for n, row in enumerate(rows):
        if new_group:
            for nxt in rows[n:]:
                if not isinstance(nxt, Option):
                    break
                short_size = max(short_size, len(nxt.short))
                long_size = max(long_size, len(nxt.long))
            new_group = False
        if isinstance(row, Group):
            new_group = True
            long_size = row.long_column or spec.long_column
            short_size = row.short_column or spec.short_column
            indent = 4 if row.sub else 2
            out.append(("  " if row.sub else "") + row.title + "\n")
            continue
        line = " " * indent
        if short_size > 0:
            line += f"{row.short:<{short_size}}" + " " * _COLUMN_SPACE
        line += f"{row.long:<{long_size}}" + " " * _COLUMN_SPACE
        if row.value_help:
            line += row.value_help + "\n" + " " * (indent + short_size + long_size + _COLUMN_SPACE)
            if short_size > 0:
                line += " " * _COLUMN_SPACE
        wrap = "\n" + " " * (indent + short_size + long_size + 2 * _COLUMN_SPACE)
        out.append(line + row.help.replace("\n", wrap) + "\n")
    return "".join(out)


# --------------------------------------------------------------------------- logging


class DcmtkFormatter(logging.Formatter):
    """``L: text`` for every line of a record, L being DCMTK's level letter."""

    def format(self, record: logging.LogRecord) -> str:
        letter = getattr(record, "dcmtk_letter", None) or LEVEL_LETTERS.get(record.levelno) or record.levelname[:1]
        text = record.getMessage()
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return "\n".join(f"{letter}: {line}" for line in text.split("\n"))


@dataclass(slots=True)
class LogSetup:
    """What :func:`configure_logging` decided: the level, and whether errors are silenced."""

    level: int
    quiet: bool
    stream: Literal["stderr", "stdout"] = "stderr"


# --------------------------------------------------------------------------- the application


class App:
    """``OFConsoleApplication``: prints usage, headers and errors; evaluates the option table.

    Output streams are attributes so a caller (or a test) can redirect them; the logger is the
    tool's own (``node.tools.<name>``), never the root logger.
    """

    def __init__(self, spec: ToolSpec, *, stdout: IO[str] | None = None, stderr: IO[str] | None = None) -> None:
        self.spec = spec
        self.stdout = stdout or sys.stdout
        self.stderr = stderr or sys.stderr
        self.quiet = False
        self.logger = logging.getLogger(f"node.tools.{spec.name}")

    # -- printing

    def print_usage(self) -> None:
        """Usage on stdout, then exit 0 (DCMTK's ``printUsage``)."""
        self.stdout.write(usage_text(self.spec))
        self.stdout.flush()
        raise ToolExit(EXITCODE_NO_ERROR)

    def print_error(self, text: str, code: int = EXITCODE_COMMANDLINE_SYNTAX_ERROR) -> None:
        """Header and ``error: text`` on stderr (unless quiet), then exit ``code``."""
        if not self.quiet:
            self.stderr.write(header_text(self.spec) + f"error: {text}\n")
            self.stderr.flush()
        raise ToolExit(code)

    def check_dependence(self, sub: str, base: str, condition: bool) -> None:
        """``checkDependence``: ``X only allowed with Y``."""
        if not condition:
            self.print_error(f"{sub} only allowed with {base}")

    def check_conflict(self, first: str, second: str, condition: bool) -> None:
        """``checkConflict``: ``X not allowed with Y``."""
        if condition:
            self.print_error(f"{first} not allowed with {second}")

    # -- parsing

    def parse(self, argv: Sequence[str]) -> CommandLine:
        """Parse, print usage for an empty command line or ``--help``; errors exit 1."""
        try:
            cmd = parse(self.spec, argv)
        except CommandLineError as exc:
            self.print_error(str(exc))
            raise AssertionError("unreachable")  # pragma: no cover
        mandatory = any(not p.optional for p in self.spec.params)
        if cmd.status == "no-arguments" and mandatory:
            self.print_usage()
        if cmd.status == "exclusive" and cmd.has("--help"):
            self.print_usage()
        return cmd

    def guard(self, func: Any, *args: Any, **kwargs: Any) -> Any:
        """Run a conversion; a :class:`CommandLineError` becomes DCMTK's error exit."""
        try:
            return func(*args, **kwargs)
        except CommandLineError as exc:
            self.print_error(str(exc))

    def evaluate(self, cmd: CommandLine, skip: Sequence[str] = ()) -> dict[str, Any]:
        """One value per ``dest``: the rightmost option of each block, its value range-checked.

        Absent blocks are absent from the result, so ``values.get(dest, default)`` applies
        the tool's default. ``multi`` options give a list of every occurrence's value(s).
        Blocks named in ``spec.eval_order`` are checked first, then the table order.
        """
        keys: list[str] = list(self.spec.eval_order)
        for opt in self.spec.options():
            if opt.key not in keys:
                keys.append(opt.key)
        result: dict[str, Any] = {}
        for key in keys:
            if key in skip:
                continue
            opts = [o for o in self.spec.options() if o.key == key]
            if any(o.multi for o in opts):
                found = [occ for occ in cmd.occurrences if occ.option.key == key]
                if found:
                    result[key] = [self._value(occ) for occ in found]
                continue
            occ = cmd.rightmost(key)
            if occ is not None:
                result[key] = self._value(occ)
        return result

    def _value(self, occ: Occurrence) -> Any:
        """The stored value of one occurrence: ``const`` for a flag, else converted values."""
        opt = occ.option
        if opt.values == 0:
            return opt.const
        if opt.kind == "str":
            converted: list[Any] = list(occ.values)
        else:
            converted = [self.guard(option_number, occ, opt.kind, opt.low, opt.high, i)
                         for i in range(opt.values)]
        return converted[0] if opt.values == 1 else tuple(converted)


# The general options every DCMTK tool declares through OFLog::addOptions, in usage order.
def general_options(*, help_text: bool = True) -> tuple[Option | Group, ...]:
    """``-h --version --arguments -q -v -d -ll -lc`` rows for a tool's table."""
    rows: list[Option | Group] = [Group("general options:", long_column=LONG_COLUMN, short_column=SHORT_COLUMN + 2)]
    if help_text:
        rows.append(Option(long="--help", short="-h", help="print this help text and exit", exclusive=True))
    rows += [
        Option(long="--version", help="print version information and exit", exclusive=True),
        Option(long="--arguments", help="print expanded command line arguments"),
        Option(long="--quiet", short="-q", help="quiet mode, print no warnings and errors", dest="log_mode", const="quiet"),
        Option(long="--verbose", short="-v", help="verbose mode, print processing details", dest="log_mode", const="verbose"),
        Option(long="--debug", short="-d", help="debug mode, print debug information", dest="log_mode", const="debug"),
        Option(long="--log-level", short="-ll", values=1, value_help="[l]evel: string constant",
               help="(fatal, error, warn, info, debug, trace)\nuse level l for the logger"),
        Option(long="--log-config", short="-lc", values=1, value_help="[f]ilename: string",
               help="use config file f for the logger"),
    ]
    return tuple(rows)


LOGGING_DESTS = ("log_mode", "log_level", "log_config")


def configure_logging(app: App, cmd: CommandLine, default: int = logging.WARNING) -> LogSetup:
    """``OFLog::configureFromCommandLine``: pick the level, check conflicts, ``--arguments``.

    ``-q``/``-v``/``-d`` form one block (rightmost wins); ``-ll`` conflicts with them and
    ``-lc`` with all of them. ``-lc`` is checked like DCMTK (file exists, is readable, holds
    log4cplus settings and a root logger) and then honoured by :func:`log_config_level` (root
    level and console stream); what it cannot honour exits as not supported.
    Quiet mode (level above ERROR) silences later error texts. ``--arguments`` is always
    printed, whatever the level.
    """
    mode_occ = cmd.rightmost("log_mode")
    mode = mode_occ.option.const if mode_occ else None
    level = {"quiet": logging.CRITICAL, "verbose": logging.INFO, "debug": logging.DEBUG}.get(mode or "", None)
    level_occ = cmd.find("--log-level")
    if level_occ is not None:
        app.check_conflict("--log-level", "--verbose, --debug or --quiet", level is not None)
        name = level_occ.values[0]
        if name not in LEVELS:
            app.print_error("Invalid log level for --log-level option")
        level = LEVELS[name]
    config_occ = cmd.find("--log-config")
    stream = "stderr"
    if config_occ is not None:
        app.check_conflict("--log-config", "--log-level", level_occ is not None)
        app.check_conflict("--log-config", "--verbose, --debug or --quiet", level is not None)
        level, stream = log_config_level(app, config_occ.values[0])
    if level is None:
        level = default
    setup = LogSetup(level=level, quiet=level > logging.ERROR, stream=stream)  # type: ignore[arg-type]
    app.quiet = setup.quiet
    if cmd.has("--arguments"):
        listed = "".join(f"'{arg}' " for arg in cmd.expanded if arg)
        count = len(cmd.expanded)
        app.stderr.write(f"I: calling '{app.spec.name}' with {count} arguments: {listed}\nI: \n")
        app.stderr.flush()
    return setup


def log_config_level(app: App, path: str) -> tuple[int, str]:
    """Read a log4cplus properties file the way DCMTK checks it; return (level, stream).

    Only what we can honour is accepted: ``log4cplus.rootLogger = LEVEL, NAME`` with exactly
    one ``ConsoleAppender`` using DCMTK's console pattern ``%P: %m%n`` (our ``L: text``
    lines), on stderr when ``logToStdErr=true`` and on stdout otherwise, as log4cplus does.
    File, syslog or rolling appenders and other layouts exit with a clear "not supported"
    error rather than being ignored.
    """
    if not os.path.exists(path):
        app.print_error("Specified --log-config file does not exist")
    if not os.access(path, os.R_OK):
        app.print_error("Specified --log-config file cannot be read")
    props = _read_properties(path)
    if not props:
        app.print_error("Specified --log-config file does not contain any settings")
    if not any(key.startswith("log4cplus.") for key in props):
        app.print_error("Specified --log-config file does not contain any valid settings")
    if "log4cplus.rootLogger" not in props:
        app.print_error("Specified --log-config file does not set up log4cplus.rootLogger")
    level_name, *appenders = [part.strip() for part in props["log4cplus.rootLogger"].split(",")]
    level = LEVELS.get((level_name or "debug").lower())
    if level is None:
        app.print_error(f"--log-config: log level '{level_name}' is not supported by nodectl")
    if len(appenders) != 1:
        app.print_error("--log-config: nodectl supports exactly one appender on log4cplus.rootLogger")
    prefix = f"log4cplus.appender.{appenders[0]}"
    kind = props.get(prefix, "undefined")
    layout = props.get(f"{prefix}.layout", "")
    pattern = props.get(f"{prefix}.layout.ConversionPattern", "")
    if not kind.endswith("ConsoleAppender") or not layout.endswith("PatternLayout") or pattern != "%P: %m%n":
        app.print_error(f"--log-config: appender '{appenders[0]}' ({kind}, {layout or 'no layout'}, "
                        f"pattern '{pattern}') is not supported by nodectl; only a ConsoleAppender "
                        "with PatternLayout '%P: %m%n' is")
    to_stderr = props.get(f"{prefix}.logToStdErr", "false").lower() == "true"
    return int(level), "stderr" if to_stderr else "stdout"


def _read_properties(path: str) -> dict[str, str]:
    """``key = value`` lines of a Java-style properties file; ``#`` and ``!`` start comments."""
    props: dict[str, str] = {}
    with open(path, encoding="utf-8", errors="replace") as fh:
        for raw in fh:
            line = raw.strip()
            if not line or line[0] in "#!":
                continue
            key, sep, value = line.partition("=")
            if sep:
                props[key.strip()] = value.strip()
    return props


class CaptureErrors(logging.Handler):
    """Keeps a library's error texts (pynetdicom logs connection failures instead of raising)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextmanager
def log_handler(app: App, setup: LogSetup, *extra_loggers: tuple[str, int]) -> Iterator[logging.Logger]:
    """Attach the ``L: text`` stderr handler to the tool's logger for the duration of a run.

    ``extra_loggers`` are library loggers (name, minimum level) shown through the same handler,
    every line as ``D:``, as DCMTK shows its library's output: the tool logs its own progress
    and its errors in DCMTK's words (a library's "Requesting Association" would appear twice,
    and a script grepping ``E:`` lines must find DCMTK's lines only). Their INFO records are
    dropped. Everything is detached afterwards, so ``main`` can be called repeatedly in one
    process.
    """
    handler = logging.StreamHandler(app.stdout if setup.stream == "stdout" else app.stderr)
    handler.setFormatter(DcmtkFormatter())
    libraries = tuple(name for name, _ in extra_loggers)

    def library_as_debug(record: logging.LogRecord) -> bool:
        if not record.name.startswith(libraries):
            return True
        if record.levelno == logging.INFO:
            return False
        record.dcmtk_letter = "D"  # the level stays: other handlers (CaptureErrors) still see it
        return True

    if libraries:
        handler.addFilter(library_as_debug)
    attached: list[tuple[logging.Logger, int, bool]] = []
    for name, minimum in ((app.logger.name, setup.level), *extra_loggers):
        logger = logging.getLogger(name)
        attached.append((logger, logger.level, logger.propagate))
        logger.addHandler(handler)
        logger.setLevel(max(setup.level, minimum))
        logger.propagate = False
    try:
        yield app.logger
    finally:
        for logger, level, propagate in attached:
            logger.removeHandler(handler)
            logger.setLevel(level)
            logger.propagate = propagate
        handler.flush()


def run_app(body: Any, spec: ToolSpec, argv: Sequence[str], **streams: IO[str]) -> int:
    """Call ``body(app, argv) -> int`` and turn :class:`ToolExit` into the exit status."""
    app = App(spec, **streams)
    try:
        return int(body(app, list(argv)) or 0)
    except ToolExit as exc:
        return exc.code
