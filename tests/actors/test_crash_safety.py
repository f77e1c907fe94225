"""Nothing acknowledged is lost: senders keep storing while the test SIGKILLs actors by PID.

Several ``tests.crash_sender`` subprocesses (pynetdicom SCUs) store new CT images, each
recording every status it was answered with. Meanwhile the test kills, with SIGKILL and by PID,
a randomly chosen worker, the writer (with several associations storing, most often in the
middle of a journal group or a materialising batch), the writer's materialiser process (the
writer then exits, supervisord restarts it and its replay redoes the batch), the listener, or
the whole process tree
(nodectl, supervisord, every actor: what a power cut does to the processes), waits for
supervisord to restart the actor (or starts the node again on the same port and
directories), and goes on. At the end the whole tree is killed once more and the node started
again, so the check below sees what the writer's journal replay restored, not what a SIGTERM
materialised. Afterwards, for each ``store.duplicates`` policy:

* every SOP Instance UID answered 0x0000 is in the index and its file holds, byte for byte,
  the dataset that was sent;
* no temp or partial file is visible outside ``<store>/.incoming/``;
* an instance sent more than once (re-sent after a drop, or on purpose) is one file.

The short variant (5 rounds: one kill of each kind) runs in the default suite; the slow one
(``-m slow``, at least 20 rounds per policy) is bounded by its round count and a wall-clock budget.
Commitment: transactions whose N-ACTION was answered with success get their report though
the tracker is killed between them (``test_commitment_reports_survive_tracker_kills``).
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from tests.nodes import RunningNode, serve
from tests.support import NODECTL, dataset_bytes, free_port, have, start_process, stop_process, wait_for_port, wait_until

REPO = Path(__file__).parents[2]
DUPLICATE_REJECTED = 0x0111
KINDS = ("run worker", "run writer", "actors.materialiser", "run listener", "tree")


@dataclass
class Outcome:
    """What the senders were told and what the killer did."""

    kills: list[str]
    answers: list[dict]
    seconds: float


def _config(tmp_path: Path, policy: str) -> Path:
    path = tmp_path / "node.toml"
    path.write_text(f'[store]\nduplicates = "{policy}"\n[network]\nwrite_timeout = 3.0\nacse_timeout = 10.0\n')
    return path


def _start_senders(node: RunningNode, tmp_path: Path, count: int, per_sender: int, budget: float) -> list[subprocess.Popen[bytes]]:
    procs = []
    for n in range(count):
        sent = tmp_path / f"sent{n}"
        sent.mkdir()
        cmd = [sys.executable, "-m", "tests.crash_sender", "127.0.0.1", str(node.port), str(tmp_path / f"acks{n}.jsonl"),
               "--generate", str(sent), "--count", str(per_sender), "--big-every", "7", "--resend", "5",
               "--stop", str(tmp_path / "stop"), "--budget", str(budget), "--aet", f"CRASH{n}"]
        procs.append(start_process(cmd, cwd=REPO, log=tmp_path / f"sender{n}.log"))
    return procs


def _answered(path: Path) -> int:
    """How many answers a sender has recorded so far."""
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def _kill_one(node: RunningNode, rng: random.Random, kind: str) -> str:
    """SIGKILL one actor of ``kind`` by PID and wait until supervisord has replaced it.

    The materialiser is the writer's child, started a moment after the writer itself: right
    after a writer was replaced, it may not be running yet, so wait for one to exist."""
    wait_until(lambda: bool(node.children(kind)), 20, f"a {kind} process running")
    victims = node.children(kind)
    assert victims, f"no {kind} process to kill"
    victim = rng.choice(victims)
    before = {p.pid for p in victims}
    os.kill(victim.pid, signal.SIGKILL)

    def replaced() -> bool:
        pids = {p.pid for p in node.children(kind)}
        return len(pids) == len(before) and victim.pid not in pids

    wait_until(replaced, 20, f"{kind} restarted after SIGKILL of {victim.pid}")
    return f"{kind}:{victim.pid}"


def _kill_tree(node: RunningNode) -> RunningNode:
    """SIGKILL every process of the node by PID (nodectl first, so nothing restarts them), wait
    until all are gone, then start the node again on the same port, store and index."""
    pids = node.tree_pids()
    for pid in [node.proc.pid, *sorted(pids - {node.proc.pid})]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    node.proc.wait(timeout=10)
    wait_until(lambda: not any(_alive(pid) for pid in pids), 20, "every process of the node gone after SIGKILL")
    return RunningNode(node.args, cwd=node.cwd, port=node.port).wait_ready(timeout=60)


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def run_rounds(tmp_path: Path, *, policy: str, rounds: int, senders: int, per_sender: int, budget: float, seed: int) -> tuple[RunningNode, Outcome]:
    """Start a node and senders, kill ``rounds`` times while they send, stop the senders, then
    kill the whole tree and start the node again (the journal's replay is what gets checked)."""
    rng = random.Random(seed)
    node = serve(tmp_path, "--config", str(_config(tmp_path, policy)), workers=2)
    started = time.monotonic()
    procs = _start_senders(node, tmp_path, senders, per_sender, budget)
    kills: list[str] = []
    try:
        wait_until(lambda: all(_answered(tmp_path / f"acks{n}.jsonl") >= 3 for n in range(senders)), 60, "every sender answered")
        order = [KINDS[r % len(KINDS)] for r in range(rounds)]
        rng.shuffle(order)
        for kind in order:
            if time.monotonic() - started > budget:
                break
            time.sleep(rng.uniform(0.5, 1.5))  # let traffic flow between kills
            if kind == "tree":
                node = _kill_tree(node)
                kills.append("tree")
            else:
                kills.append(_kill_one(node, rng, kind))
        (tmp_path / "stop").touch()
        for proc in procs:
            proc.wait(timeout=max(10.0, budget - (time.monotonic() - started)) + 30)
        node = _kill_tree(node)
        node.materialised()
    except BaseException:
        node.stop()
        raise
    finally:
        for proc in procs:
            stop_process(proc)
    answers = []
    for n in range(senders):
        path = tmp_path / f"acks{n}.jsonl"
        if path.exists():
            answers += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return node, Outcome(kills=kills, answers=answers, seconds=time.monotonic() - started)


def check_nothing_acknowledged_lost(tmp_path: Path, outcome: Outcome, policy: str) -> dict[str, int]:
    """The assertions of the module docstring; returns counts for the report."""
    store = tmp_path / "store"
    with sqlite3.connect(tmp_path / "node.sqlite") as db:
        index = dict(db.execute("SELECT sop_instance_uid, path FROM instances").fetchall())
    acked = {a["uid"]: a["file"] for a in outcome.answers if a["status"] == 0}
    assert acked, f"no instance was acknowledged: {outcome.answers[:5]}"
    for uid, sent in acked.items():
        assert uid in index, f"{uid} acknowledged but not indexed"
        stored = Path(index[uid])
        assert stored.is_file(), f"{uid} acknowledged, indexed, but {stored} is missing"
        assert dataset_bytes(stored) == dataset_bytes(Path(sent)), f"{uid}: stored bytes differ from sent bytes"
    visible = [p for p in store.rglob("*") if p.is_file() and ".incoming" not in p.relative_to(store).parts]
    assert not [p for p in visible if p.suffix in (".part", ".tmp")], "temp files outside .incoming"
    names = [p.name for p in visible]
    assert len(names) == len(set(names)), "an instance is stored twice"
    for path in visible:
        with open(path, "rb") as fh:
            fh.seek(128)
            assert fh.read(4) == b"DICM", f"{path} is not a complete DICOM file"
    resent = [a for a in outcome.answers if a["resend"]]
    if policy == "reject":
        assert all(a["status"] in (DUPLICATE_REJECTED, None) or a["status"] >= 0xA000 for a in resent), resent[:3]
    elif policy == "keep":
        assert all(a["status"] in (0, None) or a["status"] >= 0xA000 for a in resent), resent[:3]
    failed = [a for a in outcome.answers if a["status"] not in (0, DUPLICATE_REJECTED)]
    return {"acknowledged": len(acked), "answers": len(outcome.answers), "resent": len(resent), "failed": len(failed),
            "kills": len(outcome.kills), "files": len(visible)}


@pytest.mark.skipif(not have("/usr/bin/storescu"), reason="DCMTK not installed (tests.nodes serve)")
@pytest.mark.parametrize("policy", ["overwrite", pytest.param("keep", marks=pytest.mark.slow), pytest.param("reject", marks=pytest.mark.slow)])
def test_short_kill_rounds_lose_nothing_acknowledged(tmp_path: Path, policy: str) -> None:
    node, outcome = run_rounds(tmp_path, policy=policy, rounds=5, senders=3, per_sender=500, budget=50.0, seed=7)
    try:
        counts = check_nothing_acknowledged_lost(tmp_path, outcome, policy)
        print(f"{policy}: {counts}, {outcome.seconds:.1f} s, kills {outcome.kills}")
        assert counts["kills"] == 5
    finally:
        node.stop()


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["overwrite", "keep", "reject"])
def test_twenty_five_kill_rounds_lose_nothing_acknowledged(tmp_path: Path, policy: str) -> None:  # 5 of each kind
    seed = int(os.environ.get("CRASH_SEED", "20240"))
    node, outcome = run_rounds(tmp_path, policy=policy, rounds=25, senders=4, per_sender=5000, budget=240.0, seed=seed)
    try:
        counts = check_nothing_acknowledged_lost(tmp_path, outcome, policy)
        print(f"{policy} seed {seed}: {counts}, {outcome.seconds:.1f} s, kills {outcome.kills}")
        assert counts["kills"] >= 20
    finally:
        node.stop()


