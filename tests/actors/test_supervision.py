"""The node as supervised processes: ``nodectl serve`` starts, survives killed actors, stops clean."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from tests.nodes import RunningNode, serve
from tests.support import dataset_bytes, have, make_ct, wait_until

pytestmark = pytest.mark.skipif(not have("/usr/bin/storescu"), reason="DCMTK (Debian package dcmtk) is not installed")

CT = "1.2.840.10008.5.1.4.1.1.2"
VERIFICATION = "1.2.840.10008.1.1"


def associate(port: int, aec: str = "NODE"):  # noqa: ANN201
    from pynetdicom import AE

    ae = AE(ae_title="SUPTEST")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 15
    ae.add_requested_context(CT, ExplicitVRLittleEndian)
    ae.add_requested_context(VERIFICATION, ImplicitVRLittleEndian)
    return ae.associate("127.0.0.1", port, ae_title=aec)


def echo_ok(port: int) -> bool:
    result = subprocess.run(["/usr/bin/echoscu", "-aec", "NODE", "127.0.0.1", str(port)], capture_output=True, timeout=30)
    return result.returncode == 0


def store_ok(port: int, path: Path) -> bool:
    """DCMTK storescu exits 0 on failure statuses too: read the status it logged."""
    result = subprocess.run(["/usr/bin/storescu", "-v", "-aec", "NODE", "127.0.0.1", str(port), str(path)], capture_output=True, text=True, timeout=60)
    return result.returncode == 0 and "Received Store Response (Success)" in result.stdout + result.stderr


def actor_pid(node: RunningNode, pattern: str) -> int:
    [proc] = node.children(pattern)
    return proc.pid


def restarted(node: RunningNode, pattern: str, old_pid: int) -> bool:
    """One process matches ``pattern`` and it is not ``old_pid`` (one snapshot, no race)."""
    pids = [proc.pid for proc in node.children(pattern)]
    return len(pids) == 1 and pids[0] != old_pid


@pytest.fixture
def node(tmp_path: Path) -> Iterator[RunningNode]:
    running = serve(tmp_path, workers=2)
    try:
        yield running
    finally:
        running.stop()


def test_serve_stores_and_indexes_with_embedded_defaults(node: RunningNode, tmp_path: Path) -> None:
    sent = tmp_path / "sent"
    files = [sent / f"{i}.dcm" for i in range(5)]
    for path in files:
        make_ct(path)
    result = subprocess.run(["/usr/bin/storescu", "-aec", "NODE", "127.0.0.1", str(node.port), *map(str, files)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    node.materialised()
    import sqlite3

    with sqlite3.connect(tmp_path / "node.sqlite") as db:
        rows = dict(db.execute("SELECT sop_instance_uid, path FROM instances").fetchall())
    for path in files:
        uid = dcmread(path).SOPInstanceUID
        assert Path(rows[uid]) == tmp_path / "store" / uid
        assert dataset_bytes(Path(rows[uid])) == dataset_bytes(path)
    assert len(rows) == 5


def test_serve_stops_cleanly_with_nothing_left_running(tmp_path: Path) -> None:
    running = serve(tmp_path, workers=2)
    pids = running.tree_pids()
    assert len(pids) >= 5  # nodectl, supervisord, writer, 2 workers, listener
    assert running.stop() == 0
    assert running.leftover == []
    assert not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE for pid in pids)


def test_worker_killed_mid_association_is_restarted_while_the_listener_keeps_accepting(node: RunningNode, tmp_path: Path) -> None:
    # The listener accepts as soon as one worker joined; "the other worker" must have joined
    # too before one is killed (a C-STORE now answered from the journal makes the test faster
    # than the second worker's start-up).
    wait_until(lambda: len(set(re.findall(r"(worker-\d+) joined", node.log()))) >= 2, 30, "both workers joined the listener")
    listener_pid = actor_pid(node, "run listener")
    assoc = associate(node.port)
    assert assoc.is_established
    first = tmp_path / "first.dcm"
    make_ct(first)
    assert assoc.send_c_store(first).Status == 0
    # Which worker holds it: the listener logged "assoc=<id> ... -> worker-N".
    wait_until(lambda: "-> worker-" in node.log(), 5)
    worker_name = re.findall(r"-> (worker-\d+)", node.log())[-1]
    victim = actor_pid(node, f"--worker-id {worker_name.split('-')[1]}")
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: not assoc.is_established, 15, "association to end with its worker")
    # The listener stays up and keeps serving through the other worker meanwhile.
    for i in range(3):
        assert echo_ok(node.port)
    after = tmp_path / "after.dcm"
    make_ct(after)
    assert store_ok(node.port, after)
    wait_until(lambda: restarted(node, f"--worker-id {worker_name.split('-')[1]}", victim), 15, "supervisor to restart the worker")
    assert actor_pid(node, "run listener") == listener_pid
    node.materialised()
    assert (tmp_path / "store" / dcmread(after).SOPInstanceUID).is_file()


def test_writer_and_listener_killed_are_restarted_and_storing_resumes(node: RunningNode, tmp_path: Path) -> None:
    writer = actor_pid(node, "run writer")
    os.kill(writer, signal.SIGKILL)
    wait_until(lambda: restarted(node, "run writer", writer), 15, "writer restart")
    listener = actor_pid(node, "run listener")
    os.kill(listener, signal.SIGKILL)
    wait_until(lambda: restarted(node, "run listener", listener), 15, "listener restart")
    path = tmp_path / "resume.dcm"
    make_ct(path)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not echo_ok(node.port):
        time.sleep(0.2)
    result = subprocess.run(["/usr/bin/storescu", "-aec", "NODE", "127.0.0.1", str(node.port), str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    node.materialised()
    stored = tmp_path / "store" / dcmread(path).SOPInstanceUID
    assert stored.is_file() and dataset_bytes(stored) == dataset_bytes(path)


def test_store_fails_cleanly_while_the_writer_is_down(tmp_path: Path) -> None:
    """Where the writer decides (``duplicates = reject``: it alone sees every instance held),
    no writer, no success: the worker answers a failure status after its deadline."""
    config = tmp_path / "node.toml"
    config.write_text('[network]\nwrite_timeout = 2.0\n[store]\nduplicates = "reject"\n')
    running = serve(tmp_path, "--config", str(config), workers=1)
    try:
        writer = actor_pid(running, "run writer")
        os.kill(writer, signal.SIGSTOP)  # alive but not answering, so supervisor does not restart it
        try:
            assoc = associate(running.port)
            path = tmp_path / "x.dcm"
            make_ct(path)
            status = assoc.send_c_store(path)
            assoc.release()
            assert status.Status == 0xA700
        finally:
            os.kill(writer, signal.SIGCONT)
        # The writer wakes up to a request whose requester gave up: it must not store it.
        assert echo_ok(running.port)
        time.sleep(1.0)
        assert not (tmp_path / "store" / dcmread(path).SOPInstanceUID).exists()
    finally:
        running.stop()


def test_a_worker_journal_acknowledges_while_the_writer_is_stopped(tmp_path: Path) -> None:
    """Under ``overwrite`` (the default) the worker's own journal makes an instance durable:
    with the writer stopped (SIGSTOP) the C-STORE still succeeds, and once the writer
    continues the instance reaches its final path and the index."""
    running = serve(tmp_path, workers=1)
    try:
        writer = actor_pid(running, "run writer")
        path = tmp_path / "x.dcm"
        make_ct(path)
        wait_until(lambda: "journal-worker-0 adopted" in running.log(), 30, "the writer adopted the worker's journal")
        os.kill(writer, signal.SIGSTOP)
        try:
            assoc = associate(running.port)
            status = assoc.send_c_store(path)
            assoc.release()
            assert status.Status == 0x0000
            time.sleep(0.5)
            assert not (tmp_path / "store" / dcmread(path).SOPInstanceUID).exists(), "materialised with the writer stopped"
        finally:
            os.kill(writer, signal.SIGCONT)
        running.materialised()
        stored = tmp_path / "store" / dcmread(path).SOPInstanceUID
        assert stored.is_file() and dataset_bytes(stored) == dataset_bytes(path)
    finally:
        running.stop()


def test_many_associations_leave_no_descriptors_behind(tmp_path: Path) -> None:
    """Each association's sockets (TCP, its DEALER to the writer) are closed when it ends."""
    running = serve(tmp_path, workers=1)
    try:
        path = tmp_path / "one.dcm"
        make_ct(path)
        [worker] = running.children("run worker")

        def one_association() -> None:
            assoc = associate(running.port)
            assert assoc.is_established
            assert assoc.send_c_store(path).Status == 0
            assoc.release()

        one_association()
        wait_until(lambda: running.log().count(" ended") >= 1, 10, "the first association to be reaped")
        baseline = worker.num_fds()
        for _ in range(30):
            one_association()
        wait_until(lambda: worker.num_fds() <= baseline + 4, 10, f"descriptors back near {baseline}")
    finally:
        running.stop()


