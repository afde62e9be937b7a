"""The client side of an SMTP session as a sans-I/O state machine (RFC 5321 and extensions).

Theory of operation
-------------------
Shaped like h11 and like :class:`~pigeon.protocol.smtp.server.ServerConnection`: the caller
turns a command value into bytes with :meth:`ClientConnection.send`, writes them, feeds what
the server answers to :meth:`ClientConnection.receive_data` and takes events from
:meth:`ClientConnection.next_event`. The machine never touches a socket, a file or a clock.

Every command that is answered is remembered in order; each reply read is matched to the
oldest command still waiting (:class:`ReplyReceived` carries both). That is all PIPELINING
(RFC 2920) needs: the caller may send MAIL, every RCPT and DATA in one write, then read the
replies one by one. The first "command" is the server's greeting (:class:`Greeting`).

The machine follows the session, not the transaction (the server judges the transaction):

- ``GREETING`` until the 220 arrives, then ``READY`` (say EHLO or HELO);
- ``IDLE`` once EHLO or HELO got 250: :attr:`ClientConnection.extensions` holds what EHLO
  offered (RFC 5321 §4.1.1.1: keyword, then its parameters);
- ``DATA`` between a 354 reply and :meth:`ClientConnection.end_content`: only content
  may be sent, through :meth:`ClientConnection.send_content` (dot-stuffed, CRLF only);
- ``AUTH`` while a SASL exchange waits for the client's next line (RFC 4954 §4);
- ``TLS`` after STARTTLS got 220, until :meth:`ClientConnection.tls_started`, which
  forgets the extensions and any buffered input (RFC 3207 §4.2) and returns to ``READY``;
- ``CLOSED`` after QUIT's reply, any 421 (RFC 5321 §3.8), the end of the input, or a
  reply that cannot be parsed.

Using the machine wrongly (a command during DATA content, anything after QUIT) raises
:class:`~pigeon.protocol.smtp.errors.LocalProtocolError`; a server that does not speak SMTP
makes :meth:`ClientConnection.next_event` raise :class:`ReplySyntaxError`.
"""

from __future__ import annotations

import base64
import enum
import re
from collections import deque
from dataclasses import dataclass

from pigeon.mail.envelope import MailParams, RcptParams
from pigeon.mail.reply import Reply
from pigeon.protocol.smtp._client_data import ContentEncoder, normalize_line_endings
from pigeon.protocol.smtp._client_reply import ReplyReader, ReplySyntaxError, parse_reply_lines
from pigeon.protocol.smtp._params import encode_xtext
from pigeon.protocol.smtp.errors import LocalProtocolError

__all__ = [
    "NEED_DATA",
    "AuthContinue",
    "AuthStart",
    "Bdat",
    "ClientConnection",
    "ClientState",
    "Command",
    "ConnectionClosed",
    "ContentEncoder",
    "Data",
    "Ehlo",
    "EndOfData",
    "Greeting",
    "Helo",
    "Mail",
    "Noop",
    "Quit",
    "Rcpt",
    "ReplyReceived",
    "ReplySyntaxError",
    "Rset",
    "StartTls",
    "mail_parameters",
    "normalize_line_endings",
    "parse_ehlo",
    "parse_reply_lines",
    "rcpt_parameters",
]


class ClientState(enum.Enum):
    """Client-side session states (see the module docstring)."""

    GREETING = "greeting"
    READY = "ready"
    IDLE = "idle"
    DATA = "data"
    AUTH = "auth"
    TLS = "tls"
    CLOSED = "closed"


class _NeedData(enum.Enum):
    NEED_DATA = "NEED_DATA"


#: Returned by :meth:`ClientConnection.next_event` when more input is needed.
NEED_DATA = _NeedData.NEED_DATA

_FORBIDDEN = re.compile(r"[\x00-\x1f\x7f]")


def _check(text: str, what: str) -> str:
    if _FORBIDDEN.search(text):
        raise LocalProtocolError(f"control characters in {what}: {text[:60]!r}")
    return text


# ----------------------------------------------------------------------------- commands


