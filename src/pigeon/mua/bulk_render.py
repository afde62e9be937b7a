"""Bulk mail content: the recipient list (CSV) and the personalised message of each row.

The recipient list is a UTF-8 CSV file with a header row. The ``email`` column is required;
every column becomes a template variable (also reachable as ``row["column name"]`` when the
name is not a Python identifier). An address that is not a valid mailbox (RFC 5321
§4.1.2) or that repeats an earlier row is reported and skipped, never fatal.

Messages are jinja2 templates, either

- one template of a whole RFC 5322 message (header fields, an empty line, the body), or
- a subject template and a text and/or HTML body template (HTML is autoescaped), composed
  like ``pigeon send`` does (:mod:`pigeon.mua.compose`).

Undefined variables are errors (``StrictUndefined``), checked on the first row before
anything is sent. Every message gets ``To`` (the row's address, with the ``name`` column as
display name when there is one), ``Date`` and ``Message-ID`` when the template has none, and
optionally ``List-Unsubscribe`` (RFC 2369 §3.2) and ``List-Unsubscribe-Post:
List-Unsubscribe=One-Click`` (RFC 8058 §3.1, which requires an HTTPS URI).
"""

from __future__ import annotations

import csv
import email.utils
import io
import time
from dataclasses import dataclass, field
from email.message import EmailMessage, Message
from email.parser import Parser
from email.policy import EmailPolicy
from pathlib import Path
from typing import Any, Literal

import jinja2

from pigeon.mail.address import AddressError, parse_mailbox
from pigeon.mua.addresses import HeaderAddress
from pigeon.mua.bulk_state import campaign_fingerprint
from pigeon.mua.compose import ComposedMessage, ComposeError, Draft, compose, message_policy
from pigeon.mua.fastmime import format_address, header_value, simple_message

__all__ = [
    "BulkError",
    "BulkRecipient",
    "BulkRenderer",
    "BulkTemplates",
    "RecipientList",
    "RenderError",
    "SkippedRow",
    "load_recipients",
    "parse_recipients",
]

#: The largest recipient file read, in bytes (a million rows of ~100 bytes).
MAX_CSV_BYTES = 100 * 1024 * 1024


class BulkError(ValueError):
    """The campaign cannot run as given (bad file, bad template); the text says why."""


class RenderError(ValueError):
    """One recipient's message could not be made; the text says why."""


@dataclass(frozen=True, slots=True)
class BulkRecipient:
    """One row of the recipient list.

    Attributes:
        row: the data row number (1 = the first row after the header).
        address: the recipient for the To field and the envelope.
        key: the key in the state file (case-insensitive mailbox key).
        variables: the row's columns by name.
    """

    row: int
    address: HeaderAddress
    key: str
    variables: dict[str, str]

    @property
    def email(self) -> str:
        """The forward-path mailbox text."""
        return self.address.addr_spec

    @property
    def domain(self) -> str:
        """The recipient's domain (A-labels)."""
        domain = self.address.mailbox.domain
        return domain.name if domain is not None else ""


@dataclass(frozen=True, slots=True)
class SkippedRow:
    """A row that is not sent to.

    Attributes:
        row: the data row number.
        email: the ``email`` cell as written.
        status: ``invalid`` (not a mailbox) or ``duplicate`` (an earlier row has it).
        reason: why, for the report.
    """

    row: int
    email: str
    status: Literal["invalid", "duplicate"]
    reason: str


@dataclass(slots=True)
class RecipientList:
    """The parsed recipient list.

    Attributes:
        columns: the column names, in file order.
        recipients: the rows to send to, in file order.
        skipped: the rows that are not sent to.
    """

    columns: list[str] = field(default_factory=list)
    recipients: list[BulkRecipient] = field(default_factory=list)
    skipped: list[SkippedRow] = field(default_factory=list)

    @property
    def rows(self) -> int:
        """Data rows in the file."""
        return len(self.recipients) + len(self.skipped)


