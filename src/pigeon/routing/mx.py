"""MX resolution (RFC 5321 §5.1, RFC 7505) over a small resolver port.

Theory of operation. :func:`resolve_mx` turns a recipient domain into the ordered list of
hosts to try:

- MX records sorted by preference, lowest first; hosts of equal preference in random
  order, so the load spreads over them (RFC 5321 §5.1);
- no MX records but the name exists: the domain itself is the only host, with preference 0
  (the *implicit MX*);
- a single MX record ``0 .`` is a *null MX* (RFC 7505 §3): the domain accepts no mail,
  delivery fails at once with ``556 5.1.10``; ``.`` among other MX records is skipped;
- the domain does not exist (NXDOMAIN): fail with ``550 5.1.2``;
- any other failure (SERVFAIL, timeout, no reachable name server): defer with
  ``451 4.4.3``; the queue tries again later.

:func:`resolve_addresses` then gives a host's addresses, IPv6 (AAAA) first, then IPv4 (A),
each family in the order the server returned it; the caller connects to them in turn.

The resolver is a port (:class:`Resolver`): :class:`DnsPythonResolver` asks real name
servers through dnspython; :class:`StaticResolver` answers from a table, for tests.
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import dns.asyncresolver
import dns.exception
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver

from pigeon.mail.reply import Reply, ReplyError

__all__ = [
    "DnsLookupError",
    "DnsPythonResolver",
    "MxHost",
    "Resolver",
    "RoutingError",
    "StaticResolver",
    "resolve_addresses",
    "resolve_mx",
]

LookupFailure = Literal["nxdomain", "nodata", "temporary"]


class DnsLookupError(Exception):
    """A DNS lookup gave no usable answer.

    Attributes:
        kind: ``nxdomain`` (the name does not exist), ``nodata`` (it exists but has no
            record of that type) or ``temporary`` (SERVFAIL, timeout, no server answered).
        name: the name looked up.
        rdtype: the record type (``MX``, ``A``, ``AAAA``).
    """

    def __init__(self, kind: LookupFailure, name: str, rdtype: str, detail: str = "") -> None:
        super().__init__(f"{rdtype} {name}: {kind}{': ' + detail if detail else ''}")
        self.kind: LookupFailure = kind
        self.name = name
        self.rdtype = rdtype


class RoutingError(ReplyError):
    """No host can be tried for a domain; ``reply`` is the result for its recipients."""


class Resolver(Protocol):
    """The DNS lookups outbound delivery needs."""

    async def mx(self, name: str) -> list[tuple[int, str]]:
        """MX records of ``name`` as (preference, exchange without the final dot).

        Raises:
            DnsLookupError: no MX records (``nodata``), no such name, or a failure.
        """
        ...

    async def addresses(self, name: str, rdtype: Literal["A", "AAAA"]) -> list[str]:
        """A or AAAA records of ``name`` as address text.

        Raises:
            DnsLookupError: as for :meth:`mx`.
        """
        ...


@dataclass(frozen=True)
class MxHost:
    """One host to try for a domain.

    Attributes:
        name: the host name (lower case, no final dot).
        preference: the MX preference (0 for the implicit MX).
        implicit: the domain has no MX records; this is the domain itself (RFC 5321 §5.1).
    """

    name: str
    preference: int
    implicit: bool = False


def _nxdomain(domain: str) -> RoutingError:
    return RoutingError(Reply(
        550, "5.1.2",
        f"Host or domain name not found. Name service error for name={domain} type=MX: "
        "Host not found",
    ))


def _temporary(name: str, rdtype: str) -> RoutingError:
    return RoutingError(Reply(
        451, "4.4.3",
        f"Host or domain name not found. Name service error for name={name} type={rdtype}: "
        "Host not found, try again",
    ))


async def resolve_mx(
    domain: str, resolver: Resolver, *, rng: random.Random | None = None
) -> list[MxHost]:
    """The hosts to try for ``domain``, in order (see the module docstring).

    Args:
        domain: the recipient domain, lower-case A-labels.
        resolver: the DNS port.
        rng: the random source for shuffling equal preferences (tests pass a seeded one).

    Returns:
        At least one host.

    Raises:
        RoutingError: null MX (``556 5.1.10``), NXDOMAIN (``550 5.1.2``) or a temporary
            failure (``451 4.4.3``).
    """
    try:
        records = await resolver.mx(domain)
    except DnsLookupError as exc:
        if exc.kind == "nodata":
            return [MxHost(domain, 0, implicit=True)]
        if exc.kind == "nxdomain":
            raise _nxdomain(domain) from None
        raise _temporary(domain, "MX") from None
    if not records:
        return [MxHost(domain, 0, implicit=True)]
    real = [(pref, host.lower().rstrip(".")) for pref, host in records if host.strip(".")]
    if not real:
        # RFC 7505 §3: "0 ." says the domain accepts no mail at all.
        raise RoutingError(Reply(
            556, "5.1.10", f"Domain {domain} does not accept mail (nullMX)"
        ))
    rng = rng or random.Random()
    by_pref: dict[int, list[str]] = {}
    for pref, host in real:
        hosts = by_pref.setdefault(pref, [])
        if host not in hosts:
            hosts.append(host)
    out: list[MxHost] = []
    seen: set[str] = set()
    for pref in sorted(by_pref):
        hosts = by_pref[pref]
        rng.shuffle(hosts)
        for host in hosts:
            if host not in seen:  # a host listed twice is tried at its best preference
                seen.add(host)
                out.append(MxHost(host, pref))
    return out


async def resolve_addresses(
    host: str, resolver: Resolver, *, ipv6: bool = True, ipv4: bool = True
) -> list[str]:
    """The addresses of ``host``: IPv6 first, then IPv4 (an IP address is itself).

    Args:
        host: a host name, or an IP address as text.
        resolver: the DNS port.
        ipv6: look up AAAA records.
        ipv4: look up A records.

    Returns:
        Addresses as text, possibly empty when the host has none of the wanted families.

    Raises:
        DnsLookupError: ``nxdomain`` when the name does not exist, ``temporary`` when a
            lookup failed and nothing was found; a family with no records is not an error.
    """
    try:
        return [str(ipaddress.ip_address(host))]
    except ValueError:
        pass
    out: list[str] = []
    temporary: DnsLookupError | None = None
    nxdomain: DnsLookupError | None = None
    families: list[Literal["A", "AAAA"]] = []
    if ipv6:
        families.append("AAAA")
    if ipv4:
        families.append("A")
    for rdtype in families:
        try:
            found = await resolver.addresses(host, rdtype)
        except DnsLookupError as exc:
            if exc.kind == "temporary":
                temporary = exc
            elif exc.kind == "nxdomain":
                nxdomain = exc
            continue
        out.extend(a for a in found if a not in out)
    if not out:
        if temporary is not None:
            raise temporary
        if nxdomain is not None:
            raise nxdomain
    return out


class DnsPythonResolver:
    """The :class:`Resolver` port over dnspython's asyncio resolver.

    Args:
        nameservers: ``"ip"`` or ``"ip:port"`` / ``"[v6]:port"``; empty: the system's
            (``/etc/resolv.conf``).
        timeout: seconds one lookup may take in total (all servers and retries).
        cache: keep answers for their TTL.
    """

    def __init__(
        self, nameservers: Sequence[str] = (), *, timeout: float = 10.0, cache: bool = True
    ) -> None:
        if nameservers:
            resolver = dns.asyncresolver.Resolver(configure=False)
            resolver.nameservers = [_nameserver(text) for text in nameservers]
        else:
            resolver = dns.asyncresolver.Resolver(configure=True)
        resolver.lifetime = timeout
        resolver.timeout = min(resolver.timeout, timeout)
        if cache:
            resolver.cache = dns.resolver.LRUCache(10_000)
        self._resolver = resolver

    async def _query(self, name: str, rdtype: str) -> dns.resolver.Answer:
        try:
            return await self._resolver.resolve(
                dns.name.from_text(name), rdtype, search=False
            )
        except dns.resolver.NXDOMAIN:
            raise DnsLookupError("nxdomain", name, rdtype) from None
        except dns.resolver.NoAnswer:
            raise DnsLookupError("nodata", name, rdtype) from None
        except (dns.resolver.NoNameservers, dns.exception.Timeout) as exc:
            raise DnsLookupError("temporary", name, rdtype, type(exc).__name__) from None
        except dns.exception.DNSException as exc:
            raise DnsLookupError("temporary", name, rdtype, str(exc)) from None

    async def mx(self, name: str) -> list[tuple[int, str]]:
        """MX records of ``name`` (see :class:`Resolver`)."""
        answer = await self._query(name, "MX")
        return [
            (int(r.preference), r.exchange.to_text(omit_final_dot=True).lower())
            for r in answer
        ]

    async def addresses(self, name: str, rdtype: Literal["A", "AAAA"]) -> list[str]:
        """A or AAAA records of ``name`` (see :class:`Resolver`)."""
        answer = await self._query(name, rdtype)
        return [str(r.address) for r in answer]


def _nameserver(text: str) -> dns.nameserver.Nameserver:
    text = text.strip()
    try:
        return dns.nameserver.Do53Nameserver(str(ipaddress.ip_address(text)), 53)
    except ValueError:
        pass
    if text.startswith("["):
        host, _, port = text[1:].partition("]:")
    else:
        host, _, port = text.rpartition(":")
    return dns.nameserver.Do53Nameserver(str(ipaddress.ip_address(host)), int(port))


class StaticResolver:
    """A :class:`Resolver` that answers from a table (tests).

    Args:
        records: ``{(name, "MX"): [(10, "mx.example.net")], (name, "A"): ["192.0.2.1"]}``;
            a value that is a string is a failure kind (``"nxdomain"``, ``"temporary"``,
            ``"nodata"``). A name that appears under no type at all does not exist; a
            name that exists but lacks the type has no data.

    Attributes:
        queries: every (name, type) asked, in order.
    """

    def __init__(self, records: Mapping[tuple[str, str], object]) -> None:
        self.records = {(k[0].lower().rstrip("."), k[1].upper()): v for k, v in records.items()}
        self.queries: list[tuple[str, str]] = []

    def _lookup(self, name: str, rdtype: str) -> object:
        name = name.lower().rstrip(".")
        self.queries.append((name, rdtype))
        value = self.records.get((name, rdtype))
        if isinstance(value, str):
            raise DnsLookupError(value, name, rdtype)  # type: ignore[arg-type]
        if value is None:
            exists = any(key[0] == name for key in self.records)
            raise DnsLookupError("nodata" if exists else "nxdomain", name, rdtype)
        return value

    async def mx(self, name: str) -> list[tuple[int, str]]:
        """MX records from the table."""
        value = self._lookup(name, "MX")
        assert isinstance(value, list)
        return [(int(pref), str(host)) for pref, host in value]

    async def addresses(self, name: str, rdtype: Literal["A", "AAAA"]) -> list[str]:
        """A/AAAA records from the table."""
        value = self._lookup(name, rdtype)
        assert isinstance(value, list)
        return [str(a) for a in value]
