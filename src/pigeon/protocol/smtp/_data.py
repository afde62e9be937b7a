"""Message content framing: DATA (dot-stuffing, end of data) and content checks.

Theory of operation
-------------------
DATA content (RFC 5321 §4.1.1.4, §4.5.2) ends only at ``<CRLF>.<CRLF>``. :class:`DotDecoder`
keeps a buffer that always begins with a two-byte *prefix*: ``b"\\r\\n"`` when the buffer
starts at the beginning of a line, or two NUL bytes when it starts in the middle of one. The
prefix is never emitted; it lets one ``bytes.find(b"\\r\\n.\\r\\n")`` detect the end of data
even on the very first line, and one ``bytes.replace(b"\\r\\n.", b"\\r\\n")`` undo the
dot-stuffing of a whole block. Blocks are emitted up to the last CRLF in the buffer, so a
terminator or a stuffed dot is never split between two blocks, and a 100 KiB body costs a
handful of C-level calls, not a Python loop per byte.

Only CRLF counts as a line end. A bare LF or bare CR (the SMTP smuggling family,
CVE-2023-51764 and friends) never ends the data and never starts a line; it is reported by
:class:`ContentInspector` so that the default policy can refuse the message.

:class:`ContentInspector` looks at the content (after unstuffing, for DATA and BDAT alike)
in chunks split anywhere: it counts octets, finds bare CR/LF, over-long lines and counts
Received header fields in the header section (RFC 5321 §6.3 loop detection).
"""

from __future__ import annotations

import re

__all__ = ["ContentInspector", "DotDecoder"]

_LINE_START = b"\r\n"
_MID_LINE = b"\x00\x00"
_TERMINATOR = b"\r\n.\r\n"
# Beyond this many buffered octets without a CRLF the line is too long anyway; emit what we
# have (keeping a possible trailing CR) so memory stays bounded.
_MAX_PENDING = 64 * 1024

_BARE_NEWLINE = re.compile(rb"\r[^\n]|[^\r]\n")
_RECEIVED = re.compile(rb"\nreceived[ \t]*:", re.IGNORECASE)
_HEADER_END = re.compile(rb"\n\r?\n")


class DotDecoder:
    """Undo DATA dot-stuffing and find the end of data (RFC 5321 §4.5.2).

    Feed raw bytes with :meth:`feed`; it returns ``(content, rest)``: ``content`` is the
    unstuffed content that can be emitted now, ``rest`` is None while the data goes on, or
    the bytes that followed ``<CRLF>.<CRLF>`` once the end has been found (possibly
    ``b""``). After the end, the decoder must not be fed again.
    """

    __slots__ = ("_buf", "done")

    def __init__(self) -> None:
        self._buf = bytearray(_LINE_START)
        self.done = False

    def feed(self, data: bytes) -> tuple[bytes, bytes | None]:
        """Consume ``data``; see the class docstring for the return value."""
        buf = self._buf
        buf += data
        end = buf.find(_TERMINATOR)
        if end >= 0:
            content = bytes(buf[: end + 2]).replace(b"\r\n.", b"\r\n")[2:]
            rest = bytes(buf[end + 5 :])
            self._buf = bytearray()
            self.done = True
            return content, rest
        cut = buf.rfind(b"\r\n")
        if cut > 0:
            content = bytes(buf[: cut + 2]).replace(b"\r\n.", b"\r\n")[2:]
            del buf[:cut]
            return content, None
        if len(buf) > _MAX_PENDING:
            # No CRLF at all: an over-long line (or bare-LF content). Keep a trailing CR.
            keep = 1 if buf[-1:] == b"\r" else 0
            stop = len(buf) - keep
            content = bytes(buf[:stop])
            if content[:2] == _LINE_START and content[2:3] == b".":
                content = content[3:]
            else:
                content = content[2:]
            self._buf = bytearray(_MID_LINE + buf[stop:])
            return content, None
        return b"", None


class ContentInspector:
    """Checks message content fed in chunks split at arbitrary points.

    Args:
        max_line_length: the longest allowed line in octets, CRLF included (RFC 5321
            §4.5.3.1.6: 1000); 0 disables the check (BDAT).

    Attributes:
        size: octets seen.
        bare_newline: a bare CR or bare LF was seen (RFC 5321 §2.3.8).
        line_too_long: a line exceeded ``max_line_length``.
        received_count: Received fields in the header section.
    """

    __slots__ = (
        "_in_headers",
        "_line_len",
        "_long_re",
        "_max_run",
        "_prev",
        "_tail",
        "bare_newline",
        "line_too_long",
        "received_count",
        "size",
    )

    def __init__(self, *, max_line_length: int = 1000) -> None:
        self.size = 0
        self.bare_newline = False
        self.line_too_long = False
        self.received_count = 0
        self._prev = b""  # last octet of the previous chunk
        self._in_headers = True
        self._tail = b"\n"
        # A line of max_line_length octets including CRLF has max_line_length - 1 octets
        # before its LF.
        self._max_run = max_line_length - 1 if max_line_length > 0 else 0
        self._long_re = (
            re.compile(rb"[^\n]{%d,}" % (self._max_run + 1)) if self._max_run else None
        )
        self._line_len = 0

    def feed(self, chunk: bytes) -> None:
        """Inspect the next chunk of content."""
        if not chunk:
            return
        self.size += len(chunk)
        if not self.bare_newline:
            joined = self._prev + chunk
            if _BARE_NEWLINE.search(joined) or (not self._prev and chunk[:1] == b"\n"):
                self.bare_newline = True
        self._prev = chunk[-1:]
        if self._max_run and not self.line_too_long:
            self._check_length(chunk)
        if self._in_headers:
            self._scan_headers(chunk)

    def finish(self) -> None:
        """Call at the end of the content: a trailing CR is a bare CR."""
        if self._prev == b"\r":
            self.bare_newline = True

    def _check_length(self, chunk: bytes) -> None:
        first = chunk.find(b"\n")
        if first < 0:
            self._line_len += len(chunk)
            if self._line_len > self._max_run:
                self.line_too_long = True
            return
        if self._line_len + first > self._max_run:
            self.line_too_long = True
            return
        assert self._long_re is not None
        if len(chunk) > self._max_run and self._long_re.search(chunk, first):
            self.line_too_long = True
            return
        self._line_len = len(chunk) - chunk.rfind(b"\n") - 1

    def _scan_headers(self, chunk: bytes) -> None:
        tail = self._tail
        region = tail + chunk
        end = _HEADER_END.search(region)
        limit = end.start() + 1 if end else len(region)
        count = 0
        for m in _RECEIVED.finditer(region, 0, limit):
            if m.end() > len(tail):  # not already counted in the previous chunk
                count += 1
        self.received_count += count
        if end:
            self._in_headers = False
            self._tail = b""
        else:
            # Keep enough to recognise "\nReceived :" or a blank line across the boundary.
            self._tail = region[-16:]
