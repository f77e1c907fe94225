"""The requestor side of the DICOM upper layer for C-STORE, without I/O (``nodectl send``).

The counterpart of ``node.acceptor`` for the sending tool: pynetdicom's requestor runs the
same two polling threads per association and a pause handshake before every C-STORE, which
capped ``nodectl send`` at ~100 small files per second. ``node/tools/send_lean.py`` does the
socket I/O; this module encodes the A-ASSOCIATE-RQ and the C-STORE-RQ commands with
pynetdicom's classes (the commands through ``acceptor.CommandTemplate``), frames dataset
bytes into P-DATA-TF PDUs as PS3.8 9.3.5 lays them out, and reads the peer's answers.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from node.acceptor import C_STORE_RQ, PDU_HEADER, P_DATA_TF, CommandTemplate, ProtocolError, user_information

A_ASSOCIATE_AC = 0x02
A_ASSOCIATE_RJ = 0x03
A_RELEASE_RP = 0x06
APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
C_STORE_RSP = 0x8001
_PDV_HEAD = struct.Struct(">IBB")


@dataclass(frozen=True)
class Proposal:
    """The A-ASSOCIATE-RQ to send and its contexts: id -> (abstract syntax, transfer syntax)."""

    pdu: bytes
    contexts: dict[int, tuple[str, str]]


def associate_request(calling: str, called: str, contexts: Sequence[tuple[str, str]], *, max_pdu: int,
                      implementation_class_uid: str, implementation_version_name: str) -> Proposal:
    """One presentation context per (SOP class, transfer syntax) pair, as ``make_ae`` proposes."""
    from pynetdicom.pdu import A_ASSOCIATE_RQ as RqPdu
    from pynetdicom.pdu_primitives import A_ASSOCIATE
    from pynetdicom.presentation import build_context

    if len(contexts) > 128:
        raise ValueError(f"{len(contexts)} presentation contexts, at most 128 fit one association")
    primitive = A_ASSOCIATE()
    primitive.application_context_name = APPLICATION_CONTEXT
    primitive.calling_ae_title = calling
    primitive.called_ae_title = called
    proposed, table = [], {}
    for number, (abstract, transfer) in enumerate(contexts):
        cx = build_context(abstract, [transfer])
        cx.context_id = 2 * number + 1
        proposed.append(cx)
        table[cx.context_id] = (abstract, transfer)
    primitive.presentation_context_definition_list = proposed
    primitive.user_information = user_information(max_pdu, implementation_class_uid, implementation_version_name)
    pdu = RqPdu()
    pdu.from_primitive(primitive)
    return Proposal(pdu=bytes(pdu.encode()), contexts=table)


@dataclass(frozen=True)
class Established:
    """What the A-ASSOCIATE-AC granted: accepted contexts by (abstract, transfer), peer's max PDU."""

    by_syntax: dict[tuple[str, str], int]
    peer_max_pdu: int


@dataclass(frozen=True)
class Rejected:
    """An A-ASSOCIATE-RJ: result 1 permanent, 2 transient; source and reason per PS3.8 9.3.4."""

    result: int
    source: int
    reason: int


