"""Storage Commitment Push Model (PS3.4 Annex J) as pure logic: no sockets, no database.

Both sides of the service meet here, so the tracker, the workers and ``nodectl stcomscu``
agree on every rule:

* the *request* (N-ACTION, Action Type ID 1): Transaction UID (0008,1195) and a Referenced
  SOP Sequence (0008,1199) of (SOP Class UID, SOP Instance UID) items;
* the *report* (N-EVENT-REPORT, Event Type ID 1 "all committed" or 2 "failures exist"):
  the same Transaction UID, the committed items, and a Failed SOP Sequence (0008,1198) whose
  items add a Failure Reason (0008,1197).

Rules stated once:

1. A request is refused as a whole (N-ACTION-RSP failure status, nothing recorded) when it
   cannot be a valid Storage Commitment request: wrong action type (0x0123 No such action),
   wrong SOP instance (0x0112 No such SOP Instance), wrong SOP class (0x0118), no dataset,
   no Transaction UID or no Referenced SOP Sequence, an item without its UIDs, the same
   instance listed twice (0x0115 Invalid argument value), or more instances than the node
   takes at once (0x0213 Resource limitation). PS3.7 10.1.4.1.10 lists these for N-ACTION.
2. A report is refused (N-EVENT-REPORT-RSP failure) for an unknown event type (0x0113 No
   such event type), the wrong SOP instance (0x0112) or class (0x0118), or a dataset
   without Transaction UID (0x0115). A report for a transaction nobody here started is
   answered 0x0115 (its Transaction UID is not an argument we know) and kept, so that a
   transaction recorded a moment later still completes. A report that arrives again for a
   completed transaction is answered 0x0000: the sender is retrying because it lost our
   first answer, and a failure would make it retry forever.
3. Each instance of an accepted request is committed only if the index knows it, with the
   same SOP class, and its file is still there and readable; otherwise it fails with the
   Failure Reason PS3.3 C.14.1.1 names (0x0112 No such object instance, 0x0119
   Class/Instance conflict, 0x0110 Processing failure).

Transaction states (SCU side) and their transitions are the table ``TRANSITIONS``.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from io import BytesIO

from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import UID, ImplicitVRLittleEndian

from node import commitment_codec as codec
from node.errors import NodeError, PeerError

SOP_CLASS = "1.2.840.10008.1.20.1"
SOP_INSTANCE = "1.2.840.10008.1.20.1.1"
ACTION_REQUEST_COMMITMENT = 1
EVENT_ALL_COMMITTED = 1
EVENT_FAILURES_EXIST = 2

# DIMSE statuses for N-ACTION and N-EVENT-REPORT (PS3.7 Annex C).
STATUS_SUCCESS = 0x0000
STATUS_PROCESSING_FAILURE = 0x0110
STATUS_NO_SUCH_SOP_INSTANCE = 0x0112
STATUS_NO_SUCH_EVENT_TYPE = 0x0113
STATUS_INVALID_ARGUMENT_VALUE = 0x0115
STATUS_NO_SUCH_SOP_CLASS = 0x0118
STATUS_NO_SUCH_ACTION = 0x0123
STATUS_RESOURCE_LIMITATION = 0x0213

# Failure Reason (0008,1197) values (PS3.3 C.14.1.1).
REASON_PROCESSING_FAILURE = 0x0110
REASON_NO_SUCH_OBJECT_INSTANCE = 0x0112
REASON_CLASS_INSTANCE_CONFLICT = 0x0119
REASON_CLASS_NOT_SUPPORTED = 0x0122
REASON_RESOURCE_LIMITATION = 0x0213
REASON_DUPLICATE_TRANSACTION_UID = 0x0131

DEFAULT_MAX_INSTANCES = 50_000


class CommitmentError(PeerError):
    """A request or report that breaks PS3.4 Annex J; ``status`` is the DIMSE answer."""

    status = STATUS_INVALID_ARGUMENT_VALUE


class TransitionError(NodeError):
    """A transaction was asked to move along an edge the state table does not have (our bug)."""


@dataclass(frozen=True, slots=True)
class Ref:
    """One referenced SOP instance."""

    sop_class_uid: str
    sop_instance_uid: str


@dataclass(frozen=True, slots=True)
class Failed:
    """One instance the SCP did not commit, and why (a Failure Reason value)."""

    sop_class_uid: str
    sop_instance_uid: str
    reason: int


@dataclass(frozen=True, slots=True)
class Request:
    """A checked N-ACTION: the transaction and the instances it asks to commit."""

    transaction_uid: str
    refs: tuple[Ref, ...]


@dataclass(frozen=True, slots=True)
class Report:
    """A checked N-EVENT-REPORT (or one we are about to send)."""

    transaction_uid: str
    committed: tuple[Ref, ...]
    failed: tuple[Failed, ...]

    @property
    def event_type(self) -> int:
        """1 when nothing failed, else 2 (PS3.4 J.3.3)."""
        return EVENT_FAILURES_EXIST if self.failed else EVENT_ALL_COMMITTED


@dataclass(frozen=True, slots=True)
class Fact:
    """What the node knows of one stored instance when a request is evaluated."""

    sop_class_uid: str
    readable: bool


# --------------------------------------------------------------------------- states


class State(str, enum.Enum):
    """Life of a transaction we (or a client through us) started."""

    PENDING = "pending"  # recorded; the N-ACTION is on its way
    REQUESTED = "requested"  # the SCP accepted the N-ACTION; waiting for its report
    COMPLETED = "completed"  # the report arrived and is committed (event type 1 or 2)
    REFUSED = "refused"  # the N-ACTION failed or could not be sent
    EXPIRED = "expired"  # no report before the deadline


TERMINAL = frozenset({State.COMPLETED, State.REFUSED, State.EXPIRED})

# (state, event) -> next state. A report may overtake the N-ACTION-RSP bookkeeping (it can
# come in on another process before the client marked the request sent), hence
# PENDING + reported. A late N-ACTION-RSP after the report keeps COMPLETED.
TRANSITIONS: Mapping[tuple[State, str], State] = {
    (State.PENDING, "sent"): State.REQUESTED,
    (State.PENDING, "refused"): State.REFUSED,
    (State.PENDING, "reported"): State.COMPLETED,
    (State.PENDING, "expired"): State.EXPIRED,
    (State.REQUESTED, "reported"): State.COMPLETED,
    (State.REQUESTED, "expired"): State.EXPIRED,
    (State.REQUESTED, "sent"): State.REQUESTED,
    (State.COMPLETED, "sent"): State.COMPLETED,
    (State.COMPLETED, "reported"): State.COMPLETED,
    (State.EXPIRED, "reported"): State.COMPLETED,  # a late report still tells the truth
}


def advance(state: State, event: str) -> State:
    """The state after ``event``; TransitionError for an edge the table lacks."""
    try:
        return TRANSITIONS[(State(state), event)]
    except KeyError:
        raise TransitionError(f"transaction in state {State(state).value} cannot take {event!r}") from None


class Delivery(str, enum.Enum):
    """Life of a report in the SCP's outbox."""

    QUEUED = "queued"
    DELIVERED = "delivered"
    EXPIRED = "expired"


