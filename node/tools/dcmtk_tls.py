"""DCMTK's TLS options (``DcmTLSOptions``) for the DCMTK-family tools, on Python's ``ssl``.

One module for every tool that keeps a DCMTK command line: ``nodectl echoscu``/``echo`` (a
*requestor*: ``+tla``, ``--request-sni``, the offline checks ``+vc``/``+rc``) and ``nodectl
stcomscu``/``commit`` (an *acceptor-requestor*: ``+tls`` only, plus ``+dp``, ``--expect-sni``
and ``-vc`` for its listener). DCMTK builds one transport layer for both directions; so do we:

- :func:`check_options` applies ``DcmTLSOptions::parseArguments``' dependency rules for the
  tool's role (syntax errors exit 1) and returns :class:`TlsSettings`;
- :func:`client_context` is the ``ssl.SSLContext`` for associations we request;
- :func:`server_config` is the node's ``[tls]`` (:class:`node.config.TlsConfig`) for the
  associations a tool's in-process listener accepts: the workers build their server context
  from it (``actors/tls.py``). Key and certificate are written to a private directory, the key
  re-encrypted under a one-time password (no plain private key on disk); trusted certificates
  (``+cf``, every certificate in a ``+cd`` directory) and CRLs become one PEM bundle.

Set-up failures raise :class:`TlsSetupError` with DCMTK's text where DCMTK has one; each tool
logs it and exits with its own code (echoscu 1, stcomscu 71). Unreadable trust files, CRLs,
seed or DH parameter files are warnings, as in DCMTK.

Profiles map to a protocol version range and a TLS 1.2 cipher list (DCMTK's ciphersuite
table, IANA names to OpenSSL names); TLS 1.3 suites cannot be restricted through ``ssl`` and
stay OpenSSL's where a profile allows TLS 1.3. Host names are never checked: DICOM TLS
authenticates the certificate chain.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from node.tools.dcmtk_args import App, CommandLine, Group, Option, ToolExit
from node.tools.tls_options import write_private

EXITCODE_INVALID_INPUT_FILE = 22  # +vc / +rc: the certificate check failed
REQUESTOR = "requestor"
ACCEPTOR_REQUESTOR = "acceptor-requestor"


class TlsSetupError(Exception):
    """The TLS layer cannot be set up as asked; the text says why (DCMTK's wording if it has one)."""


# --------------------------------------------------------------------------- declaration


def option_rows(role: str = REQUESTOR) -> tuple[Option | Group, ...]:
    """The TLS option table (``DcmTLSOptions::addTLSCommandlineOptions``) for a network role.

    Only a requestor has ``+tla``; only a tool that accepts associations has ``+dp``,
    ``--expect-sni`` and ``-vc``.
    """
    acceptor = role != REQUESTOR
    rows: list[Option | Group] = [
        Group("transport layer security (TLS) options:"),
        Group("transport protocol stack:", sub=True),
        Option(long="--disable-tls", short="-tls", help="use normal TCP/IP connection (default)", dest="tls", const=False),
        Option(long="--enable-tls", short="+tls", values=2, value_help="[p]rivate key file, [c]ertificate file: string",
               help="use authenticated secure TLS connection", dest="tls"),
    ]
    if not acceptor:
        rows.append(Option(long="--anonymous-tls", short="+tla", help="use secure TLS connection without certificate",
                           dest="tls", const="anonymous"))
    rows += [
        Group("private key password (only with --enable-tls):", sub=True),
        Option(long="--std-passwd", short="+ps", help="prompt user to type password on stdin (default)",
               dest="passwd", const=None),
        Option(long="--use-passwd", short="+pw", values=1, value_help="[p]assword: string ",
               help="use specified password", dest="passwd"),
        Option(long="--null-passwd", short="-pw", help="use empty string as password", dest="passwd", const=""),
        Group("key and certificate file format:", sub=True),
        Option(long="--pem-keys", short="-pem", help="read keys and certificates as PEM file (default)",
               dest="key_format", const="pem"),
        Option(long="--der-keys", short="-der", help="read keys and certificates as DER file",
               dest="key_format", const="der"),
        Group("certification authority:", sub=True),
        Option(long="--add-cert-file", short="+cf", values=1, value_help="[f]ilename: string",
               help="add certificate file to list of certificates", multi=True),
        Option(long="--add-cert-dir", short="+cd", values=1, value_help="[d]irectory: string",
               help="add certificates in d to list of certificates", multi=True),
        Option(long="--add-crl-file", short="+crl", values=1, value_help="[f]ilename: string",
               help="add certificate revocation list file\n(implies --enable-crl-vfy)", multi=True),
        Option(long="--enable-crl-vfy", short="+crv", help="enable leaf CRL verification"),
        Option(long="--enable-crl-all", short="+cra", help="enable full chain CRL verification"),
        Group("security profile:", sub=True),
        Option(long="--list-profiles", short="+ph", help="list supported TLS profiles and exit", exclusive=True),
        *(Option(long=long, short=short, help=text, dest="tls_profile", const=const) for long, short, text, const in (
            ("--profile-8996", "+pg", "BCP 195 RFC 8996 TLS Profile (default)", "8996"),
            ("--profile-8996-mod", "+pm", "Modified BCP 195 RFC 8996 TLS Profile", "8996-mod"),
            ("--profile-bcp195-nd", "+py", "Non-downgrading BCP 195 TLS Profile (retired)", "bcp195-nd"),
            ("--profile-bcp195", "+px", "BCP 195 TLS Profile (retired)", "bcp195"),
            ("--profile-bcp195-ex", "+pz", "Extended BCP 195 TLS Profile (retired)", "bcp195-ex"),
            ("--profile-basic", "+pb", "Basic TLS Secure Transport Connection Profile\n(retired)", "basic"),
            ("--profile-aes", "+pa", "AES TLS Secure Transport Connection Profile\n(retired)", "aes"),
            ("--profile-null", "+pn", "Authenticated unencrypted communication\n(retired, was used in IHE ATNA)", "null"))),
        Group("ciphersuite:", sub=True),
        Option(long="--list-ciphers", short="+cc", help="list supported TLS ciphersuites and exit", exclusive=True),
        Option(long="--cipher", short="+cs", values=1, value_help="[c]iphersuite name: string",
               help="add ciphersuite to list of negotiated suites\n(not with --profile-bcp195-ex)", multi=True),
    ]
    if acceptor:
        rows.append(Option(long="--dhparam", short="+dp", values=1, value_help="[f]ilename: string",
                           help="read DH parameters for DH/DSS ciphersuites"))
    rows += [
        Group("server name indication:", sub=True),
        Option(long="--no-sni", help="do not use SNI (default)", dest="sni", const=None),
        Option(long="--request-sni", values=1, value_help="[s]erver name: string", help="request server name s",
               dest="sni"),
    ]
    if acceptor:
        rows.append(Option(long="--expect-sni", values=1, value_help="[s]erver name: string",
                           help="expect requests for server name s"))
    rows += [
        Group("pseudo random generator:", sub=True),
        Option(long="--seed", short="+rs", values=1, value_help="[f]ilename: string",
               help="seed random generator with contents of f"),
        Option(long="--write-seed", short="+ws", help="write back modified seed (only with --seed)",
               dest="write_seed", const=True),
        Option(long="--write-seed-file", short="+wf", values=1, value_help="[f]ilename: string (only with --seed)",
               help="write modified seed to file f", dest="write_seed"),
        Group("peer authentication:", sub=True),
        Option(long="--require-peer-cert", short="-rc", help="verify peer certificate, fail if absent (default)",
               dest="peer_cert", const="require"),
    ]
    if acceptor:
        rows.append(Option(long="--verify-peer-cert", short="-vc", help="verify peer certificate if present",
                           dest="peer_cert", const="verify"))
    rows.append(Option(long="--ignore-peer-cert", short="-ic", help="don't verify peer certificate",
                       dest="peer_cert", const="ignore"))
    return tuple(rows)


def offline_rows() -> tuple[Option | Group, ...]:
    """echoscu's offline certificate checks (``+vc``, ``+rc``)."""
    return (
        Group("offline certificate verification:", sub=True),
        Option(long="--verify-cert", short="+vc", values=1, value_help="[f]ilename: string",
               help="verify certificate against CA settings", exclusive=True),
        Option(long="--is-root-cert", short="+rc", values=1, value_help="[f]ilename: string",
               help="check if certificate is self-signed root CA", exclusive=True),
    )


# DCMTK's ciphersuite table (tlsciphr.cc), weakest first: TLS name -> OpenSSL name.
CIPHERSUITES: tuple[tuple[str, str], ...] = (
    ("TLS_RSA_WITH_NULL_SHA", "NULL-SHA"),
    ("TLS_RSA_WITH_3DES_EDE_CBC_SHA", "DES-CBC3-SHA"),
    ("TLS_RSA_WITH_AES_128_CBC_SHA", "AES128-SHA"),
    ("TLS_RSA_WITH_CAMELLIA_128_CBC_SHA", "CAMELLIA128-SHA"),
    ("TLS_RSA_WITH_AES_128_CBC_SHA256", "AES128-SHA256"),
    ("TLS_RSA_WITH_AES_128_GCM_SHA256", "AES128-GCM-SHA256"),
    ("TLS_ECDH_ECDSA_WITH_AES_128_CBC_SHA", "ECDH-ECDSA-AES128-SHA"),
    ("TLS_ECDH_RSA_WITH_AES_128_CBC_SHA", "ECDH-RSA-AES128-SHA"),
    ("TLS_ECDH_ECDSA_WITH_AES_128_CBC_SHA256", "ECDH-ECDSA-AES128-SHA256"),
    ("TLS_ECDH_RSA_WITH_AES_128_CBC_SHA256", "ECDH-RSA-AES128-SHA256"),
    ("TLS_ECDH_ECDSA_WITH_AES_128_GCM_SHA256", "ECDH-ECDSA-AES128-GCM-SHA256"),
    ("TLS_ECDH_RSA_WITH_AES_128_GCM_SHA256", "ECDH-RSA-AES128-GCM-SHA256"),
    ("TLS_RSA_WITH_CAMELLIA_256_CBC_SHA", "CAMELLIA256-SHA"),
    ("TLS_RSA_WITH_AES_256_CBC_SHA", "AES256-SHA"),
    ("TLS_RSA_WITH_AES_256_CBC_SHA256", "AES256-SHA256"),
    ("TLS_RSA_WITH_AES_256_GCM_SHA384", "AES256-GCM-SHA384"),
    ("TLS_ECDH_ECDSA_WITH_AES_256_CBC_SHA", "ECDH-ECDSA-AES256-SHA"),
    ("TLS_ECDH_RSA_WITH_AES_256_CBC_SHA", "ECDH-RSA-AES256-SHA"),
    ("TLS_ECDH_ECDSA_WITH_AES_256_CBC_SHA384", "ECDH-ECDSA-AES256-SHA384"),
    ("TLS_ECDH_RSA_WITH_AES_256_CBC_SHA384", "ECDH-RSA-AES256-SHA384"),
    ("TLS_ECDH_ECDSA_WITH_AES_256_GCM_SHA384", "ECDH-ECDSA-AES256-GCM-SHA384"),
    ("TLS_ECDH_RSA_WITH_AES_256_GCM_SHA384", "ECDH-RSA-AES256-GCM-SHA384"),
    ("TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA", "ECDHE-ECDSA-AES128-SHA"),
    ("TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA", "ECDHE-RSA-AES128-SHA"),
    ("TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256", "ECDHE-ECDSA-AES128-SHA256"),
    ("TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256", "ECDHE-RSA-AES128-SHA256"),
    ("TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256", "ECDHE-ECDSA-AES128-GCM-SHA256"),
    ("TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256", "ECDHE-RSA-AES128-GCM-SHA256"),
    ("TLS_DHE_DSS_WITH_AES_128_CBC_SHA", "DHE-DSS-AES128-SHA"),
    ("TLS_DHE_DSS_WITH_CAMELLIA_128_CBC_SHA", "DHE-DSS-CAMELLIA128-SHA"),
    ("TLS_DHE_RSA_WITH_AES_128_CBC_SHA", "DHE-RSA-AES128-SHA"),
    ("TLS_DHE_RSA_WITH_CAMELLIA_128_CBC_SHA", "DHE-RSA-CAMELLIA128-SHA"),
    ("TLS_DHE_DSS_WITH_AES_128_CBC_SHA256", "DHE-DSS-AES128-SHA256"),
    ("TLS_DHE_RSA_WITH_AES_128_CBC_SHA256", "DHE-RSA-AES128-SHA256"),
    ("TLS_DHE_DSS_WITH_AES_128_GCM_SHA256", "DHE-DSS-AES128-GCM-SHA256"),
    ("TLS_DHE_RSA_WITH_AES_128_GCM_SHA256", "DHE-RSA-AES128-GCM-SHA256"),
    ("TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA", "ECDHE-ECDSA-AES256-SHA"),
    ("TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA", "ECDHE-RSA-AES256-SHA"),
    ("TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA384", "ECDHE-ECDSA-AES256-SHA384"),
    ("TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA384", "ECDHE-RSA-AES256-SHA384"),
    ("TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256", "ECDHE-ECDSA-CHACHA20-POLY1305"),
    ("TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256", "ECDHE-RSA-CHACHA20-POLY1305"),
    ("TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384", "ECDHE-ECDSA-AES256-GCM-SHA384"),
    ("TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384", "ECDHE-RSA-AES256-GCM-SHA384"),
    ("TLS_DHE_DSS_WITH_AES_256_CBC_SHA", "DHE-DSS-AES256-SHA"),
    ("TLS_DHE_RSA_WITH_AES_256_CBC_SHA", "DHE-RSA-AES256-SHA"),
    ("TLS_DHE_DSS_WITH_CAMELLIA_256_CBC_SHA", "DHE-DSS-CAMELLIA256-SHA"),
    ("TLS_DHE_RSA_WITH_CAMELLIA_256_CBC_SHA", "DHE-RSA-CAMELLIA256-SHA"),
    ("TLS_DHE_DSS_WITH_AES_256_CBC_SHA256", "DHE-DSS-AES256-SHA256"),
    ("TLS_DHE_RSA_WITH_AES_256_CBC_SHA256", "DHE-RSA-AES256-SHA256"),
    ("TLS_DHE_RSA_WITH_CHACHA20_POLY1305_SHA256", "DHE-RSA-CHACHA20-POLY1305"),
    ("TLS_DHE_DSS_WITH_AES_256_GCM_SHA384", "DHE-DSS-AES256-GCM-SHA384"),
    ("TLS_DHE_RSA_WITH_AES_256_GCM_SHA384", "DHE-RSA-AES256-GCM-SHA384"),
)
_OPENSSL_NAME = dict(CIPHERSUITES)
_ND = ("TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256", "TLS_DHE_RSA_WITH_AES_128_GCM_SHA256",
       "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384", "TLS_DHE_RSA_WITH_AES_256_GCM_SHA384")
_8996 = ("TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256", "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
         "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384", "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384")
_3DES = "TLS_RSA_WITH_3DES_EDE_CBC_SHA"


@dataclass(frozen=True, slots=True)
class Profile:
    """A DCMTK security profile as ``ssl`` settings: suites, optional 3DES, versions."""

    name: str
    suites: tuple[str, ...]
    tls13: bool
    min_tls12: bool
    optional_3des: bool = False
    secure_only: bool = True  # NULL ciphers refused with +cs


PROFILES: dict[str, Profile] = {
    "8996": Profile("BCP 195 RFC 8996 TLS Profile", _8996, tls13=True, min_tls12=True),
    "8996-mod": Profile("Modified BCP 195 RFC 8996 TLS Profile",
                        _8996 + _ND[1::2], tls13=True, min_tls12=True),
    "bcp195-nd": Profile("Non-downgrading BCP 195 TLS Profile", _ND, tls13=True, min_tls12=True),
    "bcp195": Profile("BCP 195 TLS Profile", _ND + ("TLS_RSA_WITH_AES_128_CBC_SHA",), tls13=True,
                      min_tls12=False, optional_3des=True),
    "bcp195-ex": Profile("Extended BCP 195 TLS Profile", _ND + ("TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
                         "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256"), tls13=False, min_tls12=True),
    "basic": Profile("Basic TLS Secure Transport Connection Profile", (_3DES,), tls13=False, min_tls12=False),
    "aes": Profile("AES TLS Secure Transport Connection Profile", ("TLS_RSA_WITH_AES_128_CBC_SHA",),
                   tls13=False, min_tls12=False, optional_3des=True),
    "null": Profile("Authenticated unencrypted communication", ("TLS_RSA_WITH_NULL_SHA",), tls13=False,
                    min_tls12=False, secure_only=False),
}
PROMPT = object()  # +ps: ask on the terminal when the key is encrypted


@dataclass(slots=True)
class TlsSettings:
    """The TLS options after DCMTK's dependency checks."""

    secure: bool = False
    key: str | None = None
    cert: str | None = None
    passwd: Any = PROMPT
    der: bool = False
    cert_files: list[str] = field(default_factory=list)
    cert_dirs: list[str] = field(default_factory=list)
    crl_files: list[str] = field(default_factory=list)
    crl_mode: str | None = None  # None, "leaf", "all"
    profile: str = "8996"
    ciphers: list[str] = field(default_factory=list)
    sni: str | None = None
    expect_sni: str | None = None
    dhparam: str | None = None
    seed: str | None = None
    write_seed_to: str | None = None
    peer_cert: str = "require"  # "require", "verify" (acceptors: if present), "ignore"

    @property
    def verify_peer(self) -> bool:
        """Whether the peer's certificate is checked at all."""
        return self.peer_cert != "ignore"


def check_options(app: App, cmd: CommandLine, values: dict[str, Any], role: str = REQUESTOR) -> TlsSettings:
    """``DcmTLSOptions::parseArguments``: which options need TLS and which conflict (exit 1)."""
    tls = values.get("tls", False)
    t = TlsSettings(secure=tls is not False, profile=values.get("tls_profile", "8996"))
    auth = isinstance(tls, tuple)
    if auth:
        t.key, t.cert = tls
    needs = "--enable-tls or --anonymous-tls" if role == REQUESTOR else "--enable-tls"
    for dest, base, condition in (("passwd", "--enable-tls", auth), ("key_format", needs, t.secure)):
        occ = cmd.rightmost(dest)
        if occ is not None:
            app.check_dependence(occ.option.long, base, condition)
    t.passwd = values.get("passwd", PROMPT)
    t.der = values.get("key_format") == "der"
    if cmd.has("--seed"):
        app.check_dependence("--seed", needs, t.secure)
        t.seed = values["seed"]
    occ = cmd.rightmost("write_seed")
    if occ is not None:
        app.check_dependence(occ.option.long, needs, t.secure)
        app.check_dependence(occ.option.long, "--seed", t.seed is not None)
        t.write_seed_to = t.seed if values["write_seed"] is True else values["write_seed"]
    for dest in ("peer_cert", "tls_profile"):
        occ = cmd.rightmost(dest)
        if occ is not None:
            app.check_dependence(occ.option.long, needs, t.secure)
    t.peer_cert = values.get("peer_cert", "require")
    for long in ("--add-cert-file", "--add-cert-dir", "--add-crl-file", "--enable-crl-vfy", "--dhparam"):
        if cmd.has(long):
            app.check_dependence(long, needs, t.secure)
    if cmd.has("--enable-crl-all"):
        app.check_dependence("--enable-crl-all", needs, t.secure)
        app.check_conflict("--enable-crl-all", "--enable-crl-vfy", cmd.has("--enable-crl-vfy"))
    if cmd.has("--cipher"):
        app.check_dependence("--cipher", needs, t.secure)
        app.check_conflict("--cipher", "--profile-bcp195-ex", t.profile == "bcp195-ex")
    occ = cmd.rightmost("sni")
    if occ is not None and occ.option.long == "--request-sni":
        app.check_dependence("--request-sni", needs, t.secure)
    if cmd.has("--expect-sni"):
        app.check_conflict("--no-sni", "--expect-sni", cmd.has("--no-sni"))
        t.expect_sni = values["expect_sni"]
    t.sni = values.get("sni")
    t.dhparam = values.get("dhparam")
    t.cert_files = values.get("add_cert_file", [])
    t.cert_dirs = values.get("add_cert_dir", [])
    t.crl_files = values.get("add_crl_file", [])
    t.crl_mode = "all" if cmd.has("--enable-crl-all") else (
        "leaf" if cmd.has("--enable-crl-vfy") or t.crl_files else None)
    t.ciphers = values.get("cipher", [])
    return t


def list_and_exit(app: App, cmd: CommandLine) -> None:
    """``+cc`` and ``+ph``: print the supported ciphersuites or profiles, exit 0."""
    from node.tools.dcmtk_args import header_text

    if cmd.has("--list-ciphers"):
        app.stdout.write(header_text(app.spec, host_info=True) + "\nSupported TLS ciphersuites are:\n"
                         + "".join(f"  {name}\n" for name in supported_ciphersuites()))
        raise ToolExit(0)
    if cmd.has("--list-profiles"):
        app.stdout.write(header_text(app.spec, host_info=True) + "\nSupported TLS profiles are:\n"
                         + "".join(f"  {name}\n" for name in supported_profiles()))
        raise ToolExit(0)


def openssl_version() -> str:
    """The OpenSSL behind Python's ``ssl`` module."""
    import ssl

    return ssl.OPENSSL_VERSION


def _openssl_ciphers(spec: str) -> set[str]:
    """OpenSSL names of the suites a cipher string selects in this OpenSSL."""
    import ssl

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        ctx.set_ciphers(spec)
    except ssl.SSLError:
        return set()
    return {c["name"] for c in ctx.get_ciphers()}


def supported_ciphersuites() -> list[str]:
    """DCMTK's table filtered by what this OpenSSL offers, weakest first (``+cc``)."""
    available = _openssl_ciphers("ALL:eNULL:@SECLEVEL=0")
    return [tls_name for tls_name, name in CIPHERSUITES if name in available]


def supported_profiles() -> list[str]:
    """Profiles whose required suites this OpenSSL has (``+ph``)."""
    available = set(supported_ciphersuites())
    return [f"{p.name}" for p in PROFILES.values() if all(s in available for s in p.suites)]


# --------------------------------------------------------------------------- the two directions


def client_context(log: logging.Logger, t: TlsSettings) -> Any:
    """``DcmTLSOptions::createTransportLayer`` for associations we request: an ``ssl.SSLContext``, or None."""
    if not t.secure:
        return None
    import ssl

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False  # DICOM TLS authenticates the certificate chain, not host names
    ctx.verify_mode = ssl.CERT_REQUIRED if t.verify_peer else ssl.CERT_NONE
    _load_trust(log, ctx, t)
    if t.key is not None and t.cert is not None:
        with tempfile.TemporaryDirectory() as tmp:
            cert_path, key_path, secret = _write_identity(t, Path(tmp))
            try:
                ctx.load_cert_chain(cert_path, key_path, password=secret)
            except ssl.SSLError:
                raise TlsSetupError(f"Private key '{t.key}' and certificate '{t.cert}' do not match") from None
    minimum, maximum, ciphers = _profile_parameters(log, t)
    _set_versions(ctx, minimum, maximum)
    ctx.set_ciphers(ciphers)
    return ctx


def server_config(log: logging.Logger, t: TlsSettings, workdir: Path) -> Any:
    """The same settings as the node's ``[tls]`` for an in-process listener (acceptor side).

    ``-rc`` requires a client certificate, ``-vc`` checks one if sent, ``-ic`` asks for none.
    Files go to ``workdir`` (created 0700; the caller removes it). Raises TlsSetupError.
    """
    import ssl
    from dataclasses import replace as _replace

    from node.config import TlsConfig

    if t.key is None or t.cert is None:
        raise TlsSetupError("accepting TLS associations needs --enable-tls with a private key and certificate")
    if t.expect_sni is not None:
        raise TlsSetupError("--expect-sni is not supported by nodectl (a TLS server here answers any server name)")
    workdir.mkdir(mode=0o700, parents=True, exist_ok=True)
    cert_path, key_path, secret = _write_identity(t, workdir)
    bundle = _trust_bundle(log, t) if t.verify_peer else b""
    if t.peer_cert == "require" and not bundle:
        log.warning("no trusted certificates (+cf, +cd): every client certificate will be refused")
    minimum, maximum, ciphers = _profile_parameters(log, t)
    dh = t.dhparam if t.dhparam and _dh_params_load(t.dhparam) else ""
    if t.dhparam and not dh:
        log.warning(f"unable to load temporary DH parameter file '{t.dhparam}', ignoring")
    config = TlsConfig(
        certificate=cert_path, key=key_path, key_password=secret,
        ca=write_private(workdir, "trusted.pem", bundle) if bundle else "",
        protocols=(minimum, maximum), ciphers=ciphers, require_client_cert=t.peer_cert == "require",
        crl_check={"leaf": "leaf", "all": "chain"}.get(t.crl_mode or "", "") if bundle else "", dh_params=dh,
    )
    from actors.tls import server_context
    from node.errors import ConfigError

    try:
        server_context(_replace(config, ca=config.ca or ""))
    except ConfigError as exc:
        text = str(exc)
        if "KEY_VALUES_MISMATCH" in text or "key values mismatch" in text:
            text = f"Private key '{t.key}' and certificate '{t.cert}' do not match"
        raise TlsSetupError(text) from None
    except ssl.SSLError as exc:
        raise TlsSetupError(str(exc)) from None
    return config


def _set_versions(ctx: Any, minimum: str, maximum: str) -> None:
    """Protocol range by name; TLS 1.0/1.1 are deprecated in ``ssl``, retired profiles need them."""
    import ssl
    import warnings

    names = {"TLSv1": ssl.TLSVersion.TLSv1, "TLSv1.2": ssl.TLSVersion.TLSv1_2, "TLSv1.3": ssl.TLSVersion.MAXIMUM_SUPPORTED}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version, ctx.maximum_version = names[minimum], names[maximum]


def _dh_params_load(path: str) -> bool:
    """``+dp``: whether OpenSSL can read the file as DH parameters."""
    import ssl

    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_dh_params(path)
        return True
    except (OSError, ssl.SSLError):
        return False


def _load_trust(log: logging.Logger, ctx: Any, t: TlsSettings) -> None:
    """+cf, +cd, +crl and the CRL mode; unreadable files are warnings, as in DCMTK."""
    import ssl

    for path in t.cert_files:
        try:
            for der in _read_certs_der(path, t.der):
                ctx.load_verify_locations(cadata=der)
        except (OSError, ValueError, ssl.SSLError):
            log.warning(f"unable to load certificate file '{path}', ignoring")
    for path in t.cert_dirs:
        try:
            if t.der:  # OpenSSL's hashed-directory lookup reads PEM only: load every file
                for name in sorted(os.listdir(path)):
                    for der in _read_certs_der(os.path.join(path, name), True):
                        ctx.load_verify_locations(cadata=der)
            else:
                ctx.load_verify_locations(capath=path)
        except (OSError, ValueError, ssl.SSLError):
            log.warning(f"unable to load certificates from directory '{path}', ignoring")
    for path in t.crl_files:
        try:
            _load_crl(ctx, path, t.der)
        except (OSError, ValueError, ssl.SSLError):
            log.warning(f"unable to load CRL file '{path}', ignoring")
    if t.crl_mode == "leaf":
        ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    elif t.crl_mode == "all":
        ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_CHAIN


def _trust_bundle(log: logging.Logger, t: TlsSettings) -> bytes:
    """+cf files, every certificate file of the +cd directories and the CRLs as one PEM bundle.

    A server's trust store is a file here (``[tls] ca``): a ``+cd`` directory is read whole
    rather than looked up by OpenSSL's subject hash, which trusts the same certificates.
    """
    import ssl

    pems: list[bytes] = []
    for path in t.cert_files:
        try:
            pems += [ssl.DER_cert_to_PEM_cert(der).encode() for der in _read_certs_der(path, t.der)]
        except (OSError, ValueError):
            log.warning(f"unable to load certificate file '{path}', ignoring")
    for directory in t.cert_dirs:
        try:
            names = sorted(os.listdir(directory))
        except OSError:
            log.warning(f"unable to load certificates from directory '{directory}', ignoring")
            continue
        for name in names:
            try:
                pems += [ssl.DER_cert_to_PEM_cert(der).encode() for der in _read_certs_der(os.path.join(directory, name), t.der)]
            except (OSError, ValueError):
                continue  # not a certificate: OpenSSL's lookup would not find it either
    for path in t.crl_files:
        try:
            pems.append(_crl_pem(path, t.der))
        except (OSError, ValueError):
            log.warning(f"unable to load CRL file '{path}', ignoring")
    return b"".join(pems)


def _read_certs_der(path: str, der: bool) -> list[bytes]:
    """Certificates of a PEM file (all of them) or a DER file, as DER bytes."""
    import ssl

    data = Path(path).read_bytes()
    if der:
        return [data]
    blocks = re.findall(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", data, re.DOTALL)
    if not blocks:
        raise ValueError(f"no certificate in {path}")
    return [ssl.PEM_cert_to_DER_cert(b.decode("ascii")) for b in blocks]


def _crl_pem(path: str, der: bool) -> bytes:
    """A CRL file as PEM (OpenSSL loads CRLs from a PEM file given as ``cafile``)."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    data = Path(path).read_bytes()
    crl = x509.load_der_x509_crl(data) if der else x509.load_pem_x509_crl(data)
    return crl.public_bytes(Encoding.PEM)


def _load_crl(ctx: Any, path: str, der: bool) -> None:
    """Add a CRL to the context's store."""
    if not der:
        ctx.load_verify_locations(cafile=path)
        return
    with tempfile.NamedTemporaryFile(suffix=".pem") as tmp:  # a CRL is public data
        tmp.write(_crl_pem(path, der))
        tmp.flush()
        ctx.load_verify_locations(cafile=tmp.name)


def _write_identity(t: TlsSettings, directory: Path) -> tuple[str, str, str]:
    """+tls key cert with +ps/+pw/-pw and -pem/-der, as files ``ssl`` can load.

    Returns (certificate, key, password): the key re-encrypted under a random one-time
    password, so no plain private key is ever written. DCMTK's messages on failure.
    """
    try:
        key_pem, cert_pem = _identity_pem(t)
    except ImportError:
        raise TlsSetupError("+tls needs the 'cryptography' package to read keys, and it is not installed") from None
    except _KeyError:
        raise TlsSetupError(f"000b:0004 Unable to load private TLS key from '{t.key}'") from None
    except _CertError:
        raise TlsSetupError(f"Unable to load certificate from '{t.cert}'") from None
    secret = os.urandom(24).hex()
    key_path = write_private(directory, "key.pem", _encrypt_key(key_pem, secret))
    cert_path = write_private(directory, "cert.pem", cert_pem)
    return cert_path, key_path, secret


class _KeyError(Exception):
    """The private key could not be read or decrypted."""


class _CertError(Exception):
    """The certificate could not be read."""


def _identity_pem(t: TlsSettings) -> tuple[bytes, bytes]:
    """Read key (asking for its password only when encrypted) and certificate with cryptography."""
    from cryptography import x509  # ImportError: reported by the caller
    from cryptography.hazmat.primitives import serialization as ser

    load_key = ser.load_der_private_key if t.der else ser.load_pem_private_key
    try:
        raw = Path(str(t.key)).read_bytes()
        try:
            key = load_key(raw, password=None)
        except TypeError:  # encrypted: now the password matters
            key = load_key(raw, password=_password(t.passwd).encode())
    except (OSError, ValueError, TypeError):
        raise _KeyError() from None
    try:
        raw = Path(str(t.cert)).read_bytes()
        cert = x509.load_der_x509_certificate(raw) if t.der else x509.load_pem_x509_certificate(raw)
    except (OSError, ValueError):
        raise _CertError() from None
    key_pem = key.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.PKCS8, ser.NoEncryption())
    return key_pem, cert.public_bytes(ser.Encoding.PEM)


def _password(passwd: Any) -> str:
    """+pw/-pw give it; +ps asks on the terminal like OpenSSL's PEM callback."""
    if passwd is PROMPT:
        import getpass

        return getpass.getpass("Enter PEM pass phrase:")
    return str(passwd)


def _encrypt_key(key_pem: bytes, secret: str) -> bytes:
    """The key as encrypted PKCS#8 PEM, so no plain private key is ever written to disk."""
    from cryptography.hazmat.primitives import serialization as ser

    key = ser.load_pem_private_key(key_pem, password=None)
    return key.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.PKCS8,
                             ser.BestAvailableEncryption(secret.encode()))


