"""The POP3 session in this process, over loopback sockets: autologout, shutdown, failed
logins, error limits, files changing under a session, connection refusals.

The listeners are real (:class:`~pigeon.net.server.ListenerSet`, asyncio streams); the
authenticator is a small stand-in unless the test is about the real one.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from pigeon.auth.sasl import Credentials
from pigeon.auth.service import AUTH_BLOCKED, BAD_CREDENTIALS, Authenticator
from pigeon.config import Settings
from pigeon.mail.reply import Reply
from pigeon.net.pop3_session import Pop3Services, pop3_session_factory
from pigeon.net.server import ListenerSet
from pigeon.storage.maildir.store import MaildirStore

USER = "alice@example.com"
DEADLINE = 20.0  # seconds: a bound for conditions that must come true, never a measure


class FakeAuthenticator:
    """Accepts password "pw" for any user; counts calls; may raise."""

    def __init__(self) -> None:
        self.calls = 0
        self.fail_with: Exception | None = None

    async def verify(self, credentials: Credentials, *, peer_ip: str) -> str | Reply:
        self.calls += 1
        if self.fail_with is not None:
            raise self.fail_with
        if credentials.password != "pw":
            return BAD_CREDENTIALS
        return credentials.authcid.lower()


def make_settings(tmp_path: Path, **limits: Any) -> Settings:
    (tmp_path / "data").mkdir(exist_ok=True)
    return Settings.model_validate({
        "server": {"hostname": "mx.example.com", "data_dir": str(tmp_path / "data")},
        "domains": {"local": ["example.com"]},
        "auth": {"allow_plaintext_on_loopback": True, "failures_before_delay": 100,
                 "max_failures_per_ip": 2},
        "limits": {"max_errors": 3, **limits},
        "listener": [{"kind": "pop3", "address": "127.0.0.1:0"}],
    })


def put_messages(settings: Settings, count: int) -> list[Path]:
    store = MaildirStore(settings.server.data_dir / "mail", hostname="mx.example.com")
    box = store.ensure(USER)
    paths = []
    for i in range(count):
        path = box / "new" / f"170000000{i}.M1P1Q{i}.test"
        path.write_bytes(f"Subject: {i}\r\n\r\nbody {i}\r\n".encode())
        paths.append(path)
    return paths


class Client:
    """A POP3 client on asyncio streams."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, port: int) -> Client:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def line(self) -> bytes:
        data = await asyncio.wait_for(self.reader.readline(), DEADLINE)
        assert data.endswith(b"\r\n"), data
        return data[:-2]

    async def command(self, text: bytes) -> bytes:
        self.writer.write(text + b"\r\n")
        return await self.line()

    async def login(self) -> bytes:
        assert (await self.line()).startswith(b"+OK ")
        assert await self.command(f"USER {USER}".encode()) == b"+OK send PASS"
        return await self.command(b"PASS pw")

    async def closed(self) -> bool:
        """Wait (bounded) for the server to close; True when it closed without a word."""
        data = await asyncio.wait_for(self.reader.read(), DEADLINE)
        return data == b""

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except OSError:
            pass


class Running:
    def __init__(self, settings: Settings, listeners: ListenerSet, port: int,
                 authenticator: Any) -> None:
        self.settings = settings
        self.listeners = listeners
        self.port = port
        self.authenticator = authenticator


async def start(settings: Settings, authenticator: Any, autologout: float | None = None
                ) -> Running:
    services = Pop3Services(settings=settings, authenticator=authenticator,
                            autologout=autologout)
    factory = pop3_session_factory(services)
    listeners = ListenerSet(settings, None, factories={"pop3": factory})  # type: ignore[arg-type]
    bound = await listeners.start(frozenset({"pop3"}))
    return Running(settings, listeners, bound[0].port, authenticator)


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[Running]:
    settings = make_settings(tmp_path)
    put_messages(settings, 2)
    server = await start(settings, FakeAuthenticator())
    yield server
    await server.listeners.shutdown(1.0)


async def wait_until(predicate: Any) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE
    while not predicate():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def message_count(settings: Settings) -> int:
    box = settings.server.data_dir / "mail" / "example.com" / "alice"
    return len(os.listdir(box / "new")) + len(os.listdir(box / "cur"))


# ---------------------------------------------------------------------------- autologout


