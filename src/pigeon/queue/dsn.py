"""Delivery status notifications: the RFC 3464 multipart/report that tells a sender what
became of a message.

Theory of operation. After a delivery pass the scheduler asks :func:`should_notify` for each
recipient whose state changed (RFC 3461 §4.1 NOTIFY rules), groups the ones that need a
report, and calls :func:`build_dsn` once per message and event. The result is a complete
RFC 5322 message with CRLF line endings, ready for ``enqueue_bytes`` with the null
reverse-path (RFC 5321 §4.5.5). A DSN is never sent about a DSN or to the null reverse-path
(the double-bounce rule): :func:`build_dsn` refuses both.

The report (RFC 6522 §3, RFC 3464 §2) has three parts:

1. ``text/plain``: what happened, for people: each recipient with the reply that decided it;
2. ``message/delivery-status``: per-message fields (``Reporting-MTA``,
   ``Original-Envelope-Id``, ``Arrival-Date``) and one block per recipient
   (``Original-Recipient``, ``Final-Recipient``, ``Action``, ``Status``, ``Remote-MTA``,
   ``Diagnostic-Code``, ``Last-Attempt-Date``, ``Will-Retry-Until``);
3. the original: its header section as ``text/rfc822-headers`` (RFC 6522 §4; the default
   and RET=HDRS) or the whole message as ``message/rfc822`` (RET=FULL, RFC 3461 §4.3).
   The content is read from the spool file in blocks; a message larger than
   :data:`FULL_CONTENT_LIMIT` (or sent with BODY=BINARYMIME, which a text part cannot
   carry) is returned as headers only, and the text part says so.

Internationalised mail (RFC 6533): when any address in the report is not ASCII, the
addresses use the ``utf-8`` address type and the parts become
``message/global-delivery-status`` and ``message/global-headers`` / ``message/global``;
such a report needs SMTPUTF8 to travel, like the message it is about.
"""

from __future__ import annotations

import email.utils
import re
import secrets
from collections.abc import Collection, Iterable
from datetime import UTC, datetime
from pathlib import Path

from pigeon.queue.model import QueuedMessage, QueuedRecipient
from pigeon.storage.ports import DsnAction

__all__ = [
    "FULL_CONTENT_LIMIT",
    "HEADER_LIMIT",
    "DsnAction",
    "build_dsn",
    "should_notify",
]

# RET=FULL returns the whole message only up to this size (bytes): a DSN is mail to a
# person, and returning a 50 MB attachment to its sender helps no one.
FULL_CONTENT_LIMIT = 1024 * 1024
# The most of a header section returned (bytes); Postfix's header_size_limit is 100 KiB.
HEADER_LIMIT = 100 * 1024
_READ_BLOCK = 64 * 1024
# Reply text in a Diagnostic-Code is cut here (characters), so the field stays far below
# the 998-octet line limit of RFC 5322 §2.1.1.
_DIAGNOSTIC_LIMIT = 900

_SUBJECTS: dict[str, str] = {
    "failed": "Undelivered Mail Returned to Sender",
    "delayed": "Delayed Mail (still being retried)",
    "success": "Successful Mail Delivery Report",
}
_DEFAULT_STATUS: dict[str, str] = {
    "failed": "5.0.0",
    "delayed": "4.0.0",
    "delivered": "2.0.0",
    "relayed": "2.0.0",
    "expanded": "2.0.0",
}
_STATUS_RE = re.compile(r"^[245]\.\d{1,3}\.\d{1,3}$")
_UNSAFE = re.compile(r"[\x00-\x1f\x7f]")


def should_notify(
    recipient: QueuedRecipient, action: DsnAction, *, message: QueuedMessage | None = None
) -> bool:
    """Decide whether ``action`` for ``recipient`` is reported to the sender (RFC 3461 §4.1).

    Args:
        recipient: the recipient row (its ``notify`` is None when NOTIFY was not given,
            empty for NOTIFY=NEVER).
        action: what happened.
        message: when given, no report is ever made for a DSN or a message with the null
            reverse-path (RFC 3461 §6.2, RFC 5321 §4.5.5).

    Returns:
        True for ``failed`` and ``delayed`` unless NOTIFY excludes them (the default is
        FAILURE and DELAY), for ``delivered``/``relayed``/``expanded`` only with
        NOTIFY=SUCCESS, never with NOTIFY=NEVER.
    """
    if message is not None and (message.is_dsn or not message.reverse_path):
        return False
    notify = recipient.notify
    if notify is None:
        notify = frozenset({"FAILURE", "DELAY"})
    wanted = {"failed": "FAILURE", "delayed": "DELAY"}.get(action, "SUCCESS")
    return wanted in {n.upper() for n in notify}


