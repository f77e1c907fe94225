"""Two engines back to back, no network (h11's tests/helpers.py), and canonical PDUs."""

from __future__ import annotations

import struct
from collections.abc import Iterable

from node import ul
from node.ul import _pdu

IMPLICIT = "1.2.840.10008.1.2"
EXPLICIT = "1.2.840.10008.1.2.1"
CT = "1.2.840.10008.5.1.4.1.1.2"
COMMITMENT = "1.2.840.10008.1.20.1"
COMMITMENT_INSTANCE = "1.2.840.10008.1.20.1.1"


def request(max_pdu: int = 16382, window: ul.AsyncWindow | None = None, **kw: object) -> ul.AssociateRequest:
    contexts = kw.pop("contexts", (
        ul.ProposedContext(context_id=1, abstract_syntax=ul.VERIFICATION, transfer_syntaxes=(IMPLICIT,)),
        ul.ProposedContext(context_id=3, abstract_syntax=CT, transfer_syntaxes=(EXPLICIT, IMPLICIT)),
        ul.ProposedContext(context_id=5, abstract_syntax=COMMITMENT, transfer_syntaxes=(IMPLICIT,)),
    ))
    return ul.AssociateRequest(called_ae="NODE", calling_ae="SCU", contexts=contexts, max_pdu=max_pdu,  # type: ignore[arg-type]
                               async_window=window, **kw)  # type: ignore[arg-type]


POLICY = ul.AcceptorPolicy(contexts={ul.VERIFICATION: (IMPLICIT,), CT: (ul.ANY,), COMMITMENT: (IMPLICIT,)},
                           async_window=ul.AsyncWindow(max_invoked=4, max_performed=4))


def feed(engine: ul.Association, data: bytes, chunk: int | None = None) -> list[ul.Event]:
    out: list[ul.Event] = []
    """Give ``data`` to ``engine`` (all at once, or ``chunk`` bytes a read; b"" is the peer
    closing) and collect the events."""
    pieces: Iterable[bytes] = [data] if chunk is None or not data else (data[i : i + chunk] for i in range(0, len(data), chunk))
    for piece in pieces:
        engine.receive_data(piece)
        out.extend(engine.events())
    return out


def established(max_pdu: int = 16382, policy: ul.AcceptorPolicy = POLICY, **kw: object) -> tuple[ul.Association, ul.Association]:
    """A requestor and an acceptor with an association between them (both in Sta6)."""
    scu, scp = ul.Association(ul.Role.REQUESTOR), ul.Association(ul.Role.ACCEPTOR)
    (rq,) = feed(scp, scu.send(request(max_pdu=max_pdu, **kw)))
    answer = ul.negotiate(rq, policy)  # type: ignore[arg-type]
    (ac,) = feed(scu, scp.send(answer))
    assert isinstance(ac, ul.AssociateAccept) and scu.established and scp.established
    return scu, scp


def in_state(role: ul.Role, state: ul.State) -> tuple[ul.Association, ul.Association]:
    """(engine in ``state`` playing ``role``, its peer), reached by real exchanges only."""
    S = ul.State
    if role is ul.Role.REQUESTOR and state is S.STA4:
        return ul.Association(ul.Role.REQUESTOR), ul.Association(ul.Role.ACCEPTOR)
    if role is ul.Role.ACCEPTOR and state is S.STA2:
        return ul.Association(ul.Role.ACCEPTOR), ul.Association(ul.Role.REQUESTOR)
    if state is S.STA5:
        scu, scp = ul.Association(ul.Role.REQUESTOR), ul.Association(ul.Role.ACCEPTOR)
        feed(scp, scu.send(request()))
        return scu, scp
    if state is S.STA3:
        scu, scp = ul.Association(ul.Role.REQUESTOR), ul.Association(ul.Role.ACCEPTOR)
        feed(scp, scu.send(request()))
        return scp, scu
    scu, scp = established()
    me, peer = (scu, scp) if role is ul.Role.REQUESTOR else (scp, scu)
    if state is S.STA6:
        pass
    elif state is S.STA7:
        me.send(ul.ReleaseRequest())
    elif state is S.STA8:
        feed(me, peer.send(ul.ReleaseRequest()))
    elif state in (S.STA9, S.STA10, S.STA11, S.STA12):  # release collision
        mine, theirs = me.send(ul.ReleaseRequest()), peer.send(ul.ReleaseRequest())
        feed(me, theirs)
        feed(peer, mine)
        if state is S.STA11:
            me.send(ul.ReleaseReply())
        if state is S.STA12:
            feed(me, peer.send(ul.ReleaseReply()))
    elif state is S.STA13:
        me.send(ul.Abort())
    assert me.state is state, (role, state, me.state)
    return me, peer


def echo_rq_pdu(message_id: int = 1, context_id: int = 1) -> bytes:
    return _pdu.encode_p_data(context_id, True, ul.encode_command(ul.CEchoRQ(message_id=message_id)), True)


# One PDU of every type (and an unrecognized one), as a peer would send it in any state.
PDUS: dict[str, bytes] = {
    "A-ASSOCIATE-RQ": _pdu.encode_associate_rq(request()),
    "A-ASSOCIATE-AC": _pdu.encode_associate_ac(ul.negotiate(request(), POLICY)),  # type: ignore[arg-type]
    "A-ASSOCIATE-RJ": _pdu.encode_associate_rj(ul.AssociateReject(result=1, source=1, reason=1)),
    "P-DATA-TF": echo_rq_pdu(),
    "A-RELEASE-RQ": _pdu.encode_release_rq(),
    "A-RELEASE-RP": _pdu.encode_release_rp(),
    "A-ABORT": _pdu.encode_abort(ul.Abort(source=0, reason=0)),
    "unrecognized": b"\x09\x00" + struct.pack(">I", 4) + bytes(4),
}


def abort_fields(data: bytes) -> tuple[int, int]:
    """(source, reason) of an A-ABORT PDU."""
    assert data[0] == 0x07 and len(data) == 10, data
    return data[8], data[9]
