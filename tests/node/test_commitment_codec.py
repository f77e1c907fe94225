"""node.commitment_codec against pydicom, the reference: the same bytes written, the same
request or report read, and for malformed bytes the same error and DIMSE status (the codec
leaves them to pydicom). The datasets are built here byte by byte, independently of both."""

from __future__ import annotations

import struct
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from node import commitment as sc
from node import commitment_codec as codec

IMPLICIT, EXPLICIT = codec.IMPLICIT_LE, codec.EXPLICIT_LE
SYNTAXES = (IMPLICIT, EXPLICIT)
CT = "1.2.840.10008.5.1.4.1.1.2"
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom on hostile values

VRS = {0x00081195: b"UI", 0x00081198: b"SQ", 0x00081199: b"SQ", 0x00081150: b"UI", 0x00081155: b"UI", 0x00081197: b"US"}


# ----------------------------------------------------------------------------- a builder


def element(tag: int, value: bytes, explicit: bool, *, vr: bytes | None = None, undefined: bool = False) -> bytes:
    """One element; ``undefined`` writes 0xFFFFFFFF (``value`` then ends with its delimiter)."""
    vr = vr or VRS[tag]
    length = 0xFFFFFFFF if undefined else len(value)
    if not explicit:
        return struct.pack("<HHI", tag >> 16, tag & 0xFFFF, length) + value
    if vr in (b"SQ", b"UN", b"OB"):
        return struct.pack("<HH2sHI", tag >> 16, tag & 0xFFFF, vr, 0, length) + value
    return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr, length) + value


def item(body: bytes, undefined: bool) -> bytes:
    if undefined:
        return struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF) + body + struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
    return struct.pack("<HHI", 0xFFFE, 0xE000, len(body)) + body


def sequence(tag: int, items: list[bytes], explicit: bool, undefined: bool) -> bytes:
    body = b"".join(items)
    if undefined:
        return element(tag, body + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0), explicit, undefined=True)
    return element(tag, body, explicit)


def uid(text: str, pad: bytes = b"\0") -> bytes:
    raw = text.encode("latin-1")
    return raw + pad if len(raw) % 2 else raw


# ----------------------------------------------------------------------------- outcomes


def outcome(call: Callable[[], object]) -> tuple:
    """A result, or the error's type, status and text: what a peer would be answered."""
    try:
        return ("ok", call())
    except Exception as exc:  # noqa: BLE001 - any error must be the same error
        return ("error", type(exc).__name__, getattr(exc, "status", None), str(exc))


def by_pydicom(parse: Callable, data: bytes, ts: str) -> tuple:
    """What ``parse`` answered before the codec: pydicom decodes, then the rules."""
    def call() -> object:
        return parse(sc.decode(data, ts))
    return outcome(call)


def request_of(data: object, ts: str = IMPLICIT) -> sc.Request:
    return sc.parse_request(1, sc.SOP_CLASS, sc.SOP_INSTANCE, data, ts)  # type: ignore[arg-type]


def report_of(data: object, ts: str = IMPLICIT) -> sc.Report:
    return sc.parse_report(2, sc.SOP_CLASS, sc.SOP_INSTANCE, data, ts)  # type: ignore[arg-type]


def assert_same_answers(data: bytes, ts: str) -> None:
    """parse_request and parse_report on bytes (codec, or pydicom when it declines) answer as
    pydicom alone did."""
    for parse in (lambda d: request_of(d, ts), lambda d: report_of(d, ts)):
        assert outcome(lambda: parse(data)) == by_pydicom(parse, data, ts)


def codec_reads(data: bytes, ts: str) -> bool:
    try:
        codec.read(data, ts)
        return True
    except codec.Unusual:
        return False


# ----------------------------------------------------------------------------- generated datasets

uid_text = st.text(alphabet="0123456789.", max_size=70) | st.sampled_from(["", " ", "1.2 ", " 1.2", "1.2\0", "1.2.3"])
pads = st.sampled_from([b"\0", b" ", b""])  # b"": an odd length left odd


@st.composite
def items(draw: st.DrawFn, failed: bool, explicit: bool) -> bytes:
    """An item: each UID present or not (empty, odd, padded with NUL or space), a reason or not."""
    body = b""
    if draw(st.integers(0, 9)):
        body += element(0x00081150, uid(draw(uid_text), draw(pads)), explicit)
    if draw(st.integers(0, 9)):
        body += element(0x00081155, uid(draw(uid_text), draw(pads)), explicit)
    if failed and draw(st.integers(0, 5)):
        body += element(0x00081197, struct.pack("<H", draw(st.integers(0, 0xFFFF))), explicit)
    return item(body, draw(st.booleans()))


