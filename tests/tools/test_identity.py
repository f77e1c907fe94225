"""The node and every tool introduce themselves with the project's own implementation class
UID and version name, as DCMTK's debug log of each association shows; never pynetdicom's."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from node import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from tests.nodes import serve
from tests.support import make_ct, stored_files
from tests.tools.storepeers import dcmtk_available, dcmtk_storescp, run_nodectl

pytestmark = pytest.mark.skipif(not dcmtk_available(), reason="DCMTK (Debian package dcmtk) is not installed")


def their_identities(log: str) -> list[tuple[str, str]]:
    """(class UID, version name) of every peer in a DCMTK -d log."""
    uids = re.findall(r"Their Implementation Class UID:[ \t]*(\S*)", log)
    names = re.findall(r"Their Implementation Version Name:[ \t]*(\S*)", log)
    return [(uid, name) for uid, name in zip(uids, names) if uid]  # a request dump leaves them empty


def test_identity_constants_are_a_valid_uid_and_version_name() -> None:
    assert re.fullmatch(r"2\.25\.[1-9][0-9]*", IMPLEMENTATION_CLASS_UID) and len(IMPLEMENTATION_CLASS_UID) <= 64
    assert IMPLEMENTATION_VERSION_NAME.startswith("NODECTL_") and len(IMPLEMENTATION_VERSION_NAME) <= 16


def test_every_sending_tool_presents_the_projects_identity(tmp_path: Path) -> None:
    path = tmp_path / "ct.dcm"
    make_ct(path)
    runs = {
        "echo": ("echo", "-aec", "ANY", "127.0.0.1"),
        "echoscu": ("echoscu", "-aec", "ANY", "127.0.0.1"),
        "send": ("send", "127.0.0.1"),
        "storescu": ("storescu", "127.0.0.1"),
    }
    with dcmtk_storescp(tmp_path, "-d") as scp:
        for tool, args in runs.items():
            before = len(their_identities(scp.log.read_text(errors="replace")))
            extra = (str(path),) if tool in ("send", "storescu") else ()
            result = run_nodectl(*args, str(scp.port), *extra)
            assert result.returncode == 0, (tool, result.stderr)
            seen = their_identities(scp.log.read_text(errors="replace"))[before:]
            assert seen and set(seen) == {(IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME)}, (tool, seen)
        assert "PYNETDICOM" not in scp.log.read_text(errors="replace")


def test_the_node_answers_with_its_identity_and_stores_the_senders(tmp_path: Path) -> None:
    node = serve(tmp_path, workers=1)
    try:
        echo = subprocess.run(["/usr/bin/echoscu", "-d", "127.0.0.1", str(node.port)], capture_output=True, text=True, timeout=60)
        assert echo.returncode == 0, echo.stderr
        assert their_identities(echo.stdout + echo.stderr) == [(IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME)]
        path = tmp_path / "ct.dcm"
        make_ct(path)
        store = subprocess.run(["/usr/bin/storescu", "127.0.0.1", str(node.port), str(path)], capture_output=True, text=True, timeout=60)
        assert store.returncode == 0, store.stderr
    finally:
        node.stop()
    from pydicom import dcmread

    [stored] = stored_files(tmp_path / "store")
    meta = dcmread(stored, stop_before_pixels=True).file_meta
    assert meta.ImplementationClassUID.startswith("1.2.276.0.7230010.3")  # DCMTK's, as dcm4che's storescp keeps it
