"""Reading SMTP replies (RFC 5321 §4.2) from a byte stream, for the client side.

Theory of operation
-------------------
A reply is one or more lines ``code SP text CRLF``; every line but the last has ``-``
instead of the space (RFC 5321 §4.2.1). :class:`ReplyReader` buffers received bytes and
returns complete replies as :class:`~pigeon.mail.reply.Reply` values. It is lenient in what
the Internet really sends (a bare LF ends a line too, a code alone with no text is a
reply) and strict in what it cannot make sense of: a line that does not start with a
three-digit code from 200 to 599, lines of one reply with different codes, a line over
:data:`MAX_REPLY_LINE` octets or a reply over :data:`MAX_REPLY_LINES` lines raise
:class:`ReplySyntaxError`.

Enhanced status codes (RFC 2034, RFC 3463) are taken from the start of the text when they
are there and agree with the reply code's class; they are removed from every line that
carries them, so ``Reply.text`` is only the text.
"""

from __future__ import annotations

import re

from pigeon.mail.reply import EnhancedStatus, Reply
from pigeon.protocol.smtp.errors import ProtocolError

__all__ = [
    "MAX_REPLY_LINE",
    "MAX_REPLY_LINES",
    "ReplyReader",
    "ReplySyntaxError",
    "parse_reply_lines",
]

# RFC 5321 §4.5.3.1.5 says a reply line is at most 512 octets; real servers send longer
# ones (long EHLO keywords, verbose rejections), so the bound is generous but finite.
MAX_REPLY_LINE = 8192
# An EHLO reply has one line per extension (about 20 in practice); a reply of more than
# this many lines is not a reply.
MAX_REPLY_LINES = 512

_LINE = re.compile(r"^([2-5][0-9][0-9])(?:([ -])(.*))?$", re.DOTALL)
_ENHANCED = re.compile(r"^([245])\.([0-9]{1,3})\.([0-9]{1,3})(?: +|$)")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


class ReplySyntaxError(ProtocolError):
    """The server sent something that is not an SMTP reply (the peer is at fault)."""


def _clean(text: str) -> str:
    # Reply text may end up in logs and DSNs: no control characters (RFC 5321 §4.2: text
    # is printable US-ASCII, or UTF-8 with SMTPUTF8).
    return _CONTROL.sub("?", text)


def parse_reply_lines(lines: list[str]) -> Reply:
    """Build one reply from its lines (CR/LF removed).

    Args:
        lines: the lines of one complete reply, each starting with the three-digit code;
            all but the last with ``-`` after the code.

    Returns:
        The reply, with the enhanced status code (when present) separated from the text.

    Raises:
        ReplySyntaxError: a line is not a reply line, the codes differ, a continuation
            mark is missing or misplaced.
    """
    if not lines:
        raise ReplySyntaxError("empty reply")
    code_text: str | None = None
    texts: list[str] = []
    last = len(lines) - 1
    for i, line in enumerate(lines):
        m = _LINE.match(line)
        if m is None:
            raise ReplySyntaxError(f"not a reply line: {line[:60]!r}")
        if code_text is None:
            code_text = m.group(1)
        elif m.group(1) != code_text:
            raise ReplySyntaxError(f"reply codes differ: {code_text} and {m.group(1)}")
        continued = m.group(2) == "-"
        if continued != (i != last):
            raise ReplySyntaxError("misplaced continuation mark in a multi-line reply")
        texts.append(_clean(m.group(3) or ""))
    assert code_text is not None
    code = int(code_text)
    enhanced: EnhancedStatus | None = None
    first = _ENHANCED.match(texts[0])
    if first is not None and int(first.group(1)) == code // 100:
        enhanced = EnhancedStatus(int(first.group(1)), int(first.group(2)), int(first.group(3)))
        prefix = str(enhanced)
        stripped = []
        for text in texts:
            m = _ENHANCED.match(text)
            if m is not None and text[: m.end()].rstrip(" ") == prefix:
                text = text[m.end():]
            stripped.append(text)
        texts = stripped
    return Reply(code, enhanced, texts)


class ReplyReader:
    """Splits received bytes into replies.

    Args:
        max_line: the longest reply line accepted, in octets.
        max_lines: the most lines in one reply.
    """

    __slots__ = ("_buf", "_lines", "_max_line", "_max_lines")

    def __init__(
        self, *, max_line: int = MAX_REPLY_LINE, max_lines: int = MAX_REPLY_LINES
    ) -> None:
        self._buf = bytearray()
        self._lines: list[str] = []
        self._max_line = max_line
        self._max_lines = max_lines

    def feed(self, data: bytes) -> None:
        """Add received bytes."""
        self._buf += data

    def clear(self) -> None:
        """Forget buffered input (RFC 3207 §4.2: nothing read before TLS is kept)."""
        self._buf.clear()
        self._lines.clear()

    @property
    def partial(self) -> bool:
        """True when some bytes of an incomplete reply are buffered."""
        return bool(self._buf) or bool(self._lines)

    def next_reply(self) -> Reply | None:
        """Return the next complete reply, or None when more bytes are needed.

        Raises:
            ReplySyntaxError: see the module docstring.
        """
        buf = self._buf
        while True:
            nl = buf.find(b"\n")
            if nl < 0:
                if len(buf) > self._max_line:
                    raise ReplySyntaxError(f"reply line longer than {self._max_line} octets")
                return None
            if nl + 1 > self._max_line:
                raise ReplySyntaxError(f"reply line longer than {self._max_line} octets")
            raw = bytes(buf[:nl])
            del buf[: nl + 1]
            if raw.endswith(b"\r"):
                raw = raw[:-1]
            line = raw.decode("utf-8", "replace")
            m = _LINE.match(line)
            if m is None:
                raise ReplySyntaxError(f"not a reply line: {line[:60]!r}")
            self._lines.append(line)
            if len(self._lines) > self._max_lines:
                raise ReplySyntaxError(f"reply of more than {self._max_lines} lines")
            if m.group(2) != "-":
                lines, self._lines = self._lines, []
                return parse_reply_lines(lines)
