"""The same actors as threads of one process (inproc transport)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from pydicom import dcmread

from actors.inproc import InprocNode
from node.config import ListenerConfig, NodeConfig
from tests.support import dataset_bytes, have, make_ct


@pytest.mark.skipif(not have("/usr/bin/storescu"), reason="DCMTK (Debian package dcmtk) is not installed")
def test_inproc_node_answers_echo_and_stores_like_the_supervised_one(tmp_path: Path) -> None:
    config = NodeConfig(
        directory=tmp_path / "store",
        database=str(tmp_path / "index.sqlite"),
        run_dir=tmp_path / "run",
        workers=1,
        listeners=(ListenerConfig(port=0, host="127.0.0.1", aet="INPROC"),),
    )
    path = tmp_path / "ct.dcm"
    make_ct(path)
    with InprocNode(config) as node:
        _, port = node.address()
        echo = subprocess.run(["/usr/bin/echoscu", "-aec", "INPROC", "127.0.0.1", str(port)], capture_output=True, timeout=30)
        store = subprocess.run(["/usr/bin/storescu", "-aec", "INPROC", "127.0.0.1", str(port), str(path)], capture_output=True, timeout=30)
    assert echo.returncode == 0 and store.returncode == 0
    stored = tmp_path / "store" / dcmread(path).SOPInstanceUID
    assert dataset_bytes(stored) == dataset_bytes(path)
    assert not node.errors and not any(t.is_alive() for t in node.threads)
