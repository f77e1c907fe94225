"""Throwaway certificates for TLS tests (``trustme``): one CA, a server, a client, and a rogue CA.

RSA keys throughout: DCMTK's default TLS 1.2 profile (BCP 195) offers ECDHE-RSA suites only.
Every file is PEM; ``server`` holds the key and the chain (``nodectl serve --tls-cert``),
``server_key``/``server_crt`` the same apart (DCMTK's ``+tls key cert``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Certs:
    dir: Path
    ca: Path
    server: Path
    server_key: Path
    server_crt: Path
    client_key: Path
    client_crt: Path
    rogue_ca: Path
    rogue_key: Path
    rogue_crt: Path
    ca_obj: object


def make_certs(d: Path) -> Certs:
    """Issue everything into directory ``d``."""
    import trustme

    rsa = trustme.KeyType.RSA
    ca, rogue = trustme.CA(key_type=rsa), trustme.CA(key_type=rsa)
    server = ca.issue_cert("localhost", "127.0.0.1", key_type=rsa)
    client = ca.issue_cert("modality.example", key_type=rsa)
    stranger = rogue.issue_cert("stranger.example", key_type=rsa)
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    rogue.cert_pem.write_to_path(str(d / "rogue-ca.pem"))
    server.private_key_and_cert_chain_pem.write_to_path(str(d / "server.pem"))
    server.private_key_pem.write_to_path(str(d / "server.key"))
    server.cert_chain_pems[0].write_to_path(str(d / "server.crt"))
    client.private_key_pem.write_to_path(str(d / "client.key"))
    client.cert_chain_pems[0].write_to_path(str(d / "client.crt"))
    stranger.private_key_pem.write_to_path(str(d / "rogue.key"))
    stranger.cert_chain_pems[0].write_to_path(str(d / "rogue.crt"))
    return Certs(d, d / "ca.pem", d / "server.pem", d / "server.key", d / "server.crt", d / "client.key", d / "client.crt",
                 d / "rogue-ca.pem", d / "rogue.key", d / "rogue.crt", ca)