async def test_autologout_closes_silently_and_removes_nothing(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    put_messages(settings, 2)
    server = await start(settings, FakeAuthenticator(), autologout=0.3)
    try:
        client = await Client.connect(server.port)
        assert await client.login() == b"+OK alice@example.com has 2 messages (44 octets)"
        assert await client.command(b"DELE 1") == b"+OK message 1 deleted"
        assert await client.closed()  # RFC 1939 §3: no response, no UPDATE
        await client.close()
        assert message_count(settings) == 2
        # The lock went with the session.
        again = await Client.connect(server.port)
        assert (await again.login()).startswith(b"+OK ")
        await again.close()
    finally:
        await server.listeners.shutdown(1.0)


async def test_autologout_in_authorization(tmp_path: Path) -> None:
    server = await start(make_settings(tmp_path), FakeAuthenticator(), autologout=0.3)
    try:
        client = await Client.connect(server.port)
        assert (await client.line()).startswith(b"+OK ")
        assert await client.closed()
        await client.close()
    finally:
        await server.listeners.shutdown(1.0)


# ---------------------------------------------------------------------------- shutdown


async def test_shutdown_ends_idle_sessions_without_update(running: Running) -> None:
    client = await Client.connect(running.port)
    assert (await client.login()).startswith(b"+OK ")
    assert await client.command(b"DELE 1") == b"+OK message 1 deleted"
    await wait_until(lambda: running.listeners.session_count == 1)
    await running.listeners.shutdown(1.0)
    assert await client.line() == b"-ERR [SYS/TEMP] server shutting down"
    assert await client.closed()
    await client.close()
    assert message_count(running.settings) == 2


# ---------------------------------------------------------------------------- logins


async def test_bad_password_then_good(running: Running) -> None:
    client = await Client.connect(running.port)
    assert (await client.line()).startswith(b"+OK ")
    await client.command(f"USER {USER}".encode())
    assert await client.command(b"PASS nope") == (
        b"-ERR [AUTH] Error: authentication failed: bad credentials")
    await client.command(f"USER {USER}".encode())
    assert (await client.command(b"PASS pw")).startswith(b"+OK ")
    assert await client.command(b"QUIT") == (
        b"+OK mx.example.com POP3 server signing off (2 messages left)")
    assert await client.closed()
    await client.close()


async def test_auth_plain_over_plaintext_loopback(running: Running) -> None:
    client = await Client.connect(running.port)
    assert (await client.line()).startswith(b"+OK ")
    assert await client.command(b"AUTH PLAIN") == b"+ "
    token = __import__("base64").b64encode(f"\0{USER}\0pw".encode())
    assert (await client.command(token)).startswith(b"+OK alice@example.com has 2")
    await client.close()


async def test_blocked_address_is_told_and_disconnected(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    accounts = _Accounts()
    sleeps: list[float] = []

    async def no_sleep(seconds: float) -> None:
        sleeps.append(seconds)

    authenticator = Authenticator(settings, accounts, sleep=no_sleep)
    server = await start(settings, authenticator)
    try:
        client = await Client.connect(server.port)
        assert (await client.line()).startswith(b"+OK ")
        await client.command(b"USER nobody@example.com")
        assert await client.command(b"PASS x") == (
            b"-ERR [AUTH] Error: authentication failed: bad credentials")
        await client.command(b"USER nobody@example.com")
        assert await client.command(b"PASS y") == (
            f"-ERR [SYS/TEMP] {AUTH_BLOCKED.text}".encode())
        assert await client.closed()
        await client.close()
        # The block holds for new connections too, for SMTP and POP3 alike.
        client = await Client.connect(server.port)
        assert (await client.login()) == f"-ERR [SYS/TEMP] {AUTH_BLOCKED.text}".encode()
        assert await client.closed()
        await client.close()
        assert sleeps == []
    finally:
        await server.listeners.shutdown(1.0)


class _Accounts:
    """An account store with no users."""

    def get_password_hash(self, key: str) -> str | None:
        return None

    def list_aliases(self, owner: str | None = None) -> list[tuple[str, str]]:
        return []


async def test_internal_error_closes_with_sys_temp_and_the_server_goes_on(
    running: Running
) -> None:
    running.authenticator.fail_with = RuntimeError("database on fire")
    client = await Client.connect(running.port)
    assert await client.login() == b"-ERR [SYS/TEMP] internal error"
    assert await client.closed()
    await client.close()
    running.authenticator.fail_with = None
    client = await Client.connect(running.port)
    assert (await client.login()).startswith(b"+OK ")
    await client.close()


async def test_no_authenticator_means_no_login(tmp_path: Path) -> None:
    server = await start(make_settings(tmp_path), None)
    try:
        client = await Client.connect(server.port)
        assert (await client.line()).startswith(b"+OK ")
        capa = [await client.command(b"CAPA")]
        while capa[-1] != b".":
            capa.append(await client.line())
        assert b"SASL PLAIN" not in capa and b"USER" in capa
        await client.command(b"USER a@example.com")
        assert await client.command(b"PASS pw") == (
            b"-ERR [SYS/TEMP] authentication is not available")
        await client.close()
    finally:
        await server.listeners.shutdown(1.0)


# ---------------------------------------------------------------------------- limits


async def test_too_many_errors_close_the_session(running: Running) -> None:
    client = await Client.connect(running.port)
    assert (await client.line()).startswith(b"+OK ")
    client.writer.write(b"BAD\r\n" * 10)
    assert [await client.line() for _ in range(4)] == [
        b"-ERR unknown command", b"-ERR unknown command", b"-ERR unknown command",
        b"-ERR too many errors; closing",
    ]
    assert await client.closed()
    await client.close()


async def test_connections_over_the_limit_get_a_pop3_refusal(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, max_connections_per_ip=1)
    server = await start(settings, FakeAuthenticator())
    try:
        first = await Client.connect(server.port)
        assert (await first.line()).startswith(b"+OK ")
        second = await Client.connect(server.port)
        assert await second.line() == (
            b"-ERR [SYS/TEMP] mx.example.com Error: too many connections from your address")
        await second.close()
        await first.close()
    finally:
        await server.listeners.shutdown(1.0)


# ---------------------------------------------------------------------------- files


async def test_message_removed_under_the_session(running: Running) -> None:
    client = await Client.connect(running.port)
    assert (await client.login()).startswith(b"+OK ")
    box = running.settings.server.data_dir / "mail" / "example.com" / "alice" / "new"
    for name in os.listdir(box):
        if name.endswith("Q0.test"):
            os.unlink(box / name)
    assert await client.command(b"RETR 1") == (
        b"-ERR [SYS/TEMP] message cannot be read; try again later")
    assert await client.command(b"RETR 2") == b"+OK 22 octets"
    lines = [await client.line() for _ in range(4)]
    assert lines == [b"Subject: 1", b"", b"body 1", b"."]
    assert await client.command(b"DELE 1") == b"+OK message 1 deleted"
    assert (await client.command(b"QUIT")).startswith(b"+OK ")
    await client.close()
    assert message_count(running.settings) == 1


async def test_bare_lf_files_are_sent_with_crlf(running: Running) -> None:
    box = running.settings.server.data_dir / "mail" / "example.com" / "alice" / "new"
    (box / "1800000000.M1P1Q9.other").write_bytes(b"Subject: lf\n\n.dot\nend")
    client = await Client.connect(running.port)
    assert (await client.login()).startswith(b"+OK alice@example.com has 3 messages")
    assert await client.command(b"LIST 3") == b"+OK 3 26"
    assert await client.command(b"RETR 3") == b"+OK 26 octets"
    assert [await client.line() for _ in range(5)] == [
        b"Subject: lf", b"", b"..dot", b"end", b"."]
    assert await client.command(b"TOP 3 0") == b"+OK top of message follows"
    assert [await client.line() for _ in range(3)] == [b"Subject: lf", b"", b"."]
    await client.close()


async def test_pipelined_commands_answered_in_order(running: Running) -> None:
    client = await Client.connect(running.port)
    assert (await client.line()).startswith(b"+OK ")
    client.writer.write(f"USER {USER}\r\nPASS pw\r\nSTAT\r\nUIDL 2\r\nDELE 2\r\nSTAT\r\n"
                        "RSET\r\nQUIT\r\n".encode())
    assert [await client.line() for _ in range(8)] == [
        b"+OK send PASS",
        b"+OK alice@example.com has 2 messages (44 octets)",
        b"+OK 2 44",
        b"+OK 2 1700000001.M1P1Q1.test",
        b"+OK message 2 deleted",
        b"+OK 1 22",
        b"+OK maildrop has 2 messages (44 octets)",
        b"+OK mx.example.com POP3 server signing off (2 messages left)",
    ]
    await client.close()
