"""File path patterns: dcm4che's AttributesFormat vectors, bad patterns, and path safety.

The vectors come from dcm4che's ``AttributesFormatTest`` and /work/shared/spec/storescp.md
(conformance tests 7-10 and 17). Pure: no sockets, no sleeps, no files written.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import re
from datetime import datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom import Dataset
from pydicom.sequence import Sequence

from node.errors import STATUS_PROCESSING_FAILURE, ConfigError, PathError
from node.paths import FilePathPattern, relative_path_for, safe_relative_path

# Hostile and invalid values are the point of many tests; pydicom's warnings about them are noise.
pytestmark = pytest.mark.filterwarnings(
    "ignore:The value length:UserWarning", "ignore:Invalid value for VR:UserWarning"
)

FULL_EXAMPLE = (
    "{00080020,date,yyyy/MM/dd}/{00080030,time,HH}/{0020000D,hash}/{0020000E,hash}/{00080008[1]}/{00080018}.dcm"
)


def dcm4che_dataset() -> Dataset:
    """The attributes of dcm4che's ``AttributesFormatTest``."""
    ds = Dataset()
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.StudyDate = "20111012"
    ds.StudyTime = "0930"
    ds.StudyInstanceUID = "1.2.3"
    ds.SeriesInstanceUID = "1.2.3.4"
    ds.SOPInstanceUID = "1.2.3.4.5"
    return ds


def fmt(pattern: str, ds: Dataset | None = None, **kwargs: object) -> str:
    """Compile and format in one step (most tests check one field)."""
    return FilePathPattern.compile(pattern).format(dcm4che_dataset() if ds is None else ds, **kwargs)


def with_attrs(**attrs: object) -> Dataset:
    ds = Dataset()
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    return ds


# ---- dcm4che test vectors ------------------------------------------------------------------


def test_full_example_from_the_dcm4che_unit_test() -> None:
    assert fmt(FULL_EXAMPLE) == "2011/10/12/09/02C82A3A/71668980/PRIMARY/1.2.3.4.5.dcm"


def test_md5_uses_dcm4ches_base32_form() -> None:
    pattern = "{00080020,date,yyyy/MM/dd}/{00080030,time,HH}/{0020000D,hash}/{0020000E,hash}/{00080018,md5}.dcm"
    assert fmt(pattern) == "2011/10/12/09/02C82A3A/71668980/08vpsu2l2shpb0kc3orpgfnhv0.dcm"


@pytest.mark.parametrize(("uid", "expected"), [("1.2.3", "02C82A3A"), ("1.2.3.4", "71668980")])
def test_hash_is_java_string_hashcode_in_upper_hex(uid: str, expected: str) -> None:
    assert fmt("{0020000D,hash}", with_attrs(StudyInstanceUID=uid)) == expected


def test_hash_collides_where_java_collides_and_counts_utf16_units() -> None:
    # "Aa" and "BB" are Java's classic hashCode collision (2112).
    assert fmt("{00100020,hash}", with_attrs(PatientID="Aa")) == "00000840"
    assert fmt("{00100020,hash}", with_attrs(PatientID="BB")) == "00000840"
    # A character outside the BMP is two UTF-16 units in Java: 31 * 0xD83D + 0xDE00.
    assert fmt("{00100020,hash}", with_attrs(PatientID="\U0001f600")) == f"{31 * 0xD83D + 0xDE00:08X}"


def test_md5_matches_the_bit_layout_described_in_the_spec() -> None:
    """An independent reading of the spec's description: two shifted 64-bit words, 5 bits at a time."""
    value = "Doe^John"
    digest = hashlib.md5(value.encode()).digest()
    low = int.from_bytes(digest[1:8] + b"\0", "big")
    high = int.from_bytes(digest[9:16] + b"\0", "big")
    bits = low | (high << 64)  # one 128-bit number: the 13th character spans both words
    alphabet = "0123456789abcdefghijklmnopqrstuv"
    expected = "".join(alphabet[(bits >> (5 * i)) & 0x1F] for i in range(26))
    result = fmt("{00100010,md5}", with_attrs(PatientName=value))
    assert result == expected
    assert result[0] == "0" and re.fullmatch("[0-9a-v]{26}", result)


