"""dcm4che's TLS options (storescp, and any tool that wants them) mapped onto ``[tls]``.

dcm4che takes Java key stores; nodectl takes PEM files, and PKCS#12 files converted to PEM
at start-up (``cryptography``), so dcm4che's ``.p12`` stores work unchanged:

| dcm4che | nodectl |
| --- | --- |
| ``--key-store F`` (PKCS12, or a PEM file with certificate chain and key) | ``[tls] certificate`` (+ ``key``) |
| ``--key-store-pass`` / ``--key-pass`` (default ``secret``) | PKCS12 password (the key password wins) |
| ``--trust-store F`` (PKCS12 certificates, or a PEM bundle) | ``[tls] ca`` |
| ``--key-store-type`` / ``--trust-store-type`` ``PKCS12`` / ``PEM`` | same; ``JKS`` is refused (convert with keytool) |
| ``--tls`` / ``--tls-null`` / ``--tls-3des`` / ``--tls-aes`` / ``--tls-cipher`` | ``ciphers`` (OpenSSL names; TLS 1.2 and lower) |
| ``--tls-protocol`` / ``--tls1`` ``--tls11`` ``--tls12`` ``--tls13`` | ``protocols`` (a range: lowest to highest named) |
| ``--tls-noauth`` | ``require_client_cert = false`` (default: required, as dcm4che) |
| ``--ssl3``, ``--ssl2Hello`` | refused (exit 2; OpenSSL has no SSLv3) / ignored (a Java hello format) |
| ``--tls-eia-https`` / ``--tls-eia-ldaps`` | accepted, no effect: a server verifies no host name |

dcm4che's built-in ``resource:key.p12`` / ``resource:cacerts.p12`` test stores are not
shipped: without ``--key-store`` (and, with client authentication, ``--trust-store``) TLS
refuses to start, exit 2.

Client tools (``nodectl send``) take nodectl's own ``--tls-ca/--tls-cert/--tls-key/
--tls-min-version/--tls-ciphers``, named like ``nodectl serve``'s ``--tls-*`` (bottom of this
module); DCMTK-family tools take DCMTK's options (``node/tools/dcmtk_tls.py``).
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from node.errors import ConfigError

if TYPE_CHECKING:  # apply() imports it: node.config costs ~30 ms of start-up that nodectl send never uses
    from node.config import NodeConfig

# Java/IANA cipher suite names dcm4che users pass, and OpenSSL's names for them.
CIPHERS = {
    "SSL_RSA_WITH_NULL_SHA": "NULL-SHA", "TLS_RSA_WITH_NULL_SHA": "NULL-SHA",
    "TLS_RSA_WITH_AES_128_CBC_SHA": "AES128-SHA", "TLS_RSA_WITH_AES_256_CBC_SHA": "AES256-SHA",
    "SSL_RSA_WITH_3DES_EDE_CBC_SHA": "DES-CBC3-SHA", "TLS_RSA_WITH_3DES_EDE_CBC_SHA": "DES-CBC3-SHA",
    "TLS_RSA_WITH_AES_128_GCM_SHA256": "AES128-GCM-SHA256", "TLS_RSA_WITH_AES_256_GCM_SHA384": "AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_DHE_RSA_WITH_AES_128_GCM_SHA256": "DHE-RSA-AES128-GCM-SHA256",
    "TLS_DHE_RSA_WITH_AES_256_GCM_SHA384": "DHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256": "ECDHE-RSA-AES128-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
}
TLS13_SUITES = {"TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"}
CIPHER_SETS = {  # dcm4che's shortcuts, in its precedence order
    "tls": ("SSL_RSA_WITH_NULL_SHA", "TLS_RSA_WITH_AES_128_CBC_SHA", "SSL_RSA_WITH_3DES_EDE_CBC_SHA"),
    "tls_null": ("SSL_RSA_WITH_NULL_SHA",),
    "tls_3des": ("SSL_RSA_WITH_3DES_EDE_CBC_SHA",),
    "tls_aes": ("TLS_RSA_WITH_AES_128_CBC_SHA", "SSL_RSA_WITH_3DES_EDE_CBC_SHA"),
}
PROTOCOL_FLAGS = (("tls13", "TLSv1.3"), ("tls12", "TLSv1.2"), ("tls11", "TLSv1.1"), ("tls1", "TLSv1"))


def add_arguments(p: argparse.ArgumentParser) -> None:
    """dcm4che's TLS options, same spellings and defaults."""
    p.add_argument("--tls", action="store_true", help="enable TLS (NULL, AES or 3DES cipher suites)")
    p.add_argument("--tls-null", action="store_true", help="enable TLS without encryption")
    p.add_argument("--tls-3des", action="store_true", help="enable TLS with 3DES encryption")
    p.add_argument("--tls-aes", action="store_true", help="enable TLS with AES or 3DES encryption")
    p.add_argument("--tls-cipher", action="append", default=[], metavar="cipher", help="enable TLS with this cipher suite (repeatable)")
    p.add_argument("--tls-protocol", action="append", default=[], metavar="protocol", help="TLS protocol (repeatable; default TLSv1.2)")
    for flag, protocol in PROTOCOL_FLAGS:
        p.add_argument(f"--{flag}", action="store_true", help=f"use {protocol}")
    p.add_argument("--ssl3", action="store_true", help="SSLv3 (refused: not available)")
    p.add_argument("--ssl2Hello", action="store_true", help="accepted, ignored (Java's SSLv2Hello format)")
    p.add_argument("--tls-noauth", action="store_true", help="do not require a client certificate")
    p.add_argument("--tls-eia-https", action="store_true", help="accepted; no effect on a server")
    p.add_argument("--tls-eia-ldaps", action="store_true", help="accepted; no effect on a server")
    p.add_argument("--key-store", metavar="file", help="our certificate and key: PKCS12 or PEM file")
    p.add_argument("--key-store-type", default="PKCS12", metavar="type")
    p.add_argument("--key-store-pass", default="secret", metavar="password")
    p.add_argument("--key-pass", metavar="password", help="key password (default: the key store password)")
    p.add_argument("--trust-store", metavar="file", help="trusted CA certificates: PKCS12 or PEM file")
    p.add_argument("--trust-store-type", default="PKCS12", metavar="type")
    p.add_argument("--trust-store-pass", default="secret", metavar="password")