def backoff(attempts: int, *, base: float = 1.0, cap: float = 60.0) -> float:
    """Seconds to wait before attempt ``attempts + 1``: doubling from ``base``, capped."""
    return min(cap, base * (2 ** max(0, attempts - 1))) if attempts > 0 else 0.0


# --------------------------------------------------------------------------- datasets


def encode(ds: Dataset, transfer_syntax: str = ImplicitVRLittleEndian) -> bytes:
    """A dataset as bytes in ``transfer_syntax`` (uncompressed syntaxes only)."""
    ts = UID(transfer_syntax)
    fp = DicomBytesIO()
    fp.is_little_endian = ts.is_little_endian
    fp.is_implicit_VR = ts.is_implicit_VR
    write_dataset(fp, ds)
    return fp.getvalue()


def decode(data: bytes, transfer_syntax: str = ImplicitVRLittleEndian) -> Dataset:
    """Bytes received in ``transfer_syntax`` as a dataset; CommitmentError if they do not parse."""
    ts = UID(transfer_syntax)
    try:
        ds = read_dataset(BytesIO(bytes(data)), ts.is_implicit_VR, ts.is_little_endian)
        for _elem in ds.iterall():  # force parsing now, not later in a caller
            pass
    except Exception as exc:  # pydicom raises many types for broken bytes
        raise CommitmentError(f"dataset does not parse: {exc}", status=STATUS_INVALID_ARGUMENT_VALUE) from None
    return ds


