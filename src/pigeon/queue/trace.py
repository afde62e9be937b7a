"""The Received trace header (RFC 5321 §4.4, RFC 3848 ``with`` keywords).

Pigeon prepends exactly one Received header to every message it accepts, before the first
byte of content is spooled, so the spool file holds the content as it will be delivered.
"""

from __future__ import annotations

import email.utils
import re
import time

from pigeon.mail.envelope import Envelope

__all__ = ["local_date", "protocol_keyword", "received_header"]

# RFC 5321 §4.1.2 Domain, loosely (underscore tolerated): used to decide whether the
# HELO/EHLO argument may appear as the "from" domain or only inside a comment.
_DOMAIN_RE = re.compile(r"^(?=.{1,255}$)[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
                        r"(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)*$")
_LITERAL_RE = re.compile(r"^\[(?:IPv6:)?[0-9A-Fa-f:.]+\]$")
_COMMENT_UNSAFE = re.compile(r"[^\x21-\x27\x2a-\x5b\x5d-\x7e ]")


def protocol_keyword(*, esmtp: bool, tls: bool, authenticated: bool, smtputf8: bool) -> str:
    """Return the RFC 3848 / RFC 6531 ``with`` keyword for a session.

    Args:
        esmtp: the client greeted with EHLO (else HELO: ``SMTP``).
        tls: the session is protected by TLS (STARTTLS or implicit TLS).
        authenticated: the client authenticated with SMTP AUTH.
        smtputf8: the transaction used SMTPUTF8 (RFC 6531 §3.7.3: ``UTF8SMTP...``).

    Returns:
        One of SMTP, ESMTP, ESMTPS, ESMTPA, ESMTPSA, UTF8SMTP, UTF8SMTPS, UTF8SMTPA,
        UTF8SMTPSA.
    """
    if not esmtp:
        return "SMTP"
    base = "UTF8SMTP" if smtputf8 else "ESMTP"
    suffix = ("S" if tls else "") + ("A" if authenticated else "")
    return base + suffix


# The last date made by local_date(): (whole second, its text).
_last_date: tuple[int, str] = (-1, "")


def local_date(timestamp: float | None = None) -> str:
    """Return ``email.utils.formatdate(timestamp, localtime=True)``, made once per second.

    The RFC 5322 §3.3 date-time (``Mon, 02 Jan 2026 03:04:05 +0100``) has no fraction of
    a second, so every timestamp of one second has the same text; the text of the second
    seen last is kept and reused.

    Args:
        timestamp: Unix time in seconds (default: now).

    Returns:
        The date-time in the local time zone, as ``formatdate`` writes it.
    """
    if timestamp is None:
        timestamp = time.time()
    global _last_date
    second = int(timestamp)
    # formatdate rounds to the microsecond: in the last microsecond of a second it may
    # round up into the next one, so that case is not taken from (or put in) the memo.
    if 0 <= timestamp - second < 0.999999:
        last_second, text = _last_date
        if last_second == second:
            return text
        text = email.utils.formatdate(timestamp, localtime=True)
        _last_date = (second, text)
        return text
    return email.utils.formatdate(timestamp, localtime=True)


def _comment(text: str) -> str:
    return _COMMENT_UNSAFE.sub("?", text)[:200]


def received_header(
    envelope: Envelope,
    queue_id: str,
    hostname: str,
    *,
    tls_info: str | None = None,
    timestamp: float | None = None,
) -> bytes:
    """Build the Received header for a message being accepted.

    Args:
        envelope: the transaction's envelope (client address and name, protocol, recipients).
        queue_id: the queue id given to the message.
        hostname: this server's name (the ``by`` clause).
        tls_info: e.g. ``"TLSv1.3 TLS_AES_256_GCM_SHA384"`` when the session used TLS.
        timestamp: Unix time in seconds (default: now).

    Returns:
        The header field as bytes, folded, ending with CRLF. Peer-supplied text is
        sanitised so it can never add a line or a field.
    """
    parts = []
    helo = envelope.client_name
    addr = envelope.client_address
    if addr:
        literal = f"[IPv6:{addr}]" if ":" in addr else f"[{addr}]"
        if helo and (_DOMAIN_RE.match(helo) or _LITERAL_RE.match(helo)):
            parts.append(f"from {helo} ({literal})")
        elif helo:
            parts.append(f"from {literal} (helo={_comment(helo)})")
        else:
            parts.append(f"from {literal}")
    by = f"by {hostname} (Pigeon) with {envelope.protocol}"
    if tls_info:
        by += f" ({_comment(tls_info)})"
    parts.append(by)
    parts.append(f"id {queue_id}")
    if len(envelope.recipients) == 1:
        parts.append(f"for {envelope.recipients[0].forward_path}")
    date = local_date(timestamp)
    text = "Received: " + "\r\n\t".join(parts) + f";\r\n\t{date}\r\n"
    # Belt and braces: nothing peer-supplied may carry a bare CR or LF into the header.
    # When every CR and every LF is part of a CRLF there is nothing to replace.
    crlf = text.count("\r\n")
    if text.count("\r") != crlf or text.count("\n") != crlf:
        lines = text.split("\r\n")
        text = "\r\n".join(line.replace("\r", "?").replace("\n", "?") for line in lines)
    return text.encode("utf-8")
