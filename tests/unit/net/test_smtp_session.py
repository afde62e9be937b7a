"""The SMTP session's STARTTLS switch: plaintext queued in the asyncio reader is dropped."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from pigeon.config import Settings
from pigeon.net.smtp_session import SessionContext, SmtpServices, SmtpSession
from pigeon.net.streams import discard_buffered
from pigeon.net.tls import TlsProvider
from pigeon.protocol.smtp._state import State
from pigeon.protocol.smtp.server import ServerConfig


def test_discard_buffered() -> None:
    async def main() -> None:
        reader = asyncio.StreamReader()
        assert discard_buffered(reader) == 0
        reader.feed_data(b"MAIL FROM:<a@example.net>\r\n")
        assert discard_buffered(reader) == 27
        reader.feed_data(b"NOOP\r\n")
        assert await reader.read(100) == b"NOOP\r\n"

    asyncio.run(main())


class _Router:
    def check_recipient(self, forward_path: Any, *, relay_allowed: bool) -> None:
        return None


class _Queue:
    def open_spool(self) -> Any:
        raise OSError("not used")

    async def enqueue(self, envelope: Any, spool: Any) -> str:
        raise OSError("not used")


async def _read_reply(reader: asyncio.StreamReader) -> str:
    lines = []
    while True:
        line = (await reader.readline()).decode().rstrip("\r\n")
        lines.append(line)
        if len(line) < 4 or line[3] != "-":
            return "\r\n".join(lines)


@pytest.mark.parametrize("kind", ["smtp", "submission"])
def test_plaintext_in_the_reader_buffer_is_never_executed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, kind: str
) -> None:
    settings = Settings.model_validate({
        "server": {"hostname": "mx.example.com", "data_dir": str(tmp_path)},
    })
    services = SmtpServices(settings=settings, router=_Router(), queue=_Queue(),
                            server_config=ServerConfig(hostname="mx.example.com"),
                            tls=TlsProvider(settings))
    injection = b"EHLO evil\r\nMAIL FROM:<attacker@example.net>\r\n"

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        ctx = SessionContext("t.1", kind, "127.0.0.1", 1)
        session = SmtpSession(services, ctx, reader, writer)
        flush = session._flush

        async def flush_then_inject() -> None:
            await flush()
            if session.conn.state is State.TLS and injection:
                # As if these bytes had arrived after the last read, before the switch.
                reader.feed_data(injection)

        session._flush = flush_then_inject  # type: ignore[method-assign]
        await session.run()

    async def main() -> list[str]:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            replies = [await _read_reply(reader)]
            writer.write(b"EHLO client.example.net\r\nSTARTTLS\r\n")
            replies.append(await _read_reply(reader))
            replies.append(await _read_reply(reader))
            client = ssl.create_default_context()
            client.check_hostname = False
            client.verify_mode = ssl.CERT_NONE
            await writer.start_tls(client, server_hostname="mx.example.com")
            writer.write(b"HELP\r\n")
            replies.append(await _read_reply(reader))
            writer.write(b"QUIT\r\n")
            replies.append(await _read_reply(reader))
            writer.close()
            return replies
        finally:
            server.close()
            await server.wait_closed()

    with caplog.at_level(logging.INFO, logger="pigeon.smtpd"):
        replies = asyncio.run(main())
    assert replies[0] == "220 mx.example.com ESMTP Pigeon"
    assert "250-STARTTLS" in replies[1]
    assert replies[2] == "220 2.0.0 Ready to start TLS"
    assert replies[3].startswith("214-2.0.0 Commands:")  # HELP's reply, nothing before it
    assert replies[4] == "221 2.0.0 mx.example.com Bye"
    assert f"t.1 discarded {len(injection)} octets sent after STARTTLS" in caplog.text
    assert "attacker" not in caplog.text


# ---------------------------------------------------------------- read timeouts


class _Spool:
    queue_id = "1M8KGES2S6H8"

    def __init__(self) -> None:
        self.content = b""

    def write(self, data: bytes) -> None:
        self.content += data

    def abort(self) -> None:
        pass


class _SlowQueue:
    """Enqueue finishes only once ``release`` is set (the test decides when)."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.waiting = False

    def open_spool(self) -> _Spool:
        return _Spool()

    async def enqueue(self, envelope: Any, spool: Any) -> str:
        self.waiting = True
        await self.release.wait()
        self.waiting = False
        return str(spool.queue_id)


def _services(tmp_path: Path, queue: Any, *, command: float, data: float) -> SmtpServices:
    settings = Settings.model_validate({
        "server": {"hostname": "mx.example.com", "data_dir": str(tmp_path)},
        "timeouts": {"command": command, "data": data},
    })
    return SmtpServices(settings=settings, router=_Router(), queue=queue,
                        server_config=ServerConfig(hostname="mx.example.com"))


async def _serve(
    services: SmtpServices, sessions: list[SmtpSession], tasks: list[asyncio.Task[Any]]
) -> tuple[asyncio.Server, int]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.append(task)
        session = SmtpSession(services, SessionContext("t.1", "smtp", "127.0.0.1", 1),
                              reader, writer)
        sessions.append(session)
        await session.run()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def _command(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, line: bytes
) -> str:
    writer.write(line)
    return await _read_reply(reader)