def requested(opts: argparse.Namespace) -> bool:
    """dcm4che turns TLS on when any cipher option is given."""
    return bool(opts.tls or opts.tls_null or opts.tls_3des or opts.tls_aes or opts.tls_cipher)


def ciphers(opts: argparse.Namespace) -> str:
    """The OpenSSL cipher string for the cipher options, dcm4che's precedence."""
    for name, suites in CIPHER_SETS.items():
        if getattr(opts, name):
            chosen: tuple[str, ...] = suites
            break
    else:
        chosen = tuple(opts.tls_cipher)
    names = []
    for suite in chosen:
        if suite in TLS13_SUITES:
            continue  # TLS 1.3 suites are always on when TLS 1.3 is
        if suite not in CIPHERS and not all(c.isalnum() or c == "-" for c in suite):
            raise ConfigError(f"--tls-cipher {suite}: unknown cipher suite")
        names.append(CIPHERS.get(suite, suite))
    if "NULL-SHA" in names:
        names.append("@SECLEVEL=0")  # OpenSSL refuses unencrypted suites above level 0
    return ":".join(names)


def protocols(opts: argparse.Namespace) -> tuple[str, ...]:
    """--tls-protocol values, else the first shortcut flag, else dcm4che's TLSv1.2."""
    if opts.ssl3 or "SSLv3" in opts.tls_protocol:
        raise ConfigError("SSLv3 is not available (OpenSSL has no SSLv3); use --tls12 or --tls13")
    chosen = [p for p in opts.tls_protocol if p != "SSLv2Hello"]
    if not chosen:
        chosen = [protocol for flag, protocol in PROTOCOL_FLAGS if getattr(opts, flag)][:1] or ["TLSv1.2"]
    return tuple(chosen)


def apply(config: NodeConfig, opts: argparse.Namespace, workdir: Path) -> NodeConfig:
    """TLS on every listener of ``config`` as the options say; PKCS12 stores become PEM in ``workdir``."""
    from node.config import TlsConfig  # here: see the TYPE_CHECKING import above

    if not requested(opts):
        return config
    if not opts.key_store or opts.key_store.startswith("resource:"):
        raise ConfigError("--key-store is required for TLS (dcm4che's built-in resource:key.p12 is not shipped)")
    require = not opts.tls_noauth
    if require and (not opts.trust_store or opts.trust_store.startswith("resource:")):
        raise ConfigError("client authentication needs --trust-store (or --tls-noauth); resource:cacerts.p12 is not shipped")
    certificate = key_store_pem(Path(opts.key_store), opts.key_store_type, opts.key_pass or opts.key_store_pass, workdir)
    ca = trust_store_pem(Path(opts.trust_store), opts.trust_store_type, opts.trust_store_pass, workdir) if opts.trust_store else ""
    tls = TlsConfig(certificate=certificate, ca=ca, protocols=protocols(opts), ciphers=ciphers(opts), require_client_cert=require)
    return replace(config, tls=tls, listeners=tuple(replace(lc, tls=True) for lc in config.listeners))


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror}") from None


def write_private(workdir: Path, name: str, data: bytes) -> str:
    """A file only we can read (it may hold a private key), in ``workdir`` (created 0700)."""
    workdir.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = workdir / name
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    return str(path)