def parse_recipients(text: str) -> RecipientList:
    """Parse a recipient list (CSV with a header row and an ``email`` column).

    Args:
        text: the file's text.

    Returns:
        The recipients and the skipped rows.

    Raises:
        BulkError: no header row, no ``email`` column, or duplicate column names.
    """
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        raise BulkError("the recipient list is empty (it needs a header row)") from None
    except csv.Error as exc:
        raise BulkError(f"the recipient list is not valid CSV: {exc}") from None
    columns = [name.strip() for name in header]
    lowered = [c.lower() for c in columns]
    if "email" not in lowered:
        raise BulkError("the recipient list needs an 'email' column in its header row")
    duplicates = sorted({c for c in columns if c and columns.count(c) > 1})
    if duplicates:
        raise BulkError(f"the recipient list repeats the column {duplicates[0]!r}")
    email_index = lowered.index("email")
    result = RecipientList(columns=columns)
    first_row: dict[str, int] = {}
    try:
        for number, cells in enumerate(reader, start=1):
            if not any(cell.strip() for cell in cells):
                continue  # blank line
            variables = {
                name: (cells[i] if i < len(cells) else "")
                for i, name in enumerate(columns) if name
            }
            written = cells[email_index].strip() if email_index < len(cells) else ""
            _add_row(result, first_row, number, written, variables)
    except csv.Error as exc:
        raise BulkError(f"the recipient list is not valid CSV: {exc}") from None
    return result


def _add_row(
    result: RecipientList, first_row: dict[str, int], number: int, written: str,
    variables: dict[str, str],
) -> None:
    try:
        if not written:
            raise AddressError("the email cell is empty")
        if any(ch in written for ch in "<>,\"") and "@" in written:
            raise AddressError("write the bare address (local-part@domain)")
        mailbox = parse_mailbox(written, smtputf8=True)
    except AddressError as exc:
        result.skipped.append(SkippedRow(number, written, "invalid", exc.reply.text))
        return
    key = mailbox.canonical_key()
    if key in first_row:
        result.skipped.append(
            SkippedRow(number, written, "duplicate", f"same address as row {first_row[key]}")
        )
        return
    first_row[key] = number
    name = next((v for k, v in variables.items() if k.lower() == "name"), "").strip()
    if any(ch in name for ch in "\r\n"):
        name = " ".join(name.split())
    result.recipients.append(BulkRecipient(number, HeaderAddress(name, mailbox), key, variables))


def load_recipients(path: Path) -> RecipientList:
    """Read a recipient list file.

    Args:
        path: the CSV file (UTF-8, a byte order mark is allowed).

    Returns:
        The parsed list.

    Raises:
        BulkError: the file cannot be read, is too big, is not UTF-8 or is not usable.
    """
    try:
        size = path.stat().st_size
        if size > MAX_CSV_BYTES:
            raise BulkError(f"{path}: larger than {MAX_CSV_BYTES} bytes")
        data = path.read_bytes()
    except OSError as exc:
        raise BulkError(f"cannot read {path}: {exc.strerror}") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise BulkError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    return parse_recipients(text)


@dataclass(frozen=True, slots=True)
class BulkTemplates:
    """What every message is made from.

    Attributes:
        message: a jinja2 template of a whole RFC 5322 message, or None.
        subject: a subject template (with ``text``/``html``), or None.
        text: a plain text body template, or None.
        html: an HTML body template (autoescaped), or None.
        author: the From address (required unless the message template has From).
        envelope_from: the reverse-path, when not the From address.
        list_unsubscribe: URI templates for List-Unsubscribe (``mailto:``/``https:``).
        one_click: add ``List-Unsubscribe-Post: List-Unsubscribe=One-Click``.
        headers: extra header fields (name, value template).
    """

    message: str | None = None
    subject: str | None = None
    text: str | None = None
    html: str | None = None
    author: HeaderAddress | None = None
    envelope_from: HeaderAddress | None = None
    list_unsubscribe: tuple[str, ...] = ()
    one_click: bool = False
    headers: tuple[tuple[str, str], ...] = ()


def _compile(env: jinja2.Environment, source: str | None, what: str) -> jinja2.Template | None:
    if source is None:
        return None
    try:
        return env.from_string(source)
    except jinja2.TemplateSyntaxError as exc:
        raise BulkError(f"{what} template, line {exc.lineno}: {exc.message}") from None


