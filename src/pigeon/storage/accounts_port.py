"""The account store port: which local mailboxes exist, their quotas, later their passwords.

Mailbox names are case-insensitive in Pigeon: every lookup goes through a *mailbox key*,
the decoded local part lower-cased, ``@``, and the domain's canonical ASCII form (lower-case
A-labels, RFC 5890). RFC 5321 §2.4 allows a server to treat local parts case-sensitively;
Pigeon chooses not to, so ``Bob@example.com`` and ``bob@example.com`` reach one mailbox.

A key that starts with ``@`` (``@example.com``) is a *catch-all*: every local part of that
domain is a mailbox of its own.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

import idna

from pigeon.mail.address import AddressError, parse_domain, parse_mailbox

__all__ = [
    "AccountStore",
    "MailboxConfig",
    "MailboxInfo",
    "canonical_domain",
    "canonical_mailbox_key",
]


@dataclass(frozen=True, slots=True)
class MailboxInfo:
    """One mailbox known to the account store.

    Attributes:
        address: the mailbox key (``bob@example.com``, or ``@example.com`` for a catch-all).
        quota: the quota in bytes, or None for no limit.
        created: Unix time (seconds) the mailbox was first recorded.
        from_config: the mailbox is defined in the config file (it is re-created at every
            start and removed when it leaves the file).
        has_password: the mailbox has a password: it is a user who can log in.
    """

    address: str
    quota: int | None
    created: float
    from_config: bool = False
    has_password: bool = False


class MailboxConfig(Protocol):
    """What the account store reads from a ``[[mailbox]]`` config entry."""

    @property
    def address(self) -> str: ...

    @property
    def quota(self) -> int | None: ...


class AccountStore(Protocol):
    """Mailboxes, users' password hashes and aliases, and locally added domains."""

    def add_mailbox(self, address: str, quota: int | None = None) -> MailboxInfo:
        """Create the mailbox ``address`` or update its quota (bytes)."""
        ...

    def remove_mailbox(self, address: str) -> bool:
        """Remove the mailbox; True when it existed."""
        ...

    def get_mailbox(self, key: str) -> MailboxInfo | None:
        """The mailbox with this key, or None."""
        ...

    def list_mailboxes(self) -> list[MailboxInfo]:
        """All mailboxes, sorted by domain then local part."""
        ...

    def sync_config(self, entries: Iterable[MailboxConfig]) -> None:
        """Merge the config file's mailboxes into the store."""
        ...

    def set_password_hash(self, address: str, password_hash: str | None) -> bool:
        """Set or clear a mailbox's argon2id hash; True when the mailbox exists."""
        ...

    def get_password_hash(self, key: str) -> str | None:
        """The mailbox's password hash, or None (no such mailbox, or no password)."""
        ...

    def add_alias(self, owner: str, address: str) -> None:
        """Give the user ``owner`` the extra address ``address`` (send as, receive at)."""
        ...

    def remove_alias(self, address: str) -> bool:
        """Remove an alias; True when it existed."""
        ...

    def alias_owner(self, key: str) -> str | None:
        """The mailbox key owning the alias ``key``, or None."""
        ...

    def list_aliases(self, owner: str | None = None) -> list[tuple[str, str]]:
        """``(alias, owner)`` pairs, all or one owner's."""
        ...

    def add_domain(self, name: str) -> bool:
        """Record a local domain; True when new."""
        ...

    def remove_domain(self, name: str) -> bool:
        """Forget a recorded local domain; True when it existed."""
        ...

    def list_domains(self) -> list[str]:
        """Recorded local domains (canonical), sorted."""
        ...

    def close(self) -> None:
        """Release the store's resources."""
        ...


def canonical_domain(domain: str) -> str:
    """Return the canonical ASCII form of a domain name for lookups.

    Args:
        domain: a domain in any case, with U-labels or A-labels, or an address literal.

    Returns:
        The lower-case A-label form (RFC 5890); an address literal is only lower-cased.

    Raises:
        ValueError: the name cannot be converted to A-labels.
    """
    name = domain.strip().rstrip(".").lower()
    if name.isascii() or name.startswith("["):
        return name
    try:
        return idna.encode(name, uts46=True).decode("ascii")
    except idna.IDNAError as exc:
        raise ValueError(f"invalid domain name {domain!r}: {exc}") from exc


def canonical_mailbox_key(address: str) -> str:
    """Return the mailbox key for an address as written in config, CLI or the queue.

    ``"Odd User"@Example.COM`` -> ``odd user@example.com``; ``@Example.com`` (a catch-all)
    -> ``@example.com``; a bare local part (``Postmaster``) -> ``postmaster``.

    Args:
        address: ``local-part@domain`` (quoted local parts allowed), ``@domain`` or a bare
            local part.

    Returns:
        The decoded local part lower-cased, ``@``, and the canonical domain.

    Raises:
        ValueError: the address is not a valid mailbox (RFC 5321 §4.1.2).
    """
    text = address.strip()
    if text.startswith("@"):
        domain = text[1:]
        if not domain or "@" in domain:
            raise ValueError(f"invalid catch-all address {address!r}")
        return "@" + canonical_domain(domain)
    if "@" not in text:
        if not text:
            raise ValueError("empty address")
        return text.lower()
    try:
        mailbox = parse_mailbox(text, smtputf8=True)
    except AddressError as exc:
        # A key is itself an address with a decoded local part ("odd user@example.com"
        # for "\"odd user\"@example.com"): accept that form so keys map to themselves.
        local, _, domain = text.rpartition("@")
        if not local or not local.isprintable() or len(local.encode("utf-8")) > 64:
            raise ValueError(f"invalid address {address!r}: {exc.reply.text}") from exc
        try:
            return local.lower() + "@" + parse_domain(domain, smtputf8=True).name
        except AddressError:
            raise ValueError(f"invalid address {address!r}: {exc.reply.text}") from exc
    assert mailbox.domain is not None
    return mailbox.local_part.lower() + "@" + mailbox.domain.name
