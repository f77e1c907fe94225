"""``nodectl send --commit``: Storage Commitment for what the peer acknowledged, on the core's engine.

Why: a C-STORE success says the peer received an instance, not that it took responsibility
for it; a migration ends with proof of safe keeping (PS3.4 Annex J). After the stores (or every
``--commit-batch`` instances) the job sends an N-ACTION-RQ for the acknowledged instances the
journal does not list as committed, and waits for the N-EVENT-REPORT: on the same association
(``nodectl serve``, dcm4chee) or on a new one the peer opens to ``--commit-port`` (Orthanc, and
any peer that releases first). Each instance is then recorded committed or failed with its
reason; a batch with no report in time stays not committed, so the next run asks again.

A small shell, as ``send_association`` is for C-STORE: one blocking socket per association,
``node.ul`` for the protocol, ``node.commitment`` for the datasets and the rules; the listener
for reports on a new association is one socket bound before the first N-ACTION leaves, served
in this process with ``select`` (no thread). The actors' requestor is not used: this branch's
send tools talk to ``node.ul`` directly.
"""

from __future__ import annotations

import logging
import select
import socket
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

from node import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME, ul
from node import commitment as sc
from node.send_journal import SendJournal
from node.tools.send_association import Lost, PeerOptions, read_events, rejection_text, send_quietly, set_timeout
from node.tools.tls_options import client_context

LOGGER = logging.getLogger("node.tools.send")
SYNTAXES = (ImplicitVRLittleEndian, ExplicitVRLittleEndian)
CONTEXT_ID = 1


class CommitUnsupported(Exception):
    """The peer does not do Storage Commitment (no accepted context, or the N-ACTION refused)."""


@dataclass(slots=True)
class CommitOutcome:
    """What one commitment phase achieved."""

    requested: int = 0
    committed: int = 0
    failed: int = 0
    unanswered: int = 0  # no report in time: still not committed
    errors: list[str] = field(default_factory=list)


@dataclass(slots=True)
class _Pending:
    """One transaction waiting for its report."""

    uid: str
    refs: tuple[sc.Ref, ...]
    report: sc.Report | None = None


def commit_request(peer: PeerOptions) -> ul.AssociateRequest:
    """One Storage Commitment context, both roles proposed, so the report may come back on it."""
    return ul.AssociateRequest(
        called_ae=peer.called_aet, calling_ae=peer.calling_aet, max_pdu=peer.max_pdu,
        contexts=(ul.ProposedContext(context_id=CONTEXT_ID, abstract_syntax=sc.SOP_CLASS, transfer_syntaxes=SYNTAXES),),
        roles=(ul.RoleSelection(sop_class_uid=sc.SOP_CLASS, scu_role=True, scp_role=True),),
        implementation_class_uid=IMPLEMENTATION_CLASS_UID, implementation_version_name=IMPLEMENTATION_VERSION_NAME)


def report_policy() -> ul.AcceptorPolicy:
    """What our listener on ``--commit-port`` accepts: a peer delivering reports (it is SCP)."""
    return ul.AcceptorPolicy(contexts={sc.SOP_CLASS: SYNTAXES}, roles={sc.SOP_CLASS: (True, True)},
                             implementation_class_uid=IMPLEMENTATION_CLASS_UID,
                             implementation_version_name=IMPLEMENTATION_VERSION_NAME)


