"""deploy/cluster on one machine: two nodes on one PostgreSQL database behind haproxy.

A Storage Commitment transaction is started through node A (``stcomscu --node``: A's
tracker records it and the client waits on A); the SCP (a third node, ARCHIVE) calls the
cluster back through haproxy, where node A is disabled, so the N-EVENT-REPORT reaches node
B. It completes, and the client waiting on A learns of it. Then node A is restarted and the
same holds, and A reports the same outcome for the first transaction as B does.

Three nodes (issue 16): each in a mount namespace of its own (``unshare -m``), so that it
sees only its own store, as separate hosts would; a 300-instance study sent through haproxy
(round robin) with ``nodectl send -j 3`` lands on all three, and one N-ACTION through
haproxy commits all of it: the tracker that takes it asks the owning nodes' writers over
tcp:// (``[commitment] verify = "file"``). The slow case kills one node's whole process tree:
its instances are then reported failed with ``verify = "file"``, committed with ``"index"``,
and committed with ``"file"`` again once the node is back.

PostgreSQL and haproxy (Debian packages) are started by the test on free loopback ports
under temporary directories and stopped by their PIDs. Skipped, with the reason, only when
they are not installed (the three-node cases also when ``unshare -m`` does not work).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
import tomllib
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest
import tomli_w

from node import config as configuration
from node.messages import QueryTransaction
from tests.nodes import RunningNode
from tests.postgres import create_database, missing, running_postgres
from tests.support import NODECTL, free_port, make_ct, start_process, stop_process, stored_files, wait_for_port, wait_until

DEPLOY = Path(__file__).resolve().parent.parent / "deploy" / "cluster"
HAPROXY = shutil.which("haproxy") or ("/usr/sbin/haproxy" if Path("/usr/sbin/haproxy").exists() else None)


def _why_skip() -> str:
    if HAPROXY is None:
        return "haproxy is not installed (Debian package haproxy)"
    return missing()


pytestmark = pytest.mark.skipif(bool(_why_skip()), reason=_why_skip() or "runs")


@dataclass
class Nodes:
    """What every cluster of these tests has: its directory, ports, nodes and haproxy's socket."""

    base: Path
    ports: dict[str, int]
    nodes: dict[str, RunningNode]
    haproxy_socket: Path

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


@dataclass
class Cluster(Nodes):
    sample: Path
    database: str = ""

    def node_toml(self, name: str) -> Path:
        return configuration.short_run_dir(self.base / name / "run") / "node.toml"

    def start(self, name: str) -> RunningNode:
        node = RunningNode(["serve", "--config", str(self.base / name / "node.toml")], cwd=self.base / name, port=self.ports[name])
        self.nodes[name] = node
        return node

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
        state = Cluster(base, ports, {}, base / "admin.sock", base / "sample.dcm", database)
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


def completed_by(cluster: Cluster, uid: str, expected: str = "node-b") -> list[str]:
    """The nodes whose log says they completed ``uid``, once ``expected``'s line is there: a
    tracker logs the completion just after its commit, which may already have woken the client."""
    wait_until(lambda: f"txn={uid} completed" in cluster.nodes[expected].log(), 10, f"{expected}'s completion line")
    return [name for name in ("node-a", "node-b") if f"txn={uid} completed" in cluster.nodes[name].log()]


