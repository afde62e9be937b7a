"""A scripted stand-in for the SMTP client session, for submission and bulk tests."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pigeon.mail.envelope import MailParams
from pigeon.mail.reply import Reply
from pigeon.net.smtp_client import SmtpClientError, TransactionResult

OK = Reply(250, "2.0.0", "Ok: queued as 0J6Z3K9Q2M7X")
RCPT_OK = Reply(250, "2.1.5", "Ok")
MAIL_OK = Reply(250, "2.1.0", "Ok")

Script = Callable[[str, list[str], bytes], TransactionResult | BaseException]


@dataclass
class Server:
    """Scripted server state shared by the sessions of one test.

    Attributes:
        script: decides each transaction; default: every recipient accepted.
        connect_error: raised by the next connections while set.
        sessions: sessions opened.
        transactions: (reverse-path, recipients, content) of every transaction.
        gate: when set, transactions wait for it (to hold them in flight).
    """

    script: Script | None = None
    connect_error: BaseException | None = None
    sessions: int = 0
    transactions: list[tuple[str, list[str], bytes]] = field(default_factory=list)
    params: list[MailParams | None] = field(default_factory=list)
    gate: asyncio.Event | None = None
    in_flight: int = 0
    max_in_flight: int = 0
    queue_ids: int = 0

    async def connect(self, target: object) -> FakeSession:
        if self.connect_error is not None:
            raise self.connect_error
        self.sessions += 1
        return FakeSession(self)


class FakeSession:
    def __init__(self, server: Server) -> None:
        self.server = server
        self.closed = False
        self.extensions = {"PIPELINING": "", "SMTPUTF8": "", "8BITMIME": ""}

    @property
    def is_usable(self) -> bool:
        return not self.closed

    async def send_message(self, reverse_path: str, recipients: list[str],
                           content: bytes | Path, *, mail_params: MailParams | None = None,
                           ) -> TransactionResult:
        assert isinstance(content, bytes)
        server = self.server
        server.in_flight += 1
        server.max_in_flight = max(server.max_in_flight, server.in_flight)
        try:
            if server.gate is not None:
                await server.gate.wait()
            else:
                await asyncio.sleep(0)
            outcome: TransactionResult | BaseException
            if server.script is not None:
                outcome = server.script(reverse_path, recipients, content)
            else:
                server.queue_ids += 1
                outcome = TransactionResult(
                    MAIL_OK, [RCPT_OK] * len(recipients),
                    Reply(250, "2.0.0", f"Ok: queued as Q{server.queue_ids:05d}"))
            if isinstance(outcome, BaseException):
                self.closed = True
                raise outcome
            if outcome.accepted():
                server.transactions.append((reverse_path, list(recipients), content))
                server.params.append(mail_params)
            return outcome
        finally:
            server.in_flight -= 1

    async def quit(self) -> None:
        self.closed = True


def lost(content_sent: bool) -> SmtpClientError:
    return SmtpClientError(Reply(421, "4.4.2", "lost connection"), stage="end",
                           content_sent=content_sent)
