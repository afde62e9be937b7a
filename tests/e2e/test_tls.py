"""End to end: STARTTLS injection, the TLS scan, certificates and their reload."""

from __future__ import annotations

import hashlib
import signal
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from .conftest import wait_for
from .server import PigeonServer
from .smtp_tls_client import ALICE, ALICE_PASSWORD, Client, insecure_context, plain


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PigeonServer]:
    server = PigeonServer(
        tmp_path_factory.mktemp("tls"),
        listeners=["smtp", "submission", "submissions"],
        users={ALICE: ALICE_PASSWORD},
        # A TLS scanner opens hundreds of connections in a second.
        sections={"limits": {"connections_per_minute_per_ip": 100000}},
    )
    server.start()
    yield server
    server.stop()


def _ehlo(c: Client) -> None:
    assert c.reply().startswith("220")
    assert "STARTTLS" in c.cmd("EHLO client.example.net")


# ---------------------------------------------------------------- STARTTLS injection


INJECTIONS = {
    "mail": b"MAIL FROM:<attacker@example.net>\r\n",
    "rcpt": b"EHLO evil.example\r\nMAIL FROM:<a@example.net>\r\nRCPT TO:<bob@example.com>\r\n",
    "auth": f"AUTH PLAIN {plain(ALICE, ALICE_PASSWORD)}\r\n".encode(),
    "rset": b"RSET\r\n",
}


@pytest.mark.parametrize("kind", ["smtp", "submission"])
@pytest.mark.parametrize("injected", sorted(INJECTIONS))
def test_commands_after_starttls_in_one_write_are_never_executed(
    srv: PigeonServer, kind: str, injected: str
) -> None:
    with Client(srv.ports[kind]) as c:
        _ehlo(c)
        c.send(b"STARTTLS\r\n" + INJECTIONS[injected])
        assert c.reply() == "220 2.0.0 Ready to start TLS"
        assert c.buf == b""  # nothing else was answered in plaintext
        c.starttls()
        # Replies come in command order: the first one after the handshake must be NOOP's.
        assert c.cmd("NOOP") == "250 2.0.0 Ok"
        assert c.cmd("MAIL FROM:<alice@example.com>") == "503 5.5.1 Error: send HELO/EHLO first"
        assert c.cmd("EHLO client.example.net").startswith("250")
        assert c.cmd("RCPT TO:<bob@example.com>") == "503 5.5.1 Error: need MAIL command"
        if kind == "submission":  # the injected AUTH did not log anyone in
            assert c.cmd("MAIL FROM:<alice@example.com>") == "530 5.7.0 Authentication required"


def test_plaintext_sent_right_after_starttls_in_a_second_write(srv: PigeonServer) -> None:
    """The injection arrives in its own segment, racing the server's switch to TLS."""
    for _ in range(20):
        with Client(srv.ports["submission"]) as c:
            _ehlo(c)
            c.send(b"STARTTLS\r\n")
            c.send(b"MAIL FROM:<attacker@example.net>\r\n")
            assert c.reply() == "220 2.0.0 Ready to start TLS"
            try:
                c.starttls()
            except (ssl.SSLError, ConnectionError):
                continue  # the server read the plaintext as a broken handshake: also safe
            assert c.cmd("NOOP") in ("250 2.0.0 Ok", "<closed>")


def test_no_reply_between_handshake_and_first_command(srv: PigeonServer) -> None:
    with Client(srv.ports["smtp"]) as c:
        _ehlo(c)
        c.send(b"STARTTLS\r\nRSET\r\nNOOP\r\nQUIT\r\n")
        assert c.reply().startswith("220")
        c.starttls()
        # An unsolicited 250 for the injected RSET/NOOP would be CVE-2011-0411: the first
        # reply read after the handshake must be the one to HELP.
        assert c.cmd("HELP").startswith("214")
        assert c.cmd("QUIT").startswith("221")


