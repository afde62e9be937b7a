"""End to end: real POP3 clients (poplib, curl, fetchmail, raw sockets) against a running
Pigeon, reading mail that was sent to the same Pigeon over SMTP.

Every test uses its own user, so the tests of the module can share one server.
"""

from __future__ import annotations

import os
import poplib
import re
import shutil
import smtplib
import socket
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import delivered, wait_for
from .server import PigeonServer

HAS_FETCHMAIL = shutil.which("fetchmail") is not None
HAS_CURL = shutil.which("curl") is not None

PASSWORD = "correct horse battery staple"
USERS = ["alice", "bob", "carol", "dave", "erin", "frank", "gina", "hank", "ivan", "judy",
         "kim", "lee"]


def address(user: str) -> str:
    return f"{user}@example.com"


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PigeonServer]:
    server = PigeonServer(
        tmp_path_factory.mktemp("pigeon-pop3"),
        listeners=["smtp", "pop3", "pop3s"],
        users={address(u): PASSWORD for u in USERS},
    )
    server.start()
    yield server
    server.stop()


def tls_context() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def send(srv: PigeonServer, user: str, bodies: list[bytes]) -> list[bytes]:
    """Send each body (with a Subject) to ``user`` over SMTP; wait until stored.

    Returns:
        The messages as sent (header and body, CRLF).
    """
    before = len(srv.maildir_files(address(user)))
    sent = []
    with smtplib.SMTP("127.0.0.1", srv.ports["smtp"], timeout=30) as s:
        for i, body in enumerate(bodies):
            message = f"Subject: message {i}\r\nFrom: sender@example.net\r\n\r\n".encode() + body
            s.sendmail("sender@example.net", [address(user)], message)
            sent.append(message)
    delivered(srv, address(user), before + len(bodies))
    return sent


def login(srv: PigeonServer, user: str) -> poplib.POP3:
    client = poplib.POP3("127.0.0.1", srv.ports["pop3"], timeout=30)
    client.stls(tls_context())
    client.user(address(user))
    client.pass_(PASSWORD)
    return client


def stored_part(lines: list[bytes]) -> bytes:
    """A retrieved message without the MDA and Received lines Pigeon put before it."""
    data = b"".join(line + b"\r\n" for line in lines)
    m = re.match(
        rb"Return-Path: <[^>]*>\r\nDelivered-To: [^\r\n]*\r\nReceived: [^\r\n]*"
        rb"(\r\n\t[^\r\n]*)*\r\n", data)
    assert m is not None, data[:300]
    return data[m.end():]


