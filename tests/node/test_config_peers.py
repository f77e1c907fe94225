"""``[[peers]]`` entries with TLS (issue 16 item 3): paths relative to the config file, the
CA required with ``tls = true``, TLS keys refused without it, and a dump that loads back."""

from __future__ import annotations

from pathlib import Path

import pytest

from node import config as configuration
from node.config import PeerConfig
from node.errors import ConfigError

PLAIN = {"aet": "MODALITY", "host": "127.0.0.1", "port": 11113}


def test_tls_peer_paths_are_relative_to_the_config_file(tmp_path: Path) -> None:
    table = {**PLAIN, "tls": True, "ca": "ca.pem", "certificate": "/etc/node/client.pem", "key": "client.key",
             "server_name": "pacs.example"}
    config = configuration.from_mapping({"peers": [table, PLAIN]}, base_dir=tmp_path)
    assert config.peers[0] == PeerConfig(aet="MODALITY", host="127.0.0.1", port=11113, tls=True, ca=str(tmp_path / "ca.pem"),
                                         certificate="/etc/node/client.pem", key=str(tmp_path / "client.key"),
                                         server_name="pacs.example")
    assert config.peers[1] == PeerConfig(aet="MODALITY", host="127.0.0.1", port=11113)


@pytest.mark.parametrize(("extra", "says"), [
    ({"tls": True}, "needs ca"),
    ({"ca": "ca.pem"}, "need tls = true"),
    ({"tls": "yes", "ca": "ca.pem"}, "true or false"),
    ({"tls": True, "ca": "ca.pem", "cert": "x.pem"}, "got aet, ca, cert"),
])
def test_bad_tls_peer_entries_are_refused_with_a_reason(extra: dict[str, object], says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        configuration.from_mapping({"peers": [{**PLAIN, **extra}]})


def test_tls_peers_dump_and_load_back(tmp_path: Path) -> None:
    table = {**PLAIN, "tls": True, "ca": str(tmp_path / "ca.pem")}
    config = configuration.from_mapping({"peers": [table, PLAIN]})
    again = configuration.from_mapping(configuration.to_mapping(config), base_dir=tmp_path)
    assert again.peers == config.peers
