"""The sendmail interface that Unix programs use: options, the message on stdin, exit codes.

Only what programs really use is implemented (the options are those of Postfix's and
Sendmail's ``sendmail`` command):

``-t``
    take the recipients from the To, Cc and Bcc fields (or from Resent-To, Resent-Cc and
    Resent-Bcc when the message has Resent- fields, RFC 5322 §3.6.6), in addition to any
    given as arguments.
``-i``, ``-oi``
    a line with a single dot does not end the message (without it, it does).
``-f SENDER``, ``-r SENDER``
    the envelope sender (reverse-path); ``-f '<>'`` is the null reverse-path.
``-F NAME``
    the full name for a From field that the message lacks.
``-C FILE``
    the Pigeon configuration file (whose data directory holds the local queue).
``-bm``
    deliver mail (the default). ``-N``, ``-R``, ``-V``, ``-B``, ``-L``, ``-h``, ``-X``,
    ``-o*``, ``-O``, ``-v``, ``-m``, ``-n``, ``-U``, ``-G`` are accepted and ignored.

Every message loses its ``Bcc`` and ``Resent-Bcc`` fields and gains ``From``, ``Date`` and
``Message-ID`` when it has none (RFC 5322 §3.6: both ``From`` and ``Date`` are required).

Exit codes are those of ``sysexits.h``: 0 when every recipient was accepted; otherwise the
worst failure decides, a permanent one before a temporary one (retrying the whole message
would repeat it to the recipients that did accept it): EX_NOUSER (67) for an unknown
recipient (5.1.x), EX_DATAERR (65) for a malformed message or address, EX_UNAVAILABLE (69)
for any other permanent refusal, EX_TEMPFAIL (75) for a temporary one, including a server
that cannot be reached; EX_USAGE (64) for bad options or no recipients.
"""

from __future__ import annotations

import email.utils
import time
from dataclasses import dataclass, field
from pathlib import Path

from pigeon.mail.address import AddressError, parse_mailbox
from pigeon.mail.reply import Reply
from pigeon.mua.rawmessage import RawMessage, normalize_line_endings

__all__ = [
    "EX_CANTCREAT",
    "EX_DATAERR",
    "EX_NOUSER",
    "EX_OK",
    "EX_SOFTWARE",
    "EX_TEMPFAIL",
    "EX_UNAVAILABLE",
    "EX_USAGE",
    "PreparedMessage",
    "SendmailError",
    "SendmailOptions",
    "exit_code_for",
    "parse_sendmail_args",
    "prepare_message",
    "read_message",
]

# sysexits.h
EX_OK = 0
EX_USAGE = 64
EX_DATAERR = 65
EX_NOUSER = 67
EX_SOFTWARE = 70
EX_CANTCREAT = 73
EX_UNAVAILABLE = 69
EX_TEMPFAIL = 75

# Options that take a value (as the next argument or attached: -fsender or -f sender).
_WITH_VALUE = frozenset("fFrCNRVBLhXO")
# Flags without a value that change nothing here (verbose, me-too, no aliases, ...).
_FLAGS_IGNORED = frozenset("vmnUG")


class SendmailError(Exception):
    """A problem that ends ``sendmail`` with an exit code; the text is for stderr.

    Args:
        message: what went wrong.
        code: the sysexits.h exit code.
    """

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


@dataclass(slots=True)
class SendmailOptions:
    """The parsed command line.

    Attributes:
        extract: ``-t``.
        ignore_dots: ``-i`` / ``-oi``.
        sender: ``-f`` / ``-r`` (``""`` for ``<>``), or None.
        full_name: ``-F``, or None.
        config: ``-C``, or None.
        recipients: the address arguments.
    """

    extract: bool = False
    ignore_dots: bool = False
    sender: str | None = None
    full_name: str | None = None
    config: Path | None = None
    recipients: list[str] = field(default_factory=list)


def _strip_brackets(text: str) -> str:
    value = text.strip()
    if value.startswith("<") and value.endswith(">"):
        value = value[1:-1].strip()
    return value


def parse_sendmail_args(args: list[str]) -> SendmailOptions:
    """Parse sendmail's command line (see the module docstring).

    Args:
        args: the arguments after the program name.

    Returns:
        The options.

    Raises:
        SendmailError: an unknown or unsupported option, or a missing value (EX_USAGE).
    """
    opts = SendmailOptions()
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if arg == "--":
            opts.recipients.extend(args[i:])
            break
        if not arg.startswith("-") or arg == "-":
            opts.recipients.append(arg)
            continue
        letter, rest = arg[1], arg[2:]
        if letter == "o":
            # -oi is "ignore dots"; other -oX options (-oem, -odb, -oQ...) do not apply.
            if rest == "i":
                opts.ignore_dots = True
            elif not rest:
                raise SendmailError("sendmail: option -o needs a letter (e.g. -oi)", EX_USAGE)
            continue
        if letter == "b":
            if rest in ("m", ""):
                continue
            raise SendmailError(f"sendmail: -b{rest} is not supported (only -bm)", EX_USAGE)
        if letter in ("t", "i") and not rest:
            if letter == "t":
                opts.extract = True
            else:
                opts.ignore_dots = True
            continue
        if letter in _FLAGS_IGNORED and not rest:
            continue
        if letter in _WITH_VALUE:
            if rest:
                value = rest
            elif i < len(args):
                value = args[i]
                i += 1
            else:
                raise SendmailError(f"sendmail: option -{letter} needs a value", EX_USAGE)
            if letter in ("f", "r"):
                opts.sender = _strip_brackets(value)
            elif letter == "F":
                opts.full_name = value
            elif letter == "C":
                opts.config = Path(value)
            continue
        raise SendmailError(f"sendmail: unknown option {arg}", EX_USAGE)
    return opts