class _Link:
    """One association (ours, or one the peer opened to deliver reports): socket and engine."""

    def __init__(self, sock: socket.socket, engine: ul.Association, timeout: float) -> None:
        self.sock, self.engine, self.timeout = sock, engine, timeout
        self.command: ul.Command | None = None
        self.data = bytearray()

    def write(self, data: bytes) -> None:
        set_timeout(self.sock, self.timeout)
        self.sock.sendall(data)

    def messages(self) -> list[tuple[ul.Command, bytes | None] | ul.Event]:
        """One read's complete messages (command with its dataset), and other events."""
        out: list[tuple[ul.Command, bytes | None] | ul.Event] = []
        for event in read_events(self.sock, self.engine, self.timeout):
            if isinstance(event, ul.Command):
                if getattr(event.message, "has_dataset", False):
                    self.command, self.data = event, bytearray()
                else:
                    out.append((event, None))
            elif isinstance(event, ul.DatasetFragment) and self.command is not None:
                self.data += event.data
                if event.last:
                    out.append((self.command, bytes(self.data)))
                    self.command = None
            else:
                out.append(event)
        return out

    def syntax(self, context_id: int) -> str:
        return self.engine.contexts[context_id].transfer_syntax

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def open_association(peer: PeerOptions) -> _Link:
    """Associate for Storage Commitment; CommitUnsupported if the peer takes no such context."""
    try:
        sock = socket.create_connection((peer.host, peer.port), timeout=peer.network_timeout or None)
    except OSError as exc:
        raise Lost(f"cannot connect: {exc.strerror or exc}") from None
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if peer.tls is not None:  # the stores' TLS settings (--tls-*), the handshake within the connect timeout
        try:
            sock = client_context(peer.tls).wrap_socket(sock, server_side=False)
        except (ssl.SSLError, OSError) as exc:
            sock.close()
            raise Lost(f"TLS handshake failed or certificate refused ({getattr(exc, 'reason', None) or exc})") from None
    link = _Link(sock, ul.Association(ul.Role.REQUESTOR), peer.acse_timeout)
    try:
        link.write(link.engine.send(commit_request(peer)))
        while True:
            for event in link.messages():
                if isinstance(event, ul.AssociateAccept):
                    cx = link.engine.contexts.get(CONTEXT_ID)
                    if cx is None or not cx.requestor_scu:
                        link.write(link.engine.send(ul.ReleaseRequest()))
                        raise CommitUnsupported("the peer accepts no Storage Commitment Push Model context")
                    link.timeout = peer.dimse_timeout
                    return link
                if isinstance(event, ul.AssociateReject):
                    raise Lost(f"association rejected ({rejection_text(event)})")
                if isinstance(event, (ul.Abort, ul.ConnectionClosed)):
                    raise Lost("association aborted or closed before it was answered")
    except BaseException:
        link.close()
        raise


def send_action(link: _Link, pending: _Pending) -> int:
    """N-ACTION-RQ (Request Storage Commitment) and its dataset; the N-ACTION-RSP status."""
    data = sc.request_bytes(sc.Request(pending.uid, pending.refs), link.syntax(CONTEXT_ID))
    link.write(link.engine.send(ul.Command(context_id=CONTEXT_ID, message=ul.NActionRQ(
        message_id=1, requested_sop_class_uid=sc.SOP_CLASS, requested_sop_instance_uid=sc.SOP_INSTANCE,
        action_type_id=sc.ACTION_REQUEST_COMMITMENT))) + link.engine.send(
        ul.DatasetFragment(context_id=CONTEXT_ID, data=data, last=True)))
    while True:
        for item in link.messages():
            if isinstance(item, tuple) and isinstance(item[0].message, ul.NActionRSP):
                return item[0].message.status
            if isinstance(item, tuple) and isinstance(item[0].message, ul.NEventReportRQ):
                raise Lost("N-EVENT-REPORT before the N-ACTION-RSP")
            if isinstance(item, (ul.Abort, ul.ConnectionClosed)):
                raise Lost("association aborted or closed while waiting for the N-ACTION-RSP")


def take_report(link: _Link, command: ul.Command, data: bytes | None, waiting: dict[str, _Pending]) -> None:
    """Answer an N-EVENT-REPORT-RQ, and keep its report if it names one of our transactions."""
    rq = command.message
    assert isinstance(rq, ul.NEventReportRQ)
    status = sc.STATUS_SUCCESS
    try:
        report = sc.parse_report(rq.event_type_id, rq.affected_sop_class_uid, rq.affected_sop_instance_uid, data,
                                 link.syntax(command.context_id))
        if report.transaction_uid in waiting:
            waiting[report.transaction_uid].report = report
        else:
            status = sc.STATUS_INVALID_ARGUMENT_VALUE
    except sc.CommitmentError as exc:
        status = exc.status
    link.write(link.engine.send_message(command.context_id, ul.NEventReportRSP(
        message_id_being_responded_to=rq.message_id, status=status, affected_sop_class_uid=sc.SOP_CLASS,
        affected_sop_instance_uid=sc.SOP_INSTANCE, event_type_id=rq.event_type_id)))


def serve_link(link: _Link, waiting: dict[str, _Pending]) -> bool:
    """Handle one read of an association; False once it is over (released, aborted, closed)."""
    for item in link.messages():
        if isinstance(item, tuple):
            if isinstance(item[0].message, ul.NEventReportRQ):
                take_report(link, item[0], item[1], waiting)
        elif isinstance(item, ul.AssociateRequest):
            link.write(link.engine.send(ul.negotiate(item, report_policy())))
        elif isinstance(item, ul.ReleaseRequest):
            link.write(link.engine.send(ul.ReleaseReply()))
        elif isinstance(item, (ul.Abort, ul.ConnectionClosed, ul.ReleaseReply)):
            return False
    return True


