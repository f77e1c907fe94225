"""TLS on the listener's associations, against DCMTK's TLS build and pynetdicom, certificates by trustme.

``nodectl serve --tls-cert/--tls-ca`` (client certificate required) and ``nodectl storescp``
with dcm4che's TLS options and PKCS12 stores. Refusals: a client certificate from another CA,
no client certificate, a plain (non-TLS) peer; and the client side refusing our certificate
when it trusts another CA.
"""

from __future__ import annotations

import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread

from tests.nodes import RunningNode, serve
from tests.pki import Certs, make_certs
from tests.support import dataset_bytes, free_port, have, make_ct, wait_until

trustme = pytest.importorskip("trustme")


def _dcmtk_has_tls() -> bool:
    if not have("/usr/bin/echoscu"):
        return False
    out = subprocess.run(["/usr/bin/echoscu", "--help"], capture_output=True, text=True, timeout=10).stdout
    return "+tls" in out


pytestmark = pytest.mark.skipif(not _dcmtk_has_tls(), reason="DCMTK with TLS (Debian dcmtk) is not installed")

VERIFICATION = "1.2.840.10008.1.1"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def tls_node(certs: Certs, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningNode]:
    tmp = tmp_path_factory.mktemp("tlsnode")
    running = serve(tmp, "--tls-cert", str(certs.server), "--tls-ca", str(certs.ca), workers=1)
    try:
        yield running
    finally:
        running.stop()


def echoscu(port: int, *tls: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["/usr/bin/echoscu", "-v", *tls, "-aec", "NODE", "127.0.0.1", str(port)], capture_output=True, text=True, timeout=30)


def test_dcmtk_echoscu_and_storescu_over_tls_with_a_client_certificate(tls_node: RunningNode, certs: Certs, tmp_path: Path) -> None:
    tls = ["+tls", str(certs.client_key), str(certs.client_crt), "+cf", str(certs.ca)]
    result = echoscu(tls_node.port, *tls)
    assert result.returncode == 0 and "Received Echo Response (Success)" in result.stdout + result.stderr, result.stderr
    path = tmp_path / "ct.dcm"
    make_ct(path)
    store = subprocess.run(["/usr/bin/storescu", "-v", *tls, "-aec", "NODE", "127.0.0.1", str(tls_node.port), str(path)],
                           capture_output=True, text=True, timeout=60)
    assert "Received Store Response (Success)" in store.stdout + store.stderr, store.stdout + store.stderr
    tls_node.materialised()
    stored = tls_node.cwd / "store" / dcmread(path).SOPInstanceUID
    assert dataset_bytes(stored) == dataset_bytes(path)
    wait_until(lambda: "TLS TLSv1." in tls_node.log(), 10, "the handshake's line")


def test_client_certificate_from_another_ca_is_refused(tls_node: RunningNode, certs: Certs) -> None:
    result = echoscu(tls_node.port, "+tls", str(certs.rogue_key), str(certs.rogue_crt), "+cf", str(certs.ca))
    assert result.returncode != 0
    wait_until(lambda: "TLS handshake failed" in tls_node.log(), 5, "the refused handshake in the log")


def test_no_client_certificate_and_plain_peers_are_refused(tls_node: RunningNode, certs: Certs) -> None:
    assert echoscu(tls_node.port, "+tla", "+cf", str(certs.ca)).returncode != 0  # anonymous TLS: no certificate
    assert echoscu(tls_node.port).returncode != 0  # plain DICOM on a TLS port


def test_client_refuses_our_certificate_when_it_trusts_another_ca(tls_node: RunningNode, certs: Certs) -> None:
    result = echoscu(tls_node.port, "+tls", str(certs.client_key), str(certs.client_crt), "+cf", str(certs.rogue_ca))
    assert result.returncode != 0


def test_pynetdicom_requestor_over_tls(tls_node: RunningNode, certs: Certs) -> None:
    from pynetdicom import AE

    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(certs.ca))
    ctx.load_cert_chain(str(certs.client_crt), str(certs.client_key))
    ae = AE(ae_title="PYTLS")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    ae.add_requested_context(VERIFICATION)
    assoc = ae.associate("127.0.0.1", tls_node.port, ae_title="NODE", tls_args=(ctx, "localhost"))
    assert assoc.is_established
    try:
        assert assoc.send_c_echo().Status == 0
    finally:
        assoc.release()


def _pkcs12(certs: Certs, path: Path, *, with_key: bool, password: bytes = b"secret") -> Path:
    """dcm4che-style stores: a key store (key + chain) or a trust store (certificates only)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.serialization import pkcs12

    pem = certs.server.read_bytes()
    encryption = serialization.BestAvailableEncryption(password)
    if with_key:
        key = serialization.load_pem_private_key(pem, None)
        chain = x509.load_pem_x509_certificates(pem)
        path.write_bytes(pkcs12.serialize_key_and_certificates(b"node", key, chain[0], chain[1:], encryption))
    else:
        ca = x509.load_pem_x509_certificate(certs.ca.read_bytes())
        path.write_bytes(pkcs12.serialize_key_and_certificates(None, None, None, [ca], encryption))
    return path


def test_storescp_tls_options_with_pkcs12_stores(certs: Certs, tmp_path: Path) -> None:
    key_store = _pkcs12(certs, tmp_path / "key.p12", with_key=True)
    trust_store = _pkcs12(certs, tmp_path / "cacerts.p12", with_key=False)
    port = free_port()
    node = RunningNode(["storescp", "-b", f"STORESCP@127.0.0.1:{port}", "--directory", str(tmp_path / "in"), "--workers", "1",
                        "--tls12", "--tls-cipher", "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
                        "--key-store", str(key_store), "--trust-store", str(trust_store)], cwd=tmp_path, port=port).wait_ready()
    try:
        ok = subprocess.run(["/usr/bin/echoscu", "+tls", str(certs.client_key), str(certs.client_crt), "+cf", str(certs.ca),
                             "-aec", "STORESCP", "127.0.0.1", str(port)], capture_output=True, text=True, timeout=30)
        assert ok.returncode == 0, ok.stdout + ok.stderr
        # The worker's line reaches the shared log on its own schedule, not before echoscu exits.
        wait_until(lambda: "TLS TLSv1.2 ECDHE-RSA-AES128-GCM-SHA256" in node.log(), 10, "the handshake's line")
        rogue = subprocess.run(["/usr/bin/echoscu", "+tls", str(certs.rogue_key), str(certs.rogue_crt), "+cf", str(certs.ca),
                                "-aec", "STORESCP", "127.0.0.1", str(port)], capture_output=True, text=True, timeout=30)
        assert rogue.returncode != 0
    finally:
        node.stop()


def test_storescp_tls_start_up_errors_exit_2(certs: Certs, tmp_path: Path) -> None:
    from tests.support import NODECTL

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*NODECTL, "storescp", "-b", str(free_port()), "--directory", str(tmp_path), *args],
                              capture_output=True, text=True, timeout=30)

    wrong_pass = _pkcs12(certs, tmp_path / "key.p12", with_key=True, password=b"other")
    assert run("--tls", "--key-store", str(wrong_pass), "--tls-noauth").returncode == 2
    assert run("--tls", "--key-store", str(certs.server)).returncode == 2  # client auth without a trust store
    assert run("--tls", "--ssl3", "--key-store", str(certs.server), "--tls-noauth").returncode == 2
    assert run("--tls", "--key-store", str(certs.server), "--key-store-type", "JKS", "--tls-noauth").returncode == 2