# ----- Storage Commitment: the tracker killed between and during transactions -------------------


def _commitment_node(tmp_path: Path, late_port: int) -> RunningNode:
    port = free_port()
    (tmp_path / "node.toml").write_text(f"""
[node]
aet = "NODE"
workers = 2
run_dir = "run"
[[listeners]]
port = {port}
aet = "NODE"
[[peers]]
aet = "LATE"
host = "127.0.0.1"
port = {late_port}
[commitment]
retry_base = 0.5
retry_max = 2.0
request_timeout = 3.0
""")
    return RunningNode(["serve", "--config", str(tmp_path / "node.toml")], cwd=tmp_path, port=port).wait_ready()


def run_commitment_rounds(tmp_path: Path, rounds: int, seed: int) -> None:
    """N-ACTIONs (no wait for the report) with the tracker SIGKILLed during or after each;
    then the requester comes up and every transaction answered with success gets its report."""
    rng = random.Random(seed)
    late_port = free_port()
    node = _commitment_node(tmp_path, late_port)
    out = tmp_path / "out"
    out.mkdir()
    image = tmp_path / "in" / "0.dcm"
    from tests.support import make_ct

    make_ct(image)
    subprocess.run([*NODECTL, "storescu", "127.0.0.1", str(node.port), str(image), "-aec", "NODE"], capture_output=True, timeout=60, check=True)
    acknowledged: list[str] = []
    try:
        for r in range(rounds):
            tx_file = out / f"tx{r}.txt"
            client = start_process([*NODECTL, "stcomscu", "-nwe", "-aet", "LATE", "-aec", "NODE", "-od", str(out), "+tuf", str(tx_file),
                                    "127.0.0.1", str(node.port), str(image)], cwd=tmp_path, log=tmp_path / f"client{r}.log")
            time.sleep(rng.uniform(0.5, 2.0))  # the client's start-up is ~1 s: kill before, during or after its N-ACTION
            _kill_one(node, rng, "run tracker")
            client.wait(timeout=60)
            if client.returncode == 0 and tx_file.exists():
                acknowledged.append(tx_file.read_text().strip())
        assert acknowledged, "no N-ACTION was answered with success"
        server = start_process([*NODECTL, "stcomscu", "+P", str(late_port), "-od", str(out)], cwd=tmp_path, log=tmp_path / "late.log")
        try:
            wait_for_port(late_port)
            wait_until(lambda: all((out / f"{uid}.rsp.OK.dcm").exists() for uid in acknowledged), 60,
                       "a report for every acknowledged transaction")
        finally:
            stop_process(server)
        print(f"commitment: {rounds} tracker kills, {len(acknowledged)} acknowledged transactions, all reported")
    finally:
        node.stop()


def test_commitment_reports_survive_tracker_kills(tmp_path: Path) -> None:
    run_commitment_rounds(tmp_path, rounds=2, seed=11)


@pytest.mark.slow
def test_commitment_reports_survive_twenty_tracker_kills(tmp_path: Path) -> None:
    run_commitment_rounds(tmp_path, rounds=20, seed=int(os.environ.get("CRASH_SEED", "20240")))
