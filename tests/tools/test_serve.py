"""``nodectl serve`` options: embedded defaults < config file < environment < command line."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from node.errors import ConfigError
from node.tools.serve import build_config, parser
from tests.support import NODECTL


def config_for(argv: list[str], monkeypatch: pytest.MonkeyPatch, env: dict[str, str] | None = None):  # noqa: ANN201
    for key in ("NODECTL_CONFIG", "NODECTL_AET", "NODECTL_PORT", "NODECTL_DIRECTORY", "NODECTL_DATABASE", "NODECTL_WORKERS", "NODECTL_RUN_DIR"):
        monkeypatch.delenv(key, raising=False)
    for key, value in (env or {}).items():
        monkeypatch.setenv(key, value)
    return build_config(parser().parse_args(argv))


def test_defaults_are_port_11112_aet_node_requiring_its_own_title(monkeypatch: pytest.MonkeyPatch) -> None:
    config = config_for([], monkeypatch)
    assert (config.aet, config.listeners[0].port, config.listeners[0].aet) == ("NODE", 11112, "NODE")
    assert config.directory == Path("store") and config.database == "node.sqlite"


def test_options_override_file_and_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "node.toml"
    cfg.write_text('[node]\naet = "FILE"\nworkers = 7\ndirectory = "filestore"\n[[listeners]]\nport = 4000\naet = "FILE"\n')
    config = config_for(["--config", str(cfg), "--port", "4001", "--aet", "CLI", "--directory", "/data/in", "--workers", "3"], monkeypatch, {"NODECTL_WORKERS": "5"})
    assert config.aet == "CLI"
    assert config.listeners[0].port == 4001 and config.listeners[0].aet == "CLI"
    assert config.directory == Path("/data/in")
    assert config.workers == 3


def test_environment_overrides_file_when_no_option(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "node.toml"
    cfg.write_text('[node]\nworkers = 7\n')
    config = config_for(["--config", str(cfg)], monkeypatch, {"NODECTL_WORKERS": "5"})
    assert config.workers == 5


def test_any_called_aet_turns_the_check_off(monkeypatch: pytest.MonkeyPatch) -> None:
    assert config_for(["--any-called-aet"], monkeypatch).listeners[0].aet == ""


def test_invalid_values_are_config_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError):
        config_for(["--workers", "0"], monkeypatch)
    with pytest.raises(ConfigError):
        config_for(["--aet", "AN-AE-TITLE-FAR-TOO-LONG"], monkeypatch)


def test_cli_reports_config_errors_with_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[node]\nbogus = 1\n")
    result = subprocess.run([*NODECTL, "serve", "--config", str(bad)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "bogus" in result.stderr


def test_print_supervisor_config_lists_every_actor(tmp_path: Path) -> None:
    result = subprocess.run([*NODECTL, "serve", "--workers", "3", "--print-supervisor-config"], capture_output=True, text=True, timeout=30, cwd=tmp_path)
    assert result.returncode == 0
    for program in ("[program:writer]", "[program:worker]", "numprocs=3", "[program:listener-11112]"):
        assert program in result.stdout
