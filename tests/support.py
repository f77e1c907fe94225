"""Helpers every test module shares: free ports, child processes stopped by PID, DICOM files.

Peers (DCMTK, Orthanc, pynetdicom apps, our own node) are started with ``start_process``,
which waits for a ready condition under a deadline, and always stopped with
``stop_process`` by the PID we started: SIGTERM, bounded wait, SIGKILL, wait.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

NODECTL = [sys.executable, "-m", "node.cli"]


_HANDED_OUT: set[int] = set()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago, below the kernel's ephemeral range, and that
    this test process has not handed out before.

    A port the kernel hands out for ``bind(0)`` comes from the range it also uses for
    outgoing connections: with the suite opening thousands of associations, one of them
    could take the port in the seconds before a node or peer binds it ("Address already in
    use"). Below that range a port can only collide with another one picked here: a test
    that takes two ports before binding either (a node's, then a job's --commit-port) got
    the same random port twice in one CI run, so a port is never handed out twice.
    """
    low = _ephemeral_low()
    if len(_HANDED_OUT) > (low - 10000) // 2:  # the suite never gets here; stay usable if it does
        _HANDED_OUT.clear()
    for _ in range(500):
        port = random.randrange(10000, low)
        if port in _HANDED_OUT:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port
    raise OSError(f"no free port found between 10000 and {low}")


def _ephemeral_low() -> int:
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    return low if low > 11000 else 32768


def wait_for_port(port: int, host: str = "127.0.0.1", timeout: float = 15.0) -> None:
    """Wait until something accepts TCP connections on ``host:port``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout} s")


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    """Poll ``predicate`` until true or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise TimeoutError(f"timed out after {timeout} s waiting for {what or predicate}")


def pynetdicom_settled(assoc: Any, timeout: float = 10.0) -> None:
    """Wait until a pynetdicom association's reactor runs again after the previous request.

    pynetdicom pauses its reactor thread around each request and checks that it paused with
    a flag (``_is_paused``) that the reactor clears only once it runs again: a request sent
    right after another one passes that check while the reactor is still waking, the woken
    reactor then takes the response off the queue as an unexpected message, and the request
    waits out the DIMSE timeout (the race of pynetdicom#435, which its checkpoint, #351,
    narrowed but left open; here: test_tracker's second N-ACTION, once in a fresh-clone run).
    Call it before each request after the first on one association. Once the flag reads
    False the reactor is in its 1 ms sleep, so the request's pause is a real one (unless the
    sleep ends in the few microseconds before it). Read only: nothing of pynetdicom's changes.
    """
    deadline = time.monotonic() + timeout
    while assoc._is_paused and assoc.is_established and time.monotonic() < deadline:
        time.sleep(0.0002)


def have(program: str) -> bool:
    """True when ``program`` is on PATH."""
    return shutil.which(program) is not None


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """True when ``host:port`` can be bound (as a new listener would, with SO_REUSEADDR)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def interruptible() -> None:
    """In a child: SIGINT back to its default, as for a program started at a terminal.

    A test run that a non-interactive shell started in the background (``bash .ci/run &``)
    has SIGINT ignored, and an ignored signal is inherited: a Python child then never raises
    KeyboardInterrupt, so a test of what Ctrl-C does would test nothing but the shell.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def die_with_parent() -> None:
    """In a child: SIGTERM when the test process dies, even if its ``finally`` never runs.

    Peers run in their own session (so a signal to the test does not reach them) and would
    outlive a test run that is killed; PR_SET_PDEATHSIG ties them to it.
    """
    import ctypes

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def start_process(
    cmd: Sequence[str],
    *,
    cwd: str | os.PathLike[str] | None = None,
    env: dict[str, str] | None = None,
    log: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start a child in its own process group with output going to ``log``."""
    out = open(log, "wb") if log is not None else subprocess.DEVNULL
    try:
        return subprocess.Popen(
            list(cmd),
            cwd=cwd,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
    finally:
        if log is not None:
            out.close()  # type: ignore[union-attr]


def stop_process(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, grace: float = 15.0) -> int:
    """Stop a child we started, by its PID: ``sig``, bounded wait, then SIGKILL and wait."""
    if proc.poll() is None:
        try:
            os.kill(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=10)
    return proc.returncode


def mount_tmpfs(where: Path, size: str) -> bool:
    """A tmpfs of ``size`` at ``where`` (a full disk on demand; root only): whether it mounted.
    The caller unmounts it (``umount -l``) in its finally."""
    where.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True).returncode == 0


def make_ct(
    path: Path,
    *,
    sop_instance_uid: str | None = None,
    patient_id: str = "PID1",
    pixels: int = 64,
    transfer_syntax: str = ExplicitVRLittleEndian,
    **attributes: object,
) -> Dataset:
    """Write a small CT image file and return its dataset (deterministic but for the UIDs)."""
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_instance_uid or generate_uid()
    ds.StudyInstanceUID = attributes.pop("StudyInstanceUID", None) or generate_uid()
    ds.SeriesInstanceUID = attributes.pop("SeriesInstanceUID", None) or generate_uid()
    ds.PatientID = patient_id
    ds.PatientName = "Test^Patient"
    ds.Modality = "CT"
    ds.StudyDate = "20240102"
    ds.StudyTime = "093000"
    ds.InstanceNumber = 1
    ds.Rows = pixels
    ds.Columns = pixels
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = bytes(range(256)) * (pixels * pixels * 2 // 256)
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = transfer_syntax
    ds.file_meta = meta
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return ds


def dataset_bytes(path: Path) -> bytes:
    """The encoded dataset of a DICOM file, without preamble and file meta: what went on the wire."""
    from pydicom.filereader import read_preamble, _read_file_meta_info

    with open(path, "rb") as fh:
        read_preamble(fh, False)
        _read_file_meta_info(fh)
        return fh.read()


def stored_files(store: Path) -> list[Path]:
    """The instance files of a node's store: everything but its reserved ``.incoming``
    directory (the writer's journal, temp files, spools)."""
    return sorted(p for p in store.rglob("*") if p.is_file() and ".incoming" not in p.relative_to(store).parts)


def associate_or_rejection(ae, host: str, port: int, **kwargs):  # noqa: ANN001, ANN201
    """``ae.associate(host, port, **kwargs)`` and the A-ASSOCIATE-RJ's (result, source, reason)
    as pynetdicom's DUL decoded it, or None if none came.

    ``assoc.is_rejected`` alone is not reliable: pynetdicom's requestor (3.0.4) checks that its
    socket is still connected only after it sent the A-ASSOCIATE-RQ, so a rejection that arrives
    (and closes the connection) before that thread runs again is reported as an abort; seen
    under CPU load. The PDU itself is seen on its reactor thread whatever the timing.
    """
    from pynetdicom import evt
    from pynetdicom.pdu import A_ASSOCIATE_RJ

    seen: list[tuple[int, int, int]] = []

    def on_pdu(event) -> None:  # noqa: ANN001
        if isinstance(event.pdu, A_ASSOCIATE_RJ):
            seen.append((event.pdu.result, event.pdu.source, event.pdu.reason_diagnostic))

    handlers = [*kwargs.pop("evt_handlers", []), (evt.EVT_PDU_RECV, on_pdu)]
    assoc = ae.associate(host, port, evt_handlers=handlers, **kwargs)
    return assoc, (seen[0] if seen else None)
