"""RFC 5321 §4.1.2 addresses: domains, mailboxes, reverse-paths and forward-paths.

API CONTRACT (implemented below):

- ``Domain(name)``: ``name`` is the canonical ASCII form: lower-case A-labels (IDNA 2008 /
  UTS 46 via the ``idna`` package) for a host name, or an address literal kept in brackets
  with canonical text (``[192.0.2.1]``, ``[IPv6:2001:db8::1]`` compressed lower-case).
  ``Domain.unicode`` gives the U-label form. ``Domain.is_literal``.
- ``Mailbox(local_part, domain)``: ``local_part`` is the *decoded* local part (quoted-string
  quotes and quoted-pairs removed); ``str(mailbox)`` re-quotes it when it is not a dot-string.
  ``Mailbox.is_utf8`` when the local part or the domain's U-label form is non-ASCII.
- ``ReversePath(mailbox)``: ``mailbox is None`` for the null reverse-path ``<>``.
- ``ForwardPath(mailbox)``: the bare ``<postmaster>`` is ``ForwardPath(Mailbox("postmaster", None))``
  with ``domain=None`` (only allowed for the local part ``postmaster``, case-insensitive).
- ``parse_reverse_path(text, *, smtputf8) / parse_forward_path(text, *, smtputf8)``:
  ``text`` is the whole ``<...>`` token including angle brackets; source routes are
  accepted and dropped (RFC 5321 Appendix C). Raise :class:`AddressError` with a ``reply``.
- ``split_path(arg)``: split a MAIL/RCPT argument (after ``FROM:``/``TO:``) into the
  ``<...>`` token and the parameter text, honouring quoted strings.
"""

from __future__ import annotations

from dataclasses import dataclass

from pigeon.mail.reply import Reply, ReplyError

__all__ = [
    "AddressError",
    "Domain",
    "ForwardPath",
    "Mailbox",
    "ReversePath",
    "parse_domain",
    "parse_forward_path",
    "parse_mailbox",
    "parse_reverse_path",
    "split_path",
]


class AddressError(ReplyError):
    """An address that does not follow RFC 5321 §4.1.2; ``reply`` is the SMTP answer."""

    def __init__(self, reply: Reply | str) -> None:
        if isinstance(reply, str):
            reply = Reply(501, "5.1.3", reply)
        super().__init__(reply)


@dataclass(frozen=True, slots=True)
class Domain:
    """A domain or address literal in canonical ASCII form (see module docstring)."""

    name: str

    @property
    def is_literal(self) -> bool:
        """True for an address literal such as ``[192.0.2.1]``."""
        return self.name.startswith("[")

    @property
    def unicode(self) -> str:
        """The U-label form of the name (equal to ``name`` for ASCII names and literals)."""
        raise NotImplementedError

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True, slots=True)
class Mailbox:
    """``local-part@domain`` (RFC 5321 §4.1.2); ``domain`` is None only for bare postmaster."""

    local_part: str
    domain: Domain | None

    @property
    def is_utf8(self) -> bool:
        """True when the address needs SMTPUTF8 (non-ASCII local part or U-label domain)."""
        raise NotImplementedError

    def __str__(self) -> str:
        raise NotImplementedError


@dataclass(frozen=True, slots=True)
class ReversePath:
    """MAIL FROM's argument; ``mailbox`` None is the null reverse-path ``<>``."""

    mailbox: Mailbox | None

    @property
    def is_null(self) -> bool:
        return self.mailbox is None

    def __str__(self) -> str:
        return "<>" if self.mailbox is None else f"<{self.mailbox}>"


@dataclass(frozen=True, slots=True)
class ForwardPath:
    """RCPT TO's argument (RFC 5321 §4.1.1.3)."""

    mailbox: Mailbox

    def __str__(self) -> str:
        return f"<{self.mailbox}>"


def parse_domain(text: str, *, smtputf8: bool = False) -> Domain:
    """Parse a domain or address literal; raise AddressError."""
    raise NotImplementedError


def parse_mailbox(text: str, *, smtputf8: bool = False) -> Mailbox:
    """Parse ``local-part@domain`` without angle brackets; raise AddressError."""
    raise NotImplementedError


def parse_reverse_path(text: str, *, smtputf8: bool = False) -> ReversePath:
    """Parse ``<>`` or ``<[route:]mailbox>``; raise AddressError."""
    raise NotImplementedError


def parse_forward_path(text: str, *, smtputf8: bool = False) -> ForwardPath:
    """Parse ``<postmaster>`` or ``<[route:]mailbox>``; raise AddressError."""
    raise NotImplementedError


def split_path(arg: str) -> tuple[str, str]:
    """Split ``<path> params`` into (``<path>``, ``params``); raise AddressError."""
    raise NotImplementedError
