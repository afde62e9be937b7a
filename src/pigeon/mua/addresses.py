"""Addresses as people write them on the command line, turned into header and envelope forms.

A user writes ``bob@example.com``, ``Bob <bob@example.com>``, ``"Doe, Jane" <jane@x.org>``
or several of them separated by commas. Each becomes a :class:`HeaderAddress`: the display
name for the header (RFC 5322 §3.4) and the mailbox for the envelope (RFC 5321 §4.1.2),
checked by :func:`pigeon.mail.address.parse_mailbox`.

The domain is always written in A-labels (RFC 5890), so an internationalised domain needs
no SMTPUTF8; only a non-ASCII local part does (RFC 6531 §3.2).
"""

from __future__ import annotations

import email.utils
from dataclasses import dataclass

from pigeon.mail.address import AddressError, Mailbox, parse_mailbox

__all__ = ["AddressListError", "HeaderAddress", "parse_address_list", "parse_one_address"]


class AddressListError(ValueError):
    """An address given by the user cannot be used; the message says which and why."""


@dataclass(frozen=True, slots=True)
class HeaderAddress:
    """One address for a header and the envelope.

    Attributes:
        display_name: the phrase before ``<...>`` (may be empty or non-ASCII).
        mailbox: the checked mailbox; its domain is canonical (lower-case A-labels).
    """

    display_name: str
    mailbox: Mailbox

    @property
    def addr_spec(self) -> str:
        """``local-part@domain`` as written in a path or a header (A-label domain)."""
        return str(self.mailbox)

    @property
    def needs_smtputf8(self) -> bool:
        """True when the local part is non-ASCII (RFC 6531 §3.2; the domain is A-labels)."""
        return not self.mailbox.local_part.isascii()

    def __str__(self) -> str:
        if self.display_name:
            return email.utils.formataddr((self.display_name, self.addr_spec))
        return self.addr_spec


def _check(addr_spec: str, original: str) -> Mailbox:
    if not addr_spec:
        raise AddressListError(f"{original!r} has no address")
    try:
        mailbox = parse_mailbox(addr_spec, smtputf8=True)
    except AddressError as exc:
        raise AddressListError(f"{original!r} is not a valid address: {exc.reply.text}") from None
    if mailbox.domain is None:  # pragma: no cover - parse_mailbox requires a domain
        raise AddressListError(f"{original!r} has no domain")
    return mailbox


def parse_address_list(text: str) -> list[HeaderAddress]:
    """Parse one or more comma-separated addresses, as in a To or Cc field.

    Args:
        text: e.g. ``"Bob <bob@example.com>, carol@example.com"``.

    Returns:
        The addresses in order (at least one).

    Raises:
        AddressListError: the text is empty, unparsable, or an address is not a valid
            mailbox (RFC 5321 §4.1.2).
    """
    if any(ch in text for ch in "\r\n\x00"):
        raise AddressListError(f"{text!r}: line breaks and NUL are not allowed in an address")
    if not text.strip():
        raise AddressListError("empty address")
    pairs = email.utils.getaddresses([text])
    out: list[HeaderAddress] = []
    for name, addr_spec in pairs:
        if not name and not addr_spec:
            raise AddressListError(f"{text!r} is not a valid address list")
        mailbox = _check(addr_spec.strip(), text)
        out.append(HeaderAddress(name.strip(), mailbox))
    if not out:
        raise AddressListError(f"{text!r} is not a valid address list")
    return out


def parse_one_address(text: str) -> HeaderAddress:
    """Parse exactly one address (``--from``).

    Args:
        text: e.g. ``"Alice <alice@example.com>"``.

    Returns:
        The address.

    Raises:
        AddressListError: not exactly one valid address.
    """
    addresses = parse_address_list(text)
    if len(addresses) != 1:
        raise AddressListError(f"{text!r}: expected one address, got {len(addresses)}")
    return addresses[0]
