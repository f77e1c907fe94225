"""[tls], [access] and the association caps: parsed, validated, round-tripped."""

from __future__ import annotations

from pathlib import Path

import pytest

from node import config as configuration
from node.errors import ConfigError


def test_tls_and_access_round_trip_with_paths_relative_to_the_file(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text("""
[[listeners]]
port = 2762
tls = true
[tls]
certificate = "certs/node.pem"
key = "certs/node.key"
ca = "/etc/ca.pem"
require_client_cert = true
protocols = ["TLSv1.3"]
[access.allowed]
NODE = ["MOD1", "MOD2"]
ARCHIVE = "QR"
[network]
max_associations_per_aet = 4
""")
    config = configuration.load_file(path)
    assert config.listeners[0].tls
    assert config.tls.certificate == str(tmp_path / "certs/node.pem") and config.tls.ca == "/etc/ca.pem"
    assert config.access.allowed == {"NODE": ("MOD1", "MOD2"), "ARCHIVE": ("QR",)}
    assert config.network.max_associations_per_aet == 4
    configuration.dump(config, tmp_path / "again.toml")
    again = configuration.load_file(tmp_path / "again.toml")
    assert (again.tls, again.access, again.network, again.listeners) == (config.tls, config.access, config.network, config.listeners)


@pytest.mark.parametrize("text", [
    "[[listeners]]\nport = 1\ntls = true\n",                          # no certificate
    "[tls]\nrequire_client_cert = true\ncertificate = 'a'\nkey = 'b'\n",  # no trust store
    "[tls]\nprotocols = ['SSLv3']\n",
    "[access.allowed]\nNODE = ['BAD\\\\AE']\n",
    "[network]\nmax_associations_per_aet = -1\n",
])
def test_bad_security_settings_are_refused(tmp_path: Path, text: str) -> None:
    path = tmp_path / "node.toml"
    path.write_text(text)
    with pytest.raises(ConfigError):
        configuration.load_file(path)
