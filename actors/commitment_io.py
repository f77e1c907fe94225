"""Storage Commitment on a live pynetdicom association: the glue between DIMSE and the tracker.

Used by the association worker (and by ``nodectl stcomscu`` for the association it opens
itself), so every process that may receive an N-ACTION or an N-EVENT-REPORT treats it the
same way:

* N-ACTION-RQ -> ``RequestCommitment`` to the tracker -> N-ACTION-RSP with its status. The
  tracker has put the report in its outbox before it answers. When it says ``deliver_here``,
  the report is sent on this association right after the N-ACTION-RSP has gone out
  (``EVT_DIMSE_SENT``), in a thread of its own (a handler must not wait for its own
  response), and the outcome goes back as ``ReportDelivered``.
* N-EVENT-REPORT-RQ -> ``ForwardReport`` -> N-EVENT-REPORT-RSP with the tracker's status;
  when the tracker cannot be reached the answer is 0x0110 Processing failure, so the SCP
  keeps the report and retries (every request gets a response, also on failure).

Each request opens its own short-lived DEALER (association threads come and go; a socket
per request cannot leak with them).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import zmq

from actors import bus
from node import commitment as sc
from node.config import NodeConfig
from node.messages import CommitmentAnswer, ErrorReply, ForwardReport, ReportAnswer, ReportDelivered, RequestCommitment

log = logging.getLogger("actors.commitment")

# Before sending a report on the requester's association, give an A-RELEASE-RQ that is
# already on its way this long to arrive: a requester that releases right after the
# N-ACTION-RSP ignores P-DATA while releasing (PS3.8), and the report would only time out.
SETTLE_S = 0.05
SAME_ASSOCIATION_DIMSE_S = 3.0  # a requester that waits answers in milliseconds


class TrackerClient:
    """Requests to the tracker with a deadline; one DEALER per request."""

    def __init__(self, config: NodeConfig, ctx: zmq.Context, sender: str) -> None:
        self.endpoint = config.endpoint("tracker")
        self.ctx = ctx
        self.sender = sender
        self.timeout = config.commitment.request_timeout

    def ask(self, message: Any, data: list[bytes] | tuple[()] = ()) -> Any:
        """The reply's message; TimeoutError when the tracker does not answer in time."""
        sock = bus.dealer(self.ctx, self.endpoint)
        try:
            return bus.request(sock, message, sender=self.sender, timeout=self.timeout, data=list(data)).message
        finally:
            sock.close(0)


def _raw(buffer: Any) -> bytes | None:
    """The bytes of a received Action/Event Information (a BytesIO), or None."""
    if buffer is None:
        return None
    return bytes(buffer.getvalue())


def _syntax(context: Any) -> str:
    """The negotiated transfer syntax of an accepted context (a list or a single UID)."""
    ts = context.transfer_syntax
    return str(ts[0] if isinstance(ts, (list, tuple)) else ts)


def on_n_action(event: Any, client: TrackerClient, assoc_id: str, pending: dict[int, CommitmentAnswer]) -> tuple[int, None]:
    """EVT_N_ACTION: ask the tracker; remember a same-association delivery for after the RSP."""
    req = event.request
    assoc = event.assoc
    data = _raw(req.ActionInformation)
    message = RequestCommitment(
        action_type=int(req.ActionTypeID if req.ActionTypeID is not None else -1),
        sop_class_uid=str(req.RequestedSOPClassUID or ""),
        sop_instance_uid=str(req.RequestedSOPInstanceUID or ""),
        transfer_syntax=_syntax(event.context),
        calling_aet=assoc.requestor.ae_title,
        called_aet=assoc.acceptor.ae_title,
        peer_host=str(assoc.requestor.address),
        assoc_id=assoc_id,
    )
    try:
        answer = client.ask(message, [data] if data is not None else [])
    except TimeoutError as exc:
        log.error("assoc=%s N-ACTION: tracker did not answer: %s", assoc_id, exc)
        return sc.STATUS_PROCESSING_FAILURE, None
    if isinstance(answer, ErrorReply):
        log.error("assoc=%s N-ACTION: tracker failed: %s", assoc_id, answer.reason)
        return answer.status, None
    if not isinstance(answer, CommitmentAnswer):
        return sc.STATUS_PROCESSING_FAILURE, None
    if answer.status == sc.STATUS_SUCCESS and answer.deliver_here:
        pending[int(req.MessageID)] = answer
    log.info("assoc=%s calling=%s N-ACTION txn=%s status=0x%04X", assoc_id, assoc.requestor.ae_title, answer.transaction_uid, answer.status)
    return answer.status, None


def on_dimse_sent(event: Any, client: TrackerClient, assoc_id: str, pending: dict[int, CommitmentAnswer]) -> None:
    """EVT_DIMSE_SENT: once our N-ACTION-RSP is out, deliver the report it promised."""
    message = event.message  # a pynetdicom.dimse_messages object, not the primitive
    if type(message).__name__ != "N_ACTION_RSP":
        return
    responded = message.command_set.get("MessageIDBeingRespondedTo")
    answer = pending.pop(int(responded), None) if responded is not None else None
    if answer is None:
        return
    threading.Thread(target=deliver_here, args=(event.assoc, answer, client, assoc_id), name=f"report-{assoc_id}", daemon=True).start()