def _profile_parameters(log: logging.Logger, t: TlsSettings) -> tuple[str, str, str]:
    """Lowest and highest protocol and the OpenSSL cipher string of the profile plus ``+cs`` suites."""
    profile = PROFILES[t.profile]
    available = set(supported_ciphersuites())
    suites = list(profile.suites)
    for name in suites:
        if name not in available:
            raise TlsSetupError(f"Ciphersuite '{name}' not supported by the OpenSSL library used by this application.")
    if profile.optional_3des:
        if _3DES in available:
            suites.append(_3DES)
        else:
            log.warning(f"Ciphersuite '{_3DES}' not supported by the OpenSSL library used by this application, "
                        "no backward compatibility with DICOM Basic TLS profile.")
    for name in t.ciphers:
        suites.append(_check_extra_cipher(profile, name, available))
    level = "" if profile.min_tls12 and profile.secure_only else ":@SECLEVEL=0"
    return ("TLSv1.2" if profile.min_tls12 else "TLSv1", "TLSv1.3" if profile.tls13 else "TLSv1.2",
            ":".join(_OPENSSL_NAME[s] for s in suites) + level)


def _check_extra_cipher(profile: Profile, name: str, available: set[str]) -> str:
    """``DcmTLSCiphersuiteHandler::addCipherSuite``: known, supported, encrypted where required."""
    if name not in _OPENSSL_NAME:
        raise TlsSetupError(f"ciphersuite '{name}' is unknown")
    if name not in available:
        raise TlsSetupError(f"Ciphersuite '{name}' not supported by the OpenSSL library used by this application.")
    if profile.secure_only and "_NULL_" in name:
        raise TlsSetupError(f"Unencrypted ciphersuite '{name}' not permitted with security profile '{profile.name}'")
    return name