def test_starttls_twice_and_with_argument(srv: PigeonServer) -> None:
    with Client(srv.ports["smtp"]) as c:
        _ehlo(c)
        assert c.cmd("STARTTLS now") == "501 5.5.4 Syntax: STARTTLS (no arguments)"
        assert c.cmd("MAIL FROM:<a@example.org>").startswith("250")
        assert c.cmd("STARTTLS") == (
            "503 5.5.1 Error: STARTTLS not allowed during a mail transaction")
        assert c.cmd("RSET").startswith("250")
        assert c.cmd("STARTTLS").startswith("220")
        c.starttls()
        assert c.cmd("EHLO client.example.net").startswith("250")
        assert c.cmd("STARTTLS") == "502 5.5.1 Error: STARTTLS not available"


def test_failed_handshake_ends_the_session_only(srv: PigeonServer) -> None:
    with Client(srv.ports["smtp"]) as c:
        _ehlo(c)
        assert c.cmd("STARTTLS").startswith("220")
        c.send(b"this is not a TLS ClientHello\r\n")
        assert c.reply() == "<closed>"
    with Client(srv.ports["smtp"]) as c:  # the server is fine
        _ehlo(c)


# ---------------------------------------------------------------- TLS scan


def _sslyze_scan(srv: PigeonServer) -> list[tuple[str, object]]:
    sslyze = pytest.importorskip("sslyze")
    commands = {
        sslyze.ScanCommand.SSL_2_0_CIPHER_SUITES, sslyze.ScanCommand.SSL_3_0_CIPHER_SUITES,
        sslyze.ScanCommand.TLS_1_0_CIPHER_SUITES, sslyze.ScanCommand.TLS_1_1_CIPHER_SUITES,
        sslyze.ScanCommand.TLS_1_2_CIPHER_SUITES, sslyze.ScanCommand.TLS_1_3_CIPHER_SUITES,
        sslyze.ScanCommand.TLS_COMPRESSION,
    }
    starttls = sslyze.ProtocolWithOpportunisticTlsEnum.SMTP
    requests = []
    targets = [("smtp", starttls), ("submission", starttls), ("submissions", None)]
    for kind, opportunistic in targets:
        location = sslyze.ServerNetworkLocation("mx.example.com", srv.ports[kind],
                                                ip_address="127.0.0.1")
        network = sslyze.ServerNetworkConfiguration(
            "mx.example.com", tls_opportunistic_encryption=opportunistic
        )
        requests.append(sslyze.ServerScanRequest(server_location=location,
                                                 network_configuration=network,
                                                 scan_commands=commands))
    scanner = sslyze.Scanner()
    scanner.queue_scans(requests)
    port_kind = {srv.ports[kind]: kind for kind, _ in targets}
    return [(port_kind[r.server_location.port], r) for r in scanner.get_results()]


def test_tls_scan_finds_no_weak_protocol_or_cipher(srv: PigeonServer) -> None:
    results = _sslyze_scan(srv)
    assert sorted(kind for kind, _ in results) == ["smtp", "submission", "submissions"]
    for kind, result in results:
        assert result.scan_status.name == "COMPLETED", (kind, result.connectivity_error_trace)
        scan = result.scan_result
        for name in ("ssl_2_0_cipher_suites", "ssl_3_0_cipher_suites",
                     "tls_1_0_cipher_suites", "tls_1_1_cipher_suites"):
            attempt = getattr(scan, name)
            assert attempt.status.name == "COMPLETED", (kind, name, attempt.error_trace)
            assert attempt.result.accepted_cipher_suites == [], (kind, name)
        suites = [s.cipher_suite.name for s in scan.tls_1_2_cipher_suites.result
                  .accepted_cipher_suites]
        suites += [s.cipher_suite.name for s in scan.tls_1_3_cipher_suites.result
                   .accepted_cipher_suites]
        assert suites, kind
        for suite in suites:
            assert not any(weak in suite for weak in ("NULL", "EXPORT", "RC4", "anon", "DES",
                                                      "MD5", "CBC")), (kind, suite)
            assert ("GCM" in suite or "CHACHA20" in suite), (kind, suite)
        assert scan.tls_compression.result.supports_compression is False


