"""PDU codec (PS3.8 9.3): association events to bytes and back, P-DATA at the struct level.

Written on ``struct`` rather than pynetdicom's PDU classes: the hot path of a small C-STORE
(one P-DATA-TF for the command, one for the dataset) must cost tens of microseconds, and
every malformed input must become one ``ProtocolViolation`` instead of whichever exception
a third-party decoder raises (tests compare these bytes with pynetdicom's encoder).
Decoding is strict about lengths and lenient about what PS3.8 lets a receiver ignore:
unknown items and sub-items are skipped, reserved fields are not tested.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

from node.ul._errors import (
    REASON_INVALID_PARAMETER,
    REASON_UNRECOGNIZED_PDU,
    ProtocolViolation,
)
from node.ul._events import (
    Abort,
    AssociateAccept,
    AssociateReject,
    AssociateRequest,
    AsyncWindow,
    CommonExtendedNegotiation,
    ContextResult,
    ExtendedNegotiation,
    ProposedContext,
    ReleaseReply,
    ReleaseRequest,
    RoleSelection,
    UserIdentity,
)

ASSOCIATE_RQ, ASSOCIATE_AC, ASSOCIATE_RJ, P_DATA_TF, RELEASE_RQ, RELEASE_RP, ABORT = range(1, 8)

HEADER = struct.Struct(">BxI")
PDV_HEADER = struct.Struct(">IBB")
_ITEM = struct.Struct(">BxH")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_PROTOCOL_VERSION = 0x0001

# user information sub-item types (PS3.7 Annex D, PS3.8 Annex D)
_MAX_LENGTH, _IMPL_UID, _ASYNC, _ROLE, _IMPL_VERSION, _EXTENDED, _COMMON_EXTENDED = range(0x51, 0x58)
_IDENTITY_RQ, _IDENTITY_AC = 0x58, 0x59


@dataclass(frozen=True, slots=True)
class PDV:
    """One presentation data value item of a P-DATA-TF (PS3.8 9.3.5, Annex E)."""

    context_id: int
    is_command: bool
    is_last: bool
    data: bytes


# ----- encoding -------------------------------------------------------------------------------


def _item(item_type: int, body: bytes) -> bytes:
    return _ITEM.pack(item_type, len(body)) + body


def _uid_item(item_type: int, uid: str) -> bytes:
    return _item(item_type, uid.encode("ascii"))


def _lv(value: bytes) -> bytes:
    """A 2-byte length and the value: the layout inside role, extended and identity sub-items."""
    return _U16.pack(len(value)) + value


def _pdu(pdu_type: int, body: bytes) -> bytes:
    return HEADER.pack(pdu_type, len(body)) + body


def _ae(title: str) -> bytes:
    return title.encode("ascii").ljust(16)


def _fixed(called: str, calling: str, version: int = _PROTOCOL_VERSION) -> bytes:
    return _U16.pack(version) + b"\x00\x00" + _ae(called) + _ae(calling) + bytes(32)


def _user_information(event: AssociateRequest | AssociateAccept) -> bytes:
    """Sub-items in the order PS3.7 Annex D lists them (DCMTK and pynetdicom send this order)."""
    sub = [_item(_MAX_LENGTH, _U32.pack(event.max_pdu)), _uid_item(_IMPL_UID, event.implementation_class_uid)]
    if event.async_window is not None:
        sub.append(_item(_ASYNC, struct.pack(">HH", event.async_window.max_invoked, event.async_window.max_performed)))
    for role in event.roles:
        sub.append(_item(_ROLE, _lv(role.sop_class_uid.encode("ascii")) + bytes((role.scu_role, role.scp_role))))
    if event.implementation_version_name:
        sub.append(_item(_IMPL_VERSION, event.implementation_version_name.encode("ascii")))
    for ext in event.extended:
        sub.append(_item(_EXTENDED, _lv(ext.sop_class_uid.encode("ascii")) + ext.info))
    if isinstance(event, AssociateRequest):
        for common in event.common_extended:
            related = b"".join(_lv(uid.encode("ascii")) for uid in common.related_general_sop_classes)
            sub.append(_item(_COMMON_EXTENDED, _lv(common.sop_class_uid.encode("ascii"))
                             + _lv(common.service_class_uid.encode("ascii")) + _lv(related)))
        if event.user_identity is not None:
            ident = event.user_identity
            sub.append(_item(_IDENTITY_RQ, bytes((ident.identity_type, ident.positive_response_requested))
                             + _lv(ident.primary) + _lv(ident.secondary)))
    elif event.user_identity_response is not None:
        sub.append(_item(_IDENTITY_AC, _lv(event.user_identity_response)))
    return _item(0x50, b"".join(sub))


def encode_associate_rq(event: AssociateRequest) -> bytes:
    contexts = b"".join(
        _item(0x20, bytes((cx.context_id, 0, 0, 0)) + _uid_item(0x30, cx.abstract_syntax)
              + b"".join(_uid_item(0x40, ts) for ts in cx.transfer_syntaxes))
        for cx in event.contexts)
    body = _fixed(event.called_ae, event.calling_ae, event.protocol_version) + _uid_item(0x10, event.application_context) + contexts
    return _pdu(ASSOCIATE_RQ, body + _user_information(event))


def encode_associate_ac(event: AssociateAccept) -> bytes:
    contexts = b"".join(
        _item(0x21, bytes((cx.context_id, 0, cx.result, 0)) + _uid_item(0x40, cx.transfer_syntax))
        for cx in event.contexts)
    body = _fixed(event.called_ae, event.calling_ae) + _uid_item(0x10, event.application_context) + contexts
    return _pdu(ASSOCIATE_AC, body + _user_information(event))


def encode_associate_rj(event: AssociateReject) -> bytes:
    return _pdu(ASSOCIATE_RJ, bytes((0, event.result, event.source, event.reason)))


def encode_release_rq(event: ReleaseRequest | None = None) -> bytes:
    return _pdu(RELEASE_RQ, bytes(4))


def encode_release_rp(event: ReleaseReply | None = None) -> bytes:
    return _pdu(RELEASE_RP, bytes(4))


def encode_abort(event: Abort) -> bytes:
    return _pdu(ABORT, bytes((0, 0, event.source, event.reason)))


def abort_pdu(reason: int = 0, source: int = 2) -> bytes:
    """An A-ABORT, for a shell that must abort outside the engine's turn (e.g. at shutdown,
    from another thread): service provider by default, reason per PS3.8 9.3.8."""
    return encode_abort(Abort(source=source, reason=reason))


def encode_p_data(context_id: int, is_command: bool, data: bytes | memoryview, is_last: bool) -> bytes:
    """One P-DATA-TF holding one PDV."""
    control = (0x01 if is_command else 0x00) | (0x02 if is_last else 0x00)
    return HEADER.pack(P_DATA_TF, len(data) + 6) + PDV_HEADER.pack(len(data) + 2, context_id, control) + data


def p_data(context_id: int, is_command: bool, data: bytes, max_pdu: int, last: bool = True) -> bytes:
    """``fragment``'s PDUs as one byte string; the common case, data that fits one PDU, without
    the generator (every C-STORE of a small file sends two: its command and its dataset)."""
    if data and (not max_pdu or len(data) <= max_pdu - 6):
        return encode_p_data(context_id, is_command, data, last)
    return b"".join(fragment(context_id, is_command, data, max_pdu, last))


def fragment(context_id: int, is_command: bool, data: bytes, max_pdu: int, last: bool = True) -> Iterator[bytes]:
    """P-DATA-TF PDUs carrying ``data`` in PDVs that fit the peer's maximum length.

    The maximum length bounds the PDU's variable field (PS3.8 D.1), which holds the PDV's
    6-byte item header too; 0 means the peer takes any length. ``last`` marks the final PDV
    as the last fragment of the command or dataset.
    """
    chunk = max_pdu - 6 if max_pdu else len(data) or 1
    if chunk < 1:
        raise ValueError(f"maximum PDU length {max_pdu} leaves no room for data")
    view = memoryview(data)
    if not data:
        yield encode_p_data(context_id, is_command, b"", last)
        return
    for start in range(0, len(data), chunk):
        end = start + chunk
        yield encode_p_data(context_id, is_command, view[start:end], last and end >= len(data))


# ----- decoding ---------------------------------------------------------------------------------


def _invalid(message: str) -> ProtocolViolation:
    return ProtocolViolation(message, REASON_INVALID_PARAMETER)


def _items(body: bytes, start: int, end: int) -> Iterator[tuple[int, bytes]]:
    """(type, value) of the items or sub-items between ``start`` and ``end``."""
    pos = start
    while pos < end:
        if pos + 4 > end:
            raise _invalid(f"item header cut short at offset {pos}")
        item_type, length = _ITEM.unpack_from(body, pos)
        if pos + 4 + length > end:
            raise _invalid(f"item 0x{item_type:02X} of {length} bytes overruns its container")
        yield item_type, body[pos + 4 : pos + 4 + length]
        pos += 4 + length


def _text(raw: bytes) -> str:
    """A UID or AE title: ASCII, trailing NUL and spaces insignificant (PS3.5 9.1, PS3.8 9.3)."""
    return raw.decode("ascii").strip("\x00 ")


def _split_lv(raw: bytes, pos: int) -> tuple[bytes, int]:
    (length,) = _U16.unpack_from(raw, pos)
    end = pos + 2 + length
    if end > len(raw):
        raise _invalid("sub-item field overruns its sub-item")
    return raw[pos + 2 : end], end


@dataclass
class _UserInfo:
    """The User Information item's sub-items (PS3.8 9.3.2.3, PS3.7 D.3.3), as decoded.

    Every dataclass here has a docstring: without one, ``dataclass`` computes ``inspect.signature``
    for ``__doc__`` at import, which doubles the class's creation cost (~1 ms against ~0.5 ms;
    ``nodectl send``'s start-up counts in a scripted job, issue 13 item 6)."""

    max_pdu: int = 0
    implementation_class_uid: str = ""
    implementation_version_name: str = ""
    async_window: AsyncWindow | None = None
    roles: tuple[RoleSelection, ...] = ()
    extended: tuple[ExtendedNegotiation, ...] = ()
    common_extended: tuple[CommonExtendedNegotiation, ...] = ()
    user_identity: UserIdentity | None = None
    user_identity_response: bytes | None = None