def associate_reply(pdu_type: int, pdu: bytes, proposal: Proposal) -> Established | Rejected:
    """Decode the peer's answer to ``proposal`` (an A-ABORT is the caller's to handle)."""
    from pynetdicom.pdu import A_ASSOCIATE_AC as AcPdu
    from pynetdicom.pdu import A_ASSOCIATE_RJ as RjPdu
    from pynetdicom.pdu_primitives import MaximumLengthNotification

    try:
        if pdu_type == A_ASSOCIATE_RJ:
            rj = RjPdu()
            rj.decode(pdu)
            return Rejected(int(rj.result), int(rj.source), int(rj.reason_diagnostic))
        if pdu_type != A_ASSOCIATE_AC:
            raise ProtocolError(f"expected A-ASSOCIATE-AC or -RJ, got PDU type 0x{pdu_type:02X}")
        ac = AcPdu()
        ac.decode(pdu)
        primitive = ac.to_primitive()
    except ProtocolError:
        raise
    except Exception as exc:  # pynetdicom raises many types for malformed items
        raise ProtocolError(f"association answer cannot be decoded: {exc}") from None
    accepted: dict[tuple[str, str], int] = {}
    for cx in primitive.presentation_context_definition_results_list:
        proposed = proposal.contexts.get(int(cx.context_id))
        if cx.result == 0x00 and proposed is not None and cx.transfer_syntax and str(cx.transfer_syntax[0]) == proposed[1]:
            accepted[proposed] = int(cx.context_id)
    peer_max = 0
    for item in primitive.user_information:
        if isinstance(item, MaximumLengthNotification):
            peer_max = int(item.maximum_length_received or 0)
    return Established(by_syntax=accepted, peer_max_pdu=peer_max)


class StoreRequests:
    """C-STORE-RQ command PDUs: pynetdicom's encoding per SOP class, patched per message."""

    def __init__(self) -> None:
        self._templates: dict[str, CommandTemplate] = {}

    def command_pdu(self, context_id: int, sop_class_uid: str, sop_instance_uid: str, message_id: int) -> bytes:
        template = self._templates.get(sop_class_uid)
        if template is None:
            template = self._templates[sop_class_uid] = CommandTemplate(_pynetdicom_store_rq(sop_class_uid), (0x0110,))
        return template.pdu(context_id, (message_id,), sop_instance_uid)


def _pynetdicom_store_rq(sop_class_uid: str) -> bytes:
    """The first PDU of pynetdicom's C-STORE-RQ (priority medium, placeholder UID and ID)."""
    from io import BytesIO

    from pynetdicom.dimse_messages import C_STORE_RQ as StoreRq
    from pynetdicom.dimse_primitives import C_STORE
    from pynetdicom.pdu import P_DATA_TF as PDataPdu

    primitive = C_STORE()
    primitive.MessageID = 1
    primitive.AffectedSOPClassUID = sop_class_uid
    primitive.AffectedSOPInstanceUID = "1"
    primitive.Priority = 0
    primitive.DataSet = BytesIO(b"\x00")
    message = StoreRq()
    message.primitive_to_message(primitive)
    first = next(iter(message.encode_msg(1, 1 << 31)))
    pdu = PDataPdu()
    pdu.from_primitive(first)
    return bytes(pdu.encode())


def data_pdus(context_id: int, chunks: Iterator[bytes]) -> Iterator[bytes]:
    """P-DATA-TF PDUs with one dataset PDV each; the last chunk's PDV is marked last.

    ``chunks`` must be at most the peer's maximum PDU length minus 6 bytes each.
    """
    previous: bytes | None = None
    for chunk in chunks:
        if previous is not None:
            yield _pdv_pdu(context_id, 0x00, previous)
        previous = chunk
    yield _pdv_pdu(context_id, 0x02, previous or b"")


def _pdv_pdu(context_id: int, control: int, data: bytes) -> bytes:
    return PDU_HEADER.pack(P_DATA_TF, len(data) + 6) + _PDV_HEAD.pack(len(data) + 2, context_id, control) + data


def release_rq_pdu() -> bytes:
    """The A-RELEASE-RQ that ends an association normally."""
    from pynetdicom.pdu import A_RELEASE_RQ as RqPdu
    from pynetdicom.pdu_primitives import A_RELEASE

    pdu = RqPdu()
    pdu.from_primitive(A_RELEASE())
    return bytes(pdu.encode())


def is_store_response(field: int) -> bool:
    return field == C_STORE_RSP


__all__ = ["C_STORE_RQ", "Established", "Proposal", "Rejected", "StoreRequests", "associate_reply",
           "associate_request", "data_pdus", "release_rq_pdu"]