def test_slice_cases() -> None:
    ds = with_attrs(PatientID="123456789")
    pattern = "{00100020,slice,3}/{00100020,slice,3,6}/{00100020,slice,-3}/{00100020,slice,-6,-3}"
    assert fmt(pattern, ds) == "456789/456/789/456"


@pytest.mark.parametrize(
    ("argument", "expected"),
    [("0,0", "123456789"), ("5,0", "123456789"), ("2,100", "3456789"), ("20", ""), ("6,3", ""), ("-100", "123456789")],
)
def test_slice_edges_follow_java_substring(argument: str, expected: str) -> None:
    assert fmt(f"{{PatientID,slice,{argument}}}", with_attrs(PatientID="123456789")) == expected


def test_offset_adds_to_the_integer_value() -> None:
    ds = with_attrs(SeriesNumber="1", InstanceNumber="2")
    assert fmt("{00200011,offset,100}/{00200013,offset,-1}", ds) == "101/1"


def test_date_and_time_shifts() -> None:
    pattern = "{00080020,date-P1M,yyyy/MM/dd}/{00080030,time+PT30M,HH/mm}"
    assert fmt(pattern) == "2011/09/12/10/00"


def test_now_fields_use_the_given_moment_and_shift_like_calendar_add() -> None:
    moment = datetime(2011, 3, 31, 23, 45, 1, 250_000)
    pattern = "{now,date-P1M,yyyy/MM/dd}/{now,time+PT30M,HH/mm}/{now,date,ss.SSS}"
    assert fmt(pattern, Dataset(), now=moment) == "2011/02/28/00/15/01.250"


def test_now_defaults_to_the_current_local_time() -> None:
    before = datetime.now().strftime("%Y")
    assert fmt("{now,date,yyyy}", Dataset()) in {before, datetime.now().strftime("%Y")}


def test_upper() -> None:
    assert fmt("{00100010,upper}", with_attrs(PatientName="Simson^Homer")) == "SIMSON^HOMER"


@pytest.mark.parametrize(
    ("value", "expected"),
    [("Doe^John", "Doe%5EJohn"), ("a b*c.d-e_f~g", "a+b*c.d-e_f%7Eg"), ("Müller/ü", "M%C3%BCller%2F%C3%BC")],
)
def test_urlencoded_is_java_urlencoder(value: str, expected: str) -> None:
    assert fmt("{00100010,urlencoded}", with_attrs(PatientName=value)) == expected


def test_random_fields_have_dcm4ches_shapes() -> None:
    shape = re.compile(r"[0-9A-F]{8}/[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}/2\.25\.\d+")
    first = fmt("{rnd}/{rnd,uuid}/{rnd,uid}", Dataset())
    second = fmt("{rnd}/{rnd,uuid}/{rnd,uid}", Dataset())
    assert shape.fullmatch(first) and shape.fullmatch(second)
    assert first != second


def test_now_and_rnd_prefixes_behave_as_in_dcm4che() -> None:
    # dcm4che tests only the prefix: {now} with no date type reads no attribute at all.
    assert fmt("{now}|{now,hash}|{now,number,00}", Dataset()) == "|null|00"
    assert re.fullmatch(r"[0-9A-F]{8}", fmt("{rnd}", Dataset()))


