"""Hostile input against a running node: fuzzed PDUs, broken datasets, silent peers.

One node (``nodectl serve``, 2 workers) serves the module. After hostile traffic it must still
answer C-ECHO, none of its processes may have been restarted (a crash is a finding), and no
process may have grown beyond a bound (RSS before/after, psutil). Path patterns fed hostile
values are in tests/tools/test_storescp.py; the long fuzz run is ``python -m tests.fuzz_pdu``.
"""

from __future__ import annotations

import json
import random
import re
import socket
import struct
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread

from tests import fuzz_pdu
from tests.nodes import RunningNode, serve
from tests.support import dataset_bytes, have, make_ct, stored_files, wait_until

pytestmark = pytest.mark.skipif(not have("/usr/bin/storescu"), reason="DCMTK not installed (tests.nodes serve)")

REPO = Path(__file__).parents[2]
RSS_SLACK = 32 * 2**20  # what a warmed-up process may grow by during a run (malloc arenas, caches)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningNode]:
    tmp = tmp_path_factory.mktemp("hostile")
    (tmp / "node.toml").write_text("[network]\nrequest_timeout_ms = 5000\n")
    running = serve(tmp, "--config", str(tmp / "node.toml"), workers=2)
    try:
        for _ in range(6):  # warm both workers up (pynetdicom is imported on the first association)
            fuzz_pdu.echo_ok(running.port)
        yield running
    finally:
        running.stop()


def actor_rss(node: RunningNode) -> dict[int, int]:
    """RSS of every actor process (not nodectl or supervisord) by PID."""
    return fuzz_pdu.rss({p.pid for p in node.children("node.cli run")})


def assert_healthy(node: RunningNode, before: dict[int, int]) -> dict[int, int]:
    """Same PIDs (nothing crashed), C-ECHO answered, no process grew past the slack."""
    assert fuzz_pdu.echo_ok(node.port), "the node stopped answering C-ECHO"
    after = actor_rss(node)
    assert set(after) == set(before), f"actors restarted: {set(before) ^ set(after)}\n{node.log()[-3000:]}"
    for pid, size in after.items():
        assert size <= before[pid] + RSS_SLACK, f"pid {pid} grew from {before[pid] >> 20} to {size >> 20} MiB"
    return after


# ----- PDU fuzzing ---------------------------------------------------------------------------


def test_fuzzed_pdus_leave_the_node_answering_with_flat_memory(node: RunningNode) -> None:
    before = actor_rss(node)
    started = time.monotonic()
    done = fuzz_pdu.run_cases(node.port, cases=400, budget=45.0)
    after = assert_healthy(node, before)
    print(f"fuzz: {done} cases in {time.monotonic() - started:.1f} s, RSS {sum(before.values()) >> 20} -> {sum(after.values()) >> 20} MiB")
    assert done >= 100


@pytest.mark.slow
def test_one_hundred_thousand_fuzzed_pdus(node: RunningNode) -> None:
    before = actor_rss(node)
    started = time.monotonic()
    done = fuzz_pdu.run_cases(node.port, cases=100_000, budget=3600.0)
    after = assert_healthy(node, before)
    print(f"fuzz: {done} cases in {time.monotonic() - started:.1f} s, RSS {sum(before.values()) >> 20} -> {sum(after.values()) >> 20} MiB")


@pytest.mark.parametrize("name", ["huge_rq", "huge_p_data"])
def test_huge_pdu_length_claims_are_refused_without_allocating(node: RunningNode, name: str) -> None:
    """A PDU claiming 4 GiB used to make the worker allocate it (bytearray of the claimed size)."""
    before = actor_rss(node)
    claim = 0xFFFFFFF0
    data = fuzz_pdu.pdu(1, b"x" * 64, claim) if name == "huge_rq" else fuzz_pdu.associate_rq() + fuzz_pdu.pdu(4, b"x" * 64, claim)
    for _ in range(5):
        fuzz_pdu.send_case(node.port, data)
    assert_healthy(node, before)


# ----- broken datasets -------------------------------------------------------------------------


