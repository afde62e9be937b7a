"""Multi-line response bodies: byte-stuffing (RFC 1939 §3) and the TOP cut (RFC 1939 §7).

Both work on a stream given in blocks of any size, so a message is never held whole in
memory, and both expect content with CRLF line endings (a line is what ends in LF).
"""

from __future__ import annotations

__all__ = ["DotStuffer", "TopFilter"]


class DotStuffer:
    """Byte-stuff a multi-line response body and terminate it (RFC 1939 §3).

    Every line that starts with ``.`` gets one more ``.`` in front; :meth:`end` returns the
    terminator ``.`` CRLF, preceded by CRLF when the body did not end with a line end (so
    the terminator always starts a line).
    """

    def __init__(self) -> None:
        self._at_line_start = True

    def feed(self, data: bytes) -> bytes:
        """Stuff the next block of the body.

        Args:
            data: body octets; a block may end anywhere, even inside a line.

        Returns:
            The octets to send.
        """
        if not data:
            return b""
        out = data.replace(b"\n.", b"\n..")
        if self._at_line_start and data[0] == 0x2E:  # "."
            out = b"." + out
        self._at_line_start = data[-1] == 0x0A  # "\n"
        return out

    def end(self) -> bytes:
        """The end of the body: CRLF if a line is open, then ``.`` CRLF."""
        tail = b".\r\n" if self._at_line_start else b"\r\n.\r\n"
        self._at_line_start = True
        return tail


class TopFilter:
    """Keep the header section, the empty line and the first ``body_lines`` body lines.

    RFC 1939 §7 (TOP): the header section ends at the first empty line; a message without
    one is all header. Feed blocks in order; stop reading once :attr:`done` is True.

    Args:
        body_lines: body lines to keep (>= 0).

    Raises:
        ValueError: ``body_lines`` is negative.
    """

    def __init__(self, body_lines: int) -> None:
        if body_lines < 0:
            raise ValueError("body_lines must be >= 0")
        self._in_header = True
        self._left = body_lines
        self._line_len = 0  # octets of the current line before its LF, so far
        self._line_first = 0  # first octet of the current line (when _line_len > 0)
        self.done = False

    def feed(self, data: bytes) -> bytes:
        """Return the part of ``data`` that belongs to the TOP output.

        Args:
            data: the next block of the message.

        Returns:
            The octets to send (possibly empty); after :attr:`done` becomes True, always
            empty.
        """
        if self.done or not data:
            return b""
        pos, size = 0, len(data)
        while pos < size:
            if not self._in_header and self._left == 0:
                self.done = True
                return data[:pos]
            nl = data.find(b"\n", pos)
            if nl < 0:
                if self._line_len == 0:
                    self._line_first = data[pos]
                self._line_len += size - pos
                return data
            if self._in_header:
                if self._line_len == 0 and nl > pos:
                    self._line_first = data[pos]
                length = self._line_len + (nl - pos)
                empty = length == 0 or (length == 1 and self._line_first == 0x0D)
                if empty:
                    self._in_header = False
            else:
                self._left -= 1
            self._line_len = 0
            pos = nl + 1
        if not self._in_header and self._left == 0:
            self.done = True
        return data
