"""Events produced by :class:`~pigeon.protocol.pop3.server.ServerConnection`.

Each event says what the client asked for; the application decides and answers with one
:class:`~pigeon.protocol.pop3._response.Response` (or, during AUTH, a
:class:`~pigeon.protocol.pop3._response.Challenge`). Every event but
:class:`ConnectionClosed` needs exactly one answer before the next event is produced.

Message numbers are the client's (1-based, RFC 1939 §5); whether a number names a message
that exists and is not marked deleted is for the application to say.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from pigeon.protocol.pop3._response import Response

__all__ = [
    "NEED_DATA",
    "PAUSED",
    "Auth",
    "AuthCancelled",
    "AuthResponse",
    "Capa",
    "CommandError",
    "ConnectionClosed",
    "Dele",
    "Event",
    "List",
    "Noop",
    "Pass",
    "Quit",
    "Retr",
    "Rset",
    "Sentinel",
    "Stat",
    "Stls",
    "Top",
    "Uidl",
    "User",
]


class Sentinel(enum.Enum):
    """Values of ``next_event()`` that are not events."""

    NEED_DATA = "NEED_DATA"  # feed more bytes with receive_data()
    PAUSED = "PAUSED"  # a response is owed, a body is being sent, or waiting for TLS / closed


NEED_DATA = Sentinel.NEED_DATA
PAUSED = Sentinel.PAUSED


@dataclass(frozen=True, slots=True)
class User:
    """USER name (RFC 1939 §7). ``+OK`` lets the client send PASS next."""

    name: str


@dataclass(frozen=True, slots=True)
class Pass:
    """PASS string (RFC 1939 §7), right after an accepted USER.

    ``+OK`` opens the maildrop and enters the TRANSACTION state; ``-ERR`` (``[AUTH]``,
    ``[IN-USE]``, ``[SYS/TEMP]``) stays in AUTHORIZATION.
    """

    user: str
    password: str = ""

    def __repr__(self) -> str:  # never print a password into a log
        return f"Pass(user={self.user!r})"


@dataclass(frozen=True, slots=True)
class Auth:
    """AUTH mechanism [initial-response] (RFC 5034 §4).

    ``initial_response`` is the decoded initial response (``b""`` for ``=``), or None.
    Answer with a :class:`~pigeon.protocol.pop3._response.Challenge` to continue, ``+OK``
    to finish (TRANSACTION state) or ``-ERR`` to refuse.
    """

    mechanism: str
    initial_response: bytes | None


@dataclass(frozen=True, slots=True)
class AuthResponse:
    """The decoded client response to a challenge (RFC 5034 §4)."""

    data: bytes

    def __repr__(self) -> str:
        return f"AuthResponse(<{len(self.data)} octets>)"


@dataclass(frozen=True, slots=True)
class AuthCancelled:
    """The client answered a challenge with ``*`` (RFC 5034 §4); answer ``-ERR``."""


@dataclass(frozen=True, slots=True)
class Capa:
    """CAPA (RFC 2449 §5); answer with ``capa_response()``."""


@dataclass(frozen=True, slots=True)
class Stls:
    """STLS (RFC 2595 §4); after ``+OK`` start TLS and call ``tls_started()``."""


@dataclass(frozen=True, slots=True)
class Stat:
    """STAT (RFC 1939 §5): ``+OK count size``."""


@dataclass(frozen=True, slots=True)
class List:
    """LIST [msg] (RFC 1939 §5): one scan line, or (``message`` None) a multi-line list."""

    message: int | None


@dataclass(frozen=True, slots=True)
class Retr:
    """RETR msg (RFC 1939 §5): a ``body`` response, then the message."""

    message: int


@dataclass(frozen=True, slots=True)
class Top:
    """TOP msg n (RFC 1939 §7): a ``body`` response, the header and ``lines`` body lines."""

    message: int
    lines: int


@dataclass(frozen=True, slots=True)
class Dele:
    """DELE msg (RFC 1939 §5): mark the message deleted (removed only in UPDATE)."""

    message: int


@dataclass(frozen=True, slots=True)
class Noop:
    """NOOP (RFC 1939 §5): ``+OK``."""


@dataclass(frozen=True, slots=True)
class Rset:
    """RSET (RFC 1939 §5): unmark every message marked deleted."""


@dataclass(frozen=True, slots=True)
class Uidl:
    """UIDL [msg] (RFC 1939 §7): one unique-id line, or (``message`` None) a list."""

    message: int | None


@dataclass(frozen=True, slots=True)
class Quit:
    """QUIT (RFC 1939 §4, §6).

    With ``update`` True (QUIT in TRANSACTION) the session is in the UPDATE state: remove
    the messages marked deleted, then answer ``+OK`` (or ``-ERR [SYS/TEMP]`` when some
    could not be removed). The connection closes after the answer.
    """

    update: bool


@dataclass(frozen=True, slots=True)
class CommandError:
    """A command the protocol refuses by itself (syntax, state, limits).

    Send ``response`` (always ``-ERR``).
    """

    response: Response


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """The client closed its side (``receive_data(b"")``). No answer."""


Event = (
    User
    | Pass
    | Auth
    | AuthResponse
    | AuthCancelled
    | Capa
    | Stls
    | Stat
    | List
    | Retr
    | Top
    | Dele
    | Noop
    | Rset
    | Uidl
    | Quit
    | CommandError
    | ConnectionClosed
)
