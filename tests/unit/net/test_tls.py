"""The TLS provider: self-signed default, configured certificates, reload, protocol floor."""

from __future__ import annotations

import asyncio
import hashlib
import ssl
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import trustme

from pigeon.config import TlsSettings
from pigeon.net.tls import TlsError, TlsProvider, fingerprint, make_self_signed


def settings(tmp_path: Path, hostname: str = "mx.example.com", cert: Path | None = None,
             key: Path | None = None) -> SimpleNamespace:
    return SimpleNamespace(
        server=SimpleNamespace(hostname=hostname, data_dir=tmp_path / "data"),
        tls=TlsSettings(cert=cert, key=key),
    )


def peer_cert_der(ctx: ssl.SSLContext, client: ssl.SSLContext | None = None) -> bytes:
    """Handshake with ``ctx`` over loopback; return the server certificate (DER)."""

    async def main() -> bytes:
        server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0, ssl=ctx)
        port = server.sockets[0].getsockname()[1]
        cctx = client or _insecure_client()
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=cctx,
                                                      server_hostname="mx.example.com")
            der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
            writer.close()
            return bytes(der)
        finally:
            server.close()
            await server.wait_closed()

    return asyncio.run(main())


def _insecure_client() -> ssl.SSLContext:
    c = ssl.create_default_context()
    c.check_hostname = False
    c.verify_mode = ssl.CERT_NONE
    return c


def _colon_sha256(der: bytes) -> str:
    h = hashlib.sha256(der).hexdigest().upper()
    return ":".join(h[i : i + 2] for i in range(0, 64, 2))


def test_self_signed_is_made_once_and_reused(tmp_path: Path) -> None:
    p = TlsProvider(settings(tmp_path))
    cert = tmp_path / "data" / "tls" / "cert.pem"
    key = tmp_path / "data" / "tls" / "key.pem"
    assert p.self_signed and p.cert_path == cert
    assert key.stat().st_mode & 0o777 == 0o600
    der = peer_cert_der(p.server_context())
    assert p.fingerprint_sha256 == _colon_sha256(der) == fingerprint(cert)
    again = TlsProvider(settings(tmp_path))
    assert again.fingerprint_sha256 == p.fingerprint_sha256
    assert p.server_context() is p.server_context()


def test_self_signed_is_remade_for_a_new_hostname(tmp_path: Path) -> None:
    first = TlsProvider(settings(tmp_path)).fingerprint_sha256
    second = TlsProvider(settings(tmp_path, hostname="mail.example.org")).fingerprint_sha256
    assert first != second


def test_self_signed_is_remade_when_the_files_are_broken(tmp_path: Path) -> None:
    p = TlsProvider(settings(tmp_path))
    p.cert_path.write_text("garbage")
    assert TlsProvider(settings(tmp_path)).fingerprint_sha256 != "garbage"


def test_configured_certificate_verifies_against_its_ca(tmp_path: Path) -> None:
    ca = trustme.CA()
    leaf = ca.issue_cert("mx.example.com")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    leaf.private_key_and_cert_chain_pem.write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    p = TlsProvider(settings(tmp_path, cert=cert, key=key))
    assert not p.self_signed
    client = ssl.create_default_context()
    ca.configure_trust(client)
    der = peer_cert_der(p.server_context(), client)
    assert _colon_sha256(der) == p.fingerprint_sha256
    assert not (tmp_path / "data" / "tls").exists()


def test_reload_switches_certificates_in_the_live_context(tmp_path: Path) -> None:
    ca = trustme.CA()
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"

    def install(name: str) -> None:
        leaf = ca.issue_cert(name)
        leaf.cert_chain_pems[0].write_to_path(str(cert))
        leaf.private_key_pem.write_to_path(str(key))

    install("mx.example.com")
    p = TlsProvider(settings(tmp_path, cert=cert, key=key))
    ctx = p.server_context()
    old = p.fingerprint_sha256
    install("mx2.example.com")
    p.reload()
    assert p.server_context() is ctx
    assert p.fingerprint_sha256 != old
    assert _colon_sha256(peer_cert_der(ctx)) == p.fingerprint_sha256


def test_bad_reload_keeps_the_old_certificate(tmp_path: Path) -> None:
    ca = trustme.CA()
    leaf = ca.issue_cert("mx.example.com")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    p = TlsProvider(settings(tmp_path, cert=cert, key=key))
    old = p.fingerprint_sha256
    other = ca.issue_cert("other.example.com")
    other.private_key_pem.write_to_path(str(key))  # the key no longer matches the cert
    with pytest.raises(TlsError):
        p.reload()
    assert p.fingerprint_sha256 == old
    assert _colon_sha256(peer_cert_der(p.server_context())) == old


def test_missing_configured_files(tmp_path: Path) -> None:
    with pytest.raises(TlsError, match="cannot load TLS certificate"):
        TlsProvider(settings(tmp_path, cert=tmp_path / "no.pem", key=tmp_path / "no.key"))


def test_cert_without_key_is_a_config_error() -> None:
    with pytest.raises(ValueError, match="cert and key go together"):
        TlsSettings(cert=Path("/x.pem"))


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1])
def test_old_protocol_versions_are_refused(tmp_path: Path, version: ssl.TLSVersion) -> None:
    p = TlsProvider(settings(tmp_path))
    client = _insecure_client()
    client.set_ciphers("DEFAULT:@SECLEVEL=0")  # let the client offer what it can
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        client.minimum_version = version
        client.maximum_version = version
    with pytest.raises((ssl.SSLError, ConnectionError)):
        peer_cert_der(p.server_context(), client)


def test_weak_ciphers_are_refused(tmp_path: Path) -> None:
    p = TlsProvider(settings(tmp_path))
    client = _insecure_client()
    client.maximum_version = ssl.TLSVersion.TLSv1_2
    client.set_ciphers("AES128-SHA:AES256-SHA:DES-CBC3-SHA")  # RSA key exchange, CBC
    with pytest.raises((ssl.SSLError, ConnectionError)):
        peer_cert_der(p.server_context(), client)


def test_make_self_signed_names(tmp_path: Path) -> None:
    from cryptography import x509

    make_self_signed(tmp_path / "c.pem", tmp_path / "k.pem", "mx.example.com")
    cert = x509.load_pem_x509_certificate((tmp_path / "c.pem").read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["mx.example.com", "localhost"]