class BulkRenderer:
    """Makes each recipient's message from the templates.

    Args:
        templates: the templates and fixed parts.

    Raises:
        BulkError: the templates do not make a message (none given, both kinds given, a
            syntax error, One-Click without List-Unsubscribe).
    """

    def __init__(self, templates: BulkTemplates) -> None:
        self.templates = templates
        parts = (templates.subject, templates.text, templates.html)
        if templates.message is not None and any(p is not None for p in parts):
            raise BulkError("give either --template or --subject/--text/--html, not both")
        if templates.message is None and templates.text is None and templates.html is None:
            raise BulkError("give --template, or --text and/or --html")
        if templates.message is None and templates.author is None:
            raise BulkError("--from is required with --subject/--text/--html")
        if templates.one_click and not templates.list_unsubscribe:
            raise BulkError("--one-click needs --list-unsubscribe with an https: URI")
        plain = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                                   autoescape=False)
        html = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                                  autoescape=True)
        self._message = _compile(plain, templates.message, "message")
        self._subject = _compile(plain, templates.subject, "subject")
        self._text = _compile(plain, templates.text, "text")
        self._html = _compile(html, templates.html, "html")
        self._unsubscribe = [_compile(plain, uri, "List-Unsubscribe")
                             for uri in templates.list_unsubscribe]
        self._headers = [(name, _compile(plain, value, name)) for name, value in templates.headers]
        # Messages that need SMTPUTF8 or that set Date/Message-ID themselves go through
        # compose(); all others through the fast writer.
        senders = [a for a in (templates.author, templates.envelope_from) if a is not None]
        self._needs_compose = any(a.needs_smtputf8 for a in senders) or any(
            name.lower() in ("date", "message-id") for name, _ in templates.headers)
        author = templates.author
        self._from_field = (format_address(author.display_name, author.addr_spec)
                            if author is not None else "")

    def fingerprint(self) -> str:
        """The campaign fingerprint for the state file."""
        t = self.templates
        return campaign_fingerprint([
            t.message or "", t.subject or "", t.text or "", t.html or "",
            str(t.author or ""), str(t.envelope_from or ""), *t.list_unsubscribe,
            str(t.one_click), *(f"{n}: {v}" for n, v in t.headers),
        ])

    @staticmethod
    def _context(recipient: BulkRecipient) -> dict[str, Any]:
        context: dict[str, Any] = dict(recipient.variables)
        context["row"] = dict(recipient.variables)
        context["email"] = recipient.email
        return context

    def _render(self, template: jinja2.Template | None, context: dict[str, Any],
                what: str) -> str | None:
        if template is None:
            return None
        try:
            return template.render(context)
        except jinja2.TemplateError as exc:
            raise RenderError(f"{what} template: {exc}") from None

    def _list_headers(self, context: dict[str, Any]) -> list[tuple[str, str]]:
        uris: list[str] = []
        for template in self._unsubscribe:
            uri = (self._render(template, context, "List-Unsubscribe") or "").strip()
            scheme = uri.partition(":")[0].lower()
            if scheme not in ("mailto", "https", "http") or any(
                ch in uri for ch in " <>\r\n\t"
            ):
                raise RenderError(f"List-Unsubscribe URI {uri!r} is not a mailto: or https: URI")
            uris.append(uri)
        out: list[tuple[str, str]] = []
        if uris:
            out.append(("List-Unsubscribe", ", ".join(f"<{u}>" for u in uris)))
        if self.templates.one_click:
            if not any(u.lower().startswith("https:") for u in uris):
                raise RenderError("One-Click unsubscription needs an https: URI (RFC 8058 §3.1)")
            out.append(("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"))
        for name, template in self._headers:
            value = self._render(template, context, name) or ""
            out.append((name, " ".join(value.split())))
        return out

    def render(self, recipient: BulkRecipient, *, now: float | None = None) -> ComposedMessage:
        """Make one recipient's message.

        Args:
            recipient: the row.
            now: Unix time for the Date field (default: now).

        Returns:
            The message; its envelope has exactly this one recipient.

        Raises:
            RenderError: a template failed for this row, or the result is not a message.
        """
        context = self._context(recipient)
        extra = self._list_headers(context)
        if self._message is not None:
            whole = self._render(self._message, context, "message") or ""
            return self._from_message_text(whole, recipient, extra, now)
        subject = " ".join((self._render(self._subject, context, "subject") or "").split())
        author = self.templates.author
        assert author is not None
        text = self._render(self._text, context, "text")
        html = self._render(self._html, context, "html")
        if not self._needs_compose and not recipient.address.needs_smtputf8:
            return self._fast(recipient, author, subject, text, html, extra, now)
        draft = Draft(
            author=author,
            to=[recipient.address],
            subject=subject,
            text=text,
            html=html,
            headers=extra,
            envelope_from=self.templates.envelope_from,
            date=now,
        )
        try:
            return compose(draft)
        except ComposeError as exc:
            raise RenderError(str(exc)) from None

    def _fast(
        self, recipient: BulkRecipient, author: HeaderAddress, subject: str,
        text: str | None, html: str | None, extra: list[tuple[str, str]], now: float | None,
    ) -> ComposedMessage:
        """The :mod:`pigeon.mua.fastmime` path: the same message as ``compose`` makes."""
        domain = author.mailbox.domain.name if author.mailbox.domain else None
        message_id = email.utils.make_msgid(domain=domain)
        headers = [("From", self._from_field),
                   ("To", format_address(recipient.address.display_name, recipient.email))]
        if subject:
            headers.append(("Subject", header_value("Subject", subject)))
        headers.append(("Date", email.utils.formatdate(now if now is not None else time.time(),
                                                       localtime=True)))
        headers.append(("Message-ID", message_id))
        headers += [(name, header_value(name, value)) for name, value in extra]
        content = simple_message(headers, text=text if text is not None or html is not None
                                 else "", html=html)
        envelope_from = self.templates.envelope_from or author
        return ComposedMessage(content=content, reverse_path=envelope_from.addr_spec,
                               recipients=[recipient.email], smtputf8=False, eight_bit=False,
                               message_id=message_id)

    def _from_message_text(
        self, text: str, recipient: BulkRecipient, extra: list[tuple[str, str]],
        now: float | None,
    ) -> ComposedMessage:
        needs_utf8 = recipient.address.needs_smtputf8
        policy = message_policy(utf8=needs_utf8)
        try:
            msg = _rebuild(Parser(_class=EmailMessage, policy=policy)
                           .parsestr(text.lstrip("\r\n")), policy)
            del msg["Bcc"]
            del msg["Resent-Bcc"]
            if msg["To"] is None:
                msg["To"] = str(recipient.address)
            author = self.templates.author
            if msg["From"] is None:
                if author is None:
                    raise RenderError("the message template has no From field; give --from")
                msg["From"] = str(author)
            if msg["Date"] is None:
                msg["Date"] = email.utils.formatdate(now if now is not None else time.time(),
                                                     localtime=True)
            if msg["Message-ID"] is None:
                msg["Message-ID"] = email.utils.make_msgid(domain=_author_domain(msg, author))
            for name, value in extra:
                del msg[name]
                msg[name] = value
            content = msg.as_bytes(policy=policy)
        except (ValueError, TypeError, LookupError, IndexError) as exc:
            raise RenderError(f"the rendered message is not usable: {exc}") from None
        reverse = self.templates.envelope_from or author_address(msg)
        if reverse is None:
            raise RenderError("the From field has no usable address for the envelope")
        return ComposedMessage(
            content=content,
            reverse_path=reverse.addr_spec,
            recipients=[recipient.email],
            smtputf8=needs_utf8 or reverse.needs_smtputf8,
            eight_bit=not content.isascii(),
            message_id=str(msg["Message-ID"]),
        )


