"""A scriptable remote MTA for outbound delivery tests, built on Pigeon's own server core.

It runs its own event loop in a thread, so synchronous tests can start it beside a
``pigeon serve`` subprocess. Replies can be scripted per recipient and per transaction, the
connection can be dropped in the middle of DATA, extensions can be left out, and STARTTLS
and AUTH PLAIN/LOGIN can be offered. Everything is counted: connections, transactions per
connection, and every message received with its envelope and exact content.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pigeon.mail.envelope import MailParams
from pigeon.mail.reply import Reply
from pigeon.protocol.smtp import _events as ev
from pigeon.protocol.smtp._state import State
from pigeon.protocol.smtp.server import ServerConfig, ServerConnection


@dataclass
class Received:
    """One message the peer accepted."""

    connection: int
    reverse_path: str
    recipients: list[str]
    params: MailParams
    content: bytes
    tls: bool
    helo: str
    user: str | None


@dataclass
class FakeMx:
    """A scripted SMTP server on ``host:port`` (port 0: a free one).

    Scripting (all optional):
        rcpt_replies: address (lower case) -> reply to its RCPT (default 250).
        data_replies: replies to the end of data, used one per transaction in order; when
            empty, 250.
        drop_in_data: the next this many transactions lose the connection in the middle
            of DATA (after the first block of content, before any reply).
        greeting: the 220 greeting (a 4xx/5xx refuses the session).
        auth_users: user -> password; offers AUTH PLAIN LOGIN (after STARTTLS when
            ``tls_context`` is set).
    """

    host: str = "127.0.0.1"
    port: int = 0
    hostname: str = "mx.example.net"
    eightbitmime: bool = True
    smtputf8: bool = True
    pipelining: bool = True
    chunking: bool = True
    dsn: bool = True
    max_recipients: int = 100
    tls_context: ssl.SSLContext | None = None
    implicit_tls: bool = False
    auth_users: dict[str, str] = field(default_factory=dict)
    auth_mechanisms: tuple[str, ...] = ("PLAIN", "LOGIN")
    refuse_ehlo: bool = False
    max_size: int = 35 * 1024 * 1024
    rcpt_replies: dict[str, Reply] = field(default_factory=dict)
    data_replies: list[Reply] = field(default_factory=list)
    drop_in_data: int = 0
    greeting: Reply | None = None
    messages: list[Received] = field(default_factory=list)
    connections: int = 0
    transactions: dict[int, int] = field(default_factory=dict)
    max_parallel: int = 0
    wire: dict[int, bytearray] = field(default_factory=dict)
    _open: int = 0
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None
    _server: asyncio.base_events.Server | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # -- life cycle

    def start(self) -> FakeMx:
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)

            async def serve() -> None:
                self._server = await asyncio.start_server(
                    self._session, self.host, self.port,
                    ssl=self.tls_context if self.implicit_tls else None)
                self.port = self._server.sockets[0].getsockname()[1]
                ready.set()

            loop.run_until_complete(serve())
            loop.run_forever()
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        assert ready.wait(10), "fake MX did not start"
        return self

    def stop(self) -> None:
        loop = self._loop
        if loop is None:
            return

        async def close() -> None:
            if self._server is not None:
                self._server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        asyncio.run_coroutine_threadsafe(close(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        assert self._thread is not None
        self._thread.join(10)
        self._loop = None

    def __enter__(self) -> FakeMx:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait_for(self, predicate: Callable[[FakeMx], bool], timeout: float = 20.0) -> None:
        """Poll until ``predicate(self)`` holds (bounded)."""
        deadline = time.monotonic() + timeout
        while not predicate(self):
            if time.monotonic() > deadline:
                raise AssertionError(f"fake MX {self.hostname}: condition not met; "
                                     f"{len(self.messages)} messages, "
                                     f"{self.connections} connections")
            time.sleep(0.02)

    def by_recipient(self, address: str) -> list[Received]:
        return [m for m in self.messages if address in m.recipients]

    # -- one session

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with self._lock:
            self.connections += 1
            number = self.connections
            self._open += 1
            self.max_parallel = max(self.max_parallel, self._open)
            self.transactions[number] = 0
            self.wire[number] = bytearray()
        config = ServerConfig(
            hostname=self.hostname, max_recipients=self.max_recipients,
            max_message_size=self.max_size,
            pipelining=self.pipelining, eightbitmime=self.eightbitmime,
            smtputf8=self.smtputf8, dsn=self.dsn, chunking=self.chunking,
        )
        conn = ServerConnection(config)
        conn.offer_starttls = self.tls_context is not None and not self.implicit_tls
        if self.auth_users and (self.tls_context is None or self.implicit_tls):
            conn.auth_mechanisms = self.auth_mechanisms
        conn.tls = self.implicit_tls
        state = _Transaction()
        try:
            greeting = self.greeting or Reply(220, None, f"{self.hostname} ESMTP fake")
            writer.write(conn.send(greeting))
            if greeting.code != 220:
                await writer.drain()
                return
            while True:
                event = conn.next_event()
                if event is ev.NEED_DATA or event is ev.PAUSED:
                    await writer.drain()
                    if conn.state is State.CLOSED:
                        return
                    if conn.state is State.TLS:
                        assert self.tls_context is not None
                        await writer.start_tls(self.tls_context)
                        conn.tls_started()
                        if self.auth_users:
                            conn.auth_mechanisms = self.auth_mechanisms
                        continue
                    if event is ev.PAUSED:
                        return
                    data = await reader.read(65536)
                    self.wire[number] += data
                    conn.receive_data(data)
                    continue
                if isinstance(event, ev.ConnectionClosed):
                    return
                if isinstance(event, ev.DataChunk):
                    state.content += event.data
                    if state.drop:
                        writer.transport.abort()
                        return
                    continue
                reply = self._answer(event, conn, state, number)
                if reply is not None:
                    writer.write(conn.send(reply))
        except (ConnectionError, asyncio.CancelledError, ssl.SSLError):
            pass
        finally:
            with self._lock:
                self._open -= 1
            with contextlib.suppress(Exception):
                writer.close()

    def _answer(self, event: object, conn: ServerConnection, t: _Transaction,
                number: int) -> Reply | None:
        if isinstance(event, ev.CommandError):
            return event.reply
        if isinstance(event, ev.Hello):
            if event.esmtp and self.refuse_ehlo:
                return Reply(502, "5.5.1", "Error: command not implemented")
            t.helo = event.domain
            return conn.ehlo_reply("hello") if event.esmtp else Reply(250, None, self.hostname)
        if isinstance(event, ev.MailFrom):
            t.reset(mail=str(event.reverse_path.mailbox or ""), params=event.params)
            return Reply(250, "2.1.0", "Ok")
        if isinstance(event, ev.RcptTo):
            address = str(event.forward_path.mailbox)
            scripted = self.rcpt_replies.get(address.lower())
            if scripted is not None:
                return scripted
            t.recipients.append(address)
            return Reply(250, "2.1.5", "Ok")
        if isinstance(event, ev.DataCommand):
            t.content = bytearray()
            with self._lock:
                if self.drop_in_data > 0:
                    self.drop_in_data -= 1
                    t.drop = True
            return Reply(354, None, "End data with <CR><LF>.<CR><LF>")
        if isinstance(event, ev.BdatStarted):
            if event.first:
                t.content = bytearray()
            return None
        if isinstance(event, ev.BdatChunkEnd):
            return event.reply_hint or Reply(250, "2.0.0", f"{event.total} octets")
        if isinstance(event, ev.DataComplete):
            if event.reply_hint is not None:
                return event.reply_hint
            with self._lock:
                reply = self.data_replies.pop(0) if self.data_replies else Reply(
                    250, "2.0.0", f"Ok: queued as F{len(self.messages) + 1}")
                if reply.code // 100 == 2:
                    self.messages.append(Received(
                        number, t.mail, list(t.recipients), t.params, bytes(t.content),
                        conn.tls, t.helo, t.user))
                    self.transactions[number] += 1
            return reply
        if isinstance(event, (ev.Reset, ev.Noop)):
            return Reply(250, "2.0.0", "Ok")
        if isinstance(event, ev.Quit):
            return Reply(221, "2.0.0", "Bye")
        if isinstance(event, ev.StartTLS):
            return Reply(220, "2.0.0", "Ready to start TLS")
        if isinstance(event, ev.Auth):
            t.auth_mechanism = event.mechanism
            t.auth_step = 0
            if event.initial_response is not None:
                return self._auth(t, event.initial_response)
            return Reply(334, None, "" if event.mechanism == "PLAIN" else "VXNlcm5hbWU6")
        if isinstance(event, ev.AuthResponse):
            return self._auth(t, event.data)
        if isinstance(event, ev.AuthCancelled):
            return Reply(501, "5.0.0", "Authentication cancelled")
        if isinstance(event, (ev.Verify, ev.Expand, ev.Help)):
            return Reply(502, "5.5.1", "Not implemented")
        raise AssertionError(event)

    def _auth(self, t: _Transaction, data: bytes) -> Reply:
        if t.auth_mechanism == "PLAIN":
            _, user, password = data.split(b"\0", 2) if data.count(b"\0") == 2 else (
                b"", b"", b"")
            return self._check(t, user.decode(), password.decode())
        if t.auth_step == 0:
            t.auth_user = data.decode()
            t.auth_step = 1
            return Reply(334, None, base64.b64encode(b"Password:").decode())
        return self._check(t, t.auth_user, data.decode())

    def _check(self, t: _Transaction, user: str, password: str) -> Reply:
        if self.auth_users.get(user) == password:
            t.user = user
            return Reply(235, "2.7.0", "Authentication successful")
        return Reply(535, "5.7.8", "Authentication credentials invalid")


@dataclass
class _Transaction:
    mail: str = ""
    params: MailParams = field(default_factory=MailParams)
    recipients: list[str] = field(default_factory=list)
    content: bytearray = field(default_factory=bytearray)
    helo: str = ""
    drop: bool = False
    user: str | None = None
    auth_mechanism: str = ""
    auth_step: int = 0
    auth_user: str = ""

    def reset(self, *, mail: str, params: MailParams) -> None:
        self.mail = mail
        self.params = params
        self.recipients = []
        self.content = bytearray()
        self.drop = False


def free_port(*hosts: str) -> int:
    """A TCP port that is free on every one of ``hosts`` (for fixed listener ports)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind((hosts[0], 0))
            port = int(s.getsockname()[1])
        ok = True
        for host in hosts[1:]:
            with socket.socket() as s:
                try:
                    s.bind((host, port))
                except OSError:
                    ok = False
        if ok:
            return port
    raise RuntimeError("no common free port")


def queue_messages(data_dir: Path) -> list[dict[str, Any]]:
    """A Pigeon's queue as ``pigeon queue list --json`` shows it, read from queue.db."""
    from pigeon.cli.queue import _message_json
    from pigeon.storage.sqlite.queue_store import SqliteQueueStore

    db = data_dir / "queue.db"
    if not db.exists():
        return []
    store = SqliteQueueStore(db, data_dir / "spool" / "queue")
    try:
        messages = [store.get(q) for q in store.queue_ids()]
        return [_message_json(m) for m in messages if m is not None]
    finally:
        store.close()
