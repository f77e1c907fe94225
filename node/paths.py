"""Dataset attributes -> a safe relative file path: dcm4che's ``--filepath`` pattern language.

This is a pure-Python port of dcm4che 5 ``org.dcm4che3.util.AttributesFormat`` (git main,
2026) and of the Java ``MessageFormat`` / ``DecimalFormat`` / ``SimpleDateFormat`` /
``ChoiceFormat`` subsets that storescp patterns actually use. No I/O, no sockets.

Pattern language
----------------
Literal text plus fields in braces: ``{<tag>[<index>][,<type>[,<argument>]]}``.

* ``<tag>``: a keyword (``SOPInstanceUID``) or hex digits (``00080018``; like dcm4che, fewer
  than 8 digits are read as a number). ``A.B.C`` reads ``C`` from the first item of
  sequence ``A``'s first item ``B``. ``[n]`` picks value n (0-based) of a multi-valued
  element. ``{rnd...}`` and ``{now...}`` are the special fields (dcm4che tests the prefix).
* Types (the value comes from ``ds``; "absent" means missing or empty):

  ============================  ================================================  ========
  type                          result                                            absent
  ============================  ================================================  ========
  (none), ``none``              the value as a string                             empty
  ``upper``                     the value in upper case                           empty
  ``slice,b[,e]``               Java ``substring``; negative counts from the      empty
                                end, ``e`` is capped, ``e = 0`` = whole value
  ``number,<DecimalFormat>``    ``{InstanceNumber,number,0000}``                  0
  ``offset,N``                  integer value + N (Java int arithmetic)           N
  ``date[±Period],<fmt>``       DA/DT/TM value via SimpleDateFormat               ``null``
  ``time[±Duration],<fmt>``     same, shifted by an ISO-8601 duration             ``null``
  ``choice,<ChoiceFormat>``     numeric choice, ``0#none|1#one|1<many``           0
  ``hash``                      Java ``String.hashCode()``, 8 upper-case hex      ``null``
  ``md5``                       MD5 of the UTF-8 value, dcm4che's base 32         ``null``
  ``urlencoded``                Java ``URLEncoder`` (UTF-8, space -> ``+``)       ``null``
  ``rnd`` / ``uuid`` / ``uid``  8 random upper-case hex / UUID / ``2.25.`` UID    -
  ============================  ================================================  ========

  A missing sequence item on a dotted path gives ``null`` for every type (as in dcm4che,
  Java ``MessageFormat`` prints a null argument as ``null``).
* Literal text goes through Java ``MessageFormat``: ``'`` starts quoted text, ``''`` is one
  quote. As in dcm4che the braces are split *before* quoting is applied, so a field inside
  quotes comes out as its rebuilt ``MessageFormat`` element (``'{00080018}'`` gives ``{0}``).

Supported Java format subsets (anything else raises ``ConfigError`` at compile time, because
guessing a locale-dependent or unported format silently would misfile data):

* DecimalFormat: optional quoted/literal prefix and suffix, integer digits ``#``/``0`` with
  ``,`` grouping, fraction ``.`` then ``0``/``#``; HALF_EVEN rounding, ``.`` and ``,`` as the
  symbols (en/ROOT locale). Refused: no pattern or a named style (``integer``, ``percent``,
  ``currency``), ``E`` exponent, ``;`` negative subpattern, ``%``, ``‰``, ``¤``, digits 1-9.
* SimpleDateFormat letters ``y M L d D H k K h m s S`` (``M``/``L`` at most twice), quoted
  literals. Refused: no pattern or a named style (``short``...), text fields (``MMM``, ``E``,
  ``a``, ``G``), zones (``z Z X``), week fields and any other letter.
* ChoiceFormat limits with ``#``, ``<``, ``≤``, ``∞``; refused: a choice text containing
  ``{`` (Java would re-format it as a nested MessageFormat).
* Period (``date±P1Y2M3W4D``) and Duration (``time±P1DT2H3M4.5S``) as ``java.time`` parses
  them; durations apply whole seconds, as dcm4che's ``Calendar.add(SECOND, ...)`` does.

Deviations from dcm4che, chosen to be explicit:

* An unclosed ``{`` raises ``ConfigError`` (dcm4che silently drops the rest of the pattern);
  so does an argument on a type that takes none (``{00080018,hash,x}``) and a negative
  value index.
* Dates and times are wall-clock values: a DT ``&ZZXX`` offset and Timezone Offset From UTC
  are ignored (dcm4che converts to the JVM's time zone), and shifts are calendar arithmetic
  on the wall clock. A date shift of an absent value gives ``null`` (dcm4che throws).
* Values that cannot be formatted at store time (text in a ``number`` field, a bad date, a
  binary OB/UN value) raise ``PathError`` (status 0x0110, as dcm4che's failed store).

Safety rule (``safe_relative_path``; dcm4che does no sanitising at all)
-----------------------------------------------------------------------
The path is split on ``/``. A leading ``/`` does not escape (dcm4che treats the result as
relative) and empty components collapse, so a missing PatientID in
``{00100020}/{0020000D}/...`` lands at ``<study>/...`` exactly as in dcm4che. ``PathError``
(0x0110) is raised for: a component ``.`` or ``..``; any ASCII control character (NUL
included) or DEL; a backslash; text that is not valid Unicode (a lone surrogate); a
component longer than 255 bytes or a whole path longer than 1024 bytes in UTF-8; an empty
result; a first component equal to ``.incoming`` in any letter case (reserved for the node's
spool and temp files). What is returned is a normalised POSIX relative path that, joined to
the store directory, always stays inside it.
"""

from __future__ import annotations

import calendar
import enum
import hashlib
import math
import re
import secrets
import struct
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta
from decimal import ROUND_DOWN, ROUND_HALF_EVEN, Decimal
from typing import Any

from pydicom import Dataset
from pydicom.datadict import tag_for_keyword
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag

from node.errors import ConfigError, PathError

__all__ = ["FilePathPattern", "relative_path_for", "safe_relative_path"]

RESERVED_TOP_DIRECTORY = ".incoming"
MAX_COMPONENT_BYTES = 255
MAX_PATH_BYTES = 1024

_INT_MIN, _INT_MAX = -(2**31), 2**31 - 1
_NULL = "null"  # what Java MessageFormat prints for a null argument

# An argument handed to a MessageFormat element: a string, a number, a date or null.
_Arg = str | float | datetime | None


# --------------------------------------------------------------------------------------
# Public interface
# --------------------------------------------------------------------------------------


