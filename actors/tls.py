"""TLS for listeners with ``tls = true``: one server-side ssl.SSLContext per worker.

The listener never touches TLS: it passes the raw descriptor as for any connection. The
worker holds the connection without a thread until its first byte (the ClientHello) arrives,
then a short-lived thread does the handshake under ``[tls] handshake_timeout`` and hands the
wrapped socket back to the main loop, which starts pynetdicom on it as on a plain one. A
failed handshake (wrong or missing client certificate, protocol or cipher mismatch, a peer
speaking plain DICOM) is logged with the peer address and ends the connection.
"""

from __future__ import annotations

import ssl
import warnings

from node.config import TlsConfig
from node.errors import ConfigError

_VERSIONS = {
    "TLSv1": ssl.TLSVersion.TLSv1, "TLSv1.1": ssl.TLSVersion.TLSv1_1, "TLSv1_1": ssl.TLSVersion.TLSv1_1,
    "TLSv1.2": ssl.TLSVersion.TLSv1_2, "TLSv1_2": ssl.TLSVersion.TLSv1_2,
    "TLSv1.3": ssl.TLSVersion.TLSv1_3, "TLSv1_3": ssl.TLSVersion.TLSv1_3,
}


def server_context(tls: TlsConfig) -> ssl.SSLContext:
    """The context every TLS association of a worker uses; ConfigError says what is wrong."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    versions = sorted(_VERSIONS[name] for name in tls.protocols)
    # OpenSSL takes a range, not a set: the lowest and highest protocol named.
    with warnings.catch_warnings():  # TLS 1.0/1.1 are deprecated in ssl; retired DCMTK profiles name them
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version, ctx.maximum_version = versions[0], versions[-1]
    try:
        ctx.load_cert_chain(tls.certificate, tls.key or None, password=tls.key_password or None)
        if tls.ca:
            ctx.load_verify_locations(cafile=tls.ca)  # certificates, and CRLs for crl_check
        if tls.ciphers:
            ctx.set_ciphers(tls.ciphers)
        if tls.dh_params:
            ctx.load_dh_params(tls.dh_params)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"[tls]: {exc}") from None
    if tls.crl_check == "leaf":
        ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    elif tls.crl_check == "chain":
        ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_CHAIN
    ctx.verify_mode = ssl.CERT_REQUIRED if tls.require_client_cert else (ssl.CERT_OPTIONAL if tls.ca else ssl.CERT_NONE)
    return ctx


def peer_subject(sock: ssl.SSLSocket) -> str:
    """The client certificate's subject for the log, or "-" when it sent none."""
    cert = sock.getpeercert()
    if not cert:
        return "-"
    return ",".join(f"{k}={v}" for rdn in cert.get("subject", ()) for k, v in rdn)