def completed_in_metrics(cluster: Cluster, name: str) -> float:
    """``nodectl_commitment_transactions{state="completed"}`` as ``name``'s metrics endpoint
    counts it (the shared database's, read at scrape time); 0 before any completed. The metrics
    actor starts after the listeners (the node's ready file), so its own ready file may come later."""
    ready = configuration.short_run_dir(cluster.base / name / "run") / "metrics.ready"
    wait_until(ready.exists, 30, f"{name}'s metrics endpoint")
    host, port = ready.read_text().split()
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10) as rsp:
        found = re.search(r'^nodectl_commitment_transactions\{state="completed"\} (\S+)$', rsp.read().decode(), re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def test_report_through_haproxy_to_node_b_completes_a_transaction_waited_for_on_node_a(cluster: Cluster, tmp_path: Path) -> None:
    started = time.monotonic()
    completed_before = completed_in_metrics(cluster, "node-b")  # the module's other tests may have run first
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
    woken = cluster.nodes["node-a"].log().count("woke waiters for transactions completed by another node")
    third, uid3 = commit_through_a(cluster, tmp_path / "third", wait=True)
    assert third.returncode == 0, third.stderr
    assert completed_by(cluster, uid3) == ["node-b"]
    assert cluster.query("node-a", uid3) == ("completed", 1, 1, 0)
    # A logs the wake-up after it woke the client: wait for the line rather than race it.
    wait_until(lambda: cluster.nodes["node-a"].log().count("woke waiters for transactions completed by another node") > woken, 10,
               "A's line about waking its waiters")
    print(f"whole scenario: {time.monotonic() - started:.1f} s")

    # Either node's metrics endpoint counts the cluster's transactions (shared database).
    assert completed_in_metrics(cluster, "node-b") == completed_before + 3
    assert completed_in_metrics(cluster, "node-a") == completed_before + 3


def test_a_tracker_that_loses_its_listen_connection_still_wakes_its_client_and_listens_again(cluster: Cluster, tmp_path: Path) -> None:
    """Issue 16: the trackers' LISTEN connections are cut by the server; a client waiting on A
    for a report that reaches B still completes (A polls the table until it listens again)."""
    import psycopg

    assert cluster.haproxy("disable server nodes/node-a").strip() == ""
    log_a = cluster.nodes["node-a"].log
    with psycopg.connect(cluster.database, autocommit=True) as admin:
        def listeners() -> int:
            return admin.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'nodectl-listen'").fetchone()[0]

        # A tracker connects to LISTEN once it has started: on a cluster this test is the first
        # to use, that may be after the nodes said they were ready.
        wait_until(lambda: listeners() == 2, 20, "both trackers listening")
        listening = log_a().count("listening for transactions ended on other nodes")
        cut = admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'nodectl-listen'").fetchall()
    assert len(cut) == 2  # one per node
    wait_until(lambda: "LISTEN connection lost" in log_a(), 10, "node A noticing its LISTEN connection is gone")
    result, uid = commit_through_a(cluster, tmp_path / "after-cut", wait=True)
    assert result.returncode == 0, result.stderr
    assert completed_by(cluster, uid) == ["node-b"]
    assert cluster.query("node-a", uid) == ("completed", 1, 1, 0)
    wait_until(lambda: log_a().count("listening for transactions ended on other nodes") > listening, 10, "node A listening again")


# --------------------------------------------------------------------------- three nodes, issue 16
#
# Three nodes behind haproxy (round robin) on one PostgreSQL, each in a mount namespace of its
# own: the store is mounted at the same path on every node (as on separate hosts with one
# configuration) and the directory holding the real stores is hidden under an empty tmpfs, so
# a node sees its own files only. A study is sent through haproxy with ``nodectl send -j 3``
# (its associations land on the three nodes), then one N-ACTION for all of it goes through
# haproxy to whichever node is next.

STUDY = 300
NODES3 = ("node-a", "node-b", "node-c")
UNSHARE = shutil.which("unshare")
# In the new namespace: the node's own store at the shared path, the real stores hidden, exec nodectl.
_PRIVATE_STORE = 'mount --bind "$1" "$2" && mount -t tmpfs -o size=1m tmpfs "$3" && shift 3 && exec "$@"'


def _namespaces_missing() -> str:
    if UNSHARE is None:
        return "unshare (util-linux) is not installed"
    probe = subprocess.run([UNSHARE, "-m", "--propagation", "private", "true"], capture_output=True, text=True, timeout=10)
    return "" if probe.returncode == 0 else f"unshare -m does not work here: {probe.stderr.strip()}"


@dataclass
class Cluster3(Nodes):
    study: Path

    def real_store(self, name: str) -> Path:
        return self.base / "stores" / name

    def toml(self, name: str) -> Path:
        return self.base / name / "node.toml"

    def start(self, name: str) -> RunningNode:
        wrapper = [UNSHARE, "-m", "--propagation", "private", "sh", "-c", _PRIVATE_STORE, "sh",
                   str(self.real_store(name)), str(self.base / "store"), str(self.base / "stores")]
        node = RunningNode(["serve", "--config", str(self.toml(name))], cwd=self.base / name, port=self.ports[name], wrapper=wrapper)
        self.nodes[name] = node
        return node

    def kill_tree(self, name: str) -> None:
        """SIGKILL every process of the node at once (a host that loses power)."""
        node = self.nodes[name]
        pids = node.tree_pids()
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        node.proc.wait(timeout=10)
        wait_until(lambda: not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in pids),
                   10, "every process of the killed node gone")

    def set_verify(self, mode: str) -> None:
        """Rewrite [commitment] verify on every running node and reload (SIGHUP); wait until
        each tracker says it re-read the file."""
        for name, node in self.nodes.items():
            if node.proc.poll() is not None:
                continue
            data = tomllib.loads(self.toml(name).read_text())
            data["commitment"]["verify"] = mode
            self.toml(name).write_text(tomli_w.dumps(data))
            before = _tracker_reloads(node)
            os.kill(node.proc.pid, signal.SIGHUP)
            wait_until(lambda: _tracker_reloads(node) > before, 20, f"{name}'s tracker reloaded")

    def server_up(self, name: str) -> bool:
        """haproxy's health checks see the node (``show stat``: status column)."""
        for line in self.haproxy("show stat").splitlines():
            fields = line.split(",")
            if len(fields) > 17 and fields[0] == "nodes" and fields[1] == name:
                return fields[17] == "UP"
        return False

    def held_by(self) -> dict[str, int]:
        """Instances per node, as the real stores hold them."""
        return {name: len(stored_files(self.real_store(name))) for name in NODES3}


