"""A small in-memory driver for ServerConnection tests: feeds bytes, answers events."""

from __future__ import annotations

import base64
from dataclasses import dataclass, field

from pigeon.mail.reply import Reply
from pigeon.protocol.smtp import _events as ev
from pigeon.protocol.smtp._state import State
from pigeon.protocol.smtp.server import ServerConfig, ServerConnection


@dataclass
class Message:
    reverse_path: str
    recipients: list[str]
    content: bytes


@dataclass
class Driver:
    """Drives a ServerConnection like the network session does, with scripted answers."""

    config: ServerConfig = field(default_factory=lambda: ServerConfig(hostname="mx.example.com"))
    out: bytearray = field(default_factory=bytearray)
    events: list[object] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)
    unknown_users: frozenset[str] = frozenset({"nobody"})

    def __post_init__(self) -> None:
        self.conn = ServerConnection(self.config)
        self._content = bytearray()
        self._from = ""
        self._rcpts: list[str] = []
        self.out += self.conn.send(Reply(220, None, "mx.example.com ESMTP Pigeon"))

    def feed(self, data: bytes) -> bytes:
        """Feed ``data`` and process every resulting event; return the new output."""
        start = len(self.out)
        if not data:
            return b""
        self.conn.receive_data(data)
        self.pump()
        return bytes(self.out[start:])

    def pump(self) -> None:
        conn = self.conn
        while True:
            event = conn.next_event()
            if event is ev.NEED_DATA or event is ev.PAUSED:
                return
            self.events.append(event)
            reply = self.answer(event)
            if reply is not None:
                self.out += conn.send(reply)

    def answer(self, event: object) -> Reply | None:
        conn = self.conn
        if isinstance(event, ev.DataChunk):
            self._content += event.data
            return None
        if isinstance(event, ev.BdatStarted):
            if event.first:
                self._content.clear()
            return None
        if isinstance(event, ev.CommandError):
            return event.reply
        if isinstance(event, ev.Hello):
            self._rcpts = []
            return conn.ehlo_reply("Hello") if event.esmtp else Reply(250, None, "mx.example.com")
        if isinstance(event, ev.MailFrom):
            self._from = str(event.reverse_path)
            self._rcpts = []
            return Reply(250, "2.1.0", "Ok")
        if isinstance(event, ev.RcptTo):
            mb = event.forward_path.mailbox
            if mb.local_part in self.unknown_users:
                return Reply(550, "5.1.1", "User unknown")
            self._rcpts.append(str(event.forward_path))
            return Reply(250, "2.1.5", "Ok")
        if isinstance(event, ev.DataCommand):
            self._content.clear()
            return Reply(354, None, "End data with <CR><LF>.<CR><LF>")
        if isinstance(event, ev.BdatChunkEnd):
            return event.reply_hint or Reply(250, "2.0.0", f"{event.total} octets received")
        if isinstance(event, ev.DataComplete):
            if event.reply_hint is not None:
                self._content.clear()
                return event.reply_hint
            self.messages.append(Message(self._from, list(self._rcpts), bytes(self._content)))
            self._content.clear()
            return Reply(250, "2.0.0", f"Ok: queued as Q{len(self.messages)}")
        if isinstance(event, (ev.Reset, ev.Noop)):
            return Reply(250, "2.0.0", "Ok")
        if isinstance(event, ev.Verify):
            return Reply(252, "2.1.5", "Cannot VRFY user")
        if isinstance(event, ev.Expand):
            return Reply(502, "5.5.1", "EXPN disabled")
        if isinstance(event, ev.Help):
            return Reply(214, "2.0.0", "See RFC 5321")
        if isinstance(event, ev.Quit):
            return Reply(221, "2.0.0", "Bye")
        if isinstance(event, ev.StartTLS):
            return Reply(220, "2.0.0", "Ready to start TLS")
        if isinstance(event, ev.Auth):
            if event.initial_response is None:
                return Reply(334, None, "")
            return self._check_plain(event.initial_response)
        if isinstance(event, ev.AuthResponse):
            return self._check_plain(event.data)
        if isinstance(event, ev.AuthCancelled):
            return Reply(501, "5.0.0", "Authentication cancelled")
        if isinstance(event, ev.ConnectionClosed):
            return None
        raise AssertionError(event)

    def _check_plain(self, data: bytes) -> Reply:
        if data == b"\x00alice\x00secret":
            return Reply(235, "2.7.0", "Authentication successful")
        return Reply(535, "5.7.8", "Authentication credentials invalid")

    @property
    def state(self) -> State:
        return self.conn.state


def replies(data: bytes) -> list[str]:
    """Split output into complete replies (lines of a multi-line reply joined by CRLF)."""
    out: list[str] = []
    cur: list[str] = []
    for line in data.decode("utf-8").split("\r\n")[:-1]:
        cur.append(line)
        if len(line) < 4 or line[3] != "-":
            out.append("\r\n".join(cur))
            cur = []
    return out


def codes(data: bytes) -> list[int]:
    return [int(r[:3]) for r in replies(data)]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
