"""A Storage Commitment SCP over TLS in the test process (pynetdicom), for stcomscu's listener.

No real tool both answers an N-ACTION over TLS and calls back with the N-EVENT-REPORT on a
new TLS association (our node's outbox calls back in plain TCP, Orthanc is not built with
DICOM TLS here), so this peer does: it answers the N-ACTION, then from a thread tries the
report on the SCU's listener once per ``ReportTry`` in order, each with its own client
context (a rogue certificate, plain TCP, the right certificate...), and records how each
went. It binds a free loopback port and is shut down in ``finally``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from tests.support import free_port

SOP_CLASS = "1.2.840.10008.1.20.1"
SOP_INSTANCE = "1.2.840.10008.1.20.1.1"


@dataclass(frozen=True)
class ReportTry:
    """One attempt at delivering the report: a name for the assertions and its TLS context (None: plain)."""

    name: str
    ssl_context: Any


@dataclass
class Outcomes:
    """Per attempt: the N-EVENT-REPORT-RSP status, or why the association did not come up."""

    results: dict[str, str] = field(default_factory=dict)
    done: threading.Event = field(default_factory=threading.Event)


def _report(host: str, port: int, calling: str, called: str, dataset: Any, attempt: ReportTry) -> str:
    from pynetdicom import AE, build_role

    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = 10
    ae.add_requested_context(SOP_CLASS)
    tls_args = (attempt.ssl_context, None) if attempt.ssl_context is not None else None
    assoc = ae.associate(host, port, ae_title=called, ext_neg=[build_role(SOP_CLASS, scp_role=True)], tls_args=tls_args)
    if not assoc.is_established:
        return "aborted" if assoc.is_aborted else "not established"
    try:
        rsp, _ = assoc.send_n_event_report(dataset, 1, SOP_CLASS, SOP_INSTANCE)
        return f"status 0x{int(rsp.Status):04X}" if rsp is not None and "Status" in rsp else "no response"
    finally:
        if assoc.is_established:
            assoc.release()


@contextmanager
def commitment_scp(server_context: Any, report_port: int, tries: list[ReportTry],
                   ae_title: str = "COMMITSCP") -> Iterator[tuple[int, Outcomes]]:
    """A TLS Storage Commitment SCP on a free port: yields (port, outcomes of the report attempts)."""
    from pynetdicom import AE, evt

    from node import commitment as sc

    outcomes = Outcomes()

    def deliver(calling_aet: str, dataset: Any) -> None:
        try:
            for attempt in tries:
                outcomes.results[attempt.name] = _report("127.0.0.1", report_port, ae_title, calling_aet, dataset, attempt)
        finally:
            outcomes.done.set()

    def on_action(event: Any) -> tuple[int, None]:
        request = sc.parse_request(event.action_type, SOP_CLASS, SOP_INSTANCE, event.action_information)
        report = sc.report_dataset(sc.Report(request.transaction_uid, request.refs, ()))
        calling = str(event.assoc.requestor.ae_title).strip()
        threading.Thread(target=deliver, args=(calling, report), daemon=True).start()
        return 0x0000, None

    ae = AE(ae_title=ae_title)
    ae.add_supported_context(SOP_CLASS)
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_N_ACTION, on_action)],
                             ssl_context=server_context)
    try:
        yield port, outcomes
    finally:
        server.shutdown()
