"""POP3 responses as values: ``+OK`` / ``-ERR``, an optional response code, text, lines.

RFC 1939 §3: a response is a status indicator (``+OK`` or ``-ERR``), optional text, CRLF;
a multi-line response continues with lines, byte-stuffed, ended by ``.`` CRLF. RFC 2449 §8
puts an optional response code in brackets right after the status indicator
(``-ERR [IN-USE] ...``); RFC 3206 adds ``SYS/TEMP``, ``SYS/PERM`` and ``AUTH``. RFC 5034 §4
sends a SASL server challenge as ``+`` SP base64 CRLF.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass

from pigeon.mail.reply import Reply

__all__ = ["RESPONSE_CODES", "Challenge", "Response", "refusal_response"]

#: Response codes Pigeon sends: RFC 2449 §8.1 (IN-USE, LOGIN-DELAY) and RFC 3206 §4-§5.
RESPONSE_CODES = frozenset({"IN-USE", "LOGIN-DELAY", "SYS/TEMP", "SYS/PERM", "AUTH"})

# RFC 2449 §8: resp-code = "[" resp-level *("/" resp-level) "]"; resp-level = 1*schar.
_SCHAR = r"[\x21-\x2e\x30-\x5c\x5e-\x7f]"  # printable ASCII but "/" and "]"
_CODE_RE = re.compile(rf"^{_SCHAR}+(?:/{_SCHAR}+)*$")


def _check_text(text: str, what: str) -> None:
    if "\r" in text or "\n" in text:
        raise ValueError(f"{what} may not contain CR or LF")


@dataclass(frozen=True, slots=True)
class Response:
    """One POP3 response (RFC 1939 §3).

    Build with ``Response(True, "2 320")`` or ``Response(False, "no such message")``, or
    ``Response(False, "mailbox locked", code="IN-USE")``.

    Attributes:
        ok: True for ``+OK``, False for ``-ERR``.
        text: the text after the status indicator (and after the response code).
        code: an RFC 2449 §8 response code without brackets (``"IN-USE"``), or None.
        lines: the lines of a multi-line response (without CRLF, not yet byte-stuffed), or
            None for a single-line response. ``()`` is a multi-line response with no lines.
        body: a multi-line response whose lines follow through
            :meth:`~pigeon.protocol.pop3.server.ServerConnection.send_body` (RETR, TOP).

    Raises:
        ValueError: CR or LF in the text or a line, a malformed code, a multi-line
            ``-ERR``, or both ``lines`` and ``body``.
    """

    ok: bool
    text: str = ""
    code: str | None = None
    lines: tuple[str, ...] | None = None
    body: bool = False

    def __post_init__(self) -> None:
        _check_text(self.text, "response text")
        if self.code is not None and not _CODE_RE.match(self.code):
            raise ValueError(f"not a response code: {self.code!r}")
        if self.lines is not None:
            if not isinstance(self.lines, tuple):
                object.__setattr__(self, "lines", tuple(self.lines))
            for line in self.lines or ():
                _check_text(line, "a response line")
        if not self.ok and (self.lines is not None or self.body):
            raise ValueError("-ERR responses are single-line (RFC 1939 §3)")
        if self.lines is not None and self.body:
            raise ValueError("a response has lines or a body, not both")

    @property
    def multiline(self) -> bool:
        """True when lines follow the status line."""
        return self.lines is not None or self.body

    def status_line(self) -> bytes:
        """The first line in wire form: ``+OK text`` or ``-ERR [CODE] text``, CRLF."""
        parts = ["+OK" if self.ok else "-ERR"]
        if self.code is not None:
            parts.append(f"[{self.code}]")
        if self.text:
            parts.append(self.text)
        return (" ".join(parts) + "\r\n").encode("utf-8")

    def to_bytes(self) -> bytes:
        """The whole response in wire form.

        Returns:
            The status line, and for ``lines`` each line byte-stuffed (RFC 1939 §3: a line
            starting with ``.`` gets one more) and the ``.`` CRLF terminator. For a
            ``body`` response only the status line.
        """
        if self.lines is None:
            return self.status_line()
        out = [self.status_line()]
        for line in self.lines:
            raw = line.encode("utf-8")
            out.append(b"." + raw + b"\r\n" if raw.startswith(b".") else raw + b"\r\n")
        out.append(b".\r\n")
        return b"".join(out)

    def __str__(self) -> str:
        return self.status_line().decode("utf-8").rstrip("\r\n")


@dataclass(frozen=True, slots=True)
class Challenge:
    """A SASL server challenge (RFC 5034 §4): ``+`` SP base64 CRLF.

    Attributes:
        data: the challenge octets, before base64 encoding (``b""`` for an empty one).
    """

    data: bytes = b""

    def to_bytes(self) -> bytes:
        """The challenge in wire form: ``+ <base64>`` CRLF (``+ `` CRLF when empty)."""
        return b"+ " + base64.b64encode(self.data) + b"\r\n"


def refusal_response(reply: Reply) -> Response:
    """Turn a refusal from a shared service (an SMTP-style :class:`Reply`) into ``-ERR``.

    The response code follows RFC 3206: a permanent security refusal (``5.7.x``: bad
    credentials, no such user, mechanism refused) is ``[AUTH]``; any transient refusal
    (4xx: account locked for a while, too many failures, a database problem) is
    ``[SYS/TEMP]``; other permanent refusals (a malformed SASL message) carry no code.

    Args:
        reply: the refusal (code 400..599).

    Returns:
        The ``-ERR`` response with the reply's text.
    """
    code: str | None = None
    if 400 <= reply.code < 500:
        code = "SYS/TEMP"
    elif reply.enhanced is not None and reply.enhanced.subject == 7:
        code = "AUTH"
    return Response(False, reply.text or "refused", code=code)
