"""``send_multiplex``: several workers' associations driven by one thread, against real peers
on 127.0.0.1 (a silent peer on the engine).

What only the multiplexer does is tested here: the DIMSE and ACSE timeouts without a
blocking read; and which jobs it takes. One lane lost and re-associating while the other
carries on is ``test_send.test_aborted_association_is_retried[2]``; a worker's next
association registered in place of its closed one
``test_send.test_more_than_128_contexts_open_further_associations[2]``.
"""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest

from node import ul
from node.tools.send_association import PeerOptions
from node.tools.send_multiplex import MAX_DATASET, can_multiplex, run_lanes
from node.tools.send_plan import FileEntry, plan, scan, tasks_for_worker
from node.tools.send_results import FileResult
from node.tools.send_worker import run_tasks
from node.tools.tls_options import ClientTls
from tests.tools.storepeers import dcmtk_available, dcmtk_storescp
from tests.tools.test_send import make_files


def _entry(size: int) -> FileEntry:
    return FileEntry(index=0, path="x.dcm", sop_class_uid="1.2", sop_instance_uid="1.2.3",
                     transfer_syntax_uid="1.2.840.10008.1.2.1", offset=132, size=size)


def test_small_files_over_plain_tcp_without_pacing_are_multiplexed_the_rest_are_not() -> None:
    plain, small = PeerOptions(host="127.0.0.1", port=104), [_entry(5120), _entry(MAX_DATASET)]
    assert can_multiplex(plain, small)
    assert not can_multiplex(plain, [*small, _entry(MAX_DATASET + 1)])
    assert not can_multiplex(PeerOptions(host="127.0.0.1", port=104, tls=ClientTls(ca="ca.pem")), small)
    assert not can_multiplex(PeerOptions(host="127.0.0.1", port=104, files_per_s=10.0), small)
    assert not can_multiplex(PeerOptions(host="127.0.0.1", port=104, bytes_per_s=1e6), small)


def _silent_peer(listener: socket.socket, stored: threading.Semaphore) -> None:
    """Accept one association, take C-STOREs, never answer; end when the sender goes."""
    conn, _ = listener.accept()
    with conn:
        conn.settimeout(30)
        engine = ul.Association(ul.Role.ACCEPTOR)
        while engine.state is not ul.State.STA1:
            engine.receive_data(conn.recv(65536))
            for event in engine.events():
                if isinstance(event, ul.AssociateRequest):
                    conn.sendall(engine.send(ul.negotiate(event, ul.AcceptorPolicy(contexts=ul.AcceptEverything()))))
                elif isinstance(event, ul.DatasetFragment) and event.last:
                    stored.release()


@pytest.mark.parametrize("workers", [1, 2])
def test_a_silent_peer_is_lost_at_the_dimse_timeout(tmp_path: Path, workers: int) -> None:
    """Workers whose sockets never become readable: each association is given up at the DIMSE
    timeout, its files failed as lost. Two workers: the multiplexer's deadlines (no read
    blocks); one: drive()'s blocking read, the timeout kept by the kernel (SO_RCVTIMEO)."""
    make_files(tmp_path / "in", 2 * workers)
    found = scan(sorted(str(p) for p in (tmp_path / "in").iterdir()))
    tasks = plan(found.entries, workers)
    listener = socket.create_server(("127.0.0.1", 0))
    stored = threading.Semaphore(0)
    peers = [threading.Thread(target=_silent_peer, args=(listener, stored), daemon=True) for _ in range(workers)]
    for peer in peers:
        peer.start()
    results: list[FileResult] = []
    options = PeerOptions(host="127.0.0.1", port=listener.getsockname()[1], dimse_timeout=0.5, acse_timeout=0.4)
    started = time.monotonic()
    try:
        if workers == 1:
            finished = [run_tasks(0, tasks, options, results.append)]
        else:
            finished = run_lanes({w: tasks_for_worker(tasks, w) for w in range(workers)}, options, results.append)
    finally:
        listener.close()
        for peer in peers:
            peer.join(timeout=30)
    assert time.monotonic() - started < 10
    assert sorted(f.worker for f in finished) == list(range(workers)) and all(f.associations == 1 for f in finished)
    assert sorted(r.index for r in results) == list(range(2 * workers))
    assert all(not r.sent and r.network for r in results)
    # the file in flight on each association; then the next association (the listener's backlog
    # takes it, nobody answers) refused at the ACSE timeout, with the worker's other file
    lost = [r for r in results if "association lost while sending (no answer within 0.5 s)" in r.reason]
    refused = [r for r in results if "association request failed (no answer within 0.4 s)" in r.reason]
    assert len(lost) == workers and len(refused) == workers, results


class _Slices:
    """Background work of a fixed number of slices (``send_multiplex.Idle``)."""

    def __init__(self, count: int) -> None:
        self.left = count
        self.steps = 0

    def waiting(self) -> bool:
        return self.left > 0

    def step(self) -> None:
        self.left -= 1
        self.steps += 1


@pytest.mark.skipif(not dcmtk_available(), reason="DCMTK storescp not installed")
def test_idle_work_runs_in_slices_while_the_peers_work_and_every_file_is_answered(tmp_path: Path) -> None:
    """A job's journal writes its rows while the associations wait for DCMTK storescp: the
    slices run (the peer takes time to answer), and every file is still sent and answered."""
    sent = make_files(tmp_path / "in", 40)
    found = scan(sorted(str(p) for p in (tmp_path / "in").iterdir()))
    tasks = plan(found.entries, 2)
    results: list[FileResult] = []
    idle = _Slices(10_000)
    with dcmtk_storescp(tmp_path / "scp") as scp:
        options = PeerOptions(host="127.0.0.1", port=scp.port, called_aet="STORESCP")
        finished = run_lanes({w: tasks_for_worker(tasks, w) for w in range(2)}, options, results.append, idle)
        stored = {path.name for path in scp.out.iterdir()}
    assert sorted(f.worker for f in finished) == [0, 1]
    assert sorted(r.index for r in results) == list(range(len(sent))) and all(r.sent for r in results)
    assert len(stored) == len(sent)
    assert idle.steps > 0, "no slice ran while the associations waited"
