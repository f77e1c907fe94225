"""Structured logs: with ``--log-format json`` every actor writes one JSON object a line, and
one association's ``assoc`` field can be followed through the listener, worker and writer."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from pydicom import dcmread

from tests.nodes import serve
from tests.support import have, make_ct, wait_until

pytestmark = pytest.mark.skipif(not have("/usr/bin/storescu"), reason="DCMTK not installed (tests.nodes serve)")

REPO = Path(__file__).parents[2]


def json_lines(text: str) -> list[dict]:
    """The node log's JSON objects (supervisord's own lines are not ours)."""
    out = []
    for line in text.splitlines():
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out


def test_one_association_id_runs_through_listener_worker_and_writer(tmp_path: Path) -> None:
    # debug: the writer logs every write (info logs only its failures).
    node = serve(tmp_path, "--log-format", "json", "--log-level", "debug", workers=1)
    try:
        path = tmp_path / "ct.dcm"
        make_ct(path)
        uid = str(dcmread(path).SOPInstanceUID)
        out = subprocess.run([sys.executable, "-m", "tests.raw_store", "127.0.0.1", str(node.port), str(path), "--aec", "NODE"],
                             capture_output=True, text=True, timeout=60, cwd=REPO)
        assert json.loads(out.stdout.splitlines()[-1])["results"][0]["status"] == 0
        wait_until(lambda: any(e.get("actor") == "writer" and e.get("sop") == uid for e in json_lines(node.log())), 10, "the writer's line")
        entries = json_lines(node.log())
        [assoc] = {e["assoc"] for e in entries if e.get("sop") == uid and e.get("actor") == "worker"}
        actors = {e["actor"] for e in entries if e.get("assoc") == assoc}
        assert {"listener", "worker", "writer"} <= actors, actors
        assert all({"time", "level", "pid", "logger", "message"} <= e.keys() for e in entries)
    finally:
        node.stop()