class FilePathPattern:
    """A compiled ``--filepath`` pattern; compile once at start-up, format per instance."""

    __slots__ = ("_fields", "_pattern", "_segments")

    def __init__(self, pattern: str, fields: tuple[_Field, ...], segments: tuple[_Segment, ...]) -> None:
        self._pattern = pattern
        self._fields = fields
        self._segments = segments

    @classmethod
    def compile(cls, pattern: str) -> FilePathPattern:
        """Parse ``pattern``; a bad or unsupported pattern raises ``ConfigError`` now, not per store."""
        if not isinstance(pattern, str):
            raise ConfigError(f"file path pattern must be a string, not {type(pattern).__name__}")
        tokens = _split_braces(pattern)
        fields = tuple(_parse_field(text, pattern) for text in tokens[1::2])
        message_format = _build_message_format(tokens, fields)
        segments = tuple(_compile_segment(part, pattern) for part in _parse_message_format(message_format, pattern))
        return cls(pattern, fields, segments)

    @property
    def pattern(self) -> str:
        """The pattern text as given."""
        return self._pattern

    @property
    def top_level_tags(self) -> frozenset[int] | None:
        """The tags ``format`` reads from a dataset's top level; None when a field reaches
        into a sequence (a worker then has pydicom parse the whole dataset)."""
        paths = [field.tag_path for field in self._fields if field.tag_path is not None]
        if any(len(path) > 1 for path in paths):
            return None
        return frozenset(path[0] for path in paths)

    def format(self, ds: Dataset, *, now: datetime | None = None) -> str:
        """The raw dcm4che result for ``ds``, unsanitised (see ``safe_relative_path``).

        ``now`` stands in for the current local time of ``{now,...}`` fields (tests pass it).
        Raises ``PathError`` when a value cannot be formatted as its field asks.
        """
        moment = now if now is not None else datetime.now()
        args = [_field_argument(field, ds, moment) for field in self._fields]
        return "".join(seg if isinstance(seg, str) else seg.render(args[seg.index]) for seg in self._segments)

    def __repr__(self) -> str:
        return f"FilePathPattern.compile({self._pattern!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FilePathPattern) and other._pattern == self._pattern

    def __hash__(self) -> int:
        return hash(self._pattern)


def safe_relative_path(raw: str) -> str:
    """Normalise ``raw`` into a relative POSIX path that cannot leave the store (module docstring).

    Messages never quote the path: it is built from attribute values, which may be patient data.
    """
    if not isinstance(raw, str):
        raise PathError(f"path must be a string, not {type(raw).__name__}")
    _refuse_bad_characters(raw)
    components = [part for part in raw.split("/") if part]
    if not components:
        raise PathError("path is empty once empty components are dropped")
    for part in components:
        _check_component(part)
    if components[0].casefold() == RESERVED_TOP_DIRECTORY:
        raise PathError(f"path is inside the reserved {RESERVED_TOP_DIRECTORY} directory")
    result = "/".join(components)
    if len(result.encode("utf-8")) > MAX_PATH_BYTES:
        raise PathError(f"path is longer than {MAX_PATH_BYTES} bytes")
    return result


def relative_path_for(pattern: FilePathPattern | None, ds: Dataset, sop_instance_uid: str) -> str:
    """The checked relative path of an instance: the pattern's result, else its SOP Instance UID.

    Without a pattern dcm4che names the file after the Affected SOP Instance UID, no extension.
    """
    raw = sop_instance_uid if pattern is None else pattern.format(ds)
    return safe_relative_path(raw)


def _refuse_bad_characters(raw: str) -> None:
    """Control characters and backslashes never belong in a stored path; neither do lone surrogates."""
    if raw.isascii() and raw.isprintable() and "\\" not in raw:
        return  # the common case (a UID): one pass in C instead of a call of ord() per character
    for ch in raw:
        if ord(ch) < 0x20 or ch == "\x7f":
            raise PathError(f"path contains control character {ord(ch):#04x}")
        if ch == "\\":
            raise PathError("path contains a backslash")
    try:
        raw.encode("utf-8")
    except UnicodeEncodeError:
        raise PathError("path is not valid Unicode (lone surrogate)") from None


def _check_component(part: str) -> None:
    """``.`` and ``..`` would move out of (or stay at) the directory; long names fail in the OS."""
    if part in (".", ".."):
        raise PathError(f"path contains a {part!r} component")
    if len(part.encode("utf-8")) > MAX_COMPONENT_BYTES:
        raise PathError(f"a component of the path is longer than {MAX_COMPONENT_BYTES} bytes")


# --------------------------------------------------------------------------------------
# Compiling: braces, fields, MessageFormat
# --------------------------------------------------------------------------------------


class _Kind(enum.Enum):
    """The field types of ``AttributesFormat.Type`` (the names users write)."""

    NONE = "none"
    UPPER = "upper"
    SLICE = "slice"
    NUMBER = "number"
    OFFSET = "offset"
    DATE = "date"
    TIME = "time"
    CHOICE = "choice"
    HASH = "hash"
    MD5 = "md5"
    URLENCODED = "urlencoded"
    RND = "rnd"
    UUID = "uuid"
    UID = "uid"


# Types whose argument is a Java sub-format passed on to MessageFormat.
_MESSAGE_FORMAT_KINDS = {_Kind.NUMBER: "number", _Kind.DATE: "date", _Kind.TIME: "time", _Kind.CHOICE: "choice"}



@dataclass(frozen=True, slots=True)
class _Period:
    """A ``java.time.Period``: applied as Calendar adds years, then months, then days."""

    years: int
    months: int
    days: int


@dataclass(frozen=True, slots=True)
class _Field:
    """One ``{...}`` field: where its value is and how it becomes a MessageFormat argument."""

    text: str
    tag_path: tuple[int, ...] | None  # None for {now...} and {rnd...}
    index: int
    kind: _Kind
    subformat: str | None = None  # the ",<argument>" handed to MessageFormat, or None
    offset: int = 0
    slice_bounds: tuple[int, int] = (0, 0)
    period: _Period | None = None
    shift_seconds: int | None = None


def _split_braces(pattern: str) -> list[str]:
    """dcm4che's ``tokenize``: alternate literal text and field text, nested braces kept inside.

    The result always starts with literal text (maybe empty) and alternates from there.
    """
    tokens: list[str] = [""]
    depth = 0
    current: list[str] = []
    for ch in pattern:
        if ch == "{":
            if depth:
                current.append(ch)
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth < 0:
                raise ConfigError(f"bad file path pattern {pattern!r}: unbalanced '}}'")
            if depth == 0:
                tokens.append("".join(current))
                tokens.append("")
                current = []
            else:
                current.append(ch)
        elif depth:
            current.append(ch)
        else:
            tokens[-1] += ch
    if depth:
        raise ConfigError(f"bad file path pattern {pattern!r}: unclosed '{{'")
    return tokens


