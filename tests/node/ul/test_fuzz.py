"""Every hostile stream tests/fuzz_pdu.py knows, fed to engines with no network: the only
exception that may come out is ``ProtocolViolation`` (with an A-ABORT to send), and every
stream ends with the engine closed (h11's habit: the peer's garbage is never our crash)."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from node import ul
from node.ul import _pdu
from tests import fuzz_pdu
from tests.node.ul.helpers import POLICY, abort_fields, request

EXAMPLES = settings(max_examples=1000, deadline=None, database=None, suppress_health_check=list(HealthCheck))


def answer(engine: ul.Association, event: ul.Event) -> None:
    """What a node's shell would do with each event (the replies are not sent anywhere)."""
    if isinstance(event, ul.AssociateRequest):
        engine.send(ul.negotiate(event, ul.AcceptorPolicy(contexts={**POLICY.contexts, fuzz_pdu.VERIFICATION.decode(): (ul.ANY,)})))
    elif isinstance(event, ul.Command) and isinstance(event.message, ul.CEchoRQ):
        engine.send_message(event.context_id, ul.CEchoRSP(message_id_being_responded_to=event.message.message_id, status=0))
    elif isinstance(event, ul.ReleaseRequest):
        engine.send(ul.ReleaseReply())


def drive(engine: ul.Association, data: bytes, cuts: list[int]) -> None:
    """Feed ``data`` in reads cut at ``cuts`` then close; check the one way it may fail.

    After a violation the engine waits in Sta13, where PS3.8 still answers an A-ASSOCIATE-RQ
    or an unrecognized PDU with another A-ABORT (AA-7): those may raise again.
    """
    bounds = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    reads = [data[start:end] for start, end in zip(bounds, bounds[1:])] + [b""]
    events: list[ul.Event] = []
    for piece in reads:
        engine.receive_data(piece)
        while True:
            try:
                for event in engine.events():
                    events.append(event)
                    answer(engine, event)
                break
            except ul.ProtocolViolation as exc:
                assert engine.state is ul.State.STA13 and engine.artim_running
                source, reason = abort_fields(exc.abort_pdu)
                assert (source, reason) == (exc.source, exc.reason) and source == ul.SOURCE_SERVICE_PROVIDER
    assert engine.state is ul.State.STA1 and events[-1] == ul.ConnectionClosed()


@EXAMPLES
@given(data=fuzz_pdu.pdu_streams(), cuts=st.lists(st.integers(0, 4096), max_size=6))
def test_acceptor_survives_every_hostile_stream(data: bytes, cuts: list[int]) -> None:
    drive(ul.Association(ul.Role.ACCEPTOR), data, cuts)


def _accept_bytes() -> bytes:
    return _pdu.encode_associate_ac(ul.negotiate(request(), POLICY))  # type: ignore[arg-type]


@st.composite
def _requestor_streams(draw: st.DrawFn) -> bytes:
    """What an acceptor could answer: garbage, or a real A-ASSOCIATE-AC mutated, then more."""
    base = bytearray(_accept_bytes() + fuzz_pdu.p_data(1, 0x03, fuzz_pdu.echo_command()))
    for _ in range(draw(st.integers(0, 8))):
        base[draw(st.integers(0, len(base) - 1))] = draw(st.integers(0, 255))
    return draw(st.one_of(st.just(bytes(base[: draw(st.integers(0, len(base)))])), fuzz_pdu.pdu_streams()))


@EXAMPLES
@given(data=_requestor_streams(), cuts=st.lists(st.integers(0, 4096), max_size=6))
def test_requestor_survives_every_hostile_answer(data: bytes, cuts: list[int]) -> None:
    engine = ul.Association(ul.Role.REQUESTOR)
    engine.send(request())
    drive(engine, data, cuts)


def test_the_fuzz_suites_good_echo_is_served() -> None:
    """The one well-formed stream of the fuzz suite runs to a clean end (not just 'no crash')."""
    engine = ul.Association(ul.Role.ACCEPTOR)
    engine.receive_data(fuzz_pdu.GOOD_ECHO)
    seen = []
    for event in engine.events():
        seen.append(type(event).__name__)
        answer(engine, event)
    assert seen == ["AssociateRequest", "Command", "ReleaseRequest"] and engine.state is ul.State.STA13
