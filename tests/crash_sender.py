"""A stubborn C-STORE sender for crash tests: every file until it gets a status, one JSON line each.

Run as a subprocess (``python -m tests.crash_sender host port out.jsonl file ...``) while a test
kills the node's actors. For each file it keeps trying (new association after a drop, short
back-off) until the node answers with a status or the attempt/time budget is spent. Each answer
is appended to ``out.jsonl`` and flushed at once, so what the sender was told survives even if
the sender itself is stopped: ``{"uid", "status", "attempt", "resend"}``. With ``--resend N``
every N-th acknowledged file is sent once more on purpose (a duplicate by SOP Instance UID).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from typing import Any, TextIO

from pydicom.filereader import read_file_meta_info

from tests.support import pynetdicom_settled


def _associate(ae: Any, host: str, port: int, aec: str, deadline: float) -> Any | None:
    """An established association, retried with back-off until ``deadline`` (None if never)."""
    pause = 0.1
    while time.monotonic() < deadline:
        assoc = ae.associate(host, port, ae_title=aec)
        if assoc.is_established:
            return assoc
        time.sleep(pause)
        pause = min(pause * 2, 1.0)
    return None


def _send_until_answered(state: dict[str, Any], path: str, opts: argparse.Namespace, deadline: float) -> tuple[int | None, int]:
    """(status, attempts): re-associate after every drop; None if no status within budget."""
    for attempt in range(1, opts.attempts + 1):
        assoc = state.get("assoc")
        if assoc is None or not assoc.is_established:
            assoc = state["assoc"] = _associate(state["ae"], opts.host, opts.port, opts.aec, deadline)
            if assoc is None:
                return None, attempt
        try:
            pynetdicom_settled(assoc)
            status = assoc.send_c_store(path)
        except (RuntimeError, OSError, ValueError):
            status = None
        if status is not None and "Status" in status:
            return int(status.Status), attempt
        state["assoc"] = None
        if time.monotonic() >= deadline:
            return None, attempt
    return None, opts.attempts


def _files(opts: argparse.Namespace) -> Iterator[str]:
    """The given files, then generated ones until --count or the --stop file appears."""
    yield from opts.files
    if not opts.generate:
        return
    from pathlib import Path

    from tests.support import make_ct

    for n in range(opts.count):
        if opts.stop and Path(opts.stop).exists():
            return
        path = Path(opts.generate) / f"{n}.dcm"
        big = bool(opts.big_every) and n % opts.big_every == opts.big_every - 1
        make_ct(path, patient_id=f"CRASH{n}", pixels=512 if big else 64)
        yield str(path)


def _record(out: TextIO, **entry: Any) -> None:
    out.write(json.dumps(entry) + "\n")
    out.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("out")
    parser.add_argument("files", nargs="*")
    parser.add_argument("--generate", help="make --count new CT files in this directory, one before each send")
    parser.add_argument("--count", type=int, default=0)
    parser.add_argument("--big-every", type=int, default=0, help="every N-th generated file is large (512 KiB of pixels: the materialiser writes it by direct I/O)")
    parser.add_argument("--stop", help="stop generating once this file exists")
    parser.add_argument("--aet", default="CRASHSCU")
    parser.add_argument("--aec", default="NODE")
    parser.add_argument("--attempts", type=int, default=30)
    parser.add_argument("--budget", type=float, default=120.0, help="seconds for the whole run")
    parser.add_argument("--resend", type=int, default=0, help="re-send every N-th acknowledged file")
    opts = parser.parse_args(argv)

    from pynetdicom import AE, _config

    _config.STORE_SEND_CHUNKED_DATASET = True
    ae = AE(ae_title=opts.aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 20
    ae.add_requested_context("1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.1.2.1")
    for path in opts.files:
        meta = read_file_meta_info(path)
        ae.add_requested_context(str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID))
    deadline = time.monotonic() + opts.budget
    state: dict[str, Any] = {"ae": ae, "assoc": None}
    acked = 0
    with open(opts.out, "a") as out:
        for path in _files(opts):
            uid = str(read_file_meta_info(path).MediaStorageSOPInstanceUID)
            status, attempts = _send_until_answered(state, path, opts, deadline)
            _record(out, uid=uid, file=path, status=status, attempt=attempts, resend=False)
            if status == 0:
                acked += 1
                if opts.resend and acked % opts.resend == 0:
                    again, attempts = _send_until_answered(state, path, opts, deadline)
                    _record(out, uid=uid, file=path, status=again, attempt=attempts, resend=True)
            if time.monotonic() >= deadline:
                break
    if state.get("assoc") is not None and state["assoc"].is_established:
        state["assoc"].release()
    return 0


if __name__ == "__main__":
    sys.exit(main())