def _parse_field(text: str, pattern: str) -> _Field:
    """Parse ``<tag>[<index>][,<type>[,<argument>]]`` as ``AttributesFormat`` does."""
    comma = text.find(",")
    head = text if comma < 0 else text[:comma]
    type_text = None if comma < 0 else text[comma + 1 :]
    is_rnd = text.startswith("rnd")
    tag_path: tuple[int, ...] | None = None
    index = 0
    if not is_rnd and not text.startswith("now"):
        tag_path, index = _parse_tag_and_index(head, pattern)
    field = _Field(text, tag_path, index, _Kind.NONE) if type_text is None else _parse_type(text, tag_path, index, type_text, pattern)
    if is_rnd:
        field = _as_random_field(field, pattern)
    return field


def _as_random_field(field: _Field, pattern: str) -> _Field:
    """``{rnd}`` is 8 hex digits, ``{rnd,uuid}`` / ``{rnd,uid}`` as named; no other type."""
    if field.kind is _Kind.NONE:
        return _Field(field.text, None, 0, _Kind.RND)
    if field.kind in (_Kind.UUID, _Kind.UID):
        return field
    raise ConfigError(f"bad file path pattern {pattern!r}: {{{field.text}}} allows only uuid or uid")


def _parse_tag_and_index(head: str, pattern: str) -> tuple[tuple[int, ...], int]:
    """Split ``0040A730.0040A043[1]`` into a tag path and a value index."""
    index = 0
    tag_text = head
    if head.endswith("]"):
        open_at = head.rfind("[", 0, max(0, len(head) - 2))
        if open_at >= 0:
            tag_text = head[:open_at]
            index = _parse_java_int(head[open_at + 1 : -1], f"value index in {{{head}}}", pattern)
            if index < 0:
                raise ConfigError(f"bad file path pattern {pattern!r}: negative value index in {{{head}}}")
    return tuple(_parse_tag(name, pattern) for name in tag_text.split(".")), index


_HEX_TAG = re.compile(r"[0-9A-Fa-f]{1,8}")


def _parse_tag(name: str, pattern: str) -> int:
    """A tag as hex digits (Java ``Integer.parseInt(name, 16)``) or a DICOM keyword."""
    if _HEX_TAG.fullmatch(name) and int(name, 16) <= _INT_MAX:
        return int(name, 16)
    tag = tag_for_keyword(name) if name.isidentifier() else None
    if tag is None:
        raise ConfigError(f"bad file path pattern {pattern!r}: {name!r} is neither a tag nor a keyword")
    return int(tag)


def _parse_type(text: str, tag_path: tuple[int, ...] | None, index: int, type_text: str, pattern: str) -> _Field:
    """The ``,<type>[,<argument>]`` part of a field."""
    comma = type_text.find(",")
    name = type_text if comma < 0 else type_text[:comma]
    argument = None if comma < 0 else type_text[comma + 1 :]
    field = _Field(text, tag_path, index, _Kind.NONE, subformat="" if argument is None else "," + argument)
    if name.startswith("date"):
        period = _parse_period(name[4:], pattern) if len(name) > 4 else None
        return replace(field, kind=_Kind.DATE, period=period)
    if name.startswith("time"):
        shift = _parse_duration_seconds(name[4:], pattern) if len(name) > 4 else None
        return replace(field, kind=_Kind.TIME, shift_seconds=shift)
    try:
        kind = _Kind(name)
    except ValueError:
        raise ConfigError(f"bad file path pattern {pattern!r}: unknown type {name!r} in {{{text}}}") from None
    if kind in (_Kind.NUMBER, _Kind.CHOICE):
        return replace(field, kind=kind)
    if kind is _Kind.OFFSET:
        offset = _parse_java_int(_required(argument, text, pattern), f"offset in {{{text}}}", pattern)
        return replace(field, kind=kind, subformat=None, offset=offset)
    if kind is _Kind.SLICE:
        bounds = _parse_slice(_required(argument, text, pattern), text, pattern)
        return replace(field, kind=kind, subformat=None, slice_bounds=bounds)
    if argument is not None:
        raise ConfigError(f"bad file path pattern {pattern!r}: type {name!r} takes no argument in {{{text}}}")
    return replace(field, kind=kind, subformat=None)


def _required(argument: str | None, text: str, pattern: str) -> str:
    """``offset`` and ``slice`` need an argument (dcm4che fails at start-up without one)."""
    if argument is None:
        raise ConfigError(f"bad file path pattern {pattern!r}: {{{text}}} needs an argument")
    return argument


_JAVA_INT = re.compile(r"[+-]?[0-9]+")


def _parse_java_int(text: str, what: str, pattern: str) -> int:
    """Java ``Integer.parseInt``: optional sign, ASCII digits, 32-bit range."""
    if not _JAVA_INT.fullmatch(text) or not _INT_MIN <= int(text) <= _INT_MAX:
        raise ConfigError(f"bad file path pattern {pattern!r}: {what} {text!r} is not an integer")
    return int(text)


def _parse_slice(argument: str, text: str, pattern: str) -> tuple[int, int]:
    """``b`` or ``b,e``; as in dcm4che, ``e = 0`` means "to the end" and then ``b`` is ignored."""
    parts = argument.split(",")
    if len(parts) not in (1, 2):
        raise ConfigError(f"bad file path pattern {pattern!r}: slice takes b or b,e in {{{text}}}")
    numbers = [_parse_java_int(p, f"slice bound in {{{text}}}", pattern) for p in parts]
    if len(numbers) == 1:
        return numbers[0], 0
    begin, end = numbers
    return (begin if end != 0 else 0), end


_PERIOD = re.compile(
    r"([-+]?)P(?:([-+]?[0-9]+)Y)?(?:([-+]?[0-9]+)M)?(?:([-+]?[0-9]+)W)?(?:([-+]?[0-9]+)D)?",
    re.IGNORECASE | re.ASCII,
)


