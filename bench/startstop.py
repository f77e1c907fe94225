"""``python -m bench startstop``: how long a node takes to answer, and to go away.

Issue 14's two figures, for ``nodectl echoscp``, ``nodectl storescp`` and ``nodectl serve``:

- start: from the exec of ``nodectl`` to the first C-ECHO answered with success. The echo
  is retried as soon as a connection is refused (a raw socket, no sleep longer than 10 ms),
  so the figure is the node's, not the prober's. "port open" is the part until the kernel
  first accepted the connection (from then on a peer waits instead of being refused);
  "CPU to start" the user+system seconds the whole tree spent until that echo (on a loaded
  machine the wall clock mostly measures the other tenants).
- stop: from SIGINT to the moment the ``nodectl`` process has exited, every process it
  started (supervisord and each actor) is gone and the port can be bound again. SIGINT goes
  to an idle node: once the first echo is answered, the run waits until the whole tree has
  spent under ``procs.IDLE_CPU_S`` over ``procs.IDLE_WINDOW_S`` (the actors that start only
  after a listener accepts are done starting), at most ``procs.IDLE_TIMEOUT_S``.

Each run uses a fresh free loopback port and a fresh directory; the median of ``--runs`` and
the spread (min..max) are printed with the load average, and optionally written as JSON.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psutil

from bench import procs

COMMANDS = ("echoscp", "storescp", "serve")
TIMEOUT_S = 60.0


def command(name: str, port: int, root: Path) -> list[str]:
    base = [sys.executable, "-m", "node.cli"]
    if name == "echoscp":
        return [*base, "echoscp", str(port)]
    if name == "storescp":
        return [*base, "storescp", "-b", f"{port}", "--directory", str(root / "store")]
    return [*base, "serve", "--port", str(port), "--host", procs.LOOPBACK, "--directory", str(root / "store"),
            "--database", str(root / "node.sqlite"), "--run-dir", str(root / "run")]


def _echo_rq() -> bytes:
    """An A-ASSOCIATE-RQ proposing Verification, and the C-ECHO-RQ to send once accepted."""
    from pynetdicom.pdu import A_ASSOCIATE_RQ
    from pynetdicom.pdu_primitives import A_ASSOCIATE, ImplementationClassUIDNotification, MaximumLengthNotification
    from pynetdicom.presentation import build_context

    primitive = A_ASSOCIATE()
    primitive.application_context_name = "1.2.840.10008.3.1.1.1"
    primitive.calling_ae_title = "BENCH"
    primitive.called_ae_title = "ANY-SCP"
    context = build_context("1.2.840.10008.1.1", ["1.2.840.10008.1.2"])
    context.context_id = 1
    primitive.presentation_context_definition_list = [context]
    limit = MaximumLengthNotification()
    limit.maximum_length_received = 16382
    implementation = ImplementationClassUIDNotification()
    implementation.implementation_class_uid = "1.2.826.0.1.3680043.9.3811.3.0.4"  # mandatory (PS3.7 D.3.3.2)
    primitive.user_information = [limit, implementation]
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(primitive)
    return pdu.encode()


def _echo_pdata() -> bytes:
    """P-DATA-TF with a C-ECHO-RQ command on context 1 (implicit VR little endian)."""
    from pynetdicom.dimse_primitives import C_ECHO
    from pynetdicom.dsutils import encode
    from pynetdicom.dimse_messages import C_ECHO_RQ

    primitive = C_ECHO()
    primitive.MessageID = 1
    primitive.AffectedSOPClassUID = "1.2.840.10008.1.1"
    message = C_ECHO_RQ()
    message.primitive_to_message(primitive)
    command_set = encode(message.command_set, True, True)
    pdv = bytes([1, 0x03]) + command_set  # context 1, last fragment of a command
    item = len(pdv).to_bytes(4, "big") + pdv
    return bytes([0x04, 0]) + len(item).to_bytes(4, "big") + item


def _read_pdu(sock: socket.socket) -> bytes:
    head = _read_exact(sock, 6)
    return head + _read_exact(sock, int.from_bytes(head[2:6], "big"))


def _read_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("peer closed")
        data += chunk
    return data


def echo_once(port: int, rq: bytes, pdata: bytes, timeout: float, connected: list[float]) -> bool:
    """One association: True when the C-ECHO-RSP status is 0x0000; False when refused.
    The time of the first connection the kernel accepted is appended to ``connected``."""
    try:
        sock = socket.create_connection((procs.LOOPBACK, port), timeout=timeout)
    except (ConnectionRefusedError, socket.timeout):
        return False
    if not connected:
        connected.append(time.monotonic())
    with sock:
        sock.sendall(rq)
        ac = _read_pdu(sock)
        if ac[0] != 0x02:
            raise RuntimeError(f"association not accepted: PDU type {ac[0]:#x}")
        sock.sendall(pdata)
        rsp = _read_pdu(sock)
        # The status element (0000,0900) US, implicit VR: tag, length 2, value.
        at = rsp.find(b"\x00\x00\x00\x09\x02\x00\x00\x00")
        ok = at >= 0 and rsp[at + 8 : at + 10] == b"\x00\x00"
        sock.sendall(bytes([0x05, 0, 0, 0, 0, 4, 0, 0, 0, 0]))  # A-RELEASE-RQ
        try:
            _read_pdu(sock)
        except OSError:
            pass
        return ok


def _port_free(port: int) -> bool:
    """Could a server bind the port again (with SO_REUSEADDR, as every one here does: the
    connection just closed may sit in TIME_WAIT for a minute)?"""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((procs.LOOPBACK, port))
        except OSError:
            return False
        return True


def one_run(name: str, rq: bytes, pdata: bytes, log: Path) -> dict:
    """Start, echo until answered, SIGINT, wait until everything is gone; both durations."""
    port = procs.free_port()
    with tempfile.TemporaryDirectory(prefix="bench-startstop-") as tmp:
        root = Path(tmp)
        cmd = command(name, port, root)
        t0 = time.monotonic()
        proc = procs.start(cmd, log=log, cwd=root)
        try:
            deadline = t0 + TIMEOUT_S
            connected: list[float] = []
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with {proc.returncode} before answering (log: {log})")
                if echo_once(port, rq, pdata, timeout=max(0.1, deadline - time.monotonic()), connected=connected):
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{name} did not answer within {TIMEOUT_S:.0f} s")
                time.sleep(0.01)
            started = time.monotonic() - t0
            cpu = procs.tree_cpu(proc.pid)  # the work of starting, less sensitive to the load than the wall clock
            settled = procs.await_idle(proc.pid)
            tree = procs.tree(proc.pid)
            t1 = time.monotonic()
            os.kill(proc.pid, signal.SIGINT)
            procs.wait_exited(proc, TIMEOUT_S)
            psutil.wait_procs(tree, timeout=max(0.0, t1 + TIMEOUT_S - time.monotonic()))
            while not _port_free(port) and time.monotonic() < t1 + TIMEOUT_S:
                time.sleep(0.005)
            stopped = time.monotonic() - t1
            left = [p.pid for p in tree if _alive(p)]
            return {"start_s": round(started, 3), "connect_s": round(connected[0] - t0, 3), "start_cpu_s": round(cpu, 3), "stop_s": round(stopped, 3), "idle_after_s": round(settled, 3), "processes": len(tree),
                    "exit": proc.returncode, "left_running": left}
        finally:
            procs.stop(proc)


def _alive(proc: psutil.Process) -> bool:
    """Running, not a zombie waiting for its new parent (init) to reap it."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def summary(values: list[float]) -> dict:
    return {"median": round(statistics.median(values), 3), "min": round(min(values), 3), "max": round(max(values), 3)}


