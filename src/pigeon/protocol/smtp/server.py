"""The server side of an SMTP session as a sans-I/O state machine (RFC 5321 and extensions).

Theory of operation
-------------------
Shaped like h11: the caller feeds received bytes with :meth:`ServerConnection.receive_data`,
takes events with :meth:`ServerConnection.next_event`, and answers each event that needs a
reply with :meth:`ServerConnection.send`, which returns the bytes to write. The machine
never touches a socket, a file or a clock.

Commands are read one line at a time from a byte buffer (``bytes.find``, no per-octet
loop). A command is parsed, checked against the state table in :mod:`._state` and against
what the session advertised; problems the protocol can judge on its own become a
:class:`CommandError` event carrying the exact reply. Everything else (is this recipient
ours? may this client relay?) is left to the application, which sees a typed event.

While one reply is owed, :meth:`next_event` returns ``PAUSED`` and no further input is
parsed: that is what makes PIPELINING (RFC 2920) safe: replies come out in command order,
and the caller writes them in one batch when :meth:`next_event` asks for data.

Limits (RFC 5321 §4.5.3.1): a command line may be ``max_command_length`` octets (512),
MAIL and RCPT lines 512 more for their parameters (RFC 1870 §3, RFC 3461 §5 and RFC 6531
§3.3 each extend the line), AUTH lines 12288 (RFC 4954 §4). A longer line is discarded as it
arrives (memory stays bounded) and answered ``500 5.5.6`` once its end is seen. A line of
message text may be ``max_line_length`` octets (1000).

Only CRLF ends a command line. A command line ending in a bare LF, or holding a bare CR,
is refused and never executed, so no command can be smuggled past a front end that
reads lines differently.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections import deque
from dataclasses import dataclass

from pigeon.mail.address import (
    AddressError,
    parse_forward_path,
    parse_reverse_path,
    split_path,
)
from pigeon.mail.reply import Reply
from pigeon.protocol.smtp._data import ContentInspector, DotDecoder
from pigeon.protocol.smtp._events import (
    NEED_DATA,
    PAUSED,
    Auth,
    AuthCancelled,
    AuthResponse,
    BdatChunkEnd,
    BdatStarted,
    CommandError,
    ConnectionClosed,
    DataChunk,
    DataCommand,
    DataComplete,
    Event,
    Expand,
    Hello,
    Help,
    MailFrom,
    Noop,
    Quit,
    RcptTo,
    Reset,
    Sentinel,
    StartTLS,
    Verify,
)
from pigeon.protocol.smtp._params import (
    Extensions,
    ParamError,
    parse_mail_params,
    parse_rcpt_params,
)
from pigeon.protocol.smtp._state import COMMAND_SEQUENCE, State, next_state, sequence_error
from pigeon.protocol.smtp.errors import LocalProtocolError

__all__ = ["ServerConfig", "ServerConnection"]

_AUTH_LINE_MAX = 12288  # RFC 4954 §4
_PARAM_ALLOWANCE = 512  # extra octets for MAIL/RCPT parameters
_BDAT_RE = re.compile(r"^([0-9]{1,20})(?: +(LAST))? *$", re.IGNORECASE)
_HELO_ARG = re.compile(r"^\S+$")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_MECHANISM = re.compile(r"^[A-Z0-9_-]{1,20}$")


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Settings of a :class:`ServerConnection`.

    Attributes:
        hostname: our name, used in the EHLO reply.
        max_message_size: octets (RFC 1870 SIZE); 0 = no limit (not advised).
        max_recipients: recipients per transaction (RFC 5321 §4.5.3.1.8: at least 100).
        max_command_length: octets per command line, CRLF included (512).
        max_line_length: octets per text line, CRLF included (1000); 0 = unchecked.
        max_hops: Received fields beyond which a message is a loop (RFC 5321 §6.3).
        pipelining, eightbitmime, smtputf8, dsn, chunking: advertise and accept them.
    """

    hostname: str = "localhost"
    max_message_size: int = 35 * 1024 * 1024
    max_recipients: int = 100
    max_command_length: int = 512
    max_line_length: int = 1000
    max_hops: int = 100
    pipelining: bool = True
    eightbitmime: bool = True
    smtputf8: bool = True
    dsn: bool = True
    chunking: bool = True


