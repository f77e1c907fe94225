"""PDU fuzzing of a running node's listener/worker path, driven by hypothesis.

Every case is one TCP connection to the node: the case's bytes are sent, the write side is
shut, up to ``READ_S`` of whatever the node answers is read, and the connection is closed.
Cases (``pdu_streams``): raw garbage; PDU headers with any type and wrong, truncated or huge
lengths; a valid A-ASSOCIATE-RQ mutated (bytes flipped, truncated, bad item types and item
lengths); a valid association with a malformed P-DATA-TF; a valid C-ECHO then A-RELEASE-RQ
followed by garbage.

Long run, a documented command (bounded by ``--cases`` and ``--budget`` seconds); it starts its
own node unless ``--port`` names one, and prints cases, rate, C-ECHO after, RSS before/after::

    python -m tests.fuzz_pdu --cases 100000 --budget 3600

The default suite runs a few hundred cases (tests/actors/test_hostile_input.py), and mutated
copies of a real DCMTK storescu association (``record_association``, ``mutate``: bytes
flipped, truncated, inserted, duplicated).
"""

from __future__ import annotations

import argparse
import json
import socket
import struct
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

READ_S = 0.02
APP_CONTEXT = b"1.2.840.10008.3.1.1.1"
VERIFICATION = b"1.2.840.10008.1.1"
IMPLICIT = b"1.2.840.10008.1.2"
HUGE = (0xFFFFFFFF, 0x7FFFFFFF, 0x80000000, 0x10000000, 0xFFFF, 0x10000)


def pdu(pdu_type: int, body: bytes, length: int | None = None) -> bytes:
    """A PDU: type, reserved, 4-byte big-endian length, body (length may lie)."""
    return struct.pack(">BBI", pdu_type, 0, len(body) if length is None else length) + body


def item(item_type: int, body: bytes, length: int | None = None) -> bytes:
    """A variable item: type, reserved, 2-byte length, body (length may lie)."""
    return struct.pack(">BBH", item_type, 0, (len(body) if length is None else length) & 0xFFFF) + body


def associate_rq(called: bytes = b"NODE", calling: bytes = b"FUZZER", items: bytes | None = None) -> bytes:
    """A valid A-ASSOCIATE-RQ proposing Verification with Implicit VR Little Endian."""
    if items is None:
        context = item(0x20, bytes([1, 0, 0, 0]) + item(0x30, VERIFICATION) + item(0x40, IMPLICIT))
        user = item(0x50, item(0x51, struct.pack(">I", 16384)) + item(0x52, b"1.2.3.4"))
        items = item(0x10, APP_CONTEXT) + context + user
    fixed = struct.pack(">HH", 1, 0) + called.ljust(16) + calling.ljust(16) + bytes(32)
    return pdu(0x01, fixed + items)


def _element(group: int, elem: int, value: bytes) -> bytes:
    return struct.pack("<HHI", group, elem, len(value)) + value


def echo_command() -> bytes:
    """A C-ECHO-RQ command set, implicit VR little endian, with its group length."""
    body = (_element(0, 0x0002, VERIFICATION + b"\x00") + _element(0, 0x0100, struct.pack("<H", 0x0030))
            + _element(0, 0x0110, struct.pack("<H", 1)) + _element(0, 0x0800, struct.pack("<H", 0x0101)))
    return _element(0, 0x0000, struct.pack("<I", len(body))) + body


def p_data(context_id: int, header: int, value: bytes, pdv_length: int | None = None) -> bytes:
    """A P-DATA-TF with one PDV item (its length may lie)."""
    length = len(value) + 2 if pdv_length is None else pdv_length
    return pdu(0x04, struct.pack(">IBB", length, context_id, header) + value)


RELEASE_RQ = pdu(0x05, bytes(4))
GOOD_ECHO = associate_rq() + p_data(1, 0x03, echo_command()) + RELEASE_RQ


@st.composite
def _bad_header(draw: Any) -> bytes:
    pdu_type = draw(st.integers(0, 255))
    length = draw(st.one_of(st.sampled_from(HUGE), st.integers(0, 2**32 - 1), st.integers(0, 64)))
    return pdu(pdu_type, draw(st.binary(max_size=128)), length)