def request_bytes(request: Request, transfer_syntax: str = ImplicitVRLittleEndian) -> bytes:
    """The N-ACTION's Action Information as bytes: ``node.commitment_codec`` writes what
    pydicom would (~1 % of its CPU for 10,000 instances); pydicom writes the rest."""
    data = codec.encode_request(request.transaction_uid, request.refs, transfer_syntax)
    return data if data is not None else encode(request_dataset(request), transfer_syntax)


def report_bytes(report: Report, transfer_syntax: str = ImplicitVRLittleEndian) -> bytes:
    """The N-EVENT-REPORT's Event Information as bytes, as ``request_bytes``."""
    data = codec.encode_report(report.transaction_uid, report.committed, report.failed, transfer_syntax)
    return data if data is not None else encode(report_dataset(report), transfer_syntax)


def request_dataset(request: Request) -> Dataset:
    """The N-ACTION Action Information for ``request``."""
    ds = Dataset()
    ds.TransactionUID = request.transaction_uid
    ds.ReferencedSOPSequence = DicomSequence([_ref_item(r) for r in request.refs])
    return ds


def report_dataset(report: Report) -> Dataset:
    """The N-EVENT-REPORT Event Information for ``report`` (empty sequences are left out)."""
    ds = Dataset()
    ds.TransactionUID = report.transaction_uid
    if report.committed:
        ds.ReferencedSOPSequence = DicomSequence([_ref_item(r) for r in report.committed])
    if report.failed:
        items = []
        for f in report.failed:
            item = _ref_item(Ref(f.sop_class_uid, f.sop_instance_uid))
            item.FailureReason = f.reason
            items.append(item)
        ds.FailedSOPSequence = DicomSequence(items)
    return ds


def _ref_item(ref: Ref) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = ref.sop_class_uid
    item.ReferencedSOPInstanceUID = ref.sop_instance_uid
    return item


class _DatasetFields:
    """A pydicom Dataset read the way the rules read ``codec.Fields``."""

    def __init__(self, ds: Dataset) -> None:
        self.ds = ds

    def text(self, keyword: str) -> str:
        return _text(self.ds, keyword)

    def has(self, keyword: str) -> bool:
        return keyword in self.ds

    def refs(self, keyword: str) -> list[tuple[str, str, int | None]]:
        return _refs(self.ds, keyword)


_TAGS = {"TransactionUID": codec.TRANSACTION_UID, "ReferencedSOPSequence": codec.REFERENCED_SOP_SEQUENCE,
         "FailedSOPSequence": codec.FAILED_SOP_SEQUENCE}


class _CodecFields:
    """``codec.Fields`` with the same questions as ``_DatasetFields``, the same answers and errors."""

    def __init__(self, fields: codec.Fields) -> None:
        self.fields = fields

    def text(self, keyword: str) -> str:
        assert keyword == "TransactionUID"
        return self.fields.transaction_uid

    def has(self, keyword: str) -> bool:
        return _TAGS[keyword] in self.fields.sequences

    def refs(self, keyword: str) -> list[tuple[str, str, int | None]]:
        items = self.fields.sequences.get(_TAGS[keyword], [])
        for number, (sop_class, sop_instance, _reason) in enumerate(items, 1):
            if not sop_class or not sop_instance:
                raise _lacking(keyword, number)
        return items


def _fields(data: bytes | Dataset, transfer_syntax: str) -> _DatasetFields | _CodecFields:
    """The dataset of a request or report: read by the codec, or by pydicom when the codec
    leaves it (another syntax, anything unusual): pydicom's errors are the answer then."""
    if isinstance(data, Dataset):
        return _DatasetFields(data)
    try:
        return _CodecFields(codec.read(data, transfer_syntax))
    except codec.Unusual:
        return _DatasetFields(decode(data, transfer_syntax))


def _lacking(keyword: str, number: int) -> CommitmentError:
    return CommitmentError(f"{keyword} item {number} lacks its SOP class or instance UID")


