"""The tracker and the workers' commitment handling, run as threads (inproc), driven over
DICOM by a pynetdicom SCU on 127.0.0.1: bad input gets the status the standard names."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from actors import tracker
from actors.inproc import InprocNode
from node import commitment as sc
from node.config import ListenerConfig, NodeConfig
from node.messages import RecordTransaction
from tests.support import make_ct, pynetdicom_settled

CT = "1.2.840.10008.5.1.4.1.1.2"


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InprocNode]:
    base = tmp_path_factory.mktemp("tracker")
    config = NodeConfig(aet="NODE", directory=base / "store", database=str(base / "node.sqlite"), workers=1,
                        run_dir=base / "run", listeners=(ListenerConfig(port=0, host="127.0.0.1", aet=""),))
    running = InprocNode(config, extra={"tracker": tracker.run}).start()
    try:
        yield running
    finally:
        running.stop()


def associate(node: InprocNode, reports: list[Any] | None = None) -> Any:
    from pynetdicom import AE, evt

    ae = AE(ae_title="SCU")
    ae.add_requested_context(sc.SOP_CLASS)
    ae.add_requested_context(CT)
    handlers = []
    if reports is not None:
        handlers.append((evt.EVT_N_EVENT_REPORT, lambda event: (reports.append((time.monotonic(), event.event_information)), (0, None))[1]))
    host, port = node.address()
    assoc = ae.associate("127.0.0.1", port, ae_title="NODE", evt_handlers=handlers)
    assert assoc.is_established
    return assoc


def action(assoc: Any, ds: Dataset | None, action_type: int = 1) -> int:
    pynetdicom_settled(assoc)
    status, _ = assoc.send_n_action(ds, action_type, sc.SOP_CLASS, sc.SOP_INSTANCE)
    return int(status.Status)


def event(assoc: Any, report: sc.Report, event_type: int | None = None, instance: str = sc.SOP_INSTANCE) -> int:
    pynetdicom_settled(assoc)
    status = assoc.send_n_event_report(sc.report_dataset(report), event_type or report.event_type, sc.SOP_CLASS, instance)
    return int(status[0].Status)


def test_bad_n_actions_get_the_standard_status(node: InprocNode) -> None:
    assoc = associate(node)
    try:
        good = sc.request_dataset(sc.Request(generate_uid(), (sc.Ref(CT, "1.2.3"),)))
        assert action(assoc, good, action_type=2) == sc.STATUS_NO_SUCH_ACTION
        no_sequence = Dataset()
        no_sequence.TransactionUID = generate_uid()
        assert action(assoc, no_sequence) == sc.STATUS_INVALID_ARGUMENT_VALUE
        twice = sc.request_dataset(sc.Request(generate_uid(), (sc.Ref(CT, "1.2.3"), sc.Ref(CT, "1.2.3"))))
        assert action(assoc, twice) == sc.STATUS_INVALID_ARGUMENT_VALUE
        assert assoc.is_established  # no crash, the association goes on
    finally:
        assoc.release()


def test_ten_thousand_instances_are_committed_or_failed_one_by_one(node: InprocNode, tmp_path: Path) -> None:
    ds = make_ct(tmp_path / "a.dcm")
    reports: list[Any] = []
    assoc = associate(node, reports)
    try:
        assert assoc.send_c_store(ds).Status == 0
        refs = (sc.Ref(CT, str(ds.SOPInstanceUID)), *(sc.Ref(CT, f"1.2.3.{n}") for n in range(9_999)))
        started = time.monotonic()
        assert action(assoc, sc.request_dataset(sc.Request(generate_uid(), refs))) == 0
        deadline = time.monotonic() + 30
        while not reports and time.monotonic() < deadline:
            time.sleep(0.05)
        assert reports, "no N-EVENT-REPORT on the same association"
        arrived, info = reports[0]
        print(f"10,000 instances: N-ACTION to N-EVENT-REPORT {arrived - started:.2f} s")
        assert len(info.ReferencedSOPSequence) == 1 and len(info.FailedSOPSequence) == 9_999
    finally:
        assoc.release()


def test_one_instance_latency(node: InprocNode, tmp_path: Path) -> None:
    ds = make_ct(tmp_path / "b.dcm")
    reports: list[Any] = []
    assoc = associate(node, reports)
    try:
        assert assoc.send_c_store(ds).Status == 0
        started = time.monotonic()
        assert action(assoc, sc.request_dataset(sc.Request(generate_uid(), (sc.Ref(CT, str(ds.SOPInstanceUID)),)))) == 0
        deadline = time.monotonic() + 10
        while not reports and time.monotonic() < deadline:
            time.sleep(0.005)
        assert reports
        print(f"1 instance: N-ACTION to N-EVENT-REPORT {reports[0][0] - started:.3f} s (same association)")
    finally:
        assoc.release()


def test_a_requester_releasing_right_after_the_n_action_rsp_gets_a_clean_release(node: InprocNode, tmp_path: Path) -> None:
    """The same-association attempt must leave the A-RELEASE-RQ to the association's reactor.

    It used to take the primitive off the queue (``acse.is_release_requested``): the release
    was never answered, the report went out on the releasing association, waited the 3 s
    DIMSE cap and pynetdicom aborted (bench commit: 6 of 19 transactions).
    """
    ds = make_ct(tmp_path / "r.dcm")
    setup = associate(node)
    try:
        assert setup.send_c_store(ds).Status == 0
    finally:
        setup.release()
    ref = (sc.Ref(CT, str(ds.SOPInstanceUID)),)
    for _ in range(8):
        reports: list[Any] = []
        assoc = associate(node, reports)
        assert action(assoc, sc.request_dataset(sc.Request(generate_uid(), ref))) == 0
        started = time.monotonic()
        assoc.release()
        took = time.monotonic() - started
        assert assoc.is_released and not assoc.is_aborted, "the release was not answered"
        assert took < 1.0, f"release took {took:.2f} s"
        assert not reports  # nothing was sent into the releasing association


def test_bad_and_repeated_n_event_reports(node: InprocNode) -> None:
    from actors.commitment_io import TrackerClient

    uid = generate_uid()
    client = TrackerClient(node.config, node.ctx, "test")
    client.ask(RecordTransaction(transaction_uid=uid, refs=[[CT, "1.2.3"]], local_aet="SCU", peer_aet="NODE", timeout=60))
    report = sc.Report(uid, (sc.Ref(CT, "1.2.3"),), ())
    assoc = associate(node)
    try:
        assert event(assoc, report, event_type=3) == sc.STATUS_NO_SUCH_EVENT_TYPE
        assert event(assoc, report, instance="1.2.3.4") == sc.STATUS_NO_SUCH_SOP_INSTANCE
        assert event(assoc, sc.Report(generate_uid(), (), ())) == sc.STATUS_INVALID_ARGUMENT_VALUE  # unknown: kept
        assert event(assoc, report) == 0
        assert event(assoc, report) == 0  # arrives twice: the sender lost our answer
    finally:
        assoc.release()


def test_a_report_kept_for_an_unknown_transaction_matches_when_it_is_recorded(node: InprocNode) -> None:
    from actors.commitment_io import TrackerClient

    uid = generate_uid()
    assoc = associate(node)
    try:
        assert event(assoc, sc.Report(uid, (sc.Ref(CT, "1.2.3"),), ())) == sc.STATUS_INVALID_ARGUMENT_VALUE
    finally:
        assoc.release()
    client = TrackerClient(node.config, node.ctx, "test")
    state = client.ask(RecordTransaction(transaction_uid=uid, refs=[[CT, "1.2.3"]], local_aet="SCU", peer_aet="NODE", timeout=60))
    assert state.state == "completed" and state.committed == 1


def test_owner_nodes_verify_their_files_and_a_silent_owner_never_counts_as_success(tmp_path: Path) -> None:
    """Issue 16: the tracker asks each owning node's writer (its verifier on tcp://) at once;
    intact files come back True, a changed one False, and a node that does not answer leaves
    its instances False once ``verify_timeout`` has passed."""
    import threading

    import zmq

    from actors.writer import Verifier
    from node import verify
    from node.config import ClusterConfig
    from node.index import Index
    from tests.support import free_port

    good, bad = tmp_path / "good.dcm", tmp_path / "bad.dcm"
    make_ct(good)
    make_ct(bad)
    rows = {uid: [str(p), p.stat().st_size, verify.digest_file(str(p))] for uid, p in (("1.1", good), ("1.2", bad))}
    data = bad.read_bytes()
    bad.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))  # same size, other content
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    config = NodeConfig(directory=tmp_path / "store", database=str(tmp_path / "node.sqlite"),
                        cluster=ClusterConfig(node_id="owner", endpoint=endpoint))
    stop = threading.Event()
    index = Index(config.database)
    verifier = Verifier(config, zmq.Context.instance(), stop)
    verifier.start(index)
    try:
        assert index.endpoints() == {"owner": endpoint}
        silent = f"tcp://127.0.0.1:{free_port()}"
        started = time.monotonic()
        intact = tracker.ask_owners({endpoint: rows, silent: {"1.3": [str(good), 1, ""]}}, timeout=0.5)
        waited = time.monotonic() - started
    finally:
        stop.set()
        verifier.close()
        index.close()
    assert intact == {"1.1": True, "1.2": False, "1.3": False}
    assert 0.5 <= waited < 2.0


def test_facts_per_verify_mode_shared_store_and_a_silent_owner(tmp_path: Path) -> None:
    """Issue 16, the tracker's side without a cluster around it: rows of another node are
    checked here when that node has no endpoint (the shared-store layout: the path is readable
    here), asked of the owner when it has one (silent here: failed, never committed), and
    taken as proof with ``verify = "index"``, even for a file that is gone."""
    from dataclasses import replace

    from node import verify
    from node.config import ClusterConfig, CommitmentConfig
    from node.index import InstanceRow
    from node.transactions import TransactionStore
    from tests.support import free_port

    shared = tmp_path / "shared.dcm"
    make_ct(shared)
    size, checksum = shared.stat().st_size, verify.digest_file(str(shared))
    config = NodeConfig(directory=tmp_path / "store", database=str(tmp_path / "node.sqlite"),
                        cluster=ClusterConfig(node_id="here"), commitment=CommitmentConfig(verify="file", verify_timeout=0.3))
    store = TransactionStore(config.database)
    try:
        store.index.record([
            InstanceRow("1.1", CT, "1.2.840.10008.1.2.1", str(shared), size, node_id="nfs-peer", checksum=checksum),
            InstanceRow("1.2", CT, "1.2.840.10008.1.2.1", str(tmp_path / "elsewhere.dcm"), size, node_id="down", checksum=checksum),
            InstanceRow("1.3", CT, "1.2.840.10008.1.2.1", str(tmp_path / "gone.dcm"), size, node_id="here", checksum=checksum),
        ])
        store.index.register_node("down", f"tcp://127.0.0.1:{free_port()}")
        refs = tuple(sc.Ref(CT, uid) for uid in ("1.1", "1.2", "1.3", "1.4"))
        checked = tracker.Tracker(config, store)._facts(refs)
        assert {uid: fact.readable for uid, fact in checked.items()} == {"1.1": True, "1.2": False, "1.3": False}
        trusted = tracker.Tracker(replace(config, commitment=CommitmentConfig(verify="index")), store)._facts(refs)
        assert {uid: fact.readable for uid, fact in trusted.items()} == {"1.1": True, "1.2": True, "1.3": True}
    finally:
        store.close()