def read_seed(log: logging.Logger, t: TlsSettings) -> None:
    """``+rs``: mix the file's bytes into OpenSSL's PRNG (once, when the TLS layer is created)."""
    if t.seed is None or not t.secure:
        return
    import ssl

    try:
        data = Path(t.seed).read_bytes()
    except OSError:
        log.warning(f"unable to read random seed file '{t.seed}'")
        return
    ssl.RAND_add(data, float(len(data)))


def write_seed(log: logging.Logger, t: TlsSettings) -> None:
    """``+ws``/``+wf``: write 1024 fresh PRNG bytes back, like ``RAND_write_file``; failure warns."""
    if t.write_seed_to is None or not t.secure:
        return
    import ssl

    try:
        with open(t.write_seed_to, "wb") as fh:
            fh.write(ssl.RAND_bytes(1024))
    except OSError:
        log.warning(f"Failed to write random seed file '{t.write_seed_to}'")


# --------------------------------------------------------------------------- offline checks


def offline_check(app: App, log: logging.Logger, cmd: CommandLine, t: TlsSettings) -> int:
    """``+vc``: would this certificate pass our CA settings? ``+rc``: is it a self-signed root?"""
    occ = cmd.find("--verify-cert")
    if occ is not None:
        path = occ.values[0]
        ok = t.secure and _verify_certificate(log, path, t)
        app.stdout.write(f"Verification of certificate '{path}' {'passed' if ok else 'failed'}.\n")
        return 0 if ok else EXITCODE_INVALID_INPUT_FILE
    path = cmd.find("--is-root-cert").values[0]  # type: ignore[union-attr]
    ok = _is_root_certificate(log, path, t.der)
    verdict = "is a valid" if ok else "is not a valid"
    app.stdout.write(f"Certificate '{path}' {verdict}, self-signed root CA.\n")
    return 0 if ok else EXITCODE_INVALID_INPUT_FILE


