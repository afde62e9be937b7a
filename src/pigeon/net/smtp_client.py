"""The outbound SMTP client session: drives the sans-I/O client over an asyncio connection.

Theory of operation
-------------------
:meth:`SmtpClientSession.connect` opens the TCP connection (TLS from the start for
``implicit``), reads the greeting, says EHLO (HELO when EHLO is refused, RFC 5321
§4.1.4), and, when TLS is wanted and offered, says STARTTLS, does the handshake and says
EHLO again (RFC 3207 §4.2). In ``opportunistic`` mode a refused STARTTLS goes on in plain
text and a failed handshake is retried once on a new plain connection, as Postfix's
``may`` level does; ``starttls`` and ``implicit`` fail instead.

:meth:`SmtpClientSession.send_message` runs one mail transaction: RSET first when the
session already carried a message, MAIL with the parameters the server offered, one RCPT
per recipient, then DATA (dot-stuffed, CRLF-only content streamed from memory or a file in
blocks) or BDAT chunks (RFC 3030). With PIPELINING (RFC 2920) RSET, MAIL, every RCPT and
DATA leave in one write and the replies are matched to them in order. The result keeps one
reply per recipient so the caller can decide for each.

Time limits follow RFC 5321 §4.5.3.2 and scale with ``timeout`` (the MAIL/RCPT limit): with
the default 300 s, the greeting and MAIL/RCPT wait 5 min, DATA's 354 2 min, each block
of content 3 min, the reply to the end of data 10 min.

Any problem that ends the session (refused connection, timeout, lost connection, a
greeting or EHLO that refuses us, a reply that is not SMTP) raises
:class:`SmtpClientError` carrying a :class:`~pigeon.mail.reply.Reply`: the server's own
reply when there was one, else a local one with a ``4.4.x`` code (RFC 3463 §3.5).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Literal

from pigeon.mail.envelope import MailParams, RcptParams
from pigeon.mail.reply import Reply
from pigeon.protocol.smtp.client import (
    NEED_DATA,
    AuthContinue,
    AuthStart,
    Bdat,
    ClientConnection,
    ClientState,
    Command,
    ConnectionClosed,
    ContentEncoder,
    Data,
    Ehlo,
    EndOfData,
    Helo,
    Mail,
    Quit,
    Rcpt,
    ReplyReceived,
    ReplySyntaxError,
    Rset,
    StartTls,
    mail_parameters,
    rcpt_parameters,
)

__all__ = [
    "ClientTLS",
    "SmtpClientError",
    "SmtpClientSession",
    "Timeouts",
    "TransactionResult",
]

log = logging.getLogger("pigeon.smtp")

_READ_SIZE = 64 * 1024
# Content is read from the spool and written in blocks of this many bytes.
_BLOCK = 256 * 1024
TlsMode = Literal["none", "opportunistic", "starttls", "implicit"]


@dataclass(frozen=True)
class ClientTLS:
    """How the client uses TLS.

    Attributes:
        mode: ``none`` (never), ``opportunistic`` (STARTTLS when offered, plain text
            otherwise, RFC 3207), ``starttls`` (STARTTLS required), ``implicit`` (TLS from
            the first byte, RFC 8314 §3.3).
        verify: check the server's certificate and name (opportunistic TLS between MTAs
            does not, RFC 7435).
        server_hostname: the name sent in SNI and checked against the certificate;
            default: the host connected to.
        ca_file: PEM file of trusted certificates when verifying; default: the system's.
    """

    mode: TlsMode = "opportunistic"
    verify: bool = False
    server_hostname: str | None = None
    ca_file: Path | None = None

    def context(self) -> ssl.SSLContext:
        """Build the client ``ssl.SSLContext`` for these settings."""
        ctx = ssl.create_default_context(
            cafile=str(self.ca_file) if self.ca_file is not None else None
        )
        if not self.verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx


@dataclass(frozen=True)
class Timeouts:
    """Client time limits in seconds (RFC 5321 §4.5.3.2).

    Attributes:
        connect: to open the TCP connection (and the TLS handshake).
        greeting: for the 220 greeting (§4.5.3.2.1: 5 min).
        command: for replies to EHLO, MAIL, RCPT, RSET, AUTH, STARTTLS (§4.5.3.2.2-3).
        data_start: for the 354 reply to DATA (§4.5.3.2.4: 2 min).
        data_block: to write each block of content (§4.5.3.2.5: 3 min).
        data_end: for the reply to the end of data (§4.5.3.2.6: 10 min).
        quit: for the reply to QUIT.
    """

    connect: float = 30.0
    greeting: float = 300.0
    command: float = 300.0
    data_start: float = 120.0
    data_block: float = 180.0
    data_end: float = 600.0
    quit: float = 10.0

    @classmethod
    def scaled(cls, timeout: float, connect: float = 30.0) -> Timeouts:
        """RFC 5321 §4.5.3.2 limits scaled so that MAIL/RCPT wait ``timeout`` seconds."""
        f = timeout / 300.0
        return cls(
            connect=connect,
            greeting=300.0 * f,
            command=300.0 * f,
            data_start=120.0 * f,
            data_block=180.0 * f,
            data_end=600.0 * f,
            quit=min(10.0, 300.0 * f),
        )


class SmtpClientError(Exception):
    """The session failed as a whole; ``reply`` says why.

    Attributes:
        reply: the server's reply, or a local one (``4.4.1`` no connection, ``4.4.2``
            connection lost or timed out, ``4.5.0`` not an SMTP server, ``4.7.x`` TLS and
            authentication problems).
        stage: what the client was doing: ``connect``, ``greeting``, ``ehlo``,
            ``starttls``, ``auth``, ``rset``, ``mail``, ``rcpt``, ``data``, ``content``,
            ``end`` or ``quit``.
        remote_host: ``name[address]`` of the server.
        content_sent: some message content may have reached the server (a retry could
            duplicate the message only if the server also took it).
    """

    def __init__(
        self,
        reply: Reply,
        *,
        stage: str = "",
        remote_host: str = "",
        content_sent: bool = False,
    ) -> None:
        super().__init__(str(reply))
        self.reply = reply
        self.stage = stage
        self.remote_host = remote_host
        self.content_sent = content_sent


@dataclass
class TransactionResult:
    """The replies of one mail transaction.

    Attributes:
        mail_reply: the reply to MAIL (or the local refusal when the message could not be
            offered to this server at all).
        rcpt_replies: one reply per recipient, in order (the MAIL reply for recipients
            never offered because MAIL failed).
        data_reply: the reply to DATA when it was refused, else the reply to the end of
            data (or to the last BDAT); None when no recipient was accepted.
        remote_host: ``name[address]`` of the server.
    """

    mail_reply: Reply
    rcpt_replies: list[Reply]
    data_reply: Reply | None
    remote_host: str = ""

    def accepted(self) -> list[int]:
        """Indexes of the recipients the server finally took (RCPT 2xx and data 2xx)."""
        if not 200 <= self.mail_reply.code < 300:
            return []
        if self.data_reply is None or not 200 <= self.data_reply.code < 300:
            return []
        return [i for i, r in enumerate(self.rcpt_replies) if 200 <= r.code < 300]

    def reply_for(self, index: int) -> Reply:
        """The reply that decided recipient ``index``: MAIL's, RCPT's or the data's."""
        if not 200 <= self.mail_reply.code < 300:
            return self.mail_reply
        rcpt = self.rcpt_replies[index]
        if not 200 <= rcpt.code < 300:
            return rcpt
        if self.data_reply is None:
            return Reply(451, "4.3.0", "no recipient was accepted; data not sent")
        return self.data_reply


