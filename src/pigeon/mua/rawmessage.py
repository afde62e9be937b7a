"""A message given as bytes (sendmail's standard input, a rendered template), edited in place.

Only the header block is parsed; the body is kept byte for byte. Fields are kept with their
exact bytes (continuation lines included), so removing ``Bcc`` or adding a missing ``Date``
changes nothing else in the message.

Line endings are made CRLF first (RFC 5322 §2.1: lines end in CRLF; RFC 5321 §2.3.8: a bare
CR or LF must not be sent), as programs piping into sendmail write LF.
"""

from __future__ import annotations

import email.utils
import re
from dataclasses import dataclass, field
from email.header import decode_header, make_header

__all__ = ["HeaderField", "RawMessage", "normalize_line_endings"]

_NEWLINES_RE = re.compile(rb"\r\n|\r|\n")
# RFC 5322 §3.6.8 field-name, then optional WSP (the obsolete syntax, §4.5.8), then ":".
_FIELD_RE = re.compile(rb"([\x21-\x39\x3b-\x7e]+)[ \t]*:")
# RFC 5322 §3.4 group with no members, e.g. "undisclosed-recipients:;".
_EMPTY_GROUP_RE = re.compile(r'\s*[^:<>@",;]*:\s*;?\s*')


def normalize_line_endings(data: bytes) -> bytes:
    """Turn every CR LF, bare LF and bare CR into CR LF.

    Args:
        data: message text.

    Returns:
        The text with CRLF line endings only (a final line without an ending keeps none).
    """
    return _NEWLINES_RE.sub(b"\r\n", data)


@dataclass(frozen=True, slots=True)
class HeaderField:
    """One header field as it was written.

    Attributes:
        name: the field name as written (compare with ``.lower()``).
        raw: the whole field: name, colon, value, continuation lines, each ending CRLF.
    """

    name: str
    raw: bytes

    @property
    def value(self) -> str:
        """The unfolded value with RFC 2047 encoded-words decoded (RFC 5322 §2.2.3)."""
        _, _, text = self.raw.partition(b":")
        unfolded = re.sub(rb"\r\n(?=[ \t])", b"", text).strip()
        decoded = unfolded.decode("utf-8", "replace")
        try:
            return str(make_header(decode_header(decoded)))
        except (ValueError, LookupError, UnicodeError):
            return decoded


@dataclass(slots=True)
class RawMessage:
    """A message split into header fields and the untouched body.

    Attributes:
        fields: the header fields in order.
        body: everything after the empty line that ends the header (CRLF line endings).
    """

    fields: list[HeaderField] = field(default_factory=list)
    body: bytes = b""

    @classmethod
    def parse(cls, data: bytes) -> RawMessage:
        """Split a message into its fields and body.

        The header ends at the first empty line, or at the first line that is neither a
        field nor a continuation (that line then starts the body, as in Postfix).

        Args:
            data: the message, any line endings.

        Returns:
            The parsed message.
        """
        data = normalize_line_endings(data)
        fields: list[HeaderField] = []
        pos = 0
        current: list[bytes] = []
        current_name = ""
        body_start = len(data)
        while pos < len(data):
            end = data.find(b"\r\n", pos)
            line_end = len(data) if end == -1 else end + 2
            line = data[pos:line_end]
            if line in (b"\r\n", b""):
                body_start = line_end
                break
            if line[:1] in (b" ", b"\t") and current:
                current.append(line if line.endswith(b"\r\n") else line + b"\r\n")
                pos = line_end
                continue
            match = _FIELD_RE.match(line)
            if match is None:
                body_start = pos
                break
            if current:
                fields.append(HeaderField(current_name, b"".join(current)))
            current_name = match.group(1).decode("ascii")
            current = [line if line.endswith(b"\r\n") else line + b"\r\n"]
            pos = line_end
        if current:
            fields.append(HeaderField(current_name, b"".join(current)))
        return cls(fields, data[body_start:])

    def get_all(self, name: str) -> list[HeaderField]:
        """Every field with this name (case-insensitive), in order."""
        key = name.lower()
        return [f for f in self.fields if f.name.lower() == key]

    def has(self, name: str) -> bool:
        """True when at least one field has this name (case-insensitive)."""
        return bool(self.get_all(name))

    def remove(self, *names: str) -> int:
        """Remove every field with one of these names (case-insensitive).

        Returns:
            How many fields were removed.
        """
        keys = {n.lower() for n in names}
        before = len(self.fields)
        self.fields = [f for f in self.fields if f.name.lower() not in keys]
        return before - len(self.fields)

    def add(self, name: str, value: str) -> None:
        """Append a field at the end of the header.

        Args:
            name: the field name.
            value: the value, already encoded for the header (no line breaks).

        Raises:
            ValueError: the value contains a line break.
        """
        if any(ch in value for ch in "\r\n"):
            raise ValueError("a header value may not contain line breaks")
        self.fields.append(HeaderField(name, f"{name}: {value}\r\n".encode()))

    def addresses(self, *names: str) -> list[tuple[str, str]]:
        """The (display name, addr-spec) pairs of these address fields, in field order.

        Args:
            names: field names, e.g. ``"To", "Cc", "Bcc"``.

        Returns:
            The pairs. An empty group (``undisclosed-recipients:;``) gives none; a field
            that cannot be parsed gives (its value, ``""``).
        """
        keys = {n.lower() for n in names}
        out: list[tuple[str, str]] = []
        for f in self.fields:
            if f.name.lower() not in keys:
                continue
            value = f.value
            if _EMPTY_GROUP_RE.fullmatch(value) or not value.strip():
                continue
            for name, addr in email.utils.getaddresses([value]):
                out.append((name, addr) if addr else (value, ""))
        return out

    @property
    def header_bytes(self) -> bytes:
        """The header block without the empty line that ends it."""
        return b"".join(f.raw for f in self.fields)

    def to_bytes(self) -> bytes:
        """The whole message: fields, the empty line, the body."""
        return self.header_bytes + b"\r\n" + self.body
