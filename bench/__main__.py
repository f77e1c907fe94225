"""``python -m bench ingest [--quick]`` | ``report RESULTS.json`` | ``commit`` | ``profile`` | ``cpu`` | ``memory`` | ``engine`` | ``startstop`` | ``cluster`` | ``send`` | ``sendjob`` | ``codec``."""

from __future__ import annotations

import argparse
import sys


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    ingest = sub.add_parser("ingest", help="C-STORE throughput side by side with DCMTK, pynetdicom and Orthanc")
    ingest.add_argument("--quick", action="store_true", help="100 CT + 500 SC files, 3 runs (fits ~15 min on 2 cores)")
    ingest.add_argument("--runs", type=int, help="runs of every combination (default 5, quick 3)")
    ingest.add_argument("--only", action="append", default=[], metavar="TEXT",
                        help="only combinations whose key contains TEXT, e.g. 'sc/nodelay' or '->nodectl' (repeatable)")
    ingest.add_argument("--sc", type=int, help="override the number of 5 KiB files")
    ingest.add_argument("--ct", type=int, help="override the number of 512 KiB files")
    ingest.add_argument("--nagle-sc", type=int, help="override the number of 5 KiB files sent with Nagle on")
    ingest.add_argument("--skip-limits", action="store_true", help="do not measure the machine's limits")
    ingest.add_argument("--node-ref", metavar="REF", help="run node/ and actors/ as committed at REF (git archive), not the work tree")
    ingest.add_argument("--scratch", metavar="DIR", help="where receivers store (default: the system temp directory)")
    ingest.add_argument("--time-limit", type=float, metavar="S", help="start no sample after S seconds (default 13 min quick, 3 h full)")
    ingest.add_argument("--no-doc", action="store_true", help="write the JSON only, leave docs/benchmarks.md alone")
    ingest.add_argument("--count-flushes", choices=("auto", "perf", "strace", "none"), default="auto",
                        help="how nodectl's flushes are counted: perf in the timed samples, strace in samples of their "
                             "own, or not at all (default: perf where it can count system calls, else strace)")
    report = sub.add_parser("report", help="regenerate docs/benchmarks.md from a results file")
    report.add_argument("results")
    commit = sub.add_parser("commit", help="Storage Commitment: N-ACTION to N-EVENT-REPORT on a new association, and many in flight")
    commit.add_argument("--instances", type=int, default=1000, help="instances stored and referenced by one N-ACTION (default 1000)")
    commit.add_argument("--runs", type=int, default=5, help="timed single transactions after one warm-up (default 5)")
    commit.add_argument("--concurrent", type=int, default=100, help="transactions submitted at once (default 100)")
    commit.add_argument("--per-transaction", type=int, default=10, help="instances in each of those (default 10)")
    commit.add_argument("--threads", type=int, default=10, help="requester threads, one association per transaction (default 10)")
    commit.add_argument("--concurrent-runs", type=int, default=3, help="repetitions of the concurrent phase (default 3)")
    commit.add_argument("--held-runs", type=int, default=0,
                        help="repetitions of the concurrent phase with the report listener closed until every N-ACTION-RSP "
                             "is in (all in flight at once; reports come on the outbox's retries; default 0)")
    commit.add_argument("--same-association", choices=["on", "off"], default="on",
                        help="the node's [commitment] same_association (default on, the node's default)")
    commit.add_argument("--profile", type=float, metavar="S",
                        help="py-spy record the tracker and workers for S seconds from the start of the single runs (give --runs to fill it)")
    commit.add_argument("--node-ref", metavar="REF", help="run node/ and actors/ as committed at REF (git archive), not the work tree")
    memory = sub.add_parser("memory", help="peak RSS of every node process while one huge instance arrives, or of nodectl send")
    memory.add_argument("--size-mib", type=int, default=1024, help="size of the instance (default 1024)")
    memory.add_argument("--send-files", type=int, metavar="N",
                        help="measure `nodectl send` of N 5 KiB files into DCMTK storescp --fork instead (issue: 10000)")
    memory.add_argument("--job-files", type=int, metavar="N",
                        help="measure a `nodectl send --journal` job of N 5 KiB files (hard links under /dev/shm; issue 15: "
                             "1000000), sent and then run again, instead")
    memory.add_argument("--flat", action="store_true", help="with --job-files: every file in one directory")
    memory.add_argument("--jobs", type=int, default=4, help="with --send-files/--job-files: nodectl send -j (default 4)")
    memory.add_argument("--runs", type=int, default=1, help="repetitions (default 1)")
    engine = sub.add_parser("engine", help="CPU per small C-STORE in the upper layer alone: node/ul against the lean codec")
    engine.add_argument("--instances", type=int, default=20000, help="C-STOREs decoded and answered (default 20000)")
    engine.add_argument("--size", type=int, default=5120, help="dataset bytes (default 5120)")
    prof = sub.add_parser("profile", help="py-spy on nodectl serve's worker and writer during a 5 KiB (or 512 KiB) run")
    prof.add_argument("--files", type=int, default=500, help="files per round (default 500)")
    prof.add_argument("--kind", choices=["sc", "ct"], default="sc", help="sc: 5 KiB files (default); ct: 512 KiB files")
    prof.add_argument("--duration", type=int, default=20, help="seconds of recording (default 20)")
    prof.add_argument("--top", type=int, default=15, help="entries to print (default 15)")
    prof.add_argument("--gil", action="store_true",
                      help="only samples of threads holding the GIL (Python's CPU, not its waits in system calls)")
    prof.add_argument("--node-source", metavar="DIR", help="run node/ and actors/ from DIR (default: this work tree)")
    cpu = sub.add_parser("cpu", help="receiver CPU per 5 KiB (or 512 KiB) instance, split by node process (1 and 4 associations)")
    cpu.add_argument("--files", type=int, default=2000, help="files per run (default 2000)")
    cpu.add_argument("--kind", choices=["sc", "ct"], default="sc", help="sc: 5 KiB files (default); ct: 512 KiB files")
    cpu.add_argument("--runs", type=int, default=3, help="runs per sender (default 3)")
    cpu.add_argument("--senders", nargs="+", choices=["dcmtk-1", "dcmtk-4"], default=["dcmtk-1", "dcmtk-4"])
    cpu.add_argument("--node-source", metavar="DIR", help="run node/ and actors/ from DIR (default: this work tree)")
    cpu.add_argument("--baseline", metavar="DIR",
                     help="also run node/ and actors/ from DIR (a git archive) in every round: before/after under the same load")
    cpu.add_argument("--scratch", metavar="DIR", help="where the node stores (default: the system temp directory)")
    cpu.add_argument("--log-level", choices=["debug", "info", "warning"], default="warning",
                     help="the node's log level (default warning, as in bench ingest; info is the node's default)")
    cpu.add_argument("--with-dcmtk", action="store_true",
                     help="also receive with DCMTK storescp (--fork with dcmtk-4) in every round: its CPU and the senders' beside the node's")
    cpu.add_argument("--flushes", action="store_true",
                     help="also count each node process's flushes per instance (perf stat --per-thread, until every file is materialised)")
    startstop = sub.add_parser("startstop", help="exec to first C-ECHO answered, and SIGINT to nothing left running")
    startstop.add_argument("--runs", type=int, default=10, help="runs of each command (default 10)")
    startstop.add_argument("--only", action="append", choices=["echoscp", "storescp", "serve"], help="only this command (repeatable)")
    startstop.add_argument("--json", metavar="FILE", help="write every sample as JSON")
    cluster = sub.add_parser("cluster", help="one PostgreSQL under a cluster: cost per instance and commitment, rows/s, cross-node wake-up")
    cluster.add_argument("--phases", nargs="+", choices=["wake", "store", "database"], default=["wake", "store", "database"])
    cluster.add_argument("--runs", type=int, default=20, help="wake: timed transactions after one warm-up (default 20)")
    cluster.add_argument("--instances", type=int, default=1000, help="store: 5 KiB instances per writer count (default 1000)")
    cluster.add_argument("--writers", type=int, nargs="+", default=[1, 2, 4], help="store, database: writer counts (default 1 2 4)")
    cluster.add_argument("--seconds", type=float, default=10.0, help="database: seconds per run (default 10)")
    cluster.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    send = sub.add_parser("send", help="nodectl send -j 1 and -j 4 against one DCMTK storescu, 5 KiB files into storescp --fork")
    send.add_argument("--files", type=int, default=5000, help="5 KiB files in the job (default 5000, the issue's)")
    send.add_argument("--runs", type=int, default=3, help="rounds, every sender once per round (default 3)")
    send.add_argument("--extra", action="append", default=[], metavar="SENDER",
                      help="another sender per round, e.g. send-1-async-8 or send-2 (repeatable)")
    send.add_argument("--node-source", metavar="DIR", help="run nodectl from DIR (PYTHONPATH), e.g. a git archive of a baseline")
    send.add_argument("--baseline", metavar="DIR",
                      help="also run nodectl send -j 1/-j 4 from DIR (a git archive of node/ and actors/) in every round: before/after under the same load")
    send.add_argument("--scratch", metavar="DIR", help="where storescp writes (default: the system temp directory; /dev/shm for the sender alone)")
    send.add_argument("--dcmtk-defaults", action="store_true",
                      help="DCMTK's processes without TCP_NODELAY=1 (Nagle on, as DCMTK runs unless told): what a site's storescp does")
    send.add_argument("--from-source", action="store_true",
                      help="leave node/ and actors/ uncompiled: with PYTHONDONTWRITEBYTECODE set, every sender then "
                           "compiles its modules at start, which no installed nodectl does (default: compiled first)")
    send.add_argument("--json", metavar="FILE", help="write every sample and the summary as JSON")
    sendjob = sub.add_parser("sendjob", help="issue 15's targets for nodectl send jobs: journal overhead, --commit cost, "
                                              "kill -9 and resume")
    sendjob.add_argument("--parts", nargs="+", choices=["journal", "commit", "resume"], default=["journal", "commit", "resume"])
    sendjob.add_argument("--files", type=int, default=100_000, help="resume: files in the job (default 100000, the issue's)")
    sendjob.add_argument("--journal-files", type=int, default=5000, help="journal: files per run (default 5000)")
    sendjob.add_argument("--commit-files", type=int, default=10_000, help="commit: files per run (default 10000)")
    sendjob.add_argument("--runs", type=int, default=5, help="journal: rounds, with and without once each (default 5)")
    sendjob.add_argument("--commit-runs", type=int, default=3, help="commit: rounds (default 3)")
    sendjob.add_argument("--seed", type=int, default=15, help="resume: seed of the random kill moments (default 15)")
    sendjob.add_argument("--corpus", default="/dev/shm/bench-sendjob", metavar="DIR",
                         help="where the 5 KiB files are written (default /dev/shm/bench-sendjob)")
    sendjob.add_argument("--scratch", metavar="DIR", help="receivers and journals (default: the system temp directory)")
    sendjob.add_argument("--journal-dir", metavar="DIR", help="where the jobs' journals go (default: the system temp directory)")
    sendjob.add_argument("--node-source", metavar="DIR", help="run nodectl from DIR (PYTHONPATH), e.g. a git archive")
    sendjob.add_argument("--from-source", action="store_true",
                         help="leave node/ and actors/ uncompiled (as bench send --from-source; default: compiled first)")
    sendjob.add_argument("--json", metavar="FILE", help="write every sample and the summary as JSON")
    codec = sub.add_parser("codec", help="CPU of the Storage Commitment datasets of one big transaction, in process (issue 15 b)")
    codec.add_argument("--instances", type=int, default=10000, help="instances referenced (default 10000)")
    codec.add_argument("--runs", type=int, default=7, help="runs of each step; the least CPU is printed (default 7)")
    codec.add_argument("--only", default="", metavar="TEXT", help="only steps whose label contains TEXT")
    return p