def read_message(data: bytes, *, ignore_dots: bool) -> bytes:
    """Cut the input where the message ends and make line endings CRLF.

    Args:
        data: everything read from standard input.
        ignore_dots: ``-i``: a line with a single ``.`` is text; otherwise it ends the
            message (the traditional sendmail behaviour).

    Returns:
        The message, CRLF line endings, ending with CRLF unless empty.
    """
    text = normalize_line_endings(data)
    if not ignore_dots:
        if text.startswith(b".\r\n") or text == b".":
            text = b""
        else:
            end = text.find(b"\r\n.\r\n")
            if end != -1:
                text = text[: end + 2]
            elif text.endswith(b"\r\n."):
                text = text[:-1]
    if text and not text.endswith(b"\r\n"):
        text += b"\r\n"
    return text


@dataclass(frozen=True, slots=True)
class PreparedMessage:
    """A message ready to hand on.

    Attributes:
        content: the message with CRLF line endings, Bcc removed, From/Date/Message-ID
            present.
        reverse_path: the MAIL FROM mailbox text, ``""`` for ``<>``.
        recipients: forward-path mailbox texts, without duplicates.
        smtputf8: an address or the header is non-ASCII (RFC 6531, RFC 6532).
        eight_bit: the content has bytes above 127.
    """

    content: bytes
    reverse_path: str
    recipients: list[str]
    smtputf8: bool
    eight_bit: bool


def _mailbox_text(address: str, what: str) -> str:
    try:
        mailbox = parse_mailbox(address, smtputf8=True)
    except AddressError as exc:
        raise SendmailError(f"sendmail: {what} {address!r}: {exc.reply.text}", EX_DATAERR) \
            from None
    return str(mailbox)


def prepare_message(
    options: SendmailOptions,
    data: bytes,
    *,
    login: str,
    hostname: str,
    now: float | None = None,
) -> PreparedMessage:
    """Build the envelope and fix the header of a message read from standard input.

    Args:
        options: the command line.
        data: the message as read (see :func:`read_message`).
        login: the user's login name, for the default sender ``login@hostname``.
        hostname: the domain of the default sender and of a new Message-ID.
        now: Unix time for a missing Date (default: now).

    Returns:
        The prepared message.

    Raises:
        SendmailError: EX_USAGE when there is no recipient, EX_DATAERR when an address is
            malformed.
    """
    message = RawMessage.parse(data)
    if options.sender is None:
        reverse_path = _mailbox_text(f"{login}@{hostname}", "sender")
    elif options.sender == "":
        reverse_path = ""
    else:
        reverse_path = _mailbox_text(options.sender, "sender")
    wanted: list[str] = [_mailbox_text(_strip_brackets(r), "recipient")
                         for a in options.recipients for r in _split_argument(a)]
    if options.extract:
        resent = any(f.name.lower().startswith("resent-") for f in message.fields)
        names = ("Resent-To", "Resent-Cc", "Resent-Bcc") if resent else ("To", "Cc", "Bcc")
        for display, addr in message.addresses(*names):
            if not addr:
                raise SendmailError(f"sendmail: cannot parse the address {display!r}",
                                    EX_DATAERR)
            wanted.append(_mailbox_text(addr, "recipient"))
    recipients = list(dict.fromkeys(wanted))
    if not recipients:
        raise SendmailError("sendmail: no recipients (give addresses or use -t)", EX_USAGE)
    message.remove("Bcc", "Resent-Bcc")
    if not message.has("From"):
        author = reverse_path or _mailbox_text(f"{login}@{hostname}", "sender")
        message.add("From", _format_author(options.full_name, author))
    if not message.has("Date"):
        message.add("Date", email.utils.formatdate(now if now is not None else time.time(),
                                                   localtime=True))
    if not message.has("Message-ID"):
        message.add("Message-ID", email.utils.make_msgid(domain=hostname))
    content = message.to_bytes()
    smtputf8 = (
        not all(r.partition("@")[0].isascii() for r in recipients)
        or not reverse_path.partition("@")[0].isascii()
        or not message.header_bytes.isascii()
    )
    return PreparedMessage(content, reverse_path, recipients, smtputf8,
                           eight_bit=not content.isascii())


def _split_argument(argument: str) -> list[str]:
    """A recipient argument may hold several comma-separated addresses."""
    pairs = email.utils.getaddresses([argument])
    out = [addr for _, addr in pairs if addr]
    if not out:
        raise SendmailError(f"sendmail: {argument!r} is not an address", EX_DATAERR)
    return out


def _format_author(full_name: str | None, address: str) -> str:
    if not full_name:
        return address
    return email.utils.formataddr((full_name, address))


def exit_code_for(replies: list[Reply]) -> int:
    """The sysexits.h code for the recipients' replies (see the module docstring).

    Args:
        replies: one reply per recipient.

    Returns:
        0 when every reply is 2xx, else the code of the worst failure.
    """
    codes: set[int] = set()
    for reply in replies:
        if 200 <= reply.code < 300:
            continue
        enhanced = reply.enhanced
        if reply.is_permanent:
            if enhanced is not None and enhanced.subject == 1 and enhanced.detail == 3:
                codes.add(EX_DATAERR)
            elif enhanced is not None and enhanced.subject == 1:
                codes.add(EX_NOUSER)
            elif enhanced is not None and enhanced.subject == 6:
                codes.add(EX_DATAERR)
            else:
                codes.add(EX_UNAVAILABLE)
        else:
            codes.add(EX_TEMPFAIL)
    for code in (EX_NOUSER, EX_DATAERR, EX_UNAVAILABLE, EX_TEMPFAIL):
        if code in codes:
            return code
    return EX_OK