def releasing(assoc: Any) -> bool:
    """True once the peer has asked to release (or the association has left data transfer).

    Never ``assoc.acse.is_release_requested()`` here: it takes the A-RELEASE primitive off
    the DUL's queue, so the association's own reactor never answers the release, and the
    report then went out on an association the requester was releasing: it waited the
    3 s DIMSE cap, pynetdicom aborted, and the report left ~3.5 s late on a new association
    (``python -m bench commit``: 6 of 19 transactions). This only looks:
    the state machine leaves Sta6 when an A-RELEASE-RQ PDU arrives, and the primitive is
    peeked at, not taken.
    """
    from pynetdicom.pdu_primitives import A_RELEASE

    dul = assoc.dul
    if getattr(getattr(dul, "state_machine", None), "current_state", "Sta6") != "Sta6":
        return True
    primitive = dul.peek_next_pdu()
    return isinstance(primitive, A_RELEASE) and primitive.result is None


def deliver_here(assoc: Any, answer: CommitmentAnswer, client: TrackerClient, assoc_id: str) -> None:
    """Send the report on the requester's association; tell the tracker how it went."""
    deadline = time.monotonic() + SETTLE_S
    while time.monotonic() < deadline and assoc.is_established and not releasing(assoc):
        time.sleep(0.005)
    status = -1
    if assoc.is_established and not releasing(assoc):
        report = sc.Report(answer.transaction_uid, sc.refs_from_wire(answer.committed), sc.failed_from_wire(answer.failed))
        try:
            assoc.dimse_timeout = min(assoc.dimse_timeout or SAME_ASSOCIATION_DIMSE_S, SAME_ASSOCIATION_DIMSE_S)
            rsp, _reply = assoc.send_n_event_report(sc.report_dataset(report), report.event_type, sc.SOP_CLASS, sc.SOP_INSTANCE)
            if rsp is not None and "Status" in rsp:
                status = int(rsp.Status)
        except (RuntimeError, ValueError) as exc:  # the association ended under us
            log.info("assoc=%s report on the same association failed: %s", assoc_id, exc)
    log.info("assoc=%s txn=%s report on the same association: status=%d", assoc_id, answer.transaction_uid, status)
    try:
        client.ask(ReportDelivered(transaction_uid=answer.transaction_uid, status=status, assoc_id=assoc_id))
    except TimeoutError:
        log.warning("assoc=%s txn=%s tracker did not take the delivery outcome; the outbox will resend", assoc_id, answer.transaction_uid)


def on_n_event_report(event: Any, client: TrackerClient, assoc_id: str) -> tuple[int, None]:
    """EVT_N_EVENT_REPORT: forward to the tracker, answer with its status (0x0110 if none)."""
    req = event.request
    assoc = event.assoc
    data = _raw(req.EventInformation)
    message = ForwardReport(
        event_type=int(req.EventTypeID if req.EventTypeID is not None else -1),
        sop_class_uid=str(req.AffectedSOPClassUID or ""),
        sop_instance_uid=str(req.AffectedSOPInstanceUID or ""),
        transfer_syntax=_syntax(event.context),
        calling_aet=assoc.requestor.ae_title if assoc.is_acceptor else assoc.acceptor.ae_title,
        called_aet=assoc.acceptor.ae_title if assoc.is_acceptor else assoc.requestor.ae_title,
        assoc_id=assoc_id,
    )
    try:
        answer = client.ask(message, [data] if data is not None else [])
    except TimeoutError as exc:
        log.error("assoc=%s N-EVENT-REPORT: tracker did not answer: %s", assoc_id, exc)
        return sc.STATUS_PROCESSING_FAILURE, None
    if isinstance(answer, ReportAnswer):
        log.info("assoc=%s N-EVENT-REPORT txn=%s status=0x%04X %s", assoc_id, answer.transaction_uid, answer.status, answer.reason)
        return answer.status, None
    if isinstance(answer, ErrorReply):
        log.error("assoc=%s N-EVENT-REPORT: tracker failed: %s", assoc_id, answer.reason)
        return answer.status, None
    return sc.STATUS_PROCESSING_FAILURE, None


def apply_roles(ae: Any, rules: Any) -> None:
    """Give supported contexts the SCP/SCU role selection their rules allow."""
    by_uid = {rule.abstract_syntax: rule for rule in rules if getattr(rule, "scu_role", None) is not None}
    for cx in ae.supported_contexts:
        rule = by_uid.get(str(cx.abstract_syntax))
        if rule is not None:
            cx.scu_role, cx.scp_role = rule.scu_role, rule.scp_role


def install_role_check(reject: Callable[[], bool]) -> None:
    """Refuse Storage Commitment contexts proposed without the SCP role when ``reject()``.

    DCMTK stcomscu's ``--role-reject``: an SCP that opens an association to deliver a report
    must propose SCP/SCU role selection with the SCP role (PS3.4 J.3.3). pynetdicom has no
    per-context hook, so the acceptor's negotiation function is wrapped (once; the wrapper marks itself so that re-wrapping by others is noticed).
    """
    from pynetdicom import acse

    if getattr(acse.negotiate_as_acceptor, "role_check", False):
        return

    inner = acse.negotiate_as_acceptor

    def negotiate(rq_contexts: Any, ac_contexts: Any, roles: Any = None) -> Any:
        contexts, replies = inner(rq_contexts, ac_contexts, roles)
        if reject():
            proposed = roles or {}
            for cx in contexts:
                if str(cx.abstract_syntax) == sc.SOP_CLASS and cx.result == 0x00:
                    role = proposed.get(cx.abstract_syntax)
                    if not role or role[1] is not True:
                        log.warning("Storage Commitment context %d refused: no SCP role selection (--role-reject)", cx.context_id)
                        cx.result = 0x01
        return contexts, replies

    negotiate.role_check = True  # type: ignore[attr-defined]
    acse.negotiate_as_acceptor = negotiate  # type: ignore[attr-defined]