_CONTENT_FIELDS = frozenset({"content-type", "content-transfer-encoding", "mime-version"})


def _rebuild(parsed: Message, policy: EmailPolicy[EmailMessage]) -> EmailMessage:
    """Re-make a rendered single-part text message so that the email package encodes it.

    Header values are set again (non-ASCII text becomes RFC 2047 encoded-words) and the
    body gets a 7-bit transfer encoding. A multipart or already encoded message is used
    as written.
    """
    assert isinstance(parsed, EmailMessage)
    if (parsed.is_multipart() or parsed["Content-Transfer-Encoding"] is not None
            or parsed.get_content_maintype() != "text"):
        return parsed
    body = parsed.get_payload()
    assert isinstance(body, str)
    out = EmailMessage(policy=policy)
    for name, value in parsed.items():
        if name.lower() not in _CONTENT_FIELDS:
            out[name] = str(value)
    out.set_content(body, subtype=parsed.get_content_subtype())
    return out


def _author_domain(msg: EmailMessage, author: HeaderAddress | None) -> str | None:
    found = author_address(msg) or author
    if found is None or found.mailbox.domain is None:
        return None
    return found.mailbox.domain.name


def author_address(msg: EmailMessage) -> HeaderAddress | None:
    """The first From address of a message, checked, or None.

    Args:
        msg: the message.

    Returns:
        The address, or None when there is none or it is not a valid mailbox.
    """
    header = msg["From"]
    addresses = getattr(header, "addresses", ())
    if not addresses:
        return None
    first = addresses[0]
    try:
        mailbox = parse_mailbox(first.addr_spec, smtputf8=True)
    except AddressError:
        return None
    return HeaderAddress(first.display_name, mailbox)