@pytest.mark.parametrize("flag", ["-tls1", "-tls1_1"])
def test_openssl_old_protocols_refused(srv: PigeonServer, flag: str) -> None:
    import shutil
    import subprocess

    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed")
    done = subprocess.run(
        [openssl, "s_client", "-starttls", "smtp", "-connect",
         f"127.0.0.1:{srv.ports['smtp']}", flag, "-cipher", "DEFAULT:@SECLEVEL=0"],
        input="QUIT\n", capture_output=True, text=True, timeout=60,
    )
    assert done.returncode != 0
    assert "Cipher is (NONE)" in done.stdout or "no protocols available" in done.stderr or (
        "alert" in done.stderr)


# ---------------------------------------------------------------- certificates


def _fingerprint_seen(port: int, *, starttls: bool) -> str:
    c = Client(port, implicit_tls=not starttls)
    try:
        if starttls:
            _ehlo(c)
            assert c.cmd("STARTTLS").startswith("220")
            c.starttls()
        assert isinstance(c.sock, ssl.SSLSocket)
        der = c.sock.getpeercert(binary_form=True)
        assert der is not None
    finally:
        c.close()
    digest = hashlib.sha256(der).hexdigest().upper()
    return ":".join(digest[i : i + 2] for i in range(0, 64, 2))


def test_self_signed_fingerprint_is_printed_and_served(srv: PigeonServer) -> None:
    printed = [line.split()[-1] for line in srv.output if "TLS certificate SHA-256" in line]
    assert len(printed) == 1
    assert _fingerprint_seen(srv.ports["smtp"], starttls=True) == printed[0]
    assert _fingerprint_seen(srv.ports["submissions"], starttls=False) == printed[0]
    assert (srv.data_dir / "tls" / "key.pem").stat().st_mode & 0o777 == 0o600


def test_configured_certificate_and_sighup_reload(tmp_path: Path) -> None:
    ca = trustme.CA()
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"

    def install(name: str) -> None:
        leaf = ca.issue_cert(name)
        leaf.cert_chain_pems[0].write_to_path(str(cert))
        leaf.private_key_pem.write_to_path(str(key))

    install("mx.example.com")
    server = PigeonServer(tmp_path / "srv", listeners=["smtp", "submissions"],
                          sections={"tls": {"cert": str(cert), "key": str(key)}})
    server.start()
    try:
        first = _fingerprint_seen(server.ports["submissions"], starttls=False)
        # A client that trusts the CA verifies the configured certificate.
        verifying = ssl.create_default_context()
        ca.configure_trust(verifying)
        with socket.create_connection(("127.0.0.1", server.ports["submissions"]), 10) as raw, \
                verifying.wrap_socket(raw, server_hostname="mx.example.com") as tls:
            assert tls.recv(4) == b"220 "
        install("mx.example.com")  # a renewed certificate
        assert server.proc is not None
        server.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: _fingerprint_seen(server.ports["submissions"], starttls=False) != first)
        second = _fingerprint_seen(server.ports["smtp"], starttls=True)
        assert second != first
        assert "TLS certificate reloaded" in server.log()
        # A broken file on SIGHUP keeps the old certificate and the server running.
        key.write_text("broken")
        server.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "TLS reload failed" in server.log())
        assert _fingerprint_seen(server.ports["smtp"], starttls=True) == second
    finally:
        server.stop()


def test_implicit_tls_refuses_plain_and_old_clients(srv: PigeonServer) -> None:
    ctx = insecure_context()
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers("AES256-SHA")  # static RSA, CBC, SHA-1
    with socket.create_connection(("127.0.0.1", srv.ports["submissions"]), 10) as raw, \
            pytest.raises(ssl.SSLError):
        ctx.wrap_socket(raw, server_hostname="mx.example.com")
