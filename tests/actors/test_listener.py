"""The listener's bookkeeping of the node-wide association cap (actors.listener.Listener).

No sockets: the admissions a worker asks for and the heartbeats it sends are fed in as the
listener's loop would; the end-to-end caps are in test_access_control.py and test_echoscp.py.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

from actors import listener as listener_mod
from actors.listener import Listener, Waiting
from node.config import ListenerConfig, NetworkConfig, NodeConfig
from node.messages import AdmitAssociation, AssociationEnded, WorkerReady


def bookkeeping(tmp_path: Path, max_associations: int = 3) -> Listener:
    lc = ListenerConfig(port=11112)
    config = NodeConfig(directory=tmp_path, listeners=(lc,), network=NetworkConfig(max_associations=max_associations))
    state = Listener(config, lc)
    state.on_message(WorkerReady(worker="worker-0", capacity=8, handoff=str(tmp_path / "h0"), pid=100, received=0, associations=0))
    return state


def admit(state: Listener, assoc_id: str, worker: str = "worker-0") -> bool:
    return state.admit(AdmitAssociation(worker=worker, assoc_id=assoc_id, calling="SCU", called="NODE")).admitted


def test_the_cap_is_exact_before_any_heartbeat_reports_the_admissions(tmp_path: Path) -> None:
    state = bookkeeping(tmp_path)
    assert [admit(state, f"a{i}") for i in range(4)] == [True, True, True, False]
    state.on_message(AssociationEnded(worker="worker-0", assoc_id="a1"))
    assert admit(state, "a4")


def test_a_silent_worker_is_handed_nothing_but_its_associations_still_count(tmp_path: Path, monkeypatch) -> None:
    state = bookkeeping(tmp_path)
    assert all(admit(state, f"a{i}") for i in range(3))
    state.on_message(WorkerReady(worker="worker-1", capacity=8, handoff=str(tmp_path / "h1"), pid=101, received=0, associations=0))
    state.workers["worker-0"].last_seen = time.monotonic() - listener_mod.WORKER_EXPIRY_S - 1
    state.expire()
    assert state.workers["worker-0"].capacity == 0
    assert not admit(state, "b0", worker="worker-1")  # worker-0's three still fill the node
    # It speaks again (same process): it takes work again, its associations never stopped counting.
    state.on_message(WorkerReady(worker="worker-0", capacity=5, handoff=str(tmp_path / "h0"), pid=100, received=0, associations=3))
    assert state.workers["worker-0"].capacity == 5
    assert not admit(state, "b1", worker="worker-1")


def test_a_restarted_worker_frees_what_its_dead_process_held(tmp_path: Path) -> None:
    state = bookkeeping(tmp_path)
    assert all(admit(state, f"a{i}") for i in range(3))
    state.on_message(WorkerReady(worker="worker-0", capacity=8, handoff=str(tmp_path / "h0"), pid=200, received=0, associations=0))
    assert admit(state, "a3")


def test_an_admission_for_a_worker_the_listener_does_not_know_is_refused_as_transient(tmp_path: Path) -> None:
    state = bookkeeping(tmp_path)
    answer = state.admit(AdmitAssociation(worker="worker-9", assoc_id="x", calling="SCU", called="NODE"))
    assert (answer.admitted, answer.result, answer.source, answer.reason) == (False, 2, 3, 2)


def test_connections_arriving_together_are_spread_evenly_over_the_workers(tmp_path: Path) -> None:
    """Four connections handed off while one worker reports the first it received: a silent
    connection leaves a worker's capacity as it was, so its report made it look empty again,
    and three of the four went to it (one benchmark sample split four associations 3 + 1)."""
    state = bookkeeping(tmp_path)
    state.on_message(WorkerReady(worker="worker-1", capacity=8, handoff=str(tmp_path / "h1"), pid=101, received=0, associations=0))
    servers = {}
    for name, path in (("worker-0", tmp_path / "h0"), ("worker-1", tmp_path / "h1")):
        servers[name] = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        servers[name].bind(str(path))
        servers[name].listen(1)
    peers = [socket.socketpair() for _ in range(4)]
    try:
        for n, (ours, _theirs) in enumerate(peers):
            assert state.hand_off(Waiting(conn=ours, peer=("127.0.0.1", 40000 + n), assoc_id=f"a{n}", since=time.monotonic()))
            if n == 1:  # worker-0 took its connection; the peer has not spoken yet
                state.on_message(WorkerReady(worker="worker-0", capacity=8, handoff=str(tmp_path / "h0"), pid=100, received=1, associations=0))
        assert sorted(len(slot.assocs) for slot in state.workers.values()) == [2, 2]
    finally:
        for ours, theirs in peers:
            ours.close()
            theirs.close()
        for slot in state.workers.values():
            slot.close()
        for server in servers.values():
            server.close()
