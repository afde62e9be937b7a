"""A raw SMTP client for end-to-end tests: whole replies, STARTTLS, implicit TLS, source address."""

from __future__ import annotations

import base64
import socket
import ssl

ALICE = "alice@example.com"
ALICE_PASSWORD = "correct-horse-battery"


def plain(user: str, password: str, authzid: str = "") -> str:
    """The base64 SASL PLAIN message (RFC 4616)."""
    return base64.b64encode(f"{authzid}\0{user}\0{password}".encode()).decode()


def insecure_context() -> ssl.SSLContext:
    """A client context that accepts any certificate (the server's is self-signed)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


class Client:
    """One SMTP connection to 127.0.0.1.

    Args:
        port: the listener port.
        source: the local address to connect from (any 127.0.0.0/8 address).
        implicit_tls: start TLS at connect (``submissions``).
        timeout: socket timeout in seconds.
    """

    def __init__(self, port: int, *, source: str = "127.0.0.1", implicit_tls: bool = False,
                 timeout: float = 20.0) -> None:
        self.sock: socket.socket = socket.create_connection(
            ("127.0.0.1", port), timeout=timeout, source_address=(source, 0)
        )
        self.buf = b""
        if implicit_tls:
            self.sock = insecure_context().wrap_socket(self.sock, server_hostname="mx.example.com")

    def reply(self) -> str:
        """Read one complete reply; ``<closed>`` when the server closed first."""
        lines: list[str] = []
        while True:
            while b"\r\n" not in self.buf:
                try:
                    chunk = self.sock.recv(65536)
                except (ConnectionError, ssl.SSLError):
                    chunk = b""
                if not chunk:
                    return "\r\n".join(lines) if lines else "<closed>"
                self.buf += chunk
            line, self.buf = self.buf.split(b"\r\n", 1)
            lines.append(line.decode("utf-8", "replace"))
            if len(line) < 4 or line[3:4] != b"-":
                return "\r\n".join(lines)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def cmd(self, line: str) -> str:
        """Send one command line (CRLF added) and read its reply."""
        self.send(line.encode() + b"\r\n")
        return self.reply()

    def starttls(self) -> None:
        """Upgrade the connection after a ``220`` to STARTTLS (buffered plaintext dropped)."""
        self.buf = b""
        self.sock = insecure_context().wrap_socket(self.sock, server_hostname="mx.example.com")

    def greet_tls_login(self, user: str = ALICE, password: str = ALICE_PASSWORD) -> str:
        """Greeting, EHLO, STARTTLS, EHLO, AUTH PLAIN; return the AUTH reply."""
        assert self.reply().startswith("220")
        assert self.cmd("EHLO client.example.net").startswith("250")
        assert self.cmd("STARTTLS").startswith("220")
        self.starttls()
        assert self.cmd("EHLO client.example.net").startswith("250")
        return self.cmd(f"AUTH PLAIN {plain(user, password)}")

    @property
    def tls_version(self) -> str | None:
        return self.sock.version() if isinstance(self.sock, ssl.SSLSocket) else None

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
