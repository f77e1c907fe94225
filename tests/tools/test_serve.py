"""``nodectl serve`` options: embedded defaults < config file < environment < command line."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from node.errors import ConfigError
from node.tools.serve import build_config, parser
from tests.nodes import RunningNode
from tests.support import NODECTL, free_port, have


def config_for(argv: list[str], monkeypatch: pytest.MonkeyPatch, env: dict[str, str] | None = None):  # noqa: ANN201
    for key in ("NODECTL_CONFIG", "NODECTL_AET", "NODECTL_PORT", "NODECTL_DIRECTORY", "NODECTL_DATABASE", "NODECTL_WORKERS", "NODECTL_RUN_DIR"):
        monkeypatch.delenv(key, raising=False)
    for key, value in (env or {}).items():
        monkeypatch.setenv(key, value)
    return build_config(parser().parse_args(argv))


def test_defaults_are_port_11112_aet_node_accepting_any_called_title(monkeypatch: pytest.MonkeyPatch) -> None:
    config = config_for([], monkeypatch)
    assert (config.aet, config.listeners[0].port, config.listeners[0].aet) == ("NODE", 11112, "")
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


def test_require_called_aet_turns_the_check_on_and_any_called_aet_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert config_for(["--require-called-aet"], monkeypatch).listeners[0].aet == "NODE"
    assert config_for(["--require-called-aet", "--aet", "MINE"], monkeypatch).listeners[0].aet == "MINE"
    cfg = tmp_path / "node.toml"
    cfg.write_text('[[listeners]]\nport = 4000\naet = "STRICT"\n')
    assert config_for(["--config", str(cfg)], monkeypatch).listeners[0].aet == "STRICT"
    assert config_for(["--config", str(cfg), "--any-called-aet"], monkeypatch).listeners[0].aet == ""


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


@pytest.mark.skipif(not have("/usr/bin/echoscu"), reason="DCMTK (Debian package dcmtk) is not installed")
def test_a_new_users_first_echo_is_answered_and_the_strict_check_refuses_with_reason_7(tmp_path: Path) -> None:
    """``nodectl echo 127.0.0.1 PORT`` and DCMTK's echoscu call ANY-SCP by default: a node with
    its defaults answers both; with --require-called-aet the same echo is refused (reason 7)."""
    port = free_port()
    node = RunningNode(["serve", "--port", str(port), "--workers", "1"], cwd=tmp_path, port=port).wait_ready()
    try:
        ours = subprocess.run([*NODECTL, "echo", "127.0.0.1", str(port)], capture_output=True, text=True, timeout=60)
        assert ours.returncode == 0, ours.stderr
        dcmtk = subprocess.run(["/usr/bin/echoscu", "127.0.0.1", str(port)], capture_output=True, text=True, timeout=60)
        assert dcmtk.returncode == 0, dcmtk.stderr
    finally:
        node.stop()
    strict_dir = tmp_path / "strict"
    strict_dir.mkdir()
    port = free_port()
    strict = RunningNode(["serve", "--port", str(port), "--workers", "1", "--require-called-aet"], cwd=strict_dir, port=port).wait_ready()
    try:
        refused = subprocess.run(["/usr/bin/echoscu", "-v", "127.0.0.1", str(port)], capture_output=True, text=True, timeout=60)
        assert refused.returncode != 0
        assert "Called AE Title Not Recognized" in refused.stdout + refused.stderr
        named = subprocess.run(["/usr/bin/echoscu", "-aec", "NODE", "127.0.0.1", str(port)], capture_output=True, text=True, timeout=60)
        assert named.returncode == 0, named.stderr
    finally:
        strict.stop()
