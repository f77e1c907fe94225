"""The DICOM upper layer state machine, PS3.8 Table 9-10, as one table.

Rules (as h11's ``_state.py`` states its own at the top):

- A state is PS3.8's Sta1..Sta13; an event its Evt1..Evt19; an action its AE-n, DT-n, AR-n,
  AA-n. ``TRANSITIONS[(state, event)]`` is the action and the next state; the next state is
  None only for AE-6 (Sta3, or Sta13 when the request is unacceptable) and AR-8 (Sta9 for the
  requestor, Sta10 for the acceptor), which decide by PS3.8's own words.
- A pair missing from the table is a local primitive in a state where PS3.8 has no entry for
  it: the caller's bug (``LocalProtocolError``). Every PDU event (Evt3, 4, 6, 10, 12, 13, 16,
  19) and transport event (Evt17) has an entry in every state where a connection exists.
- The shell owns the transport: the acceptor's engine is born in Sta2 (Evt5 already happened:
  the shell accepted the connection), the requestor's in Sta4 (the shell connected, Evt1's
  transport connect is done, and sending the A-ASSOCIATE-RQ is Evt2's AE-2). Sta1 means "close
  the connection": the shell closes it and the engine is finished.
- ARTIM runs in Sta2 and Sta13 only (started by AE-5, AE-8, AA-1, AA-7, AA-8, AR-4; stopped
  by AE-6, AA-2, AA-5, AR-5); the engine says whether it runs, the shell keeps the clock.
"""

from __future__ import annotations

from enum import Enum


class State(Enum):
    # members are singletons compared by identity: hash them so too (Enum's own __hash__ is a
    # Python call, hash(name)); the table is looked up by (event, state) several times a PDU
    __hash__ = object.__hash__

    STA1 = "idle: close the transport connection"
    STA2 = "transport open, awaiting A-ASSOCIATE-RQ PDU"
    STA3 = "awaiting local A-ASSOCIATE response primitive"
    STA4 = "awaiting transport connection opening to complete"
    STA5 = "awaiting A-ASSOCIATE-AC or A-ASSOCIATE-RJ PDU"
    STA6 = "association established, ready for data transfer"
    STA7 = "awaiting A-RELEASE-RP PDU"
    STA8 = "awaiting local A-RELEASE response primitive"
    STA9 = "release collision requestor side: awaiting A-RELEASE response primitive"
    STA10 = "release collision acceptor side: awaiting A-RELEASE-RP PDU"
    STA11 = "release collision requestor side: awaiting A-RELEASE-RP PDU"
    STA12 = "release collision acceptor side: awaiting A-RELEASE response primitive"
    STA13 = "awaiting transport connection close indication"


class Evt(Enum):
    __hash__ = object.__hash__  # as State's

    EVT2 = "transport connection confirm (local): send the A-ASSOCIATE-RQ"
    EVT3 = "A-ASSOCIATE-AC PDU received"
    EVT4 = "A-ASSOCIATE-RJ PDU received"
    EVT6 = "A-ASSOCIATE-RQ PDU received"
    EVT7 = "A-ASSOCIATE response primitive (accept)"
    EVT8 = "A-ASSOCIATE response primitive (reject)"
    EVT9 = "P-DATA request primitive"
    EVT10 = "P-DATA-TF PDU received"
    EVT11 = "A-RELEASE request primitive"
    EVT12 = "A-RELEASE-RQ PDU received"
    EVT13 = "A-RELEASE-RP PDU received"
    EVT14 = "A-RELEASE response primitive"
    EVT15 = "A-ABORT request primitive"
    EVT16 = "A-ABORT PDU received"
    EVT17 = "transport connection closed"
    EVT18 = "ARTIM timer expired"
    EVT19 = "unrecognized or invalid PDU received"


S = State
_CONNECTED = (S.STA2, S.STA3, S.STA5, S.STA6, S.STA7, S.STA8, S.STA9, S.STA10, S.STA11, S.STA12)


def _pdu_column(event: Evt, accepted_in: dict[State, tuple[str, State | None]]) -> dict:
    """A received PDU's column: its own actions where it belongs, AA-1 in Sta2 (before the
    association exists), AA-8 everywhere else, AA-6 (ignore) in Sta13 (PS3.8 Table 9-10)."""
    column: dict = {(event, s): ("AA-8", S.STA13) for s in _CONNECTED}
    column[(event, S.STA2)] = ("AA-1", S.STA13)
    column[(event, S.STA13)] = ("AA-6", S.STA13)
    column.update({(event, s): action for s, action in accepted_in.items()})
    return column


TRANSITIONS: dict[tuple[Evt, State], tuple[str, State | None]] = {
    (Evt.EVT2, S.STA4): ("AE-2", S.STA5),
    **_pdu_column(Evt.EVT3, {S.STA5: ("AE-3", S.STA6)}),
    **_pdu_column(Evt.EVT4, {S.STA5: ("AE-4", S.STA1)}),
    **_pdu_column(Evt.EVT6, {S.STA2: ("AE-6", None), S.STA13: ("AA-7", S.STA13)}),
    (Evt.EVT7, S.STA3): ("AE-7", S.STA6),
    (Evt.EVT8, S.STA3): ("AE-8", S.STA13),
    (Evt.EVT9, S.STA6): ("DT-1", S.STA6),
    (Evt.EVT9, S.STA8): ("AR-7", S.STA8),
    **_pdu_column(Evt.EVT10, {S.STA6: ("DT-2", S.STA6), S.STA7: ("AR-6", S.STA7)}),
    (Evt.EVT11, S.STA6): ("AR-1", S.STA7),
    **_pdu_column(Evt.EVT12, {S.STA6: ("AR-2", S.STA8), S.STA7: ("AR-8", None)}),
    **_pdu_column(Evt.EVT13, {S.STA7: ("AR-3", S.STA1), S.STA10: ("AR-10", S.STA12), S.STA11: ("AR-3", S.STA1)}),
    (Evt.EVT14, S.STA8): ("AR-4", S.STA13),
    (Evt.EVT14, S.STA9): ("AR-9", S.STA11),
    (Evt.EVT14, S.STA12): ("AR-4", S.STA13),
    **{(Evt.EVT15, s): ("AA-1", S.STA13) for s in _CONNECTED if s is not S.STA2},
    (Evt.EVT15, S.STA4): ("AA-2", S.STA1),
    **{(Evt.EVT16, s): ("AA-3", S.STA1) for s in _CONNECTED},
    (Evt.EVT16, S.STA2): ("AA-2", S.STA1),
    (Evt.EVT16, S.STA13): ("AA-2", S.STA1),
    **{(Evt.EVT17, s): ("AA-4", S.STA1) for s in _CONNECTED + (S.STA4,)},
    (Evt.EVT17, S.STA2): ("AA-5", S.STA1),
    (Evt.EVT17, S.STA13): ("AR-5", S.STA1),
    (Evt.EVT18, S.STA2): ("AA-2", S.STA1),
    (Evt.EVT18, S.STA13): ("AA-2", S.STA1),
    **_pdu_column(Evt.EVT19, {S.STA13: ("AA-7", S.STA13)}),
}

# States in which ARTIM runs (see the rules above).
ARTIM_STATES = frozenset({S.STA2, S.STA13})
# States in which P-DATA may be sent (DT-1, AR-7) and received (DT-2, AR-6).
SEND_DATA_STATES = frozenset({S.STA6, S.STA8})
RECEIVE_DATA_STATES = frozenset({S.STA6, S.STA7})
