"""Compose an RFC 5322 message with MIME parts from what the user asked for.

The stdlib :mod:`email` package does the MIME work (``EmailMessage`` with the SMTP policy:
CRLF line endings, lines folded at 78 characters):

- non-ASCII header text is RFC 2047 encoded-words; when an address has a non-ASCII local
  part the whole message uses RFC 6532 UTF-8 headers instead and needs SMTPUTF8;
- text bodies are UTF-8 with a 7-bit transfer encoding chosen per body (``7bit`` when the
  text is ASCII with short lines, else ``quoted-printable`` or ``base64``, whichever is
  shorter), so the message is valid for any server, 8BITMIME or not (RFC 2045 §6);
- a text and an HTML body become ``multipart/alternative`` (RFC 2046 §5.1.4), plain text
  first; attachments make it ``multipart/mixed`` with base64 parts whose type is guessed
  from the file name (``application/octet-stream`` when unknown);
- ``Date`` (RFC 5322 §3.6.1) and ``Message-ID`` (RFC 5322 §3.6.4) are always set;
- Bcc recipients go into the envelope only: no ``Bcc`` field is ever written (RFC 5322
  §3.6.3 allows leaving it out, which is the only way no recipient learns of them).
"""

from __future__ import annotations

import email.policy
import email.utils
import mimetypes
import re
import time
from dataclasses import dataclass, field
from email.headerregistry import Address
from email.message import EmailMessage, MIMEPart
from pathlib import Path

from pigeon.mua.addresses import HeaderAddress

__all__ = [
    "Attachment",
    "ComposeError",
    "ComposedMessage",
    "Draft",
    "attachment_from_file",
    "compose",
    "message_policy",
    "parse_header_option",
]

#: Fields the options set; ``--header`` may not set them (it would duplicate or undo them).
RESERVED_FIELDS = frozenset({
    "from", "to", "cc", "bcc", "subject", "reply-to", "mime-version", "content-type",
    "content-transfer-encoding", "content-disposition", "resent-bcc",
})
# RFC 5322 §3.6.8: field-name = 1*ftext, ftext = %d33-57 / %d59-126.
_FIELD_NAME_RE = re.compile(r"[\x21-\x39\x3b-\x7e]+")
# RFC 5322 §2.1.1: a line must not exceed 998 characters; leave room for the field name.
_MAX_HEADER_VALUE = 900


class ComposeError(ValueError):
    """The message cannot be built as asked; the text says why."""


@dataclass(frozen=True, slots=True)
class Attachment:
    """A file attached to the message.

    Attributes:
        filename: the name shown to the recipient (RFC 2183 ``filename``; RFC 2231 encoded
            when non-ASCII).
        content: the bytes, any binary.
        content_type: ``maintype/subtype``.
    """

    filename: str
    content: bytes
    content_type: str = "application/octet-stream"


def attachment_from_file(path: Path) -> Attachment:
    """Read a file to attach and guess its MIME type from its name.

    Args:
        path: the file.

    Returns:
        The attachment (``application/octet-stream`` when the type is unknown or the file
        is compressed, since a guessed ``Content-Encoding`` has no MIME equivalent).

    Raises:
        ComposeError: the file cannot be read.
    """
    try:
        content = path.read_bytes()
    except OSError as exc:
        raise ComposeError(f"cannot read attachment {path}: {exc.strerror}") from None
    guessed, encoding = mimetypes.guess_type(path.name, strict=False)
    content_type = guessed if guessed and encoding is None else "application/octet-stream"
    return Attachment(path.name, content, content_type)


def _attachable_type(content_type: str) -> tuple[str, str]:
    """(maintype, subtype) for a base64 attachment.

    ``message/*`` and ``multipart/*`` may not be base64 encoded (RFC 2045 §6.4, RFC 2046
    §5.2.1), so such files are sent as ``application/octet-stream``.
    """
    maintype, _, subtype = content_type.lower().partition("/")
    if not maintype or not subtype or maintype in ("message", "multipart"):
        return "application", "octet-stream"
    return maintype, subtype


def parse_header_option(text: str) -> tuple[str, str]:
    """Parse ``--header "Name: value"``.

    Args:
        text: the option value.

    Returns:
        (field name, value) with the value stripped.

    Raises:
        ComposeError: no colon, an invalid field name (RFC 5322 §3.6.8), a line break in
            the value, a value too long for one line, or a field the other options set.
    """
    name, colon, value = text.partition(":")
    name = name.strip()
    if not colon or not name:
        raise ComposeError(f"--header {text!r}: expected \"Name: value\"")
    if not _FIELD_NAME_RE.fullmatch(name):
        raise ComposeError(f"--header {text!r}: {name!r} is not a valid field name")
    if any(ch in value for ch in "\r\n\x00"):
        raise ComposeError(f"--header {name}: the value may not contain line breaks")
    value = value.strip()
    if len(value) > _MAX_HEADER_VALUE:
        raise ComposeError(f"--header {name}: the value is longer than {_MAX_HEADER_VALUE}")
    if name.lower() in RESERVED_FIELDS:
        raise ComposeError(f"--header {name}: use the option for this field instead")
    return name, value