def _tracker_reloads(node: RunningNode) -> int:
    return sum(1 for line in node.log().splitlines() if "tracker[" in line and "configuration reloaded" in line)


def node3_config(name: str, base: Path, ports: dict[str, int], database: str) -> dict[str, Any]:
    """deploy/cluster/node-a.toml for a third of the cluster: same store path on every node."""
    data = node_config("node-a", base / name, ports[name], database)  # the nodes differ only in what is set here
    data["node"]["directory"] = str(base / "store")
    data["cluster"] = {"node_id": name, "endpoint": f"tcp://127.0.0.1:{ports[name + '-bus']}"}
    data["commitment"]["verify"] = "file"
    data["commitment"]["verify_timeout"] = 2.0
    return data


def haproxy3_config(base: Path, ports: dict[str, int]) -> str:
    """deploy/cluster/haproxy.cfg with three servers and round robin, so every node stores."""
    text = haproxy_config(base, ports).replace("balance leastconn", "balance roundrobin")
    return text.replace(f"server node-b 127.0.0.1:{ports['node-b']}",
                        f"server node-b 127.0.0.1:{ports['node-b']}\n    server node-c 127.0.0.1:{ports['node-c']}")


@pytest.fixture(scope="module")
def cluster3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster3]:
    reason = _namespaces_missing()
    if reason:
        pytest.skip(reason)
    base = tmp_path_factory.mktemp("cluster3")
    ports = {name: free_port() for name in (*NODES3, *(f"{n}-bus" for n in NODES3), "haproxy")}
    (base / "store").mkdir()
    study = base / "study"
    study_uid = "1.2.826.0.1.3680043.2.1125.16.1"
    for n in range(STUDY):
        make_ct(study / f"{n:03d}.dcm", StudyInstanceUID=study_uid, InstanceNumber=n + 1)
    with running_postgres() as pg:
        database = create_database(pg.url, "nodectl")
        for name in NODES3:
            (base / name).mkdir()
            (base / "stores" / name).mkdir(parents=True)
            (base / name / "node.toml").write_text(tomli_w.dumps(node3_config(name, base, ports, database)))
        (base / "haproxy.cfg").write_text(haproxy3_config(base, ports))
        haproxy = start_process([HAPROXY, "-db", "-f", str(base / "haproxy.cfg")], cwd=base, log=base / "haproxy.log")
        state = Cluster3(base, ports, {}, base / "admin.sock", study)
        try:
            for name in NODES3:
                state.start(name)
            for node in list(state.nodes.values()):
                node.wait_ready(timeout=60)
            wait_for_port(ports["haproxy"])
            wait_until(lambda: state.haproxy_socket.exists() and all(state.server_up(n) for n in NODES3), 20, "haproxy sees three nodes")
            yield state
        finally:
            for node in state.nodes.values():
                if node.proc.poll() is None:
                    node.stop()
            stop_process(haproxy)


