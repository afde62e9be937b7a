"""The server side of a POP3 session as a sans-I/O state machine (RFC 1939 and extensions).

Theory of operation
-------------------
Shaped like :mod:`pigeon.protocol.smtp.server` (and h11): the caller feeds received bytes
with :meth:`ServerConnection.receive_data`, takes events with
:meth:`ServerConnection.next_event`, and answers each event with
:meth:`ServerConnection.send`, which returns the bytes to write. The machine never touches
a socket, a file or a clock.

Commands are read one line at a time. A line is checked against the state table in
:mod:`._state`, parsed, and either becomes a typed event or, when the protocol alone can
judge it (unknown keyword, wrong state, bad argument, over-long line), a
:class:`~pigeon.protocol.pop3._events.CommandError` carrying the exact ``-ERR``. Every
complete command line gets exactly one response; nothing the client sends raises.

While an answer is owed, :meth:`ServerConnection.next_event` returns ``PAUSED`` and no
further input is parsed, so pipelined commands (RFC 2449 §6.6 PIPELINING) are answered
in order. RETR and TOP are answered with a ``body`` response; the message then goes out
through :meth:`ServerConnection.send_body` (byte-stuffed, block by block, so a message is
never held whole) and :meth:`ServerConnection.end_body`.

Limits: a command line is at most 255 octets with its CRLF (RFC 2449 §4), a numeric or
keyword argument at most 40 characters (RFC 1939 §3). USER and PASS take the rest of the
line (RFC 2449 §4 raised the line limit for them; mail addresses and pass phrases are
often longer than 40), and a SASL response line may be 12288 octets (the RFC 4954 §4
figure Pigeon uses for SMTP too). A longer line is discarded as it arrives and answered
``-ERR`` once its end is seen. Only CRLF ends a command line.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections import deque
from dataclasses import dataclass

from pigeon.protocol.pop3._data import DotStuffer
from pigeon.protocol.pop3._events import (
    NEED_DATA,
    PAUSED,
    Auth,
    AuthCancelled,
    AuthResponse,
    Capa,
    CommandError,
    ConnectionClosed,
    Dele,
    Event,
    List,
    Noop,
    Pass,
    Quit,
    Retr,
    Rset,
    Sentinel,
    Stat,
    Stls,
    Top,
    Uidl,
    User,
)
from pigeon.protocol.pop3._response import Challenge, Response
from pigeon.protocol.pop3._state import COMMAND_STATES, State, next_state, sequence_error
from pigeon.protocol.pop3.errors import LocalProtocolError

__all__ = ["ServerConfig", "ServerConnection"]

MAX_COMMAND_LINE = 255  # octets with CRLF, RFC 2449 §4
MAX_ARGUMENT = 40  # characters, RFC 1939 §3
MAX_SASL_LINE = 12288  # octets with CRLF, as for SMTP AUTH (RFC 4954 §4)

_NUMBER = re.compile(r"^[0-9]{1,40}$")
_MECHANISM = re.compile(r"^[A-Z0-9_-]{1,20}$")  # RFC 4422 §3.1: SASL mechanism names
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Settings of a :class:`ServerConnection`.

    Attributes:
        implementation: the CAPA ``IMPLEMENTATION`` text (RFC 2449 §6.9).
        max_command_line: octets per command line, CRLF included (RFC 2449 §4: 255).
    """

    implementation: str = "Pigeon"
    max_command_line: int = MAX_COMMAND_LINE


class _Nothing:
    """Internal marker: input was consumed but produced no event; keep parsing."""


_NOTHING = _Nothing()

# What a positive answer must look like, by the event that asked for it.
_SINGLE, _LINES, _BODY = "single", "lines", "body"


