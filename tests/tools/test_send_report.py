"""``--summary-json`` written chunk by chunk (``SummaryWriter``): the object a script reads is
the one a single chunk would give, with every chunk's files in order; no network here."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from node.tools.send_report import SUMMARY_VERSION, SummaryWriter


def chunk(first: int, sent: int, failed: int = 0, missing: tuple[str, ...] = ()) -> dict[str, Any]:
    """A chunk's summary as ``send_report.summary`` makes it."""
    return {
        "version": SUMMARY_VERSION, "peer": {"host": "127.0.0.1", "port": 104}, "associations": 1,
        "sent": sent, "failed": failed, "skipped": 1, "bytes": 100 * sent, "seconds": 0.0, "exit_status": 0,
        "files": {
            "sent": [{"path": f"/d/{n}.dcm", "sop_class_uid": "1.2", "sop_instance_uid": f"1.2.{n}", "status": 0}
                     for n in range(first, first + sent)],
            "failed": [{"path": f"/d/f{n}.dcm", "status": 0xA700, "status_hex": "0xA700", "reason": "out of resources",
                        "network": False} for n in range(failed)],
            "skipped": [{"path": f"/d/s{first}.txt", "reason": "not a DICOM file (no DICM preamble)"}],
            "missing": list(missing),
        },
    }


def test_chunks_make_one_summary(tmp_path: Path) -> None:
    out = tmp_path / "summary.json"
    writer = SummaryWriter(str(out))
    writer.add(chunk(0, 3, missing=("/gone",)))
    writer.add(chunk(3, 2, failed=1))
    writer.add(chunk(5, 0))
    writer.write(seconds=1.5, exit_status=1, already_acknowledged=7, job={"acknowledged": 12})
    writer.close()
    summary = json.loads(out.read_text())
    assert (summary["sent"], summary["failed"], summary["skipped"], summary["bytes"], summary["associations"]) == (5, 1, 3, 500, 3)
    assert (summary["seconds"], summary["exit_status"], summary["already_acknowledged"]) == (1.5, 1, 7)
    assert summary["job"] == {"acknowledged": 12} and summary["peer"]["port"] == 104
    assert [item["path"] for item in summary["files"]["sent"]] == [f"/d/{n}.dcm" for n in range(5)]
    assert [item["status_hex"] for item in summary["files"]["failed"]] == ["0xA700"]
    assert len(summary["files"]["skipped"]) == 3 and summary["files"]["missing"] == ["/gone"]
    assert not list(tmp_path.glob("summary.json.tmp*")), "written by rename, nothing left beside it"


def test_empty_lists_and_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    writer = SummaryWriter("-")
    writer.add(chunk(0, 0))
    writer.write(seconds=0.1, exit_status=0, already_acknowledged=0)
    writer.close()
    summary = json.loads(capsys.readouterr().out)
    assert summary["files"]["sent"] == [] and summary["files"]["failed"] == [] and summary["sent"] == 0
