"""End to end: memory, smuggling over TCP, connection limits, timeouts, graceful shutdown."""

from __future__ import annotations

import signal
import socket
from pathlib import Path

import pytest

from .conftest import delivered, wait_for
from .server import PigeonServer


class Client:
    """A raw SMTP client over a socket, reading whole replies."""

    def __init__(self, port: int, timeout: float = 30.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def reply(self) -> str:
        lines = []
        while True:
            while b"\r\n" not in self.buf:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return "<closed>" if not lines else "\r\n".join(lines)
                self.buf += chunk
            line, self.buf = self.buf.split(b"\r\n", 1)
            lines.append(line.decode())
            if len(line) < 4 or line[3:4] != b"-":
                return "\r\n".join(lines)

    def cmd(self, data: bytes) -> str:
        self.sock.sendall(data)
        return self.reply()

    def close(self) -> None:
        self.sock.close()


def test_50_mib_message_costs_little_memory(tmp_path: Path) -> None:
    server = PigeonServer(tmp_path, sections={"limits": {"max_message_size": "64MiB"}}).start()
    try:
        _send_50_mib(server)
    finally:
        server.stop()


def _send_50_mib(server: PigeonServer) -> None:
    c = Client(server.port)
    assert c.reply().startswith("220")
    assert c.cmd(b"EHLO client.example.net\r\n").startswith("250")
    assert c.cmd(b"MAIL FROM:<big@example.org>\r\n").startswith("250")
    assert c.cmd(b"RCPT TO:<carol@example.com>\r\n").startswith("250")
    assert c.cmd(b"DATA\r\n").startswith("354")
    baseline = server.rss_bytes()
    peak = baseline
    block = (b"x" * 76 + b"\r\n") * 4096  # 320 KiB
    sent = 0
    c.sock.sendall(b"Subject: fifty\r\n\r\n")
    while sent < 50 * 1024 * 1024:
        c.sock.sendall(block)
        sent += len(block)
        if sent % (len(block) * 16) == 0:
            peak = max(peak, server.rss_bytes())
    reply = c.cmd(b".\r\n")
    peak = max(peak, server.rss_bytes())
    assert reply.startswith("250 2.0.0 Ok: queued as"), reply
    c.cmd(b"QUIT\r\n")
    c.close()
    growth = peak - baseline
    assert growth < 20 * 1024 * 1024, f"resident memory grew by {growth} bytes"
    files = delivered(server, "carol@example.com", 1)
    assert files[-1].stat().st_size > sent


SMUGGLED = (b"MAIL FROM:<ceo@example.org>\r\nRCPT TO:<bob@example.com>\r\nDATA\r\n"
            b"Subject: smuggled\r\n\r\nsecond\r\n")
VARIANTS = {
    "bare-LF": b"first\nsecond\r\n.\r\n",
    "bare-CR": b"first\rsecond\r\n.\r\n",
    "LF.LF": b"first\n.\n" + SMUGGLED + b".\r\n",
    "LF.CRLF": b"first\n.\r\n" + SMUGGLED + b".\r\n",
    "CRLF.LF": b"first\r\n.\n" + SMUGGLED + b".\r\n",
    "CR.CR": b"first\r.\r" + SMUGGLED + b".\r\n",
}


@pytest.mark.parametrize("name", sorted(VARIANTS))
@pytest.mark.parametrize("split", [None, 6, 8])
def test_smuggling_over_tcp(server: PigeonServer, name: str, split: int | None) -> None:
    body = b"Subject: hi\r\n\r\n" + VARIANTS[name]
    c = Client(server.port)
    c.reply()
    c.cmd(b"EHLO client.example.net\r\n")
    assert c.cmd(b"MAIL FROM:<alice@example.org>\r\n").startswith("250")
    assert c.cmd(b"RCPT TO:<bob@example.com>\r\n").startswith("250")
    assert c.cmd(b"DATA\r\n").startswith("354")
    if split is None:
        reply = c.cmd(body)
    else:
        cut = len(b"Subject: hi\r\n\r\n") + split
        c.sock.sendall(body[:cut])
        reply = c.cmd(body[cut:])
    assert reply.startswith("550 5.6.0"), reply
    # Sync probe: nothing else is queued and no transaction is open.
    assert c.cmd(b"RCPT TO:<bob@example.com>\r\n").startswith("503")
    c.cmd(b"QUIT\r\n")
    c.close()


def test_connection_limit_per_ip(tmp_path: Path) -> None:
    srv = PigeonServer(tmp_path, sections={"limits": {"max_connections_per_ip": 2}}).start()
    try:
        a, b = Client(srv.port), Client(srv.port)
        assert a.reply().startswith("220") and b.reply().startswith("220")
        third = Client(srv.port)
        assert third.reply() == "421 mx.example.com Error: too many connections from your address"
        third.close()
        a.cmd(b"QUIT\r\n")
        a.close()
        # A slot is free again once a session has ended.
        fourth = wait_for(lambda: _greeted(srv.port))
        assert fourth.startswith("220")
        b.close()
    finally:
        srv.stop()


def _greeted(port: int) -> str | None:
    c = Client(port)
    reply = c.reply()
    c.close()
    return reply if reply.startswith("220") else None


def test_talking_before_greeting_is_refused(tmp_path: Path) -> None:
    srv = PigeonServer(tmp_path, sections={"smtp": {"greet_pause": "2s"}}).start()
    try:
        c = Client(srv.port)
        c.sock.sendall(b"EHLO eager.example.net\r\n")
        assert c.reply().startswith("554 ")
        assert c.reply() == "<closed>"
        c.close()
    finally:
        srv.stop()


def test_idle_timeout_sends_421(tmp_path: Path) -> None:
    srv = PigeonServer(tmp_path, sections={"timeouts": {"command": 1, "data": 1}}).start()
    try:
        c = Client(srv.port)
        assert c.reply().startswith("220")
        assert c.reply() == "421 4.4.2 mx.example.com Error: timeout exceeded"
        assert c.reply() == "<closed>"
        c.close()
    finally:
        srv.stop()


def test_sigterm_ends_idle_sessions_and_exits_cleanly(tmp_path: Path) -> None:
    srv = PigeonServer(tmp_path).start()
    c = Client(srv.port)
    assert c.reply().startswith("220")
    c.cmd(b"EHLO client.example.net\r\n")
    assert srv.proc is not None
    srv.proc.send_signal(signal.SIGTERM)
    assert c.reply() == "421 4.3.2 mx.example.com Service shutting down"
    c.close()
    assert srv.stop() == 0


def test_sigterm_lets_a_transaction_finish(tmp_path: Path) -> None:
    srv = PigeonServer(tmp_path).start()
    c = Client(srv.port)
    c.reply()
    c.cmd(b"EHLO client.example.net\r\n")
    c.cmd(b"MAIL FROM:<alice@example.org>\r\n")
    c.cmd(b"RCPT TO:<bob@example.com>\r\n")
    assert c.cmd(b"DATA\r\n").startswith("354")
    assert srv.proc is not None
    srv.proc.send_signal(signal.SIGTERM)
    reply = c.cmd(b"Subject: late\r\n\r\nstill accepted\r\n.\r\n")
    assert reply.startswith("250 2.0.0 Ok: queued as"), reply
    assert c.reply() == "421 4.3.2 mx.example.com Service shutting down"
    c.close()
    assert srv.stop() == 0
