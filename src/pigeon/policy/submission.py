"""Submission fix-ups (RFC 6409 §8): add ``Date`` and ``Message-ID`` when a MUA left them out.

Theory of operation
-------------------
Message content is streamed to the spool as it arrives, but whether a field is missing is
only known at the end of the header section. :class:`HeaderFixup` therefore holds back the
header section only (at most ``limit`` octets, 256 KiB by default), looking at each field
name as lines complete, and releases it at the first line that is not a header line: the
empty line that ends the header section (RFC 5322 §2.1), or a line that cannot be a field
(then an empty line is inserted before it so that it stays body). The missing fields are
appended to the header section at that point. The body passes through untouched and
unbuffered. A header section longer than ``limit`` is left as it is (no fix-up); so is
content whose last line is cut off without a body.

The class is sans-I/O: :meth:`HeaderFixup.feed` returns the octets to write now and
:meth:`HeaderFixup.finish` the rest.
"""

from __future__ import annotations

import re

__all__ = ["DEFAULT_HEADER_LIMIT", "HeaderFixup"]

#: Octets of header section held back at most while looking for missing fields.
DEFAULT_HEADER_LIMIT = 256 * 1024

# RFC 5322 §2.2 / §3.6.8: field-name = 1*ftext, ftext = %d33-57 / %d59-126; then ":"
# (obs-optional allows white space before the colon, RFC 5322 §4.5).
_FIELD = re.compile(rb"^([\x21-\x39\x3b-\x7e]+)[ \t]*:")


class HeaderFixup:
    """Adds the ``Date`` and ``Message-ID`` fields a message lacks.

    Args:
        date: the ``Date`` value to add (RFC 5322 §3.3 date-time).
        message_id: the ``Message-ID`` value to add, with its angle brackets.
        limit: octets of header section held back at most.

    Attributes:
        added: the names of the fields added (set once the header section ended).
        gave_up: the header section was too long or incomplete; nothing was added.
    """

    def __init__(self, *, date: str, message_id: str, limit: int = DEFAULT_HEADER_LIMIT) -> None:
        for value in (date, message_id):
            if "\r" in value or "\n" in value:
                raise ValueError("field values may not contain CR or LF")
        self._date = date
        self._message_id = message_id
        self._limit = limit
        self._buf = bytearray()
        self._scanned = 0  # offset of the first line not yet looked at
        self._in_header = True
        self._seen: set[bytes] = set()
        self.added: tuple[str, ...] = ()
        self.gave_up = False

    @property
    def in_header(self) -> bool:
        """True while the header section is still being held back."""
        return self._in_header

    def feed(self, data: bytes) -> bytes:
        """Take content; return the octets that may be written now.

        Args:
            data: the next content octets (dot-unstuffed).

        Returns:
            Octets to write (possibly empty while the header section is held back).
        """
        if not self._in_header:
            return data
        self._buf += data
        buf = self._buf
        while True:
            nl = buf.find(b"\n", self._scanned)
            if nl < 0:
                break
            start = self._scanned
            line = bytes(buf[start : nl + 1])
            if line in (b"\r\n", b"\n"):
                return self._release(start, blank=False)
            if line[:1] not in (b" ", b"\t"):
                m = _FIELD.match(line)
                if m is None:
                    return self._release(start, blank=True)
                self._seen.add(m.group(1).lower())
            self._scanned = nl + 1
        if len(buf) > self._limit:
            self.gave_up = True
            return self._flush()
        return b""

    def finish(self) -> bytes:
        """The content ended; return what is still held back (with any added fields).

        Returns:
            The remaining octets to write.
        """
        if not self._in_header:
            return b""
        if self._scanned == len(self._buf) and self._buf:
            # The whole message is a header section without a body (RFC 5322 §3.5).
            return self._release(len(self._buf), blank=False)
        self.gave_up = True
        return self._flush()

    def _missing(self) -> bytes:
        fields: list[bytes] = []
        names: list[str] = []
        if b"date" not in self._seen:
            fields.append(f"Date: {self._date}\r\n".encode("ascii", "replace"))
            names.append("Date")
        if b"message-id" not in self._seen:
            fields.append(f"Message-ID: {self._message_id}\r\n".encode())
            names.append("Message-ID")
        self.added = tuple(names)
        return b"".join(fields)

    def _release(self, at: int, *, blank: bool) -> bytes:
        extra = self._missing()
        if extra and blank:
            extra += b"\r\n"
        buf = self._buf
        out = bytes(buf[:at]) + extra + bytes(buf[at:])
        self._buf = bytearray()
        self._in_header = False
        return out

    def _flush(self) -> bytes:
        out = bytes(self._buf)
        self._buf = bytearray()
        self._in_header = False
        return out
