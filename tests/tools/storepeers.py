"""Storage SCP peers for the storescu and send tests: DCMTK storescp and in-test pynetdicom SCPs.

Kept out of ``conftest.py`` because other tool tests share that directory; test modules
import what they use. DCMTK is always called as ``/usr/bin/storescp``: pynetdicom installs a
``storescp`` console script that shadows it on PATH.

Debian's DCMTK leaves Nagle's algorithm on unless ``TCP_NODELAY=1`` is in its environment;
with it off, every C-STORE waits ~40 ms for a delayed ACK, so the fixture sets it.
"""

from __future__ import annotations

import os
import subprocess
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset

from tests.support import NODECTL, free_port, start_process, stop_process, wait_for_port

DCMTK_STORESCP = "/usr/bin/storescp"
RUN_TIMEOUT = 60.0  # seconds any one tool run may take


def dcmtk_available() -> bool:
    return os.access(DCMTK_STORESCP, os.X_OK)


@dataclass(slots=True)
class StoreSCP:
    """A running DCMTK storescp: where it listens and where it writes."""

    port: int
    out: Path
    process: subprocess.Popen[bytes]
    log: Path

    def received(self) -> dict[str, Path]:
        """{SOP Instance UID: file} for every file written so far."""
        files = {}
        for path in sorted(self.out.rglob("*")):
            if path.is_file():
                ds = dcmread(path, stop_before_pixels=True)
                files[str(ds.SOPInstanceUID)] = path
        return files


@contextmanager
def dcmtk_storescp(directory: Path, *options: str) -> Iterator[StoreSCP]:
    """Start ``/usr/bin/storescp`` on a free port writing into ``directory/out``.

    ``--fork`` so that parallel associations are served in parallel, ``+B`` so files are
    written exactly as received and can be compared byte for byte.
    """
    out = directory / "out"
    out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = directory / "storescp.log"
    env = dict(os.environ, TCP_NODELAY="1")
    cmd = [DCMTK_STORESCP, "--fork", "+B", "-od", str(out), *options, str(port)]
    proc = start_process(cmd, env=env, log=log)
    try:
        wait_for_port(port)
        yield StoreSCP(port, out, proc, log)
    finally:
        stop_process(proc)


@dataclass(slots=True)
class Received:
    """What an in-test SCP saw: one entry per C-STORE request, in arrival order."""

    requests: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, **item: Any) -> None:
        with self.lock:
            self.requests.append(item)

    @property
    def uids(self) -> list[str]:
        with self.lock:
            return [item["sop_instance_uid"] for item in self.requests]


StatusFor = Callable[[Dataset, Any], int]


@contextmanager
def pynetdicom_scp(
    status_for: StatusFor | None = None,
    *,
    sop_classes: list[str] | None = None,
    transfer_syntaxes: list[str] | None = None,
    called_aet: str | None = None,
) -> Iterator[tuple[int, Received]]:
    """A pynetdicom Storage SCP in a thread of the test process, bound to port 0.

    ``status_for(dataset, event)`` gives each C-STORE's status (default Success); every
    request is recorded with its Message ID, priority, UIDs, transfer syntax and dataset.
    ``called_aet`` makes it reject other called AE titles.
    """
    from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, StoragePresentationContexts, evt

    received = Received()

    def on_store(event: Any) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        req = event.request
        received.add(
            message_id=req.MessageID,
            priority=req.Priority,
            sop_class_uid=str(req.AffectedSOPClassUID),
            sop_instance_uid=str(req.AffectedSOPInstanceUID),
            transfer_syntax=str(event.context.transfer_syntax),
            dataset=ds,
        )
        return status_for(ds, event) if status_for else 0x0000

    ae = AE(ae_title=called_aet or "ANY-SCP")
    ae.require_called_aet = called_aet is not None
    syntaxes = transfer_syntaxes or list(ALL_TRANSFER_SYNTAXES)
    classes = sop_classes or [cx.abstract_syntax for cx in StoragePresentationContexts]
    for uid in classes:
        ae.add_supported_context(uid, syntaxes)
    ae.maximum_associations = 16
    server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    try:
        yield server.server_address[1], received
    finally:
        server.shutdown()


def run_nodectl(*args: str, timeout: float = RUN_TIMEOUT) -> subprocess.CompletedProcess[str]:
    """Run ``nodectl`` as a user would (a child process), capture output, bounded in time."""
    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, PYTHONPATH=str(root) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run(
        [*NODECTL, *args], capture_output=True, text=True, timeout=timeout, cwd=root, env=env,
        stdin=subprocess.DEVNULL,
    )


__all__ = [
    "DCMTK_STORESCP", "Received", "StoreSCP", "dcmtk_available", "dcmtk_storescp",
    "pynetdicom_scp", "run_nodectl",
]