def _raw_store(port: int, path: Path) -> dict:
    out = subprocess.run([sys.executable, "-m", "tests.raw_store", "127.0.0.1", str(port), str(path), "--aec", "NODE"],
                         capture_output=True, text=True, timeout=60, cwd=REPO)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _broken(good: Path, kind: str) -> bytes:
    """The good file's meta followed by a dataset broken in one way."""
    blob = good.read_bytes()
    data = dataset_bytes(good)
    meta = blob[: len(blob) - len(data)]
    if kind == "truncated_in_pixel_data":
        return meta + data[: len(data) - 1000]
    if kind == "truncated_in_header":
        return meta + data[:200]
    if kind == "wrong_vr":  # an unknown VR code on (0010,0020) Patient ID
        return meta + data.replace(b"\x10\x00\x20\x00LO", b"\x10\x00\x20\x00ZZ", 1)
    if kind == "undefined_length_not_sequence":  # Patient ID with a 4-byte length of 0xFFFFFFFF
        return meta + b"\x08\x00\x18\x00UN\x00\x00\xff\xff\xff\xff" + data
    if kind == "unterminated_sequence":
        return meta + data + b"\x40\x00\x75\x02SQ\x00\x00\xff\xff\xff\xff\xfe\xff\x00\xe0\xff\xff\xff\xff" + b"\x10\x00\x10\x00PN\x04\x00ABCD"
    if kind == "two_gib_pixel_data":  # Pixel Data claiming 2 GiB of which 16 bytes arrive
        head = data[: data.index(b"\xe0\x7f\x10\x00")]
        return meta + head + b"\xe0\x7f\x10\x00OW\x00\x00" + struct.pack("<I", 0x7FFFFFFE) + b"\x00" * 16
    raise ValueError(kind)


BROKEN = ["truncated_in_pixel_data", "truncated_in_header", "wrong_vr", "undefined_length_not_sequence",
          "unterminated_sequence", "two_gib_pixel_data"]


@pytest.mark.parametrize("kind", BROKEN)
def test_broken_dataset_gets_a_failure_and_nothing_is_stored(node: RunningNode, tmp_path: Path, kind: str) -> None:
    good = tmp_path / "good.dcm"
    ds = make_ct(good, pixels=128)
    broken = tmp_path / f"{kind}.dcm"
    broken.write_bytes(_broken(good, kind))
    before = actor_rss(node)
    report = _raw_store(node.port, broken)
    status = report["results"][0]["status"] if report.get("results") else None
    assert status is not None and status >= 0xA000, f"{kind}: status {status!r}"
    store = node.cwd / "store"
    assert not [p for p in store.rglob("*") if ds.SOPInstanceUID in p.name and ".incoming" not in p.parts]
    assert_healthy(node, before)


# ----- silent peers --------------------------------------------------------------------------


def test_five_hundred_silent_connections_do_not_stop_others(node: RunningNode, tmp_path: Path) -> None:
    """A peer (from 127.0.0.2) opens 500 connections and says nothing; a C-STORE from another
    peer still goes through, and the silent ones are closed at the request timeout."""
    before = actor_rss(node)
    silent: list[socket.socket] = []
    try:
        for _ in range(500):  # non-blocking: all 500 at once, as a flood would
            sock = socket.socket()
            sock.setblocking(False)
            sock.bind(("127.0.0.2", 0))
            sock.connect_ex(("127.0.0.1", node.port))
            silent.append(sock)
        path = tmp_path / "other.dcm"
        make_ct(path)
        started = time.monotonic()
        report = _raw_store(node.port, path)
        waited = time.monotonic() - started
        assert report["association"] == "ok" and report["results"][0]["status"] == 0, report
        print(f"C-STORE next to 500 silent connections: {waited:.2f} s")
        assert waited < 10, "the silent connections held the store up"
    finally:
        for sock in silent:
            sock.close()
    assert_healthy(node, before)


# ----- mutated real associations ---------------------------------------------------------------

WORKER_LINE = re.compile(r"^\S+ \S+ (?P<level>[A-Z]) worker\[\d+\] actors\.worker: assoc=(?P<assoc>\w+) (?P<text>.*)$", re.M)
MUTATED_CASES, MUTATED_BUDGET_S = 400, 90.0