def _load_cert(path: str, der: bool) -> Any:
    """One certificate (the first of a PEM file)."""
    from cryptography import x509

    data = Path(path).read_bytes()
    return x509.load_der_x509_certificate(data) if der else x509.load_pem_x509_certificate(data)


def _valid_now(cert: Any) -> bool:
    """Inside its validity period."""
    import datetime

    now = datetime.datetime.now(datetime.UTC)
    return bool(cert.not_valid_before_utc <= now <= cert.not_valid_after_utc)


def _signed_by(cert: Any, issuer: Any) -> bool:
    """``cert``'s issuer name and signature match ``issuer``."""
    try:
        cert.verify_directly_issued_by(issuer)
        return True
    except Exception:  # noqa: BLE001 - InvalidSignature, ValueError, TypeError: all mean "no"
        return False


def _is_root_certificate(log: logging.Logger, path: str, der: bool) -> bool:
    """Self-issued, self-signed and currently valid (X509_verify_cert with itself as anchor)."""
    try:
        cert = _load_cert(path, der)
    except (OSError, ValueError):
        log.error(f"Cannot read certificate file '{path}'")
        return False
    return _signed_by(cert, cert) and _valid_now(cert)


def _trusted(t: TlsSettings) -> list[Any]:
    """The certificates of +cf files and +cd directories, as the offline check's trust store."""
    from cryptography import x509

    out = []
    paths = list(t.cert_files)
    for d in t.cert_dirs:
        paths += [os.path.join(d, n) for n in sorted(os.listdir(d))] if os.path.isdir(d) else []
    for path in paths:
        try:
            out += [x509.load_der_x509_certificate(der) for der in _read_certs_der(path, t.der)]
        except (OSError, ValueError):
            continue
    return out


