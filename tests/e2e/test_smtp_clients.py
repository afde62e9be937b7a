"""End to end: real SMTP clients (smtplib, swaks, raw sockets) against a running Pigeon.

Each accepted message must be stored once, byte for byte what was sent, after Pigeon's
Received header (and the Return-Path/Delivered-To lines the MDA writes).
"""

from __future__ import annotations

import email
import email.policy
import re
import shutil
import smtplib
import socket
import subprocess
from email.message import EmailMessage
from pathlib import Path

import pytest

from .conftest import delivered
from .server import PigeonServer

HAS_SWAKS = shutil.which("swaks") is not None


def split_stored(path: Path, address: str, reverse_path: str) -> tuple[bytes, bytes]:
    """Check the MDA and trace lines of a stored message; return (Received field, rest)."""
    data = path.read_bytes()
    prefix = f"Return-Path: <{reverse_path}>\r\nDelivered-To: {address}\r\n".encode()
    assert data.startswith(prefix), data[:200]
    data = data[len(prefix):]
    m = re.match(rb"Received: [^\r\n]*(\r\n\t[^\r\n]*)*\r\n", data)
    assert m is not None, data[:300]
    return m.group(0), data[m.end():]


def smtp(server: PigeonServer) -> smtplib.SMTP:
    return smtplib.SMTP("127.0.0.1", server.port, local_hostname="client.example.net", timeout=30)


def test_smtplib_session_commands(server: PigeonServer) -> None:
    with smtp(server) as s:
        code, _ = s.ehlo()
        assert code == 250
        for ext in ("pipelining", "size", "8bitmime", "smtputf8", "enhancedstatuscodes",
                    "chunking", "dsn"):
            assert s.has_extn(ext), ext
        assert s.esmtp_features["size"] == str(35 * 1024 * 1024)
        assert s.vrfy("bob@example.com") == (
            252, b"2.1.5 Cannot VRFY user, but will accept message and attempt delivery")
        assert s.noop() == (250, b"2.0.0 Ok")
        assert s.rset() == (250, b"2.0.0 Ok")
        assert s.docmd("EXPN", "staff")[0] == 502
        assert s.docmd("HELP")[0] == 214
        assert s.docmd("XYZZY") == (500, b"5.5.2 Error: command not recognized")
        assert s.quit()[0] == 221


def test_smtplib_sendmail_several_recipients_stored_once_each(server: PigeonServer) -> None:
    body = (b"From: alice@example.org\r\nTo: bob@example.com, carol@example.com\r\n"
            b"Subject: several\r\nMessage-ID: <several@example.org>\r\n\r\n"
            b"Hello both.\r\n.leading dot\r\n")
    before_bob = len(server.maildir_files("bob@example.com"))
    before_carol = len(server.maildir_files("carol@example.com"))
    with smtp(server) as s:
        refused = s.sendmail("alice@example.org",
                             ["bob@example.com", "carol@example.com", "nobody@example.com"],
                             body)
    assert refused == {"nobody@example.com": (550, b"5.1.1 <nobody@example.com>: Recipient "
                                                   b"address rejected: User unknown")}
    for address, before in (("bob@example.com", before_bob), ("carol@example.com", before_carol)):
        files = delivered(server, address, before + 1)
        received, rest = split_stored(files[-1], address, "alice@example.org")
        assert rest == body
        assert b"\tby mx.example.com (Pigeon) with ESMTP\r\n\tid " in received
        assert b"for <" not in received  # two recipients: no "for" clause


