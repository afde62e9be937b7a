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

Listener roles (``SessionContext.listener_kind``):

* ``smtp`` (MTA, port 25): receives for local domains; offers STARTTLS (RFC 3207); offers
  AUTH only after TLS and only with ``[auth] on_smtp = true``.
* ``submission`` (MSA, 587/2525, RFC 6409): STARTTLS; AUTH only after TLS (unless
  ``[auth] allow_plaintext_on_loopback`` and the client is on loopback; otherwise
  ``538 5.7.11``); MAIL before AUTH gets ``530 5.7.0``; missing ``Date`` and ``Message-ID``
  are added (RFC 6409 §8).
* ``submissions`` (465, RFC 8314): the same, over implicit TLS.

STARTTLS: after the ``220``, input that was already received (in the state machine's
buffer or in the asyncio reader's) is discarded, never executed (CVE-2011-0411), and the
session starts again from the greeting state (RFC 3207 §4.2).

Timeouts: a read waits at most ``[timeouts] command`` seconds (``data`` inside DATA/BDAT).
Each session has one timer on the event loop rather than one per read: a read only records
its deadline, and the timer, when it fires, either finds the deadline passed (the read is
cancelled and the session ends with ``421 4.4.2``) or sleeps again until the deadline of
the read in progress.

Every session has a session id that prefixes its log lines; every accepted message is
logged with its queue id.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import logging
import secrets
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from pigeon.auth.sasl import MECHANISMS, SaslExchange, SaslStep
from pigeon.auth.service import is_loopback
from pigeon.log import sanitize
from pigeon.mail.address import ForwardPath
from pigeon.mail.envelope import Envelope, Recipient
from pigeon.mail.reply import Reply
from pigeon.net.streams import discard_buffered
from pigeon.policy.limits import RateLimiter
from pigeon.policy.relay import SENDER_NOT_OWNED, RelayPolicy, sender_allowed
from pigeon.policy.submission import HeaderFixup
from pigeon.protocol.smtp import _events as ev
from pigeon.protocol.smtp._state import State
from pigeon.protocol.smtp.server import ServerConfig, ServerConnection
from pigeon.queue.trace import local_date, protocol_keyword, received_header

__all__ = ["SessionContext", "SmtpServices", "SmtpSession"]

log = logging.getLogger("pigeon.smtpd")

_READ_SIZE = 64 * 1024
_SUBMISSION_KINDS = frozenset({"submission", "submissions"})
_CONTENT_STATES = frozenset({State.DATA, State.BDAT})  # reads wait [timeouts] data
_IDLE_STATES = frozenset({State.READY, State.IDLE})  # no transaction: may end at shutdown

AUTH_REQUIRED = Reply(530, "5.7.0", "Authentication required")
ENCRYPTION_REQUIRED = Reply(538, "5.7.11", "Encryption required for requested authentication "
                            "mechanism")
TOO_MANY_MESSAGES = Reply(450, "4.7.1", "Error: too many messages; try again later")
# Replies sent for every message, built once.
MAIL_OK = Reply(250, "2.1.0", "Ok")
RCPT_OK = Reply(250, "2.1.5", "Ok")
START_DATA = Reply(354, None, "End data with <CR><LF>.<CR><LF>")
OK = Reply(250, "2.0.0", "Ok")
QUEUE_WRITE_ERROR = Reply(451, "4.3.0", "Error: queue file write error")


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
        tls: the :class:`~pigeon.net.tls.TlsProvider`; None: no STARTTLS.
        authenticator: the :class:`~pigeon.auth.service.Authenticator`; None: no AUTH.
        relay: who may relay; default: ``[relay] trusted_networks``.
        ip_messages: messages per minute per client address; default from ``[limits]``.
        user_messages: messages per minute per user; default from ``[limits]``.
    """

    settings: Any
    router: _Router
    queue: _Queue
    server_config: ServerConfig
    tls: Any = None
    authenticator: Any = None
    relay: RelayPolicy | None = None
    ip_messages: RateLimiter | None = None
    user_messages: RateLimiter | None = None

    def __post_init__(self) -> None:
        relay = getattr(self.settings, "relay", None)
        if self.relay is None:
            self.relay = RelayPolicy(getattr(relay, "trusted_networks", ()))
        limits = self.settings.limits
        if self.ip_messages is None:
            self.ip_messages = RateLimiter(getattr(limits, "messages_per_minute_per_ip", 0))
        if self.user_messages is None:
            self.user_messages = RateLimiter(getattr(limits, "messages_per_minute_per_user", 0))


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
        self._max_unknown: int = getattr(settings.limits, "max_unknown_recipients", 0)
        self._unknown = 0
        auth_settings = getattr(settings, "auth", None)
        self._on_smtp = bool(getattr(auth_settings, "on_smtp", False))
        self._plaintext_loopback = bool(
            getattr(auth_settings, "allow_plaintext_on_loopback", False)
        ) and is_loopback(ctx.peer_address)
        self._sender_login_match = bool(getattr(auth_settings, "sender_login_match", True))
        # Listener role.
        self.submission = ctx.listener_kind in _SUBMISSION_KINDS
        conn = self.conn
        conn.tls = writer.get_extra_info("ssl_object") is not None  # implicit TLS
        conn.offer_starttls = services.tls is not None and not conn.tls
        if services.authenticator is not None and (self.submission or self._on_smtp):
            conn.auth_mechanisms = MECHANISMS
        self.identity: str | None = None  # the authenticated user
        self._owned: frozenset[str] = frozenset()
        self._sasl: SaslExchange | None = None
        self._fixup: HeaderFixup | None = None
        # The idle timer (see the module docstring). Times are the event loop's clock.
        self._task: asyncio.Task[Any] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._deadline: float | None = None  # of the read in progress; None: not reading
        self._timer_step = min(self._command_timeout, self._data_timeout)
        self._timed_out = False

    # ------------------------------------------------------------------ logging

    def _log(self, level: int, msg: str, *args: object, exc_info: bool = False) -> None:
        log.log(level, "%s " + msg, self.ctx.session_id, *args, exc_info=exc_info)

    # ------------------------------------------------------------------ main loop

    async def run(self) -> None:
        """Run the session to its end; never raises for anything the peer does."""
        ctx = self.ctx
        self._log(logging.INFO, "connect from [%s]:%d (%s)", ctx.peer_address, ctx.peer_port,
                  ctx.listener_kind)
        self._task = asyncio.current_task()
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
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
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
                if self.ctx.shutting_down and conn.state in _IDLE_STATES:
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
                if conn.state is State.TLS and await self._start_tls():
                    continue
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
        """Read what the peer sent; None when the read timed out (``421`` was sent).

        The read waits at most ``[timeouts] data`` seconds in DATA and BDAT, else
        ``[timeouts] command`` seconds (RFC 5321 §4.5.3.2).

        Returns:
            Up to 64 KiB; ``b""`` at end of input; None after a timeout.

        Raises:
            asyncio.CancelledError: the session was cancelled (server shutdown).
            ConnectionError: the connection broke.
        """
        state = self.conn.state
        timeout = self._data_timeout if state in _CONTENT_STATES else self._command_timeout
        ctx = self.ctx
        ctx.idle = state in _IDLE_STATES
        loop = asyncio.get_running_loop()
        now = loop.time()
        self._deadline = now + timeout
        if self._timer is None:
            # No read that starts later can have a deadline before now + _timer_step.
            self._timer = loop.call_at(now + self._timer_step, self._on_timer)
        try:
            return await self.reader.read(_READ_SIZE)
        except asyncio.CancelledError:
            if not self._timed_out:
                raise
            self._timed_out = False
            task = self._task
            if task is not None and task.uncancel() > 0:
                raise  # cancelled from outside too (shutdown)
        finally:
            self._deadline = None
            ctx.idle = False
        self._log(logging.INFO, "timeout after %.0f s in state %s", timeout, state.value)
        self._reply_unsolicited(Reply(421, "4.4.2", f"{self._hostname} Error: timeout exceeded"))
        await self._flush()
        return None

    def _on_timer(self) -> None:
        """The idle timer fired: cancel a read past its deadline, else wait for it again.

        Not reading (the session awaits the queue, or has ended): the timer stops; the
        next read starts it.
        """
        self._timer = None
        deadline = self._deadline
        if deadline is None:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        if now < deadline:
            self._timer = loop.call_at(min(deadline, now + self._timer_step), self._on_timer)
            return
        task = self._task
        if task is not None and not task.done():
            self._timed_out = True
            task.cancel()

    async def _start_tls(self) -> bool:
        """Run the TLS handshake after ``220`` to STARTTLS; False ends the session.

        Bytes the client sent after the STARTTLS line are dropped, never executed
        (RFC 3207 §4.2): those in the state machine's buffer by ``tls_started()``, those
        already in the asyncio reader's buffer here. Reading is paused first so that no
        plaintext can slip in between the check and the switch of the transport.
        """
        tls = self.services.tls
        transport: Any = self.writer.transport
        with contextlib.suppress(Exception):
            transport.pause_reading()
        discarded = discard_buffered(self.reader)
        if discarded:
            self._log(logging.WARNING, "discarded %d octets sent after STARTTLS", discarded)
        try:
            await asyncio.wait_for(
                self.writer.start_tls(tls.server_context()), self._command_timeout
            )
        except (ssl.SSLError, ConnectionError, OSError, TimeoutError) as exc:
            self._log(logging.INFO, "TLS handshake failed: %s", sanitize(str(exc), 200))
            return False
        self.conn.tls_started()
        self._clear_transaction()
        self.identity = None
        self._owned = frozenset()
        self._sasl = None
        self._log(logging.INFO, "STARTTLS: %s", self._tls_info() or "?")
        return True

    def _tls_info(self) -> str | None:
        obj = self.writer.get_extra_info("ssl_object")
        if obj is None:
            return None
        cipher = obj.cipher()
        return f"{obj.version()} {cipher[0] if cipher else ''}".strip()

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
        # The events of every message first; the event classes are unrelated, so the
        # order of the tests changes nothing else.
        if isinstance(event, ev.DataChunk):
            self._write(event.data)
            return None
        if isinstance(event, ev.MailFrom):
            return self._mail(event)
        if isinstance(event, ev.RcptTo):
            return self._rcpt(event)
        if isinstance(event, ev.DataCommand):
            refusal = self._open_spool()
            if refusal is not None:
                return refusal
            return START_DATA
        if isinstance(event, ev.DataComplete):
            return await self._data_complete(event)
        h = self._hostname
        if isinstance(event, ev.CommandError):
            self._sasl = None
            self._log(logging.INFO, "refused: %s", event.reply)
            return event.reply
        if isinstance(event, ev.Hello):
            self._clear_transaction()
            if event.esmtp:
                return self._ehlo_reply(f"Hello {sanitize(event.domain, 64)}")
            return Reply(250, None, h)
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
                return QUEUE_WRITE_ERROR
            return Reply(250, "2.0.0", f"{event.total} octets received")
        if isinstance(event, ev.Reset):
            self._clear_transaction()
            return OK
        if isinstance(event, ev.Noop):
            return OK
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
            if self.services.tls is None:
                return Reply(454, "4.7.0", "TLS not available")
            return Reply(220, "2.0.0", "Ready to start TLS")
        if isinstance(event, ev.Auth):
            if not self._auth_allowed():
                self._log(logging.INFO, "AUTH refused: not encrypted")
                return ENCRYPTION_REQUIRED
            self._sasl = SaslExchange(event.mechanism)
            return await self._sasl_step(self._sasl.start(event.initial_response))
        if isinstance(event, ev.AuthResponse):
            if self._sasl is None:  # pragma: no cover - the state machine prevents it
                return Reply(454, "4.7.0", "Temporary authentication failure")
            return await self._sasl_step(self._sasl.respond(event.data))
        if isinstance(event, ev.AuthCancelled):
            self._sasl = None
            return Reply(501, "5.7.0", "Authentication cancelled")
        raise AssertionError(f"unhandled event {event!r}")

    # ------------------------------------------------------------------ EHLO and AUTH

    def _auth_allowed(self) -> bool:
        return self.conn.tls or self._plaintext_loopback

    def _ehlo_reply(self, greeting: str) -> Reply:
        reply = self.conn.ehlo_reply(greeting)
        if self.conn.auth_mechanisms and not self._auth_allowed():
            # RFC 4954 §4 / RFC 3207 §4.2: no AUTH offer on a channel anyone can read.
            lines = [line for line in reply.lines if not line.startswith("AUTH ")]
            return Reply(reply.code, reply.enhanced, lines)
        return reply

    async def _sasl_step(self, step: SaslStep) -> Reply:
        if step.challenge is not None:
            return Reply(334, None, base64.b64encode(step.challenge).decode("ascii"))
        self._sasl = None
        if step.error is not None:
            self._log(logging.INFO, "AUTH refused: %s", step.error)
            return step.error
        assert step.credentials is not None
        authenticator = self.services.authenticator
        result = await authenticator.verify(step.credentials, peer_ip=self.ctx.peer_address)
        if isinstance(result, Reply):
            self._log(logging.INFO, "AUTH failed for %s: %s",
                      sanitize(step.credentials.authcid, 100), result)
            return result
        self.identity = result
        self._owned = authenticator.owned_addresses(result)
        self._log(logging.INFO, "authenticated as %s", result)
        return Reply(235, "2.7.0", "Authentication successful")

    # ------------------------------------------------------------------ MAIL and RCPT

    def _mail(self, event: ev.MailFrom) -> Reply:
        self._clear_transaction()
        if self.submission and not self.conn.authenticated:
            return AUTH_REQUIRED
        if (
            self.identity is not None
            and self._sender_login_match
            and not sender_allowed(event.reverse_path, self._owned)
        ):
            self._log(logging.WARNING, "MAIL FROM %s refused for user %s",
                      sanitize(str(event.reverse_path)), self.identity)
            return SENDER_NOT_OWNED
        services = self.services
        assert services.ip_messages is not None and services.user_messages is not None
        if not services.ip_messages.allow(self.ctx.peer_address) or (
            self.identity is not None and not services.user_messages.allow(self.identity)
        ):
            self._log(logging.WARNING, "message rate limit reached (user %s)",
                      self.identity or "-")
            return TOO_MANY_MESSAGES
        params = event.params
        if params.auth is not None and self.identity is None:
            # RFC 4954 §5: an AUTH= value from an unauthenticated client is not trusted.
            params = dataclasses.replace(params, auth="<>")
        elif self.identity is not None:
            params = dataclasses.replace(params, auth=self.identity)
        self._envelope = Envelope(
            reverse_path=event.reverse_path,
            mail_params=params,
            client_address=self.ctx.peer_address,
            client_name=self.conn.client_name,
            authenticated_user=self.identity,
        )
        return MAIL_OK

    def _rcpt(self, event: ev.RcptTo) -> Reply:
        assert self._envelope is not None
        relay = self.services.relay
        assert relay is not None
        relay_allowed = relay.may_relay(
            peer_address=self.ctx.peer_address, authenticated=self.conn.authenticated
        )
        refusal = self.services.router.check_recipient(
            event.forward_path, relay_allowed=relay_allowed
        )
        if refusal is not None:
            self._log(logging.INFO, "RCPT %s refused: %s",
                      sanitize(str(event.forward_path)), refusal)
            if refusal.code == 550 and str(refusal.enhanced) == "5.1.1":
                self._unknown += 1
                if self._max_unknown and self._unknown > self._max_unknown:
                    self._log(logging.WARNING, "too many unknown recipients; closing")
                    return Reply(421, "4.7.0",
                                 f"{self._hostname} Error: too many unknown recipients")
            return refusal
        self._envelope.recipients.append(
            Recipient(forward_path=event.forward_path, params=event.params)
        )
        return RCPT_OK

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
            spool.write(received_header(env, spool.queue_id, self._hostname,
                                        tls_info=self._tls_info()))
        except OSError:
            self._log(logging.ERROR, "cannot open a spool file", exc_info=True)
            return QUEUE_WRITE_ERROR
        self._spool = spool
        if self.submission:
            self._fixup = HeaderFixup(
                date=local_date(),
                message_id=f"<{spool.queue_id}.{secrets.token_hex(6)}@{self._hostname}>",
            )
        return None

    def _write(self, data: bytes) -> None:
        """Write content to the spool (through the submission fix-up)."""
        if self._spool is None:
            return
        if self._fixup is not None:
            data = self._fixup.feed(data)
        if not data:
            return
        try:
            self._spool.write(data)
        except OSError:
            self._log(logging.ERROR, "spool write failed", exc_info=True)
            self._abort_spool()

    async def _data_complete(self, event: ev.DataComplete) -> Reply:
        fixup, self._fixup = self._fixup, None
        if fixup is not None and event.reply_hint is None:
            self._write(fixup.finish())  # the held-back header section, fixed up
            if fixup.added:
                self._log(logging.INFO, "added %s (RFC 6409 §8)", ", ".join(fixup.added))
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
            return QUEUE_WRITE_ERROR
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
        return Reply(250, OK.enhanced, f"Ok: queued as {queue_id}")

    def _clear_transaction(self) -> None:
        self._abort_spool()
        self._envelope = None
        self._fixup = None

    def _abort_spool(self) -> None:
        if self._spool is not None:
            with contextlib.suppress(Exception):
                self._spool.abort()
            self._spool = None