class ServerConnection:
    """One POP3 server session, without I/O.

    Args:
        config: limits and the implementation name.

    Attributes (read by the application):
        state: the current :class:`~pigeon.protocol.pop3._state.State`.
        tls: the session is encrypted (set by :meth:`tls_started`, or by the application
            for implicit TLS, RFC 8314).
        user: the name accepted by USER, while PASS is awaited (else None).

    Attributes (set by the application at any time):
        offer_stls: advertise and accept STLS (RFC 2595).
        sasl_mechanisms: SASL mechanisms to advertise and accept (RFC 5034).
        allow_plaintext_login: accept USER/PASS and AUTH without TLS (RFC 2595 §4 lets a
            server refuse them; Pigeon does unless configured otherwise).
    """

    def __init__(self, config: ServerConfig | None = None) -> None:
        self.config = config or ServerConfig()
        self.state = State.GREETING
        self.tls = False
        self.user: str | None = None
        self.offer_stls = False
        self.sasl_mechanisms: tuple[str, ...] = ()
        self.allow_plaintext_login = False
        self._buf = bytearray()
        self._eof = False
        self._eof_reported = False
        self._discarding = False  # inside an over-long line
        self._events: deque[Event] = deque()
        self._owed: str | None = "GREETING"  # keyword whose answer is owed
        self._expect = _SINGLE  # shape of a positive answer to the owed keyword
        self._owed_error = False  # the owed answer is to a CommandError
        self._stuffer: DotStuffer | None = None  # a body is being sent
        self._pending_user: str | None = None  # the USER name awaiting its answer

    # ------------------------------------------------------------------ properties

    @property
    def login_allowed(self) -> bool:
        """USER/PASS and AUTH are accepted now (over TLS, or plaintext explicitly allowed)."""
        return self.tls or self.allow_plaintext_login

    @property
    def sending_body(self) -> bool:
        """A RETR/TOP body is open: call :meth:`send_body` and :meth:`end_body`."""
        return self._stuffer is not None

    # ------------------------------------------------------------------ input

    def receive_data(self, data: bytes) -> None:
        """Feed bytes received from the client; ``b""`` means the client closed its side.

        Args:
            data: the octets read.

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

    def next_event(self) -> Event | Sentinel:
        """Return the next event, ``NEED_DATA`` or ``PAUSED`` (see the module docstring)."""
        while True:
            if self._events:
                return self._events.popleft()
            if (
                self.state in (State.CLOSED, State.TLS)
                or self._owed is not None
                or self._stuffer is not None
            ):
                return PAUSED
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

    def send(self, response: Response | Challenge) -> bytes:
        """Answer the owed event and return the bytes to write.

        Args:
            response: the answer. A :class:`Challenge` only answers :class:`Auth` and
                :class:`AuthResponse`. A positive answer to CAPA, LIST and UIDL without
                argument has ``lines``; one to RETR and TOP has ``body`` (then call
                :meth:`send_body` and :meth:`end_body`).

        Returns:
            The octets to write.

        Raises:
            LocalProtocolError: nothing is owed, or the answer's shape does not fit the
                command.
        """
        keyword = self._owed
        if keyword is None:
            raise LocalProtocolError("no response is owed")
        if isinstance(response, Challenge):
            if keyword != "AUTH" or self._owed_error:
                raise LocalProtocolError("a SASL challenge only answers AUTH")
            kind = "c"
        else:
            kind = "+" if response.ok else "-"
            if self._owed_error and response.ok:
                raise LocalProtocolError("a refused command cannot be answered +OK")
            if response.ok:
                shape = _BODY if response.body else _LINES if response.lines is not None \
                    else _SINGLE
                if shape != self._expect:
                    raise LocalProtocolError(
                        f"{keyword} needs a {self._expect} response, not {shape}"
                    )
        self._owed = None
        self._owed_error = False
        old = self.state
        self.state = next_state(old, keyword, kind)
        if isinstance(response, Response):
            if keyword == "USER":
                self.user = self._pending_user if response.ok else None
            if response.body:
                self._stuffer = DotStuffer()
            if self.state is State.CLOSED:
                self._events.clear()
        return response.to_bytes()

    def send_body(self, data: bytes) -> bytes:
        """Byte-stuff the next block of a RETR/TOP body.

        Args:
            data: message octets (CRLF line endings), in order; any block size.

        Returns:
            The octets to write.

        Raises:
            LocalProtocolError: no body is open.
        """
        if self._stuffer is None:
            raise LocalProtocolError("no body is open")
        return self._stuffer.feed(data)

    def end_body(self) -> bytes:
        """End the body: the multi-line terminator (RFC 1939 §3).

        Returns:
            ``.`` CRLF, preceded by CRLF when the body did not end with one.

        Raises:
            LocalProtocolError: no body is open.
        """
        if self._stuffer is None:
            raise LocalProtocolError("no body is open")
        tail = self._stuffer.end()
        self._stuffer = None
        return tail

    def close(self, response: Response | None = None) -> bytes:
        """End the session now (autologout, shutdown, internal error), with no UPDATE.

        RFC 1939 §3: an autologout closes without a response and without removing
        anything; a shutdown may say ``-ERR [SYS/TEMP]`` first.

        Args:
            response: an unsolicited ``-ERR`` to send first, or None.

        Returns:
            The octets to write (empty without a response).
        """
        self.state = State.CLOSED
        self._owed = None
        self._stuffer = None
        self._events.clear()
        return b"" if response is None else response.status_line()

    def greeting(self, text: str) -> Response:
        """The greeting (RFC 1939 §4): ``+OK`` and ``text``; pass it to :meth:`send`."""
        return Response(True, text)

    def capa_response(self) -> Response:
        """The answer to CAPA listing what this session offers now (RFC 2449 §5, §6).

        USER and SASL are listed only when a login would be accepted (after TLS unless
        plaintext is allowed; RFC 2595 §6), STLS only before TLS.

        Returns:
            A multi-line ``+OK``.
        """
        lines = ["TOP", "UIDL"]
        if self.login_allowed:
            lines.append("USER")
            if self.sasl_mechanisms:
                lines.append("SASL " + " ".join(self.sasl_mechanisms))
        lines += ["RESP-CODES", "AUTH-RESP-CODE", "PIPELINING"]
        if self.offer_stls and not self.tls:
            lines.append("STLS")
        if self.config.implementation:
            lines.append(f"IMPLEMENTATION {self.config.implementation}")
        return Response(True, "Capability list follows", lines=tuple(lines))

    def tls_started(self) -> None:
        """The TLS handshake after STLS succeeded (RFC 2595 §4).

        Buffered plaintext that arrived after the STLS line is discarded, never executed;
        the session is back in AUTHORIZATION, encrypted.

        Raises:
            LocalProtocolError: not waiting for a TLS handshake.
        """
        if self.state is not State.TLS:
            raise LocalProtocolError("tls_started() without an accepted STLS")
        self._buf.clear()
        self._discarding = False
        self.state = State.AUTHORIZATION
        self.tls = True
        self.user = None

    # ------------------------------------------------------------------ internals

    def _owe(self, keyword: str, event: Event, expect: str = _SINGLE) -> Event:
        self._owed = keyword
        self._expect = expect
        return event

    def _error(self, text: str, code: str | None = None) -> Event:
        # Inside a SASL exchange any error answers (and ends) the exchange.
        keyword = "AUTH" if self.state is State.SASL else "ERROR"
        self._owed_error = True
        return self._owe(keyword, CommandError(Response(False, text, code=code)))

    def _line_limit(self) -> int:
        if self.state is State.SASL:
            return MAX_SASL_LINE
        return self.config.max_command_line

    def _take_line(self) -> bytes | Event | None:
        """Return one line without CRLF, None for more data, or an error event."""
        buf = self._buf
        limit = self._line_limit()
        nl = buf.find(b"\n")
        if self._discarding:
            if nl < 0:
                buf.clear()
                return None
            del buf[: nl + 1]
            self._discarding = False
            return self._error("line too long")
        if nl < 0:
            if len(buf) > limit:
                buf.clear()
                self._discarding = True
            return None
        line = bytes(buf[: nl + 1])
        del buf[: nl + 1]
        if len(line) > limit:
            return self._error("line too long")
        if not line.endswith(b"\r\n"):
            return self._error("commands end with CRLF")
        return line[:-2]

    def _next_command_event(self) -> Event | _Nothing | None:
        if self.state is State.UPDATE:
            return None
        taken = self._take_line()
        if taken is None:
            return None
        # RFC 1939 §7: PASS only right after a successful USER; any other line forgets it.
        user, self.user = self.user, None
        if not isinstance(taken, bytes):
            return taken
        try:
            text = taken.decode("utf-8")
        except UnicodeDecodeError:
            return self._error("command is not valid UTF-8")
        if self.state is State.SASL:
            return self._sasl_line(text)
        if _CONTROL.search(text):
            return self._error("control characters in command")
        keyword, _, rest = text.partition(" ")
        keyword = keyword.upper()
        states = COMMAND_STATES.get(keyword)
        if states is None:
            return self._error("empty command" if not keyword else "unknown command")
        if self.state not in states:
            self._owed_error = True
            return self._owe("ERROR", CommandError(sequence_error(self.state, keyword)))
        if keyword == "USER":
            return self._cmd_user(rest)
        if keyword == "PASS":
            return self._cmd_pass(rest, user)
        if keyword == "AUTH":
            return self._cmd_auth(rest)
        args = [a for a in rest.split(" ") if a]
        if any(len(a) > MAX_ARGUMENT for a in args):
            return self._error(f"argument longer than {MAX_ARGUMENT} characters")
        handler = _SIMPLE[keyword]
        return handler(self, keyword, args)

    # -- AUTHORIZATION

    def _refuse_plaintext(self) -> Event | None:
        if self.login_allowed:
            return None
        hint = "; use STLS first" if self.offer_stls else ""
        return self._error(f"plaintext authentication not allowed without TLS{hint}",
                           code="AUTH")

    def _cmd_user(self, rest: str) -> Event:
        refusal = self._refuse_plaintext()
        if refusal is not None:
            return refusal
        name = rest.strip(" ")
        if not name or " " in name:
            return self._error("syntax: USER name")
        self._pending_user = name
        return self._owe("USER", User(name=name))

    def _cmd_pass(self, rest: str, user: str | None) -> Event:
        refusal = self._refuse_plaintext()
        if refusal is not None:
            return refusal
        if user is None:
            return self._error("PASS must follow a successful USER")
        # RFC 1939 §7: the password is the rest of the line; it may contain spaces.
        if not rest:
            return self._error("syntax: PASS string")
        return self._owe("PASS", Pass(user=user, password=rest))

    def _cmd_auth(self, rest: str) -> Event:
        refusal = self._refuse_plaintext()
        if refusal is not None:
            return refusal
        parts = [p for p in rest.split(" ") if p]
        if not parts or len(parts) > 2:
            return self._error("syntax: AUTH mechanism [initial-response]")
        mechanism = parts[0].upper()
        if not _MECHANISM.match(mechanism) or mechanism not in self.sasl_mechanisms:
            return self._error("unsupported authentication mechanism")
        initial: bytes | None = None
        if len(parts) == 2:
            decoded = _b64(parts[1], initial=True)
            if decoded is None:
                return self._error("invalid base64 in initial response")
            initial = decoded
        return self._owe("AUTH", Auth(mechanism=mechanism, initial_response=initial))

    def _sasl_line(self, text: str) -> Event:
        if text == "*":
            return self._owe("AUTH", AuthCancelled())
        decoded = _b64(text, initial=False)
        if decoded is None:
            return self._error("invalid base64 in authentication response")
        return self._owe("AUTH", AuthResponse(data=decoded))

    def _cmd_apop(self, keyword: str, args: list[str]) -> Event:
        return self._error("APOP not supported; use USER/PASS or AUTH")

    def _cmd_stls(self, keyword: str, args: list[str]) -> Event:
        if not self.offer_stls or self.tls:
            return self._error("STLS not available" + (" (already in TLS)" if self.tls else ""))
        if args:
            return self._error("syntax: STLS")
        return self._owe("STLS", Stls())

    def _cmd_capa(self, keyword: str, args: list[str]) -> Event:
        if args:
            return self._error("syntax: CAPA")
        return self._owe("CAPA", Capa(), _LINES)

    def _cmd_quit(self, keyword: str, args: list[str]) -> Event:
        if args:
            return self._error("syntax: QUIT")
        update = self.state is State.TRANSACTION
        if update:
            self.state = State.UPDATE  # RFC 1939 §6
        return self._owe("QUIT", Quit(update=update))

    # -- TRANSACTION

    def _no_args(self, keyword: str, args: list[str]) -> Event:
        if args:
            return self._error(f"syntax: {keyword}")
        if keyword == "STAT":
            return self._owe(keyword, Stat())
        if keyword == "NOOP":
            return self._owe(keyword, Noop())
        return self._owe(keyword, Rset())

    def _optional_message(self, keyword: str, args: list[str]) -> Event:
        if len(args) > 1:
            return self._error(f"syntax: {keyword} [msg]")
        if not args:
            event: Event = List(None) if keyword == "LIST" else Uidl(None)
            return self._owe(keyword, event, _LINES)
        number = _number(args[0])
        if number is None:
            return self._error("invalid message number")
        event = List(number) if keyword == "LIST" else Uidl(number)
        return self._owe(keyword, event)

    def _one_message(self, keyword: str, args: list[str]) -> Event:
        if len(args) != 1:
            return self._error(f"syntax: {keyword} msg")
        number = _number(args[0])
        if number is None:
            return self._error("invalid message number")
        if keyword == "RETR":
            return self._owe(keyword, Retr(number), _BODY)
        return self._owe(keyword, Dele(number))

    def _cmd_top(self, keyword: str, args: list[str]) -> Event:
        if len(args) != 2:
            return self._error("syntax: TOP msg n")
        number = _number(args[0])
        if number is None:
            return self._error("invalid message number")
        lines = _number(args[1])
        if lines is None:
            return self._error("invalid number of lines")
        return self._owe("TOP", Top(number, lines), _BODY)


_SIMPLE = {
    "APOP": ServerConnection._cmd_apop,
    "STLS": ServerConnection._cmd_stls,
    "CAPA": ServerConnection._cmd_capa,
    "QUIT": ServerConnection._cmd_quit,
    "STAT": ServerConnection._no_args,
    "NOOP": ServerConnection._no_args,
    "RSET": ServerConnection._no_args,
    "LIST": ServerConnection._optional_message,
    "UIDL": ServerConnection._optional_message,
    "RETR": ServerConnection._one_message,
    "DELE": ServerConnection._one_message,
    "TOP": ServerConnection._cmd_top,
}


def _number(text: str) -> int | None:
    """A decimal argument (RFC 1939 §3: at most 40 characters), or None."""
    if not _NUMBER.match(text):
        return None
    return int(text)


def _b64(text: str, *, initial: bool) -> bytes | None:
    # RFC 5034 §4: "=" is an empty initial response; an empty response line is empty.
    if initial and text == "=":
        return b""
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        return None
