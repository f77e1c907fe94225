"""Configuration: defaults, TOML, environment, validation, round trip."""

from __future__ import annotations

from pathlib import Path

import pytest

from node import config as configuration
from node.config import ListenerConfig, NodeConfig
from node.errors import ConfigError


def test_embedded_defaults_run_on_11112_as_node() -> None:
    config = configuration.load(None, environ={})
    assert config.aet == "NODE"
    assert config.listeners[0].port == 11112
    assert config.directory == Path("store")
    assert config.database == "node.sqlite"
    assert config.workers >= 1


def test_file_paths_are_relative_to_the_file(tmp_path: Path) -> None:
    cfg = tmp_path / "conf" / "node.toml"
    cfg.parent.mkdir()
    cfg.write_text('[node]\naet = "ARCHIVE"\ndirectory = "data"\nworkers = 3\n[[listeners]]\nport = 104\naccept = ["CT1", "MR1"]\n')
    config = configuration.load(cfg, environ={})
    assert config.aet == "ARCHIVE"
    assert config.directory == cfg.parent.resolve() / "data"
    assert config.workers == 3
    assert config.listeners == (ListenerConfig(port=104, accept=("CT1", "MR1")),)


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    cfg = tmp_path / "node.toml"
    cfg.write_text('[node]\naet = "FILE"\n')
    env = {"NODECTL_CONFIG": str(cfg), "NODECTL_AET": "ENV", "NODECTL_PORT": "2104", "NODECTL_WORKERS": "5"}
    config = configuration.load(None, environ=env)
    assert (config.aet, config.listeners[0].port, config.workers) == ("ENV", 2104, 5)


@pytest.mark.parametrize(
    "text",
    [
        '[node]\nbogus = 1\n',
        '[nodes]\naet = "X"\n',
        '[node]\nworkers = 0\n',
        '[node]\naet = "THIS-AE-TITLE-IS-TOO-LONG"\n',
        '[[listeners]]\nport = 70000\n',
        '[store]\nduplicates = "sometimes"\n',
        '[network]\nmax_associations = "many"\n',
        '[node]\naet = "BAD\\\\AE"\n',
        '[commitment]\nverify = "maybe"\n',
        '[cluster]\nendpoint = "ipc:///tmp/writer.ipc"\n',
    ],
)
def test_invalid_settings_are_refused_with_a_reason(tmp_path: Path, text: str) -> None:
    cfg = tmp_path / "node.toml"
    cfg.write_text(text)
    with pytest.raises(ConfigError):
        configuration.load(cfg, environ={})


def test_broken_toml_is_a_config_error(tmp_path: Path) -> None:
    cfg = tmp_path / "node.toml"
    cfg.write_text("[node\n")
    with pytest.raises(ConfigError, match="node.toml"):
        configuration.load(cfg, environ={})


def test_dump_and_load_round_trip(tmp_path: Path) -> None:
    original = configuration.validate(
        NodeConfig(aet="RT", directory=tmp_path / "s", run_dir=tmp_path / "r", database=str(tmp_path / "i.sqlite"), listeners=(ListenerConfig(port=0, aet="RT", accept=("A",)),))
    )
    path = tmp_path / "effective.toml"
    configuration.dump(original, path)
    assert configuration.load(path, environ={}) == original


def test_endpoints_follow_the_transport(tmp_path: Path) -> None:
    ipc = NodeConfig(run_dir=tmp_path)
    assert ipc.endpoint("writer") == f"ipc://{tmp_path}/writer.ipc"
    assert NodeConfig(transport="inproc").endpoint("writer") == "inproc://writer"
    with pytest.raises(ConfigError):
        NodeConfig(transport="tcp").endpoint("writer")


def test_long_run_dir_is_replaced_by_a_short_one(tmp_path: Path) -> None:
    deep = tmp_path / ("x" * 120)
    assert len(str(configuration.short_run_dir(deep))) < 60
    assert configuration.short_run_dir(Path("/tmp/nd")) == Path("/tmp/nd")
