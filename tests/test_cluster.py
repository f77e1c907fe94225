"""deploy/cluster on one machine: two nodes on one PostgreSQL database behind haproxy.

A Storage Commitment transaction is started through node A (``stcomscu --node``: A's
tracker records it and the client waits on A); the SCP (a third node, ARCHIVE) calls the
cluster back through haproxy, where node A is disabled, so the N-EVENT-REPORT reaches node
B. It completes, and the client waiting on A learns of it. Then node A is restarted and the
same holds, and A reports the same outcome for the first transaction as B does.

PostgreSQL and haproxy (Debian packages) are started by the test on free loopback ports
under temporary directories and stopped by their PIDs. Skipped, with the reason, only when
they are not installed.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import time
import tomllib
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from node import config as configuration
from node.messages import QueryTransaction
from tests.nodes import RunningNode
from tests.postgres import create_database, missing, running_postgres
from tests.support import NODECTL, free_port, make_ct, start_process, stop_process, wait_for_port, wait_until

DEPLOY = Path(__file__).resolve().parent.parent / "deploy" / "cluster"
HAPROXY = shutil.which("haproxy") or ("/usr/sbin/haproxy" if Path("/usr/sbin/haproxy").exists() else None)


def _why_skip() -> str:
    if HAPROXY is None:
        return "haproxy is not installed (Debian package haproxy)"
    return missing()


pytestmark = pytest.mark.skipif(bool(_why_skip()), reason=_why_skip() or "runs")


@dataclass
class Cluster:
    base: Path
    ports: dict[str, int]
    nodes: dict[str, RunningNode]
    haproxy_socket: Path
    sample: Path

    def node_toml(self, name: str) -> Path:
        return configuration.short_run_dir(self.base / name / "run") / "node.toml"

    def start(self, name: str) -> RunningNode:
        node = RunningNode(["serve", "--config", str(self.base / name / "node.toml")], cwd=self.base / name, port=self.ports[name])
        self.nodes[name] = node
        return node

    def haproxy(self, command: str) -> str:
        """One command on haproxy's runtime API (the admin socket)."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(5)
            sock.connect(str(self.haproxy_socket))
            sock.sendall(command.encode() + b"\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def query(self, name: str, uid: str) -> tuple[Any, ...]:
        """A transaction's outcome as one node's tracker tells it."""
        import zmq

        from actors import bus

        cfg = configuration.load_file(self.node_toml(name))
        sock = bus.dealer(zmq.Context.instance(), cfg.endpoint("tracker"))
        try:
            state = bus.request(sock, QueryTransaction(transaction_uid=uid), sender="test", timeout=10).message
        finally:
            sock.close(0)
        return state.state, state.event_type, state.committed, state.failed


def node_config(name: str, base: Path, port: int, database: str) -> dict[str, Any]:
    """deploy/cluster/node-<a|b>.toml with this machine's paths, ports and database."""
    data = tomllib.loads((DEPLOY / f"node-{name[-1]}.toml").read_text())
    data["node"].update(directory=str(base / "store"), database=database, run_dir=str(base / "run"), workers=1)
    data["listeners"][0].update(port=port, host="127.0.0.1")
    data["peers"] = []
    data["commitment"]["association_timeout"] = 5.0
    data["metrics"].update(host="127.0.0.1", port=free_port())
    return data


def haproxy_config(base: Path, ports: dict[str, int]) -> str:
    """deploy/cluster/haproxy.cfg pointed at this machine's ports, checks made fast."""
    text = (DEPLOY / "haproxy.cfg").read_text()
    text = text.replace("/run/haproxy/admin.sock", str(base / "admin.sock"))
    text = re.sub(r"bind :\d+", f"bind 127.0.0.1:{ports['haproxy']}", text)
    text = re.sub(r"server node-a \S+", f"server node-a 127.0.0.1:{ports['node-a']}", text)
    text = re.sub(r"server node-b \S+", f"server node-b 127.0.0.1:{ports['node-b']}", text)
    return text.replace("inter 2s fall 2 rise 2", "inter 200ms fall 1 rise 1")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    base = tmp_path_factory.mktemp("cluster")
    ports = {name: free_port() for name in ("node-a", "node-b", "archive", "haproxy")}
    with running_postgres() as pg:
        database = create_database(pg.url, "nodectl")
        for name in ("node-a", "node-b"):
            (base / name).mkdir()
            (base / name / "node.toml").write_text(tomli_w.dumps(node_config(name, base / name, ports[name], database)))
        (base / "archive").mkdir()
        (base / "archive" / "node.toml").write_text(f"""
[node]
aet = "ARCHIVE"
workers = 1
run_dir = "run"
[[listeners]]
port = {ports['archive']}
host = "127.0.0.1"
aet = "ARCHIVE"
[[peers]]
aet = "CLUSTER"
host = "127.0.0.1"
port = {ports['haproxy']}
[commitment]
same_association = false
retry_base = 0.5
retry_max = 1.0
association_timeout = 5.0
""")
        (base / "haproxy.cfg").write_text(haproxy_config(base, ports))
        check = subprocess.run([HAPROXY, "-c", "-f", str(base / "haproxy.cfg")], capture_output=True, text=True, timeout=30)
        assert check.returncode == 0, check.stdout + check.stderr
        haproxy = start_process([HAPROXY, "-db", "-f", str(base / "haproxy.cfg")], cwd=base, log=base / "haproxy.log")
        state = Cluster(base, ports, {}, base / "admin.sock", base / "sample.dcm")
        try:
            for name in ("node-a", "node-b", "archive"):
                state.start(name)
            for node in list(state.nodes.values()):
                node.wait_ready(timeout=60)
            wait_for_port(ports["haproxy"])
            wait_until(state.haproxy_socket.exists, 10, "haproxy's admin socket")
            make_ct(state.sample)
            subprocess.run([*NODECTL, "storescu", "127.0.0.1", str(ports["archive"]), str(state.sample), "-aec", "ARCHIVE"],
                           capture_output=True, timeout=60, check=True)
            yield state
        finally:
            for node in state.nodes.values():
                node.stop()
            stop_process(haproxy)


def commit_through_a(cluster: Cluster, out: Path, *, wait: bool) -> tuple[subprocess.CompletedProcess[str], str]:
    """stcomscu as the cluster's client: A's tracker records (and, with ``wait``, awaits) it."""
    out.mkdir(exist_ok=True)
    args = ["--node", str(cluster.node_toml("node-a")), "-aet", "CLUSTER", "-aec", "ARCHIVE", "-od", str(out),
            "+tuf", str(out / "tx.txt"), *(["-te", "1"] if wait else ["-nwe"]),
            "127.0.0.1", str(cluster.ports["archive"]), str(cluster.sample)]
    result = subprocess.run([*NODECTL, "stcomscu", *args], capture_output=True, text=True, timeout=45, cwd=out)
    uid = (out / "tx.txt").read_text().strip() if (out / "tx.txt").exists() else ""
    return result, uid


def completed_by(cluster: Cluster, uid: str) -> list[str]:
    return [name for name in ("node-a", "node-b") if f"txn={uid} completed" in cluster.nodes[name].log()]


def test_report_through_haproxy_to_node_b_completes_a_transaction_waited_for_on_node_a(cluster: Cluster, tmp_path: Path) -> None:
    started = time.monotonic()
    assert cluster.haproxy("disable server nodes/node-a").strip() == ""
    first, uid = commit_through_a(cluster, tmp_path / "first", wait=True)
    assert first.returncode == 0, first.stderr + cluster.nodes["node-b"].log()[-3000:]
    assert (tmp_path / "first" / f"{uid}.rsp.OK.dcm").exists()
    assert completed_by(cluster, uid) == ["node-b"]
    outcome = cluster.query("node-b", uid)
    assert outcome == ("completed", 1, 1, 0)
    assert cluster.query("node-a", uid) == outcome
    print(f"transaction through A, report at B: {time.monotonic() - started:.1f} s")

    # Node A restarted in between: a transaction it recorded completes at B while A is down.
    second, uid2 = commit_through_a(cluster, tmp_path / "second", wait=False)
    assert second.returncode == 0, second.stderr
    assert cluster.nodes["node-a"].stop() == 0
    restarted = cluster.start("node-a").wait_ready(timeout=60)
    assert restarted.proc.pid
    wait_until(lambda: cluster.query("node-b", uid2)[0] == "completed", 20, "the report of the second transaction at B")
    assert cluster.query("node-a", uid2) == cluster.query("node-b", uid2) == ("completed", 1, 1, 0)
    assert cluster.query("node-a", uid) == outcome  # the first one, as A tells it after its restart

    # ... and a client waiting on the restarted A learns of B's completion like the first time.
    third, uid3 = commit_through_a(cluster, tmp_path / "third", wait=True)
    assert third.returncode == 0, third.stderr
    assert completed_by(cluster, uid3) == ["node-b"]
    assert cluster.query("node-a", uid3) == ("completed", 1, 1, 0)
    assert "woke waiters for transactions completed by another node" in cluster.nodes["node-a"].log()
    print(f"whole scenario: {time.monotonic() - started:.1f} s")

    # Either node's metrics endpoint counts the cluster's transactions (shared database).
    host, port = (configuration.short_run_dir(cluster.base / "node-b" / "run") / "metrics.ready").read_text().split()
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10) as rsp:
        assert 'nodectl_commitment_transactions{state="completed"} 3.0' in rsp.read().decode()
