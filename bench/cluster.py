"""``python -m bench cluster``: what one PostgreSQL costs a cluster, and how fast completion
crosses nodes (issue 16; results go to docs/scaling.md by hand, with the load average).

Phases, each on a fresh database of one throwaway PostgreSQL server (``tests.postgres``,
here with ``fsync=on`` and ``pg_stat_statements`` preloaded, so WAL and commits cost what
they cost on a real server; its data directory is under /tmp on this machine's disk):

1. *wake*: nodes A and B (``nodectl serve``) on one database. A transaction is recorded
   through A's tracker and this process subscribes to A's ``events`` (what a waiting
   ``nodectl commit --node A`` does); then the N-EVENT-REPORT goes to B's listener on an
   association opened beforehand. Time: from just before ``send_n_event_report`` to A's
   announcement arriving here (B's tracker commits, NOTIFY, A's tracker, A's PUB).
   ``--runs`` transactions, median and spread.
2. *store*: 1, 2 and 4 nodes (one writer each) on one database; ``--instances`` 5 KiB
   instances sent, split evenly, one ``nodectl send`` per node, all at once. Per stored
   instance: statements and rows (``pg_stat_statements``), commits
   (``pg_stat_database.xact_commit``), WAL bytes (``pg_current_wal_lsn`` delta), each minus
   what the idle nodes cost over as long a window measured just before (their trackers
   poll the outbox). Then one N-ACTION for every stored instance through the first node
   (``nodectl commit``, report on the same association): the same figures per commitment.
3. *database*: no nodes; 1, 2 and 4 processes write index rows as the writers do
   (``Index.record``: one transaction per group, upsert per row) for ``--seconds`` each, in
   groups of 1 (a lone association) and 64 (a writer's largest group): rows per second one
   database takes on this machine, with every client on the same two cores.

Uses the test helpers (``tests.postgres``, ``tests.nodes``) so that the server and the nodes
are started and stopped exactly as the tests do.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench import corpus

SETTINGS = {"fsync": "on", "shared_preload_libraries": "pg_stat_statements", "max_connections": "200"}
_OWN_QUERIES = ("pg_stat_statements", "pg_current_wal_lsn", "pg_stat_database", "pg_wal_lsn_diff")


def main(opts: Any) -> int:
    import psycopg  # noqa: F401  (fail early: the bench needs the PostgreSQL driver)

    from tests.postgres import missing, running_postgres

    reason = missing()
    if reason:
        print(f"cannot run: {reason}", file=sys.stderr)
        return 2
    results: dict[str, Any] = {"load_before": os.getloadavg(), "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
    with running_postgres(SETTINGS) as pg, tempfile.TemporaryDirectory(prefix="bench-cluster-") as tmp:
        base = Path(tmp)
        if "wake" in opts.phases:
            results["wake"] = wake(pg.url, base / "wake", opts.runs)
            print(json.dumps({"wake": results["wake"]}, indent=1), flush=True)
        if "store" in opts.phases:
            files = corpus.ensure("sc", opts.instances).files
            results["store"] = [store(pg.url, base / f"store{n}", n, files) for n in opts.writers]
            print(json.dumps({"store": results["store"]}, indent=1), flush=True)
        if "database" in opts.phases:
            results["database"] = [database(pg.url, n, group, opts.seconds) for group in (1, 64) for n in opts.writers]
            print(json.dumps({"database": results["database"]}, indent=1), flush=True)
    results["load_after"] = os.getloadavg()
    print(json.dumps(results, indent=1))
    if opts.json:
        Path(opts.json).write_text(json.dumps(results, indent=1))
    return 0


# --------------------------------------------------------------------------- nodes


def node_toml(base: Path, name: str, port: int, bus_port: int, database: str) -> Path:
    directory = base / name
    directory.mkdir(parents=True)
    path = directory / "node.toml"
    path.write_text(f"""
[node]
aet = "CLUSTER"
directory = "{directory / 'store'}"
database = "{database}"
run_dir = "{directory / 'run'}"
workers = 1
[[listeners]]
port = {port}
host = "127.0.0.1"
aet = "CLUSTER"
[cluster]
node_id = "{name}"
endpoint = "tcp://127.0.0.1:{bus_port}"
[commitment]
verify = "file"
""")
    return path


@contextmanager
def nodes(base: Path, database: str, count: int) -> Iterator[list[tuple[Any, Path]]]:
    """``count`` nodes on ``database``: (RunningNode, its node.toml), stopped by PID on exit."""
    from tests.nodes import RunningNode
    from tests.support import free_port

    running: list[tuple[Any, Path]] = []
    try:
        for n in range(count):
            name = f"node-{chr(ord('a') + n)}"
            port = free_port()
            toml = node_toml(base, name, port, free_port(), database)
            running.append((RunningNode(["serve", "--config", str(toml)], cwd=toml.parent, port=port), toml))
        for node, _ in running:
            node.wait_ready(timeout=90)
        yield running
    finally:
        for node, _ in running:
            node.stop()


def fresh_database(server: str, name: str) -> str:
    """A new database with pg_stat_statements' view in it."""
    import psycopg

    from tests.postgres import create_database

    url = create_database(server, name)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
    return url