def _parse_period(text: str, pattern: str) -> _Period:
    """``java.time.Period.parse``: ``[±]P[nY][nM][nW][nD]``, weeks count as 7 days."""
    match = _PERIOD.fullmatch(text)
    if not match or not any(match.group(i) for i in range(2, 6)):
        raise ConfigError(f"bad file path pattern {pattern!r}: {text!r} is not a period like -P1M")
    sign = -1 if match.group(1) == "-" else 1
    years, months, weeks, days = (int(match.group(i) or 0) for i in range(2, 6))
    if not all(_INT_MIN <= n <= _INT_MAX for n in (years, months, weeks, days, weeks * 7 + days)):
        raise ConfigError(f"bad file path pattern {pattern!r}: period {text!r} out of range")
    return _Period(sign * years, sign * months, sign * (weeks * 7 + days))


_DURATION = re.compile(
    r"([-+]?)P(?:([-+]?[0-9]+)D)?"
    r"(T(?:([-+]?[0-9]+)H)?(?:([-+]?[0-9]+)M)?(?:([-+]?[0-9]+)(?:[.,]([0-9]{0,9}))?S)?)?",
    re.IGNORECASE | re.ASCII,
)


def _parse_duration_seconds(text: str, pattern: str) -> int:
    """``java.time.Duration.parse`` reduced to what dcm4che applies: ``(int) getSeconds()``."""
    match = _DURATION.fullmatch(text)
    bad = ConfigError(f"bad file path pattern {pattern!r}: {text!r} is not a duration like +PT30M")
    if not match or match.group(3) in ("T", "t"):
        raise bad
    days, hours, minutes, seconds, fraction = match.group(2, 4, 5, 6, 7)
    if days is None and hours is None and minutes is None and seconds is None:
        raise bad
    total = Decimal(int(days or 0) * 86400 + int(hours or 0) * 3600 + int(minutes or 0) * 60)
    if seconds is not None:
        whole = int(seconds)
        frac = Decimal(f"0.{fraction or 0}")
        total += whole - frac if seconds.startswith("-") else whole + frac
    if match.group(1) == "-":
        total = -total
    return _wrap_int32(math.floor(total))


# ---- Java MessageFormat ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Element:
    """A ``{index[,type[,style]]}`` element of a Java MessageFormat pattern."""

    index: str
    type: str
    style: str | None


@dataclass(frozen=True, slots=True)
class _Slot:
    """A compiled element: which argument, and the sub-format that renders it (if any)."""

    index: int
    formatter: Callable[[Any], str] | None

    def render(self, arg: _Arg) -> str:
        """Java ``MessageFormat.subformat``: a null argument prints as ``null``."""
        if arg is None:
            return _NULL
        if self.formatter is None:
            return str(arg)
        return self.formatter(arg)


_Segment = str | _Slot


def _build_message_format(tokens: list[str], fields: tuple[_Field, ...]) -> str:
    """dcm4che's ``buildMessageFormat``: field i becomes ``{i}`` or ``{i,<type><argument>}``."""
    out: list[str] = []
    for i, field in enumerate(fields):
        out.append(tokens[2 * i])
        sub = _MESSAGE_FORMAT_KINDS.get(field.kind)
        out.append(f"{{{i}}}" if sub is None else f"{{{i},{sub}{field.subformat}}}")
    out.append(tokens[-1])
    return "".join(out)


def _parse_message_format(text: str, pattern: str) -> list[str | _Element]:
    """Java ``MessageFormat.applyPattern``: quoting in literal text, elements in braces."""
    result: list[str | _Element] = []
    literal: list[str] = []
    parts: list[list[str]] = [[], [], []]  # index, type, style
    part = -1  # -1: literal text; 0, 1, 2: inside an element
    in_quote = False
    depth = 0
    i = 0
    while i < len(text):
        ch = text[i]
        if part < 0:
            if ch == "'":
                if text[i + 1 : i + 2] == "'":
                    literal.append("'")
                    i += 1
                else:
                    in_quote = not in_quote
            elif ch == "{" and not in_quote:
                result.append("".join(literal))
                literal = []
                part = 0
                parts = [[], [], []]
            else:
                literal.append(ch)
        elif in_quote:
            parts[part].append(ch)
            in_quote = ch != "'"
        elif ch == "," and part < 2:
            part += 1
        elif ch == "{":
            depth += 1
            parts[part].append(ch)
        elif ch == "}" and depth:
            depth -= 1
            parts[part].append(ch)
        elif ch == "}":
            result.append(_Element("".join(parts[0]), "".join(parts[1]), "".join(parts[2]) if part == 2 else None))
            part = -1
        elif ch == " " and part == 1 and not parts[1]:
            pass  # MessageFormat skips leading spaces of the type
        else:
            in_quote = ch == "'"
            parts[part].append(ch)
        i += 1
    if part >= 0:
        raise ConfigError(f"bad file path pattern {pattern!r}: unmatched braces once quoting is applied")
    result.append("".join(literal))
    return [item for item in result if item != ""]


def _compile_segment(item: str | _Element, pattern: str) -> _Segment:
    """Literal text stays text; an element becomes a slot with its Java sub-format."""
    if isinstance(item, str):
        return item
    if not item.index.isdigit():
        raise ConfigError(f"bad file path pattern {pattern!r}: quoting broke element {{{item.index}}}")
    kind = item.type.strip().lower()
    if kind == "":
        return _Slot(int(item.index), None)
    style = item.style or ""
    keyword = style.strip().lower()
    if kind == "number":
        if keyword in ("", "integer", "percent", "currency"):
            raise ConfigError(f"bad file path pattern {pattern!r}: number needs an explicit DecimalFormat like 0000")
        return _Slot(int(item.index), _DecimalFormat(style, pattern).format)
    if kind in ("date", "time"):
        if keyword in ("", "short", "medium", "long", "full"):
            raise ConfigError(f"bad file path pattern {pattern!r}: {kind} needs an explicit format like yyyy/MM/dd")
        return _Slot(int(item.index), _SimpleDateFormat(style, pattern).format)
    if kind == "choice":
        return _Slot(int(item.index), _ChoiceFormat(style, pattern).format)
    raise ConfigError(f"bad file path pattern {pattern!r}: unknown format type {item.type!r}")


# --------------------------------------------------------------------------------------
# Formatting: one MessageFormat argument per field
# --------------------------------------------------------------------------------------


def _field_argument(field: _Field, ds: Dataset, now: datetime) -> _Arg:
    """``AttributesFormat.toArgs`` for one field; a missing sequence item gives null."""
    element = None
    if field.tag_path is not None:
        item = _nested_item(ds, field.tag_path[:-1])
        if item is None:
            return None
        element = _element(item, field.tag_path[-1])
    return _ARGUMENT_BUILDERS[field.kind](field, element, now)


