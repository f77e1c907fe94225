"""node.verify: who checks which instance of a commitment request, and what "intact" means."""

from __future__ import annotations

from pathlib import Path

from node import verify
from node.storage import PREAMBLE
from node.verify import Indexed


def test_a_file_is_intact_only_with_its_recorded_size_and_checksum(tmp_path: Path) -> None:
    parts = [b"\x02\x00\x10\x00", b"dataset bytes"]
    path = tmp_path / "a.dcm"
    path.write_bytes(PREAMBLE + b"".join(parts))
    checksum = verify.digest_parts(parts)
    assert checksum == verify.digest_file(str(path))
    size = path.stat().st_size
    assert verify.problem(str(path), size, checksum) == ""
    assert verify.problem(str(path), size, "") == ""  # no checksum recorded: size and readability
    assert "size" in verify.problem(str(path), size + 1, checksum)
    path.write_bytes(PREAMBLE + b"".join(parts).replace(b"bytes", b"BYTES"))
    assert "checksum" in verify.problem(str(path), size, checksum)
    path.unlink()
    assert "missing" in verify.problem(str(path), size, checksum)


def test_without_a_checksum_a_file_that_cannot_be_read_is_unreadable(tmp_path: Path) -> None:
    """The size matches, the bytes cannot be read: not committed, and the error says why."""
    directory = tmp_path / "d.dcm"
    directory.mkdir()
    assert verify.problem(str(directory), directory.stat().st_size, "") == "unreadable (Is a directory)"
    empty = tmp_path / "e.dcm"
    empty.write_bytes(b"")
    assert verify.problem(str(empty), 0, "") == ""  # an empty file reads (no byte) fine, as before


def test_plan_trusts_the_index_or_sends_each_instance_to_the_node_that_holds_it() -> None:
    found = {
        "1": Indexed("cls", "/s/1", 1, "c", "node-a"),
        "2": Indexed("cls", "/s/2", 1, "c", "node-b"),
        "3": Indexed("cls", "/s/3", 1, "c", "node-c"),  # no endpoint known: a shared store, checked here
        "4": Indexed("cls", "/s/4", 1, "", ""),  # a row from before issue 16
    }
    endpoints = {"node-b": "tcp://10.0.0.12:7001", "node-a": "tcp://10.0.0.11:7001"}
    trusted = verify.plan(found, mode="index", here="node-a", endpoints=endpoints)
    assert sorted(trusted.trusted) == ["1", "2", "3", "4"] and not trusted.local and not trusted.remote
    checked = verify.plan(found, mode="file", here="node-a", endpoints=endpoints)
    assert checked.trusted == []
    assert sorted(checked.local) == ["1", "3", "4"]
    assert checked.remote == {"tcp://10.0.0.12:7001": ["2"]}
