"""The bus schema: every kind round-trips; unknown kinds and versions are refused."""

from __future__ import annotations

import msgpack
import pytest

from node.errors import MessageError
from node.messages import KINDS, SCHEMA_VERSION, ErrorReply, WriteInstance, pack, unpack

SAMPLES = {
    "instance.write": WriteInstance(
        assoc_id="a1", relpath="1.2.3", sop_class_uid="1.2.840.10008.5.1.4.1.1.2", sop_instance_uid="1.2.3",
        transfer_syntax="1.2.840.10008.1.2.1", calling_aet="CT", called_aet="NODE",
    ),
    "error": ErrorReply(status=0xA700, reason="disk full"),
}


def test_write_instance_round_trips_with_raw_data_frames() -> None:
    frames = pack(SAMPLES["instance.write"], sender="worker-0", corr="c1", data=[b"META", b"\x00" * 10])
    envelope = unpack(frames)
    assert envelope.message == SAMPLES["instance.write"]
    assert (envelope.sender, envelope.corr) == ("worker-0", "c1")
    assert [bytes(d) for d in envelope.data] == [b"META", b"\x00" * 10]


def test_every_declared_kind_is_unique_and_named_like_its_class() -> None:
    assert len(KINDS) == len(set(KINDS.values()))
    for kind, cls in KINDS.items():
        assert cls.kind == kind


def test_unknown_kind_is_refused() -> None:
    header = msgpack.packb({"v": SCHEMA_VERSION, "kind": "instance.delete", "id": "x"})
    with pytest.raises(MessageError, match="unknown message kind"):
        unpack([header, msgpack.packb({})])


def test_other_schema_version_is_refused() -> None:
    frames = pack(SAMPLES["error"], sender="t")
    header = msgpack.unpackb(frames[0])
    header["v"] = SCHEMA_VERSION + 1
    with pytest.raises(MessageError, match="schema version"):
        unpack([msgpack.packb(header), frames[1]])


def test_missing_or_extra_fields_are_refused() -> None:
    frames = pack(SAMPLES["error"], sender="t")
    with pytest.raises(MessageError):
        unpack([frames[0], msgpack.packb({"status": 1})])
    with pytest.raises(MessageError):
        unpack([frames[0], msgpack.packb({"status": 1, "reason": "r", "extra": 2})])


@pytest.mark.parametrize("frames", [[], [b"\xc1"], [b"\xc1", b"\xc1"], [msgpack.packb([1, 2]), msgpack.packb({})]])
def test_garbage_frames_are_a_message_error(frames: list[bytes]) -> None:
    with pytest.raises(MessageError):
        unpack(frames)


def test_store_sync_and_its_answer_round_trip() -> None:
    from node.messages import StoreSynced, SyncStore

    request = unpack(pack(SyncStore(), sender="tracker", msg_id="abc"))
    assert isinstance(request.message, SyncStore) and request.id == "abc"
    answer = unpack(pack(StoreSynced(seq=(1 << 32) + 5), sender="writer", corr="abc"))
    assert answer.message == StoreSynced(seq=(1 << 32) + 5) and answer.corr == "abc"