def _nested_item(ds: Dataset, tags: tuple[int, ...]) -> Dataset | None:
    """``getNestedDataset`` along the path: the first item of each sequence, or None."""
    item = ds
    for tag in tags:
        element = _element(item, tag)
        value = None if element is None else element.value
        if element is None or element.VR != "SQ" or not isinstance(value, Sequence) or len(value) == 0:
            return None
        item = value[0]
    return item


def _element(item: Dataset, tag: int) -> Any:
    """The data element for ``tag``, or None; a value pydicom cannot decode is the peer's fault."""
    if tag not in item:
        return None
    try:
        return item[tag]
    except (ValueError, TypeError, LookupError, AttributeError, NotImplementedError, struct.error) as exc:
        raise PathError(f"attribute {tag:08X} cannot be decoded ({type(exc).__name__})") from None


# One builder per type, as ``AttributesFormat.Type.toArg``: (field, element or None, now) -> arg.


def _string_arg(field: _Field, element: Any, now: datetime) -> _Arg:
    return _string_value(element, field.index) or ""


def _upper_arg(field: _Field, element: Any, now: datetime) -> _Arg:
    return (_string_value(element, field.index) or "").upper()


def _slice_arg(field: _Field, element: Any, now: datetime) -> _Arg:
    return _java_slice(_string_value(element, field.index), *field.slice_bounds)


def _number_arg(field: _Field, element: Any, now: datetime) -> _Arg:
    return _double_value(element, field.index)


def _offset_arg(field: _Field, element: Any, now: datetime) -> _Arg:
    return str(_wrap_int32(_int_value(element, field.index) + field.offset))


def _date_arg(field: _Field, element: Any, now: datetime) -> _Arg:
    moment = now if field.tag_path is None else _date_value(element, field.index)
    if moment is None:
        return None
    try:
        if field.period is not None:
            return _shift_by_period(moment, field.period)
        if field.shift_seconds is not None:
            return moment + timedelta(seconds=field.shift_seconds)
    except (OverflowError, ValueError):
        raise PathError(f"shifted date {{{field.text}}} is out of range") from None
    return moment


def _hash_arg(field: _Field, element: Any, now: datetime) -> _Arg:
    value = _string_value(element, field.index)
    return None if value is None else f"{_java_string_hash(value):08X}"


def _md5_arg(field: _Field, element: Any, now: datetime) -> _Arg:
    value = _string_value(element, field.index)
    return None if value is None else _md5_base32(value)


def _urlencoded_arg(field: _Field, element: Any, now: datetime) -> _Arg:
    value = _string_value(element, field.index)
    return None if value is None else _java_url_encode(value)


def _rnd_arg(field: _Field, element: Any, now: datetime) -> _Arg:
    return f"{secrets.randbits(32):08X}"


def _uuid_arg(field: _Field, element: Any, now: datetime) -> _Arg:
    return str(uuid.uuid4())


def _uid_arg(field: _Field, element: Any, now: datetime) -> _Arg:
    """dcm4che ``UIDUtils.createUID()``: a random UUID as a ``2.25.`` UID."""
    return f"2.25.{uuid.uuid4().int}"


_ARGUMENT_BUILDERS: dict[_Kind, Callable[[_Field, Any, datetime], _Arg]] = {
    _Kind.NONE: _string_arg,
    _Kind.UPPER: _upper_arg,
    _Kind.SLICE: _slice_arg,
    _Kind.NUMBER: _number_arg,
    _Kind.OFFSET: _offset_arg,
    _Kind.DATE: _date_arg,
    _Kind.TIME: _date_arg,
    _Kind.CHOICE: _number_arg,
    _Kind.HASH: _hash_arg,
    _Kind.MD5: _md5_arg,
    _Kind.URLENCODED: _urlencoded_arg,
    _Kind.RND: _rnd_arg,
    _Kind.UUID: _uuid_arg,
    _Kind.UID: _uid_arg,
}


# ---- reading values as dcm4che's Attributes.getString/getDouble/getInt/getDate -------------

_BINARY_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "UN"}
_NUMERIC_STRING_VRS = {"IS", "DS"}
_BINARY_NUMBER_VRS = {"US", "SS", "UL", "SL", "SV", "UV", "FL", "FD", "US or SS", "US or OW", "US or SS or OW"}
_FLOAT_VRS = {"FL", "FD", "DS"}
_TRAILING_TRIM_VRS = {"LT", "ST", "UT", "UR"}
_TEMPORAL_VRS = {"DA", "DT", "TM"}


def _values(element: Any) -> list[Any]:
    """The element's values as a list; binary data is refused rather than guessed at."""
    if element is None or element.VR == "SQ":
        return []
    value = element.value
    if value is None or (isinstance(value, (str, bytes)) and not value):
        return []
    if isinstance(value, (bytes, bytearray, memoryview)) or element.VR in _BINARY_VRS:
        raise PathError(f"binary attribute {int(element.tag):08X} ({element.VR}) cannot be used in a file path")
    if isinstance(value, (list, tuple, MultiValue)):
        return list(value)
    return [value]


def _string_value(element: Any, index: int) -> str | None:
    """``getString(tag, index)``: the trimmed value, or None when absent or empty."""
    values = _values(element)
    if index >= len(values) or values[index] is None:
        return None
    value = values[index]
    if element.VR == "AT" or isinstance(value, BaseTag):
        text = f"{int(value):08X}"
    elif isinstance(value, float) and element.VR in ("FL", "FD"):
        text = _java_format_ds(value)
    else:
        text = str(value)
    text = text.rstrip(" \x00") if element.VR in _TRAILING_TRIM_VRS else _java_trim(text)
    return text or None


def _java_trim(text: str) -> str:
    """Java ``String.trim``: strip characters up to U+0020 at both ends."""
    start, end = 0, len(text)
    while start < end and text[start] <= " ":
        start += 1
    while end > start and text[end - 1] <= " ":
        end -= 1
    return text[start:end]


_JAVA_DOUBLE = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?[dDfF]?")


def _double_value(element: Any, index: int) -> float:
    """``getDouble(tag, index, 0.)``: IS, DS and binary numbers only, like dcm4che."""
    values = _values(element)
    if index >= len(values) or values[index] is None or values[index] == "":
        return 0.0
    _require_numeric_vr(element)
    value = values[index]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        result = float(value)
    elif isinstance(value, str) and _JAVA_DOUBLE.fullmatch(value.strip()):
        result = float(value.strip().rstrip("dDfF"))
    else:
        raise PathError(f"attribute {int(element.tag):08X} value is not a number")
    if not math.isfinite(result):
        raise PathError(f"attribute {int(element.tag):08X} value is not a finite number")
    return result