def wait_reports(links: list[_Link], listener: socket.socket | None, waiting: dict[str, _Pending], deadline: float) -> None:
    """Serve our association(s) and the listener until every transaction has its report or time is up."""
    while any(p.report is None for p in waiting.values()) and time.monotonic() < deadline:
        sockets: list[socket.socket] = [link.sock for link in links] + ([listener] if listener is not None else [])
        if not sockets:
            return
        # a TLS socket may hold decrypted bytes select() cannot see: those are read first
        ready = [link.sock for link in links if isinstance(link.sock, ssl.SSLSocket) and link.sock.pending()]
        if not ready:
            ready, _, _ = select.select(sockets, [], [], max(0.0, deadline - time.monotonic()))
        for sock in ready:
            if sock is listener:
                conn, _ = listener.accept()
                links.append(_Link(conn, ul.Association(ul.Role.ACCEPTOR), 10.0))
                continue
            link = next(item for item in links if item.sock is sock)
            try:
                alive = serve_link(link, waiting)
            except (Lost, OSError):
                alive = False
            if not alive:
                link.close()
                links.remove(link)


def release(link: _Link, waiting: dict[str, _Pending], listener: socket.socket | None) -> None:
    """A-RELEASE-RQ on our association; a report that comes first is still taken (bounded reads)."""
    try:
        link.write(link.engine.send(ul.ReleaseRequest()))
        for _ in range(64):
            if not serve_link(link, waiting):
                break
    except (Lost, OSError, ul.LocalProtocolError):
        send_quietly(link.sock, ul.abort_pdu())
    link.close()


def commit_batch(peer: PeerOptions, refs: Sequence[sc.Ref], listener: socket.socket | None, timeout: float) -> _Pending:
    """One transaction: associate, N-ACTION, wait for the report on this association or on ``listener``."""
    pending = _Pending(uid=str(generate_uid()), refs=tuple(refs))
    waiting = {pending.uid: pending}
    link = open_association(peer)
    try:
        status = send_action(link, pending)
    except BaseException:
        link.close()
        raise
    if status != sc.STATUS_SUCCESS:
        release(link, waiting, listener)
        raise CommitUnsupported(f"the peer refused the N-ACTION (status 0x{status:04X})")
    links = [link]
    deadline = time.monotonic() + timeout
    if listener is None:
        wait_reports(links, None, waiting, deadline)
    else:  # a peer that reports on a new association may wait for our release first (Orthanc does)
        wait_reports(links, None, waiting, min(deadline, time.monotonic() + 1.0))
    if link in links:
        release(link, waiting, listener)
        links.remove(link)
    if pending.report is None and listener is not None:
        wait_reports(links, listener, waiting, deadline)
    for other in links:
        other.close()
    return pending


def run_commitment(journal: SendJournal, peer: PeerOptions, *, batch: int, timeout: float,
                   commit_port: int | None) -> CommitOutcome:
    """Ask for commitment of every acknowledged, not yet committed instance in the journal,
    ``batch`` at a time, and record each answer there."""
    outcome = CommitOutcome()
    listener = socket.create_server(("", commit_port)) if commit_port else None
    try:
        after = 0
        while rows := journal.uncommitted(after, batch):
            after = rows[-1][0]
            paths: dict[str, list[str]] = {}  # SOP Instance UID -> the files holding it (a copy sent twice)
            refs = []
            for _row, path, cls, uid in rows:
                if uid not in paths:
                    paths[uid] = []
                    refs.append(sc.Ref(cls, uid))
                paths[uid].append(path)
            outcome.requested += len(refs)
            pending = commit_batch(peer, refs, listener, timeout)
            record(journal, pending, paths, outcome, timeout)
        return outcome
    finally:
        if listener is not None:
            listener.close()


def record(journal: SendJournal, pending: _Pending, paths: dict[str, list[str]], outcome: CommitOutcome,
           timeout: float) -> None:
    """Each instance of a transaction, for each of its files: committed, failed with the
    reason, or not answered."""
    if pending.report is None:
        outcome.unanswered += len(pending.refs)
        outcome.errors.append(f"no Storage Commitment report within {timeout:g} s for {len(pending.refs)} instance(s)")
        journal.record_commit([(path, False, f"no report within {timeout:g} s")
                               for ref in pending.refs for path in paths[ref.sop_instance_uid]])
        return
    report = pending.report
    committed = {r.sop_instance_uid for r in report.committed}
    failed = {f.sop_instance_uid: f.reason for f in report.failed}
    results: list[tuple[str, bool, str]] = []
    for ref in pending.refs:
        uid = ref.sop_instance_uid
        if uid in committed and uid not in failed:
            ok, reason = True, ""
        elif uid in failed:
            ok, reason = False, f"0x{failed[uid]:04X} {sc.reason_text(failed[uid])}"
        else:
            ok, reason = False, "not in the report"
        outcome.committed += ok
        outcome.failed += not ok
        results += [(path, ok, reason) for path in paths[uid]]
    journal.record_commit(results)