@st.composite
def datasets(draw: st.DrawFn) -> tuple[bytes, str]:
    """A well-framed commitment dataset: any sequence and item lengths, presence and padding."""
    explicit = draw(st.booleans())
    data = b""
    if draw(st.integers(0, 9)):
        data += element(0x00081195, uid(draw(uid_text), draw(pads)), explicit)
    for tag, failed in ((0x00081198, True), (0x00081199, False)):
        if draw(st.integers(0, 4)):
            made = draw(st.lists(items(failed, explicit), max_size=6))
            data += sequence(tag, made, explicit, draw(st.booleans()))
    return data, EXPLICIT if explicit else IMPLICIT


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(datasets())
def test_generated_datasets_read_as_pydicom_reads_them(case: tuple[bytes, str]) -> None:
    data, ts = case
    assert codec_reads(data, ts), "well-framed datasets of the known elements are the codec's"
    assert_same_answers(data, ts)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(datasets(), st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)), min_size=1, max_size=3),
       st.integers(0, 1 << 16))
def test_generated_datasets_changed_or_cut_are_answered_as_pydicom_answers_them(
        case: tuple[bytes, str], changes: list[tuple[int, int]], cut: int) -> None:
    data, ts = case
    changed = bytearray(data)
    for pos, value in changes:
        if changed:
            changed[pos % len(changed)] = value
    assert_same_answers(bytes(changed), ts)
    assert_same_answers(data[:cut % (len(data) + 1)], ts)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(uid_text.filter(lambda t: "\0" not in t), uid_text.filter(lambda t: "\0" not in t),
                          st.integers(0, 0xFFFF)), max_size=8),
       st.integers(0, 8), uid_text.filter(lambda t: "\0" not in t), st.sampled_from(SYNTAXES))
def test_written_bytes_are_pydicoms(rows: list[tuple[str, str, int]], split: int, txn: str, ts: str) -> None:
    refs = tuple(sc.Ref(c, i) for c, i, _r in rows)
    report = sc.Report(txn, refs[:split], tuple(sc.Failed(c, i, r) for c, i, r in rows[split:]))
    assert codec.encode_request(txn, refs, ts) == sc.encode(sc.request_dataset(sc.Request(txn, refs)), ts)
    assert codec.encode_report(txn, report.committed, report.failed, ts) == sc.encode(sc.report_dataset(report), ts)


@pytest.mark.parametrize("text", ["1.2.é", "1.2\t3", "1.2\n", "1.2\0", "1.2\\1.3 "])
def test_values_the_codec_would_not_write_as_pydicom_are_left_to_pydicom(text: str) -> None:
    request = sc.Request("1.2.3", (sc.Ref(CT, text),))
    report = sc.Report("1.2.3", (), (sc.Failed(CT, text, 0x0110),))
    for ts in SYNTAXES:
        assert codec.encode_request("1.2.3", request.refs, ts) is None
        assert codec.encode_report("1.2.3", (), report.failed, ts) is None
        assert sc.request_bytes(request, ts) == sc.encode(sc.request_dataset(request), ts)
        assert sc.report_bytes(report, ts) == sc.encode(sc.report_dataset(report), ts)


def test_a_failure_reason_out_of_range_fails_as_pydicom_fails() -> None:
    report = sc.Report("1.2.3", (), (sc.Failed(CT, "1.2.3.4", 0x1_0000),))
    assert codec.encode_report("1.2.3", (), report.failed, IMPLICIT) is None
    assert outcome(lambda: sc.report_bytes(report))[:2] == outcome(lambda: sc.encode(sc.report_dataset(report)))[:2]


def test_other_transfer_syntaxes_go_to_pydicom() -> None:
    big = "1.2.840.10008.1.2.2"
    request = sc.Request("1.2.3", (sc.Ref(CT, "1.2.3.4"),))
    assert codec.encode_request("1.2.3", request.refs, big) is None
    data = sc.encode(sc.request_dataset(request), big)
    assert not codec_reads(data, big)
    assert request_of(data, big) == request