# ---- absent values ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "expected"),
    [
        ("{00100020}", ""),
        ("{00100020,none}", ""),
        ("{00100020,upper}", ""),
        ("{00100020,slice,2}", ""),
        ("{00200013,number,0}", "0"),
        ("{00200013,number,0000}", "0000"),
        ("{00200013,offset,7}", "7"),
        ("{00080020,date,yyyy}", "null"),
        ("{00080020,date-P1M,yyyy}", "null"),
        ("{00080030,time,HH}", "null"),
        ("{00080030,time+PT1H,HH}", "null"),
        ("{00200013,choice,0#zero|1#one}", "zero"),
        ("{00100020,hash}", "null"),
        ("{00100020,md5}", "null"),
        ("{00100020,urlencoded}", "null"),
        ("{00080008[3]}", ""),
        ("{00080008[3],hash}", "null"),
    ],
)
def test_absent_values(field: str, expected: str) -> None:
    assert fmt(field, with_attrs(ImageType=["ORIGINAL", "PRIMARY", "AXIAL"])) == expected


def test_an_empty_value_counts_as_absent() -> None:
    ds = with_attrs(PatientID="", ImageType=["A", "", "C"])
    assert fmt("{PatientID}|{PatientID,hash}|{ImageType[1],hash}|{ImageType[2]}", ds) == "|null|null|C"


@pytest.mark.parametrize("type_part", ["", ",upper", ",slice,1", ",number,0", ",offset,1", ",date,yyyy", ",hash", ",md5"])
def test_a_missing_sequence_item_gives_null_for_every_type(type_part: str) -> None:
    ds = with_attrs(ContentSequence=Sequence([]))
    assert fmt(f"{{0040A730.0040A043{type_part}}}", ds) == "null"
    assert fmt(f"{{0040A730.0040A043{type_part}}}", Dataset()) == "null"


# ---- tags, indexes, sequences, quoting ---------------------------------------------------


def test_keywords_hex_tags_and_value_indexes_are_equivalent() -> None:
    assert fmt("{ImageType[2]}/{00080008[2]}/{80008[0]}/{SOPInstanceUID}") == "AXIAL/AXIAL/ORIGINAL/1.2.3.4.5"


def test_a_dotted_path_reads_the_first_item_of_each_sequence() -> None:
    inner = with_attrs(CodeValue="T-1")
    item = with_attrs(ConceptNameCodeSequence=Sequence([inner]), ValueType="CODE")
    other = with_attrs(ValueType="TEXT")
    ds = with_attrs(ContentSequence=Sequence([item, other]))
    assert fmt("{0040A730.0040A040}/{ContentSequence.ConceptNameCodeSequence.CodeValue}", ds) == "CODE/T-1"


def test_messageformat_quoting_of_literal_text() -> None:
    assert fmt("it''s/'a,b'/{00080018}") == "it's/a,b/1.2.3.4.5"
    # As in dcm4che the braces are split before quoting: a quoted field prints its element.
    assert fmt("'{00080018}'/{0020000D}") == "{0}/1.2.3"


def test_binary_integers_tags_and_floats_become_text_like_dcm4che() -> None:
    ds = with_attrs(Rows=512, FrameIncrementPointer=0x00181063, RescaleSlope="1.50")
    ds.add_new(0x00189089, "FD", [1.0, 0.25])  # DiffusionGradientOrientation
    assert fmt("{Rows}/{FrameIncrementPointer}/{RescaleSlope}/{00189089}/{00189089[1]}", ds) == (
        "512/00181063/1.50/1/0.25"
    )


# ---- number, choice, date formats --------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "style", "expected"),
    [
        ("7", "0000", "0007"),
        ("12345", "0000", "12345"),
        ("1234567", "#,##0", "1,234,567"),
        ("2.5", "0", "2"),
        ("3.5", "0", "4"),
        ("0.125", "0.00", "0.12"),
        ("0.15", "0.0", "0.1"),
        ("1.5", "#.##", "1.5"),
        ("0.5", "#", "0"),
        ("0.5", "#.#", ".5"),
        ("-3", "000", "-003"),
        ("42", "'n'000'.dcm'", "n042.dcm"),
        ("42", "0.00", "42.00"),
    ],
)
def test_number_uses_decimalformat(value: str, style: str, expected: str) -> None:
    assert fmt(f"{{00180050,number,{style}}}", with_attrs(SliceThickness=value)) == expected


