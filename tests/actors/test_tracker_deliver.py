"""The tracker's outbox on the engine: reports to ``[[peers]]`` on a new association, in TLS
for ``tls = true`` entries (issue 16 item 3), received by our own stcomscu listener in TLS
mode (``+P`` with ``+tls``, client certificates required). A peer entry whose CA does not
trust the listener's certificate never gets the report: the attempt fails with the TLS
reason in the node's log and is retried, never counted as delivered."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from pydicom import dcmread

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