def _converse(
    services: SmtpServices,
    client: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[list[str]]],
    sessions: list[SmtpSession] | None = None,
    tasks: list[asyncio.Task[Any]] | None = None,
) -> list[str]:
    """Serve one session on loopback, run ``client`` against it, return what it returns.

    ``sessions`` and ``tasks`` receive the server side's session and task.
    """
    async def main() -> list[str]:
        server, port = await _serve(services, [] if sessions is None else sessions,
                                    [] if tasks is None else tasks)
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                return await client(reader, writer)
            finally:
                writer.close()
        finally:
            server.close()
            await server.wait_closed()

    return asyncio.run(asyncio.wait_for(main(), 30))


async def _cancel_session(task: asyncio.Task[Any], reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> list[str]:
    """Cancel the server side's session task; return its last reply and what follows it."""
    task.cancel()
    replies = [await _read_reply(reader), (await reader.read()).decode()]
    writer.close()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return replies


async def _up_to_data(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> list[str]:
    """Greeting, HELO, MAIL, RCPT and DATA: the replies, ending with the 354."""
    replies = [await _read_reply(reader)]
    for line in (b"HELO client.example.net\r\n", b"MAIL FROM:<a@example.net>\r\n",
                 b"RCPT TO:<b@example.com>\r\n", b"DATA\r\n"):
        replies.append(await _command(reader, writer, line))
    return replies


def test_silent_client_gets_421_after_the_command_timeout(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    services = _services(tmp_path, _Queue(), command=0.2, data=60)

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> list[str]:
        replies = [await _read_reply(reader), await _read_reply(reader)]
        replies.append((await reader.read()).decode())
        return replies

    with caplog.at_level(logging.INFO, logger="pigeon.smtpd"):
        replies = _converse(services, client)
    assert replies == ["220 mx.example.com ESMTP Pigeon",
                       "421 4.4.2 mx.example.com Error: timeout exceeded", ""]
    assert "t.1 timeout after 0 s in state ready" in caplog.text


def test_data_timeout_shorter_than_the_command_timeout(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The timer was started by a command read (deadline in 300 s); the silent DATA read
    # must still end at its own, nearer, deadline.
    services = _services(tmp_path, _SlowQueue(), command=300, data=0.2)

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> list[str]:
        replies = await _up_to_data(reader, writer)
        writer.write(b"Subject: half a message\r\n")
        replies.append(await _read_reply(reader))
        return replies

    with caplog.at_level(logging.INFO, logger="pigeon.smtpd"):
        replies = _converse(services, client)
    assert replies == [
        "220 mx.example.com ESMTP Pigeon",
        "250 mx.example.com",
        "250 2.1.0 Ok",
        "250 2.1.5 Ok",
        "354 End data with <CR><LF>.<CR><LF>",
        "421 4.4.2 mx.example.com Error: timeout exceeded",
    ]
    assert "t.1 timeout after 0 s in state data" in caplog.text


def test_a_slow_enqueue_is_not_cut_by_the_read_timeout(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue = _SlowQueue()
    services = _services(tmp_path, queue, command=0.2, data=0.2)
    on_timer = SmtpSession._on_timer

    def on_timer_then_release(session: SmtpSession) -> None:
        on_timer(session)
        if session._deadline is None and queue.waiting:
            queue.release.set()  # the timer fired while the session awaited the queue

    monkeypatch.setattr(SmtpSession, "_on_timer", on_timer_then_release)

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> list[str]:
        replies = await _up_to_data(reader, writer)
        writer.write(b"Subject: slow\r\n\r\nbody\r\n.\r\n")
        replies.append(await _read_reply(reader))
        replies.append(await _command(reader, writer, b"QUIT\r\n"))
        return replies

    with caplog.at_level(logging.INFO, logger="pigeon.smtpd"):
        replies = _converse(services, client)
    assert replies[-2:] == ["250 2.0.0 Ok: queued as 1M8KGES2S6H8", "221 2.0.0 mx.example.com Bye"]
    assert "timeout" not in caplog.text


def test_cancelled_while_idle_sends_421_shutting_down(tmp_path: Path) -> None:
    services = _services(tmp_path, _Queue(), command=300, data=300)
    tasks: list[asyncio.Task[Any]] = []
    sessions: list[SmtpSession] = []

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> list[str]:
        replies = [await _read_reply(reader)]
        replies.append(await _command(reader, writer, b"NOOP\r\n"))
        [task] = tasks
        # What the listener does to idle sessions at shutdown.
        return replies + await _cancel_session(task, reader, writer)

    replies = _converse(services, client, sessions, tasks)
    assert replies == ["220 mx.example.com ESMTP Pigeon", "250 2.0.0 Ok",
                       "421 4.3.2 mx.example.com Service shutting down", ""]
    assert sessions[0]._timer is None


def test_timeout_and_shutdown_at_once_is_a_shutdown(tmp_path: Path) -> None:
    services = _services(tmp_path, _Queue(), command=300, data=300)
    tasks: list[asyncio.Task[Any]] = []
    sessions: list[SmtpSession] = []

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> list[str]:
        replies = [await _read_reply(reader)]
        [task], [session] = tasks, sessions
        assert session._deadline is not None  # waiting for a command
        session._deadline = 0.0  # as if 300 s had passed: the next firing times out
        session._on_timer()
        return replies + await _cancel_session(task, reader, writer)

    replies = _converse(services, client, sessions, tasks)
    assert replies == ["220 mx.example.com ESMTP Pigeon",
                       "421 4.3.2 mx.example.com Service shutting down", ""]
