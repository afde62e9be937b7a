"""Message content on the way out: CRLF line endings and DATA dot-stuffing.

Theory of operation
-------------------
RFC 5321 §2.3.8 and §4.1.1.4: a client sends lines ending in CRLF and never a bare CR or
LF. RFC 5321 §4.5.2: in DATA, a line that begins with ``.`` gets one more ``.`` in front,
and the content ends with ``CRLF . CRLF``; content that does not end with CRLF gets one
first.

:class:`ContentEncoder` works on blocks split anywhere. A CR at the very end of a block is
held back until the next block shows whether an LF follows, so neither a CRLF nor a stuffed
line start is ever cut in two. Each block costs a few C-level calls (``bytes.count`` to see
that its line endings are already clean, ``bytes.replace`` to stuff dots); only a block
with bare CR or LF goes through a regular expression that makes every line ending CRLF.
That is what keeps the SMTP smuggling family (bare LF followed by ``.``) from ever leaving
Pigeon.
"""

from __future__ import annotations

import re

__all__ = ["ContentEncoder", "normalize_line_endings"]

_ANY_NEWLINE = re.compile(rb"\r\n|\r|\n")


def normalize_line_endings(data: bytes) -> bytes:
    """Return ``data`` with every bare CR and bare LF turned into CRLF.

    Args:
        data: a block of content that does not end in the middle of a CRLF.

    Returns:
        The block; the same object when it had no bare CR or LF.
    """
    crlf = data.count(b"\r\n")
    if data.count(b"\n") == crlf and data.count(b"\r") == crlf:
        return data
    return _ANY_NEWLINE.sub(b"\r\n", data)


class ContentEncoder:
    """Prepare message content for the wire (see the module docstring).

    Args:
        dot_stuffing: True for DATA (stuff dots and end with ``.CRLF``), False for BDAT
            (only make line endings CRLF; RFC 3030 §2 sends content as it is).

    Attributes:
        size: octets returned so far (the terminator excluded).
    """

    __slots__ = ("_cr", "_dots", "_line_start", "size")

    def __init__(self, *, dot_stuffing: bool = True) -> None:
        self._dots = dot_stuffing
        self._line_start = True
        self._cr = False
        self.size = 0

    def encode(self, data: bytes) -> bytes:
        """Encode the next block of content.

        Args:
            data: any block of the message.

        Returns:
            The bytes to send now (possibly fewer than given: a trailing CR waits).
        """
        if self._cr:
            data = b"\r" + data
            self._cr = False
        if data.endswith(b"\r"):
            data = data[:-1]
            self._cr = True
        if not data:
            return b""
        data = normalize_line_endings(data)
        if self._dots:
            if self._line_start and data[:1] == b".":
                data = b"." + data
            data = data.replace(b"\r\n.", b"\r\n..")
        self._line_start = data.endswith(b"\n")
        self.size += len(data)
        return data

    def finish(self) -> bytes:
        """End the content.

        Returns:
            What is left to send: a held CR as CRLF, a final CRLF when the content did not
            end with one, and for DATA the ``.CRLF`` terminator (RFC 5321 §4.1.1.4).
        """
        out = b""
        if self._cr:
            out = b"\r\n"
            self._cr = False
            self._line_start = True
        if not self._line_start:
            out += b"\r\n"
            self._line_start = True
        self.size += len(out)
        if self._dots:
            out += b".\r\n"
        return out