def test_writer_and_tracker_on_tcp_endpoints(tmp_path: Path) -> None:
    """transport = "tcp": the writer and tracker bind tcp:// (another host could reach them)."""
    from tests.support import free_port

    writer, tracker, events = free_port(), free_port(), free_port()
    config = tmp_path / "node.toml"
    config.write_text(
        '[node]\ntransport = "tcp"\n[bus]\n'
        f'writer = "tcp://127.0.0.1:{writer}"\ntracker = "tcp://127.0.0.1:{tracker}"\nevents = "tcp://127.0.0.1:{events}"\n'
    )
    running = serve(tmp_path, "--config", str(config), workers=1)
    try:
        import psutil as ps

        def writer_listens_on_tcp() -> bool:
            procs = running.children("run writer")
            return len(procs) == 1 and any(
                c.laddr.port == writer for c in ps.Process(procs[0].pid).net_connections(kind="tcp") if c.status == "LISTEN"
            )

        wait_until(writer_listens_on_tcp, 15, f"the writer to listen on tcp port {writer}")
        path = tmp_path / "tcp.dcm"
        make_ct(path)
        assert store_ok(running.port, path)
        running.materialised()
        assert dataset_bytes(tmp_path / "store" / dcmread(path).SOPInstanceUID) == dataset_bytes(path)
    finally:
        running.stop()