@dataclass(frozen=True, slots=True)
class Greeting:
    """The server's greeting (RFC 5321 §4.3.1); never sent, only answered by the server."""

    verb = "GREETING"


@dataclass(frozen=True, slots=True)
class Ehlo:
    """EHLO domain (RFC 5321 §4.1.1.1)."""

    domain: str
    verb = "EHLO"

    def line(self) -> str:
        return f"EHLO {_check(self.domain, 'EHLO')}"


@dataclass(frozen=True, slots=True)
class Helo:
    """HELO domain (RFC 5321 §4.1.1.1), for servers that refuse EHLO."""

    domain: str
    verb = "HELO"

    def line(self) -> str:
        return f"HELO {_check(self.domain, 'HELO')}"


@dataclass(frozen=True, slots=True)
class Mail:
    """MAIL FROM:<reverse-path> [parameters] (RFC 5321 §4.1.1.2).

    Attributes:
        reverse_path: the mailbox as text, ``""`` for the null reverse-path.
        parameters: ``KEY=VALUE`` or ``KEY`` items, already encoded (see
            :func:`mail_parameters`).
    """

    reverse_path: str
    parameters: tuple[str, ...] = ()
    verb = "MAIL"

    def line(self) -> str:
        text = f"MAIL FROM:<{_check(self.reverse_path, 'reverse-path')}>"
        for p in self.parameters:
            text += " " + _check(p, "MAIL parameter")
        return text


@dataclass(frozen=True, slots=True)
class Rcpt:
    """RCPT TO:<forward-path> [parameters] (RFC 5321 §4.1.1.3)."""

    forward_path: str
    parameters: tuple[str, ...] = ()
    verb = "RCPT"

    def line(self) -> str:
        text = f"RCPT TO:<{_check(self.forward_path, 'forward-path')}>"
        for p in self.parameters:
            text += " " + _check(p, "RCPT parameter")
        return text


@dataclass(frozen=True, slots=True)
class Data:
    """DATA (RFC 5321 §4.1.1.4); a 354 reply opens the content."""

    verb = "DATA"

    def line(self) -> str:
        return "DATA"


@dataclass(frozen=True, slots=True)
class EndOfData:
    """The end of DATA content (``CRLF.CRLF``); its reply says whether the message is taken."""

    verb = "END"


@dataclass(frozen=True, slots=True)
class Bdat:
    """BDAT size [LAST] followed by ``size`` octets of content (RFC 3030 §2).

    Attributes:
        chunk: the octets of this chunk, sent as they are (line endings must already be
            CRLF; see :func:`normalize_line_endings`).
        last: this is the last chunk.
    """

    chunk: bytes
    last: bool = False
    verb = "BDAT"

    def line(self) -> str:
        return f"BDAT {len(self.chunk)}" + (" LAST" if self.last else "")


@dataclass(frozen=True, slots=True)
class Rset:
    """RSET (RFC 5321 §4.1.1.5)."""

    verb = "RSET"

    def line(self) -> str:
        return "RSET"


@dataclass(frozen=True, slots=True)
class Noop:
    """NOOP (RFC 5321 §4.1.1.9)."""

    verb = "NOOP"

    def line(self) -> str:
        return "NOOP"


@dataclass(frozen=True, slots=True)
class Quit:
    """QUIT (RFC 5321 §4.1.1.10)."""

    verb = "QUIT"

    def line(self) -> str:
        return "QUIT"


@dataclass(frozen=True, slots=True)
class StartTls:
    """STARTTLS (RFC 3207 §4); a 220 reply means: start the TLS handshake now."""

    verb = "STARTTLS"

    def line(self) -> str:
        return "STARTTLS"


@dataclass(frozen=True, slots=True)
class AuthStart:
    """AUTH mechanism [initial-response] (RFC 4954 §4).

    Attributes:
        mechanism: the SASL mechanism name, e.g. ``PLAIN``.
        initial_response: raw bytes (base64-encoded on the wire; ``b""`` is sent as
            ``=``), or None for no initial response.
    """

    mechanism: str
    initial_response: bytes | None = None
    verb = "AUTH"

    def line(self) -> str:
        text = f"AUTH {_check(self.mechanism, 'AUTH mechanism')}"
        if self.initial_response is not None:
            text += " " + (base64.b64encode(self.initial_response).decode("ascii") or "=")
        return text