def _decode_user_information(raw: bytes) -> _UserInfo:
    info = _UserInfo()
    roles, extended, common = [], [], []
    for sub_type, value in _items(raw, 0, len(raw)):
        if sub_type == _MAX_LENGTH:
            (info.max_pdu,) = _U32.unpack(value)
        elif sub_type == _IMPL_UID:
            info.implementation_class_uid = _text(value)
        elif sub_type == _IMPL_VERSION:
            info.implementation_version_name = _text(value)
        elif sub_type == _ASYNC:
            invoked, performed = struct.unpack(">HH", value)
            info.async_window = AsyncWindow(max_invoked=invoked, max_performed=performed)
        elif sub_type == _ROLE:
            uid, pos = _split_lv(value, 0)
            scu, scp = value[pos], value[pos + 1]
            roles.append(RoleSelection(sop_class_uid=_text(uid), scu_role=bool(scu), scp_role=bool(scp)))
        elif sub_type == _EXTENDED:
            uid, pos = _split_lv(value, 0)
            extended.append(ExtendedNegotiation(sop_class_uid=_text(uid), info=bytes(value[pos:])))
        elif sub_type == _COMMON_EXTENDED:
            uid, pos = _split_lv(value, 0)
            service, pos = _split_lv(value, pos)
            related_raw, _ = _split_lv(value, pos)
            related, rpos = [], 0
            while rpos < len(related_raw):
                one, rpos = _split_lv(related_raw, rpos)
                related.append(_text(one))
            common.append(CommonExtendedNegotiation(sop_class_uid=_text(uid), service_class_uid=_text(service),
                                                    related_general_sop_classes=tuple(related)))
        elif sub_type == _IDENTITY_RQ:
            primary, pos = _split_lv(value, 2)
            secondary, _ = _split_lv(value, pos)
            info.user_identity = UserIdentity(identity_type=value[0], positive_response_requested=bool(value[1]),
                                              primary=bytes(primary), secondary=bytes(secondary))
        elif sub_type == _IDENTITY_AC:
            response, _ = _split_lv(value, 0)
            info.user_identity_response = bytes(response)
        # any other sub-item is skipped (PS3.7 D.3.3: unknown sub-items are ignored)
    info.roles, info.extended, info.common_extended = tuple(roles), tuple(extended), tuple(common)
    return info


