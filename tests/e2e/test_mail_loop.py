"""The whole loop: a user submits with ``pigeon send`` (STARTTLS + AUTH) to a user of
another Pigeon, reached through MX records; the recipient reads it back with POP3.

Two Pigeons on loopback: mx.example.test on 127.0.0.2 (alice's submission server) and
mx.example.net on 127.0.0.3 (bob's mailbox and POP3), with a DNS zone server on 127.0.0.1.
"""

from __future__ import annotations

import email
import email.policy
import os
import poplib
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from .conftest import delivered
from .dns_server import ZoneServer
from .outbound_peer import free_port
from .server import PigeonServer

ALICE, ALICE_PASSWORD = "alice@example.test", "alice-loop-secret"
BOB, BOB_PASSWORD = "bob@example.net", "bob-loop-secret"


@pytest.fixture
def zone() -> Iterator[ZoneServer]:
    server = ZoneServer().start()
    yield server
    server.stop()


def _pop3_context() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # bob's server uses its self-signed default certificate
    return ctx


def test_send_submit_mx_relay_pop3_read(tmp_path: Path, zone: ZoneServer) -> None:
    port = free_port("127.0.0.2", "127.0.0.3")
    zone.add("example.test", "MX", "10 mx.example.test").add("mx.example.test", "A", "127.0.0.2")
    zone.add("example.net", "MX", "10 mx.example.net").add("mx.example.net", "A", "127.0.0.3")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.2", "mx.example.test")
    ca_file, cert_file, key_file = (tmp_path / n for n in ("ca.pem", "cert.pem", "key.pem"))
    ca.cert_pem.write_to_path(str(ca_file))
    cert.private_key_pem.write_to_path(str(key_file))
    for blob in cert.cert_chain_pems:
        blob.write_to_path(str(cert_file), append=True)
    common = {"dns": {"nameservers": [zone.nameserver], "timeout": 3},
              "delivery": {"smtp_port": port}}
    a = PigeonServer(tmp_path / "a", hostname="mx.example.test", local_domains=["example.test"],
                     mailboxes=[], users={ALICE: ALICE_PASSWORD},
                     listeners=["smtp", "submission"], listen_host="127.0.0.2",
                     listen_ports={"smtp": port},
                     sections={**common, "tls": {"cert": str(cert_file), "key": str(key_file)}})
    b = PigeonServer(tmp_path / "b", hostname="mx.example.net", local_domains=["example.net"],
                     mailboxes=[], users={BOB: BOB_PASSWORD}, listeners=["smtp", "pop3"],
                     listen_host="127.0.0.3", listen_ports={"smtp": port}, sections=common)
    a.start()
    try:
        b.start()
        try:
            _loop(a, b, ca_file, tmp_path)
        finally:
            b.stop()
    finally:
        a.stop()


def _loop(a: PigeonServer, b: PigeonServer, ca_file: Path, tmp: Path) -> None:
    attachment = bytes(range(256)) * 40
    (tmp / "data.bin").write_bytes(attachment)
    env = dict(os.environ, PIGEON_PASSWORD=ALICE_PASSWORD)
    env.pop("PIGEON_CONFIG", None)
    done = subprocess.run(
        [sys.executable, "-m", "pigeon", "send",
         "--server", f"127.0.0.2:{a.ports['submission']}", "--starttls",
         "--ca-file", str(ca_file), "--user", ALICE, "--from", f"Alice <{ALICE}>",
         "--to", f"Bob <{BOB}>", "--subject", "Über alle Berge", "--body", "Grüße, Bob!\n",
         "--attach", str(tmp / "data.bin")],
        capture_output=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    [stored] = delivered(b, BOB, 1, timeout=60)
    stored_bytes = stored.read_bytes()
    # Through alice's MSA (ESMTPSA) and bob's MTA (ESMTPS, opportunistic STARTTLS).
    assert stored_bytes.count(b"\r\nReceived: ") + stored_bytes.startswith(b"Received: ") == 2
    assert b"with ESMTPSA" in stored_bytes

    client = poplib.POP3("127.0.0.3", b.ports["pop3"], timeout=30)
    try:
        assert client.stls(_pop3_context()).startswith(b"+OK")
        client.user(BOB)
        client.pass_(BOB_PASSWORD)
        count, size = client.stat()
        assert count == 1
        _, lines, octets = client.retr(1)
        assert octets == size
        assert client.dele(1).startswith(b"+OK")
    finally:
        client.quit()
    retrieved = b"\r\n".join(lines) + b"\r\n"
    # POP3 gives back exactly the stored message (CRLF lines, byte-stuffing undone).
    assert retrieved == stored_bytes
    msg = email.message_from_bytes(retrieved, policy=email.policy.default)
    assert msg["Subject"] == "Über alle Berge"
    assert msg["From"] == f"Alice <{ALICE}>"
    body = msg.get_body(("plain",))
    assert body is not None and body.get_content().replace("\r\n", "\n") == "Grüße, Bob!\n"
    [part] = list(msg.iter_attachments())
    assert part.get_filename() == "data.bin"
    assert part.get_content() == attachment
    assert b.maildir_files(BOB) == []  # deleted at QUIT
