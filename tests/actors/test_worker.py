"""actors/worker.py: process-wide settings of a worker process."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# What an association thread does per 512 KiB instance: reads of 64 KiB, each PDV copied out
# of its read, the fragments joined into the dataset; all freed after the answer.
_RECEIVE_LOOP = textwrap.dedent("""
    import os, resource, sys, threading
    sys.path.insert(0, {root!r})
    from actors.worker import keep_dataset_memory
    if {tuned}:
        assert keep_dataset_memory(1 << 20)
    read = os.urandom(1 << 16)
    def one_instance():
        reads = [bytes(bytearray(read)) for _ in range(8)]
        fragments = [r[8:] for r in reads]
        return len(b"".join(fragments))
    faults = []
    def association():
        for _ in range(20):
            one_instance()
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(100):
            one_instance()
        faults.append((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 100)
    thread = threading.Thread(target=association)
    thread.start()
    thread.join()
    print(faults[0])
""")


def _faults_per_instance(tuned: bool) -> float:
    script = _RECEIVE_LOOP.format(root=str(ROOT), tuned=tuned)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    return float(out.stdout.strip())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_a_worker_reuses_the_memory_of_freed_datasets() -> None:
    """Without the thresholds every 512 KiB dataset's pages are mapped, zeroed and faulted in
    again (~370 faults each here); with them the thread's heap keeps and reuses them."""
    assert _faults_per_instance(tuned=False) > 64
    assert _faults_per_instance(tuned=True) < 4