def _association_parts(body: bytes) -> tuple[str, str, str, list[tuple[int, bytes]], _UserInfo]:
    """Called and calling AE, application context, presentation context items, user information."""
    if len(body) < 68:
        raise _invalid(f"association PDU body of {len(body)} bytes is shorter than its fixed fields")
    called, calling = _text(body[4:20]), _text(body[20:36])
    app_context, contexts, user = "", [], None
    for item_type, value in _items(body, 68, len(body)):
        if item_type == 0x10:
            app_context = _text(value)
        elif item_type in (0x20, 0x21):
            contexts.append((item_type, value))
        elif item_type == 0x50:
            user = _decode_user_information(value)
    if not app_context:
        raise _invalid("no application context item")
    if user is None:
        raise _invalid("no user information item")
    return called, calling, app_context, contexts, user


def decode_associate_rq(body: bytes) -> AssociateRequest:
    called, calling, app_context, items, user = _association_parts(body)
    contexts = []
    for item_type, value in items:
        if item_type != 0x20 or len(value) < 4:
            raise _invalid("bad presentation context item in an A-ASSOCIATE-RQ")
        abstract, syntaxes = "", []
        for sub_type, sub in _items(value, 4, len(value)):
            if sub_type == 0x30:
                abstract = _text(sub)
            elif sub_type == 0x40:
                syntaxes.append(_text(sub))
        contexts.append(ProposedContext(context_id=value[0], abstract_syntax=abstract, transfer_syntaxes=tuple(syntaxes)))
    return AssociateRequest(
        called_ae=called, calling_ae=calling, contexts=tuple(contexts), application_context=app_context,
        max_pdu=user.max_pdu, implementation_class_uid=user.implementation_class_uid,
        implementation_version_name=user.implementation_version_name, async_window=user.async_window,
        roles=user.roles, extended=user.extended, common_extended=user.common_extended,
        user_identity=user.user_identity, protocol_version=_U16.unpack_from(body, 0)[0])