def _echo_pdus() -> tuple[bytes, bytes]:
    """An A-ASSOCIATE-RQ for Verification and a C-ECHO-RQ in P-DATA, encoded by pynetdicom."""
    from pynetdicom.dimse_messages import C_ECHO_RQ
    from pynetdicom.dimse_primitives import C_ECHO
    from pynetdicom.pdu import A_ASSOCIATE_RQ, P_DATA_TF
    from pynetdicom.pdu_primitives import A_ASSOCIATE, ImplementationClassUIDNotification, MaximumLengthNotification
    from pynetdicom.presentation import build_context

    primitive = A_ASSOCIATE()
    primitive.application_context_name = "1.2.840.10008.3.1.1.1"
    primitive.calling_ae_title, primitive.called_ae_title = "HAMMER", "NODE"
    context = build_context(VERIFICATION, [ImplicitVRLittleEndian])
    context.context_id = 1
    primitive.presentation_context_definition_list = [context]
    max_length = MaximumLengthNotification()
    max_length.maximum_length_received = 16384
    implementation = ImplementationClassUIDNotification()
    implementation.implementation_class_uid = "1.2.826.0.1.3680043.9.3811.3.0.4"  # mandatory (PS3.7 D.3.3.2)
    primitive.user_information = [max_length, implementation]
    rq = A_ASSOCIATE_RQ()
    rq.from_primitive(primitive)
    echo = C_ECHO()
    echo.MessageID, echo.AffectedSOPClassUID = 1, VERIFICATION
    message = C_ECHO_RQ()
    message.primitive_to_message(echo)
    pdus = []
    for data in message.encode_msg(1, 16384):
        pdu = P_DATA_TF()
        pdu.from_primitive(data)
        pdus.append(bytes(pdu.encode()))
    return bytes(rq.encode()), b"".join(pdus)