class Raw:
    """A line-oriented POP3 client on a socket, for what poplib cannot do."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.buf = b""

    def starttls(self) -> None:
        self.sock = tls_context().wrap_socket(self.sock, server_hostname="mx.example.com")
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def line(self) -> bytes:
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError(self.buf)
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def command(self, line: bytes) -> bytes:
        self.send(line + b"\r\n")
        return self.line()

    def closed(self) -> bool:
        try:
            return self.sock.recv(1) == b""
        except OSError:
            return True

    def close(self) -> None:
        self.sock.close()


def raw_login(srv: PigeonServer, user: str) -> Raw:
    raw = Raw(srv.ports["pop3"])
    assert raw.line().startswith(b"+OK ")
    assert raw.command(b"STLS") == b"+OK Begin TLS negotiation"
    raw.starttls()
    assert raw.command(f"USER {address(user)}".encode()) == b"+OK send PASS"
    assert raw.command(f"PASS {PASSWORD}".encode()).startswith(b"+OK ")
    return raw


# ---------------------------------------------------------------------------- poplib


def test_poplib_reads_and_deletes_over_stls(srv: PigeonServer) -> None:
    sent = send(srv, "alice", [b"first body\r\n", b"second body\r\n.line with dot\r\n"])
    client = poplib.POP3("127.0.0.1", srv.ports["pop3"], timeout=30)
    assert client.getwelcome() == b"+OK mx.example.com POP3 server ready (Pigeon)"
    assert set(client.capa()) == {"TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE",
                                  "PIPELINING", "STLS", "IMPLEMENTATION"}
    assert client.stls(tls_context()) == b"+OK Begin TLS negotiation"
    assert client.capa()["SASL"] == ["PLAIN"]
    assert client.user(address("alice")) == b"+OK send PASS"
    files = {f.name: f.stat().st_size for f in srv.maildir_files(address("alice"))}
    total = sum(files.values())
    assert client.pass_(PASSWORD) == (
        f"+OK alice@example.com has 2 messages ({total} octets)".encode())
    assert client.stat() == (2, total)
    # Unique-ids are the Maildir names, in delivery order.
    response, uidl, _ = client.uidl()
    names = [line.split()[1].decode() for line in uidl]
    assert [line.split()[0] for line in uidl] == [b"1", b"2"]
    assert sorted(names) == sorted(files)
    assert client.uidl(2) == f"+OK 2 {names[1]}".encode()
    sizes = [files[name] for name in names]
    response, listing, _ = client.list()
    assert listing == [f"{i + 1} {size}".encode() for i, size in enumerate(sizes)]
    retrieved = []
    for i in (1, 2):
        response, lines, octets = client.retr(i)
        assert response == f"+OK {sizes[i - 1]} octets".encode()
        assert octets == sizes[i - 1]
        retrieved.append(stored_part(lines))
    assert sorted(retrieved) == sorted(sent)
    response, lines, _ = client.top(2, 0)
    assert lines[-2:] == [b"From: sender@example.net", b""]
    response, lines, _ = client.top(2, 1)
    assert lines[-2] == b""
    assert lines[-1] in (b"first body", b"second body")
    assert client.dele(1) == b"+OK message 1 deleted"
    with pytest.raises(poplib.error_proto, match="already deleted"):
        client.retr(1)
    assert client.stat() == (1, sizes[1])
    assert client.quit() == b"+OK mx.example.com POP3 server signing off (1 messages left)"
    # The deleted one is gone; the one read is in cur/ with the seen flag.
    files = srv.maildir_files(address("alice"))
    assert [(f.parent.name, f.name) for f in files] == [("cur", f"{names[1]}:2,S")]


def test_poplib_over_implicit_tls(srv: PigeonServer) -> None:
    sent = send(srv, "bob", [b"over pop3s\r\n"])
    client = poplib.POP3_SSL("127.0.0.1", srv.ports["pop3s"], context=tls_context(),
                             timeout=30)
    assert "STLS" not in client.capa()
    client.user(address("bob"))
    client.pass_(PASSWORD)
    assert stored_part(client.retr(1)[1]) == sent[0]
    client.dele(1)
    client.quit()
    assert srv.maildir_files(address("bob")) == []


def test_list_sizes_equal_the_octets_retr_sends(srv: PigeonServer) -> None:
    bodies = [
        b"",
        b".\r\n..\r\n...three\r\n",
        b"x" * 998 + b"\r\n" + b".y" * 400 + b"\r\n",
        "caf\u00e9 \u2603\r\n".encode(),
        b"no final line end",  # stored with a CRLF added by SMTP DATA framing
    ]
    send(srv, "carol", bodies)
    raw = raw_login(srv, "carol")
    listing = raw.command(b"LIST")
    assert listing.startswith(b"+OK 5 messages")
    sizes = []
    while (line := raw.line()) != b".":
        sizes.append(int(line.split()[1]))
    for number, size in enumerate(sizes, 1):
        assert raw.command(f"RETR {number}".encode()) == f"+OK {size} octets".encode()
        content = b""
        while (line := raw.line()) != b".":
            content += (line[1:] if line.startswith(b".") else line) + b"\r\n"
        assert len(content) == size
    assert raw.command(b"QUIT").startswith(b"+OK ")
    raw.close()


def test_wrong_password_is_an_auth_error(srv: PigeonServer) -> None:
    client = poplib.POP3("127.0.0.1", srv.ports["pop3"], timeout=30)
    client.stls(tls_context())
    client.user(address("dave"))
    with pytest.raises(poplib.error_proto) as info:
        client.pass_("wrong")
    assert info.value.args[0] == b"-ERR [AUTH] Error: authentication failed: bad credentials"
    client.user(address("dave"))
    assert client.pass_(PASSWORD).startswith(b"+OK ")
    client.quit()


def test_plaintext_login_refused_before_stls(srv: PigeonServer) -> None:
    raw = Raw(srv.ports["pop3"])
    raw.line()
    assert raw.command(b"USER " + address("dave").encode()) == (
        b"-ERR [AUTH] plaintext authentication not allowed without TLS; use STLS first")
    assert raw.command(b"AUTH PLAIN") == (
        b"-ERR [AUTH] plaintext authentication not allowed without TLS; use STLS first")
    assert raw.command(b"QUIT") == b"+OK mx.example.com POP3 server signing off"
    assert raw.closed()


def test_stls_discards_commands_sent_with_it(srv: PigeonServer) -> None:
    raw = Raw(srv.ports["pop3"])
    raw.line()
    raw.send(b"STLS\r\nUSER " + address("dave").encode() + b"\r\nPASS " +
             PASSWORD.encode() + b"\r\n")
    assert raw.line() == b"+OK Begin TLS negotiation"
    raw.starttls()
    # Had the injected USER/PASS run, this would be "-ERR already authenticated".
    assert raw.command(b"STAT") == b"-ERR STAT not valid before authentication"
    raw.close()


# ---------------------------------------------------------------------------- deletion rules


def test_dele_then_rset_deletes_nothing(srv: PigeonServer) -> None:
    send(srv, "erin", [b"one\r\n", b"two\r\n"])
    client = login(srv, "erin")
    client.dele(1)
    client.dele(2)
    assert client.stat() == (0, 0)
    assert client.rset().startswith(b"+OK maildrop has 2 messages")
    assert client.quit().startswith(b"+OK ")
    assert len(srv.maildir_files(address("erin"))) == 2


def test_dropped_connection_deletes_nothing(srv: PigeonServer) -> None:
    send(srv, "frank", [b"one\r\n", b"two\r\n"])
    raw = raw_login(srv, "frank")
    assert raw.command(b"DELE 1") == b"+OK message 1 deleted"
    assert raw.command(b"DELE 2") == b"+OK message 2 deleted"
    raw.close()  # no QUIT
    # The lock is released when the server notices; then everything is still there.
    client = wait_for(lambda: _try_login(srv, "frank"))
    assert client.stat()[0] == 2
    client.dele(1)
    client.quit()
    assert len(srv.maildir_files(address("frank"))) == 1


def _try_login(srv: PigeonServer, user: str) -> poplib.POP3 | None:
    try:
        return login(srv, user)
    except poplib.error_proto as exc:
        assert b"[IN-USE]" in exc.args[0]
        return None


def test_second_concurrent_session_gets_in_use(srv: PigeonServer) -> None:
    send(srv, "gina", [b"one\r\n"])
    first = login(srv, "gina")
    second = poplib.POP3("127.0.0.1", srv.ports["pop3"], timeout=30)
    second.stls(tls_context())
    second.user(address("gina"))
    with pytest.raises(poplib.error_proto) as info:
        second.pass_(PASSWORD)
    assert info.value.args[0] == b"-ERR [IN-USE] maildrop already locked by another session"
    assert second.quit().startswith(b"+OK ")
    first.dele(1)
    assert first.quit().startswith(b"+OK ")
    third = login(srv, "gina")
    assert third.stat() == (0, 0)
    third.quit()


def test_mail_arriving_during_a_session_waits_for_the_next(srv: PigeonServer) -> None:
    send(srv, "hank", [b"one\r\n"])
    client = login(srv, "hank")
    send(srv, "hank", [b"two\r\n"])
    assert client.stat()[0] == 1
    client.dele(1)
    client.quit()
    client = login(srv, "hank")
    assert client.stat()[0] == 1
    assert client.retr(1)[1][-1] == b"two"
    client.quit()


# ---------------------------------------------------------------------------- other clients


@pytest.mark.skipif(not HAS_CURL, reason="curl is not installed")
def test_curl_reads_and_deletes(srv: PigeonServer) -> None:
    sent = send(srv, "ivan", [b"for curl\r\n", b"second\r\n"])
    user = f"{address('ivan')}:{PASSWORD}"

    def curl(*args: str) -> bytes:
        result = subprocess.run(
            ["curl", "-sS", "--ssl-reqd", "-k", "--max-time", "60", "-u", user, *args],
            capture_output=True, timeout=90,
        )
        assert result.returncode == 0, result.stderr
        return result.stdout

    files = sorted(f.stat().st_size for f in srv.maildir_files(address("ivan")))
    pop3, pop3s = srv.ports["pop3"], srv.ports["pop3s"]
    listing = curl(f"pop3://127.0.0.1:{pop3}/")
    assert re.fullmatch(rb"1 \d+\r\n2 \d+\r\n", listing), listing
    sizes = [int(line.split()[1]) for line in listing.splitlines()]
    assert sorted(sizes) == files
    message = curl(f"pop3://127.0.0.1:{pop3}/1")
    assert len(message) == sizes[0]
    assert message.endswith(sent[0]) or message.endswith(sent[1])
    assert curl("-X", "DELE", "-I", f"pop3s://127.0.0.1:{pop3s}/1") == b""
    assert curl(f"pop3s://127.0.0.1:{pop3s}/") == f"1 {sizes[1]}\r\n".encode()
    assert len(srv.maildir_files(address("ivan"))) == 1


@pytest.mark.skipif(not HAS_FETCHMAIL, reason="fetchmail is not installed")
def test_fetchmail_fetches_a_mailbox_with_stls(srv: PigeonServer, tmp_path: Path) -> None:
    sent = send(srv, "judy", [b"for fetchmail\r\n", b".dotted\r\nend\r\n"])
    out = tmp_path / "out"
    out.mkdir()
    rc = tmp_path / "fetchmailrc"
    rc.write_text(
        f'poll 127.0.0.1 service {srv.ports["pop3"]} protocol POP3 uidl\n'
        f'  user "{address("judy")}" there with password "{PASSWORD}" is "root" here\n'
        '  sslproto "TLS1.2+" no sslcertck\n'
        f"  mda \"/bin/sh -c 'cat > {out}/msg.$$'\"\n",
        encoding="utf-8",
    )
    rc.chmod(0o600)
    env = dict(os.environ, FETCHMAILHOME=str(tmp_path), HOME=str(tmp_path))
    result = subprocess.run(
        ["fetchmail", "-f", str(rc), "-v", "--nosyslog", "--idfile", str(tmp_path / "ids"),
         "--pidfile", str(tmp_path / "pid")],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "upgrade to TLS succeeded" in result.stdout
    fetched = sorted(p.read_bytes() for p in out.iterdir())
    # fetchmail adds its own Received field and writes LF line endings for the MDA.
    expected = sorted(m.replace(b"\r\n", b"\n") for m in sent)
    assert len(fetched) == 2
    for message, original in zip(sorted(fetched, key=lambda m: b"dotted" in m),
                                 sorted(expected, key=lambda m: b"dotted" in m), strict=True):
        assert message.endswith(original)
    assert srv.maildir_files(address("judy")) == []


# ---------------------------------------------------------------------------- big messages


@pytest.mark.slow
def test_fifty_mib_message_is_streamed(srv: PigeonServer) -> None:
    box = srv.data_dir / "mail" / "example.com" / "kim"
    line = b".a line that starts with a dot and is long enough to matter" + b"x" * 60 + b"\r\n"
    size = 50 * 1024 * 1024 // len(line) * len(line)
    (box / "new").mkdir(parents=True, exist_ok=True)
    (box / "cur").mkdir(exist_ok=True)
    (box / "tmp").mkdir(exist_ok=True)
    name = "1700000000.M1P1Q1.big.example"
    with open(box / "new" / name, "wb") as f:
        f.write(b"Subject: big\r\n\r\n")
        block = line * 1024
        for _ in range(size // len(block)):
            f.write(block)
        f.write(line * (size // len(line) % 1024))
    total = size + len(b"Subject: big\r\n\r\n")
    raw = raw_login(srv, "kim")
    assert raw.command(b"LIST 1") == f"+OK 1 {total}".encode()
    base = srv.rss_bytes()
    assert raw.command(b"RETR 1") == f"+OK {total} octets".encode()
    # Every content line but the first two starts with "." and is sent stuffed.
    expected = total + size // len(line) + len(b".\r\n")
    received = len(raw.buf)
    tail = raw.buf[-5:]
    peak = base
    next_sample = 0
    while received < expected:
        chunk = raw.sock.recv(1024 * 1024)
        assert chunk
        received += len(chunk)
        tail = (tail + chunk)[-5:]
        if received >= next_sample:
            peak = max(peak, srv.rss_bytes())
            next_sample += 5 * 1024 * 1024
    assert received == expected
    assert tail == b"\r\n.\r\n"
    raw.buf = b""
    assert peak - base < 16 * 1024 * 1024, (base, peak)
    assert raw.command(b"DELE 1") == b"+OK message 1 deleted"
    assert raw.command(b"QUIT").startswith(b"+OK ")
    raw.close()
    assert srv.maildir_files(address("kim")) == []


# ---------------------------------------------------------------------------- restarts


def test_uidl_is_the_same_after_a_restart(tmp_path: Path) -> None:
    server = PigeonServer(tmp_path / "srv", listeners=["smtp", "pop3"],
                          users={address("lee"): PASSWORD})
    server.start()
    try:
        send(server, "lee", [b"one\r\n", b"two\r\n", b"three\r\n"])
        client = login(server, "lee")
        client.retr(2)  # moves message 2 to cur/ with the S flag
        before = client.uidl()[1]
        client.quit()
        server.stop()
        server.start()
        client = login(server, "lee")
        assert client.uidl()[1] == before
        assert len(before) == 3
        client.quit()
    finally:
        server.stop()
