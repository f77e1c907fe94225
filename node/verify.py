"""Is a stored instance still what was stored? Checksums taken at write time, checked later.

Storage Commitment with ``[commitment] verify = "file"`` (issue 16) reports an instance
committed only when its file is present with the size and checksum the index recorded.
The node that holds the file checks it: the local tracker for its own instances (or for a
store on a filesystem every node mounts), the owning node's writer for the others
(``VerifyInstances`` over the bus). File reads only; no sockets.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from node.storage import PREAMBLE

_CHUNK = 1 << 20


def digest_parts(parts: Iterable[bytes | memoryview]) -> str:
    """The checksum of a file the writer is about to write inline: preamble, then the parts."""
    digest = hashlib.sha256(PREAMBLE)
    for part in parts:
        digest.update(part)
    return digest.hexdigest()


def digest_file(path: str) -> str:
    """The checksum of a whole stored file (sha256, hex)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def problem(path: str, size: int, checksum: str) -> str:
    """Why the file at ``path`` is not the instance recorded ('' when it is).

    Without a recorded checksum (rows written before issue 16, or by a single node's
    journal) the size is all that is compared.
    """
    try:
        found = os.stat(path).st_size
    except OSError as exc:
        return f"missing ({exc.strerror})"
    if found != size:
        return f"size {found} != {size} recorded"
    try:
        if not checksum:
            read_first_byte(path)  # readable is all that can be asked
            return ""
        actual = digest_file(path)
    except OSError as exc:
        return f"unreadable ({exc.strerror})"
    return "" if actual == checksum else "checksum differs from the one recorded"


def read_first_byte(path: str) -> None:
    """Read one byte of ``path`` (OSError when it cannot be read), with the system calls
    alone: a commitment of 10,000 instances checks 10,000 files, and ``open`` builds a buffered
    file object and fills its buffer (the whole of a small file) for that byte: twice the CPU."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.read(fd, 1)
    finally:
        os.close(fd)


@dataclass(frozen=True, slots=True)
class Indexed:
    """One instance as the index has it, for a commitment request's evaluation."""

    sop_class_uid: str
    path: str
    size: int
    checksum: str = ""
    node_id: str = ""


@dataclass
class Plan:
    """Who checks which instance of one request (issue 16).

    ``trusted``: the index row is proof (``verify = "index"``); ``local``: this node checks
    the file (it holds it, the row names no node, or no owner endpoint is known, which is the
    shared-filesystem layout); ``remote``: {owner endpoint: UIDs} the owner's writer checks.
    """

    trusted: list[str] = field(default_factory=list)
    local: list[str] = field(default_factory=list)
    remote: dict[str, list[str]] = field(default_factory=dict)


def plan(found: Mapping[str, Indexed], *, mode: str, here: str, endpoints: Mapping[str, str]) -> Plan:
    """Split the instances the index has between trust, a local check and their owners."""
    out = Plan()
    for uid, row in found.items():
        if mode == "index":
            out.trusted.append(uid)
        elif not row.node_id or row.node_id == here or row.node_id not in endpoints:
            out.local.append(uid)
        else:
            out.remote.setdefault(endpoints[row.node_id], []).append(uid)
    return out