def test_smtplib_send_message_smtputf8(server: PigeonServer) -> None:
    msg = EmailMessage()
    msg["From"] = "Jörg <jörg@example.org>"
    msg["To"] = "bob@example.com"
    msg["Subject"] = "grüße"
    msg.set_content("hällo wörld\n")
    before = len(server.maildir_files("bob@example.com"))
    with smtp(server) as s:
        s.send_message(msg, mail_options=["SMTPUTF8"])
    files = delivered(server, "bob@example.com", before + 1)
    received, rest = split_stored(files[-1], "bob@example.com", "jörg@example.org")
    assert b"with UTF8SMTP\r\n\tid " in received
    assert b"for <bob@example.com>" in received
    parsed = email.message_from_bytes(rest, policy=email.policy.default)
    assert parsed["Subject"] == "grüße"
    assert parsed.get_content() == "hällo wörld\r\n"  # stored in wire form (CRLF)


def test_raw_bdat_chunks(server: PigeonServer) -> None:
    payload = b"From: a@example.org\r\nSubject: bdat\r\n\r\n" + bytes(range(32, 127)) + b"\r\n"
    before = len(server.maildir_files("carol@example.com"))
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        f = sock.makefile("rb")
        assert f.readline().startswith(b"220 ")
        sock.sendall(b"EHLO client.example.net\r\n")
        while not f.readline().startswith(b"250 "):
            pass
        sock.sendall(b"MAIL FROM:<alice@example.org> BODY=8BITMIME\r\n"
                     b"RCPT TO:<carol@example.com>\r\n"
                     + b"BDAT 20\r\n" + payload[:20]
                     + b"BDAT %d LAST\r\n" % (len(payload) - 20) + payload[20:])
        lines = [f.readline() for _ in range(4)]
        assert [ln[:3] for ln in lines] == [b"250", b"250", b"250", b"250"]
        assert lines[2] == b"250 2.0.0 20 octets received\r\n"
        assert lines[3].startswith(b"250 2.0.0 Ok: queued as ")
        sock.sendall(b"QUIT\r\n")
        assert f.readline().startswith(b"221")
    files = delivered(server, "carol@example.com", before + 1)
    _, rest = split_stored(files[-1], "carol@example.com", "alice@example.org")
    assert rest == payload


@pytest.mark.skipif(not HAS_SWAKS, reason="swaks is not installed")
def test_swaks_pipelining_8bit(server: PigeonServer, tmp_path: Path) -> None:
    body = "Subject: swaks 8bit\nContent-Type: text/plain; charset=utf-8\n" \
           "Content-Transfer-Encoding: 8bit\n\nnaïve café\n"
    before = len(server.maildir_files("alice@example.com"))
    result = subprocess.run(
        ["swaks", "--server", f"127.0.0.1:{server.port}", "--pipeline",
         "--from", "sender@example.org", "--to", "alice@example.com",
         "--ehlo", "client.example.net", "--data", body],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "250 2.0.0 Ok: queued as" in result.stdout
    assert " -> MAIL FROM:<sender@example.org>\n -> RCPT TO:<alice@example.com>\n" in result.stdout
    files = delivered(server, "alice@example.com", before + 1)
    _, rest = split_stored(files[-1], "alice@example.com", "sender@example.org")
    assert "naïve café\r\n".encode() in rest


@pytest.mark.skipif(not HAS_SWAKS, reason="swaks is not installed")
def test_swaks_10_mib_body_byte_exact(server: PigeonServer, tmp_path: Path) -> None:
    line = b"0123456789abcdefghijklmnopqrstuvwxyz" * 2 + b"\r\n"
    body = b"Subject: big\r\n\r\n" + line * ((10 * 1024 * 1024) // len(line))
    src = tmp_path / "big.eml"
    # swaks ends the data with its own CRLF before the final dot.
    src.write_bytes(body[:-2])
    before = len(server.maildir_files("bob@example.com"))
    result = subprocess.run(
        ["swaks", "--server", f"127.0.0.1:{server.port}", "--from", "big@example.org",
         "--to", "bob@example.com", "--data", f"@{src}", "--suppress-data"],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr
    files = delivered(server, "bob@example.com", before + 1, timeout=60)
    _, rest = split_stored(files[-1], "bob@example.com", "big@example.org")
    assert len(rest) == len(body)
    assert rest == body