def _int_value(element: Any, index: int) -> int:
    """``getInt(tag, index, 0)``: a fraction truncates as Java's ``(int)`` cast does."""
    values = _values(element)
    if index >= len(values) or values[index] is None or values[index] == "":
        return 0
    _require_numeric_vr(element)
    if element.VR in _FLOAT_VRS:
        return _java_int_from_double(_double_value(element, index))
    value = values[index]
    if isinstance(value, int):
        return _wrap_int32(int(value))
    if isinstance(value, str) and _JAVA_INT.fullmatch(value.strip()):
        return _wrap_int32(int(value.strip()))
    raise PathError(f"attribute {int(element.tag):08X} value is not an integer")


def _require_numeric_vr(element: Any) -> None:
    """dcm4che throws for number types on text VRs; say so instead of guessing."""
    if element.VR not in _NUMERIC_STRING_VRS | _BINARY_NUMBER_VRS:
        raise PathError(f"attribute {int(element.tag):08X} has VR {element.VR}, not a number")


def _date_value(element: Any, index: int) -> datetime | None:
    """``getDate(tag, index)``: DA, DT or TM as a local wall-clock datetime, or None."""
    text = _string_value(element, index)
    if text is None:
        return None
    if element.VR not in _TEMPORAL_VRS:
        raise PathError(f"attribute {int(element.tag):08X} has VR {element.VR}, not DA, DT or TM")
    try:
        return _TEMPORAL_PARSERS[element.VR](text)
    except (ValueError, OverflowError, IndexError):
        raise PathError(f"attribute {int(element.tag):08X} value is not a valid {element.VR}") from None


def _digits(text: str, pos: int, count: int) -> int:
    """Read ``count`` ASCII digits at ``pos`` (dcm4che ``parseDigit``)."""
    chunk = text[pos : pos + count]
    if len(chunk) != count or not all("0" <= c <= "9" for c in chunk):
        raise ValueError(text)
    return int(chunk)


def _lenient_date(year: int, month: int, day: int) -> datetime:
    """A lenient ``GregorianCalendar``: month 13 is next January, day 0 the previous month's last."""
    carry_year, month0 = divmod(year * 12 + month - 1, 12)
    return datetime(carry_year, month0 + 1, 1) + timedelta(days=day - 1)


def _parse_da(text: str) -> datetime:
    """``DateUtils.parseDA``: ``YYYYMMDD`` or the old ``YYYY.MM.DD``."""
    if len(text) == 10 and not text[4].isdigit() and text[7] == text[4]:
        return _lenient_date(_digits(text, 0, 4), _digits(text, 5, 2), _digits(text, 8, 2))
    if len(text) != 8:
        raise ValueError(text)
    return _lenient_date(_digits(text, 0, 4), _digits(text, 4, 2), _digits(text, 6, 2))


def _parse_tm(text: str) -> datetime:
    """``DateUtils.parseTM``: a time on 1970-01-01; a ``±HHMM`` suffix is cut off."""
    if len(text) > 4 and text[-5] in "+-":
        text = text[:-5]
    return datetime(1970, 1, 1) + _time_of_day(text)


def _time_of_day(text: str) -> timedelta:
    """``HH[[:]MM[[:]SS[.F]]]`` with millisecond rounding on the fourth fraction digit, leniently."""
    hours, pos = _digits(text, 0, 2), 2
    minutes = seconds = millis = 0
    if pos < len(text):
        pos += 0 if text[pos].isdigit() else 1
        minutes, pos = _digits(text, pos, 2), pos + 2
        if pos < len(text):
            pos += 0 if text[pos].isdigit() else 1
            seconds, pos = _digits(text, pos, 2), pos + 2
            if pos < len(text):
                millis = _fraction_millis(text, pos)
    return timedelta(hours=hours, minutes=minutes, seconds=seconds, milliseconds=millis)


def _fraction_millis(text: str, pos: int) -> int:
    """The ``.FFFFFF`` part in milliseconds, rounded half up on the fourth digit."""
    if text[pos] != ".":
        raise ValueError(text)
    fraction = text[pos + 1 :]
    if not all("0" <= c <= "9" for c in fraction):
        raise ValueError(text)
    millis = int((fraction + "000")[:3])
    if len(fraction) >= 4 and fraction[3] > "4":
        millis += 1
    return millis


def _parse_dt(text: str) -> datetime:
    """``DateUtils.parseDT``: ``YYYY[MM[DD[HH[MM[SS[.F]]]]]]``; a ``&ZZXX`` offset is ignored."""
    if len(text) > 4 and text[-5] in "+-" and all("0" <= c <= "9" for c in text[-4:]):
        text = text[:-5]
    year, pos = _digits(text, 0, 4), 4
    month = day = 1
    rest = ""
    if pos < len(text):
        pos += 0 if text[pos].isdigit() else 1
        month, pos = _digits(text, pos, 2), pos + 2
        if pos < len(text):
            pos += 0 if text[pos].isdigit() else 1
            day, pos = _digits(text, pos, 2), pos + 2
            rest = text[pos:]
    moment = _lenient_date(year, month, day)
    return moment + _time_of_day(rest) if rest else moment


_TEMPORAL_PARSERS: dict[str, Callable[[str], datetime]] = {"DA": _parse_da, "TM": _parse_tm, "DT": _parse_dt}


def _add_months(moment: datetime, months: int) -> datetime:
    """``Calendar.add(MONTH, n)``: the day is clamped to the target month's length."""
    year, month0 = divmod(moment.year * 12 + moment.month - 1 + months, 12)
    day = min(moment.day, calendar.monthrange(year, month0 + 1)[1])
    return moment.replace(year=year, month=month0 + 1, day=day)


def _shift_by_period(moment: datetime, period: _Period) -> datetime:
    """dcm4che adds years, then months, then days, each as its own ``Calendar.add``."""
    moment = _add_months(moment, 12 * period.years)
    moment = _add_months(moment, period.months)
    return moment + timedelta(days=period.days)


# ---- value transforms ---------------------------------------------------------------------


def _wrap_int32(value: int) -> int:
    """Java ``int`` overflow: wrap to 32 bits, signed."""
    return (value + 2**31) % 2**32 - 2**31


def _java_int_from_double(value: float) -> int:
    """Java ``(int)`` cast of a double: truncate, saturate at the int range."""
    return max(_INT_MIN, min(_INT_MAX, math.trunc(value)))