@dataclass
class _Io:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    peer: str = ""
    local: str = ""
    closed: bool = field(default=False)


class SmtpClientSession:
    """One outbound SMTP connection (see the module docstring); build it with :meth:`connect`.

    Attributes:
        extensions: EHLO keywords (upper case) -> parameter text.
        tls_active: the session is encrypted.
        remote_host: ``name[address]`` of the server.
        messages_sent: transactions completed on this connection.
        use_chunking: send BDAT instead of DATA when CHUNKING is offered (BINARYMIME
            content always uses BDAT).
    """

    def __init__(
        self,
        io: _Io,
        conn: ClientConnection,
        *,
        helo: str,
        tls: ClientTLS,
        timeouts: Timeouts,
        host: str,
        name: str,
    ) -> None:
        self._io = io
        self._conn = conn
        self._helo = helo
        self._tls = tls
        self._timeouts = timeouts
        self._host = host
        self._name = name
        self._used = False
        self.messages_sent = 0
        self.use_chunking = False
        self.remote_host = f"{name}[{io.peer or host}]"

    # ------------------------------------------------------------------ properties

    @property
    def extensions(self) -> dict[str, str]:
        """EHLO keywords (upper case) -> parameter text (empty after HELO)."""
        return self._conn.extensions

    @property
    def tls_active(self) -> bool:
        """True when the session is encrypted (STARTTLS done or implicit TLS)."""
        return self._conn.tls

    @property
    def server_name(self) -> str:
        """The name the server gave in its EHLO/HELO reply (else its greeting)."""
        return self._conn.ehlo_name or self._conn.server_name

    @property
    def max_size(self) -> int:
        """The SIZE limit the server announced in bytes, 0 when none (RFC 1870 §4)."""
        value = self.extensions.get("SIZE", "")
        return int(value) if value.isdigit() else 0

    @property
    def is_usable(self) -> bool:
        """The connection is open and between transactions (fit for another message)."""
        if self._io.closed or self._conn.state is not ClientState.IDLE:
            return False
        reader = self._io.reader
        # The server closing an idle connection (or its unsolicited 421) shows up as
        # buffered input or end of file.
        return not reader.at_eof() and not reader._buffer  # type: ignore[attr-defined]

    # ------------------------------------------------------------------ connecting

    @classmethod
    async def connect(
        cls,
        host: str,
        port: int,
        *,
        helo: str,
        tls: ClientTLS = ClientTLS(),
        timeout: float = 300.0,
        source_address: str | None = None,
        connect_timeout: float = 30.0,
        name: str | None = None,
    ) -> SmtpClientSession:
        """Connect, read the greeting, say EHLO (or HELO) and start TLS as ``tls`` says.

        Args:
            host: the server's address or name.
            port: the TCP port.
            helo: our name for EHLO/HELO (RFC 5321 §4.1.1.1: our FQDN or an address
                literal).
            tls: the TLS policy.
            timeout: the MAIL/RCPT reply limit in seconds; the other limits scale with it
                (see :class:`Timeouts`).
            source_address: the local address to connect from.
            connect_timeout: seconds for the TCP connection and the TLS handshake.
            name: the server's name for logs and results (default: ``host``).

        Returns:
            A session ready for :meth:`send_message`.

        Raises:
            SmtpClientError: the connection, greeting, EHLO/HELO or required TLS failed.
        """
        timeouts = Timeouts.scaled(timeout, connect_timeout)
        label = name or host
        try:
            return await cls._open(host, port, helo, tls, timeouts, source_address, label)
        except _TlsHandshakeError as exc:
            if tls.mode != "opportunistic":
                raise SmtpClientError(
                    Reply(421, "4.7.5", f"TLS handshake with {label} failed: {exc}"),
                    stage="starttls",
                    remote_host=f"{label}[{host}]",
                ) from None
            log.info("TLS handshake with %s[%s] failed (%s); retrying without TLS",
                     label, host, exc)
            return await cls._open(host, port, helo, tls, timeouts, source_address, label,
                                   try_tls=False)

    @classmethod
    async def _open(
        cls,
        host: str,
        port: int,
        helo: str,
        tls: ClientTLS,
        timeouts: Timeouts,
        source_address: str | None,
        label: str,
        *,
        try_tls: bool = True,
    ) -> SmtpClientSession:
        where = f"{label}[{host}]:{port}"
        ssl_ctx = tls.context() if tls.mode == "implicit" else None
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(
                    host,
                    port,
                    ssl=ssl_ctx,
                    server_hostname=(tls.server_hostname or label) if ssl_ctx else None,
                    local_addr=(source_address, 0) if source_address else None,
                    limit=_READ_SIZE,
                ),
                timeouts.connect,
            )
        except TimeoutError:
            raise SmtpClientError(
                Reply(421, "4.4.1", f"connect to {where}: Connection timed out"),
                stage="connect", remote_host=f"{label}[{host}]",
            ) from None
        except ssl.SSLError as exc:
            raise _TlsHandshakeError(str(exc)) from None
        except OSError as exc:
            # asyncio's own text ("Connect call failed (...)") repeats the address.
            reason = os.strerror(exc.errno) if exc.errno else (
                exc.strerror or type(exc).__name__)
            raise SmtpClientError(
                Reply(421, "4.4.1", f"connect to {where}: {reason}"),
                stage="connect", remote_host=f"{label}[{host}]",
            ) from None
        peer = writer.get_extra_info("peername")
        io = _Io(reader, writer, peer=str(peer[0]) if peer else host)
        conn = ClientConnection()
        conn.tls = ssl_ctx is not None
        session = cls(io, conn, helo=helo, tls=tls, timeouts=timeouts, host=host, name=label)
        try:
            await session._start(try_tls=try_tls)
        except BaseException:
            await session.close()
            raise
        return session

    async def _start(self, *, try_tls: bool) -> None:
        greeting = await self._reply_to(None, "greeting", self._timeouts.greeting)
        if greeting.code != 220:
            await self._quit_quietly()
            raise self._error(greeting, "greeting")
        await self._hello()
        mode = self._tls.mode
        if try_tls and mode in ("opportunistic", "starttls") and not self._conn.tls:
            if "STARTTLS" in self.extensions:
                reply = await self._command(StartTls(), "starttls", self._timeouts.command)
                if reply.code == 220:
                    await self._handshake()
                    await self._hello()
                elif mode == "starttls":
                    await self._quit_quietly()
                    raise self._error(reply, "starttls")
            elif mode == "starttls":
                await self._quit_quietly()
                raise self._error(
                    Reply(421, "4.7.4", f"TLS is required, but was not offered by host "
                                        f"{self.remote_host}"),
                    "starttls",
                )

    async def _hello(self) -> None:
        reply = await self._command(Ehlo(self._helo), "ehlo", self._timeouts.command)
        if reply.code // 100 == 5:
            # RFC 5321 §4.1.4: a server that does not know EHLO; try HELO.
            reply = await self._command(Helo(self._helo), "ehlo", self._timeouts.command)
        if reply.code // 100 != 2:
            await self._quit_quietly()
            raise self._error(reply, "ehlo")

    async def _handshake(self) -> None:
        ctx = self._tls.context()
        try:
            await asyncio.wait_for(
                self._io.writer.start_tls(
                    ctx, server_hostname=self._tls.server_hostname or self._name
                ),
                self._timeouts.connect,
            )
        except (ssl.SSLError, ConnectionError, TimeoutError, OSError) as exc:
            self._io.closed = True
            with contextlib.suppress(Exception):
                self._io.writer.close()
            raise _TlsHandshakeError(str(exc) or type(exc).__name__) from None
        self._conn.tls_started()

    # ------------------------------------------------------------------ AUTH

    async def authenticate(
        self, username: str, password: str, *, allow_plaintext: bool = False
    ) -> None:
        """Authenticate with SASL PLAIN or LOGIN (RFC 4954, RFC 4616).

        Credentials are only sent over TLS, unless the session was opened with TLS mode
        ``none`` (plain text chosen on purpose) or ``allow_plaintext`` is set.

        Args:
            username: the authentication identity.
            password: the password.
            allow_plaintext: send the credentials even when the session is not encrypted
                (never do this over a network you do not control).

        Raises:
            SmtpClientError: the session is not encrypted (``4.7.0``, see above), the
                server offers neither mechanism (``4.7.0``), or it refused the credentials
                (its reply, e.g. ``535 5.7.8``).
        """
        plaintext_ok = allow_plaintext or self._tls.mode == "none"
        if not self.tls_active and not plaintext_ok:
            raise self._error(
                Reply(454, "4.7.0", f"refusing to send credentials to {self.remote_host} "
                                    "without TLS"),
                "auth",
            )
        mechanisms = self.extensions.get("AUTH", "").upper().split()
        t = self._timeouts.command
        if "PLAIN" in mechanisms:
            token = b"\0" + username.encode("utf-8") + b"\0" + password.encode("utf-8")
            reply = await self._command(AuthStart("PLAIN", token), "auth", t)
            if reply.code == 334:
                reply = await self._command(AuthContinue(token), "auth", t)
        elif "LOGIN" in mechanisms:
            reply = await self._command(AuthStart("LOGIN"), "auth", t)
            if reply.code == 334:
                reply = await self._command(AuthContinue(username.encode("utf-8")), "auth", t)
            if reply.code == 334:
                reply = await self._command(AuthContinue(password.encode("utf-8")), "auth", t)
        else:
            offered = " ".join(mechanisms) or "none"
            raise self._error(
                Reply(454, "4.7.0", f"SASL authentication failed; {self.remote_host} offered "
                                    f"no usable mechanism (offered: {offered})"),
                "auth",
            )
        while reply.code == 334:  # a server that keeps asking: cancel (RFC 4954 §4)
            reply = await self._command(AuthContinue(cancel=True), "auth", t)
        if reply.code != 235:
            raise self._error(reply, "auth")

    # ------------------------------------------------------------------ transactions

    async def send_message(
        self,
        reverse_path: str,
        recipients: list[str],
        content: bytes | Path,
        *,
        mail_params: MailParams | None = None,
        rcpt_params: list[RcptParams] | None = None,
    ) -> TransactionResult:
        """Run one mail transaction.

        Args:
            reverse_path: the mailbox as text, ``""`` for the null reverse-path.
            recipients: forward-path mailboxes as text (at least one).
            content: the message (CRLF line endings; bare CR/LF are sent as CRLF), or the
                path of a file holding it.
            mail_params: BODY, SMTPUTF8, RET, ENVID (each sent only when offered).
            rcpt_params: one per recipient: NOTIFY, ORCPT (sent only when DSN is offered).

        Returns:
            One reply per recipient and the final reply. When the message cannot be
            offered to this server at all (SMTPUTF8 or 8BITMIME needed but not offered,
            bigger than its SIZE limit), nothing is sent and every reply is that refusal.

        Raises:
            SmtpClientError: the session failed (connection lost, timeout, RSET refused);
                the connection is closed.
            ValueError: no recipients, or ``rcpt_params`` of the wrong length.
        """
        if not recipients:
            raise ValueError("a transaction needs at least one recipient")
        if rcpt_params is not None and len(rcpt_params) != len(recipients):
            raise ValueError("rcpt_params needs one entry per recipient")
        if self._conn.state is not ClientState.IDLE or self._io.closed:
            raise self._error(
                Reply(421, "4.4.2", f"connection with {self.remote_host} is not usable"),
                "rset",
            )
        content, size = await _load(content)
        refusal = self._refusal(reverse_path, recipients, mail_params, size)
        if refusal is not None:
            return TransactionResult(refusal, [refusal] * len(recipients), None,
                                     self.remote_host)
        ext = self.extensions
        body = mail_params.body if mail_params else None
        bdat = "CHUNKING" in ext and (self.use_chunking or body == "BINARYMIME")
        mail = Mail(reverse_path, mail_parameters(mail_params, ext, size=size))
        rcpts = [
            Rcpt(r, rcpt_parameters(rcpt_params[i] if rcpt_params else None, ext))
            for i, r in enumerate(recipients)
        ]
        try:
            result = await self._transaction(mail, rcpts, content, bdat=bdat,
                                             binary=body == "BINARYMIME")
        except SmtpClientError:
            await self.close()
            raise
        self._used = True
        if result.accepted():
            self.messages_sent += 1
        return result

    def _refusal(
        self,
        reverse_path: str,
        recipients: list[str],
        params: MailParams | None,
        size: int,
    ) -> Reply | None:
        ext = self.extensions
        host = self.remote_host
        utf8 = (params is not None and params.smtputf8) or not reverse_path.isascii() or any(
            not r.isascii() for r in recipients
        )
        if utf8 and "SMTPUTF8" not in ext:
            # RFC 6531 §3.2: without SMTPUTF8 the message cannot be sent to this server.
            return Reply(553, "5.6.7", f"SMTPUTF8 is required, but was not offered by host "
                                       f"{host}")
        body = params.body if params else None
        if body == "8BITMIME" and "8BITMIME" not in ext:
            return Reply(554, "5.6.3", f"8BITMIME is required, but was not offered by host "
                                       f"{host}")
        if body == "BINARYMIME" and not ("BINARYMIME" in ext and "CHUNKING" in ext):
            return Reply(554, "5.6.3", f"BINARYMIME is required, but was not offered by host "
                                       f"{host}")
        limit = self.max_size
        if limit and size > limit:
            return Reply(552, "5.3.4", f"message size {size} exceeds size limit {limit} of "
                                       f"server {host}")
        return None

    async def _transaction(
        self,
        mail: Mail,
        rcpts: list[Rcpt],
        content: bytes | Path,
        *,
        bdat: bool,
        binary: bool,
    ) -> TransactionResult:
        t = self._timeouts
        pipelining = "PIPELINING" in self.extensions
        head: list[Command] = []
        if self._used:
            head.append(Rset())
        head.append(mail)
        head.extend(rcpts)
        if not bdat:
            head.append(Data())
        if pipelining:
            # RFC 2920 §3.1: RSET, MAIL, RCPT and DATA may go in one group, DATA last.
            await self._write(b"".join(self._conn.send(c) for c in head), "mail")
            replies = [
                await self._reply_to(c, _stage(c), t.data_start if isinstance(c, Data)
                                     else t.command)
                for c in head
            ]
        else:
            replies = []
            offset = 1 if self._used else 0
            for c in head:
                if isinstance(c, Mail) and self._used and replies[0].code // 100 != 2:
                    break  # RSET refused: handled below
                if isinstance(c, (Rcpt, Data)) and replies[offset].code // 100 != 2:
                    break  # MAIL refused: no RCPT, no DATA
                if isinstance(c, Data) and not any(
                    r.code // 100 == 2 for r in replies[offset + 1 :]
                ):
                    break  # no recipient accepted: no DATA
                timeout = t.data_start if isinstance(c, Data) else t.command
                replies.append(await self._command(c, _stage(c), timeout))
        if self._used:
            rset_reply = replies.pop(0)
            if rset_reply.code // 100 != 2:
                raise self._error(rset_reply, "rset")
        mail_reply = replies[0]
        n = len(rcpts)
        rcpt_replies = replies[1 : 1 + n]
        if len(rcpt_replies) < n:
            rcpt_replies += [mail_reply] * (n - len(rcpt_replies))
        any_accepted = any(200 <= r.code < 300 for r in rcpt_replies)
        mail_ok = 200 <= mail_reply.code < 300
        data_reply: Reply | None = None
        if bdat:
            if mail_ok and any_accepted:
                data_reply = await self._send_bdat(content, binary=binary)
        else:
            data_cmd_reply = replies[1 + n] if len(replies) > 1 + n else None
            if data_cmd_reply is not None and data_cmd_reply.code == 354:
                if mail_ok and any_accepted:
                    data_reply = await self._send_content(content)
                else:
                    # RFC 2920 §3.1: DATA was accepted though no recipient was: end the
                    # (empty) content at once; its reply is of no interest.
                    await self._write(self._conn.end_content(), "end")
                    await self._reply_to(EndOfData(), "end", t.data_end)
            elif data_cmd_reply is not None and mail_ok and any_accepted:
                data_reply = data_cmd_reply
        return TransactionResult(mail_reply, rcpt_replies, data_reply, self.remote_host)

    async def _send_content(self, content: bytes | Path) -> Reply:
        conn = self._conn
        t = self._timeouts
        pending = b""
        async for block in _blocks(content):
            if pending:
                await self._write(pending, "content", t.data_block, sent=True)
            pending = conn.send_content(block)
        # The last block and the end of data leave in one write.
        await self._write(pending + conn.end_content(), "end", t.data_block, sent=True)
        return await self._reply_to(EndOfData(), "end", t.data_end, sent=True)

    async def _send_bdat(self, content: bytes | Path, *, binary: bool) -> Reply:
        encoder = None if binary else ContentEncoder(dot_stuffing=False)
        pending = b""
        have = False
        async for block in _blocks(content):
            data = encoder.encode(block) if encoder is not None else block
            if have:
                reply = await self._chunk(pending, last=False)
                if reply.code // 100 != 2:
                    return reply
            pending, have = data, True
        tail = encoder.finish() if encoder is not None else b""
        last = pending + tail if have else tail
        return await self._chunk(last, last=True)

    async def _chunk(self, data: bytes, *, last: bool) -> Reply:
        t = self._timeouts
        command = Bdat(data, last=last)
        await self._write(self._conn.send(command), "content", t.data_block, sent=True)
        return await self._reply_to(command, "end" if last else "content",
                                    t.data_end if last else t.data_block, sent=True)

    # ------------------------------------------------------------------ ending

    async def quit(self) -> None:
        """Say QUIT, wait briefly for the reply, close. Never raises."""
        await self._quit_quietly()
        await self.close()

    async def close(self) -> None:
        """Close the connection without QUIT (after an error). Never raises."""
        if self._io.closed:
            return
        self._io.closed = True
        with contextlib.suppress(Exception):
            self._io.writer.close()
            await asyncio.wait_for(self._io.writer.wait_closed(), 2.0)

    async def _quit_quietly(self) -> None:
        if self._io.closed or self._conn.state in (ClientState.CLOSED, ClientState.TLS,
                                                    ClientState.DATA, ClientState.AUTH):
            return
        with contextlib.suppress(Exception):
            await self._write(self._conn.send(Quit()), "quit", self._timeouts.quit)
            await self._reply_to(None, "quit", self._timeouts.quit)

    # ------------------------------------------------------------------ I/O

    def _error(self, reply: Reply, stage: str, *, sent: bool = False) -> SmtpClientError:
        return SmtpClientError(reply, stage=stage, remote_host=self.remote_host,
                               content_sent=sent)

    async def _write(
        self, data: bytes, stage: str, timeout: float | None = None, *, sent: bool = False
    ) -> None:
        writer = self._io.writer
        try:
            transport = writer.transport
            if transport.is_closing():
                # The peer went away (uvloop refuses a write on a closed transport with
                # RuntimeError, asyncio drops it silently): a lost connection either way.
                raise ConnectionResetError("connection closed")
            writer.write(data)
            if transport.get_write_buffer_size() > transport.get_write_buffer_limits()[0]:
                async with asyncio.timeout(timeout or self._timeouts.command):
                    await writer.drain()
            elif transport.is_closing():
                raise ConnectionResetError("connection closed")
        except TimeoutError:
            await self.close()
            raise self._error(
                Reply(421, "4.4.2", f"conversation with {self.remote_host} timed out while "
                                    f"{_doing(stage)}"), stage, sent=sent) from None
        except (ConnectionError, OSError) as exc:
            await self.close()
            raise self._error(
                Reply(421, "4.4.2", f"lost connection with {self.remote_host} while "
                                    f"{_doing(stage)} ({type(exc).__name__})"),
                stage, sent=sent) from None

    async def _command(self, command: Command, stage: str, timeout: float) -> Reply:
        await self._write(self._conn.send(command), stage, timeout)
        return await self._reply_to(command, stage, timeout)

    async def _reply_to(
        self, command: Command | None, stage: str, timeout: float, *, sent: bool = False
    ) -> Reply:
        """Read until the reply to the oldest waiting command arrives; return it."""
        conn = self._conn
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            try:
                event = conn.next_event()
            except ReplySyntaxError as exc:
                await self.close()
                raise self._error(
                    Reply(421, "4.5.0", f"protocol error from {self.remote_host} while "
                                        f"{_doing(stage)}: {exc}"), stage, sent=sent) from None
            if isinstance(event, ReplyReceived):
                if event.command is None:  # an unsolicited 421 (RFC 5321 §3.8)
                    await self.close()
                    raise self._error(event.reply, stage, sent=sent)
                if event.reply.code == 421 and not isinstance(event.command, Quit):
                    await self.close()
                    raise self._error(event.reply, stage, sent=sent)
                return event.reply
            if isinstance(event, ConnectionClosed):
                await self.close()
                raise self._error(
                    Reply(421, "4.4.2", f"lost connection with {self.remote_host} while "
                                        f"{_doing(stage)}"), stage, sent=sent)
            assert event is NEED_DATA
            left = deadline - loop.time()
            try:
                if left <= 0:
                    raise TimeoutError
                async with asyncio.timeout(left):
                    data = await self._io.reader.read(_READ_SIZE)
            except TimeoutError:
                await self.close()
                raise self._error(
                    Reply(421, "4.4.2", f"conversation with {self.remote_host} timed out "
                                        f"while {_doing(stage)}"), stage, sent=sent) from None
            except (ConnectionError, OSError) as exc:
                await self.close()
                raise self._error(
                    Reply(421, "4.4.2", f"lost connection with {self.remote_host} while "
                                        f"{_doing(stage)} ({type(exc).__name__})"),
                    stage, sent=sent) from None
            conn.receive_data(data)


