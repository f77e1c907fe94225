"""Storage Commitment on a live association: the glue between DIMSE and the tracker.

Used by the association worker's engine shell (actors/_ul_association.py) and by ``nodectl
stcomscu``, so every process that may receive an N-ACTION or an N-EVENT-REPORT treats it the
same way. ``request_commitment``, ``forward_report`` and ``report_delivered`` know no
association library (stcomscu, on actors/ul_requestor.py and actors/report_listener.py, uses only
``TrackerClient``).

* N-ACTION-RQ -> ``RequestCommitment`` to the tracker -> N-ACTION-RSP with its status. The
  tracker has put the report in its outbox before it answers. When it says ``deliver_here``,
  the report is sent on this association right after the N-ACTION-RSP has gone out (the
  shell does it, actors/_ul_association.py), and the outcome goes back as ``ReportDelivered``.
* N-EVENT-REPORT-RQ -> ``ForwardReport`` -> N-EVENT-REPORT-RSP with the tracker's status;
  when the tracker cannot be reached the answer is 0x0110 Processing failure, so the SCP
  keeps the report and retries (every request gets a response, also on failure).

Each request opens its own short-lived DEALER (association threads come and go; a socket
per request cannot leak with them).
"""

from __future__ import annotations

import logging
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


# ----- engine-independent steps: any shell (pynetdicom's handlers, node/ul's) calls these -----


def request_commitment(client: TrackerClient, message: RequestCommitment, data: bytes | None) -> tuple[int, CommitmentAnswer | None]:
    """N-ACTION-RQ -> the tracker: the status for the N-ACTION-RSP, and the tracker's answer
    when the report is to go out on this association after that RSP (else None)."""
    try:
        answer = client.ask(message, [data] if data is not None else [])
    except TimeoutError as exc:
        log.error("assoc=%s N-ACTION: tracker did not answer: %s", message.assoc_id, exc)
        return sc.STATUS_PROCESSING_FAILURE, None
    if isinstance(answer, ErrorReply):
        log.error("assoc=%s N-ACTION: tracker failed: %s", message.assoc_id, answer.reason)
        return answer.status, None
    if not isinstance(answer, CommitmentAnswer):
        return sc.STATUS_PROCESSING_FAILURE, None
    log.info("assoc=%s calling=%s N-ACTION txn=%s status=0x%04X", message.assoc_id, message.calling_aet, answer.transaction_uid, answer.status)
    return answer.status, answer if answer.status == sc.STATUS_SUCCESS and answer.deliver_here else None


def forward_report(client: TrackerClient, message: ForwardReport, data: bytes | None) -> int:
    """N-EVENT-REPORT-RQ -> the tracker: the status for the RSP; 0x0110 when the tracker
    cannot be reached, so the SCP keeps the report and retries."""
    try:
        answer = client.ask(message, [data] if data is not None else [])
    except TimeoutError as exc:
        log.error("assoc=%s N-EVENT-REPORT: tracker did not answer: %s", message.assoc_id, exc)
        return sc.STATUS_PROCESSING_FAILURE
    if isinstance(answer, ReportAnswer):
        log.info("assoc=%s N-EVENT-REPORT txn=%s status=0x%04X %s", message.assoc_id, answer.transaction_uid, answer.status, answer.reason)
        return answer.status
    if isinstance(answer, ErrorReply):
        log.error("assoc=%s N-EVENT-REPORT: tracker failed: %s", message.assoc_id, answer.reason)
        return answer.status
    return sc.STATUS_PROCESSING_FAILURE


def report_of(answer: CommitmentAnswer) -> sc.Report:
    """The report a deliver-here answer promised."""
    return sc.Report(answer.transaction_uid, sc.refs_from_wire(answer.committed), sc.failed_from_wire(answer.failed))


def report_delivered(client: TrackerClient, answer: CommitmentAnswer, status: int, assoc_id: str) -> None:
    """Tell the tracker how the same-association report went (-1: not answered); when it does
    not take this, its outbox resends the report on a new association."""
    log.info("assoc=%s txn=%s report on the same association: status=%d", assoc_id, answer.transaction_uid, status)
    try:
        client.ask(ReportDelivered(transaction_uid=answer.transaction_uid, status=status, assoc_id=assoc_id))
    except TimeoutError:
        log.warning("assoc=%s txn=%s tracker did not take the delivery outcome; the outbox will resend", assoc_id, answer.transaction_uid)