def _text(ds: Dataset, keyword: str) -> str:
    try:
        value = ds.get(keyword)
    except Exception:  # a broken value reads as absent
        return ""
    return str(value).strip() if value is not None else ""


def _refs(ds: Dataset, keyword: str) -> list[tuple[str, str, int | None]]:
    """(class, instance, failure reason) of each item of a sequence; CommitmentError if broken."""
    try:
        seq = ds.get(keyword)
    except Exception as exc:
        raise CommitmentError(f"{keyword} does not parse: {exc}") from None
    out = []
    for number, item in enumerate(seq or (), 1):
        sop_class, sop_instance = _text(item, "ReferencedSOPClassUID"), _text(item, "ReferencedSOPInstanceUID")
        if not sop_class or not sop_instance:
            raise _lacking(keyword, number)
        reason = item.get("FailureReason")
        out.append((sop_class, sop_instance, int(reason) if reason is not None else None))
    return out


def parse_request(
    action_type: int,
    sop_class_uid: str,
    sop_instance_uid: str,
    data: bytes | Dataset | None,
    transfer_syntax: str = ImplicitVRLittleEndian,
    *,
    max_instances: int = DEFAULT_MAX_INSTANCES,
) -> Request:
    """Check an N-ACTION request (rule 1); the Request, or CommitmentError with its status.

    The command fields are checked before the dataset is decoded, so a wrong action type is
    answered as such even when its dataset is garbage.
    """
    if str(sop_class_uid) != SOP_CLASS:
        raise CommitmentError(f"requested SOP class {sop_class_uid} is not Storage Commitment", status=STATUS_NO_SUCH_SOP_CLASS)
    if str(sop_instance_uid) != SOP_INSTANCE:
        raise CommitmentError(f"requested SOP instance {sop_instance_uid} is not {SOP_INSTANCE}", status=STATUS_NO_SUCH_SOP_INSTANCE)
    if action_type != ACTION_REQUEST_COMMITMENT:
        raise CommitmentError(f"action type {action_type} is not 1 (request storage commitment)", status=STATUS_NO_SUCH_ACTION)
    if data is None:
        raise CommitmentError("N-ACTION without Action Information")
    fields = _fields(data, transfer_syntax)
    uid = fields.text("TransactionUID")
    if not uid:
        raise CommitmentError("Action Information lacks Transaction UID (0008,1195)")
    if not fields.has("ReferencedSOPSequence"):
        raise CommitmentError("Action Information lacks Referenced SOP Sequence (0008,1199)")
    items = fields.refs("ReferencedSOPSequence")
    if not items:
        raise CommitmentError("Referenced SOP Sequence (0008,1199) is empty")
    if len(items) > max_instances:
        raise CommitmentError(f"{len(items)} instances exceed the limit of {max_instances}", status=STATUS_RESOURCE_LIMITATION)
    seen: set[str] = set()
    for _cls, inst, _reason in items:
        if inst in seen:
            raise CommitmentError(f"instance {inst} is listed twice")
        seen.add(inst)
    return Request(uid, tuple(Ref(c, i) for c, i, _r in items))


def parse_report(
    event_type: int,
    sop_class_uid: str,
    sop_instance_uid: str,
    data: bytes | Dataset | None,
    transfer_syntax: str = ImplicitVRLittleEndian,
) -> Report:
    """Check an N-EVENT-REPORT request (rule 2); the Report, or CommitmentError with its status."""
    if str(sop_class_uid) != SOP_CLASS:
        raise CommitmentError(f"affected SOP class {sop_class_uid} is not Storage Commitment", status=STATUS_NO_SUCH_SOP_CLASS)
    if str(sop_instance_uid) != SOP_INSTANCE:
        raise CommitmentError(f"affected SOP instance {sop_instance_uid} is not {SOP_INSTANCE}", status=STATUS_NO_SUCH_SOP_INSTANCE)
    if event_type not in (EVENT_ALL_COMMITTED, EVENT_FAILURES_EXIST):
        raise CommitmentError(f"event type {event_type} is neither 1 nor 2", status=STATUS_NO_SUCH_EVENT_TYPE)
    if data is None:
        raise CommitmentError("N-EVENT-REPORT without Event Information")
    fields = _fields(data, transfer_syntax)
    uid = fields.text("TransactionUID")
    if not uid:
        raise CommitmentError("Event Information lacks Transaction UID (0008,1195)")
    committed = tuple(Ref(c, i) for c, i, _r in fields.refs("ReferencedSOPSequence"))
    failed = tuple(Failed(c, i, r if r is not None else REASON_PROCESSING_FAILURE) for c, i, r in fields.refs("FailedSOPSequence"))
    return Report(uid, committed, failed)


