"""Relay and sender policy: who may send where, and as whom.

Relay (RFC 5321 §3.6, §7.9): mail for a domain that is not local is accepted only from an
authenticated user or a client in ``[relay] trusted_networks``; everyone else gets
``554 5.7.1 Relay access denied`` from the router. Which domains are local is the router's
decision alone; this module only says whether the client may relay. Addresses that try to
smuggle a remote destination through a local domain (the percent hack ``user%remote@local``,
bang paths ``remote!user@local``, a quoted ``"user@remote"@local``, a source route
``<@local:user@remote>``) never need a rule here: the address parser drops source routes
(RFC 5321 §4.1.1.3 allows ignoring them) and the router looks the rest up literally as local
parts.

Sender (RFC 6409 §4.3, §6.1): an authenticated user may use as reverse-path only an address
they own: their own, a ``+tag`` form of it (RFC 5233), or one of their aliases. The null
reverse-path is allowed (auto-replies and notifications use it).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from pigeon.mail.address import ReversePath
from pigeon.mail.reply import Reply

__all__ = [
    "RELAY_DENIED",
    "SENDER_NOT_OWNED",
    "RelayPolicy",
    "sender_allowed",
]

RELAY_DENIED = Reply(554, "5.7.1", "Relay access denied")
SENDER_NOT_OWNED = Reply(553, "5.7.1", "Sender address rejected: not owned by the "
                         "authenticated user")

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class RelayPolicy:
    """Decides whether a client may send to non-local domains.

    Args:
        trusted_networks: networks (``"192.0.2.0/24"``, ``"::1"``) whose clients may relay
            without authenticating.

    Raises:
        ValueError: a network is not valid.
    """

    def __init__(self, trusted_networks: Iterable[str] = ()) -> None:
        self.trusted_networks: tuple[_Network, ...] = tuple(
            ipaddress.ip_network(n, strict=False) for n in trusted_networks
        )

    def is_trusted(self, address: str) -> bool:
        """True when the client address is inside a trusted network.

        Args:
            address: an IPv4 or IPv6 address as text (IPv4-mapped IPv6 counts as IPv4).
        """
        if not self.trusted_networks:
            return False
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip.version == net.version and ip in net for net in self.trusted_networks)

    def may_relay(self, *, peer_address: str, authenticated: bool) -> bool:
        """True when the client may send to non-local domains.

        Args:
            peer_address: the client address as text.
            authenticated: the client authenticated with SMTP AUTH.
        """
        return authenticated or self.is_trusted(peer_address)


def _base_key(key: str) -> str:
    local, at, domain = key.rpartition("@")
    base, plus, _ = local.partition("+")
    return f"{base}{at}{domain}" if plus and base else key


def sender_allowed(reverse_path: ReversePath, owned: frozenset[str]) -> bool:
    """True when an authenticated user may use ``reverse_path``.

    Args:
        reverse_path: the MAIL FROM reverse-path.
        owned: the user's addresses as mailbox keys (lower-case local part, canonical
            domain), see ``Authenticator.owned_addresses``.

    Returns:
        True for the null reverse-path, an owned address, or the ``+tag`` form of one.
    """
    mailbox = reverse_path.mailbox
    if mailbox is None:
        return True
    if mailbox.domain is None:
        return False
    key = mailbox.canonical_key()
    return key in owned or _base_key(key) in owned
