"""The PS3.8 Table 9-10 transitions: the table itself, then every cell a peer can reach,
driven through real engines (no hand-set states)."""

from __future__ import annotations

import pytest

from node import ul
from node.ul._state import TRANSITIONS, Evt
from tests.node.ul.helpers import PDUS, POLICY, abort_fields, feed, in_state

S = ul.State
REQUESTOR_STATES = (S.STA4, S.STA5, S.STA6, S.STA7, S.STA8, S.STA9, S.STA11, S.STA13)
ACCEPTOR_STATES = (S.STA2, S.STA3, S.STA6, S.STA7, S.STA8, S.STA10, S.STA12, S.STA13)
PDU_EVENTS = {"A-ASSOCIATE-AC": Evt.EVT3, "A-ASSOCIATE-RJ": Evt.EVT4, "A-ASSOCIATE-RQ": Evt.EVT6, "P-DATA-TF": Evt.EVT10,
              "A-RELEASE-RQ": Evt.EVT12, "A-RELEASE-RP": Evt.EVT13, "A-ABORT": Evt.EVT16, "unrecognized": Evt.EVT19}
CASES = [(role, state, name) for role, states in ((ul.Role.REQUESTOR, REQUESTOR_STATES), (ul.Role.ACCEPTOR, ACCEPTOR_STATES))
         for state in states for name in PDUS]


def test_table_matches_pynetdicoms_reading_of_ps38() -> None:
    """An independent transcription of Table 9-10 (pynetdicom's fsm) has the same cells,
    leaving out Evt1 and Evt5, which happen in the shell (it connects or accepts)."""
    from pynetdicom.fsm import TRANSITION_TABLE

    theirs = {(evt, state): action for (evt, state), action in TRANSITION_TABLE.items() if evt not in ("Evt1", "Evt5")}
    ours = {(event.name.capitalize(), state.name.capitalize()): action for (event, state), (action, _) in TRANSITIONS.items()}
    assert ours == theirs


@pytest.mark.parametrize(("role", "state", "pdu_name"), CASES, ids=lambda v: getattr(v, "name", v))
def test_every_received_pdu_in_every_state(role: ul.Role, state: ul.State, pdu_name: str) -> None:
    engine, _ = in_state(role, state)
    action, next_state = TRANSITIONS.get((PDU_EVENTS[pdu_name], state), ("AA-8", S.STA13))
    if action in ("AA-1", "AA-7", "AA-8"):
        with pytest.raises(ul.ProtocolViolation) as caught:
            feed(engine, PDUS[pdu_name])
        assert abort_fields(caught.value.abort_pdu)[0] == ul.SOURCE_SERVICE_PROVIDER
        assert engine.state is S.STA13 and engine.artim_running
        return
    events = feed(engine, PDUS[pdu_name])
    expected = {"AE-6": S.STA3, "AR-8": S.STA9 if role is ul.Role.REQUESTOR else S.STA10}.get(action, next_state)
    assert engine.state is expected
    if action == "AA-6":
        assert events == []
    elif expected is S.STA1:
        assert isinstance(events[0], (ul.Abort, ul.AssociateReject, ul.ReleaseReply)) and events[-1] == ul.ConnectionClosed()
    else:
        assert events and not isinstance(events[0], ul.ConnectionClosed)


@pytest.mark.parametrize("state", sorted(set(REQUESTOR_STATES + ACCEPTOR_STATES), key=lambda s: int(s.name[3:])),
                         ids=lambda s: s.name)
def test_transport_closed_in_every_state(state: ul.State) -> None:
    """Evt17: AA-5 in Sta2, AR-5 in Sta13 (the normal end), else an A-P-ABORT indication."""
    engine, _ = in_state(ul.Role.ACCEPTOR if state in ACCEPTOR_STATES else ul.Role.REQUESTOR, state)
    events = feed(engine, b"")
    assert engine.state is S.STA1 and events[-1] == ul.ConnectionClosed()
    if state in (S.STA2, S.STA13):
        assert events == [ul.ConnectionClosed()]
    else:
        assert events[0] == ul.Abort(source=ul.SOURCE_SERVICE_PROVIDER, reason=0)


@pytest.mark.parametrize(("role", "state"), [(ul.Role.ACCEPTOR, S.STA2), (ul.Role.ACCEPTOR, S.STA13),
                                             (ul.Role.REQUESTOR, S.STA13)], ids=lambda v: v.name)
def test_artim_expiry_closes(role: ul.Role, state: ul.State) -> None:
    engine, _ = in_state(role, state)
    assert engine.artim_running
    engine.artim_expired()
    assert engine.state is S.STA1 and not engine.artim_running
    assert list(engine.events()) == [ul.ConnectionClosed()]


@pytest.mark.parametrize("state", [S.STA3, S.STA6, S.STA7, S.STA8, S.STA10, S.STA12], ids=lambda s: s.name)
def test_stale_artim_expiry_is_ignored(state: ul.State) -> None:
    engine, _ = in_state(ul.Role.ACCEPTOR, state)
    assert not engine.artim_running
    engine.artim_expired()
    assert engine.state is state


LOCAL = {
    "accept": (Evt.EVT7, lambda e: ul.negotiate(e.request, POLICY) if e.request
               else ul.AssociateAccept(called_ae="A", calling_ae="B", contexts=())),
    "reject": (Evt.EVT8, lambda e: ul.AssociateReject(result=1, source=1, reason=1)),
    "p-data": (Evt.EVT9, lambda e: ul.Command(context_id=1, message=ul.CEchoRQ(message_id=99))),
    "release": (Evt.EVT11, lambda e: ul.ReleaseRequest()),
    "release reply": (Evt.EVT14, lambda e: ul.ReleaseReply()),
    "abort": (Evt.EVT15, lambda e: ul.Abort()),
}


@pytest.mark.parametrize(("role", "state", "primitive"),
                         [(r, s, p) for r, s, _ in CASES[:: len(PDUS)] for p in LOCAL], ids=lambda v: getattr(v, "name", v))
def test_every_local_primitive_in_every_state(role: ul.Role, state: ul.State, primitive: str) -> None:
    """A local primitive the table allows changes state as the table says; any other is the
    caller's error and changes nothing."""
    engine, _ = in_state(role, state)
    event, make = LOCAL[primitive]
    entry = TRANSITIONS.get((event, state))
    role_ok = {Evt.EVT7: ul.Role.ACCEPTOR, Evt.EVT8: ul.Role.ACCEPTOR}.get(event, role) is role
    if entry is None or not role_ok:
        with pytest.raises(ul.LocalProtocolError):
            engine.send(make(engine))
        assert engine.state is state
        return
    data = engine.send(make(engine))
    assert engine.state is entry[1]
    assert data or entry[0] == "AA-2"