def test_ten_thousand_items_both_syntaxes_both_ways() -> None:
    refs = tuple(sc.Ref(CT, f"1.2.826.0.1.3680043.8.498.{10**30 + n}") for n in range(10_000))
    report = sc.Report("1.2.3.45", refs[:6000], tuple(sc.Failed(r.sop_class_uid, r.sop_instance_uid, 0x0112)
                                                      for r in refs[6000:]))
    for ts in SYNTAXES:
        data = sc.request_bytes(sc.Request("1.2.3.45", refs), ts)
        assert data == sc.encode(sc.request_dataset(sc.Request("1.2.3.45", refs)), ts)
        assert request_of(data, ts) == request_of(sc.decode(data, ts)) == sc.Request("1.2.3.45", refs)
        data = sc.report_bytes(report, ts)
        assert data == sc.encode(sc.report_dataset(report), ts)
        assert report_of(data, ts) == report_of(sc.decode(data, ts)) == report


# ----------------------------------------------------------------------------- malformed bytes


def small(explicit: bool, undefined: bool) -> bytes:
    """Transaction UID, one failed and two referenced items (odd and even UIDs)."""
    refs = [item(element(0x00081150, uid(CT), explicit) + element(0x00081155, uid(f"1.2.3.{n}"), explicit), undefined)
            for n in (4, 45)]
    failed = [item(element(0x00081150, uid(CT), explicit) + element(0x00081155, uid("1.2.9"), explicit)
                   + element(0x00081197, struct.pack("<H", 0x0112), explicit), undefined)]
    return (element(0x00081195, uid("1.2.3"), explicit) + sequence(0x00081198, failed, explicit, undefined)
            + sequence(0x00081199, refs, explicit, undefined))


CASES = [(explicit, undefined) for explicit in (False, True) for undefined in (False, True)]


@pytest.mark.parametrize("explicit, undefined", CASES)
def test_every_truncation_is_answered_as_pydicom_answers_it(explicit: bool, undefined: bool) -> None:
    data, ts = small(explicit, undefined), EXPLICIT if explicit else IMPLICIT
    assert codec_reads(data, ts)
    for end in range(len(data)):
        assert_same_answers(data[:end], ts)


@pytest.mark.parametrize("explicit, undefined", CASES)
def test_every_byte_changed_is_answered_as_pydicom_answers_it(explicit: bool, undefined: bool) -> None:
    data, ts = small(explicit, undefined), EXPLICIT if explicit else IMPLICIT
    for pos in range(len(data)):
        for value in {0x00, 0xFF, 0x5C, data[pos] ^ 0x01}:
            assert_same_answers(data[:pos] + bytes([value]) + data[pos + 1:], ts)


def hostile(explicit: bool) -> dict[str, bytes]:
    """Datasets a careless reader would take; the codec leaves each to pydicom."""
    def ref(body: bytes) -> bytes:
        return element(0x00081195, uid("1.2.3"), explicit) + sequence(0x00081199, [item(body, False)], explicit, False)

    good = element(0x00081150, uid(CT), explicit) + element(0x00081155, uid("1.2.4"), explicit)
    return {
        "an unknown element in an item": ref(good + element(0x00081160, b"\0\0", explicit, vr=b"US")),
        "an unknown element at the top": element(0x00080016, uid(CT), explicit, vr=b"UI") + ref(good),
        "elements out of order": sequence(0x00081199, [item(good, False)], explicit, False) + element(0x00081195, uid("1.2.3"), explicit),
        "an element twice": element(0x00081195, uid("1.2.3"), explicit) + element(0x00081195, uid("1.2.4"), explicit),
        "a sequence twice": ref(good) + sequence(0x00081199, [item(good, False)], explicit, False),
        "sequences out of order": ref(good) + sequence(0x00081198, [item(good, False)], explicit, False),
        "a repeated UID in an item": ref(good + element(0x00081155, uid("1.2.5"), explicit)),
        "a backslash in a UID": ref(element(0x00081150, uid(CT), explicit) + element(0x00081155, b"1.2\\1.3\0", explicit)),
        "a non-ASCII UID": ref(element(0x00081150, uid(CT), explicit) + element(0x00081155, "1.2.é".encode("latin-1"), explicit)),
        "a Failure Reason of 4 bytes": ref(good + element(0x00081197, b"\x10\x01\0\0", explicit)),
        "an empty Failure Reason": ref(good + element(0x00081197, b"", explicit)),
        "an item delimiter with a length": element(0x00081195, uid("1.2.3"), explicit) + element(
            0x00081199, struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF) + good + struct.pack("<HHI", 0xFFFE, 0xE00D, 4)
            + b"\0" * 4 + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0), explicit, undefined=True),
        "a huge length": element(0x00081195, uid("1.2.3"), explicit) + struct.pack("<HHI", 0x0008, 0x1199, 0xFFFFFFFE)
        if not explicit else element(0x00081195, uid("1.2.3"), explicit) + struct.pack("<HH2sHI", 8, 0x1199, b"SQ", 0, 0xFFFFFFFE),
        "an item longer than its sequence": element(0x00081195, uid("1.2.3"), explicit) + element(
            0x00081199, struct.pack("<HHI", 0xFFFE, 0xE000, len(good) + 8) + good, explicit),
        "a sequence delimiter in a defined-length sequence": element(0x00081195, uid("1.2.3"), explicit) + element(
            0x00081199, item(good, False) + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0), explicit),
        "an undefined-length UID": element(0x00081195, b"1.2.3\0" + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0), explicit,
                                           undefined=True) if not explicit else element(0x00081195, b"", explicit, vr=b"UN"),
        "stray bytes at the end": ref(good) + b"\0\0\0",
    }