@st.composite
def _mutated_rq(draw: Any) -> bytes:
    data = bytearray(associate_rq())
    for _ in range(draw(st.integers(1, 8))):
        pos = draw(st.integers(0, len(data) - 1))
        data[pos] = draw(st.integers(0, 255))
    cut = draw(st.integers(0, len(data)))
    return bytes(data[:cut]) if draw(st.booleans()) else bytes(data)


@st.composite
def _bad_items(draw: Any) -> bytes:
    items = draw(st.lists(st.builds(item, st.integers(0, 255), st.binary(max_size=64),
                                    st.one_of(st.none(), st.integers(0, 0xFFFF))), max_size=6))
    called = draw(st.sampled_from([b"NODE", b"", b"\x00" * 16, b"\\\\\\", b"NODE\x00\x01"]))
    return associate_rq(called=called, items=b"".join(items))


@st.composite
def _bad_p_data(draw: Any) -> bytes:
    value = draw(st.one_of(st.just(echo_command()), st.binary(max_size=256)))
    context_id = draw(st.sampled_from([1, 0, 3, 255]))
    header = draw(st.integers(0, 255))
    pdv_length = draw(st.one_of(st.none(), st.sampled_from(HUGE), st.integers(0, 300)))
    tail = draw(st.sampled_from([b"", RELEASE_RQ, pdu(0x07, bytes(4))]))
    return associate_rq() + p_data(context_id, header, value, pdv_length) + tail


@st.composite
def _garbage_after_release(draw: Any) -> bytes:
    return GOOD_ECHO + draw(st.one_of(st.binary(min_size=1, max_size=256), _bad_header(), st.just(GOOD_ECHO)))


def pdu_streams() -> st.SearchStrategy[bytes]:
    """Every kind of hostile byte stream this module sends."""
    return st.one_of(st.binary(max_size=512), _bad_header(), _mutated_rq(), _bad_items(), _bad_p_data(), _garbage_after_release())


# ----- mutated real associations ---------------------------------------------------------------


def record_association(target_port: int, command: list[str]) -> bytes:
    """What a real requestor sends on one association: ``command`` (with ``PORT`` in it) talks
    to a recording proxy in front of ``target_port``; the requestor's bytes are returned."""
    import subprocess
    import threading

    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    sent = bytearray()

    def pipe(src: socket.socket, dst: socket.socket, record: bool) -> None:
        try:
            while chunk := src.recv(65536):
                if record:
                    sent.extend(chunk)
                dst.sendall(chunk)
        except OSError:
            pass
        finally:
            try:
                dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def proxy() -> None:
        client, _ = server.accept()
        upstream = socket.create_connection(("127.0.0.1", target_port), timeout=30)
        back = threading.Thread(target=pipe, args=(upstream, client, False), daemon=True)
        back.start()
        pipe(client, upstream, True)
        back.join(30)
        client.close()
        upstream.close()

    thread = threading.Thread(target=proxy, daemon=True)
    thread.start()
    try:
        result = subprocess.run([str(port) if arg == "PORT" else arg for arg in command], capture_output=True, text=True, timeout=60)
        thread.join(30)
    finally:
        server.close()
    if result.returncode != 0:
        raise RuntimeError(f"{command[0]} failed through the recorder: {result.stderr}")
    return bytes(sent)


MUTATIONS = ("flip", "truncate", "insert", "duplicate")


