"""One inbound SMTP session: drives the sans-I/O server with asyncio streams.

Theory of operation
-------------------
The loop is the h11 loop: take the next event from the
:class:`~pigeon.protocol.smtp.server.ServerConnection`; answer it (asking the router or the
queue where a decision is needed); append the reply bytes to an output buffer; when the
state machine needs more input, write the whole buffer in one call and read. Replies to a
pipelined batch (RFC 2920) therefore leave in one write, in command order, and nothing is
held back while the server waits for the client.

Message content is written to a spool file as it arrives (never held whole in memory), and
``250`` is sent only after :meth:`QueueService.enqueue` has made it durable.

Every session has a session id that prefixes its log lines; every accepted message is
logged with its queue id.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from pigeon.log import sanitize
from pigeon.mail.address import ForwardPath
from pigeon.mail.envelope import Envelope, Recipient
from pigeon.mail.reply import Reply
from pigeon.protocol.smtp import _events as ev
from pigeon.protocol.smtp._state import State
from pigeon.protocol.smtp.server import ServerConfig, ServerConnection
from pigeon.queue.trace import protocol_keyword, received_header

__all__ = ["SessionContext", "SmtpServices", "SmtpSession"]

log = logging.getLogger("pigeon.smtpd")

_READ_SIZE = 64 * 1024


class _Spool(Protocol):
    queue_id: str

    def write(self, data: bytes) -> None: ...

    def abort(self) -> None: ...


class _Queue(Protocol):
    def open_spool(self) -> Any: ...

    async def enqueue(self, envelope: Envelope, spool: Any) -> str: ...


class _Router(Protocol):
    def check_recipient(
        self, forward_path: ForwardPath, *, relay_allowed: bool
    ) -> Reply | None: ...


@dataclass(slots=True)
class SmtpServices:
    """What an SMTP session needs from the rest of Pigeon.

    Attributes:
        settings: the loaded settings (``pigeon.config.Settings``).
        router: decides RCPT (``check_recipient``).
        queue: spools and enqueues accepted messages.
        server_config: the protocol limits and extensions, derived from settings.
    """

    settings: Any
    router: _Router
    queue: _Queue
    server_config: ServerConfig


@dataclass(slots=True)
class SessionContext:
    """Per-connection facts known to the listener.

    Attributes:
        session_id: short unique id used in every log line of the session.
        listener_kind: ``smtp``, ``submission`` or ``submissions``.
        peer_address: the client IP address as text.
        peer_port: the client port.
        shutting_down: set by the server when it stops accepting; idle sessions end.
    """

    session_id: str
    listener_kind: str
    peer_address: str
    peer_port: int
    shutting_down: bool = False
    idle: bool = field(default=False)


class SmtpSession:
    """Serve one SMTP connection until QUIT, a 421, a timeout or the peer leaving.

    Args:
        services: shared services.
        ctx: the connection's facts.
        reader, writer: the asyncio streams of the connection.
        clock: monotonic clock in seconds (injectable for tests).
    """

    def __init__(
        self,
        services: SmtpServices,
        ctx: SessionContext,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.services = services
        self.ctx = ctx
        self.reader = reader
        self.writer = writer
        self.conn = ServerConnection(services.server_config)
        self._out: list[bytes] = []
        self._envelope: Envelope | None = None
        self._spool: _Spool | None = None
        self._errors = 0
        self._messages = 0
        self._clock = clock
        settings = services.settings
        self._hostname: str = settings.server.hostname
        self._max_errors: int = settings.limits.max_errors
        self._command_timeout: float = settings.timeouts.command
        self._data_timeout: float = settings.timeouts.data

    # ------------------------------------------------------------------ logging

    def _log(self, level: int, msg: str, *args: object) -> None:
        log.log(level, "%s " + msg, self.ctx.session_id, *args)

    # ------------------------------------------------------------------ main loop

    async def run(self) -> None:
        """Run the session to its end; never raises for anything the peer does."""
        ctx = self.ctx
        self._log(logging.INFO, "connect from [%s]:%d (%s)", ctx.peer_address, ctx.peer_port,
                  ctx.listener_kind)
        try:
            if await self._pre_greeting_talk():
                return
            greeting = Reply(220, None, f"{self._hostname} {self.services.settings.smtp.banner}")
            self._out.append(self.conn.send(greeting))
            await self._loop()
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError) as exc:
            self._log(logging.INFO, "connection lost: %s", type(exc).__name__)
        except asyncio.CancelledError:
            await self._try_send_421(Reply(421, "4.3.2", f"{self._hostname} Service shutting down"))
            raise
        except Exception:
            self._log(logging.ERROR, "unexpected error; closing with 421", exc_info=True)
            await self._try_send_421(
                Reply(421, "4.3.0", f"{self._hostname} Error: internal error, closing connection")
            )
        finally:
            self._abort_spool()
            await self._close()
            self._log(logging.INFO, "disconnect from [%s] messages=%d errors=%d",
                      ctx.peer_address, self._messages, self._errors)

    async def _pre_greeting_talk(self) -> bool:
        """Wait ``greet_pause`` seconds; a client that talks first gets 554 (RFC 5321 §4.3.1)."""
        pause = float(self.services.settings.smtp.greet_pause)
        if pause <= 0:
            return False
        try:
            data = await asyncio.wait_for(self.reader.read(1), pause)
        except TimeoutError:
            return False
        if not data:
            return True
        self._log(logging.WARNING, "client talked before the greeting; refused")
        self.writer.write(
            Reply(554, None, f"{self._hostname} Error: you talked before the greeting").to_bytes(
                enhanced_codes=False
            )
        )
        with contextlib.suppress(ConnectionError):
            await self.writer.drain()
        return True

    async def _loop(self) -> None:
        conn = self.conn
        while True:
            event = conn.next_event()
            if event is ev.NEED_DATA:
                await self._flush()
                if self.ctx.shutting_down and conn.state in (State.READY, State.IDLE):
                    self._reply_unsolicited(
                        Reply(421, "4.3.2", f"{self._hostname} Service shutting down")
                    )
                    await self._flush()
                    return
                data = await self._read()
                if data is None:
                    return
                conn.receive_data(data)
                continue
            if event is ev.PAUSED:
                await self._flush()
                if conn.state is State.TLS:
                    # STARTTLS arrives with the TLS work; without it STARTTLS is never offered.
                    return
                return
            assert not isinstance(event, ev.Sentinel)
            if isinstance(event, ev.ConnectionClosed):
                self._log(logging.INFO, "peer closed the connection")
                return
            reply = await self._handle(event)
            if reply is None:
                continue
            if reply.code >= 500 or isinstance(event, ev.CommandError):
                self._errors += 1
                if self._errors > self._max_errors:
                    self._log(logging.WARNING, "too many errors; closing")
                    reply = Reply(421, "4.7.0", f"{self._hostname} Error: too many errors")
            self._out.append(conn.send(reply))
            if len(self._out) > 64:
                await self._flush()

    async def _read(self) -> bytes | None:
        timeout = (
            self._data_timeout
            if self.conn.state in (State.DATA, State.BDAT)
            else self._command_timeout
        )
        self.ctx.idle = self.conn.state in (State.READY, State.IDLE)
        try:
            data = await asyncio.wait_for(self.reader.read(_READ_SIZE), timeout)
        except TimeoutError:
            self._log(logging.INFO, "timeout after %.0f s in state %s", timeout,
                      self.conn.state.value)
            self._reply_unsolicited(
                Reply(421, "4.4.2", f"{self._hostname} Error: timeout exceeded")
            )
            await self._flush()
            return None
        finally:
            self.ctx.idle = False
        return data

    def _reply_unsolicited(self, reply: Reply) -> None:
        self._out.append(self.conn.send(reply))

    async def _flush(self) -> None:
        if not self._out:
            return
        data = b"".join(self._out)
        self._out.clear()
        self.writer.write(data)
        await self.writer.drain()

    async def _try_send_421(self, reply: Reply) -> None:
        try:
            if self.conn.state is not State.CLOSED:
                self._out.append(self.conn.send(reply))
            await asyncio.wait_for(self._flush(), 1.0)
        except Exception:
            pass

    async def _close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()
            await asyncio.wait_for(self.writer.wait_closed(), 2.0)

    # ------------------------------------------------------------------ events

    async def _handle(self, event: ev.Event) -> Reply | None:
        h = self._hostname
        if isinstance(event, ev.DataChunk):
            if self._spool is not None:
                try:
                    self._spool.write(event.data)
                except OSError:
                    self._log(logging.ERROR, "spool write failed", exc_info=True)
                    self._abort_spool()
            return None
        if isinstance(event, ev.CommandError):
            self._log(logging.INFO, "refused: %s", event.reply)
            return event.reply
        if isinstance(event, ev.Hello):
            self._clear_transaction()
            if event.esmtp:
                return self.conn.ehlo_reply(f"Hello {sanitize(event.domain, 64)}")
            return Reply(250, None, h)
        if isinstance(event, ev.MailFrom):
            self._clear_transaction()
            self._envelope = Envelope(
                reverse_path=event.reverse_path,
                mail_params=event.params,
                client_address=self.ctx.peer_address,
                client_name=self.conn.client_name,
            )
            return Reply(250, "2.1.0", "Ok")
        if isinstance(event, ev.RcptTo):
            return self._rcpt(event)
        if isinstance(event, ev.DataCommand):
            refusal = self._open_spool()
            if refusal is not None:
                return refusal
            return Reply(354, None, "End data with <CR><LF>.<CR><LF>")
        if isinstance(event, ev.BdatStarted):
            if event.first:
                refusal = self._open_spool()
                if refusal is not None:
                    self._log(logging.ERROR, "cannot open spool: %s", refusal)
            return None
        if isinstance(event, ev.BdatChunkEnd):
            if event.reply_hint is not None:
                self._abort_spool()
                return event.reply_hint
            if self._spool is None:
                return Reply(451, "4.3.0", "Error: queue file write error")
            return Reply(250, "2.0.0", f"{event.total} octets received")
        if isinstance(event, ev.DataComplete):
            return await self._data_complete(event)
        if isinstance(event, ev.Reset):
            self._clear_transaction()
            return Reply(250, "2.0.0", "Ok")
        if isinstance(event, ev.Noop):
            return Reply(250, "2.0.0", "Ok")
        if isinstance(event, ev.Verify):
            if self.services.settings.smtp.vrfy == "disabled":
                return Reply(502, "5.5.1", "VRFY command is disabled")
            return Reply(
                252, "2.1.5", "Cannot VRFY user, but will accept message and attempt delivery"
            )
        if isinstance(event, ev.Expand):
            return Reply(502, "5.5.1", "EXPN command is disabled")
        if isinstance(event, ev.Help):
            return Reply(
                214,
                "2.0.0",
                [
                    "Commands: HELO EHLO MAIL RCPT DATA BDAT RSET VRFY EXPN NOOP QUIT HELP",
                    "See RFC 5321; Pigeon mail server",
                ],
            )
        if isinstance(event, ev.Quit):
            return Reply(221, "2.0.0", f"{h} Bye")
        if isinstance(event, ev.StartTLS):
            return Reply(454, "4.7.0", "TLS not available")
        if isinstance(event, (ev.Auth, ev.AuthResponse)):
            return Reply(454, "4.7.0", "Temporary authentication failure")
        if isinstance(event, ev.AuthCancelled):
            return Reply(501, "5.0.0", "Authentication cancelled")
        raise AssertionError(f"unhandled event {event!r}")

    def _rcpt(self, event: ev.RcptTo) -> Reply:
        assert self._envelope is not None
        relay_allowed = self.conn.authenticated
        refusal = self.services.router.check_recipient(
            event.forward_path, relay_allowed=relay_allowed
        )
        if refusal is not None:
            self._log(logging.INFO, "RCPT %s refused: %s",
                      sanitize(str(event.forward_path)), refusal)
            return refusal
        self._envelope.recipients.append(
            Recipient(forward_path=event.forward_path, params=event.params)
        )
        return Reply(250, "2.1.5", "Ok")

    def _open_spool(self) -> Reply | None:
        env = self._envelope
        assert env is not None
        env.protocol = protocol_keyword(
            esmtp=self.conn.esmtp,
            tls=self.conn.tls,
            authenticated=self.conn.authenticated,
            smtputf8=env.mail_params.smtputf8,
        )
        try:
            spool = self.services.queue.open_spool()
            spool.write(received_header(env, spool.queue_id, self._hostname))
        except OSError:
            self._log(logging.ERROR, "cannot open a spool file", exc_info=True)
            return Reply(451, "4.3.0", "Error: queue file write error")
        self._spool = spool
        return None

    async def _data_complete(self, event: ev.DataComplete) -> Reply:
        spool = self._spool
        env = self._envelope
        self._spool = None
        self._envelope = None
        if event.reply_hint is not None:
            if spool is not None:
                spool.abort()
            self._log(logging.INFO, "message refused: %s", event.reply_hint)
            return event.reply_hint
        if spool is None or env is None:
            return Reply(451, "4.3.0", "Error: queue file write error")
        try:
            queue_id = await self.services.queue.enqueue(env, spool)
        except Exception:
            self._log(logging.ERROR, "enqueue failed", exc_info=True)
            with contextlib.suppress(Exception):
                spool.abort()
            return Reply(451, "4.3.0", "Error: queue file write error, try again later")
        self._messages += 1
        self._log(
            logging.INFO,
            "queued %s from=%s nrcpt=%d size=%d",
            queue_id,
            sanitize(str(env.reverse_path)),
            len(env.recipients),
            event.size,
        )
        return Reply(250, "2.0.0", f"Ok: queued as {queue_id}")

    def _clear_transaction(self) -> None:
        self._abort_spool()
        self._envelope = None

    def _abort_spool(self) -> None:
        if self._spool is not None:
            with contextlib.suppress(Exception):
                self._spool.abort()
            self._spool = None
