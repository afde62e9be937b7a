"""One POP3 session: drives the sans-I/O server with asyncio streams over a Maildir maildrop.

Theory of operation
-------------------
The loop is the one of :mod:`pigeon.net.smtp_session`: take the next event from the
:class:`~pigeon.protocol.pop3.server.ServerConnection`, answer it, collect the response
bytes, and write them all in one call when the state machine needs more input, so the
responses to pipelined commands (RFC 2449 §6.6) leave together and in order.

* **Listeners.** ``pop3`` (port 110) offers STLS (RFC 2595); ``pop3s`` (port 995) is TLS
  from the first octet (RFC 8314 §3.3). USER/PASS and AUTH (SASL PLAIN, RFC 5034) are
  accepted only over TLS, unless ``[auth] allow_plaintext_on_loopback`` is set and the
  client is on a loopback address.
* **Login.** Credentials go to the shared
  :class:`~pigeon.auth.service.Authenticator`, so failed POP3 and SMTP logins count
  together. A refusal becomes ``-ERR [AUTH]`` (bad credentials) or ``-ERR [SYS/TEMP]``
  (locked, blocked; a blocked address is also disconnected). The user's Maildir is then
  locked for the session (:class:`~pigeon.storage.maildir.maildrop.Maildrop`); a second
  session gets ``-ERR [IN-USE]``.
* **Reading.** RETR and TOP stream the message file in 64 KiB blocks, line endings
  made CRLF and byte-stuffed on the way, waiting for the socket to drain after each
  block, so a 50 MiB message costs a few blocks of memory. A retrieved message moves
  from ``new/`` to ``cur/`` with the ``S`` flag.
* **Deleting.** DELE only marks; the marked messages are removed when QUIT enters the
  UPDATE state (RFC 1939 §6). A dropped connection, an autologout, a shutdown or an
  internal error removes nothing.
* **Autologout.** ``[pop3] autologout`` seconds (at least 10 minutes, RFC 1939 §3) of
  client silence close the connection without a response; a client that stops reading
  a response is dropped after the same time.

Every log line starts with the session id.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from pigeon.auth.sasl import Credentials, SaslExchange, SaslStep
from pigeon.auth.service import is_loopback
from pigeon.log import sanitize
from pigeon.mail.reply import Reply
from pigeon.net.smtp_session import SessionContext
from pigeon.net.streams import discard_buffered
from pigeon.protocol.pop3 import _events as ev
from pigeon.protocol.pop3._data import TopFilter
from pigeon.protocol.pop3._response import Challenge, Response, refusal_response
from pigeon.protocol.pop3._state import State
from pigeon.protocol.pop3.server import ServerConfig, ServerConnection
from pigeon.storage.maildir.maildrop import (
    READ_BLOCK,
    CrlfNormalizer,
    Maildrop,
    MaildropError,
    MaildropLocked,
)
from pigeon.storage.maildir.store import maildir_path

__all__ = ["POP3_KINDS", "SASL_MECHANISMS", "Pop3Services", "Pop3Session",
           "pop3_session_factory"]

log = logging.getLogger("pigeon.pop3d")

#: Listener kinds served by this session.
POP3_KINDS = frozenset({"pop3", "pop3s"})

#: SASL mechanisms offered over POP3 (RFC 5034; PLAIN per RFC 4616).
SASL_MECHANISMS: tuple[str, ...] = ("PLAIN",)

_READ_SIZE = 64 * 1024
_CLOSE_WAIT = 2.0  # seconds given to a last response and the TCP close


@dataclass(slots=True)
class Pop3Services:
    """What a POP3 session needs from the rest of Pigeon.

    Attributes:
        settings: the loaded settings (``pigeon.config.Settings``).
        authenticator: the :class:`~pigeon.auth.service.Authenticator`; None: no login
            is possible (every attempt gets ``-ERR [SYS/TEMP]``).
        tls: the :class:`~pigeon.net.tls.TlsProvider`; None: no STLS.
        autologout: seconds of silence before the session is closed (RFC 1939 §3);
            None takes ``settings.pop3.autologout``.
        server_config: the protocol settings.
    """

    settings: Any
    authenticator: Any = None
    tls: Any = None
    autologout: float | None = None
    server_config: ServerConfig = field(default_factory=ServerConfig)

    @property
    def mail_root(self) -> Path:
        """``<data_dir>``: Maildirs are at :func:`maildir_path` under it."""
        return Path(self.settings.server.data_dir)


def pop3_session_factory(
    services: Pop3Services,
) -> Callable[[SessionContext, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
    """A session runner for :class:`~pigeon.net.server.ListenerSet` ``factories``.

    Args:
        services: shared by every session.

    Returns:
        ``factory(ctx, reader, writer)`` that serves one connection to its end.
    """

    async def run(
        ctx: SessionContext, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await Pop3Session(services, ctx, reader, writer).run()

    return run


class _Abort(Exception):
    """End the session at once (the response stream cannot be completed)."""


class Pop3Session:
    """Serve one POP3 connection until QUIT, an autologout, a shutdown or the peer leaving.

    Args:
        services: shared services.
        ctx: the connection's facts.
        reader, writer: the asyncio streams of the connection.
    """

    def __init__(
        self,
        services: Pop3Services,
        ctx: SessionContext,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        self.services = services
        self.ctx = ctx
        self.reader = reader
        self.writer = writer
        settings = services.settings
        self._hostname: str = settings.server.hostname
        self._max_errors: int = settings.limits.max_errors
        self._autologout: float = (
            services.autologout if services.autologout is not None
            else float(settings.pop3.autologout)
        )
        self.conn = ServerConnection(services.server_config)
        conn = self.conn
        conn.tls = writer.get_extra_info("ssl_object") is not None  # pop3s
        conn.offer_stls = services.tls is not None and not conn.tls
        conn.sasl_mechanisms = SASL_MECHANISMS if services.authenticator is not None else ()
        auth_settings = getattr(settings, "auth", None)
        conn.allow_plaintext_login = bool(
            getattr(auth_settings, "allow_plaintext_on_loopback", False)
        ) and is_loopback(ctx.peer_address)
        self.identity: str | None = None
        self.maildrop: Maildrop | None = None
        self._deleted: set[int] = set()
        self._sasl: SaslExchange | None = None
        self._out: list[bytes] = []
        self._errors = 0
        self._retrieved = 0
        self._removed = 0

    # ------------------------------------------------------------------ logging

    def _log(self, level: int, msg: str, *args: object, exc_info: bool = False) -> None:
        log.log(level, "%s " + msg, self.ctx.session_id, *args, exc_info=exc_info)

    # ------------------------------------------------------------------ main loop

    async def run(self) -> None:
        """Run the session to its end; never raises for anything the peer does."""
        ctx = self.ctx
        self._log(logging.INFO, "connect from [%s]:%d (%s)", ctx.peer_address, ctx.peer_port,
                  ctx.listener_kind)
        try:
            greeting = self.conn.greeting(f"{self._hostname} POP3 server ready (Pigeon)")
            self._out.append(self.conn.send(greeting))
            await self._loop()
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError) as exc:
            self._log(logging.INFO, "connection lost: %s", type(exc).__name__)
        except _Abort as exc:
            self._log(logging.WARNING, "session aborted: %s", exc)
        except asyncio.CancelledError:
            await self._try_close(Response(False, "server shutting down", code="SYS/TEMP"))
            raise
        except Exception:
            self._log(logging.ERROR, "unexpected error; closing", exc_info=True)
            await self._try_close(Response(False, "internal error", code="SYS/TEMP"))
        finally:
            self._release()
            with contextlib.suppress(Exception):
                self.writer.close()
                await asyncio.wait_for(self.writer.wait_closed(), _CLOSE_WAIT)
            self._log(logging.INFO, "disconnect from [%s] user=%s retrieved=%d removed=%d "
                      "errors=%d", ctx.peer_address, self.identity or "-", self._retrieved,
                      self._removed, self._errors)

    async def _loop(self) -> None:
        conn = self.conn
        while True:
            event = conn.next_event()
            if event is ev.NEED_DATA:
                await self._flush()
                if self.ctx.shutting_down:
                    await self._try_close(
                        Response(False, "server shutting down", code="SYS/TEMP")
                    )
                    return
                data = await self._read()
                if data is None:
                    return
                conn.receive_data(data)
                continue
            if event is ev.PAUSED:
                if conn.state is State.TLS:
                    if await self._start_tls():
                        continue
                    return
                await self._flush()
                return
            assert not isinstance(event, ev.Sentinel)
            if isinstance(event, ev.ConnectionClosed):
                self._log(logging.INFO, "peer closed the connection")
                return
            response = await self._handle(event)
            if response is None:
                continue  # the handler wrote the response itself (RETR, TOP)
            if isinstance(event, ev.CommandError):
                self._errors += 1
                if self._errors > self._max_errors:
                    self._log(logging.WARNING, "too many errors; closing")
                    self._out.append(conn.send(Response(False, "too many errors; closing")))
                    conn.close()
                    await self._flush()
                    return
            self._out.append(conn.send(response))
            if len(self._out) > 64:
                await self._flush()

    async def _read(self) -> bytes | None:
        self.ctx.idle = self.conn.state in (State.AUTHORIZATION, State.TRANSACTION)
        try:
            data = await asyncio.wait_for(self.reader.read(_READ_SIZE), self._autologout)
        except TimeoutError:
            # RFC 1939 §3: close without a response and without entering UPDATE.
            self._log(logging.INFO, "autologout after %.0f s in state %s", self._autologout,
                      self.conn.state.value)
            self.conn.close()
            return None
        finally:
            self.ctx.idle = False
        return data

    async def _write(self, data: bytes) -> None:
        self.writer.write(data)
        await asyncio.wait_for(self.writer.drain(), self._autologout)

    async def _flush(self) -> None:
        if not self._out:
            return
        data = b"".join(self._out)
        self._out.clear()
        await self._write(data)

    async def _try_close(self, response: Response) -> None:
        try:
            if self.conn.state is not State.CLOSED and not self.conn.sending_body:
                self._out.append(self.conn.close(response))
            else:
                self.conn.close()
            await asyncio.wait_for(self._flush(), _CLOSE_WAIT)
        except Exception:
            pass

    def _release(self) -> None:
        """Unlock the maildrop; nothing marked deleted is removed here."""
        maildrop, self.maildrop = self.maildrop, None
        if maildrop is not None:
            # Synchronous (an unlock and a close, never a wait), so a second cancellation
            # cannot leave the mailbox locked.
            with contextlib.suppress(Exception):
                maildrop.close()

    # ------------------------------------------------------------------ TLS

    async def _start_tls(self) -> bool:
        """Run the TLS handshake after ``+OK`` to STLS; False ends the session.

        Octets the client sent after the STLS line are dropped, never executed (RFC 2595
        §4 asks the client to wait; a front end that injects commands is thwarted): those
        in the state machine's buffer by ``tls_started()``, those in the stream reader
        here. Reading is paused before ``+OK`` leaves, so everything in the reader was
        sent before the client could see it (never the TLS ClientHello, which stays in
        the socket until the TLS layer reads it).
        """
        tls = self.services.tls
        if tls is None:  # pragma: no cover - STLS is only offered with a provider
            return False
        with contextlib.suppress(Exception):
            self.writer.transport.pause_reading()  # type: ignore[attr-defined]
        discarded = discard_buffered(self.reader)
        if discarded:
            self._log(logging.WARNING, "discarded %d octets sent after STLS", discarded)
        await self._flush()
        try:
            await asyncio.wait_for(self.writer.start_tls(tls.server_context()),
                                   self._autologout)
        except (OSError, TimeoutError, ValueError) as exc:
            self._log(logging.INFO, "TLS handshake failed: %s", sanitize(str(exc), 200))
            self.conn.close()
            return False
        self.conn.tls_started()
        obj = self.writer.get_extra_info("ssl_object")
        cipher = obj.cipher() if obj is not None else None
        self._log(logging.INFO, "STLS: %s %s", obj.version() if obj is not None else "?",
                  cipher[0] if cipher else "")
        return True

    # ------------------------------------------------------------------ events

    async def _handle(self, event: ev.Event) -> Response | Challenge | None:
        if isinstance(event, ev.CommandError):
            self._log(logging.INFO, "refused: %s", event.response)
            return event.response
        if isinstance(event, ev.Capa):
            return self.conn.capa_response()
        if isinstance(event, ev.Stls):
            return Response(True, "Begin TLS negotiation")
        if isinstance(event, ev.User):
            return Response(True, "send PASS")
        if isinstance(event, ev.Pass):
            credentials = Credentials(authcid=event.user, password=event.password)
            return await self._verify(credentials)
        if isinstance(event, ev.Auth):
            self._sasl = SaslExchange(event.mechanism)
            return await self._sasl_step(self._sasl.start(event.initial_response))
        if isinstance(event, ev.AuthResponse):
            if self._sasl is None:  # pragma: no cover - the state machine prevents it
                return Response(False, "no authentication in progress")
            return await self._sasl_step(self._sasl.respond(event.data))
        if isinstance(event, ev.AuthCancelled):
            self._sasl = None
            return Response(False, "authentication cancelled")
        if isinstance(event, ev.Quit):
            return await self._quit(event)
        return await self._transaction(event)

    async def _sasl_step(self, step: SaslStep) -> Response | Challenge:
        if step.challenge is not None:
            return Challenge(step.challenge)
        self._sasl = None
        if step.error is not None:
            return refusal_response(step.error)
        assert step.credentials is not None
        return await self._verify(step.credentials)

    async def _verify(self, credentials: Credentials) -> Response:
        authenticator = self.services.authenticator
        if authenticator is None:
            return Response(False, "authentication is not available", code="SYS/TEMP")
        result = await authenticator.verify(credentials, peer_ip=self.ctx.peer_address)
        if isinstance(result, Reply):
            self._log(logging.INFO, "login refused for %r: %s",
                      sanitize(credentials.authcid, 100), result)
            response = refusal_response(result)
            if result.code == 421:  # the address is blocked: say so and hang up
                self._out.append(self.conn.send(response))
                self.conn.close()
                await self._flush()
                raise _Abort("client address blocked after failed logins")
            return response
        return await self._open_maildrop(result)

    async def _open_maildrop(self, identity: str) -> Response:
        path = maildir_path(self.services.mail_root, identity)
        try:
            maildrop = await asyncio.to_thread(Maildrop.open, path)
        except MaildropLocked:
            self._log(logging.INFO, "maildrop of %s is in use", identity)
            return Response(False, "maildrop already locked by another session",
                            code="IN-USE")
        except (MaildropError, OSError) as exc:
            self._log(logging.ERROR, "cannot open the maildrop of %s: %s", identity, exc)
            return Response(False, "cannot open the maildrop; try again later",
                            code="SYS/TEMP")
        self.maildrop = maildrop
        self.identity = identity
        count, size = self._totals()
        self._log(logging.INFO, "login %s: %d messages, %d octets", identity, count, size)
        return Response(True, f"{identity} has {count} messages ({size} octets)")

    # ------------------------------------------------------------------ TRANSACTION

    def _totals(self) -> tuple[int, int]:
        assert self.maildrop is not None
        count = size = 0
        for i, msg in enumerate(self.maildrop.messages):
            if i not in self._deleted:
                count += 1
                size += msg.size
        return count, size

    def _index(self, number: int) -> int | Response:
        """The 0-based index for a message number, or the ``-ERR`` (RFC 1939 §5)."""
        assert self.maildrop is not None
        total = len(self.maildrop.messages)
        if not 1 <= number <= total:
            return Response(False, f"no such message, only {total} messages in maildrop")
        if number - 1 in self._deleted:
            return Response(False, f"message {number} already deleted")
        return number - 1

    async def _transaction(self, event: ev.Event) -> Response | None:
        maildrop = self.maildrop
        assert maildrop is not None
        messages = maildrop.messages
        if isinstance(event, ev.Stat):
            count, size = self._totals()
            return Response(True, f"{count} {size}")
        if isinstance(event, ev.List):
            if event.message is None:
                count, size = self._totals()
                return Response(True, f"{count} messages ({size} octets)", lines=tuple(
                    f"{i + 1} {m.size}" for i, m in enumerate(messages)
                    if i not in self._deleted
                ))
            index = self._index(event.message)
            if isinstance(index, Response):
                return index
            return Response(True, f"{event.message} {messages[index].size}")
        if isinstance(event, ev.Uidl):
            if event.message is None:
                return Response(True, "unique-id listing follows", lines=tuple(
                    f"{i + 1} {m.uid}" for i, m in enumerate(messages)
                    if i not in self._deleted
                ))
            index = self._index(event.message)
            if isinstance(index, Response):
                return index
            return Response(True, f"{event.message} {messages[index].uid}")
        if isinstance(event, ev.Retr):
            return await self._send_message(event.message, None)
        if isinstance(event, ev.Top):
            return await self._send_message(event.message, event.lines)
        if isinstance(event, ev.Dele):
            index = self._index(event.message)
            if isinstance(index, Response):
                return index
            self._deleted.add(index)
            return Response(True, f"message {event.message} deleted")
        if isinstance(event, ev.Noop):
            return Response(True)
        if isinstance(event, ev.Rset):
            self._deleted.clear()
            count, size = self._totals()
            return Response(True, f"maildrop has {count} messages ({size} octets)")
        raise AssertionError(f"unhandled event {event!r}")

    async def _send_message(self, number: int, top_lines: int | None) -> Response | None:
        """RETR (``top_lines`` None) or TOP: stream the message; None when it was sent."""
        maildrop = self.maildrop
        assert maildrop is not None
        index = self._index(number)
        if isinstance(index, Response):
            return index
        try:
            f: BinaryIO = await asyncio.to_thread(maildrop.open_message, index)
        except OSError as exc:
            self._log(logging.ERROR, "cannot open message %d (%s): %s", number,
                      maildrop.messages[index].name, exc)
            return Response(False, "message cannot be read; try again later",
                            code="SYS/TEMP")
        msg = maildrop.messages[index]
        try:
            text = f"{msg.size} octets" if top_lines is None else "top of message follows"
            self._out.append(self.conn.send(Response(True, text, body=True)))
            await self._flush()
            await self._stream(f, top_lines)
        finally:
            with contextlib.suppress(OSError):
                await asyncio.to_thread(f.close)
        if top_lines is None:
            self._retrieved += 1
            try:
                await asyncio.to_thread(maildrop.mark_seen, index)
            except OSError as exc:
                self._log(logging.WARNING, "cannot flag %s as seen: %s", msg.name, exc)
        return None

    async def _stream(self, f: BinaryIO, top_lines: int | None) -> None:
        normalizer = CrlfNormalizer()
        cut = TopFilter(top_lines) if top_lines is not None else None
        conn = self.conn
        while True:
            try:
                block = await asyncio.to_thread(f.read, READ_BLOCK)
            except OSError as exc:
                # +OK is already out: the only honest thing left is to hang up.
                raise _Abort(f"read error in the middle of a message: {exc}") from exc
            data = normalizer.finish() if not block else normalizer.feed(block)
            if cut is not None:
                data = cut.feed(data)
            if data:
                await self._write(conn.send_body(data))
            if not block or (cut is not None and cut.done):
                break
        await self._write(conn.end_body())

    # ------------------------------------------------------------------ QUIT / UPDATE

    async def _quit(self, event: ev.Quit) -> Response:
        bye = f"{self._hostname} POP3 server signing off"
        if not event.update:
            return Response(True, bye)
        maildrop = self.maildrop
        assert maildrop is not None
        doomed = sorted(self._deleted)
        failures = 0
        if doomed:
            failures = await asyncio.to_thread(maildrop.expunge, doomed)
        self._removed = len(doomed) - failures
        self._deleted.clear()
        self._release()
        self._log(logging.INFO, "update %s: %d removed, %d failed", self.identity,
                  self._removed, failures)
        if failures:
            return Response(False, f"some deleted messages not removed ({failures})",
                            code="SYS/TEMP")
        count = len(maildrop.messages) - self._removed
        return Response(True, f"{bye} ({count} messages left)")
