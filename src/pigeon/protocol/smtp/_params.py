"""MAIL and RCPT parameters (RFC 5321 §4.1.2 esmtp-param) and xtext (RFC 3461 §4).

Each function returns the typed parameters or raises :class:`ParamError` carrying the reply:
``555 5.5.4`` for a parameter that is unknown or not advertised in this session (RFC 5321
§4.1.1.11), ``501 5.5.4`` for a malformed or repeated one, ``552 5.3.4`` for a declared
SIZE over the limit (RFC 1870 §6).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pigeon.mail.envelope import MailParams, RcptParams
from pigeon.mail.reply import Reply, ReplyError

__all__ = [
    "Extensions",
    "ParamError",
    "decode_xtext",
    "encode_xtext",
    "parse_mail_params",
    "parse_rcpt_params",
]

_KEYWORD = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]*$")
# esmtp-value = 1*(%d33-60 / %d62-126), plus UTF-8 with SMTPUTF8 (RFC 6531 §3.3).
_VALUE = re.compile(r"^[\x21-\x3c\x3e-\x7e\u0080-\U0010ffff]+$")
_XTEXT = re.compile(r"^(?:[\x21-\x2a\x2c-\x3c\x3e-\x7e]|\+[0-9A-F]{2})*$")
_XTEXT_HEX = re.compile(r"\+([0-9A-F]{2})")
_SIZE = re.compile(r"^[0-9]{1,20}$")
_ADDR_TYPE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]*$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_MAX_ENVID = 100  # RFC 3461 §4.4: ENVID at most 100 characters


class ParamError(ReplyError):
    """A MAIL/RCPT parameter problem; ``reply`` is the answer to send."""


@dataclass(frozen=True, slots=True)
class Extensions:
    """What this session advertised, which decides the parameters it accepts.

    Attributes:
        esmtp: the client used EHLO (with HELO, no parameters are allowed at all).
        max_size: SIZE limit in bytes (0 = no limit).
        eightbitmime: BODY=8BITMIME (RFC 6152).
        smtputf8: SMTPUTF8 (RFC 6531).
        dsn: RET, ENVID, NOTIFY, ORCPT (RFC 3461).
        auth: the AUTH= MAIL parameter (RFC 4954 §5).
    """

    esmtp: bool = True
    max_size: int = 0
    eightbitmime: bool = True
    smtputf8: bool = True
    dsn: bool = True
    auth: bool = False


def _bad(text: str) -> ParamError:
    return ParamError(Reply(501, "5.5.4", text))


def _unknown(keyword: str) -> ParamError:
    return ParamError(Reply(555, "5.5.4", f"Unsupported parameter {keyword}"))


def decode_xtext(text: str) -> str:
    """Decode RFC 3461 §4 xtext (``+XX`` hex escapes).

    Raises:
        ParamError: 501 5.5.4 for malformed xtext or a decoded control character (a CR or
            LF smuggled through ``+0D``/``+0A`` is never let into the queue or a header).
    """
    if not _XTEXT.match(text):
        raise _bad("Malformed xtext")
    decoded = _XTEXT_HEX.sub(lambda m: chr(int(m.group(1), 16)), text)
    if _CONTROL.search(decoded):
        raise _bad("Control characters are not allowed in parameter values")
    return decoded


def encode_xtext(text: str) -> str:
    """Encode text as RFC 3461 §4 xtext (``+``, ``=``, controls and non-ASCII as ``+XX``)."""
    out = []
    for ch in text:
        o = ord(ch)
        if 33 <= o <= 126 and ch not in "+=":
            out.append(ch)
        else:
            out.extend(f"+{b:02X}" for b in ch.encode("utf-8"))
    return "".join(out)


def _split(params: str) -> list[tuple[str, str | None]]:
    out: list[tuple[str, str | None]] = []
    seen: dict[str, str | None] = {}
    for item in params.split():
        key, eq, value = item.partition("=")
        if not _KEYWORD.match(key):
            raise _bad(f"Malformed parameter {key[:30]!r}")
        if eq and not _VALUE.match(value):
            raise _bad(f"Malformed value for parameter {key.upper()}")
        ukey = key.upper()
        val = value if eq else None
        if ukey in seen:
            # The same parameter repeated with the same value (Python's smtplib does this
            # with SMTPUTF8) is harmless; two different values are a contradiction.
            if seen[ukey] == val:
                continue
            raise _bad(f"Parameter {ukey} given twice with different values")
        seen[ukey] = val
        out.append((ukey, val))
    return out


def parse_mail_params(text: str, ext: Extensions) -> MailParams:
    """Parse the parameters after ``MAIL FROM:<...>``.

    Args:
        text: the parameter text (space-separated ``KEY[=VALUE]``), possibly empty.
        ext: what the session advertised.

    Returns:
        The typed MAIL parameters.

    Raises:
        ParamError: see the module docstring.
    """
    size: int | None = None
    body: str | None = None
    smtputf8 = False
    ret: str | None = None
    envid: str | None = None
    auth: str | None = None
    for key, value in _split(text):
        if not ext.esmtp:
            raise _unknown(key)
        if key == "SIZE":
            if value is None or not _SIZE.match(value):
                raise _bad("SIZE needs a number of octets")
            size = int(value)
            if ext.max_size and size > ext.max_size:
                raise ParamError(
                    Reply(552, "5.3.4", "Message size exceeds fixed maximum message size")
                )
        elif key == "BODY":
            if not ext.eightbitmime:
                raise _unknown(key)
            if value is None:
                raise _bad("BODY needs a value")
            uvalue = value.upper()
            if uvalue not in ("7BIT", "8BITMIME"):
                raise _unknown(f"BODY={value[:20]}")
            body = uvalue
        elif key == "SMTPUTF8":
            if not ext.smtputf8:
                raise _unknown(key)
            if value is not None:
                raise _bad("SMTPUTF8 takes no value")
            smtputf8 = True
        elif key == "RET":
            if not ext.dsn:
                raise _unknown(key)
            if value is None or value.upper() not in ("FULL", "HDRS"):
                raise _bad("RET must be FULL or HDRS")
            ret = value.upper()
        elif key == "ENVID":
            if not ext.dsn:
                raise _unknown(key)
            if value is None:
                raise _bad("ENVID needs a value")
            envid = decode_xtext(value)
            if len(envid) > _MAX_ENVID:
                raise _bad("ENVID longer than 100 characters")
        elif key == "AUTH":
            if not ext.auth:
                raise _unknown(key)
            if value is None:
                raise _bad("AUTH needs a value")
            auth = value if value == "<>" else decode_xtext(value)
        else:
            raise _unknown(key)
    return MailParams(
        size=size,
        body=body,  # type: ignore[arg-type]
        smtputf8=smtputf8,
        ret=ret,  # type: ignore[arg-type]
        envid=envid,
        auth=auth,
    )


def parse_rcpt_params(text: str, ext: Extensions) -> RcptParams:
    """Parse the parameters after ``RCPT TO:<...>`` (RFC 3461 §4.1 NOTIFY, §4.2 ORCPT).

    Raises:
        ParamError: see the module docstring.
    """
    notify: frozenset[str] | None = None
    orcpt: tuple[str, str] | None = None
    for key, value in _split(text):
        if not ext.esmtp:
            raise _unknown(key)
        if key == "NOTIFY":
            if not ext.dsn:
                raise _unknown(key)
            if value is None:
                raise _bad("NOTIFY needs a value")
            items = [v.upper() for v in value.split(",")]
            if items == ["NEVER"]:
                notify = frozenset()
            elif items and all(v in ("SUCCESS", "FAILURE", "DELAY") for v in items):
                if len(set(items)) != len(items):
                    raise _bad("NOTIFY lists a value twice")
                notify = frozenset(items)
            else:
                raise _bad("NOTIFY must be NEVER or a list of SUCCESS, FAILURE, DELAY")
        elif key == "ORCPT":
            if not ext.dsn:
                raise _unknown(key)
            if value is None or ";" not in value:
                raise _bad("ORCPT must be addr-type;xtext")
            addr_type, _, addr = value.partition(";")
            if not _ADDR_TYPE.match(addr_type) or not addr:
                raise _bad("ORCPT must be addr-type;xtext")
            orcpt = (addr_type.lower(), decode_xtext(addr))
        else:
            raise _unknown(key)
    return RcptParams(notify=notify, orcpt=orcpt)
