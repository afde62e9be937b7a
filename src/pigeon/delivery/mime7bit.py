"""8-bit to 7-bit conversion for servers without 8BITMIME (RFC 6152 §3, RFC 2045 §6).

Theory of operation. RFC 6152 §3 lets a client that holds 8-bit content and meets a server
that does not offer 8BITMIME either convert the content to 7 bits or return it as
undeliverable. Pigeon converts what MIME can express and refuses the rest:

- every leaf part whose body has 8-bit octets and is declared ``7bit``, ``8bit`` or
  ``binary`` (or nothing) is re-encoded: ``text/*`` as quoted-printable (so it stays
  readable), anything else as base64; its Content-Transfer-Encoding field is replaced;
- a multipart or message part that declared ``8bit``/``binary`` is declared ``7bit``;
- a message without MIME-Version whose body has 8-bit octets becomes a MIME
  ``text/plain`` message (``charset=utf-8`` when the body is UTF-8, else
  ``unknown-8bit``, RFC 1428);
- 8-bit octets in header fields, or inside a part that claims quoted-printable or base64,
  cannot be converted: :class:`ConversionError` with ``554 5.6.3``.

Parsing and writing use the stdlib ``email`` package with the ``compat32`` policy and CRLF
line endings, which writes unchanged parts back byte for byte: only the converted parts
differ from the original.
"""

from __future__ import annotations

import base64
import io
import quopri
import re
from email.generator import BytesGenerator
from email.message import Message
from email.parser import BytesParser
from email.policy import compat32

from pigeon.mail.reply import Reply, ReplyError

__all__ = ["ConversionError", "has_8bit", "to_7bit"]

_POLICY = compat32.clone(linesep="\r\n", max_line_length=0)
_EIGHT_BIT = re.compile(rb"[\x80-\xff]")
_HEADER_END = re.compile(rb"\r?\n\r?\n")


class ConversionError(ReplyError):
    """The content cannot be made 7-bit; ``reply`` is the permanent failure."""


def has_8bit(data: bytes) -> bool:
    """True when ``data`` holds an octet above 127."""
    return _EIGHT_BIT.search(data) is not None


def _refuse(why: str) -> ConversionError:
    return ConversionError(Reply(
        554, "5.6.3",
        f"Conversion to 7bit required, but not possible: {why} (RFC 6152)",
    ))


def _raw_body(part: Message) -> bytes:
    """The body octets of a leaf part as received (no transfer decoding)."""
    cte = str(part.get("Content-Transfer-Encoding", "7bit")).strip().lower()
    if cte in ("7bit", "8bit", "binary"):
        # For these, decode=True gives the octets exactly as they were parsed.
        data = part.get_payload(decode=True)
        assert isinstance(data, bytes)
        return data
    payload = part.get_payload(decode=False)
    assert isinstance(payload, str)
    return payload.encode("utf-8", "surrogateescape")


def _quoted_printable(data: bytes) -> str:
    text = data.replace(b"\r\n", b"\n")
    return quopri.encodestring(text, quotetabs=False).decode("ascii")


def _base64(data: bytes) -> str:
    return base64.encodebytes(data).decode("ascii")


def _convert_leaf(part: Message) -> None:
    body = _raw_body(part)
    if not has_8bit(body):
        return
    cte = str(part.get("Content-Transfer-Encoding", "7bit")).strip().lower()
    if cte not in ("7bit", "8bit", "binary"):
        raise _refuse(f"8-bit octets in a {cte} encoded part")
    if part.get_content_maintype() == "text":
        encoded, name = _quoted_printable(body), "quoted-printable"
    else:
        encoded, name = _base64(body), "base64"
    if "Content-Transfer-Encoding" in part:
        part.replace_header("Content-Transfer-Encoding", name)
    else:
        part["Content-Transfer-Encoding"] = name
    part.set_payload(encoded)


def _walk(part: Message) -> None:
    if part.is_multipart():
        cte = str(part.get("Content-Transfer-Encoding", "")).strip().lower()
        if cte in ("8bit", "binary"):
            part.replace_header("Content-Transfer-Encoding", "7bit")
        payload = part.get_payload()
        assert isinstance(payload, list)
        for sub in payload:
            if isinstance(sub, Message):
                _walk(sub)
        return
    _convert_leaf(part)


def to_7bit(content: bytes) -> bytes:
    """Convert a message to 7-bit MIME (see the module docstring).

    Args:
        content: the message, CRLF line endings.

    Returns:
        The converted message (``content`` itself when it has no 8-bit octet).

    Raises:
        ConversionError: ``554 5.6.3`` when the message cannot be expressed in 7 bits.
    """
    if not has_8bit(content):
        return content
    m = _HEADER_END.search(content)
    header = content if m is None else content[: m.start()]
    if has_8bit(header):
        raise _refuse("8-bit octets in the header section")
    msg = BytesParser(policy=_POLICY).parsebytes(content)
    for p in msg.walk():
        if p is not msg and any(has_8bit(str(v).encode("utf-8", "surrogateescape"))
                                for v in p.values()):
            raise _refuse("8-bit octets in a MIME part header")
    if "MIME-Version" not in msg and not msg.is_multipart():
        body = _raw_body(msg)
        try:
            body.decode("utf-8")
            charset = "utf-8"
        except UnicodeDecodeError:
            charset = "unknown-8bit"
        msg["MIME-Version"] = "1.0"
        if "Content-Type" not in msg:
            msg["Content-Type"] = f"text/plain; charset={charset}"
    _walk(msg)
    out = io.BytesIO()
    BytesGenerator(out, mangle_from_=False, policy=_POLICY).flatten(msg)
    result = out.getvalue()
    if has_8bit(result):  # e.g. in a multipart preamble or epilogue
        raise _refuse("8-bit octets outside any MIME part")
    return result
