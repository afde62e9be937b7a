"""Message content framing: DATA (dot-stuffing, end of data) and content checks.

Theory of operation
-------------------
DATA content (RFC 5321 §4.1.1.4, §4.5.2) ends only at ``<CRLF>.<CRLF>``. :class:`DotDecoder`
keeps a buffer that always begins with a two-byte *prefix*: ``b"\\r\\n"`` when the buffer
starts at the beginning of a line, or two NUL bytes when it starts in the middle of one. The
prefix is never emitted; it lets one ``bytes.find(b"\\r\\n.")`` find the first dot at a line
start even on the very first line. When there is none, the block holds neither a terminator
nor a stuffed dot and is emitted as it is; when it is followed by CRLF it is the end of data
and nothing before it is stuffed; only otherwise does one ``bytes.replace(b"\\r\\n.",
b"\\r\\n")`` undo the dot-stuffing of the block. Blocks are emitted up to the last CRLF in
the buffer, so a terminator or a stuffed dot is never split between two blocks, and a
100 KiB body costs a handful of C-level calls, not a Python loop per byte.

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

_RECEIVED = re.compile(rb"\nreceived[ \t]*:", re.IGNORECASE)
_RECEIVED_NAME = b"received"
_HEADER_END = re.compile(rb"\n\r?\n")


class DotDecoder:
    """Undo DATA dot-stuffing and find the end of data (RFC 5321 §4.5.2).

    Feed raw bytes with :meth:`feed`; it returns ``(content, rest)``: ``content`` is the
    unstuffed content that can be emitted now, ``rest`` is None while the data goes on, or
    the bytes that followed ``<CRLF>.<CRLF>`` once the end has been found (possibly
    ``b""``). After the end, the decoder must not be fed again.
    """

    __slots__ = ("_pending", "done")

    def __init__(self) -> None:
        # Prefix plus the unfinished last line: no CRLF after the prefix.
        self._pending = _LINE_START
        self.done = False

    def feed(self, data: bytes | bytearray) -> tuple[bytes, bytes | None]:
        """Consume ``data``; see the class docstring for the return value."""
        buf = self._pending + data
        # Every terminator and every stuffed dot starts with CRLF ".", so one scan tells
        # whether the block needs unstuffing and, usually, where the data ends.
        dot = buf.find(b"\r\n.")
        if dot < 0:
            cut = buf.rfind(b"\r\n")
            if cut > 0:
                self._pending = buf[cut:]
                return buf[2 : cut + 2], None
        elif buf.startswith(b"\r\n", dot + 3):
            # The first dot at a line start ends the data, so nothing before it is stuffed.
            self._pending = b""
            self.done = True
            return buf[2 : dot + 2], buf[dot + 5 :]
        else:
            end = buf.find(_TERMINATOR, dot)
            if end >= 0:
                self._pending = b""
                self.done = True
                return buf[: end + 2].replace(b"\r\n.", b"\r\n")[2:], buf[end + 5 :]
            cut = buf.rfind(b"\r\n")
            if cut > 0:
                self._pending = buf[cut:]
                return buf[: cut + 2].replace(b"\r\n.", b"\r\n")[2:], None
        if len(buf) > _MAX_PENDING:
            # No CRLF at all: an over-long line (or bare-LF content). Keep a trailing CR.
            stop = len(buf) - 1 if buf[-1] == 0x0D else len(buf)
            start = 3 if buf.startswith(b"\r\n.") else 2
            self._pending = _MID_LINE + buf[stop:]
            return buf[start:stop], None
        self._pending = buf
        return b"", None


class ContentInspector:
    """Checks message content fed in chunks split at arbitrary points.

    Every result equals the same check made on the whole content seen so far; the chunk
    boundaries never change an answer. Each chunk costs a few C-level scans (``bytes.count``,
    ``bytes.rfind``) and no Python loop per octet or per line:

    * bare CR/LF: a span with no pending CR at either end has none iff its CR, LF and CRLF
      counts are equal. A CR that ends a chunk waits for the first octet of the next one;
    * line length: from the first LF, jump ``max_line_length`` octets at a time to the last
      LF inside the window; a window without LF is an over-long line;
    * header section: the chunk is scanned only up to the first empty line. The unfinished
      last line is kept only while it may still become ``Received:`` or an empty line, so the
      carried text is at most 9 octets.

    Args:
        max_line_length: the longest allowed line in octets, CRLF included (RFC 5321
            §4.5.3.1.6: 1000); 0 disables the check (BDAT), and so does 1, which could not
            hold the CRLF.

    Attributes:
        size: octets seen.
        bare_newline: a bare CR or bare LF was seen (RFC 5321 §2.3.8); a CR ending the
            content counts only after :meth:`finish`.
        line_too_long: a line, the unfinished last one included, exceeded
            ``max_line_length``.
        received_count: Received fields in the header section (the lines before the first
            empty one), name matched without regard to case, blanks allowed before the colon.
    """

    __slots__ = (
        "_cr_pending",
        "_in_headers",
        "_line_len",
        "_max_run",
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
        self._cr_pending = False  # the previous chunk ended with CR
        self._in_headers = True
        # Header text carried over from the previous chunk: the start of its unfinished last
        # line, from its LF, while that line may still be "Received:" or empty; b"" when it
        # can no longer be either. The content itself starts a line.
        self._tail = b"\n"
        # A line of max_line_length octets including CRLF has max_line_length - 1 octets
        # before its LF.
        self._max_run = max_line_length - 1 if max_line_length > 0 else 0
        self._line_len = 0  # octets of the unfinished last line

    def feed(self, chunk: bytes) -> None:
        """Inspect the next chunk of content."""
        if not chunk:
            return
        size = len(chunk)
        self.size += size
        if not self.bare_newline:
            start = 0
            if self._cr_pending:
                if chunk[0] != 0x0A:
                    self.bare_newline = True
                start = 1
            end = size - 1 if chunk[-1] == 0x0D else size
            if start < end and not self.bare_newline:
                crs = chunk.count(b"\r", start, end)
                lfs = chunk.count(b"\n", start, end)
                if crs != lfs or crs != chunk.count(b"\r\n", start, end):
                    self.bare_newline = True
        self._cr_pending = chunk[-1] == 0x0D
        if self._max_run and not self.line_too_long:
            self._check_length(chunk)
        if self._in_headers:
            self._scan_headers(chunk)

    def finish(self) -> None:
        """Call at the end of the content: a trailing CR is a bare CR."""
        if self._cr_pending:
            self.bare_newline = True

    def _check_length(self, chunk: bytes) -> None:
        max_run = self._max_run
        size = len(chunk)
        pos = chunk.find(b"\n")
        if pos < 0:
            self._line_len += size
            if self._line_len > max_run:
                self.line_too_long = True
            return
        if self._line_len + pos > max_run:
            self.line_too_long = True
            return
        # Invariant: chunk[pos] is LF and every line ending at or before it is short enough.
        # A window of max_run + 1 octets after pos holds an LF unless a line is too long.
        while size - pos - 1 > max_run:
            pos = chunk.rfind(b"\n", pos + 1, pos + max_run + 2)
            if pos < 0:
                self.line_too_long = True
                return
        self._line_len = size - chunk.rfind(b"\n") - 1

    def _scan_headers(self, chunk: bytes) -> None:
        region = self._tail + chunk if self._tail else chunk
        end = _HEADER_END.search(region)
        if end is not None:
            self.received_count += len(_RECEIVED.findall(region, 0, end.start()))
            self._in_headers = False
            self._tail = b""
            return
        self.received_count += len(_RECEIVED.findall(region))
        # Without an LF in the region the tail was already b"" and the line goes on.
        last = region.rfind(b"\n")
        self._tail = _open_line(region, last) if last >= 0 else b""


def _open_line(region: bytes, start: int) -> bytes:
    """What to carry of the unfinished line ``region[start:]`` (``region[start]`` is LF).

    Returns:
        ``b"\\n"`` or ``b"\\n\\r"`` (an empty line may follow), ``b"\\n"`` plus a case-folded
        prefix of ``received`` (blanks after the full name are dropped: the colon may follow
        any number of them), or ``b""`` when the line can be neither an empty line nor a
        Received field.
    """
    name = region[start + 1 : start + 9]
    if name == b"\r":
        return b"\n\r"
    name = name.lower()
    if not _RECEIVED_NAME.startswith(name):
        return b""
    if len(region) > start + 9 and region[start + 9 :].strip(b" \t"):
        return b""
    return b"\n" + name
