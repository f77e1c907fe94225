"""``node/tools/_node.py``'s preflight: what a user wrote is checked before any process starts,
and nothing else costs the start-up its imports."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from node import config as configuration
from node.errors import ConfigError
from node.tools import _node


def node_config(tmp_path: Path, **services: str) -> configuration.NodeConfig:
    base = configuration.load(None)
    return replace(base, directory=tmp_path / "store", run_dir=tmp_path / "run", services=replace(base.services, **services))


def test_a_malformed_sop_class_list_fails_before_anything_starts(tmp_path: Path) -> None:
    classes = tmp_path / "sop-classes.properties"
    classes.write_text("1.2.840.10008.5.1.4.1.1.2\n")  # no transfer syntaxes
    with pytest.raises(ConfigError, match="sop classes line 1"):
        _node.preflight(node_config(tmp_path, sop_classes=str(classes)))


def test_a_bad_file_path_pattern_fails_before_anything_starts(tmp_path: Path) -> None:
    config = node_config(tmp_path)
    with pytest.raises(ConfigError):
        _node.preflight(replace(config, store=replace(config.store, filepath="{00080018")))


def test_the_defaults_are_checked_without_importing_pydicom(tmp_path: Path) -> None:
    script = ("import sys; from dataclasses import replace; from pathlib import Path\n"
              "from node import config; from node.tools import _node\n"
              f"_node.preflight(replace(config.load(None), directory=Path({str(tmp_path / 'store')!r}), run_dir=Path({str(tmp_path / 'run')!r})))\n"
              "print(sorted(m for m in sys.modules if m.split('.')[0] in ('pydicom', 'pynetdicom')))")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