def _utf16_units(text: str) -> bytes:
    """The UTF-16 code units Java strings are made of (big-endian pairs of bytes)."""
    return text.encode("utf-16-be", "surrogatepass")


def _java_string_hash(text: str) -> int:
    """Java ``String.hashCode()`` as an unsigned 32-bit number: s[0]*31^(n-1) + ... over UTF-16."""
    units = _utf16_units(text)
    h = 0
    for i in range(0, len(units), 2):
        h = (31 * h + (units[i] << 8 | units[i + 1])) & 0xFFFFFFFF
    return h


def _java_slice(text: str | None, begin: int, end: int) -> str:
    """dcm4che's ``Slice.apply``: ``String.substring`` on UTF-16 units, "" when out of range."""
    if text is None:
        return ""
    units = _utf16_units(text)
    length = len(units) // 2
    start = max(0, length + begin) if begin < 0 else begin
    stop = length if end == 0 else (length + end if end < 0 else min(length, end))
    if start > length or stop < start:
        return ""
    return units[2 * start : 2 * stop].decode("utf-16-be", "surrogatepass")


_BASE32_DIGITS = "0123456789abcdefghijklmnopqrstuv"
_MASK64 = (1 << 64) - 1


def _md5_base32(text: str) -> str:
    """dcm4che's ``getMD5String``: MD5 of UTF-8, then its odd ``toString32`` layout.

    Each 8-byte half is read big-endian but shifted one byte too far (its first byte drops
    out, its last becomes 0); 26 characters take 5 bits at a time from the low end, with
    one bit of the second word joining the 13th character. So the first character is 0.
    """
    digest = hashlib.md5(text.encode("utf-8", "replace")).digest()
    low, high = _shifted_long(digest[:8]), _shifted_long(digest[8:])
    chars = []
    for _ in range(12):
        chars.append(_BASE32_DIGITS[low & 0x1F])
        low >>= 5
    chars.append(_BASE32_DIGITS[(low | (high & 1) << 4) & 0x1F])
    high >>= 1
    for _ in range(13):
        chars.append(_BASE32_DIGITS[high & 0x1F])
        high >>= 5
    return "".join(chars)


def _shifted_long(eight: bytes) -> int:
    """dcm4che's ``toLong``: OR in a byte then shift left 8, eight times, in 64 bits."""
    value = 0
    for byte in eight:
        value = ((value | byte) << 8) & _MASK64
    return value


_URL_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-*_")


def _java_url_encode(text: str) -> str:
    """Java ``URLEncoder.encode(s, UTF-8)``: keep ``A-Za-z0-9.-*_``, space as ``+``, else ``%XX``."""
    out = []
    for ch in text:
        if ch in _URL_SAFE:
            out.append(ch)
        elif ch == " ":
            out.append("+")
        else:
            out.extend(f"%{b:02X}" for b in ch.encode("utf-8", "replace"))
    return "".join(out)


def _java_double_to_string(value: float) -> str:
    """Java ``Double.toString``: shortest digits, plain in [1e-3, 1e7), else ``d.dddE±n``."""
    if not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if value == 0:
        return "-0.0" if math.copysign(1, value) < 0 else "0.0"
    if 1e-3 <= abs(value) < 1e7:
        return repr(value)  # plain in this range in Python too, with the same shortest digits
    _, digit_tuple, exponent = Decimal(repr(abs(value))).normalize().as_tuple()
    digits = "".join(map(str, digit_tuple))
    power = len(digits) - 1 + int(exponent)
    return f"{'-' if value < 0 else ''}{digits[0]}.{digits[1:] or '0'}E{power}"


def _java_format_ds(value: float) -> str:
    """dcm4che ``StringUtils.formatDS``: Double.toString without ``.0``, at most 16 mantissa chars."""
    text = _java_double_to_string(value)
    if text.endswith(".0"):
        return text[:-2]
    e = text.find("E", max(0, len(text) - 5))
    skip = len(text) - 16
    if e < 0:
        return text[:16] if skip > 0 else text
    if text[e - 2 : e] == ".0":
        return text[: e - 2] + text[e:]
    return text[: e - skip] + text[e:] if skip > 0 else text


# --------------------------------------------------------------------------------------
# Java sub-formats: DecimalFormat, SimpleDateFormat, ChoiceFormat (supported subsets)
# --------------------------------------------------------------------------------------


def _split_java_quotes(text: str, pattern: str, what: str) -> list[tuple[str, bool]]:
    """Characters of a Java format pattern, each marked quoted or not; ``''`` is one quote."""
    out: list[tuple[str, bool]] = []
    in_quote = False
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "'":
            if text[i + 1 : i + 2] == "'":
                out.append(("'", True))
                i += 1
            else:
                in_quote = not in_quote
        else:
            out.append((ch, in_quote))
        i += 1
    if in_quote:
        raise ConfigError(f"bad file path pattern {pattern!r}: unterminated quote in {what} {text!r}")
    return out


class _DecimalFormat:
    """Java ``DecimalFormat`` for the pattern subset in the module docstring (en/ROOT symbols)."""

    _NUMBER_CHARS = frozenset("#0,.")
    _REFUSED = frozenset("E;%\u2030\u00a4123456789")

    def __init__(self, text: str, pattern: str) -> None:
        chars = _split_java_quotes(text, pattern, "DecimalFormat")
        bad = ConfigError(f"bad file path pattern {pattern!r}: unsupported DecimalFormat {text!r}")
        for ch, quoted in chars:
            if not quoted and ch in self._REFUSED:
                raise bad
        start = next((i for i, (ch, q) in enumerate(chars) if not q and ch in self._NUMBER_CHARS), None)
        if start is None:
            raise bad
        stop = start
        while stop < len(chars) and not chars[stop][1] and chars[stop][0] in self._NUMBER_CHARS:
            stop += 1
        if any(not q and ch in self._NUMBER_CHARS for ch, q in chars[stop:]):
            raise bad
        self._prefix = "".join(ch for ch, _ in chars[:start])
        self._suffix = "".join(ch for ch, _ in chars[stop:])
        self._parse_number_part("".join(ch for ch, _ in chars[start:stop]), bad)

    def _parse_number_part(self, body: str, bad: ConfigError) -> None:
        """``#,##0.00#``: integer digits with grouping, then fraction digits."""
        integer, dot, fraction = body.partition(".")
        match = re.fullmatch(r"([#,]*)([0,]*)", integer)
        frac_match = re.fullmatch(r"(0*)(#*)", fraction)
        if not match or not frac_match or (not integer.replace(",", "") and not fraction):
            raise bad
        self._min_int = match.group(2).count("0")
        self._grouping = 0
        if "," in integer:
            self._grouping = len(integer) - integer.rfind(",") - 1
            if self._grouping == 0 or integer.startswith(","):
                raise bad
        self._min_frac = len(frac_match.group(1))
        self._max_frac = self._min_frac + len(frac_match.group(2))
        digits_before = integer.replace(",", "") != ""
        self._always_dot = bool(dot) and (not digits_before or not fraction)

    def format(self, value: float) -> str:
        """Round HALF_EVEN as Java does (ties decided on the exact binary value)."""
        negative = value < 0 or (value == 0 and math.copysign(1, value) < 0)
        rounded = _java_round(abs(value), self._max_frac)
        whole, _, frac = f"{rounded:f}".partition(".")
        whole = whole.lstrip("0").rjust(self._min_int, "0")
        frac = frac.ljust(self._max_frac, "0")[: self._max_frac].rstrip("0").ljust(self._min_frac, "0")
        if self._grouping and whole:
            whole = _group_digits(whole, self._grouping)
        if not whole and not frac:
            whole = "0"
        dot = "." if frac or self._always_dot else ""
        return f"{'-' if negative else ''}{self._prefix}{whole}{dot}{frac}{self._suffix}"