def commit_study(cluster: Cluster3, out: Path) -> tuple[int, int]:
    """One N-ACTION for the whole study through haproxy, the report on the same association:
    (committed, failed) as the report file counts them."""
    out.mkdir()
    files = sorted(str(p) for p in cluster.study.glob("*.dcm"))
    result = subprocess.run([*NODECTL, "commit", "-aet", "MODALITY", "-aec", "CLUSTER", "-od", str(out), "+crf",
                             "+tuf", str(out / "tx.txt"), "-te", "60", "127.0.0.1", str(cluster.ports["haproxy"]), *files],
                            capture_output=True, text=True, timeout=120, cwd=out)
    assert result.returncode == 0, result.stdout + result.stderr
    (report,) = out.glob("*.report.txt")
    text = report.read_text()
    committed = int(re.search(r"Committed instances: (\d+)", text).group(1))  # type: ignore[union-attr]
    failed = int(re.search(r"Failed instances: (\d+)", text).group(1))  # type: ignore[union-attr]
    return committed, failed


@pytest.fixture(scope="module")
def stored_study(cluster3: Cluster3) -> dict[str, int]:
    """The study sent once through haproxy (round robin, three jobs); the instances each node's
    store holds. A fixture, not the first test's side effect: ``-m slow`` runs the second test
    alone. The nodes answer from their journals and write the files a moment later, so the
    count waits for all of them."""
    started = time.monotonic()
    sent = subprocess.run([*NODECTL, "send", "-j", "3", "-aec", "CLUSTER", "127.0.0.1", str(cluster3.ports["haproxy"]), str(cluster3.study)],
                          capture_output=True, text=True, timeout=300)
    assert sent.returncode == 0, sent.stdout + sent.stderr
    wait_until(lambda: sum(cluster3.held_by().values()) == STUDY, 30, "every instance of the study in a node's store")
    held = cluster3.held_by()
    print(f"three nodes: {STUDY} instances sent and stored in {time.monotonic() - started:.1f} s ({held})")
    return held


def test_a_study_stored_across_three_nodes_is_committed_by_one_n_action_through_haproxy(
        cluster3: Cluster3, stored_study: dict[str, int], tmp_path: Path) -> None:
    assert all(stored_study.values()), stored_study  # every node stored part of the study
    started = time.monotonic()
    assert commit_study(cluster3, tmp_path / "commit") == (STUDY, 0)
    print(f"committed in {time.monotonic() - started:.1f} s")


@pytest.mark.slow  # ~20 s more: three N-ACTIONs for 300 instances, two reloads, a node restarted
def test_a_killed_node_fails_its_instances_with_verify_file_and_they_commit_once_it_is_back(
        cluster3: Cluster3, stored_study: dict[str, int], tmp_path: Path) -> None:
    held = cluster3.held_by()
    assert held == stored_study
    victim = "node-c"
    cluster3.kill_tree(victim)
    wait_until(lambda: not cluster3.server_up(victim), 20, "haproxy marks the killed node down")

    # verify = "file": the owner does not answer, so its instances fail (0x0110); never a success.
    assert commit_study(cluster3, tmp_path / "file-down") == (STUDY - held[victim], held[victim])
    # verify = "index": the row is proof, the node's absence does not matter.
    cluster3.set_verify("index")
    assert commit_study(cluster3, tmp_path / "index-down") == (STUDY, 0)
    cluster3.set_verify("file")
    # The node is back: the same request commits everything.
    cluster3.start(victim).wait_ready(timeout=60)
    wait_until(lambda: cluster3.server_up(victim), 20, "haproxy sees the node again")
    assert commit_study(cluster3, tmp_path / "file-back") == (STUDY, 0)