def _verify_certificate(log: logging.Logger, path: str, t: TlsSettings) -> bool:
    """Build a chain from ``path`` to a trusted self-signed root (depth <= 10), check dates,
    CA flags of issuers and, with +crl/+crv/+cra, revocation like OpenSSL's CRL flags."""
    try:
        cert = _load_cert(path, t.der)
    except (OSError, ValueError):
        log.error(f"Cannot read certificate file '{path}'")
        return False
    store = _trusted(t)
    chain = [cert]
    for _ in range(10):
        current = chain[-1]
        if not _valid_now(current):
            return False
        issuer = next((c for c in store if _signed_by(current, c)), None)
        if issuer is None:
            return False
        if issuer is not current and not _is_ca(issuer):
            return False
        if _signed_by(issuer, issuer):  # reached a trusted root
            chain.append(issuer)
            return _valid_now(issuer) and _not_revoked(log, chain, t)
        chain.append(issuer)
    return False


def _is_ca(cert: Any) -> bool:
    """BasicConstraints cA=TRUE (or a v1 certificate, which OpenSSL accepts as a CA)."""
    from cryptography import x509

    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return cert.version == x509.Version.v1


def _not_revoked(log: logging.Logger, chain: list[Any], t: TlsSettings) -> bool:
    """With CRL checking on, every checked certificate needs its issuer's CRL and must not be in it."""
    if t.crl_mode is None:
        return True
    from cryptography import x509

    crls = []
    for path in t.crl_files:
        try:
            data = Path(path).read_bytes()
            crls.append(x509.load_der_x509_crl(data) if t.der else x509.load_pem_x509_crl(data))
        except (OSError, ValueError):
            log.warning(f"unable to load CRL file '{path}', ignoring")
    checked = chain[:1] if t.crl_mode == "leaf" else chain[:-1]
    for cert, issuer in zip(checked, chain[1:]):
        crl = next((c for c in crls if c.issuer == issuer.subject and c.is_signature_valid(issuer.public_key())), None)
        if crl is None or crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None:
            return False
    return True