@pytest.mark.parametrize(("number", "expected"), [("0", "none"), ("1", "one"), ("1.5", "many"), ("-2", "none")])
def test_choice(number: str, expected: str) -> None:
    assert fmt("{SliceThickness,choice,0#none|1#one|1<many}", with_attrs(SliceThickness=number)) == expected


@pytest.mark.parametrize(
    ("attrs", "pattern", "expected"),
    [
        ({"StudyDate": "20111012"}, "{StudyDate,date,yy-M-d D}", "11-10-12 285"),
        ({"StudyDate": "2011.10.12"}, "{StudyDate,date,yyyyMMdd}", "20111012"),
        ({"StudyDate": "20120331"}, "{StudyDate,date-P1M,yyyy/MM/dd}", "2012/02/29"),
        ({"StudyDate": "20120229"}, "{StudyDate,date+P1Y,yyyy/MM/dd}", "2013/02/28"),
        ({"StudyDate": "20111231"}, "{StudyDate,dateP2W,yyyy/MM/dd}", "2012/01/14"),
        ({"StudyDate": "20111012"}, "{StudyDate,date-P1Y1M1D,yyyy/MM/dd}", "2010/09/11"),
        ({"StudyDate": "20111332"}, "{StudyDate,date,yyyy/MM/dd}", "2012/02/01"),
        ({"StudyTime": "235959.9996"}, "{StudyTime,time,HH:mm:ss.SSS}", "00:00:00.000"),
        ({"StudyTime": "093015.123456"}, "{StudyTime,time,H/m/s/S/SSSS}", "9/30/15/123/0123"),
        ({"StudyTime": "09:30"}, "{StudyTime,time-PT1H30M,HH'h'mm}", "08h00"),
        ({"StudyTime": "0930"}, "{StudyTime,time+PT29M59.9S,HH/mm/ss}", "09/59/59"),
        ({"StudyTime": "1300"}, "{StudyTime,time,h K k}", "1 1 13"),
        ({"StudyTime": "0030"}, "{StudyTime,time,hh KK kk}", "12 00 24"),
        ({"AcquisitionDateTime": "20111012093015+0100"}, "{AcquisitionDateTime,date,yyyyMMddHHmmss}", "20111012093015"),
        ({"AcquisitionDateTime": "2011"}, "{AcquisitionDateTime,date,yyyy/MM/dd}", "2011/01/01"),
        ({"StudyDate": "20111012"}, "{StudyDate,date,yyyy''MM'-x-'dd}", "2011'10-x-12"),
        ({"StudyDate": "20111012"}, "{StudyDate,time,HH}", "00"),
    ],
)
def test_dates_use_simpledateformat(attrs: dict[str, str], pattern: str, expected: str) -> None:
    assert fmt(pattern, with_attrs(**attrs)) == expected


# ---- errors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "pattern",
    [
        "{00080018,bogus}",
        "{00020010,urlencoded?}",
        "a}b",
        "{00080018",
        "{00080018}}",
        "{}",
        "{NoSuchKeyword}",
        "{00080018[x]}",
        "{00080008[-1]}",
        "{00080008[]}",
        "{0040A730..0040A043}",
        "{FFFFFFFF}",
        "{00080018,offset}",
        "{00080018,offset,x}",
        "{00080018,offset,99999999999}",
        "{00080018,slice}",
        "{00080018,slice,1,2,3}",
        "{00080018,hash,extra}",
        "{rnd,hash}",
        "{rnd,rnd}",
        "{00080020,date}",
        "{00080020,date,short}",
        "{00080020,date,MMM}",
        "{00080020,date,EEE}",
        "{00080020,date,yyyy Z}",
        "{00080020,date,yyyy'}",
        "{00080020,dateX,yyyy}",
        "{00080020,date-P,yyyy}",
        "{00080030,time+PT,HH}",
        "{00080030,time+P1M,HH}",
        "{00200013,number}",
        "{00200013,number,integer}",
        "{00200013,number,0.0E0}",
        "{00200013,number,#%}",
        "{00200013,number,0;(0)}",
        "{00200013,number,x}",
        "{00200013,choice,a#x}",
        "{00200013,choice,1#a|0#b}",
        "{00200013,choice,1#a#b}",
        "{00200013,choice,1#{0}}",
        "{00200013,choice,}",
    ],
)
def test_bad_or_unsupported_patterns_raise_config_error(pattern: str) -> None:
    with pytest.raises(ConfigError):
        FilePathPattern.compile(pattern)