# --------------------------------------------------------------------------- 1. wake


def wake(server: str, base: Path, runs: int) -> dict[str, Any]:
    """N-EVENT-REPORT at B to A's announcement, ``runs`` times."""
    import zmq
    from pynetdicom import AE

    from actors import _bus
    from node import commitment as sc
    from node import config as configuration
    from node.messages import RecordTransaction, unpack

    database = fresh_database(server, "wake")
    ctx = zmq.Context.instance()
    samples: list[float] = []
    with nodes(base, database, 2) as running:
        (node_a, toml_a), (node_b, _) = running
        config_a = configuration.load_file(configuration.short_run_dir(toml_a.parent / "run") / "node.toml")
        tracker = _bus.dealer(ctx, config_a.endpoint("tracker"))
        events = ctx.socket(zmq.SUB)
        events.setsockopt(zmq.LINGER, 0)
        events.connect(config_a.endpoint("events"))
        ae = AE(ae_title="ARCHIVE")
        ae.add_requested_context(sc.SOP_CLASS)
        assoc = ae.associate("127.0.0.1", node_b.port, ae_title="CLUSTER")
        assert assoc.is_established, "no association to node B"
        try:
            for run in range(runs + 1):  # the first is a warm-up
                uid = f"1.2.826.0.1.3680043.2.1125.16.{os.getpid()}.{run}"
                ref = ("1.2.840.10008.5.1.4.1.1.7", f"{uid}.1")
                _bus.request(tracker, RecordTransaction(transaction_uid=uid, refs=[list(ref)], local_aet="CLUSTER",
                                                        peer_aet="ARCHIVE", timeout=600), sender="bench", timeout=10)
                events.setsockopt(zmq.SUBSCRIBE, uid.encode())
                time.sleep(0.2)  # the subscription travels to the PUB (a waiting client subscribes long before)
                report = sc.Report(uid, (sc.Ref(*ref),), ())
                started = time.monotonic()
                status = assoc.send_n_event_report(sc.report_dataset(report), report.event_type, sc.SOP_CLASS, sc.SOP_INSTANCE)
                assert status and int(status[0].Status) == 0, status
                if not events.poll(10_000):
                    raise TimeoutError(f"A never announced {uid}")
                frames = events.recv_multipart()
                elapsed = time.monotonic() - started
                assert unpack(frames[1:]).message.state == "completed"
                events.setsockopt(zmq.UNSUBSCRIBE, uid.encode())
                if run:
                    samples.append(elapsed)
        finally:
            assoc.release()
            tracker.close(0)
            events.close(0)
        notified = node_a.log().count("(notified)")
    ms = sorted(s * 1000 for s in samples)
    return {"runs": runs, "median_ms": round(statistics.median(ms), 1), "min_ms": round(ms[0], 1), "max_ms": round(ms[-1], 1),
            "p90_ms": round(ms[int(0.9 * (len(ms) - 1))], 1), "woken_by_notify": notified, "load": os.getloadavg()}


# --------------------------------------------------------------------------- 2. store


@contextmanager
def measured(database: str) -> Iterator[dict[str, float]]:
    """Statements, rows, commits and WAL bytes of ``database`` while the block runs."""
    import psycopg

    out: dict[str, float] = {}
    with psycopg.connect(database, autocommit=True) as conn:
        conn.execute("SELECT pg_stat_statements_reset()")
        before = _counters(conn)
        started = time.monotonic()
        yield out
        out["seconds"] = time.monotonic() - started
        time.sleep(0.6)  # pg_stat_database is reported by backends at most every 500 ms
        after = _counters(conn)
        out.update({k: after[k] - before[k] for k in ("commits",)})
        out["wal_bytes"] = float(conn.execute("SELECT pg_wal_lsn_diff(%s, %s)", (after["lsn"], before["lsn"])).fetchone()[0])
        own = " AND ".join(f"query NOT LIKE '%%{q}%%'" for q in _OWN_QUERIES)
        calls, rows = conn.execute(
            f"SELECT COALESCE(SUM(calls), 0), COALESCE(SUM(rows), 0) FROM pg_stat_statements WHERE dbid ="
            f" (SELECT oid FROM pg_database WHERE datname = current_database()) AND {own}"
        ).fetchone()
        out["statements"], out["rows"] = float(calls), float(rows)
        out["top"] = [  # type: ignore[assignment]
            (int(c), int(r), " ".join(q.split())[:90]) for c, r, q in conn.execute(
                f"SELECT calls, rows, query FROM pg_stat_statements WHERE dbid ="
                f" (SELECT oid FROM pg_database WHERE datname = current_database()) AND {own} ORDER BY calls DESC LIMIT 8"
            ).fetchall()
        ]


