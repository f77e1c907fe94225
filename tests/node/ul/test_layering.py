"""node/ul stays sans-IO: no sockets, threads, clocks, nor anything of pynetdicom or pydicom."""

from __future__ import annotations

import ast
from pathlib import Path

import node.ul

FORBIDDEN = {"socket", "ssl", "select", "selectors", "threading", "asyncio", "time", "zmq", "pynetdicom", "pydicom",
             "subprocess", "os", "logging"}


def test_the_engine_imports_only_the_standard_librarys_pure_parts() -> None:
    package = Path(node.ul.__file__).parent
    found = {}
    for path in sorted(package.glob("*.py")):
        for node_ in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node_.names] if isinstance(node_, ast.Import) else (
                [node_.module or ""] if isinstance(node_, ast.ImportFrom) else [])
            bad = [n for n in names if n.split(".")[0] in FORBIDDEN]
            if bad:
                found[path.name] = bad
    assert found == {}