class _TlsHandshakeError(Exception):
    """The TLS handshake failed (opportunistic TLS then tries again in plain text)."""


def _stage(command: Command) -> str:
    if isinstance(command, Rset):
        return "rset"
    if isinstance(command, Mail):
        return "mail"
    if isinstance(command, Rcpt):
        return "rcpt"
    if isinstance(command, Data):
        return "data"
    return command.verb.lower()


_DOING = {
    "connect": "connecting",
    "greeting": "receiving the initial server greeting",
    "ehlo": "performing the EHLO handshake",
    "starttls": "starting TLS",
    "auth": "authenticating",
    "rset": "sending RSET",
    "mail": "sending MAIL FROM",
    "rcpt": "sending RCPT TO",
    "data": "sending DATA command",
    "content": "sending message body",
    "end": "sending end of data -- message may be sent more than once",
    "quit": "sending QUIT",
}


def _doing(stage: str) -> str:
    return _DOING.get(stage, stage)


def _read_small(path: Path) -> tuple[bytes | Path, int]:
    with path.open("rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size <= _BLOCK:
            return f.read(), size
    return path, size


async def _load(content: bytes | Path) -> tuple[bytes | Path, int]:
    """The content (read into memory when it is at most one block) and its size in bytes."""
    if isinstance(content, Path):
        return await asyncio.to_thread(_read_small, content)
    return content, len(content)


async def _blocks(content: bytes | Path) -> AsyncIterator[bytes]:
    """Yield the content in blocks of at most :data:`_BLOCK` bytes."""
    if not isinstance(content, Path):
        for i in range(0, len(content), _BLOCK):
            yield content[i : i + _BLOCK]
        return
    f: IO[bytes] = await asyncio.to_thread(open, content, "rb")
    try:
        while True:
            block = await asyncio.to_thread(f.read, _BLOCK)
            if not block:
                return
            yield block
    finally:
        f.close()

