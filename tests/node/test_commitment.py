"""node.commitment and node.transactions: the rules of PS3.4 Annex J, no sockets, no sleeps."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from node import commitment as sc
from node.commitment import CommitmentError, Fact, Ref, Report, State
from node.errors import StorageError
from node.transactions import TransactionStore, request_hash

CT = "1.2.840.10008.5.1.4.1.1.2"


def refs(n: int) -> tuple[Ref, ...]:
    return tuple(Ref(CT, f"1.2.3.{i}") for i in range(1, n + 1))


def request_bytes(uid: str, items: tuple[Ref, ...]) -> bytes:
    return sc.encode(sc.request_dataset(sc.Request(uid, items)))


def test_request_round_trip_in_both_uncompressed_syntaxes() -> None:
    for ts in (sc.ImplicitVRLittleEndian, ExplicitVRLittleEndian):
        data = sc.encode(sc.request_dataset(sc.Request("1.2.9", refs(3))), ts)
        request = sc.parse_request(1, sc.SOP_CLASS, sc.SOP_INSTANCE, data, ts)
        assert request == sc.Request("1.2.9", refs(3))


@pytest.mark.parametrize(
    "action, cls, inst, status",
    [
        (2, sc.SOP_CLASS, sc.SOP_INSTANCE, sc.STATUS_NO_SUCH_ACTION),
        (1, sc.SOP_CLASS, "1.2.3", sc.STATUS_NO_SUCH_SOP_INSTANCE),
        (1, CT, sc.SOP_INSTANCE, sc.STATUS_NO_SUCH_SOP_CLASS),
    ],
)
def test_request_command_errors_have_their_status(action: int, cls: str, inst: str, status: int) -> None:
    with pytest.raises(CommitmentError) as info:
        sc.parse_request(action, cls, inst, b"garbage")
    assert info.value.status == status


def test_request_dataset_errors_are_invalid_argument_value() -> None:
    no_sequence = Dataset()
    no_sequence.TransactionUID = "1.2.3"
    no_uid = sc.request_dataset(sc.Request("1.2.3", refs(1)))
    del no_uid.TransactionUID
    for bad in (sc.encode(no_sequence), sc.encode(no_uid), request_bytes("1.2.3", (refs(1)[0], refs(1)[0])), None):
        with pytest.raises(CommitmentError) as info:
            sc.parse_request(1, sc.SOP_CLASS, sc.SOP_INSTANCE, bad)
        assert info.value.status == sc.STATUS_INVALID_ARGUMENT_VALUE


def test_ten_thousand_instances_pass_and_the_limit_is_resource_limitation() -> None:
    data = request_bytes("1.2.3", refs(10_000))
    assert len(sc.parse_request(1, sc.SOP_CLASS, sc.SOP_INSTANCE, data).refs) == 10_000
    with pytest.raises(CommitmentError) as info:
        sc.parse_request(1, sc.SOP_CLASS, sc.SOP_INSTANCE, data, max_instances=9_999)
    assert info.value.status == sc.STATUS_RESOURCE_LIMITATION


def test_report_round_trip_and_event_type() -> None:
    report = Report("1.2.9", refs(2), (sc.Failed(CT, "1.2.3.9", sc.REASON_NO_SUCH_OBJECT_INSTANCE),))
    assert report.event_type == sc.EVENT_FAILURES_EXIST
    parsed = sc.parse_report(2, sc.SOP_CLASS, sc.SOP_INSTANCE, sc.encode(sc.report_dataset(report)))
    assert parsed == report
    assert Report("1.2.9", refs(1), ()).event_type == sc.EVENT_ALL_COMMITTED


@pytest.mark.parametrize(
    "event, inst, status",
    [(3, sc.SOP_INSTANCE, sc.STATUS_NO_SUCH_EVENT_TYPE), (1, "1.2.3", sc.STATUS_NO_SUCH_SOP_INSTANCE)],
)
def test_report_errors_have_their_status(event: int, inst: str, status: int) -> None:
    with pytest.raises(CommitmentError) as info:
        sc.parse_report(event, sc.SOP_CLASS, inst, sc.encode(sc.report_dataset(Report("1.2", refs(1), ()))))
    assert info.value.status == status


def test_evaluate_names_the_failure_reasons() -> None:
    request = sc.Request("1.2.9", (Ref(CT, "1"), Ref(CT, "2"), Ref(CT, "3"), Ref(CT, "4")))
    facts = {"1": Fact(CT, True), "2": Fact("1.2.840.10008.5.1.4.1.1.4", True), "3": Fact(CT, False)}
    report = sc.evaluate(request, facts)
    assert report.committed == (Ref(CT, "1"),)
    assert {f.sop_instance_uid: f.reason for f in report.failed} == {
        "2": sc.REASON_CLASS_INSTANCE_CONFLICT, "3": sc.REASON_PROCESSING_FAILURE, "4": sc.REASON_NO_SUCH_OBJECT_INSTANCE,
    }


def test_compare_reports_abnormalities() -> None:
    report = Report("1", (Ref(CT, "1"), Ref(CT, "9")), (sc.Failed(CT, "1", 0x0110),))
    texts = [text for _level, text in sc.compare((Ref(CT, "1"), Ref(CT, "2")), report)]
    assert any("2 was requested" in t for t in texts)
    assert any("both committed and failed" in t for t in texts)
    assert any("9 is reported but was not requested" in t for t in texts)


def test_state_table() -> None:
    assert sc.advance(State.PENDING, "sent") == State.REQUESTED
    assert sc.advance(State.REQUESTED, "reported") == State.COMPLETED
    assert sc.advance(State.PENDING, "reported") == State.COMPLETED  # report overtook the RSP
    assert sc.advance(State.COMPLETED, "sent") == State.COMPLETED
    with pytest.raises(sc.TransitionError):
        sc.advance(State.REFUSED, "sent")


def test_backoff_doubles_and_caps() -> None:
    assert [sc.backoff(n, base=1, cap=10) for n in range(6)] == [0, 1, 2, 4, 8, 10]


def test_store_keeps_transactions_across_reopen(tmp_path: Path) -> None:
    db = str(tmp_path / "node.sqlite")
    store = TransactionStore(db)
    uid = generate_uid()
    store.record(uid, refs(3), local_aet="A", peer_aet="B", peer_host="h", peer_port=1, timeout=60)
    store.mark_sent(uid, 0)
    store.close()
    store = TransactionStore(db)
    assert store.get(uid).state == State.REQUESTED
    assert store.refs(uid) == refs(3)
    txn, new = store.complete(uid, Report(uid, refs(3), ()), b"raw", sc.ImplicitVRLittleEndian, "B")
    assert new and txn.state == State.COMPLETED and txn.report_data == b"raw"
    assert store.complete(uid, Report(uid, (), ()), None, "", "B")[1] is False  # a repeat keeps the first
    store.close()


def test_store_expires_and_keeps_orphans(tmp_path: Path) -> None:
    store = TransactionStore(str(tmp_path / "node.sqlite"))
    store.record("1.9", refs(1), local_aet="A", peer_aet="B", peer_host="", peer_port=0, timeout=5, now=100.0)
    assert store.expire_due(now=106.0) == ["1.9"]
    assert store.get("1.9").state == State.EXPIRED
    store.keep_orphan(Report("1.8", refs(1), ()), None, "", "B", now=200.0)
    assert store.take_orphan("1.8", window=10, now=215.0) is None
    store.keep_orphan(Report("1.8", refs(1), ()), None, "", "B", now=200.0)
    assert store.take_orphan("1.8", window=10, now=205.0)[0].committed == refs(1)
    store.close()


def test_outbox_retries_until_delivered_or_expired(tmp_path: Path) -> None:
    store = TransactionStore(str(tmp_path / "node.sqlite"))
    report = Report("1.7", refs(1), ())
    store.outbox_put(report, requester_aet="R", called_aet="NODE", peer_host="h", request_hash=request_hash(refs(1)),
                     first_attempt=10.0, expires=100.0, now=10.0)
    assert [e.transaction_uid for e in store.outbox_due(now=10.0)] == ["1.7"]
    entry = store.outbox_attempted("1.7", delivered=False, error="refused", retry_at=11.0)
    assert entry.state == sc.Delivery.QUEUED and entry.attempts == 1 and store.outbox_due(now=10.5) == []
    assert store.outbox_attempted("1.7", delivered=False, error="refused", retry_at=200.0).state == sc.Delivery.EXPIRED
    store.outbox_put(Report("1.6", refs(1), ()), requester_aet="R", called_aet="NODE", peer_host="h",
                     request_hash="x", first_attempt=0.0, expires=100.0)
    assert store.outbox_attempted("1.6", delivered=True, error="", retry_at=0.0).state == sc.Delivery.DELIVERED
    assert store.outbox_attempted("1.6", delivered=False, error="late", retry_at=0.0).state == sc.Delivery.DELIVERED
    assert (store.outbox_state("1.6"), store.outbox_state("1.7"), store.outbox_state("1.5")) == \
        (sc.Delivery.DELIVERED, sc.Delivery.EXPIRED, None)
    with pytest.raises(StorageError):
        store.outbox_attempted("1.5", delivered=True, error="", retry_at=0.0)
    store.close()