def main(argv: list[str] | None = None) -> int:
    opts = parser().parse_args(argv)
    if opts.command == "ingest":
        from bench import ingest

        return ingest.main(opts)
    if opts.command == "report":
        import json
        from pathlib import Path

        from bench import report

        path = Path(opts.results)
        report.update_doc(json.loads(path.read_text()), path)
        print(f"regenerated {report.DOC}")
        return 0
    if opts.command == "commit":
        from bench import commit

        return commit.main(opts)
    if opts.command == "memory":
        from bench import memory

        if opts.send_files:
            return memory.send_main(opts.send_files, opts.jobs, opts.runs)
        if opts.job_files:
            return memory.job_main(opts.job_files, opts.jobs, opts.flat)
        return memory.main(opts.size_mib, opts.runs)
    if opts.command == "engine":
        from bench import engine as engine_bench

        return engine_bench.main(opts.instances, opts.size)
    if opts.command == "profile":
        from bench import profile

        return profile.main(opts)
    if opts.command == "cpu":
        from bench import cpu as cpu_bench

        return cpu_bench.main(opts)
    if opts.command == "send":
        from bench import send as send_bench

        return send_bench.main(opts)
    if opts.command == "sendjob":
        from bench import sendjob

        return sendjob.main(opts)
    if opts.command == "startstop":
        from bench import startstop

        return startstop.main(opts)
    if opts.command == "cluster":
        from bench import cluster as cluster_bench

        return cluster_bench.main(opts)
    if opts.command == "codec":
        from bench import codec as codec_bench

        return codec_bench.main(opts.instances, opts.runs, opts.only)
    return 2


if __name__ == "__main__":
    sys.exit(main())
