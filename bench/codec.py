"""``python -m bench codec``: CPU of the Storage Commitment datasets for one big transaction.

Issue 15 b: ``nodectl send --commit`` of 10,000 instances waited ~3.5 s for the node, much of
it pydicom reading the N-ACTION's Referenced SOP Sequence and writing the N-EVENT-REPORT.
This times, in this process and without sockets, each step a 10,000-instance commitment
takes on both sides: the sender encodes the request and reads the report, the tracker reads
the request, the worker (or the tracker's outbox) encodes the report. Figures are the
minimum of ``--runs`` runs of ``time.process_time``: CPU only, so a busy machine (the
shared 2-core one) slows the wall clock, not these.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from node import commitment as sc

CT = "1.2.840.10008.5.1.4.1.1.2"
IMPLICIT = "1.2.840.10008.1.2"
EXPLICIT = "1.2.840.10008.1.2.1"


def refs(n: int) -> tuple[sc.Ref, ...]:
    """``n`` references with realistic (root + 40-odd digits) UIDs."""
    return tuple(sc.Ref(CT, f"1.2.826.0.1.3680043.8.498.{10**30 + i}") for i in range(n))


def best(func: Callable[[], object], runs: int) -> float:
    """The least CPU seconds of ``runs`` calls (noise only ever adds)."""
    times = []
    for _ in range(runs):
        start = time.process_time()
        func()
        times.append(time.process_time() - start)
    return min(times)


def steps(n: int, transfer_syntax: str) -> dict[str, Callable[[], object]]:
    """Each step of one ``n``-instance commitment, as a call with no arguments."""
    request = sc.Request("1.2.3.4.5", refs(n))
    half = n // 2
    report = sc.Report(request.transaction_uid, request.refs[:half],
                       tuple(sc.Failed(r.sop_class_uid, r.sop_instance_uid, sc.REASON_NO_SUCH_OBJECT_INSTANCE)
                             for r in request.refs[half:]))
    request_data = sc.encode(sc.request_dataset(request), transfer_syntax)
    report_data = sc.encode(sc.report_dataset(report), transfer_syntax)
    out: dict[str, Callable[[], object]] = {
        "request: pydicom encode (request_dataset + encode)":
            lambda: sc.encode(sc.request_dataset(request), transfer_syntax),
        "request: parse_request (tracker)":
            lambda: sc.parse_request(1, sc.SOP_CLASS, sc.SOP_INSTANCE, request_data, transfer_syntax),
        "report: pydicom encode (report_dataset + encode)":
            lambda: sc.encode(sc.report_dataset(report), transfer_syntax),
        "report: parse_report": lambda: sc.parse_report(2, sc.SOP_CLASS, sc.SOP_INSTANCE, report_data, transfer_syntax),
        "report: pydicom decode alone": lambda: sc.decode(report_data, transfer_syntax),
    }
    if hasattr(sc, "request_bytes"):
        out["request: request_bytes (what callers use)"] = lambda: sc.request_bytes(request, transfer_syntax)
    if hasattr(sc, "report_bytes"):
        out["report: report_bytes (what callers use)"] = lambda: sc.report_bytes(report, transfer_syntax)
    return out


def main(instances: int, runs: int, only: str = "") -> int:
    for ts, name in ((IMPLICIT, "implicit VR LE"), (EXPLICIT, "explicit VR LE")):
        print(f"{instances} instances, {name}: least CPU of {runs} runs")
        for label, func in steps(instances, ts).items():
            if only in label:
                print(f"  {best(func, runs) * 1000:9.1f} ms  {label}")
    return 0
