"""Every message that crosses the node's bus, declared once, with its wire format.

Frames of one message (after any ROUTER identity frames)::

    [header, body, *data]

    header  msgpack map {v, kind, id, corr, sender, sent}
            v       SCHEMA_VERSION of the sender
            kind    e.g. "instance.write"; selects the class in KINDS
            id      unique id of this message (hex)
            corr    the id of the request this message answers, or ""
            sender  "worker-1", "writer", "listener-11112", ...
            sent    wall-clock time (float seconds) when it was packed
    body    msgpack map of the dataclass fields
    data    raw bytes (file meta, dataset), never re-encoded; sent without copy

Rules: a new optional field keeps ``SCHEMA_VERSION``; a rename or removal bumps it. An
unknown kind or another version raises ``MessageError``. Commands are imperative
(``WriteInstance``), facts past tense (``InstanceWritten``); a reply carries the request id
in ``corr``. msgpack with ``use_bin_type=True`` and ``raw=False``; UIDs are str; no pickle.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

import msgpack

from node.errors import MessageError

SCHEMA_VERSION = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerReady:
    """A worker tells a listener it can take ``capacity`` more associations (also a heartbeat).

    ``handoff`` is the Unix socket on which the worker receives accepted connections;
    ``received`` counts the hand-offs it got from this listener, so the listener can subtract
    the ones still in flight from ``capacity``.
    """

    kind: ClassVar[str] = "worker.ready"
    worker: str
    capacity: int
    handoff: str
    pid: int
    received: int = 0
    # Issue 7: running associations (past their A-ASSOCIATE-RQ) and their calling AE titles;
    # connections still silent are not counted. -1: not reported.
    associations: int = -1
    aets: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class HandOff:
    """Sent by a listener with an accepted socket's descriptor over the worker's Unix socket."""

    kind: ClassVar[str] = "association.handoff"
    assoc_id: str
    listener: str
    peer_host: str
    peer_port: int
    accepted_at: float


@dataclass(frozen=True, slots=True, kw_only=True)
class AssociationEnded:
    """A worker tells the listener that handed it an association that it is over."""

    kind: ClassVar[str] = "association.ended"
    worker: str
    assoc_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class AdmitAssociation:
    """A worker asks the listener that handed it an association to admit its calling AE.

    The listener answers every admission of its port itself, one at a time, so the node-wide
    caps (``network.max_associations``, ``max_associations_per_aet``) hold exactly however
    the associations spread over workers; heartbeats alone lagged up to a second.
    """

    kind: ClassVar[str] = "association.admit"
    worker: str
    assoc_id: str
    calling: str
    called: str


@dataclass(frozen=True, slots=True, kw_only=True)
class AdmitAnswer:
    """The listener's answer to ``AdmitAssociation``: admitted, or the A-ASSOCIATE-RJ to send."""

    kind: ClassVar[str] = "association.admitted"
    admitted: bool
    result: int = 0
    source: int = 0
    reason: int = 0
    why: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class WriteInstance:
    """Ask the storage writer to make one received instance durable.

    The data frames are ``[file_meta, dataset]`` (inline) or ``[file_meta]`` with ``spool``
    naming a file on the store's filesystem whose bytes from ``spool_offset`` are the dataset.
    ``relpath`` is already checked by ``node.paths``; the writer checks it again.
    """

    kind: ClassVar[str] = "instance.write"
    assoc_id: str
    relpath: str
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str
    calling_aet: str
    called_aet: str
    study_uid: str = ""
    series_uid: str = ""
    patient_id: str = ""
    spool: str = ""
    spool_offset: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class InstanceWritten:
    """The writer's reply: the instance is durable, in the journal (its file reaches ``path``
    and the index shortly after) or, on the direct path, at ``path`` and indexed."""

    kind: ClassVar[str] = "instance.written"
    sop_instance_uid: str
    path: str
    size: int
    kept: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class SyncStore:
    """Ask the writer to answer once every instance it acknowledged before is materialised
    (at its final path and in the index); the commitment tracker sends it before it checks."""

    kind: ClassVar[str] = "store.sync"


@dataclass(frozen=True, slots=True, kw_only=True)
class StoreSynced:
    """The writer's answer to ``SyncStore``: journal records up to ``seq`` are materialised."""

    kind: ClassVar[str] = "store.synced"
    seq: int


@dataclass(frozen=True, slots=True, kw_only=True)
class MaterialiseRecords:
    """The writer asks its materialiser process (``actors/materialiser.py``, over their pipe)
    to copy journaled instances to their final paths and index them, the checkpoint of
    journal ``journal_id`` moving to ``seq`` in the same transaction. ``records``: one
    ``[seq, offset, data offset, data length, body, segment]`` per journal record. ``paths``:
    the segment files of a worker's journal (``node.worker_journal``), which the materialiser
    opens itself; empty for the writer's own journal, whose descriptors it inherited."""

    kind: ClassVar[str] = "journal.materialise"
    journal_id: str
    seq: int
    records: list = field(default_factory=list)
    paths: list = field(default_factory=list)