def decode_associate_ac(body: bytes) -> AssociateAccept:
    called, calling, app_context, items, user = _association_parts(body)
    contexts = []
    for item_type, value in items:
        if item_type != 0x21 or len(value) < 4:
            raise _invalid("bad presentation context item in an A-ASSOCIATE-AC")
        syntax = ""
        for sub_type, sub in _items(value, 4, len(value)):
            if sub_type == 0x40:
                syntax = _text(sub)
        contexts.append(ContextResult(context_id=value[0], result=value[2], transfer_syntax=syntax))
    return AssociateAccept(
        called_ae=called, calling_ae=calling, contexts=tuple(contexts), application_context=app_context,
        max_pdu=user.max_pdu, implementation_class_uid=user.implementation_class_uid or "0",
        implementation_version_name=user.implementation_version_name, async_window=user.async_window,
        roles=user.roles, extended=user.extended, user_identity_response=user.user_identity_response)


def _four(body: bytes, what: str) -> bytes:
    if len(body) != 4:
        raise _invalid(f"{what} body of {len(body)} bytes, not 4")
    return body


def decode_associate_rj(body: bytes) -> AssociateReject:
    raw = _four(body, "A-ASSOCIATE-RJ")
    return AssociateReject(result=raw[1], source=raw[2], reason=raw[3])


def decode_abort(body: bytes) -> Abort:
    raw = _four(body, "A-ABORT")
    return Abort(source=raw[2], reason=raw[3])


def decode_p_data(body: bytes | bytearray | memoryview) -> list[PDV]:
    """The PDVs of a P-DATA-TF body: one bounds check and one slice each, nothing more."""
    pdvs, pos, end = [], 0, len(body)
    unpack = PDV_HEADER.unpack_from
    while pos < end:
        if pos + 6 > end:
            raise _invalid("PDV item header cut short")
        length, context_id, control = unpack(body, pos)
        if length < 2 or pos + 4 + length > end:
            raise _invalid(f"PDV item length {length} does not fit its P-DATA-TF")
        pdvs.append(PDV(context_id, bool(control & 0x01), bool(control & 0x02), bytes(body[pos + 6 : pos + 4 + length])))
        pos += 4 + length
    if not pdvs:
        raise _invalid("P-DATA-TF without a presentation data value")
    return pdvs


_DECODERS = {
    ASSOCIATE_RQ: decode_associate_rq,
    ASSOCIATE_AC: decode_associate_ac,
    ASSOCIATE_RJ: decode_associate_rj,
    RELEASE_RQ: lambda body: (_four(body, "A-RELEASE-RQ"), ReleaseRequest())[1],
    RELEASE_RP: lambda body: (_four(body, "A-RELEASE-RP"), ReleaseReply())[1],
    ABORT: decode_abort,
}


def decode(pdu_type: int, body: bytes | memoryview) -> object:
    """An association PDU's body as its event; a P-DATA-TF's as its list of PDVs.

    Every failure of a malformed body (short fields, non-ASCII text, invalid values the
    event classes refuse) becomes ``ProtocolViolation`` with reason 6.
    """
    if pdu_type == P_DATA_TF:
        return decode_p_data(body)
    decoder = _DECODERS.get(pdu_type)
    if decoder is None:
        raise ProtocolViolation(f"unrecognized PDU type 0x{pdu_type:02X}", REASON_UNRECOGNIZED_PDU)
    try:
        return decoder(bytes(body))
    except ProtocolViolation:
        raise
    except (ValueError, IndexError, struct.error) as exc:  # UnicodeDecodeError is a ValueError
        raise _invalid(f"PDU type 0x{pdu_type:02X} cannot be decoded: {exc}") from None