def wrong_vrs() -> dict[str, bytes]:
    """Explicit VR datasets whose VRs are not the dictionary's."""
    good = element(0x00081150, uid(CT), True) + element(0x00081155, uid("1.2.4"), True)
    return {
        "Transaction UID as LO": element(0x00081195, uid("1.2.3"), True, vr=b"LO") + sequence(0x00081199, [item(good, False)], True, False),
        "the sequence as UN": element(0x00081195, uid("1.2.3"), True) + element(0x00081199, item(good, False), True, vr=b"UN"),
        "an instance UID as SH": element(0x00081195, uid("1.2.3"), True) + sequence(
            0x00081199, [item(element(0x00081150, uid(CT), True) + element(0x00081155, uid("1.2.4"), True, vr=b"SH"), False)], True, False),
        "a reason as UL": element(0x00081195, uid("1.2.3"), True) + sequence(
            0x00081198, [item(good + element(0x00081197, b"\x10\x01\0\0", True, vr=b"UL"), False)], True, False),
        "an implicit element in explicit": element(0x00081195, uid("1.2.3"), False) + sequence(0x00081199, [item(good, False)], True, False),
        "an invalid VR": element(0x00081195, uid("1.2.3"), True, vr=b"zz"),
    }


@pytest.mark.parametrize("explicit", [False, True])
def test_hostile_datasets_are_left_to_pydicom_and_answered_as_before(explicit: bool) -> None:
    ts = EXPLICIT if explicit else IMPLICIT
    for name, data in hostile(explicit).items():
        assert not codec_reads(data, ts), name
        assert_same_answers(data, ts)


def test_wrong_vrs_in_explicit_vr_are_left_to_pydicom_and_answered_as_before() -> None:
    for name, data in wrong_vrs().items():
        assert not codec_reads(data, EXPLICIT), name
        assert_same_answers(data, EXPLICIT)


def test_refusals_keep_their_status() -> None:
    """The rules' errors through the codec: each the status pydicom's path gave."""
    def dataset(txn: str, refs: list[tuple[str, str]] | None) -> bytes:
        data = element(0x00081195, uid(txn), False) if txn else b""
        if refs is not None:
            data += sequence(0x00081199, [item(element(0x00081150, uid(c), False) * bool(c)
                                               + element(0x00081155, uid(i), False) * bool(i), False) for c, i in refs], False, False)
        return data

    cases = {
        "no Transaction UID": (dataset("", [(CT, "1.2.4")]), sc.STATUS_INVALID_ARGUMENT_VALUE),
        "no sequence": (dataset("1.2.3", None), sc.STATUS_INVALID_ARGUMENT_VALUE),
        "an empty sequence": (dataset("1.2.3", []), sc.STATUS_INVALID_ARGUMENT_VALUE),
        "an item without its class": (dataset("1.2.3", [(CT, "1.2.4"), ("", "1.2.5")]), sc.STATUS_INVALID_ARGUMENT_VALUE),
        "an instance twice": (dataset("1.2.3", [(CT, "1.2.4"), (CT, "1.2.4")]), sc.STATUS_INVALID_ARGUMENT_VALUE),
    }
    for name, (data, status) in cases.items():
        assert codec_reads(data, IMPLICIT), name
        answer = outcome(lambda: request_of(data))
        assert answer == by_pydicom(request_of, data, IMPLICIT), name
        assert answer[:3] == ("error", "CommitmentError", status), name
    data = dataset("1.2.3", [(CT, f"1.2.{n}") for n in range(5)])
    with pytest.raises(sc.CommitmentError) as info:
        sc.parse_request(1, sc.SOP_CLASS, sc.SOP_INSTANCE, data, max_instances=4)
    assert info.value.status == sc.STATUS_RESOURCE_LIMITATION