def test_mutated_dcmtk_associations_end_quietly(tmp_path: Path) -> None:
    mutated_associations(tmp_path, MUTATED_CASES, MUTATED_BUDGET_S)


@pytest.mark.slow
def test_eight_minutes_of_mutated_dcmtk_associations(tmp_path: Path) -> None:
    """The length of the run that found pynetdicom's reactor dying (issue 13)."""
    mutated_associations(tmp_path, 1_000_000, 480.0)


def mutated_associations(tmp_path: Path, max_cases: int, budget_s: float) -> None:
    """A real DCMTK storescu association, recorded, then sent again with bytes flipped,
    truncated, inserted and duplicated (bounded count and time): the node keeps serving, what
    it stored still reads, no thread dies and nothing logs a traceback, and each hostile
    association costs one WARNING line naming the peer and how it ended (besides one per
    C-STORE refused with a status on the way)."""
    (tmp_path / "node.toml").write_text("[network]\nrequest_timeout_ms = 3000\nidle_timeout_ms = 3000\n")
    node = serve(tmp_path, "--config", str(tmp_path / "node.toml"), workers=2)
    try:
        files = [tmp_path / f"ct{n}.dcm" for n in range(2)]
        for path in files:
            make_ct(path, pixels=96)
        stream = fuzz_pdu.record_association(node.port, ["/usr/bin/storescu", "-aec", "NODE", "127.0.0.1", "PORT", *map(str, files)])
        seen = len(node.log())
        rng = random.Random(20261202)
        started, cases, kinds = time.monotonic(), 0, Counter()
        while cases < max_cases and time.monotonic() - started < budget_s:
            kind, data = fuzz_pdu.mutate(stream, rng)
            fuzz_pdu.send_case(node.port, data)
            kinds[kind.split("+")[0]] += 1
            cases += 1
        assert cases >= 50, f"only {cases} cases in {budget_s} s"
        assert fuzz_pdu.echo_ok(node.port), "the node stopped answering C-ECHO"
        after = tmp_path / "after.dcm"
        make_ct(after)
        store = subprocess.run(["/usr/bin/storescu", "-aec", "NODE", "127.0.0.1", str(node.port), str(after)],
                               capture_output=True, text=True, timeout=60)
        assert store.returncode == 0, store.stderr
        wait_until(lambda: any(p.name == dcmread(after).SOPInstanceUID for p in stored_files(tmp_path / "store")), 20, "stored after")
        log = node.log()[seen:]
    finally:
        node.stop()
    print(f"mutated associations: {cases} in {time.monotonic() - started:.1f} s, first mutations {dict(kinds)}")
    for path in stored_files(tmp_path / "store"):  # whatever was stored reads as DICOM
        dcmread(path, stop_before_pixels=True)
    assert "Traceback" not in log and "Exception in thread" not in log, log[-3000:]
    lines = list(WORKER_LINE.finditer(log))
    assert lines, "no worker lines in the node's log (log format changed?)"
    warnings = [m for m in lines if m["level"] in "WEC"]
    assert all(m["level"] == "W" for m in warnings), [m.group(0) for m in warnings if m["level"] != "W"]
    # One line for how the association ended; a C-STORE refused on the way (its dataset
    # mutated) is answered with a status and has a line of its own, at most one per C-STORE.
    ending = Counter(m["assoc"] for m in warnings if " refused: status=" not in m["text"])
    refused = Counter(m["assoc"] for m in warnings if " refused: status=" in m["text"])
    assert max(ending.values(), default=0) <= 1, [m.group(0) for m in warnings if ending[m["assoc"]] > 1]
    assert max(refused.values(), default=0) <= len(files), [m.group(0) for m in warnings if refused[m["assoc"]] > len(files)]
    assert all("peer=127.0.0.1:" in m["text"] for m in warnings), [m.group(0) for m in warnings if "peer=" not in m["text"]]
    assert len(warnings) >= cases // 4, f"only {len(warnings)} warnings for {cases} hostile associations"