def _counters(conn: Any) -> dict[str, Any]:
    commits, lsn = conn.execute(
        "SELECT xact_commit, pg_current_wal_lsn() FROM pg_stat_database WHERE datname = current_database()"
    ).fetchone()
    return {"commits": float(commits), "lsn": lsn}


def per(work: dict[str, float], idle: dict[str, float], count: int) -> dict[str, float]:
    """Per item: the work window minus the idle nodes' cost over as long a window."""
    scale = work["seconds"] / idle["seconds"] if idle["seconds"] else 0.0
    return {k: round((work[k] - scale * idle[k]) / count, 2) for k in ("statements", "rows", "commits", "wal_bytes")}


def store(server: str, base: Path, writers: int, files: Sequence[Path]) -> dict[str, Any]:
    """``files`` sent to ``writers`` nodes at once; then one N-ACTION for all of them."""
    from tests.support import NODECTL

    database = fresh_database(server, f"store{writers}")
    shares = [list(files[i::writers]) for i in range(writers)]
    with nodes(base, database, writers) as running:
        with measured(database) as idle:
            time.sleep(5.0)
        with measured(database) as work:
            senders = [subprocess.Popen([*NODECTL, "send", "-q", "-aec", "CLUSTER", "127.0.0.1", str(node.port), *map(str, share)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                       for (node, _), share in zip(running, shares)]
            failed = [p.communicate(timeout=600)[1] for p in senders if p.wait(timeout=600) != 0]
        assert not failed, failed
        out = base / "commit"
        out.mkdir()
        with measured(database) as commit:
            result = subprocess.run([*NODECTL, "commit", "-aet", "BENCH", "-aec", "CLUSTER", "-od", str(out), "+crf", "-te", "120",
                                     "127.0.0.1", str(running[0][0].port), *map(str, files)], capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
        report = next(out.glob("*.report.txt")).read_text()
        assert f"Committed instances: {len(files)}" in report, report[:400]
    return {
        "writers": writers, "instances": len(files), "seconds": round(work["seconds"], 2),
        "images_per_s": round(len(files) / work["seconds"], 1), "per_instance": per(work, idle, len(files)),
        "per_commitment": {**per(commit, idle, 1), "instances": len(files), "seconds": round(commit["seconds"], 2)},
        "idle_per_s": {k: round(idle[k] / idle["seconds"], 1) for k in ("statements", "commits", "wal_bytes")},
        "top_statements_store": work["top"], "top_statements_commit": commit["top"], "load": os.getloadavg(),
    }


# --------------------------------------------------------------------------- 3. database


def database(server: str, processes: int, group: int, seconds: float) -> dict[str, Any]:
    """``processes`` clients writing index rows in groups of ``group`` for ``seconds``."""
    url = fresh_database(server, f"db{processes}g{group}")
    from node.index import Index

    Index(url).close()  # migrate once, before the clients race
    clients = [subprocess.Popen([sys.executable, "-m", "bench.cluster", "load", url, str(group), str(seconds), str(n)],
                                stdout=subprocess.PIPE, text=True) for n in range(processes)]
    rows = sum(int(p.communicate(timeout=seconds + 60)[0].split()[-1]) for p in clients)
    return {"processes": processes, "group": group, "seconds": seconds, "rows_per_s": round(rows / seconds, 1), "load": os.getloadavg()}


def load(url: str, group: int, seconds: float, client: int) -> int:
    """One client: rows as the writer records them, until ``seconds`` have passed; prints the count."""
    from node.index import Index, InstanceRow

    index = Index(url, node_id=f"load-{client}")
    written = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        rows = [InstanceRow(sop_instance_uid=f"1.2.3.{client}.{written + i}", sop_class_uid="1.2.840.10008.5.1.4.1.1.7",
                            transfer_syntax="1.2.840.10008.1.2.1", path=f"/store/{client}/{written + i}.dcm", size=5120,
                            study_uid="1.2.3", series_uid="1.2.3.1", patient_id="P", calling_aet="SCU", called_aet="CLUSTER",
                            checksum="0" * 64) for i in range(group)]
        index.record(rows)
        written += group
    index.close()
    print(written)
    return 0


if __name__ == "__main__" and len(sys.argv) == 6 and sys.argv[1] == "load":
    sys.exit(load(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])))
