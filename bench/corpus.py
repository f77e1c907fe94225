"""A deterministic corpus: the same seed gives the same bytes, file for file.

Two sets, written with pydicom as Explicit VR Little Endian files:

* ``ct``: CT Image Storage, 512x512, 16 bits allocated (~512 KiB each), one patient, one
  study, series of 100 images;
* ``sc``: Secondary Capture Image Storage, 64x64, 8 bits (~5 KiB each), 10 patients with one
  study and one series each.

Every UID, pixel and date comes from ``(seed, set, index)``, and the file meta names a fixed
implementation UID, so a file does not depend on the pydicom version, the clock or the order
of generation. A profile needs the first N files of a set; the quick profile's files are the
first files of the full one. Files are cached under ``bench/corpus/seed-<seed>/<set>/`` and
written through a temp file and a rename, so a file that exists is complete. ``digest``
hashes the files a run uses; the results record it.
"""

from __future__ import annotations

import hashlib
import os
import random
from dataclasses import dataclass
from pathlib import Path

CORPUS_ROOT = Path(__file__).resolve().parent / "corpus"
DEFAULT_SEED = 20240611

# Fixed, so the bytes do not change with the pydicom release that wrote them.
IMPLEMENTATION_UID = "1.2.826.0.1.3680043.8.498.1"
IMPLEMENTATION_VERSION = "BENCH_CORPUS_1"

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
SECONDARY_CAPTURE_STORAGE = "1.2.840.10008.5.1.4.1.1.7"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"


@dataclass(frozen=True, slots=True)
class FileSet:
    """The first ``count`` files of one set, ready to send."""

    name: str  # "ct" or "sc"
    files: tuple[Path, ...]

    @property
    def count(self) -> int:
        return len(self.files)

    @property
    def total_bytes(self) -> int:
        return sum(path.stat().st_size for path in self.files)

    def head(self, count: int) -> "FileSet":
        return FileSet(self.name, self.files[:count])

    def split(self, parts: int) -> list[list[Path]]:
        """Contiguous, nearly equal slices (one per parallel sender)."""
        size, extra = divmod(len(self.files), parts)
        out, start = [], 0
        for i in range(parts):
            end = start + size + (1 if i < extra else 0)
            out.append(list(self.files[start:end]))
            start = end
        return [chunk for chunk in out if chunk]


def _uid(seed: int, *parts: object) -> str:
    from pydicom.uid import generate_uid

    return str(generate_uid(entropy_srcs=["bench", str(seed), *map(str, parts)]))


def _dataset(seed: int, kind: str, index: int):  # -> pydicom FileDataset
    from pydicom.dataset import Dataset, FileMetaDataset

    rng = random.Random(f"{seed}/{kind}/{index}")
    ds = Dataset()
    if kind == "ct":
        group, per_group = 0, 100
        patient, series = "CT0001", index // per_group
        ds.SOPClassUID = CT_IMAGE_STORAGE
        ds.Modality = "CT"
        rows = cols = 512
        bits, pixel_bytes = 16, rng.randbytes(512 * 512 * 2)
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.RescaleIntercept = "-1024"
        ds.RescaleSlope = "1"
        ds.SliceThickness = "1.0"
        ds.ImagePositionPatient = ["-250.0", "-250.0", f"{-index * 1.0:.1f}"]
        ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
        ds.PixelSpacing = ["0.9765625", "0.9765625"]
        ds.KVP = "120"
    elif kind == "sc":
        group = index % 10
        patient, series = f"SC{group:04d}", 0
        ds.SOPClassUID = SECONDARY_CAPTURE_STORAGE
        ds.Modality = "OT"
        ds.ConversionType = "WSD"
        rows = cols = 64
        bits, pixel_bytes = 8, rng.randbytes(64 * 64)
    else:
        raise ValueError(f"unknown set {kind!r}")
    ds.SOPInstanceUID = _uid(seed, kind, "instance", index)
    ds.StudyInstanceUID = _uid(seed, kind, "study", group)
    ds.SeriesInstanceUID = _uid(seed, kind, "series", group, series)
    ds.FrameOfReferenceUID = _uid(seed, kind, "frame", group)
    ds.PatientID = patient
    ds.PatientName = f"Bench^{patient}"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20240611"
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = f"{rng.randrange(24):02d}{rng.randrange(60):02d}00"
    ds.AccessionNumber = f"A{group:06d}"
    ds.StudyID = str(group + 1)
    ds.SeriesNumber = series + 1
    ds.InstanceNumber = index + 1
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated = bits
    ds.BitsStored = bits if bits == 8 else 12
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    ds.PixelData = pixel_bytes

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = EXPLICIT_VR_LITTLE_ENDIAN
    meta.ImplementationClassUID = IMPLEMENTATION_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION
    ds.file_meta = meta
    return ds


def _write(ds, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    ds.save_as(tmp, enforce_file_format=True, little_endian=True, implicit_vr=False)
    os.replace(tmp, path)


def ensure(kind: str, count: int, *, seed: int = DEFAULT_SEED, root: Path = CORPUS_ROOT, log=print) -> FileSet:
    """The first ``count`` files of set ``kind``, generated where missing."""
    directory = root / f"seed-{seed}" / kind
    directory.mkdir(parents=True, exist_ok=True)
    paths = tuple(directory / f"{kind}-{i:05d}.dcm" for i in range(count))
    missing = [i for i, path in enumerate(paths) if not path.exists()]
    if missing:
        log(f"corpus: writing {len(missing)} {kind} file(s) to {directory}")
    for i in missing:
        _write(_dataset(seed, kind, i), paths[i])
    return FileSet(kind, paths)


def digest(fileset: FileSet) -> str:
    """SHA-256 over the names and bytes of the files (recorded with every result)."""
    h = hashlib.sha256()
    for path in fileset.files:
        h.update(path.name.encode())
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()
