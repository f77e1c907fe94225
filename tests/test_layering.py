"""No pynetdicom association machinery in the node or its runtime (issue 13).

node/ul is the one DICOM upper layer: pynetdicom's codecs (``pdu``, ``pdu_primitives``,
``dimse_messages``, ``presentation``) may serve it, its association, DUL, ACSE, AE and
transport modules may not be imported anywhere in node/ or actors/. The check reads every
module's syntax tree, so an import inside a function counts as much as one at the top.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FORBIDDEN = frozenset({"association", "dul", "acse", "ae", "transport"})
# Names pynetdicom's package re-exports from those modules.
FORBIDDEN_NAMES = frozenset({"AE", "Association", "ApplicationEntity", "AssociationServer", "AssociationSocket", *FORBIDDEN})

def forbidden_imports(source: str) -> list[str]:
    """Every import of a forbidden pynetdicom module in ``source``, as written."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names
                      if alias.name.startswith("pynetdicom.") and alias.name.split(".")[1] in FORBIDDEN]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            parts = node.module.split(".")
            if parts[0] != "pynetdicom":
                continue
            if len(parts) > 1 and parts[1] in FORBIDDEN:
                found.append(f"from {node.module} import ...")
            elif len(parts) == 1:
                found += [f"from pynetdicom import {alias.name}" for alias in node.names if alias.name in FORBIDDEN_NAMES]
    return found


def modules() -> list[str]:
    return sorted(str(path.relative_to(ROOT)) for package in ("node", "actors") for path in (ROOT / package).rglob("*.py"))


def test_the_check_finds_every_spelling() -> None:
    source = ("import pynetdicom.dul\nfrom pynetdicom.association import Association\nfrom pynetdicom import AE, evt\n"
              "def f():\n    from pynetdicom import acse\n")
    assert forbidden_imports(source) == ["pynetdicom.dul", "from pynetdicom.association import ...",
                                         "from pynetdicom import AE", "from pynetdicom import acse"]
    assert forbidden_imports("from pynetdicom.pdu import P_DATA_TF\nfrom pynetdicom import evt, build_role\n") == []


@pytest.mark.parametrize("module", modules())
def test_no_pynetdicom_association_machinery(module: str) -> None:
    assert forbidden_imports((ROOT / module).read_text()) == []
