"""``nodectl status`` on a real running node: processes, restarts, associations, counts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from tests.nodes import serve
from tests.support import NODECTL, have, make_ct, wait_until

pytestmark = pytest.mark.skipif(not have("/usr/bin/storescu"), reason="DCMTK (Debian package dcmtk) is not installed")


def status(cwd: Path, *args: str) -> tuple[int, dict]:
    result = subprocess.run([*NODECTL, "status", "--json", *args], capture_output=True, text=True, timeout=30, cwd=cwd)
    return result.returncode, json.loads(result.stdout) if result.stdout.strip() else {}


def test_status_follows_a_running_node(tmp_path: Path) -> None:
    node = serve(tmp_path, workers=2)
    try:
        # supervisord reports STARTING for its first second (startsecs), and status says so.
        wait_until(lambda: status(tmp_path)[0] == 0, 10, "every process RUNNING")
        code, first = status(tmp_path)
        assert code == 0
        names = sorted(p["name"] for p in first["processes"])
        assert names == sorted(["writer", "tracker", "worker-0", "worker-1", f"listener-{node.port}"])
        assert all(p["state"] == "RUNNING" and p["restarts"] == 0 for p in first["processes"])

        files = [tmp_path / "in" / f"{i}.dcm" for i in range(3)]
        for path in files:
            make_ct(path)
        subprocess.run(["/usr/bin/storescu", "-aec", "NODE", "127.0.0.1", str(node.port), *map(str, files)], check=True, capture_output=True, timeout=60)

        from pynetdicom import AE

        ae = AE()
        ae.add_requested_context("1.2.840.10008.1.1")
        assoc = ae.associate("127.0.0.1", node.port, ae_title="NODE")
        try:
            wait_until(lambda: status(tmp_path)[1]["listeners"][0]["associations"] == 1, 10, "the open association to be counted")
        finally:
            assoc.release()
        code, counted = status(tmp_path)
        assert counted["database"]["instances"] == 3

        victim = next(p for p in counted["processes"] if p["name"] == "worker-0")
        os.kill(victim["pid"], signal.SIGKILL)

        def restarted() -> bool:
            worker = next(p for p in status(tmp_path)[1]["processes"] if p["name"] == "worker-0")
            return worker["state"] == "RUNNING" and worker["pid"] != victim["pid"] and worker["restarts"] == 1

        wait_until(restarted, 15, "worker-0 to be restarted and counted")
        text = subprocess.run([*NODECTL, "status"], capture_output=True, text=True, timeout=30, cwd=tmp_path)
        assert "instances stored: 3" in text.stdout
    finally:
        node.stop()
    code, stopped = status(tmp_path)
    assert code == 1 and stopped["running"] is False


def test_status_without_a_node_says_so(tmp_path: Path) -> None:
    result = subprocess.run([*NODECTL, "status"], capture_output=True, text=True, timeout=30, cwd=tmp_path)
    assert result.returncode == 1
    assert "no running node" in result.stderr