@dataclass(frozen=True, slots=True, kw_only=True)
class AdoptJournal:
    """A worker that starts asks the writer to take on its journal (``node.worker_journal``):
    read it from now on, after materialising every record a predecessor left past its
    checkpoint. The worker appends only once answered."""

    kind: ClassVar[str] = "journal.adopt"
    path: str
    journal_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class JournalAdopted:
    """The writer's answer to ``AdoptJournal``: every record of the journal is materialised up
    to ``seq`` (the highest number found); the worker's new lap starts far above it."""

    kind: ClassVar[str] = "journal.adopted"
    seq: int


@dataclass(frozen=True, slots=True, kw_only=True)
class RecordsMaterialised:
    """The batch up to ``seq`` is at its final paths and checkpointed; or ``error``, why not
    (nothing checkpointed: the writer retries the batch)."""

    kind: ClassVar[str] = "journal.materialised"
    seq: int
    error: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class VerifyInstances:
    """Another node's tracker asks this node's writer (on ``[cluster] endpoint``, tcp://)
    whether instances the shared index says this node holds are present and unchanged.

    ``instances`` maps a SOP Instance UID to ``[path, size, checksum]`` as the index has them
    (checksum "" when the row has none: the size is then all that is compared).
    """

    kind: ClassVar[str] = "store.verify"
    instances: dict[str, list[Any]]


@dataclass(frozen=True, slots=True, kw_only=True)
class InstancesVerified:
    """The writer's answer to ``VerifyInstances``: ``present`` lists the UIDs found intact;
    ``problems`` says, per UID that is not, why (missing, size, checksum)."""

    kind: ClassVar[str] = "store.verified"
    node_id: str
    present: list[str]
    problems: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class ErrorReply:
    """A request failed; ``status`` is the DIMSE status the answer to the peer should carry."""

    kind: ClassVar[str] = "error"
    status: int
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Ping:
    """Liveness probe; answered with ``Pong`` by any actor with a ROUTER socket."""

    kind: ClassVar[str] = "ping"


@dataclass(frozen=True, slots=True, kw_only=True)
class Pong:
    """Answer to ``Ping``."""

    kind: ClassVar[str] = "pong"
    pid: int


# ----- Storage Commitment (issue 5): worker/client <-> tracker, see docs/commitment.md ---------


@dataclass(frozen=True, slots=True, kw_only=True)
class RecordTransaction:
    """Ask the tracker to record a transaction we are about to start (before the N-ACTION).

    ``refs`` is ``[[sop_class_uid, sop_instance_uid], ...]``; ``timeout`` (seconds) sets the
    deadline after which the transaction expires. Answered with ``TransactionState``.
    """

    kind: ClassVar[str] = "commitment.record"
    transaction_uid: str
    refs: list
    local_aet: str
    peer_aet: str
    peer_host: str = ""
    peer_port: int = 0
    timeout: float = 3600.0


@dataclass(frozen=True, slots=True, kw_only=True)
class MarkRequested:
    """The N-ACTION-RSP carried ``status`` (-1: the N-ACTION could not be sent)."""

    kind: ClassVar[str] = "commitment.requested"
    transaction_uid: str
    status: int


@dataclass(frozen=True, slots=True, kw_only=True)
class QueryTransaction:
    """Ask the tracker for a transaction's state (answered with ``TransactionState``)."""

    kind: ClassVar[str] = "commitment.query"
    transaction_uid: str


@dataclass(frozen=True, slots=True, kw_only=True)
class TransactionState:
    """A transaction's state: the tracker's reply, and the fact it publishes when it ends.

    ``state`` is a ``node.commitment.State`` value ("unknown" when never recorded); the
    report itself is in the database (and, for a reply to ``QueryTransaction``, in the
    data frame as received, ``report_ts`` naming its transfer syntax).
    """

    kind: ClassVar[str] = "commitment.state"
    transaction_uid: str
    state: str
    event_type: int = 0
    action_status: int = -1
    committed: int = 0
    failed: int = 0
    report_ts: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class ForwardReport:
    """A worker (or client) received an N-EVENT-REPORT-RQ; the data frame is its dataset.

    Answered with ``ReportAnswer`` whose status goes back in the N-EVENT-REPORT-RSP.
    """

    kind: ClassVar[str] = "commitment.report"
    event_type: int
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str
    calling_aet: str
    called_aet: str
    assoc_id: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class ReportAnswer:
    """The tracker's verdict on a forwarded report (status for the N-EVENT-REPORT-RSP)."""

    kind: ClassVar[str] = "commitment.report-answer"
    status: int
    transaction_uid: str = ""
    matched: bool = False
    reason: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestCommitment:
    """A worker received an N-ACTION-RQ (we are the SCP); the data frame is its dataset."""

    kind: ClassVar[str] = "commitment.request"
    action_type: int
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str
    calling_aet: str
    called_aet: str
    peer_host: str = ""
    assoc_id: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class CommitmentAnswer:
    """The tracker's answer: N-ACTION-RSP ``status``; on success the report is in the outbox.

    When ``deliver_here`` the worker tries the N-EVENT-REPORT on the same association and
    tells the tracker how that went (``ReportDelivered``); otherwise the outbox sender opens
    a new association. ``committed``/``failed`` are the report's lists in wire form.
    """

    kind: ClassVar[str] = "commitment.answer"
    status: int
    reason: str = ""
    transaction_uid: str = ""
    event_type: int = 0
    committed: list = field(default_factory=list)
    failed: list = field(default_factory=list)
    deliver_here: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class ReportDelivered:
    """The N-EVENT-REPORT on the requester's association got ``status`` (-1: not sent)."""

    kind: ClassVar[str] = "commitment.delivered"
    transaction_uid: str
    status: int
    assoc_id: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Ack:
    """A plain "done" reply."""

    kind: ClassVar[str] = "ack"


