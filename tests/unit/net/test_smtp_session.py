"""The SMTP session's STARTTLS switch: plaintext queued in the asyncio reader is dropped."""

from __future__ import annotations

import asyncio
import logging
import ssl
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
