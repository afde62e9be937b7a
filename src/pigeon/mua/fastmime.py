"""A fast writer for the simple messages bulk mail sends: text and/or HTML, UTF-8, no files.

Building each of 10,000 messages with ``EmailMessage`` costs more than sending it (the
header registry parses every field it is given). Bulk messages all have one shape, so
this module writes them directly, using the stdlib :mod:`email` package only for the
encodings, and produces what :func:`pigeon.mua.compose.compose` produces for the same
input (the tests compare the two through the stdlib parser):

- header fields are ASCII: unstructured values that are not plain printable ASCII (or
  that contain ``=?``, which would read as an encoded-word) become RFC 2047 encoded-words
  (``email.header.Header``), display names likewise; long values are folded at 78
  characters (RFC 5322 §2.1.1);
- each body is UTF-8 in canonical form (CRLF line ends, RFC 2045 §6.8): ``7bit`` when it is
  ASCII with lines of at most 998 octets (RFC 5322 §2.1.1), else the shorter of
  ``quoted-printable`` and ``base64``;
- text plus HTML is ``multipart/alternative`` (RFC 2046 §5.1.4), text first, with a random
  boundary that appears in neither body.

Messages that need SMTPUTF8 are not written here (``compose`` does them).
"""

from __future__ import annotations

import base64
import email.utils
import secrets
from email import quoprimime
from email.header import Header

__all__ = ["encode_body", "format_address", "header_value", "simple_message"]

# RFC 5322 §2.1.1: lines SHOULD be at most 78 characters, MUST be at most 998.
_FOLD_AT = 78
_MAX_LINE = 998


def header_value(name: str, value: str) -> str:
    """Encode and fold an unstructured field value (RFC 5322 §3.2.5, RFC 2047).

    Args:
        name: the field name (its length counts on the first line).
        value: the value, any Unicode without line breaks.

    Returns:
        The value as it goes after ``Name: ``, ASCII, folded with CRLF + space.
    """
    plain = value.isascii() and value.isprintable() and "=?" not in value
    if plain and len(name) + 2 + len(value) <= _FOLD_AT:
        return value
    header = Header(value, "us-ascii" if plain else "utf-8", maxlinelen=_FOLD_AT,
                    header_name=name)
    return header.encode(linesep="\r\n")


def format_address(display_name: str, addr_spec: str) -> str:
    """``Name <addr-spec>`` with the name quoted or RFC 2047 encoded as needed.

    Args:
        display_name: the phrase, possibly empty or non-ASCII.
        addr_spec: ``local-part@domain``, ASCII.

    Returns:
        The address for a To or From field.
    """
    if not display_name:
        return addr_spec
    if display_name.isascii() and display_name.isprintable() and "=?" not in display_name:
        return email.utils.formataddr((display_name, addr_spec))
    words = Header(display_name, "utf-8", maxlinelen=_FOLD_AT).encode(linesep="\r\n")
    return f"{words} <{addr_spec}>"


def encode_body(text: str) -> tuple[str, bytes]:
    """Encode a text body in canonical form with a 7-bit transfer encoding.

    Args:
        text: the body; a final line break is added when missing.

    Returns:
        (``7bit``, ``quoted-printable`` or ``base64``; the encoded body ending in CRLF).
    """
    lines = text.encode("utf-8", "surrogateescape").splitlines()
    if not lines:
        lines = [b""]
    if all(line.isascii() and len(line) <= _MAX_LINE for line in lines):
        return "7bit", b"\r\n".join(lines) + b"\r\n"
    canonical = b"\r\n".join(lines) + b"\r\n"
    qp = quoprimime.body_encode((b"\n".join(lines) + b"\n").decode("latin-1"), 76)
    qp_bytes = qp.replace("\n", "\r\n").encode("ascii")
    b64 = base64.encodebytes(canonical).replace(b"\n", b"\r\n")
    if len(qp_bytes) <= len(b64):
        return "quoted-printable", qp_bytes
    return "base64", b64


def _part(subtype: str, text: str) -> tuple[bytes, bytes]:
    cte, body = encode_body(text)
    head = (f'Content-Type: text/{subtype}; charset="utf-8"\r\n'
            f"Content-Transfer-Encoding: {cte}\r\n").encode("ascii")
    return head, body


def simple_message(
    headers: list[tuple[str, str]], *, text: str | None, html: str | None
) -> bytes:
    """Write a whole message: the given fields, then MIME-Version and the body.

    Args:
        headers: (name, value) pairs already encoded (see :func:`header_value` and
            :func:`format_address`), in order.
        text: the plain text body, or None.
        html: the HTML body, or None (at least one of the two; with neither the body
            is an empty text).

    Returns:
        The message, CRLF line endings, ASCII only.
    """
    head = "".join(f"{name}: {value}\r\n" for name, value in headers)
    head += "MIME-Version: 1.0\r\n"
    if text is None or html is None:
        part_head, body = _part("plain" if html is None else "html",
                                text if text is not None else html or "")
        return head.encode("ascii") + part_head + b"\r\n" + body
    text_head, text_body = _part("plain", text)
    html_head, html_body = _part("html", html)
    while True:
        boundary = "=_" + secrets.token_hex(16)
        marker = b"--" + boundary.encode("ascii")
        if marker not in text_body and marker not in html_body:
            break
    head += f'Content-Type: multipart/alternative;\r\n boundary="{boundary}"\r\n'
    # RFC 2046 §5.1.1: the CRLF before a delimiter belongs to the delimiter, so each body
    # keeps its own final line break.
    return b"".join([
        head.encode("ascii"), b"\r\n",
        marker, b"\r\n", text_head, b"\r\n", text_body,
        b"\r\n", marker, b"\r\n", html_head, b"\r\n", html_body,
        b"\r\n", marker, b"--\r\n",
    ])