_VERBS = frozenset(COMMAND_SEQUENCE)


class _Nothing:
    """Internal marker: input was consumed but produced no event; keep parsing."""


_NOTHING = _Nothing()
_Step = Event | _Nothing | None  # what the internal readers return


class ServerConnection:
    """One SMTP server session, without I/O.

    Args:
        config: limits and extensions.

    Attributes (read by the application):
        state: the current :class:`State`.
        esmtp: the client greeted with EHLO.
        client_name: the HELO/EHLO argument.
        smtputf8: the open transaction declared SMTPUTF8.
        recipient_count: recipients accepted in the open transaction.
        authenticated: AUTH has succeeded.
        tls: the session is encrypted (set by :meth:`tls_started` or by the application
            for implicit TLS).

    Attributes (set by the application at any time):
        offer_starttls: advertise and accept STARTTLS.
        auth_mechanisms: SASL mechanisms to advertise and accept (empty: no AUTH).
    """

    def __init__(self, config: ServerConfig | None = None) -> None:
        self.config = config or ServerConfig()
        self.state = State.GREETING
        self.esmtp = False
        self.client_name = ""
        self.smtputf8 = False
        self.recipient_count = 0
        self.authenticated = False
        self.tls = False
        self.offer_starttls = False
        self.auth_mechanisms: tuple[str, ...] = ()
        self._buf = bytearray()
        self._eof = False
        self._eof_reported = False
        self._discarding = False  # inside an over-long command line
        self._events: deque[Event] = deque()
        self._owed: str | None = "GREETING"  # verb whose reply is owed
        self._owed_error = False  # the owed reply answers a CommandError
        self._auth_return = State.IDLE
        # DATA/BDAT receiving
        self._decoder: DotDecoder | None = None
        self._inspector: ContentInspector | None = None
        self._too_big = False
        self._bdat_left = 0
        self._bdat_last = False
        self._bdat_discard = False  # consuming a chunk that will be refused
        self._bdat_refusal: Reply | None = None
        self._bdat_total = 0

    # ------------------------------------------------------------------ input

    def receive_data(self, data: bytes) -> None:
        """Feed bytes received from the peer; ``b""`` means the peer closed its side.

        Raises:
            LocalProtocolError: data after end of file.
        """
        if self._eof:
            if data:
                raise LocalProtocolError("receive_data after end of file")
            return
        if not data:
            self._eof = True
            return
        self._buf += data

    def discard_input(self) -> None:
        """Drop buffered, unparsed input (used after STARTTLS, RFC 3207 §4.2)."""
        self._buf.clear()
        self._discarding = False

    def next_event(self) -> Event | Sentinel:
        """Return the next event, ``NEED_DATA`` or ``PAUSED`` (see the module docstring)."""
        while True:
            if self._events:
                return self._events.popleft()
            if self.state is State.CLOSED or self.state is State.TLS or self._owed is not None:
                return PAUSED
            if self.state is State.DATA:
                ev = self._next_data_event()
            elif self._bdat_left:
                ev = self._next_bdat_event()
            else:
                ev = self._next_command_event()
            if isinstance(ev, _Nothing):
                continue
            if ev is not None:
                return ev
            if self._eof:
                if not self._eof_reported:
                    self._eof_reported = True
                    return ConnectionClosed()
                return PAUSED
            return NEED_DATA

    # ------------------------------------------------------------------ output

    def send(self, reply: Reply) -> bytes:
        """Answer the owed event with ``reply`` and return the bytes to write.

        A ``421`` may be sent at any time (RFC 5321 §3.8: service shutting down, timeout);
        it closes the session.

        Raises:
            LocalProtocolError: no reply is owed (and the reply is not a 421).
        """
        if self._owed is None:
            if reply.code != 421:
                raise LocalProtocolError(f"no reply is owed; cannot send {reply.code}")
            self.state = State.CLOSED
            return reply.to_bytes(enhanced_codes=True)
        verb = self._owed
        if self._owed_error and reply.code < 400:
            raise LocalProtocolError(f"a refused command cannot be answered {reply.code}")
        self._owed = None
        self._owed_error = False
        plain = verb in ("GREETING", "EHLO", "HELO")
        old = self.state
        if verb == "AUTH" and old is State.AUTH and reply.code // 100 != 3:
            self.state = self._auth_return if reply.code != 421 else State.CLOSED
        else:
            self.state = next_state(old, verb, reply)
        self._after(verb, old, reply)
        return reply.to_bytes(enhanced_codes=not plain)

    def ehlo_reply(self, greeting: str) -> Reply:
        """Build the 250 reply to EHLO listing the extensions this session offers.

        Args:
            greeting: the first line's text after our hostname, e.g. ``"Hello client"``.

        Returns:
            A multi-line 250 reply (RFC 5321 §4.1.1.1).
        """
        c = self.config
        lines = [f"{c.hostname} {greeting}".rstrip()]
        if c.pipelining:
            lines.append("PIPELINING")
        lines.append(f"SIZE {c.max_message_size}" if c.max_message_size else "SIZE")
        if c.eightbitmime:
            lines.append("8BITMIME")
        if c.smtputf8:
            lines.append("SMTPUTF8")
        lines.append("ENHANCEDSTATUSCODES")
        if c.chunking:
            lines.append("CHUNKING")
        if c.dsn:
            lines.append("DSN")
        if self.offer_starttls and not self.tls:
            lines.append("STARTTLS")
        if self.auth_mechanisms and not self.authenticated:
            lines.append("AUTH " + " ".join(self.auth_mechanisms))
        lines.append("HELP")
        return Reply(250, None, lines)

    def tls_started(self) -> None:
        """The TLS handshake after STARTTLS succeeded: forget everything (RFC 3207 §4.2).

        The session returns to the state right after the greeting; buffered plaintext that
        arrived after the STARTTLS line is discarded, never executed.

        Raises:
            LocalProtocolError: not waiting for a TLS handshake.
        """
        if self.state is not State.TLS:
            raise LocalProtocolError("tls_started() without an accepted STARTTLS")
        self.discard_input()
        self.state = State.READY
        self.tls = True
        self.esmtp = False
        self.client_name = ""
        self.authenticated = False
        self._clear_transaction()

    # ------------------------------------------------------------------ internals

    def _clear_transaction(self) -> None:
        self.smtputf8 = False
        self.recipient_count = 0
        self._decoder = None
        self._inspector = None
        self._too_big = False
        self._bdat_total = 0

    def _after(self, verb: str, old: State, reply: Reply) -> None:
        positive = reply.code // 100 == 2
        if (verb in ("HELO", "EHLO") and positive) or (verb == "RSET" and positive):
            self._clear_transaction()
        elif verb == "MAIL" and not positive:
            self.smtputf8 = False
        elif verb == "RCPT" and positive:
            self.recipient_count += 1
        elif verb == "DATA" and reply.code == 354:
            self._decoder = DotDecoder()
            self._inspector = ContentInspector(max_line_length=self.config.max_line_length)
            self._too_big = False
        elif verb == "END" or (verb == "CHUNK" and not positive):
            self._clear_transaction()
        elif verb == "AUTH" and reply.code == 235:
            self.authenticated = True
        if self.state is State.CLOSED:
            self._events.clear()

    def _owe(self, verb: str, event: Event) -> Event:
        self._owed = verb
        return event

    def _error(self, reply: Reply, verb: str = "ERROR") -> Event:
        self._owed_error = True
        return self._owe(verb, CommandError(reply))

    def _extensions(self) -> Extensions:
        c = self.config
        return Extensions(
            esmtp=self.esmtp,
            max_size=c.max_message_size,
            eightbitmime=c.eightbitmime,
            smtputf8=c.smtputf8,
            dsn=c.dsn,
            auth=bool(self.auth_mechanisms),
        )

    # -- command lines

    def _line_limit(self, head: bytes) -> int:
        if self.state is State.AUTH:
            return _AUTH_LINE_MAX
        verb = head[:5].upper()
        if verb.startswith(b"AUTH"):
            return _AUTH_LINE_MAX
        if verb.startswith((b"MAIL", b"RCPT")):
            return self.config.max_command_length + _PARAM_ALLOWANCE
        return self.config.max_command_length

    def _take_line(self) -> bytes | Event | None:
        """Return one command line without CRLF, None for more data, or an error event."""
        buf = self._buf
        nl = buf.find(b"\n")
        if self._discarding:
            if nl < 0:
                buf.clear()
                return None
            del buf[: nl + 1]
            self._discarding = False
            return self._error(Reply(500, "5.5.6", "Error: line too long"))
        limit = self._line_limit(bytes(buf[:5]))
        if nl < 0:
            if len(buf) > limit:
                buf.clear()
                self._discarding = True
            return None
        line = bytes(buf[: nl + 1])
        del buf[: nl + 1]
        if len(line) > limit:
            return self._error(Reply(500, "5.5.6", "Error: line too long"))
        if not line.endswith(b"\r\n"):
            return self._error(
                Reply(500, "5.5.2", "Error: bare <LF> received; commands end with <CR><LF>")
            )
        line = line[:-2]
        if b"\r" in line:
            return self._error(Reply(501, "5.5.2", "Error: bare <CR> received in command"))
        return line

    def _next_command_event(self) -> _Step:
        taken = self._take_line()
        if taken is None:
            return None
        if not isinstance(taken, bytes):
            return taken
        try:
            text = taken.decode("utf-8")
        except UnicodeDecodeError:
            return self._error(Reply(500, "5.5.2", "Error: command is not valid UTF-8"))
        if self.state is State.AUTH:
            return self._auth_response(text)
        if _CONTROL.search(text):
            return self._error(Reply(501, "5.5.2", "Error: control characters in command"))
        verb, _, arg = text.partition(" ")
        verb = verb.upper()
        if verb not in _VERBS:
            if not verb:
                return self._error(Reply(500, "5.5.2", "Error: empty command"))
            return self._error(Reply(500, "5.5.2", "Error: command not recognized"))
        if self.state not in COMMAND_SEQUENCE[verb]:
            if verb == "BDAT":
                return self._bdat_out_of_sequence(arg)
            return self._error(sequence_error(self.state, verb))
        handler = getattr(self, f"_cmd_{verb.lower()}")
        event: Event | _Nothing = handler(arg)
        return event

    # -- individual commands

    def _cmd_helo(self, arg: str) -> Event:
        return self._hello(arg, esmtp=False)

    def _cmd_ehlo(self, arg: str) -> Event:
        return self._hello(arg, esmtp=True)

    def _hello(self, arg: str, *, esmtp: bool) -> Event:
        verb = "EHLO" if esmtp else "HELO"
        arg = arg.strip(" ")
        if not arg or not _HELO_ARG.match(arg) or len(arg) > 255:
            return self._error(Reply(501, "5.5.4", f"Syntax: {verb} hostname"))
        self.esmtp = esmtp
        self.client_name = arg
        return self._owe(verb, Hello(esmtp=esmtp, domain=arg))

    def _cmd_mail(self, arg: str) -> Event:
        if arg[:5].upper() != "FROM:":
            return self._error(Reply(501, "5.5.4", "Syntax: MAIL FROM:<address>"))
        try:
            path, params_text = split_path(arg[5:])
            params = parse_mail_params(params_text, self._extensions())
            reverse_path = parse_reverse_path(path, smtputf8=params.smtputf8)
        except (AddressError, ParamError) as exc:
            return self._error(exc.reply, "MAIL")
        self.smtputf8 = params.smtputf8
        return self._owe("MAIL", MailFrom(reverse_path=reverse_path, params=params))

    def _cmd_rcpt(self, arg: str) -> Event:
        if arg[:3].upper() != "TO:":
            return self._error(Reply(501, "5.5.4", "Syntax: RCPT TO:<address>"))
        if self.recipient_count >= self.config.max_recipients:
            return self._error(Reply(452, "4.5.3", "Error: too many recipients"))
        try:
            path, params_text = split_path(arg[3:])
            params = parse_rcpt_params(params_text, self._extensions())
            forward_path = parse_forward_path(path, smtputf8=self.smtputf8)
        except (AddressError, ParamError) as exc:
            return self._error(exc.reply, "RCPT")
        return self._owe("RCPT", RcptTo(forward_path=forward_path, params=params))

    def _cmd_data(self, arg: str) -> Event:
        if arg.strip(" "):
            return self._error(Reply(501, "5.5.4", "Syntax: DATA (no arguments)"))
        return self._owe("DATA", DataCommand())

    def _cmd_bdat(self, arg: str) -> Event | _Nothing:
        if not self.config.chunking:
            return self._error(Reply(502, "5.5.1", "Error: BDAT not implemented"))
        m = _BDAT_RE.match(arg.strip(" "))
        if m is None:
            return self._error(Reply(501, "5.5.4", "Syntax: BDAT chunk-size [LAST]"))
        size = int(m.group(1))
        last = m.group(2) is not None
        limit = self.config.max_message_size
        if limit and size > limit:
            # We will not read that many octets, so the session cannot stay in sync: refuse
            # and close.
            self.state = State.CLOSED
            return self._error(
                Reply(552, "5.3.4", "Message size exceeds fixed maximum message size")
            )
        first = self.state is State.RCPT
        if first:
            self._inspector = ContentInspector(max_line_length=0)
            self._too_big = False
            self._bdat_total = 0
        self.state = State.BDAT
        self._bdat_left = size
        self._bdat_last = last
        self._bdat_discard = False
        self._bdat_refusal = None
        if size == 0:
            return self._finish_chunk(BdatStarted(size=0, last=last, first=first))
        return BdatStarted(size=size, last=last, first=first)

    def _bdat_out_of_sequence(self, arg: str) -> Event | _Nothing:
        m = _BDAT_RE.match(arg.strip(" "))
        if m is None:
            return self._error(Reply(501, "5.5.4", "Syntax: BDAT chunk-size [LAST]"))
        size = int(m.group(1))
        limit = self.config.max_message_size
        if limit and size > limit:
            self.state = State.CLOSED
            return self._error(
                Reply(552, "5.3.4", "Message size exceeds fixed maximum message size")
            )
        # RFC 3030 §2: the chunk follows the command whatever we answer; read past it.
        self._bdat_left = size
        self._bdat_discard = True
        self._bdat_refusal = sequence_error(self.state, "BDAT")
        if size == 0:
            return self._error(self._bdat_refusal)
        ev = self._next_bdat_event()
        return ev if ev is not None else _NOTHING

    def _cmd_rset(self, arg: str) -> Event:
        if arg.strip(" "):
            return self._error(Reply(501, "5.5.4", "Syntax: RSET (no arguments)"))
        return self._owe("RSET", Reset())

    def _cmd_noop(self, arg: str) -> Event:
        return self._owe("NOOP", Noop())

    def _cmd_quit(self, arg: str) -> Event:
        if arg.strip(" "):
            return self._error(Reply(501, "5.5.4", "Syntax: QUIT (no arguments)"))
        return self._owe("QUIT", Quit())

    def _cmd_vrfy(self, arg: str) -> Event:
        if not arg.strip(" "):
            return self._error(Reply(501, "5.5.4", "Syntax: VRFY address"))
        return self._owe("VRFY", Verify(argument=arg.strip(" ")))

    def _cmd_expn(self, arg: str) -> Event:
        if not arg.strip(" "):
            return self._error(Reply(501, "5.5.4", "Syntax: EXPN list"))
        return self._owe("EXPN", Expand(argument=arg.strip(" ")))

    def _cmd_help(self, arg: str) -> Event:
        return self._owe("HELP", Help(topic=arg.strip(" ")))

    def _cmd_starttls(self, arg: str) -> Event:
        if not self.offer_starttls or self.tls:
            return self._error(Reply(502, "5.5.1", "Error: STARTTLS not available"))
        if arg.strip(" "):
            return self._error(Reply(501, "5.5.4", "Syntax: STARTTLS (no arguments)"))
        return self._owe("STARTTLS", StartTLS())

    def _cmd_auth(self, arg: str) -> Event:
        if not self.auth_mechanisms:
            return self._error(Reply(502, "5.5.1", "Error: authentication not enabled"))
        if self.authenticated:
            return self._error(Reply(503, "5.5.1", "Error: already authenticated"))
        parts = arg.split(" ")
        if not parts[0] or len(parts) > 2 or not _MECHANISM.match(parts[0].upper()):
            return self._error(Reply(501, "5.5.4", "Syntax: AUTH mechanism [initial-response]"))
        mechanism = parts[0].upper()
        if mechanism not in self.auth_mechanisms:
            return self._error(Reply(504, "5.5.4", "Error: unrecognized authentication type"))
        initial: bytes | None = None
        if len(parts) == 2:
            decoded = _b64(parts[1], allow_empty=True)
            if decoded is None:
                return self._error(Reply(501, "5.5.2", "Error: invalid base64 data"))
            initial = decoded
        self._auth_return = self.state
        return self._owe("AUTH", Auth(mechanism=mechanism, initial_response=initial))

    def _auth_response(self, text: str) -> Event:
        if text == "*":
            return self._owe("AUTH", AuthCancelled())
        decoded = _b64(text, allow_empty=False)
        if decoded is None:
            # RFC 4954 §4: a response that cannot be decoded ends the exchange with 501.
            self._owed_error = True
            refusal = Reply(501, "5.5.2", "Error: invalid base64 data")
            return self._owe("AUTH", CommandError(refusal))
        return self._owe("AUTH", AuthResponse(data=decoded))

    # -- DATA content

    def _next_data_event(self) -> _Step:
        assert self._decoder is not None and self._inspector is not None
        if not self._buf:
            return None
        content, rest = self._decoder.feed(self._buf)
        self._buf.clear()
        insp = self._inspector
        if content:
            insp.feed(content)
            limit = self.config.max_message_size
            if limit and insp.size > limit:
                self._too_big = True
        if rest is not None:
            self._buf += rest
            insp.finish()
            complete = self._owe(
                "END",
                DataComplete(
                    size=insp.size,
                    received_count=insp.received_count,
                    reply_hint=self._content_refusal(),
                ),
            )
            if content and not self._too_big:
                self._events.append(complete)
                return DataChunk(content)
            return complete
        if content and not self._too_big:
            return DataChunk(content)
        return _NOTHING if content else None

    def _content_refusal(self) -> Reply | None:
        insp = self._inspector
        assert insp is not None
        if self._too_big:
            return Reply(552, "5.3.4", "Message size exceeds fixed maximum message size")
        if insp.bare_newline:
            return Reply(
                550,
                "5.6.0",
                "Message refused: bare <CR> or <LF> in message data (RFC 5321 §2.3.8)",
            )
        if insp.line_too_long:
            return Reply(500, "5.5.6", "Message refused: line too long (RFC 5321 §4.5.3.1.6)")
        if insp.received_count > self.config.max_hops:
            return Reply(554, "5.4.6", "Too many hops: mail loop detected (RFC 5321 §6.3)")
        return None

    # -- BDAT content

    def _next_bdat_event(self) -> _Step:
        if not self._buf:
            return None
        take = min(self._bdat_left, len(self._buf))
        if take == len(self._buf):
            chunk = bytes(self._buf)
            self._buf.clear()
        else:
            chunk = bytes(self._buf[:take])
            del self._buf[:take]
        self._bdat_left -= take
        ev: Event | None = None
        if not self._bdat_discard:
            insp = self._inspector
            assert insp is not None
            insp.feed(chunk)
            limit = self.config.max_message_size
            if limit and insp.size > limit:
                self._too_big = True
            if not self._too_big:
                ev = DataChunk(chunk)
        if self._bdat_left == 0:
            end = self._finish_chunk(None)
            if ev is None:
                return end
            self._events.append(end)
        return ev if ev is not None else _NOTHING

    def _finish_chunk(self, started: BdatStarted | None) -> Event:
        if self._bdat_discard:
            self._bdat_discard = False
            refusal = self._bdat_refusal or Reply(503, "5.5.1", "Error: bad sequence of commands")
            self._bdat_refusal = None
            end: Event = self._error(refusal)
        else:
            insp = self._inspector
            assert insp is not None
            self._bdat_total = insp.size
            if self._bdat_last:
                insp.finish()
                end = self._owe(
                    "END",
                    DataComplete(
                        size=insp.size,
                        received_count=insp.received_count,
                        reply_hint=self._content_refusal(),
                    ),
                )
            else:
                hint = None
                if self._too_big:
                    hint = Reply(552, "5.3.4", "Message size exceeds fixed maximum message size")
                end = self._owe(
                    "CHUNK", BdatChunkEnd(size=0, total=insp.size, reply_hint=hint)
                )
        if started is not None:
            self._events.append(end)
            return started
        return end


def _b64(text: str, *, allow_empty: bool) -> bytes | None:
    if text == "=":
        return b"" if allow_empty else None
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        return None

