"""The Procfile runs the same processes for development (honcho), pointed at a free port."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import free_port, have, start_process, stop_process, wait_for_port

ROOT = Path(__file__).resolve().parents[1]


def test_procfile_names_only_real_actors() -> None:
    from node.tools.run import ACTORS

    for line in (ROOT / "Procfile").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        name, command = line.split(":", 1)
        words = command.split()
        assert words[:2] == ["nodectl", "run"] and words[2] in ACTORS, line


@pytest.mark.skipif(not have("/usr/bin/echoscu"), reason="DCMTK (Debian package dcmtk) is not installed")
def test_honcho_runs_a_node_that_answers_echo(tmp_path: Path) -> None:
    pytest.importorskip("honcho")
    port = free_port()
    procfile = tmp_path / "Procfile"
    # The listener is selected by its key in deploy/node.toml (11112), its port by NODECTL_PORT.
    procfile.write_text((ROOT / "Procfile").read_text())
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "NODECTL_PORT": str(port),
        "NODECTL_DIRECTORY": str(tmp_path / "store"),
        "NODECTL_DATABASE": str(tmp_path / "node.sqlite"),
        "NODECTL_RUN_DIR": str(tmp_path / "run"),
    }
    proc = start_process([sys.executable, "-m", "honcho", "-f", str(procfile), "-d", str(ROOT), "start"], env=env, cwd=ROOT, log=tmp_path / "honcho.log")
    try:
        wait_for_port(port, timeout=30)
        result = subprocess.run(["/usr/bin/echoscu", "-aec", "NODE", "127.0.0.1", str(port)], capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, (tmp_path / "honcho.log").read_text()
    finally:
        stop_process(proc)