def _date(timestamp: float) -> str:
    return email.utils.format_datetime(datetime.fromtimestamp(timestamp, tz=UTC))


def _clean(text: str, *, utf8: bool) -> str:
    text = _UNSAFE.sub(" ", text)
    if not utf8:
        text = text.encode("ascii", "replace").decode("ascii")
    return text


def _addr_field(address: str, addr_type: str = "rfc822") -> str:
    """``addr-type; address`` with the RFC 6533 ``utf-8`` type for non-ASCII addresses."""
    if not address.isascii() and addr_type.lower() == "rfc822":
        addr_type = "utf-8"
    return f"{addr_type}; {address}"


def _status(action: str, recipient: QueuedRecipient) -> str:
    result = recipient.last_result
    if result is not None and _STATUS_RE.match(result.enhanced or ""):
        return result.enhanced
    return _DEFAULT_STATUS[action]


def _remote_mta(host: str) -> str:
    name = host.split("[", 1)[0].strip()
    return name or host.strip("[]")


def _read_original(path: Path, *, full: bool) -> tuple[bytes, bool]:
    """Return (content, complete) read from the spool file.

    With ``full`` the whole file (the caller checked its size); else the header section
    up to :data:`HEADER_LIMIT`, cut after its last complete line.
    """
    chunks: list[bytes] = []
    total = 0
    with open(path, "rb") as src:
        if full:
            while block := src.read(_READ_BLOCK):
                chunks.append(block)
            return _crlf(b"".join(chunks)), True
        data = b""
        while total < HEADER_LIMIT:
            block = src.read(min(_READ_BLOCK, HEADER_LIMIT - total))
            if not block:
                break
            total += len(block)
            data += block
            if b"\n\r\n" in data or b"\n\n" in data or data.startswith((b"\r\n", b"\n")):
                break
    if data.startswith((b"\r\n", b"\n")):
        return b"", True
    for sep in (b"\r\n\r\n", b"\n\n"):
        end = data.find(sep)
        if end != -1:
            return _crlf(data[: end + len(sep) // 2]), True
    cut = data.rfind(b"\n")
    return _crlf(data[: cut + 1] if cut != -1 else b""), False


def _crlf(data: bytes) -> bytes:
    """Normalise line endings to CRLF."""
    return re.sub(rb"\r?\n", b"\r\n", data)


def _subject(actions: Collection[str]) -> str:
    if "failed" in actions:
        return _SUBJECTS["failed"]
    if "delayed" in actions:
        return _SUBJECTS["delayed"]
    return _SUBJECTS["success"]


def _human_text(
    message: QueuedMessage,
    entries: list[tuple[QueuedRecipient, DsnAction]],
    *,
    reporting_mta: str,
    will_retry_until: float | None,
    note: str | None,
    utf8: bool,
) -> str:
    actions = {a for _, a in entries}
    lines = [f"This is the mail system at host {reporting_mta}.", ""]
    if "failed" in actions:
        lines += [
            "I'm sorry to have to inform you that your message could not",
            "be delivered to one or more recipients. It's attached below.",
            "",
            "For further assistance, please send mail to postmaster.",
            "",
        ]
    if "delayed" in actions:
        lines += [
            "Your message could not be delivered yet to one or more recipients.",
            "This is only a warning: you do not need to send the message again.",
        ]
        if will_retry_until is not None:
            lines.append(f"The mail system will keep trying until {_date(will_retry_until)}.")
        lines.append("")
    if actions & {"delivered", "relayed", "expanded"}:
        lines += [
            "Your message was successfully delivered to the destinations listed below.",
            "",
        ]
    lines += ["                   The mail system", ""]
    for recipient, action in entries:
        result = recipient.last_result
        address = _clean(recipient.address, utf8=utf8)
        if result is None:
            lines.append(f"<{address}>: {action}")
        else:
            text = _clean(result.text, utf8=utf8)[:_DIAGNOSTIC_LIMIT]
            where = f" (from {_clean(result.remote_host, utf8=utf8)})" if result.remote_host else ""
            lines.append(
                f"<{address}>: {action}{where}: {result.code} {result.enhanced} {text}".rstrip()
            )
    if note:
        lines += ["", note]
    return "\r\n".join(lines) + "\r\n"


def _status_part(
    message: QueuedMessage,
    entries: list[tuple[QueuedRecipient, DsnAction]],
    *,
    reporting_mta: str,
    arrival_date: float,
    now: float,
    will_retry_until: float | None,
    utf8: bool,
) -> str:
    fields = [f"Reporting-MTA: dns; {reporting_mta}", f"X-Pigeon-Queue-ID: {message.queue_id}"]
    if message.envid:
        fields.append(f"Original-Envelope-Id: {_clean(message.envid, utf8=utf8)}")
    fields.append(f"Arrival-Date: {_date(arrival_date)}")
    blocks = ["\r\n".join(fields)]
    for recipient, action in entries:
        lines = []
        if recipient.orcpt is not None:
            addr_type, address = recipient.orcpt
            lines.append(
                "Original-Recipient: " + _clean(_addr_field(address, addr_type), utf8=utf8)
            )
        elif recipient.original and recipient.original.lower() != recipient.address.lower():
            lines.append("Original-Recipient: " + _clean(_addr_field(recipient.original),
                                                         utf8=utf8))
        lines.append("Final-Recipient: " + _clean(_addr_field(recipient.address), utf8=utf8))
        lines.append(f"Action: {action}")
        lines.append(f"Status: {_status(action, recipient)}")
        result = recipient.last_result
        if result is not None and result.remote_host:
            lines.append(f"Remote-MTA: dns; {_clean(_remote_mta(result.remote_host), utf8=utf8)}")
        if result is not None:
            text = _clean(result.text, utf8=utf8)[:_DIAGNOSTIC_LIMIT]
            lines.append(f"Diagnostic-Code: smtp; {result.code} {result.enhanced} {text}".rstrip())
        if recipient.attempts > 0 or result is not None:
            lines.append(f"Last-Attempt-Date: {_date(now)}")
        if action == "delayed" and will_retry_until is not None:
            lines.append(f"Will-Retry-Until: {_date(will_retry_until)}")
        blocks.append("\r\n".join(lines))
    return "\r\n\r\n".join(blocks) + "\r\n"


def _needs_utf8(message: QueuedMessage, entries: Iterable[tuple[QueuedRecipient, str]]) -> bool:
    texts = [message.reverse_path]
    for recipient, _ in entries:
        texts += [recipient.address, recipient.original]
        if recipient.orcpt is not None:
            texts.append(recipient.orcpt[1])
    return not all(t.isascii() for t in texts)


def build_dsn(
    message: QueuedMessage,
    entries: list[tuple[QueuedRecipient, DsnAction]],
    *,
    reporting_mta: str,
    arrival_date: float,
    now: float,
    will_retry_until: float | None = None,
) -> bytes:
    """Build the delivery status notification for some recipients of a message.

    RFC 3464 (the report), RFC 6522 (multipart/report), RFC 3461 §6 (what to return),
    RFC 3834 (``Auto-Submitted: auto-replied``), RFC 6533 (UTF-8 addresses).

    Args:
        message: the queued message the report is about; its content is read from
            ``message.spool_path``.
        entries: the recipients to report and what happened to each.
        reporting_mta: this server's host name (``settings.server.hostname``).
        arrival_date: when the message arrived (Unix seconds).
        now: the time of the report and of the last attempt (Unix seconds).
        will_retry_until: for ``delayed`` entries, when the queue gives up (Unix seconds).

    Returns:
        The complete message (headers and body), CRLF line endings, addressed ``To:`` the
        message's reverse-path.

    Raises:
        ValueError: ``entries`` is empty, the message has the null reverse-path, or the
            message is itself a DSN.
    """
    if not entries:
        raise ValueError("a DSN needs at least one recipient")
    if not message.reverse_path:
        raise ValueError("no DSN is sent to the null reverse-path (RFC 5321 §4.5.5)")
    if message.is_dsn:
        raise ValueError("no DSN is sent about a DSN (RFC 3461 §6.2)")
    utf8 = _needs_utf8(message, entries) or message.smtputf8
    actions = {a for _, a in entries}

    # The original: whole (RET=FULL, small enough, not binary) or its header section.
    want_full = (message.ret or "").upper() == "FULL"
    note: str | None = None
    original: bytes | None
    full = want_full
    try:
        size = max(message.size, message.spool_path.stat().st_size)
    except OSError:
        size = message.size
    if want_full and size > FULL_CONTENT_LIMIT:
        full = False
        note = (f"The message is larger than {FULL_CONTENT_LIMIT // 1024} KiB, so only its "
                "header section is returned.")
    elif want_full and (message.body or "").upper() == "BINARYMIME":
        full = False
        note = "The message was sent as binary MIME, so only its header section is returned."
    try:
        original, complete = _read_original(message.spool_path, full=full)
        if not complete:
            note = ((note + " ") if note else "") + (
                f"The header section is longer than {HEADER_LIMIT // 1024} KiB and was cut."
            )
    except OSError:
        original = None
        note = "The original message could not be read, so it is not returned."

    text = _human_text(message, entries, reporting_mta=reporting_mta,
                       will_retry_until=will_retry_until, note=note, utf8=utf8)
    status = _status_part(message, entries, reporting_mta=reporting_mta,
                          arrival_date=arrival_date, now=now,
                          will_retry_until=will_retry_until, utf8=utf8)

    # RFC 2046 §5.1.1: at most 70 characters, and it must not occur in the content.
    boundary = f"{message.queue_id}.{int(now)}/{secrets.token_hex(8)}"
    while original is not None and b"--" + boundary.encode() in original:
        boundary = f"{message.queue_id}.{int(now)}/{secrets.token_hex(8)}"

    def cte(data: bytes) -> str:
        return "7bit" if data.isascii() else "8bit"

    text_bytes = text.encode("utf-8")
    status_bytes = status.encode("utf-8")
    eight_bit = not (text_bytes.isascii() and status_bytes.isascii()
                     and (original is None or original.isascii()))
    message_id = email.utils.make_msgid(idstring=message.queue_id, domain=reporting_mta)
    reverse_path = _clean(message.reverse_path, utf8=True)
    headers = [
        f"From: Mail Delivery System <MAILER-DAEMON@{reporting_mta}>",
        f"To: <{reverse_path}>",
        f"Subject: {_subject(actions)}",
        f"Date: {_date(now)}",
        f"Message-ID: {message_id}",
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        "Content-Type: multipart/report; report-type=delivery-status;",
        f'\tboundary="{boundary}"',
        f"Content-Transfer-Encoding: {'8bit' if eight_bit else '7bit'}",
    ]
    out: list[bytes] = [
        "\r\n".join(headers).encode("utf-8"), b"\r\n\r\n",
        b"This is a MIME-encapsulated message.\r\n\r\n",
        f"--{boundary}\r\n".encode(),
        b"Content-Description: Notification\r\n",
        b"Content-Type: text/plain; charset=utf-8\r\n",
        f"Content-Transfer-Encoding: {cte(text_bytes)}\r\n\r\n".encode(),
        text_bytes,
        f"\r\n--{boundary}\r\n".encode(),
        b"Content-Description: Delivery report\r\n",
        f"Content-Type: message/{'global-' if utf8 else ''}delivery-status\r\n".encode(),
        f"Content-Transfer-Encoding: {cte(status_bytes)}\r\n\r\n".encode(),
        status_bytes,
    ]
    if original is not None:
        if full:
            kind = "message/global" if utf8 else "message/rfc822"
            description = "Undelivered Message" if "failed" in actions else "Message"
        else:
            kind = "message/global-headers" if utf8 else "text/rfc822-headers"
            description = ("Undelivered Message Headers" if "failed" in actions
                           else "Message Headers")
        out += [
            f"\r\n--{boundary}\r\n".encode(),
            f"Content-Description: {description}\r\n".encode(),
            f"Content-Type: {kind}\r\n".encode(),
            f"Content-Transfer-Encoding: {cte(original)}\r\n\r\n".encode(),
            original,
        ]
        if original and not original.endswith(b"\r\n"):
            out.append(b"\r\n")
    out.append(f"\r\n--{boundary}--\r\n".encode())
    return b"".join(out)