def _java_round(value: float, places: int) -> Decimal:
    """Round to ``places`` decimals from Java's shortest digits; exact ties use the binary value."""
    quantum = Decimal(1).scaleb(-places)
    shortest = Decimal(repr(value))
    truncated = shortest.quantize(quantum, rounding=ROUND_DOWN)
    if shortest - truncated == quantum / 2:
        return Decimal(value).quantize(quantum, rounding=ROUND_HALF_EVEN)
    return shortest.quantize(quantum, rounding=ROUND_HALF_EVEN)


def _group_digits(digits: str, size: int) -> str:
    """Insert ``,`` every ``size`` digits from the right."""
    head = len(digits) % size or size
    groups = [digits[:head]] + [digits[i : i + size] for i in range(head, len(digits), size)]
    return ",".join(groups)


class _SimpleDateFormat:
    """Java ``SimpleDateFormat`` for the numeric letters in the module docstring."""

    _SUPPORTED = frozenset("yMLdDHkKhmsS")

    def __init__(self, text: str, pattern: str) -> None:
        self._parts: list[str | tuple[str, int]] = []
        for ch, quoted in _split_java_quotes(text, pattern, "SimpleDateFormat"):
            letter = not quoted and ("a" <= ch <= "z" or "A" <= ch <= "Z")
            if letter and ch not in self._SUPPORTED:
                raise ConfigError(f"bad file path pattern {pattern!r}: date letter {ch!r} in {text!r} is not supported")
            last = self._parts[-1] if self._parts else None
            if letter and isinstance(last, tuple) and last[0] == ch:
                self._parts[-1] = (ch, last[1] + 1)
            elif letter:
                self._parts.append((ch, 1))
            else:
                self._parts.append(ch)
        for part in self._parts:
            if isinstance(part, tuple) and part[0] in "ML" and part[1] > 2:
                raise ConfigError(f"bad file path pattern {pattern!r}: month names ({text!r}) are locale text, not supported")

    def format(self, moment: datetime) -> str:
        """Each letter run is a number zero-padded to its length (``yy``: the last two digits)."""
        return "".join(part if isinstance(part, str) else _date_field(moment, *part) for part in self._parts)


def _date_field(moment: datetime, letter: str, count: int) -> str:
    """One SimpleDateFormat field as Java's ``zeroPaddingNumber`` writes it."""
    if letter == "y" and count == 2:
        return f"{moment.year % 100:02d}"
    value = {
        "y": moment.year,
        "M": moment.month,
        "L": moment.month,
        "d": moment.day,
        "D": (moment.date() - date(moment.year, 1, 1)).days + 1,
        "H": moment.hour,
        "k": moment.hour or 24,
        "K": moment.hour % 12,
        "h": moment.hour % 12 or 12,
        "m": moment.minute,
        "s": moment.second,
        "S": moment.microsecond // 1000,
    }[letter]
    return str(value).rjust(count, "0")


class _ChoiceFormat:
    """Java ``ChoiceFormat``: ``limit#text|limit<text``; the last limit not above the value wins."""

    _NUMBER = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")

    def __init__(self, text: str, pattern: str) -> None:
        self._limits: list[float] = []
        self._texts: list[str] = []
        bad = f"bad file path pattern {pattern!r}: ChoiceFormat {text!r}"
        limit_chars: list[str] = []
        choice_chars: list[str] = []
        in_text = False
        for ch, quoted in _split_java_quotes(text, pattern, "ChoiceFormat"):
            relation = not quoted and ch in "#<\u2264"
            if relation and in_text:
                raise ConfigError(f"{bad}: unquoted {ch!r} inside a choice text")
            if relation:
                self._limits.append(self._parse_limit("".join(limit_chars).strip(), ch, bad))
                limit_chars, in_text = [], True
            elif not quoted and ch == "|":
                if not in_text:
                    raise ConfigError(f"{bad}: a choice without a limit")
                self._texts.append("".join(choice_chars))
                choice_chars, in_text = [], False
            else:
                (choice_chars if in_text else limit_chars).append(ch)
        if in_text:
            self._texts.append("".join(choice_chars))
        elif "".join(limit_chars).strip() or not self._texts:
            raise ConfigError(f"{bad}: each choice needs a limit, a #, < or \u2264, then text")
        if any(b <= a for a, b in zip(self._limits, self._limits[1:], strict=False)):
            raise ConfigError(f"{bad}: limits must ascend")
        if any("{" in t for t in self._texts):
            raise ConfigError(f"{bad}: nested formats in a choice are not supported")

    def _parse_limit(self, text: str, relation: str, bad: str) -> float:
        """A limit is a decimal number or ±∞; ``<`` means just above it."""
        if text in ("\u221e", "-\u221e"):
            return math.inf if text == "\u221e" else -math.inf
        if not self._NUMBER.fullmatch(text):
            raise ConfigError(f"{bad}: {text!r} is not a number")
        limit = float(text)
        return math.nextafter(limit, math.inf) if relation == "<" else limit

    def format(self, value: float) -> str:
        """``ChoiceFormat.format(double)``: the last choice whose limit is <= value, else the first."""
        chosen = 0
        for i, limit in enumerate(self._limits):
            if not value >= limit:
                break
            chosen = i
        return self._texts[chosen]