@dataclass(frozen=True, slots=True)
class AuthContinue:
    """A client response to a 334 challenge (RFC 4954 §4); ``cancel`` sends ``*``."""

    data: bytes = b""
    cancel: bool = False
    verb = "AUTH"

    def line(self) -> str:
        if self.cancel:
            return "*"
        return base64.b64encode(self.data).decode("ascii")


Command = (
    Greeting | Ehlo | Helo | Mail | Rcpt | Data | EndOfData | Bdat | Rset | Noop | Quit
    | StartTls | AuthStart | AuthContinue
)


# ----------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class ReplyReceived:
    """The server answered ``command`` with ``reply``.

    ``command`` is None for a reply nothing was waiting for; only a ``421`` may come
    unasked (RFC 5321 §3.8), anything else is a :class:`ReplySyntaxError`.
    """

    command: Command | None
    reply: Reply


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """The server closed its side (``receive_data(b"")``).

    Attributes:
        unanswered: commands still waiting for their reply, oldest first.
    """

    unanswered: tuple[Command, ...] = ()


Event = ReplyReceived | ConnectionClosed


# ----------------------------------------------------------------------------- EHLO


def parse_ehlo(reply: Reply) -> dict[str, str]:
    """The extensions a 250 EHLO reply offers (RFC 5321 §4.1.1.1).

    Args:
        reply: the EHLO reply; its first line is the server's name and greeting.

    Returns:
        Upper-case keyword -> parameter text (``""`` when none); e.g.
        ``{"SIZE": "35651584", "AUTH": "PLAIN LOGIN", "PIPELINING": ""}``. The old form
        ``AUTH=PLAIN`` is read as ``AUTH``.
    """
    out: dict[str, str] = {}
    for line in reply.lines[1:]:
        keyword, _, params = line.strip().partition(" ")
        if not keyword:
            continue
        if keyword.upper().startswith("AUTH=") and "AUTH" not in out:
            out["AUTH"] = (keyword[5:] + " " + params).strip()
            continue
        key = keyword.upper()
        if key == "AUTH" and "AUTH" in out:
            # Both forms offered: merge the mechanism lists.
            merged = dict.fromkeys((out["AUTH"] + " " + params).split())
            out[key] = " ".join(merged)
            continue
        out[key] = params.strip()
    return out


def mail_parameters(
    params: MailParams | None,
    extensions: dict[str, str],
    *,
    size: int | None = None,
) -> tuple[str, ...]:
    """The MAIL parameters to send, keeping only what the server offered.

    Args:
        params: the message's MAIL parameters (BODY, SMTPUTF8, RET, ENVID, AUTH).
        extensions: the EHLO extensions (:func:`parse_ehlo`).
        size: the message size in octets, sent as SIZE= when SIZE is offered (RFC 1870).

    Returns:
        Encoded parameter items, in a stable order.
    """
    out: list[str] = []
    if size is not None and "SIZE" in extensions:
        out.append(f"SIZE={size}")
    if params is None:
        return tuple(out)
    if params.body is not None:
        if params.body == "BINARYMIME" and "BINARYMIME" in extensions:
            out.append("BODY=BINARYMIME")
        elif params.body == "8BITMIME" and "8BITMIME" in extensions:
            out.append("BODY=8BITMIME")
        elif params.body == "7BIT" and "8BITMIME" in extensions:
            out.append("BODY=7BIT")
    if params.smtputf8 and "SMTPUTF8" in extensions:
        out.append("SMTPUTF8")
    if "DSN" in extensions:
        if params.ret is not None:
            out.append(f"RET={params.ret}")
        if params.envid is not None:
            out.append(f"ENVID={encode_xtext(params.envid)}")
    if params.auth is not None and "AUTH" in extensions:
        out.append("AUTH=<>" if params.auth == "<>" else f"AUTH={encode_xtext(params.auth)}")
    return tuple(out)


