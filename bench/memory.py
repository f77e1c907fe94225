"""``python -m bench memory``: peak RSS of every node process while one huge instance arrives.

The issue's target: receiving a single 1 GiB instance keeps every process under 150 MiB
RSS. The instance (a secondary capture with ~1 GiB of pseudo-random pixel data, the same
bytes for the same seed) is cached in bench/corpus/, sent by DCMTK's storescu with
TCP_NODELAY=1, and the node's whole process tree is sampled every 50 ms.
"""

from __future__ import annotations

import os
import random
import subprocess
import tempfile
import time
from pathlib import Path

from bench import procs
from bench.corpus import CORPUS_ROOT
from bench.peers import NodectlServe, base_env

SEND_TIMEOUT_S = 900.0
TARGET_MIB = 150


def huge_instance(size_mib: int, seed: int = 1) -> Path:
    """A deterministic multi-frame instance of ``size_mib`` one-MiB frames (written once)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    path = CORPUS_ROOT / f"huge-{size_mib}MiB-{seed}.dcm"
    if path.exists():
        return path
    rows, columns = 1024, 512  # 16-bit pixels: one MiB per frame
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7.3"  # Multi-frame Grayscale Word Secondary Capture
    ds.NumberOfFrames = size_mib
    ds.SOPInstanceUID = f"2.25.{seed}{size_mib}0042"
    ds.PatientID = "BENCH-HUGE"
    ds.Rows, ds.Columns = rows, columns
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.SamplesPerPixel, ds.PixelRepresentation = 1, 0
    ds.PhotometricInterpretation = "MONOCHROME2"
    block = random.Random(seed).randbytes(1 << 20)
    ds.PixelData = block * size_mib
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    ds.save_as(tmp, enforce_file_format=True)
    os.replace(tmp, path)
    return path


def main(size_mib: int = 1024) -> int:
    """Send the huge instance once; print every process's peak RSS and whether it met the target."""
    path = huge_instance(size_mib)
    receiver = NodectlServe(name="nodectl")
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as scratch:
        receiver.start(Path(scratch), base_env(nodelay=True, node_source=None))
        try:
            sampler = procs.TreeSampler(roots={"node": receiver.pid})
            started = time.monotonic()
            with sampler:
                sent = subprocess.run(["/usr/bin/storescu", "-aec", receiver.aet, procs.LOOPBACK, str(receiver.port), str(path)],
                                      env={**os.environ, "TCP_NODELAY": "1"}, capture_output=True, text=True, timeout=SEND_TIMEOUT_S)
            seconds = time.monotonic() - started
            stored = receiver.stored()
        finally:
            receiver.stop()
    peaks = sampler.by_role()["node"]
    worst = max(p["peak_rss_mib"] for p in peaks)
    print(f"{path.name}: {path.stat().st_size / 2**20:.0f} MiB sent in {seconds:.1f} s "
          f"({path.stat().st_size / 2**20 / seconds:.0f} MiB/s), storescu exit {sent.returncode}, stored {stored}")
    for peak in sorted(peaks, key=lambda p: -p["peak_rss_mib"]):
        print(f"  {peak['peak_rss_mib']:7.1f} MiB  {peak['label']}")
    ok = sent.returncode == 0 and stored == 1 and worst < TARGET_MIB
    print(f"largest process {worst:.1f} MiB: target < {TARGET_MIB} MiB {'met' if ok else 'MISSED'}")
    return 0 if ok else 1
