"""The server's TLS context: STARTTLS (RFC 3207, RFC 2595) and implicit TLS (RFC 8314).

Theory of operation
-------------------
One :class:`TlsProvider` per process holds one :class:`ssl.SSLContext` for every listener:
TLS 1.2 or newer, forward-secret AEAD cipher suites only (no NULL, EXPORT, RC4, 3DES, CBC
with SHA-1), no TLS compression, no renegotiation. The certificate and key come from
``[tls] cert`` / ``key``; with none configured, a self-signed certificate for
``server.hostname`` is made at first start under ``<data_dir>/tls/`` (and made again when
it expires or the hostname changes). Its SHA-256 fingerprint is logged so that a client
can pin it.

:meth:`TlsProvider.reload` (SIGHUP) checks the new files in a scratch context first, then
loads them into the live context: asyncio servers bound with it and sessions that call
:meth:`TlsProvider.server_context` later both use the new certificate for their next
handshake; a bad file leaves the old certificate in place.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import logging
import os
import ssl
from pathlib import Path
from typing import Any

__all__ = ["CIPHERS", "TlsError", "TlsProvider", "make_self_signed"]

log = logging.getLogger("pigeon.tls")

#: OpenSSL cipher list for TLS 1.2 (TLS 1.3 suites are all AEAD and stay at their defaults):
#: ECDHE or DHE key exchange with AES-GCM or ChaCha20-Poly1305 only.
CIPHERS = (
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"
    "DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384:DHE-RSA-CHACHA20-POLY1305"
)

_SELF_SIGNED_DAYS = 825  # the longest validity CA/B rules ever allowed; renewed on expiry
_RENEW_BEFORE = datetime.timedelta(days=7)


class TlsError(Exception):
    """The certificate or key cannot be used; the message says which file and why."""


class TlsProvider:
    """The TLS server context of this process.

    Args:
        settings: ``pigeon.config.Settings`` (``tls.cert``, ``tls.key``,
            ``server.hostname``, ``server.data_dir``).

    Attributes:
        fingerprint_sha256: SHA-256 of the certificate (DER), as colon-separated
            upper-case hex pairs.
        cert_path: the certificate file in use.
        key_path: the key file in use.
        self_signed: the certificate was made by Pigeon.

    Raises:
        TlsError: the configured certificate or key cannot be loaded, or the self-signed
            one cannot be written.
    """

    def __init__(self, settings: Any) -> None:
        self._settings = settings
        self.self_signed = settings.tls.cert is None
        if self.self_signed:
            tls_dir = Path(settings.server.data_dir) / "tls"
            self.cert_path = tls_dir / "cert.pem"
            self.key_path = tls_dir / "key.pem"
            _ensure_self_signed(self.cert_path, self.key_path, settings.server.hostname)
        else:
            self.cert_path = Path(settings.tls.cert)
            self.key_path = Path(settings.tls.key)
        self._context = new_server_context()
        self._load(self._context)
        self.fingerprint_sha256 = fingerprint(self.cert_path)
        log.info("TLS certificate %s (%s) SHA-256 %s", self.cert_path,
                 "self-signed" if self.self_signed else "configured", self.fingerprint_sha256)

    def server_context(self) -> ssl.SSLContext:
        """The server context: the same object for the life of the provider.

        Returns:
            An :class:`ssl.SSLContext` for ``server_side=True`` use.
        """
        return self._context

    def reload(self) -> None:
        """Read the certificate and key again (SIGHUP); later handshakes use the new ones.

        A self-signed certificate is renewed when it is about to expire or the hostname
        changed. When the new files are unusable the old certificate stays and the problem
        is logged.

        Raises:
            TlsError: the new certificate or key cannot be loaded (the old ones stay).
        """
        if self.self_signed:
            _ensure_self_signed(self.cert_path, self.key_path,
                                self._settings.server.hostname)
        self._load(new_server_context())  # check in a scratch context first
        self._load(self._context)
        self.fingerprint_sha256 = fingerprint(self.cert_path)
        log.info("TLS certificate reloaded: %s SHA-256 %s", self.cert_path,
                 self.fingerprint_sha256)

    def _load(self, context: ssl.SSLContext) -> None:
        try:
            context.load_cert_chain(str(self.cert_path), str(self.key_path))
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise TlsError(
                f"cannot load TLS certificate {self.cert_path} with key {self.key_path}: {exc}"
            ) from exc


def new_server_context() -> ssl.SSLContext:
    """A server context with Pigeon's protocol and cipher choices and no certificate.

    Returns:
        TLS >= 1.2, :data:`CIPHERS`, no compression, no renegotiation, server cipher
        preference, fresh (EC)DHE keys per handshake.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(CIPHERS)
    ctx.options |= (
        ssl.OP_NO_COMPRESSION
        | ssl.OP_CIPHER_SERVER_PREFERENCE
        | ssl.OP_SINGLE_DH_USE
        | ssl.OP_SINGLE_ECDH_USE
        | ssl.OP_NO_RENEGOTIATION
    )
    return ctx


def fingerprint(cert_path: Path) -> str:
    """SHA-256 fingerprint of the first certificate in a PEM file.

    Args:
        cert_path: a PEM file.

    Returns:
        ``"AB:CD:..."`` (32 pairs).

    Raises:
        TlsError: the file has no readable certificate.
    """
    try:
        pem = cert_path.read_text(encoding="ascii")
        start = pem.index("-----BEGIN CERTIFICATE-----")
        end = pem.index("-----END CERTIFICATE-----", start) + len("-----END CERTIFICATE-----")
        der = ssl.PEM_cert_to_DER_cert(pem[start:end])
    except (OSError, ValueError) as exc:
        raise TlsError(f"cannot read certificate {cert_path}: {exc}") from exc
    digest = hashlib.sha256(der).hexdigest().upper()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


def _ensure_self_signed(cert_path: Path, key_path: Path, hostname: str) -> None:
    if _self_signed_usable(cert_path, key_path, hostname):
        return
    log.info("making a self-signed TLS certificate for %s in %s", hostname, cert_path.parent)
    try:
        make_self_signed(cert_path, key_path, hostname)
    except OSError as exc:
        raise TlsError(f"cannot write the self-signed certificate: {exc}") from exc


def _self_signed_usable(cert_path: Path, key_path: Path, hostname: str) -> bool:
    from cryptography import x509

    if not (cert_path.is_file() and key_path.is_file()):
        return False
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except (OSError, ValueError, x509.ExtensionNotFound):
        return False
    if hostname.lower() not in [n.lower() for n in names.value.get_values_for_type(x509.DNSName)]:
        return False
    now = datetime.datetime.now(datetime.UTC)
    return cert.not_valid_after_utc - _RENEW_BEFORE > now


def make_self_signed(cert_path: Path, key_path: Path, hostname: str) -> None:
    """Write a new self-signed certificate and RSA-2048 key for ``hostname``.

    The key file is created with mode 0600; both files are replaced atomically.

    Args:
        cert_path: where to write the PEM certificate.
        key_path: where to write the PEM private key.
        hostname: the DNS name (subject CN and subjectAltName).

    Raises:
        OSError: the files cannot be written.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname[:64])])
    now = datetime.datetime.now(datetime.UTC)
    alt: list[x509.GeneralName] = [x509.DNSName(hostname)]
    if hostname != "localhost":
        alt.append(x509.DNSName("localhost"))
    alt += [x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.IPAddress(ipaddress.ip_address("::1"))]
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=_SELF_SIGNED_DAYS))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path.parent.mkdir(parents=True, exist_ok=True)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write_atomic(key_path, key_pem, 0o600)
    _write_atomic(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