def main(opts: object) -> int:
    names = list(getattr(opts, "only", None) or COMMANDS)
    runs = getattr(opts, "runs", 10)
    rq, pdata = _echo_rq(), _echo_pdata()
    results: dict = {"load_before": os.getloadavg(), "cpus": os.cpu_count(), "runs": runs, "commands": {}}
    with tempfile.TemporaryDirectory(prefix="bench-startstop-logs-") as logs:
        for name in names:
            samples = [one_run(name, rq, pdata, Path(logs) / f"{name}-{i}.log") for i in range(runs)]
            entry = {
                "start": summary([s["start_s"] for s in samples]),
                "connect": summary([s["connect_s"] for s in samples]),
                "start_cpu": summary([s["start_cpu_s"] for s in samples]),
                "stop": summary([s["stop_s"] for s in samples]),
                "processes": samples[-1]["processes"],
                "exit_codes": sorted({s["exit"] for s in samples}),
                "left_running": sum(len(s["left_running"]) for s in samples),
                "samples": samples,
            }
            results["commands"][name] = entry
            print(f"{name:9} start median {entry['start']['median']:.3f} s ({entry['start']['min']:.3f}..{entry['start']['max']:.3f})"
                  f"  port open {entry['connect']['median']:.3f} s ({entry['connect']['min']:.3f}..{entry['connect']['max']:.3f})"
                  f"  CPU to start {entry['start_cpu']['median']:.2f} s"
                  f"  stop median {entry['stop']['median']:.3f} s ({entry['stop']['min']:.3f}..{entry['stop']['max']:.3f})"
                  f"  processes {entry['processes']}  exit {entry['exit_codes']}  left running {entry['left_running']}", flush=True)
    results["load_after"] = os.getloadavg()
    print(f"load average before {results['load_before'][0]:.2f}, after {results['load_after'][0]:.2f} on {results['cpus']} CPUs")
    out = getattr(opts, "json", None)
    if out:
        Path(out).write_text(json.dumps(results, indent=2) + "\n")
    return 0
