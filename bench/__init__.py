"""Benchmarks run by hand, never part of the test suite: ``python -m bench ingest [--quick]``.

Modules: ``corpus`` (deterministic test files), ``procs`` (children started and stopped by
PID, process-tree sampling), ``peers`` (receivers and senders), ``limits`` (what the machine
can do), ``ingest`` (the timed matrix), ``report`` (JSON and docs/benchmarks.md).
"""
