"""Events produced by :class:`~pigeon.protocol.smtp.server.ServerConnection`.

Each event says what the peer asked for; the application decides and answers with a
:class:`~pigeon.mail.reply.Reply`. Events marked *needs a reply* must be answered with
exactly one ``send(reply)`` before the next event is produced.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from pigeon.mail.address import ForwardPath, ReversePath
from pigeon.mail.envelope import MailParams, RcptParams
from pigeon.mail.reply import Reply

__all__ = [
    "NEED_DATA",
    "PAUSED",
    "Auth",
    "AuthCancelled",
    "AuthResponse",
    "BdatChunkEnd",
    "BdatStarted",
    "CommandError",
    "ConnectionClosed",
    "DataChunk",
    "DataCommand",
    "DataComplete",
    "Event",
    "Expand",
    "Hello",
    "Help",
    "MailFrom",
    "Noop",
    "Quit",
    "RcptTo",
    "Reset",
    "Sentinel",
    "StartTLS",
    "Verify",
]


class Sentinel(enum.Enum):
    """Values of ``next_event()`` that are not events."""

    NEED_DATA = "NEED_DATA"  # feed more bytes with receive_data()
    PAUSED = "PAUSED"  # a reply is owed, or the connection waits for TLS / is closed


NEED_DATA = Sentinel.NEED_DATA
PAUSED = Sentinel.PAUSED


@dataclass(frozen=True, slots=True)
class Hello:
    """HELO or EHLO (RFC 5321 §4.1.1.1). Needs a reply (250 greets)."""

    esmtp: bool
    domain: str


@dataclass(frozen=True, slots=True)
class MailFrom:
    """MAIL FROM with a syntactically valid reverse-path and parameters. Needs a reply."""

    reverse_path: ReversePath
    params: MailParams


@dataclass(frozen=True, slots=True)
class RcptTo:
    """RCPT TO with a syntactically valid forward-path and parameters. Needs a reply."""

    forward_path: ForwardPath
    params: RcptParams


@dataclass(frozen=True, slots=True)
class DataCommand:
    """DATA in a transaction with recipients. Needs a reply: 354 starts the data."""


@dataclass(frozen=True, slots=True)
class BdatStarted:
    """A BDAT chunk of ``size`` octets begins (RFC 3030). No reply.

    ``first`` is True for the first chunk of a message (time to open a spool file).
    """

    size: int
    last: bool
    first: bool


@dataclass(frozen=True, slots=True)
class DataChunk:
    """Message content, dot-unstuffed (DATA) or raw (BDAT). No reply."""

    data: bytes


@dataclass(frozen=True, slots=True)
class DataComplete:
    """End of the message content (``<CRLF>.<CRLF>`` or ``BDAT ... LAST``). Needs a reply.

    Attributes:
        size: content octets received (after dot-unstuffing).
        received_count: Received header fields seen in the header section.
        reply_hint: a refusal the protocol itself calls for (size exceeded, bare CR/LF,
            over-long line, too many hops), or None when the content is acceptable.
    """

    size: int
    received_count: int
    reply_hint: Reply | None


@dataclass(frozen=True, slots=True)
class BdatChunkEnd:
    """A BDAT chunk that is not the last one has been received. Needs a reply (250)."""

    size: int
    total: int
    reply_hint: Reply | None


@dataclass(frozen=True, slots=True)
class Reset:
    """RSET (RFC 5321 §4.1.1.5). Needs a reply."""


@dataclass(frozen=True, slots=True)
class Noop:
    """NOOP (RFC 5321 §4.1.1.9). Needs a reply."""


@dataclass(frozen=True, slots=True)
class Verify:
    """VRFY (RFC 5321 §4.1.1.6). Needs a reply."""

    argument: str


@dataclass(frozen=True, slots=True)
class Expand:
    """EXPN (RFC 5321 §4.1.1.7). Needs a reply."""

    argument: str


@dataclass(frozen=True, slots=True)
class Help:
    """HELP (RFC 5321 §4.1.1.8). Needs a reply."""

    topic: str


@dataclass(frozen=True, slots=True)
class Quit:
    """QUIT (RFC 5321 §4.1.1.10). Needs a reply (221 closes)."""


@dataclass(frozen=True, slots=True)
class StartTLS:
    """STARTTLS (RFC 3207). Needs a reply; after 220 call ``tls_started()``."""


@dataclass(frozen=True, slots=True)
class Auth:
    """AUTH mechanism [initial-response] (RFC 4954 §4). Needs a reply.

    ``initial_response`` is the decoded initial response (``b""`` for ``=``), or None.
    """

    mechanism: str
    initial_response: bytes | None


@dataclass(frozen=True, slots=True)
class AuthResponse:
    """A decoded client response to a 334 challenge (RFC 4954 §4). Needs a reply."""

    data: bytes


@dataclass(frozen=True, slots=True)
class AuthCancelled:
    """The client answered a challenge with ``*`` (RFC 4954 §4). Needs a reply (501)."""


@dataclass(frozen=True, slots=True)
class CommandError:
    """A command the protocol refuses by itself (syntax, sequence, limits). Needs a reply.

    Send ``reply`` (or, when the session has had too many errors, a 421 instead).
    """

    reply: Reply


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """The peer closed its side (``receive_data(b"")``)."""


Event = (
    Hello
    | MailFrom
    | RcptTo
    | DataCommand
    | BdatStarted
    | DataChunk
    | DataComplete
    | BdatChunkEnd
    | Reset
    | Noop
    | Verify
    | Expand
    | Help
    | Quit
    | StartTLS
    | Auth
    | AuthResponse
    | AuthCancelled
    | CommandError
    | ConnectionClosed
)