@dataclass(slots=True)
class Draft:
    """What the user asked for.

    Attributes:
        author: the ``From`` address (RFC 5322 §3.6.2); also the reverse-path unless
            ``envelope_from`` is set.
        to, cc, bcc: the recipients by field; ``bcc`` only reaches the envelope.
        subject: the subject (any Unicode).
        text: the plain text body, or None.
        html: the HTML body, or None.
        attachments: files to attach, in order.
        reply_to: ``Reply-To`` addresses.
        headers: extra fields (name, value) in order, from ``--header``.
        envelope_from: the reverse-path, when it differs from ``author``.
        date: Unix time for ``Date`` (default: now).
        message_id: the ``Message-ID`` with angle brackets (default: a new one).
    """

    author: HeaderAddress
    to: list[HeaderAddress] = field(default_factory=list)
    cc: list[HeaderAddress] = field(default_factory=list)
    bcc: list[HeaderAddress] = field(default_factory=list)
    subject: str = ""
    text: str | None = None
    html: str | None = None
    attachments: list[Attachment] = field(default_factory=list)
    reply_to: list[HeaderAddress] = field(default_factory=list)
    headers: list[tuple[str, str]] = field(default_factory=list)
    envelope_from: HeaderAddress | None = None
    date: float | None = None
    message_id: str | None = None


@dataclass(frozen=True, slots=True)
class ComposedMessage:
    """A message ready to submit: the content and its envelope.

    Attributes:
        content: the RFC 5322 message, CRLF line endings.
        reverse_path: the MAIL FROM mailbox text (``alice@example.com``).
        recipients: forward-path mailbox texts in order (To, Cc, Bcc), without duplicates.
        smtputf8: the transaction needs SMTPUTF8 (RFC 6531): an address has a non-ASCII
            local part, so the header is UTF-8 (RFC 6532).
        eight_bit: the content has bytes above 127 (BODY=8BITMIME, RFC 6152).
        message_id: the Message-ID field's value.
    """

    content: bytes
    reverse_path: str
    recipients: list[str]
    smtputf8: bool
    eight_bit: bool
    message_id: str


def message_policy(*, utf8: bool) -> email.policy.EmailPolicy[EmailMessage]:
    """The policy messages are built with: SMTP (CRLF), 7-bit body encodings.

    Args:
        utf8: write RFC 6532 UTF-8 headers instead of RFC 2047 encoded-words.

    Returns:
        The policy.
    """
    return email.policy.SMTP.clone(cte_type="7bit", utf8=utf8)


def _address(item: HeaderAddress) -> Address:
    mailbox = item.mailbox
    domain = mailbox.domain.name if mailbox.domain is not None else ""
    return Address(display_name=item.display_name, username=mailbox.local_part, domain=domain)


def _unique(addresses: list[str]) -> list[str]:
    seen: set[str] = set()
    out: list[str] = []
    for address in addresses:
        key = address.lower()
        if key not in seen:
            seen.add(key)
            out.append(address)
    return out


def compose(draft: Draft) -> ComposedMessage:
    """Build the message and its envelope.

    Args:
        draft: what to send.

    Returns:
        The composed message.

    Raises:
        ComposeError: there is no recipient, or the subject has a line break.
    """
    everyone = [*draft.to, *draft.cc, *draft.bcc]
    if not everyone:
        raise ComposeError("no recipients: give --to, --cc or --bcc")
    if any(ch in draft.subject for ch in "\r\n\x00"):
        raise ComposeError("the subject may not contain line breaks")
    envelope_from = draft.envelope_from or draft.author
    header_addresses = [draft.author, *draft.to, *draft.cc, *draft.reply_to]
    smtputf8 = any(a.needs_smtputf8 for a in [*header_addresses, *draft.bcc, envelope_from])
    policy = message_policy(utf8=smtputf8)

    msg = EmailMessage(policy=policy)
    msg["From"] = _address(draft.author)
    if draft.to:
        msg["To"] = [_address(a) for a in draft.to]
    if draft.cc:
        msg["Cc"] = [_address(a) for a in draft.cc]
    if draft.reply_to:
        msg["Reply-To"] = [_address(a) for a in draft.reply_to]
    if draft.subject:
        msg["Subject"] = draft.subject
    msg["Date"] = email.utils.formatdate(
        draft.date if draft.date is not None else time.time(), localtime=True
    )
    message_id = draft.message_id or email.utils.make_msgid(
        domain=draft.author.mailbox.domain.name if draft.author.mailbox.domain else None
    )
    msg["Message-ID"] = message_id
    # A --header Date or Message-ID replaces the generated one.
    for name in {name.lower() for name, _ in draft.headers} & {"date", "message-id"}:
        del msg[name]
    for name, value in draft.headers:
        msg[name] = value
    message_id = str(msg["Message-ID"])

    if draft.text is not None:
        msg.set_content(draft.text)
        if draft.html is not None:
            msg.add_alternative(draft.html, subtype="html")
    elif draft.html is not None:
        msg.set_content(draft.html, subtype="html")
    else:
        msg.set_content("")
    for item in draft.attachments:
        maintype, subtype = _attachable_type(item.content_type)
        msg.add_attachment(item.content, maintype=maintype, subtype=subtype,
                           filename=item.filename)
    for part in msg.iter_parts() if msg.is_multipart() else ():
        _drop_inner_mime_version(part)

    content = msg.as_bytes(policy=policy)
    recipients = _unique([a.addr_spec for a in everyone])
    return ComposedMessage(
        content=content,
        reverse_path=envelope_from.addr_spec,
        recipients=recipients,
        smtputf8=smtputf8,
        eight_bit=not content.isascii(),
        message_id=message_id,
    )


def _drop_inner_mime_version(part: MIMEPart) -> None:
    """MIME-Version belongs in the top-level header only (RFC 2045 §4)."""
    del part["MIME-Version"]
    if part.is_multipart():
        for sub in part.iter_parts():
            _drop_inner_mime_version(sub)