def rcpt_parameters(params: RcptParams | None, extensions: dict[str, str]) -> tuple[str, ...]:
    """The RCPT parameters to send: NOTIFY and ORCPT only when DSN is offered (RFC 3461 §4).

    Args:
        params: the recipient's parameters, or None.
        extensions: the EHLO extensions.

    Returns:
        Encoded parameter items.
    """
    if params is None or "DSN" not in extensions:
        return ()
    out: list[str] = []
    if params.notify is not None:
        if not params.notify:
            out.append("NOTIFY=NEVER")
        else:
            order = ("SUCCESS", "FAILURE", "DELAY")
            out.append("NOTIFY=" + ",".join(v for v in order if v in params.notify))
    if params.orcpt is not None:
        addr_type, address = params.orcpt
        out.append(f"ORCPT={addr_type};{encode_xtext(address)}")
    return tuple(out)


# ----------------------------------------------------------------------------- the machine


_AFTER_GREETING = frozenset({ClientState.READY, ClientState.IDLE})


class ClientConnection:
    """One SMTP client session, without I/O (see the module docstring).

    Attributes:
        state: the current :class:`ClientState`.
        extensions: what the last 250 EHLO reply offered (empty after HELO).
        esmtp: the session was greeted with EHLO.
        server_name: the first word of the greeting (the name the server gives itself).
        ehlo_name: the first word of the EHLO/HELO reply.
        tls: TLS is active (set by :meth:`tls_started`, or by the caller for implicit
            TLS).
        authenticated: AUTH succeeded.
    """

    def __init__(self) -> None:
        self.state = ClientState.GREETING
        self.extensions: dict[str, str] = {}
        self.esmtp = False
        self.server_name = ""
        self.ehlo_name = ""
        self.tls = False
        self.authenticated = False
        self._reader = ReplyReader()
        self._waiting: deque[Command] = deque([Greeting()])
        self._eof = False
        self._closed_reported = False
        self._encoder: ContentEncoder | None = None
        self._quit_sent = False

    # ------------------------------------------------------------------ input

    @property
    def waiting(self) -> int:
        """Commands sent whose reply has not been read yet."""
        return len(self._waiting)

    def receive_data(self, data: bytes) -> None:
        """Feed bytes received from the server; ``b""`` means it closed its side."""
        if self._eof:
            return
        if not data:
            self._eof = True
            return
        self._reader.feed(data)

    def next_event(self) -> Event | _NeedData:
        """Return the next reply, ``ConnectionClosed`` or ``NEED_DATA``.

        Raises:
            ReplySyntaxError: the server sent something that is not a reply (the session
                is then ``CLOSED``).
        """
        if self.state is ClientState.TLS:
            return NEED_DATA
        try:
            reply = self._reader.next_reply()
        except ReplySyntaxError:
            self.state = ClientState.CLOSED
            raise
        if reply is None:
            if self._eof:
                if self._closed_reported:
                    return NEED_DATA
                self._closed_reported = True
                unanswered = tuple(self._waiting)
                self._waiting.clear()
                self.state = ClientState.CLOSED
                return ConnectionClosed(unanswered)
            return NEED_DATA
        if not self._waiting:
            if reply.code == 421:
                self.state = ClientState.CLOSED
                return ReplyReceived(None, reply)
            self.state = ClientState.CLOSED
            raise ReplySyntaxError(f"reply nobody asked for: {reply}")
        command = self._waiting.popleft()
        self._answered(command, reply)
        return ReplyReceived(command, reply)

    def _answered(self, command: Command, reply: Reply) -> None:
        positive = 200 <= reply.code < 300
        if isinstance(command, Greeting):
            self.server_name = reply.lines[0].split(" ", 1)[0]
            if reply.code == 220:
                self.state = ClientState.READY
        elif isinstance(command, Ehlo) and positive:
            self.extensions = parse_ehlo(reply)
            self.esmtp = True
            self.ehlo_name = reply.lines[0].split(" ", 1)[0]
            self.state = ClientState.IDLE
        elif isinstance(command, Helo) and positive:
            self.extensions = {}
            self.esmtp = False
            self.ehlo_name = reply.lines[0].split(" ", 1)[0]
            self.state = ClientState.IDLE
        elif isinstance(command, Data):
            if reply.code == 354:
                self.state = ClientState.DATA
                self._encoder = ContentEncoder()
        elif isinstance(command, StartTls):
            if reply.code == 220:
                self.state = ClientState.TLS
        elif isinstance(command, (AuthStart, AuthContinue)):
            if reply.code == 334:
                self.state = ClientState.AUTH
            else:
                self.state = ClientState.IDLE
                if reply.code == 235:
                    self.authenticated = True
        elif isinstance(command, Quit):
            self.state = ClientState.CLOSED
        if reply.code == 421:
            self.state = ClientState.CLOSED
        if self.state is ClientState.CLOSED:
            self._waiting.clear()

    # ------------------------------------------------------------------ output

    def send(self, command: Command) -> bytes:
        """Return the bytes of ``command`` and wait for its reply.

        Args:
            command: any command but :class:`Greeting` and :class:`EndOfData`.

        Returns:
            The bytes to write (for :class:`Bdat`, the command line and the chunk).

        Raises:
            LocalProtocolError: the command is not allowed now (see the module docstring)
                or holds control characters.
        """
        state = self.state
        if isinstance(command, (Greeting, EndOfData)):
            raise LocalProtocolError(f"{command.verb} is not sent; see end_content()")
        if state is ClientState.CLOSED or self._quit_sent:
            raise LocalProtocolError("the session is closed")
        if state in (ClientState.DATA, ClientState.TLS):
            raise LocalProtocolError(f"cannot send {command.verb} in state {state.value}")
        if self._waiting and isinstance(self._waiting[-1], StartTls):
            raise LocalProtocolError("nothing may follow STARTTLS before its reply")
        if isinstance(command, AuthContinue):
            if state is not ClientState.AUTH:
                raise LocalProtocolError("no SASL challenge to answer")
        elif state is ClientState.AUTH:
            raise LocalProtocolError("a SASL exchange is in progress")
        elif isinstance(command, (Ehlo, Helo)):
            if state not in _AFTER_GREETING:
                raise LocalProtocolError("EHLO/HELO before the greeting")
        elif isinstance(command, Quit):
            self._quit_sent = True
        elif state is not ClientState.IDLE:
            raise LocalProtocolError(f"{command.verb} before a successful EHLO/HELO")
        line = command.line().encode("utf-8") + b"\r\n"
        self._waiting.append(command)
        if isinstance(command, Bdat):
            return line + command.chunk
        return line

    def send_content(self, data: bytes) -> bytes:
        """Encode a block of DATA content (CRLF line endings, dot-stuffing).

        Raises:
            LocalProtocolError: no 354 reply has opened the content.
        """
        if self.state is not ClientState.DATA or self._encoder is None:
            raise LocalProtocolError("content may only follow a 354 reply to DATA")
        return self._encoder.encode(data)

    def end_content(self) -> bytes:
        """End DATA content; the reply to it is matched to :class:`EndOfData`.

        Returns:
            The last bytes: a final CRLF if needed and ``.CRLF``.

        Raises:
            LocalProtocolError: no 354 reply has opened the content.
        """
        if self.state is not ClientState.DATA or self._encoder is None:
            raise LocalProtocolError("content may only follow a 354 reply to DATA")
        out = self._encoder.finish()
        self._encoder = None
        self.state = ClientState.IDLE
        self._waiting.append(EndOfData())
        return out

    def tls_started(self) -> None:
        """The TLS handshake after STARTTLS succeeded: start over (RFC 3207 §4.2).

        The extensions and any bytes read before the handshake are forgotten; the
        session waits for a new EHLO.

        Raises:
            LocalProtocolError: no 220 reply to STARTTLS was received.
        """
        if self.state is not ClientState.TLS:
            raise LocalProtocolError("tls_started() without a 220 reply to STARTTLS")
        self._reader.clear()
        self.extensions = {}
        self.esmtp = False
        self.tls = True
        self.state = ClientState.READY
