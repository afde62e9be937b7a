"""Plays a client transcript (tests/cases/transcripts/*.json) against a server.

The format: each step has ``send`` (text written as UTF-8; ``{{repeat:N:TEXT}}`` expands to
TEXT N times, ``{{i}}`` to the iteration of a repeated step) and ``expect`` (a regular
expression searched in the complete reply, lines joined by CRLF; ``<closed>``,
``<timeout>``, ``<tls-ok>`` and ``<connected>`` stand for those outcomes; null means do not
read). Optional: ``action`` (starttls, wait, reconnect), ``timeout``, ``repeat``,
``skip_unless_prev``, ``only_if``.
"""

from __future__ import annotations

import json
import re
import socket
import ssl
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TRANSCRIPTS = Path(__file__).parent / "transcripts"
_MACRO = re.compile(r"\{\{repeat:(\d+):(.*?)\}\}", re.S)


def load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def expand(text: str, i: int | None = None) -> str:
    text = _MACRO.sub(lambda m: m.group(2) * int(m.group(1)), text)
    if i is not None:
        text = text.replace("{{i}}", str(i))
    return text


@dataclass
class _Conn:
    host: str
    port: int
    sock: socket.socket = field(init=False)
    buf: bytes = b""

    def __post_init__(self) -> None:
        self.open()

    def open(self) -> None:
        self.sock = socket.create_connection((self.host, self.port), timeout=10)
        self.buf = b""

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def send(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except OSError:
            pass

    def read_reply(self, timeout: float) -> str:
        lines: list[str] = []
        deadline = time.monotonic() + timeout
        while True:
            while b"\r\n" not in self.buf:
                left = deadline - time.monotonic()
                if left <= 0:
                    return "<timeout>"
                self.sock.settimeout(left)
                try:
                    chunk = self.sock.recv(65536)
                except TimeoutError:
                    return "<timeout>"
                except OSError:
                    return "<closed>"
                if not chunk:
                    return "<closed>"
                self.buf += chunk
            raw, self.buf = self.buf.split(b"\r\n", 1)
            line = raw.decode("utf-8", "replace")
            lines.append(line)
            if len(line) < 4 or line[3] != "-":
                return "\r\n".join(lines)

    def starttls(self) -> str:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        try:
            self.sock = ctx.wrap_socket(self.sock, server_hostname=self.host)
            self.buf = b""
            return "<tls-ok>"
        except (OSError, ssl.SSLError) as exc:
            return f"<tls-fail {exc}>"


def run(case: dict[str, Any], host: str, port: int, flags: frozenset[str] = frozenset()
        ) -> list[str]:
    """Play ``case``; return a list of failure descriptions (empty when it passes)."""
    conn = _Conn(host, port)
    prev: str | None = None
    failures: list[str] = []
    try:
        for n, step in enumerate(case["steps"], 1):
            if step.get("only_if") and step["only_if"] not in flags:
                continue
            if "skip_unless_prev" in step and (
                prev is None or not re.search(step["skip_unless_prev"], prev)
            ):
                continue
            for i in range(1, step.get("repeat", 1) + 1):
                action = step.get("action")
                reply: str | None = None
                if action == "starttls":
                    reply = conn.starttls()
                elif action == "wait":
                    time.sleep(step["seconds"])
                elif action == "reconnect":
                    conn.close()
                    conn.open()
                    reply = "<connected>"
                else:
                    data = expand(step["send"], i if "repeat" in step else None).encode()
                    if data:
                        conn.send(data)
                    if step["expect"] is not None:
                        reply = conn.read_reply(step.get("timeout", 10))
                expect = step["expect"]
                if expect is None:
                    ok = True
                elif expect in ("<tls-ok>", "<connected>"):
                    ok = reply == expect
                else:
                    ok = reply is not None and re.search(expect, reply) is not None
                if reply is not None:
                    prev = reply
                if not ok:
                    failures.append(f"step {n}: expected {expect!r}, got {str(reply)[:300]!r}")
    finally:
        conn.close()
    return failures
