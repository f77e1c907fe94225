"""The tools moved onto the node's engine use no pynetdicom association machinery: their
source imports none of pynetdicom's AE, association, DUL, ACSE, transport or event modules
(its tables are fine), and those that need no pynetdicom at all leave it out of
``sys.modules`` when imported and run against nothing."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

FORBIDDEN = ("pynetdicom.ae", "pynetdicom.association", "pynetdicom.dul", "pynetdicom.acse", "pynetdicom.transport",
             "pynetdicom.events", "pynetdicom.fsm")
MOVED = ("actors.ul_requestor", "node.tools.echoscu", "node.tools.echo", "node.tools.stcomscu", "node.tools.commit",
         "node.tools.storescu", "actors.report_listener")
# Importing any pynetdicom module runs its package __init__, which loads the AE: the tools that
# use pynetdicom's tables (storescu: storage SOP classes, status meanings) are checked in the
# source only.
NO_PYNETDICOM_AT_ALL = ("actors.ul_requestor", "actors.report_listener", "node.tools.echoscu", "node.tools.echo")

_PROBE = """
import sys, importlib
module = importlib.import_module(sys.argv[1])
if hasattr(module, "main"):
    try:
        module.main(["127.0.0.1", "1"])
    except SystemExit:
        pass
print(",".join(name for name in sys.argv[2:] if name in sys.modules))
"""


@pytest.mark.parametrize("module", NO_PYNETDICOM_AT_ALL)
def test_no_pynetdicom_association_is_imported(module: str) -> None:
    done = subprocess.run([sys.executable, "-c", _PROBE, module, *FORBIDDEN], capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "", f"{module} loads {done.stdout.strip()}"


ALLOWED = {"pynetdicom.sop_class", "pynetdicom.presentation", "pynetdicom.dsutils", "pynetdicom.status", "pynetdicom.utils"}


def _pynetdicom_imports(path: Path) -> list[str]:
    """Every pynetdicom module a source file imports, at module level or inside a function."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names if alias.name.startswith("pynetdicom")]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pynetdicom"):
            if node.module == "pynetdicom":
                found += [f"pynetdicom.{alias.name}" for alias in node.names]
            else:
                found.append(node.module)  # type: ignore[arg-type]
    return found


@pytest.mark.parametrize("module", MOVED)
def test_no_pynetdicom_association_in_the_source(module: str) -> None:
    """Also imports inside functions, which the run above may not reach."""
    path = Path(importlib.import_module(module).__file__)  # type: ignore[arg-type]
    assert [name for name in _pynetdicom_imports(path) if name not in ALLOWED] == []