# --------------------------------------------------------------------------- decisions


def evaluate(request: Request, facts: Mapping[str, Fact]) -> Report:
    """The report for ``request`` given what the index and the disk say (rule 3)."""
    committed: list[Ref] = []
    failed: list[Failed] = []
    for ref in request.refs:
        fact = facts.get(ref.sop_instance_uid)
        if fact is None:
            failed.append(Failed(ref.sop_class_uid, ref.sop_instance_uid, REASON_NO_SUCH_OBJECT_INSTANCE))
        elif fact.sop_class_uid != ref.sop_class_uid:
            failed.append(Failed(ref.sop_class_uid, ref.sop_instance_uid, REASON_CLASS_INSTANCE_CONFLICT))
        elif not fact.readable:
            failed.append(Failed(ref.sop_class_uid, ref.sop_instance_uid, REASON_PROCESSING_FAILURE))
        else:
            committed.append(ref)
    return Report(request.transaction_uid, tuple(committed), tuple(failed))


def duplicate_transaction(request: Request) -> Report:
    """The report for a reused Transaction UID with other instances: all fail with 0x0131."""
    return Report(
        request.transaction_uid,
        (),
        tuple(Failed(r.sop_class_uid, r.sop_instance_uid, REASON_DUPLICATE_TRANSACTION_UID) for r in request.refs),
    )


def compare(requested: Iterable[Ref], report: Report) -> list[tuple[str, str]]:
    """Abnormalities between a request and its report, as (log level, text) pairs.

    Missing instances and instances both committed and failed are errors (the report is
    wrong); unexpected ones are warnings (the SCP committed more than asked).
    """
    asked = {r.sop_instance_uid for r in requested}
    ok = {r.sop_instance_uid for r in report.committed}
    bad = {f.sop_instance_uid for f in report.failed}
    out: list[tuple[str, str]] = []
    for uid in sorted(asked - ok - bad):
        out.append(("error", f"instance {uid} was requested but is neither committed nor failed"))
    for uid in sorted(ok & bad):
        out.append(("error", f"instance {uid} is reported both committed and failed"))
    for uid in sorted((ok | bad) - asked):
        out.append(("warning", f"instance {uid} is reported but was not requested"))
    for f in report.failed:
        out.append(("warning", f"instance {f.sop_instance_uid} failed: reason 0x{f.reason:04X} {reason_text(f.reason)}"))
    return out


REASONS = {
    REASON_PROCESSING_FAILURE: "Processing failure",
    REASON_NO_SUCH_OBJECT_INSTANCE: "No such object instance",
    REASON_CLASS_INSTANCE_CONFLICT: "Class/Instance conflict",
    REASON_CLASS_NOT_SUPPORTED: "Referenced SOP Class not supported",
    REASON_RESOURCE_LIMITATION: "Resource limitation",
    REASON_DUPLICATE_TRANSACTION_UID: "Duplicate transaction UID",
}


def reason_text(reason: int) -> str:
    """The standard's name of a Failure Reason value."""
    return REASONS.get(reason, "unknown reason")


def refs_to_wire(refs: Sequence[Ref]) -> list[list[str]]:
    """Refs as msgpack-friendly lists."""
    return [[r.sop_class_uid, r.sop_instance_uid] for r in refs]


def refs_from_wire(items: Sequence[Sequence[str]]) -> tuple[Ref, ...]:
    return tuple(Ref(str(c), str(i)) for c, i in items)


def failed_to_wire(failed: Sequence[Failed]) -> list[list[object]]:
    return [[f.sop_class_uid, f.sop_instance_uid, f.reason] for f in failed]


def failed_from_wire(items: Sequence[Sequence[object]]) -> tuple[Failed, ...]:
    return tuple(Failed(str(c), str(i), int(r)) for c, i, r in items)  # type: ignore[call-overload]