@pytest.mark.parametrize(
    ("pattern", "attrs"),
    [
        ("{SOPInstanceUID,number,0}", {"SOPInstanceUID": "1.2.3"}),
        ("{PatientID,offset,1}", {"PatientID": "12"}),
        ("{PatientID,date,yyyy}", {"PatientID": "20111012"}),
        ("{StudyDate,date,yyyy}", {"StudyDate": "2011-1"}),
        ("{StudyTime,time,HH}", {"StudyTime": "9"}),
    ],
)
def test_values_that_cannot_be_formatted_raise_path_error(pattern: str, attrs: dict[str, str]) -> None:
    with pytest.raises(PathError) as info:
        fmt(pattern, with_attrs(**attrs))
    assert info.value.status == STATUS_PROCESSING_FAILURE


def test_binary_values_are_refused_not_guessed() -> None:
    ds = Dataset()
    ds.add_new(0x00091010, "UN", b"\x01\x02")
    with pytest.raises(PathError):
        fmt("{00091010}", ds)


def test_compiled_patterns_compare_by_text() -> None:
    a, b = FilePathPattern.compile(FULL_EXAMPLE), FilePathPattern.compile(FULL_EXAMPLE)
    assert a == b and hash(a) == hash(b) and a.pattern == FULL_EXAMPLE
    assert "FilePathPattern.compile" in repr(a)


# ---- storescp conformance tests 7-10 and 17 ------------------------------------------------

NESTED = "{00100020}/{0020000D}/{0020000E}/{00080018}.dcm"


def test_conformance_7_nested_directories() -> None:
    ds = dcm4che_dataset()
    ds.PatientID = "P1"
    assert relative_path_for(FilePathPattern.compile(NESTED), ds, "ignored") == "P1/1.2.3/1.2.3.4/1.2.3.4.5.dcm"


def test_conformance_8_missing_patient_id_collapses_the_empty_component() -> None:
    pattern = FilePathPattern.compile(NESTED)
    assert pattern.format(dcm4che_dataset()) == "/1.2.3/1.2.3.4/1.2.3.4.5.dcm"
    assert relative_path_for(pattern, dcm4che_dataset(), "ignored") == "1.2.3/1.2.3.4/1.2.3.4.5.dcm"


def test_conformance_9_hash_md5_urlencoded() -> None:
    ds = dcm4che_dataset()
    ds.PatientName = "Doe^John"
    pattern = FilePathPattern.compile("{0020000D,hash}/{00080018,md5}/{00100010,urlencoded}")
    assert relative_path_for(pattern, ds, "x") == "02C82A3A/08vpsu2l2shpb0kc3orpgfnhv0/Doe%5EJohn"


def test_conformance_10_hash_of_missing_patient_id_is_null() -> None:
    pattern = FilePathPattern.compile("{00100020,hash}/{00080018}.dcm")
    assert relative_path_for(pattern, dcm4che_dataset(), "x") == "null/1.2.3.4.5.dcm"


def test_conformance_17_patient_id_escaping_is_refused() -> None:
    ds = dcm4che_dataset()
    ds.PatientID = "../../escape"
    with pytest.raises(PathError) as info:
        relative_path_for(FilePathPattern.compile(NESTED), ds, "x")
    assert info.value.status == STATUS_PROCESSING_FAILURE


