"""The DCMTK option parser: pure rules on a small declared tool, then echoscu's syntax errors
side by side with DCMTK's ``/usr/bin/echoscu`` (no network traffic: every case fails or exits
before connecting, or targets an unresolvable host)."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import pytest

from node.tools import dcmtk_args as da
from node.tools.dcmtk_args import CommandLineError, Group, Option, Param
from tests.tools.conftest import needs_dcmtk, run_dcmtk, run_ours

SPEC = da.ToolSpec(
    name="demo",
    description="a declared tool",
    rcsid="$demo v1 $",
    params=(Param("peer", "host"), Param("port", "port")),
    table=(
        *da.general_options(),
        Group("options:"),
        Option(long="--aetitle", short="-aet", values=1, value_help="[a]etitle: string", help="title"),
        Option(long="--max-pdu", short="-pdu", values=1, kind="uint", low=4096, high=131072, help="pdu"),
        Option(long="--timeout", short="-to", values=1, kind="int", low=1, help="seconds"),
        Option(long="--ipv4", short="-i4", dest="ip", const="ipv4", help="v4"),
        Option(long="--ipv6", short="-i6", dest="ip", const="ipv6", help="v6"),
        Option(long="--enable-tls", short="+tls", values=2, help="key cert"),
        Option(long="--disable-tls", short="-tls", help="plain"),
        Option(long="--add-cert-file", short="+cf", values=1, multi=True, help="ca"),
        Option(long="--verify-cert", short="+vc", values=1, exclusive=True, help="offline"),
    ),
)


def app() -> da.App:
    """An App writing into buffers."""
    return da.App(SPEC, stdout=io.StringIO(), stderr=io.StringIO())


def exit_code(func, *args) -> int:  # type: ignore[no-untyped-def]
    """Run something that ends in ToolExit and return the code."""
    with pytest.raises(da.ToolExit) as info:
        func(*args)
    return info.value.code


# --------------------------------------------------------------------------- pure parsing


@pytest.mark.parametrize(("arg", "option"), [
    ("-aet", True), ("+tls", True), ("-5", False), ("+5", False), ("-", False), ("@x", False),
    ("--", True), ("-.5", True), ("a", False),
])
def test_what_counts_as_an_option(arg: str, option: bool) -> None:
    """A sign then a non-digit, two characters or more (OFCommandLine::checkOption)."""
    assert da.is_option(arg) is option


def test_sign_is_part_of_the_name_and_short_forms_become_long() -> None:
    cmd = da.parse(SPEC, ["+tls", "k", "c", "-tls", "h", "1"])
    assert [o.option.long for o in cmd.occurrences] == ["--enable-tls", "--disable-tls"]
    assert cmd.expanded == ["--enable-tls", "k", "c", "--disable-tls", "h", "1"]
    assert cmd.params == ["h", "1"]


def test_values_are_taken_verbatim_even_when_they_look_like_options() -> None:
    cmd = da.parse(SPEC, ["-aet", "-i6", "h", "1"])
    assert cmd.find("--aetitle").values == ("-i6",)  # type: ignore[union-attr]
    assert not cmd.has("--ipv6")


def test_rightmost_wins_in_a_block_and_only_its_value_is_checked() -> None:
    a = app()
    values = a.evaluate(da.parse(SPEC, ["-pdu", "1", "-i6", "-aet", "A", "h", "-i4", "1", "-aet", "B", "-pdu", "8192"]))
    assert values["aetitle"] == "B" and values["ip"] == "ipv4" and values["max_pdu"] == 8192


def test_multi_options_keep_every_value_in_order() -> None:
    values = app().evaluate(da.parse(SPEC, ["+cf", "a", "h", "+cf", "b", "1"]))
    assert values["add_cert_file"] == ["a", "b"]


@pytest.mark.parametrize(("argv", "error"), [
    (["-x", "h", "1"], "Unknown option -x"),
    (["h", "1", "-aet"], "Missing value for option --aetitle"),
    (["+tls", "k"], "Missing value for option --enable-tls"),
    (["h"], "Missing parameter port"),
    (["h", "1", "2"], "Too many parameters"),
    (["@/nonexistent/args"], "Cannot open command file '/nonexistent/args'"),
])
def test_structural_errors(argv: list[str], error: str) -> None:
    with pytest.raises(CommandLineError, match=f"^{error}$"):
        da.parse(SPEC, argv)


def test_unknown_option_wins_over_help() -> None:
    """Parsing stops at the unknown option before ``-h`` is looked at, as in DCMTK."""
    a = app()
    assert exit_code(a.parse, ["-h", "--bogus"]) == 1
    assert a.stderr.getvalue() == "$demo v1 $\n\ndemo: a declared tool\nerror: Unknown option --bogus\n"  # type: ignore[attr-defined]


def test_exclusive_options_skip_the_parameter_count() -> None:
    assert da.parse(SPEC, ["+vc", "file"]).status == "exclusive"
    a = app()
    assert exit_code(a.parse, ["-h", "too", "many", "params"]) == 0
    assert "usage: demo [options] peer port" in a.stdout.getvalue()  # type: ignore[attr-defined]


def test_no_arguments_prints_usage() -> None:
    a = app()
    assert exit_code(a.parse, []) == 0
    out = a.stdout.getvalue()  # type: ignore[attr-defined]
    assert out.startswith("$demo v1 $\n\ndemo: a declared tool\nusage: demo [options] peer port\n\nparameters:\n")
    assert "  -aet  --aetitle            [a]etitle: string\n" + " " * 29 + "title\n" in out


def test_command_file_quotes_and_no_nesting(tmp_path: Path) -> None:
    inner = tmp_path / "inner.txt"
    inner.write_text("-aet X")
    outer = tmp_path / "outer.txt"
    outer.write_text(f'-aet "TWO WORDS"\n@{inner}  h\n')
    cmd = da.parse(SPEC, [f"@{outer}"])
    assert cmd.find("--aetitle").values == ("TWO WORDS",)  # type: ignore[union-attr]
    assert cmd.params == [f"@{inner}", "h"]  # a command file cannot include another one


@pytest.mark.parametrize(("text", "signed", "unsigned"), [
    ("16", 16, 16), ("0x10", 16, 0), ("010", 8, 10), ("4096x", 4096, 4096), ("1.5", 1, 1),
    (" +7", 7, 7), ("x", None, None), ("-1", -1, 2**64 - 1),
])
def test_numbers_are_read_like_sscanf(text: str, signed: int | None, unsigned: int | None) -> None:
    assert da.scan_signed(text) == signed
    assert da.scan_unsigned(text) == unsigned


@pytest.mark.parametrize(("argv", "error"), [
    (["-pdu", "1000"], "Invalid value for option --max-pdu (underflow: 1000)"),
    (["-pdu", "200000"], "Invalid value for option --max-pdu (overflow: 200000)"),
    (["-pdu", "x"], "Invalid value for option --max-pdu (x)"),
    (["-pdu", "-5000"], "Invalid value for option --max-pdu (-5000)"),
    (["-to", "0"], "Invalid value for option --timeout (underflow: 0)"),
])
def test_range_checked_values(argv: list[str], error: str) -> None:
    a = app()
    assert exit_code(a.evaluate, da.parse(SPEC, [*argv, "h", "1"])) == 1
    assert a.stderr.getvalue().endswith(f"error: {error}\n")  # type: ignore[attr-defined]


def test_logging_levels_blocks_and_conflicts() -> None:
    a = app()
    setup = da.configure_logging(a, da.parse(SPEC, ["-v", "-q", "-d", "h", "1"]))
    assert setup.level == logging.DEBUG and not setup.quiet
    assert da.configure_logging(a, da.parse(SPEC, ["-ll", "trace", "h", "1"])).level == da.TRACE
    assert da.configure_logging(a, da.parse(SPEC, ["-q", "h", "1"])).quiet
    b = app()
    assert exit_code(da.configure_logging, b, da.parse(SPEC, ["-v", "-ll", "info", "h", "1"])) == 1
    assert b.stderr.getvalue().endswith("error: --log-level not allowed with --verbose, --debug or --quiet\n")  # type: ignore[attr-defined]


def test_quiet_mode_silences_error_texts_but_not_the_exit_code() -> None:
    a = app()
    da.configure_logging(a, da.parse(SPEC, ["-q", "h", "1"]))
    assert exit_code(a.print_error, "anything") == 1
    assert a.stderr.getvalue() == ""  # type: ignore[attr-defined]


def test_arguments_are_printed_expanded_in_long_form() -> None:
    a = app()
    da.configure_logging(a, da.parse(SPEC, ["-q", "--arguments", "-aet", "X", "h", "1"]))
    assert a.stderr.getvalue() == (  # type: ignore[attr-defined]
        "I: calling 'demo' with 6 arguments: '--quiet' '--arguments' '--aetitle' 'X' 'h' '1' \nI: \n")


def test_log_config_console_pattern_is_honoured(tmp_path: Path) -> None:
    cfg = tmp_path / "logger.cfg"
    cfg.write_text("log4cplus.rootLogger = INFO, c\nlog4cplus.appender.c = log4cplus::ConsoleAppender\n"
                   "log4cplus.appender.c.logToStdErr = true\nlog4cplus.appender.c.layout = log4cplus::PatternLayout\n"
                   "log4cplus.appender.c.layout.ConversionPattern = %P: %m%n\n")
    setup = da.configure_logging(app(), da.parse(SPEC, ["-lc", str(cfg), "h", "1"]))
    assert (setup.level, setup.stream) == (logging.INFO, "stderr")


def test_multi_line_log_messages_get_one_prefix_per_line() -> None:
    record = logging.LogRecord("x", logging.CRITICAL, __file__, 1, "Association Rejected:\nResult: R", None, None)
    assert da.DcmtkFormatter().format(record) == "F: Association Rejected:\nF: Result: R"


# --------------------------------------------------------------------------- against DCMTK

DCMTK_CASES = [
    [], ["127.0.0.1"], ["127.0.0.1", "0"], ["127.0.0.1", "65536"], ["127.0.0.1", "abc"], ["a", "-1"],
    ["-pdu", "1000", "a", "1"], ["-pdu", "200000", "a", "1"], ["-pdu", "x", "a", "1"], ["-pdu", "-5000", "a", "1"],
    ["-pdu", "1.5", "a", "1"], ["-ts", "-2", "a", "1"], ["-to", "0", "a", "1"], ["--repeat", "0", "a", "1"],
    ["-pts", "0", "a", "1"], ["-ppc", "129", "a", "1"], ["--bogus", "a", "1"], ["+P", "a", "1"], ["-aet"],
    ["1", "2", "3"], ["-", "a", "1"], ["--", "a", "1"], ["-ll", "foo", "a", "1"], ["-v", "-ll", "info", "a", "1"],
    ["-q", "-pdu", "1", "a", "1"], ["-ll", "info", "-lc", "/etc/passwd", "a", "1"], ["-lc", "/nonexistent", "a", "1"],
    ["+cf", "x", "a", "1"], ["+cra", "+crv", "+tla", "a", "1"], ["+cs", "X", "+pz", "+tla", "a", "1"],
    ["+ws", "+tla", "a", "1"], ["+pw", "x", "a", "1"], ["-ic", "a", "1"], ["@/nonexistent/args", "a", "1"],
    ["-h", "--bogus"], ["--version", "--bogus"], ["+vc"],
    ["-pts", "1", "-pts", "40", "-pts", "2", "-ts", "0x10", "--arguments", "nohost.invalid", "1"],
]


@needs_dcmtk
def test_syntax_errors_match_dcmtk() -> None:
    """Same exit code and, after the tool header, the same stderr text as DCMTK 3.6.7."""
    for argv in DCMTK_CASES:
        ours, theirs = run_ours(*argv), run_dcmtk(*argv)
        assert ours.returncode == theirs.returncode, (argv, ours.stderr, theirs.stderr)
        assert without_header(ours.stderr) == without_header(theirs.stderr), argv


def without_header(text: str) -> list[str]:
    """Stderr lines minus the tool identification and the program name in ``--arguments``."""
    return [line for line in text.splitlines()
            if not line.startswith(("$", "I: calling")) and "echoscu:" not in line]