def _pkcs12(path: Path, store_type: str, password: str, option: str, what: str) -> tuple[Any, Any, list[Any]] | None:
    """Key, certificate and further certificates of a PKCS12 store; None when the file is PEM.

    dcm4che takes Java key stores; we take PKCS12 (converted here) or PEM (used as is).
    """
    if store_type.upper() not in ("PKCS12", "P12", "PEM"):
        raise ConfigError(f"{option} {store_type}: only PKCS12 and PEM (convert JKS with keytool -importkeystore)")
    data = _read(path, what)
    if b"-----BEGIN" in data or store_type.upper() == "PEM":
        return None
    from cryptography.hazmat.primitives.serialization import pkcs12

    try:
        key, cert, extra = pkcs12.load_key_and_certificates(data, password.encode())
    except ValueError as exc:
        raise ConfigError(f"{what} {path}: {exc}") from None
    return key, cert, [c for c in extra if c is not None]


def key_store_pem(path: Path, store_type: str, password: str, workdir: Path) -> str:
    """A PEM file with our certificate chain and private key."""
    loaded = _pkcs12(path, store_type, password, "--key-store-type", "key store")
    if loaded is None:
        return str(path.resolve())
    from cryptography.hazmat.primitives import serialization

    key, cert, extra = loaded
    if key is None or cert is None:
        raise ConfigError(f"key store {path} holds no private key with its certificate")
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    pem += b"".join(c.public_bytes(serialization.Encoding.PEM) for c in [cert, *extra])
    return write_private(workdir, "key-store.pem", pem)


def trust_store_pem(path: Path, store_type: str, password: str, workdir: Path) -> str:
    """A PEM bundle of the trusted CA certificates."""
    loaded = _pkcs12(path, store_type, password, "--trust-store-type", "trust store")
    if loaded is None:
        return str(path.resolve())
    from cryptography.hazmat.primitives import serialization

    _key, cert, extra = loaded
    certs = [c for c in [cert, *extra] if c is not None]
    if not certs:
        raise ConfigError(f"trust store {path} holds no certificate")
    return write_private(workdir, "trust-store.pem", b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs))


# --------------------------------------------------------------------------- nodectl's --tls-* for clients

CLIENT_PROTOCOLS = ("TLSv1.2", "TLSv1.3")


def add_client_arguments(group: Any) -> None:
    """``--tls-*`` for tools that request associations, named like ``nodectl serve``'s."""
    group.add_argument("--tls", action="store_true",
                       help="use TLS, trusting the system's CA certificates (implied by any --tls-* option)")
    group.add_argument("--tls-ca", metavar="PEM", help="trusted CA certificates for the peer's certificate (default: the system's)")
    group.add_argument("--tls-cert", metavar="PEM",
                       help="our certificate chain (and key, if --tls-key is not given), for peers that require one")
    group.add_argument("--tls-key", metavar="PEM", help="private key of --tls-cert (unencrypted PEM)")
    group.add_argument("--tls-min-version", choices=CLIENT_PROTOCOLS, default="TLSv1.2", metavar="VERSION",
                       help="lowest protocol: TLSv1.2 (default) or TLSv1.3")
    group.add_argument("--tls-ciphers", metavar="LIST", help="OpenSSL cipher string for TLS 1.2 (TLS 1.3 suites are OpenSSL's)")


@dataclass(frozen=True, slots=True)
class ClientTls:
    """What ``--tls-*`` decided; plain data, so it crosses into worker processes (an SSLContext does not)."""

    ca: str = ""
    cert: str = ""
    key: str = ""
    min_version: str = "TLSv1.2"
    ciphers: str = ""


def client_tls(opts: argparse.Namespace) -> ClientTls | None:
    """TLS settings from ``--tls-*``, or None without them; ConfigError for what cannot work.

    The context is built once here, so an unreadable file or a bad cipher string is reported
    before any association is attempted.
    """
    if not (opts.tls or opts.tls_ca or opts.tls_cert or opts.tls_key or opts.tls_ciphers
            or opts.tls_min_version != "TLSv1.2"):
        return None
    if opts.tls_key and not opts.tls_cert:
        raise ConfigError("--tls-key needs --tls-cert")
    absolute = {name: str(Path(value).resolve()) if value else "" for name, value in
                (("ca", opts.tls_ca), ("cert", opts.tls_cert), ("key", opts.tls_key))}
    tls = ClientTls(**absolute, min_version=opts.tls_min_version, ciphers=opts.tls_ciphers or "")
    client_context(tls)
    return tls


def client_context(tls: ClientTls) -> Any:
    """The ``ssl.SSLContext`` for an association we request.

    The peer's certificate must chain to ``ca`` (or the system's CAs); its host name is not
    checked, as in DICOM TLS generally (DCMTK, dcm4che): the chain is the authentication.
    """
    import ssl

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3 if tls.min_version == "TLSv1.3" else ssl.TLSVersion.TLSv1_2

    def encrypted() -> str:
        raise ConfigError(f"TLS key {tls.key or tls.cert} is encrypted: give an unencrypted PEM key (readable only by you)")

    try:
        if tls.ca:
            ctx.load_verify_locations(cafile=tls.ca)
        else:
            ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
        if tls.cert:
            ctx.load_cert_chain(tls.cert, tls.key or None, password=encrypted)
        if tls.ciphers:
            ctx.set_ciphers(tls.ciphers)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"TLS: {exc}") from None
    return ctx
