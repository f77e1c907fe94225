"""What this machine can do at best, measured like the transfers (median, min, max of runs).

* loopback: one TCP connection on 127.0.0.1 pushing ``size`` bytes in 1 MiB writes, read by
  a thread with ``recv_into`` (both calls release the GIL);
* durable file creation: temp file, write, fsync, rename, directory fsync, one file at a
  time, as a C-STORE acknowledged only when durable needs it (5 KiB and 512 KiB); each run
  in a directory of its own, kept until the scratch directory goes: files deleted between
  runs made every later run's creations scan past the freed inodes (bench/scratch.py), and
  the rate fell run by run (1,722, 954, 649, 514, 536 files/s, 2026-12-03);
* a journal's flush: a 5 KiB write with ``RWF_DSYNC`` into a preallocated, written file, one
  at a time (what one association's acknowledgment waits for in the node's writer), and the
  CPU one costs the thread that makes it;
* pydicom parse rate: ``dcmread(stop_before_pixels=True)`` over the small files.
"""

from __future__ import annotations

import os
import socket
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path


def spread(values: Sequence[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def loopback_mib_s(size: int = 1 << 30, chunk: int = 1 << 20) -> float:
    """MiB/s of one TCP connection over 127.0.0.1."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    received = [0]

    def drain() -> None:
        conn, _ = server.accept()
        buf = bytearray(chunk)
        with conn:
            while True:
                n = conn.recv_into(buf)
                if not n:
                    break
                received[0] += n

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    payload = b"\0" * chunk
    try:
        client = socket.create_connection(server.getsockname(), timeout=60)
        start = time.perf_counter()
        with client:
            sent = 0
            while sent < size:
                client.sendall(payload)
                sent += chunk
        reader.join(timeout=60)
        elapsed = time.perf_counter() - start
    finally:
        server.close()
    if received[0] != size:
        raise RuntimeError(f"loopback: {received[0]} of {size} bytes arrived")
    return size / elapsed / 2**20


def durable_creates_per_s(directory: Path, size: int, count: int) -> float:
    """Files per second made durable one by one: temp, write, fsync, rename, fsync dir."""
    directory.mkdir(parents=True, exist_ok=True)
    data = os.urandom(size)
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        start = time.perf_counter()
        for i in range(count):
            tmp = directory / f".tmp-{i}"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, directory / f"f-{i}")
            os.fsync(dir_fd)
        elapsed = time.perf_counter() - start
    finally:
        os.close(dir_fd)
    return count / elapsed


def dsync_writes(path: Path, size: int, count: int) -> tuple[float, float]:
    """Writes per second made durable one by one with ``pwritev2(..., RWF_DSYNC)`` into a file
    whose blocks are already written (the journal's case: no allocation, data and a cache flush),
    and the CPU each costs the thread that waits for it, in µs (kernel time mostly: what a
    flush shared by more instances would save a CPU-bound node, beside the wait)."""
    stride = -(-size // 4096) * 4096
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        zeros = bytes(1 << 20)
        for _ in range(-(-stride * count // len(zeros))):
            os.write(fd, zeros)
        os.fsync(fd)
        data = [os.urandom(size)]
        start, cpu = time.perf_counter(), time.thread_time()
        for i in range(count):
            os.pwritev(fd, data, i * stride, os.RWF_DSYNC)
        elapsed, cpu = time.perf_counter() - start, time.thread_time() - cpu
    finally:
        os.close(fd)
    return count / elapsed, cpu / count * 1e6


def parse_per_s(files: Sequence[Path]) -> float:
    """Files per second pydicom reads up to Pixel Data (the worker's parse, from page cache)."""
    import pydicom

    for path in files[:20]:  # warm the page cache and pydicom's imports
        pydicom.dcmread(path, stop_before_pixels=True)
    start = time.perf_counter()
    for path in files:
        pydicom.dcmread(path, stop_before_pixels=True)
    return len(files) / (time.perf_counter() - start)


def measure(scratch: Path, small_files: Sequence[Path], *, runs: int, creates: tuple[int, int], loop_bytes: int, log: Callable[[str], None] = print) -> dict:
    """Every limit, ``runs`` times each."""
    out: dict[str, dict] = {}
    values: dict[str, list[float]] = {"loopback_mib_s": [], "fsync_creates_5k_per_s": [], "fsync_creates_512k_per_s": [],
                                      "dsync_writes_5k_per_s": [], "dsync_write_5k_cpu_us": [], "pydicom_parse_sc_per_s": []}
    for i in range(runs):
        values["loopback_mib_s"].append(loopback_mib_s(loop_bytes))
        values["fsync_creates_5k_per_s"].append(durable_creates_per_s(scratch / "fsync" / f"{i}-5k", 5 * 1024, creates[0]))
        values["fsync_creates_512k_per_s"].append(durable_creates_per_s(scratch / "fsync" / f"{i}-512k", 512 * 1024, creates[1]))
        rate, cpu_us = dsync_writes(scratch / "fsync" / f"{i}-journal", 5 * 1024, creates[0])
        values["dsync_writes_5k_per_s"].append(rate)
        values["dsync_write_5k_cpu_us"].append(cpu_us)
        values["pydicom_parse_sc_per_s"].append(parse_per_s(small_files))
        log(f"limits run {i + 1}/{runs}: " + ", ".join(f"{k}={v[-1]:.0f}" for k, v in values.items()))
    for key, vals in values.items():
        out[key] = spread(vals)
    out["setup"] = {"loopback_bytes": loop_bytes, "fsync_files": list(creates), "parse_files": len(small_files)}
    return out