def test_without_a_pattern_the_file_is_named_by_sop_instance_uid() -> None:
    assert relative_path_for(None, Dataset(), "1.2.3.4.5") == "1.2.3.4.5"
    with pytest.raises(PathError):
        relative_path_for(None, Dataset(), "..")


# ---- safe_relative_path --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("a/b/c.dcm", "a/b/c.dcm"),
        ("/a/b", "a/b"),
        ("//a///b//", "a/b"),
        ("...", "..."),
        ("a/.b/..c", "a/.b/..c"),
        ("x/.incoming/y", "x/.incoming/y"),
        ("Müller/日本", "Müller/日本"),
        ("a" * 255, "a" * 255),
    ],
)
def test_safe_paths_are_normalised(raw: str, expected: str) -> None:
    assert safe_relative_path(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "/",
        "///",
        ".",
        "..",
        "../../etc/passwd",
        "a/../../b",
        "a/./b",
        "/..",
        "a\\..\\b",
        "a\x00b",
        "a\nb",
        "a\x1fb",
        "a\x7fb",
        ".incoming/tmp/x",
        "/.incoming",
        ".INCOMING/x",
        "a" * 256,
        "é" * 128,
        "a/" * 600,
        "\ud800",
    ],
)
def test_unsafe_paths_raise_path_error(raw: str) -> None:
    with pytest.raises(PathError) as info:
        safe_relative_path(raw)
    assert info.value.status == STATUS_PROCESSING_FAILURE


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real directory to resolve against (nothing is written into it)."""
    return tmp_path_factory.mktemp("store").resolve()


def assert_stays_inside(store: Path, relpath: str) -> None:
    """Joined and resolved, the path is strictly below the store and outside .incoming."""
    lexical = posixpath.normpath(posixpath.join(str(store), relpath))
    resolved = (store / relpath).resolve()
    for target in (Path(lexical), resolved):
        assert store in target.parents
        assert target.relative_to(store).parts[0].casefold() != ".incoming"
    assert not os.path.isabs(relpath)
    assert safe_relative_path(relpath) == relpath  # idempotent


HOSTILE_PARTS = st.sampled_from(
    ["..", ".", "", "/", "//", "\\", "\x00", "\n", ".incoming", "etc", "passwd", "\u202e", "é", "\U0001f600", "a" * 300]
)
HOSTILE_TEXT = st.lists(st.one_of(HOSTILE_PARTS, st.text(max_size=20)), max_size=12).map("".join) | st.text(
    max_size=1500
)


@settings(max_examples=400, deadline=None)
@given(raw=HOSTILE_TEXT)
def test_property_any_text_stays_inside_or_raises(store_dir: Path, raw: str) -> None:
    try:
        relpath = safe_relative_path(raw)
    except PathError:
        return
    assert_stays_inside(store_dir, relpath)


@settings(max_examples=300, deadline=None)
@given(patient_id=HOSTILE_TEXT, study=HOSTILE_TEXT, name=HOSTILE_TEXT)
def test_property_hostile_attribute_values_through_a_pattern(
    store_dir: Path, patient_id: str, study: str, name: str
) -> None:
    item = Dataset()
    item.TextValue = name
    ds = with_attrs(PatientID=patient_id, StudyDescription=study, ContentSequence=Sequence([item]))
    pattern = FilePathPattern.compile("{00100020}/{StudyDescription,upper}/{0040A730.0040A160,slice,-40}.dcm")
    try:
        relpath = relative_path_for(pattern, ds, "1.2.3")
    except PathError:
        return
    assert_stays_inside(store_dir, relpath)


@settings(max_examples=200, deadline=None)
@given(value=st.text(max_size=200))
def test_property_hash_md5_urlencoded_always_give_safe_single_components(value: str) -> None:
    ds = with_attrs(PatientID=value)
    result = fmt("{PatientID,hash}|{PatientID,md5}|{PatientID,urlencoded}", ds)
    for part in result.split("|", 2):
        assert part == "null" or re.fullmatch(r"[0-9A-Za-z.*_%+-]+", part)