_RELEASE_RQ = bytes([0x05, 0, 0, 0, 0, 4, 0, 0, 0, 0])


def _read_pdu(sock) -> int:  # noqa: ANN001
    """The type of the next PDU (its body is read and dropped); 0 when the peer closed."""
    def exactly(n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("closed")
            data += chunk
        return data

    header = exactly(6)
    exactly(int.from_bytes(header[2:], "big"))
    return header[0]


def _one_echo(port: int, associate_rq: bytes, echo_rq: bytes) -> tuple[int, str]:
    """One C-ECHO association from a socket whose local port we know: (local port, outcome)."""
    import socket as sk

    local = 0
    try:
        with sk.create_connection(("127.0.0.1", port), timeout=20) as sock:
            local = sock.getsockname()[1]
            sock.sendall(associate_rq)
            if _read_pdu(sock) != 0x02:
                return local, "not accepted"
            sock.sendall(echo_rq)
            if _read_pdu(sock) != 0x04:
                return local, "no C-ECHO-RSP"
            sock.sendall(_RELEASE_RQ)
            return local, "ok" if _read_pdu(sock) == 0x06 else "no A-RELEASE-RP"
    except OSError as exc:
        return local, f"{type(exc).__name__}: {exc}"


def test_no_connection_is_lost_while_workers_are_killed_repeatedly(node: RunningNode) -> None:
    """Four threads of C-ECHO associations while the workers are SIGKILLed in turn, six times.

    A connection waiting to be handed over, or handed to a worker that died before taking it,
    must reach a living worker. The only associations allowed to fail are those a worker had
    acknowledged taking (the listener logs ``peer=host:port -> worker-N`` then) before it was
    killed: their state died with the process.
    """
    import threading

    associate_rq, echo_rq = _echo_pdus()
    outcomes: list[tuple[int, str]] = []
    stop = threading.Event()

    def hammer() -> None:
        for _ in range(2000):  # bounded in count; stop ends it sooner
            if stop.is_set():
                return
            outcomes.append(_one_echo(node.port, associate_rq, echo_rq))

    threads = [threading.Thread(target=hammer, daemon=True) for _ in range(4)]
    for thread in threads:
        thread.start()
    kills = 0
    try:
        for round_ in range(6):
            worker_id = str(round_ % 2)
            wait_until(lambda: len(node.children(f"--worker-id {worker_id}")) == 1, 20, f"worker-{worker_id} to run")
            victim = actor_pid(node, f"--worker-id {worker_id}")
            served = len(outcomes)
            wait_until(lambda: len(outcomes) >= served + 10, 20, "ten more associations before the next kill")
            os.kill(victim, signal.SIGKILL)
            kills += 1
            wait_until(lambda: restarted(node, f"--worker-id {worker_id}", victim), 20, f"worker-{worker_id} to restart")
        served = len(outcomes)
        wait_until(lambda: len(outcomes) >= served + 20, 20, "twenty associations after the last restart")
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    failed = [(port, why) for port, why in outcomes if why != "ok"]
    log = node.log()
    lost = [(port, why) for port, why in failed if not re.search(rf"peer=127\.0\.0\.1:{port} -> worker-\d+", log)]
    assert lost == [], f"{len(lost)} connection(s) lost without reaching a worker: {lost[:5]}"
    assert len(failed) <= kills * len(threads), failed
    assert len(outcomes) - len(failed) >= 60