def mutate(stream: bytes, rng: Any) -> tuple[str, bytes]:
    """``stream`` with bytes flipped, cut short, inserted or a slice of it duplicated (one to
    three of these, chosen by ``rng``, a ``random.Random``); returns what was done and the bytes."""
    data = bytearray(stream)
    done = []
    for _ in range(rng.randint(1, 3)):
        kind = rng.choice(MUTATIONS)
        pos = rng.randrange(len(data) + 1)
        if kind == "flip" and data:
            for _ in range(rng.randint(1, 8)):
                at = rng.randrange(len(data))
                data[at] ^= rng.randint(1, 255)
        elif kind == "truncate":
            del data[pos:]
        elif kind == "insert":
            data[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
        elif kind == "duplicate" and data:
            start = rng.randrange(len(data))
            piece = data[start : start + rng.randint(1, 4096)]
            data[pos:pos] = piece
        done.append(kind)
    return "+".join(done), bytes(data)


def send_case(port: int, data: bytes, host: str = "127.0.0.1") -> bytes:
    """One connection: send, half-close, read briefly, close. Returns what the node answered."""
    got = b""
    with socket.create_connection((host, port), timeout=5) as sock:
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
            sock.settimeout(READ_S)
            while len(got) < 65536:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                got += chunk
        except OSError:
            pass
    return got


def run_cases(port: int, cases: int, budget: float) -> int:
    """Send up to ``cases`` hypothesis-generated streams within ``budget`` seconds; return how many."""
    deadline = time.monotonic() + budget
    sent = [0]

    @settings(max_examples=cases, deadline=None, database=None, derandomize=False,
              phases=[Phase.generate], suppress_health_check=list(HealthCheck))
    @given(pdu_streams())
    def one(data: bytes) -> None:
        if time.monotonic() >= deadline:
            return
        send_case(port, data)
        sent[0] += 1

    one()
    return sent[0]


def echo_ok(port: int, aec: str = "NODE") -> bool:
    """A real C-ECHO with pynetdicom: does the node still answer?"""
    from pynetdicom import AE

    ae = AE(ae_title="FUZZCHECK")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    ae.add_requested_context(VERIFICATION.decode())
    assoc = ae.associate("127.0.0.1", port, ae_title=aec)
    if not assoc.is_established:
        return False
    status = assoc.send_c_echo()
    assoc.release()
    return "Status" in status and status.Status == 0


def rss(pids: set[int]) -> dict[int, int]:
    """Resident set size of each live process (bytes)."""
    import psutil

    out = {}
    for pid in pids:
        try:
            out[pid] = psutil.Process(pid).memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return out


def _actor_names(pids: set[int]) -> dict[int, str]:
    """PID -> "worker-0", "writer", ... from the command lines (for the report)."""
    import psutil

    names = {}
    for pid in pids:
        try:
            cmd = psutil.Process(pid).cmdline()
        except psutil.NoSuchProcess:
            continue
        if "run" in cmd:
            actor = cmd[cmd.index("run") + 1]
            names[pid] = f"{actor}-{cmd[-1]}" if actor == "worker" else actor
        else:
            names[pid] = "supervisord" if any("supervisord" in c for c in cmd) else "nodectl"
    return names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz_pdu", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=100_000)
    parser.add_argument("--budget", type=float, default=3600.0, help="seconds, whatever --cases says")
    parser.add_argument("--port", type=int, help="fuzz a running node (default: start one in a temp dir)")
    parser.add_argument("--checkpoints", type=int, default=4, help="RSS samples during the run")
    opts = parser.parse_args(argv)
    from tests.nodes import serve

    node = None
    if opts.port is None:
        node = serve(Path(tempfile.mkdtemp(prefix="fuzz-")), workers=2)
    port = opts.port or node.port  # type: ignore[union-attr]
    try:
        pids = node.tree_pids() if node else set()
        names = _actor_names(pids)
        before = rss(pids)
        started = time.monotonic()
        done, checkpoints = 0, []
        for chunk in range(opts.checkpoints):  # RSS after each slice: a plateau or a slope?
            left = opts.budget - (time.monotonic() - started)
            done += run_cases(port, opts.cases // opts.checkpoints, left)
            checkpoints.append({"cases": done, **{names.get(pid, str(pid)): round(v / 2**20, 1) for pid, v in rss(pids).items()}})
        seconds = time.monotonic() - started
        echo = echo_ok(port)
        after = rss(pids)
        report = {"cases": done, "seconds": round(seconds, 1), "rate": round(done / max(seconds, 1e-9), 1), "echo_after": echo,
                  "rss_before_mib": {names.get(p, str(p)): round(v / 2**20, 1) for p, v in before.items()},
                  "rss_checkpoints_mib": checkpoints,
                  "processes_restarted": sorted(set(before) - set(after))}
        print(json.dumps(report))
        return 0 if echo and not report["processes_restarted"] else 1
    finally:
        if node is not None:
            node.stop()


if __name__ == "__main__":
    sys.exit(main())
