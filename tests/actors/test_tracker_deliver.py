"""The tracker's outbox on the engine: reports to ``[[peers]]`` on a new association, in TLS
for ``tls = true`` entries (issue 16 item 3), received by our own stcomscu listener in TLS
mode (``+P`` with ``+tls``, client certificates required). A peer entry whose CA does not
trust the listener's certificate never gets the report: the attempt fails with the TLS
reason in the node's log and is retried, never counted as delivered."""

from __future__ import annotations

import io
import socket
import subprocess
import threading
from pathlib import Path

import pytest
from pydicom import dcmread

from actors.tracker import deliver
from node import ul
from node.commitment import Delivery, Ref, Report
from node.config import CommitmentConfig, NodeConfig, PeerConfig
from node.transactions import OutboxEntry
from tests.node.ul.blocking import pump
from tests.node.ul.helpers import COMMITMENT, CT
from tests.nodes import RunningNode
from tests.support import NODECTL, free_port, make_ct, start_process, stop_process, wait_for_port, wait_until

trustme = pytest.importorskip("trustme")


def test_reports_to_tls_peers_need_a_trusted_peer_certificate(tmp_path: Path) -> None:
    from tests.pki import make_certs

    (tmp_path / "pki").mkdir()
    certs = make_certs(tmp_path / "pki")
    node_port, report_port = free_port(), free_port()
    peer = f'host = "127.0.0.1"\nport = {report_port}\ntls = true\ncertificate = "{certs.client_crt}"\nkey = "{certs.client_key}"'
    (tmp_path / "node.toml").write_text(f"""
[node]
aet = "NODE"
workers = 1
run_dir = "run"
[[listeners]]
port = {node_port}
[[peers]]
aet = "TLSPEER"
ca = "{certs.ca}"
{peer}
[[peers]]
aet = "UNTRUSTED"
ca = "{certs.rogue_ca}"
{peer}
[commitment]
retry_base = 0.5
retry_max = 1.0
""")
    out = tmp_path / "out"
    out.mkdir()
    make_ct(tmp_path / "a.dcm")
    running = RunningNode(["serve", "--config", str(tmp_path / "node.toml")], cwd=tmp_path, port=node_port).wait_ready()
    listener = start_process([*NODECTL, "stcomscu", "+P", str(report_port), "+tls", str(certs.server_key), str(certs.server_crt),
                              "+cf", str(certs.ca), "-od", str(out)], cwd=tmp_path, log=tmp_path / "listener.log")
    try:
        wait_for_port(report_port)
        uids = {}
        for aet in ("TLSPEER", "UNTRUSTED"):
            sent = subprocess.run([*NODECTL, "stcomscu", "-nwe", "-nmf", "-aet", aet, "-aec", "NODE", "-od", str(out),
                                   "+tuf", str(out / f"{aet}.txt"), "127.0.0.1", str(node_port), str(tmp_path / "a.dcm")],
                                  cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False)
            assert sent.returncode == 0, sent.stderr
            uids[aet] = (out / f"{aet}.txt").read_text().strip()
        wait_until(lambda: (out / f"{uids['TLSPEER']}.rsp.ERR.dcm").exists(), 30, "the report over TLS at the listener")
        wait_until(lambda: running.log().count("report to UNTRUSTED not delivered") >= 2, 30, "two failed TLS attempts")
    finally:
        stop_process(listener)
        running.stop()
    assert dcmread(out / f"{uids['TLSPEER']}.rsp.ERR.dcm").TransactionUID == uids["TLSPEER"]  # a.dcm was never stored
    assert not list(out.glob(f"{uids['UNTRUSTED']}.rsp.*"))
    assert "CERTIFICATE_VERIFY_FAILED" in running.log()


def _entry(requester: str) -> OutboxEntry:
    report = Report(transaction_uid="1.2.3.4", committed=(Ref(CT, "1.2.3.4.5"),), failed=())
    return OutboxEntry(transaction_uid="1.2.3.4", requester_aet=requester, called_aet="NODE", peer_host="127.0.0.1",
                       request_hash="", report=report, state=Delivery.QUEUED, attempts=0, next_attempt=0.0, expires=0.0)


class _ReportTaker:
    """The requester's side of a report association on the engine, for one association:
    negotiates under ``policy``, answers each N-EVENT-REPORT-RQ with Success."""

    def __init__(self, policy: ul.AcceptorPolicy) -> None:
        self.engine = ul.Association(ul.Role.ACCEPTOR)
        self.policy = policy
        self.requests: list[ul.AssociateRequest] = []
        self.reports: list[bytes] = []
        self._report: ul.NEventReportRQ | None = None
        self._data = bytearray()

    def __call__(self, event: ul.Event) -> bytes | None:
        if isinstance(event, ul.AssociateRequest):
            self.requests.append(event)
            return self.engine.send(ul.negotiate(event, self.policy))
        if isinstance(event, ul.ReleaseRequest):
            return self.engine.send(ul.ReleaseReply())
        if isinstance(event, ul.Command) and isinstance(event.message, ul.NEventReportRQ):
            self._report, self._data = event.message, bytearray()
        elif isinstance(event, ul.DatasetFragment) and self._report is not None:
            self._data += event.data
            if event.last:
                self.reports.append(bytes(self._data))
                rq = self._report
                return self.engine.send_message(event.context_id, ul.NEventReportRSP(
                    message_id_being_responded_to=rq.message_id, status=0, affected_sop_class_uid=rq.affected_sop_class_uid,
                    affected_sop_instance_uid=rq.affected_sop_instance_uid, event_type_id=rq.event_type_id))
        return None


@pytest.mark.parametrize("grant_scp", [True, False])
def test_deliver_proposes_the_scp_role_and_needs_it(grant_scp: bool) -> None:
    """deliver() against the engine in a thread: the report goes only where the peer granted
    us the SCP role; a refusal is a failed attempt with the reason, not a success."""
    roles = {COMMITMENT: (False, True)} if grant_scp else {}
    taker = _ReportTaker(ul.AcceptorPolicy(contexts=ul.AcceptEverything(), roles=roles))
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(10)

        def serve_one() -> None:
            conn, _ = listener.accept()
            with conn:
                pump(conn, taker.engine, taker)

        thread = threading.Thread(target=serve_one, daemon=True)
        thread.start()
        config = NodeConfig(aet="NODE", peers=(PeerConfig(aet="MODALITY", host="127.0.0.1", port=listener.getsockname()[1]),),
                            commitment=CommitmentConfig(association_timeout=10))
        ok, error = deliver(_entry("MODALITY"), config)
        thread.join(timeout=10)
    assert not thread.is_alive()
    request = taker.requests[0]
    assert (request.called_ae, request.calling_ae) == ("MODALITY", "NODE")
    assert request.roles == (ul.RoleSelection(sop_class_uid=COMMITMENT, scu_role=False, scp_role=True),)
    if grant_scp:
        assert (ok, error) == (True, "")
        assert dcmread(io.BytesIO(taker.reports[0]), force=True).TransactionUID == "1.2.3.4"
    else:
        assert not ok and "SCP role" in error and not taker.reports
