"""Peers for the echoscu tests: DCMTK and pynetdicom processes, and small in-process SCPs.

Real tools (DCMTK's ``storescp``, ``python -m pynetdicom echoscp``) run as children started
and stopped by PID. Behaviours no real tool offers (answering 0x0110, aborting after the
request, never answering, capturing the A-ASSOCIATE-RQ) are pynetdicom SCPs in this process,
bound to a free loopback port and shut down in ``finally``.

DCMTK is always called by absolute path: pynetdicom installs console scripts named
``echoscu``/``storescp`` that shadow DCMTK's on PATH.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.support import NODECTL, free_port, start_process, stop_process, wait_for_port

REPO = Path(__file__).resolve().parents[2]
DCMTK_ECHOSCU = "/usr/bin/echoscu"
DCMTK_STORESCP = "/usr/bin/storescp"
VERIFICATION = "1.2.840.10008.1.1"


def have_dcmtk() -> bool:
    """DCMTK's binaries are where Debian puts them."""
    return os.access(DCMTK_ECHOSCU, os.X_OK) and os.access(DCMTK_STORESCP, os.X_OK)


needs_dcmtk = pytest.mark.skipif(not have_dcmtk(), reason="DCMTK (/usr/bin/echoscu, storescp) not installed")


def run_ours(*args: str, tool: str = "echoscu", timeout: float = 30, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """``nodectl echoscu ARGS`` as a child process, output captured, bounded in time."""
    return subprocess.run([*NODECTL, tool, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, input=stdin, stdin=None if stdin is not None else subprocess.DEVNULL)


def run_dcmtk(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """DCMTK's echoscu with the same arguments."""
    return subprocess.run([DCMTK_ECHOSCU, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


@pytest.fixture
def dcmtk_storescp(tmp_path: Path) -> Iterator[int]:
    """DCMTK's storescp on a free port (it answers C-ECHO); yields the port."""
    port = free_port()
    proc = start_process([DCMTK_STORESCP, "--output-directory", str(tmp_path), str(port)],
                         log=tmp_path / "storescp.log")
    try:
        wait_for_port(port)
        yield port
    finally:
        stop_process(proc)


@pytest.fixture
def pynetdicom_echoscp(tmp_path: Path) -> Iterator[int]:
    """``python -m pynetdicom echoscp`` on a free port; yields the port."""
    port = free_port()
    proc = start_process([sys.executable, "-m", "pynetdicom", "echoscp", str(port)], log=tmp_path / "echoscp.log")
    try:
        wait_for_port(port)
        yield port
    finally:
        stop_process(proc)


@dataclass
class Seen:
    """What an in-process SCP observed, for assertions."""

    calling: list[str] = field(default_factory=list)
    called: list[str] = field(default_factory=list)
    contexts: list[list[Any]] = field(default_factory=list)
    message_ids: list[int] = field(default_factory=list)
    endings: list[str] = field(default_factory=list)


@contextmanager
def scp(*, echo: Callable[[Any], int] | None = None, ae_title: str = "ANY-SCP", require_called: bool = False,
        verification: bool = True, ssl_context: Any = None) -> Iterator[tuple[int, Seen]]:
    """A pynetdicom SCP in this process on a free loopback port; yields (port, what it saw)."""
    from pynetdicom import AE, evt
    from pynetdicom.sop_class import CTImageStorage

    seen = Seen()

    def on_requested(event: Any) -> None:
        rq = event.assoc.requestor.primitive  # the A-ASSOCIATE-RQ as received
        seen.calling.append(str(rq.calling_ae_title).strip())
        seen.called.append(str(rq.called_ae_title).strip())
        seen.contexts.append([(cx.context_id, cx.abstract_syntax, list(cx.transfer_syntax))
                              for cx in rq.presentation_context_definition_list])

    def on_echo(event: Any) -> int:
        seen.message_ids.append(int(event.request.MessageID))
        return echo(event) if echo else 0x0000

    ae = AE(ae_title=ae_title)
    ae.require_called_aet = require_called
    if verification:
        ae.add_supported_context(VERIFICATION, ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1"])
    else:
        ae.add_supported_context(CTImageStorage)
    handlers = [(evt.EVT_REQUESTED, on_requested), (evt.EVT_C_ECHO, on_echo),
                (evt.EVT_ABORTED, lambda e: seen.endings.append("aborted")),
                (evt.EVT_RELEASED, lambda e: seen.endings.append("released"))]
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=handlers, ssl_context=ssl_context)
    try:
        yield port, seen
    finally:
        server.shutdown()


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Poll a condition under a deadline (peer threads record endings asynchronously)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


# --------------------------------------------------------------------------- TLS (send, stcomscu, commit)


@pytest.fixture(scope="session")
def tls_certs(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """One CA with a server and a client certificate, and a rogue CA (tests/pki.py)."""
    pytest.importorskip("trustme")
    from tests.pki import make_certs

    return make_certs(tmp_path_factory.mktemp("tls-certs"))


@pytest.fixture(scope="session")
def tls_node(tls_certs: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """``nodectl serve --tls-cert --tls-ca`` (client certificates required), AE title NODE, one worker."""
    from tests.nodes import serve

    running = serve(tmp_path_factory.mktemp("tls-node"), "--tls-cert", str(tls_certs.server), "--tls-ca", str(tls_certs.ca),
                    workers=1)
    try:
        yield running
    finally:
        running.stop()