COMMITMENT_MESSAGES = (
    RecordTransaction, MarkRequested, QueryTransaction, TransactionState, ForwardReport, ReportAnswer,
    RequestCommitment, CommitmentAnswer, ReportDelivered, Ack,
)


@dataclass(frozen=True, slots=True, kw_only=True)
class StatusRequest:
    """``nodectl status`` asks an actor what it is doing right now."""

    kind: ClassVar[str] = "status.request"


@dataclass(frozen=True, slots=True, kw_only=True)
class ListenerStatus:
    """A listener's answer: its port, open associations, and the workers it hands to.

    ``workers`` maps a worker name to ``{"pid", "capacity", "associations"}``.
    """

    kind: ClassVar[str] = "listener.status"
    listener: str
    port: int
    associations: int
    max_associations: int
    workers: dict[str, dict[str, int]]


Message = WorkerReady | HandOff | AssociationEnded | WriteInstance | InstanceWritten | ErrorReply | Ping | Pong

KINDS: dict[str, type] = {
    cls.kind: cls
    for cls in (
        WorkerReady, HandOff, AssociationEnded, AdmitAssociation, AdmitAnswer, WriteInstance, InstanceWritten,
        SyncStore, StoreSynced, MaterialiseRecords, RecordsMaterialised, AdoptJournal, JournalAdopted, VerifyInstances, InstancesVerified, ErrorReply, Ping, Pong,
        StatusRequest, ListenerStatus, *COMMITMENT_MESSAGES,
    )
}


@dataclass(frozen=True, slots=True)
class Envelope:
    """A received message with its header fields and raw data frames."""

    message: Any
    id: str
    corr: str = ""
    sender: str = ""
    sent: float = 0.0
    data: Sequence[bytes | memoryview] = field(default_factory=tuple)


def new_id() -> str:
    """A message id: 12 random bytes, hex."""
    return os.urandom(12).hex()


def pack(
    message: Any,
    *,
    sender: str,
    corr: str = "",
    msg_id: str | None = None,
    data: Sequence[bytes | memoryview] = (),
) -> list[bytes | memoryview]:
    """Encode a message as frames ``[header, body, *data]``."""
    if type(message).kind not in KINDS or KINDS[type(message).kind] is not type(message):
        raise MessageError(f"{type(message).__name__} is not a declared message")
    header = {
        "v": SCHEMA_VERSION,
        "kind": message.kind,
        "id": msg_id or new_id(),
        "corr": corr,
        "sender": sender,
        "sent": time.time(),
    }
    body = {f.name: getattr(message, f.name) for f in fields(message)}
    return [msgpack.packb(header, use_bin_type=True), msgpack.packb(body, use_bin_type=True), *data]


def unpack(frames: Sequence[bytes | memoryview]) -> Envelope:
    """Decode frames from ``pack``; raise MessageError for anything unknown or malformed."""
    if len(frames) < 2:
        raise MessageError(f"a message needs header and body frames, got {len(frames)} frame(s)")
    try:
        header = msgpack.unpackb(frames[0], raw=False)
        body = msgpack.unpackb(frames[1], raw=False)
    except (ValueError, msgpack.UnpackException) as exc:
        raise MessageError(f"undecodable frame: {exc}") from None
    if not isinstance(header, dict) or not isinstance(body, dict):
        raise MessageError("header and body must be maps")
    if header.get("v") != SCHEMA_VERSION:
        raise MessageError(f"schema version {header.get('v')!r} is not {SCHEMA_VERSION}")
    cls = KINDS.get(header.get("kind", ""))
    if cls is None:
        raise MessageError(f"unknown message kind {header.get('kind')!r}")
    try:
        message = cls(**body)
    except TypeError as exc:
        raise MessageError(f"{cls.kind}: {exc}") from None
    return Envelope(
        message=message,
        id=str(header.get("id", "")),
        corr=str(header.get("corr", "")),
        sender=str(header.get("sender", "")),
        sent=float(header.get("sent", 0.0)),
        data=tuple(frames[2:]),
    )


def as_dict(message: Any) -> dict[str, Any]:
    """The body fields of a message, for logs and tests."""
    return dataclasses.asdict(message)
