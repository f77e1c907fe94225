"""The layers hold: core (node/) <- runtime (actors/) <- command line (node/tools, node/cli).

The contracts live in pyproject.toml (``[tool.importlinter]``); this runs them as CI does,
with ``lint-imports`` (among them: node/ and actors/ use none of pynetdicom's association
machinery, only its codecs and tables, issue 13), and checks that the core's module list there covers every module of
node/ (a new core module in no layer would be checked by nothing).
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path


ROOT = Path(__file__).resolve().parent.parent
KEPT = ("layers", "core-io", "private", "acyclic", "pynetdicom-machinery")
COMMAND_LINE = {"node.tools", "node.cli"}


def lint_imports(*contracts: str) -> subprocess.CompletedProcess[str]:
    """``lint-imports`` for the named contracts, on the tree of this checkout, no cache written."""
    args = [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())",
            "--no-cache", *(a for c in contracts for a in ("--contract", c))]
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=120)


def contracts() -> dict[str, dict]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    return {c["id"]: c for c in config["contracts"]}


def core_modules() -> set[str]:
    """Every module and package directly in node/, less the command line's."""
    found = {f"node.{p.stem}" for p in (ROOT / "node").glob("*.py") if p.stem != "__init__"}
    found |= {f"node.{p.parent.name}" for p in (ROOT / "node").glob("*/__init__.py")}
    return found - COMMAND_LINE


def test_the_contracts_are_kept() -> None:
    result = lint_imports(*KEPT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_core_module_is_in_the_core_layer_and_kept_off_the_network() -> None:
    listed = contracts()
    core_layer = {m.strip() for m in listed["layers"]["layers"][-1].split(":")}
    assert core_layer == core_modules(), "pyproject.toml: the core layer must list every module of node/ but tools and cli"
    assert set(listed["core-io"]["source_modules"]) == core_layer, "pyproject.toml: core-io's sources are the core layer"
