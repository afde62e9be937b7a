"""Transport routes and the smarthost: which next hop carries mail for a remote domain.

Theory of operation. Like Postfix's transport(5) table followed by ``relayhost``:

1. ``[routes]`` maps a domain to a next hop. A key is a domain (``"example.org"``), a
   domain and all its subdomains at any depth (``".example.org"``) or everything
   (``"*"``). The most specific key wins: the exact domain, then the closest parent
   ``.domain``, then ``*``.
2. Otherwise, when ``[relay] host`` is set, everything goes to that smarthost (with SMTP
   AUTH when a username is set; TLS as ``[relay] tls`` says).
3. Otherwise the recipient's domain is resolved by MX (RFC 5321 §5.1).

A route value is ``smtp:`` followed by the next hop: ``smtp:relay.example.net`` looks up the
MX records of ``relay.example.net``; brackets turn the MX lookup off and use the host's own
address records or the literal address (``smtp:[relay.example.net]``,
``smtp:[192.0.2.10]:2526``, ``smtp:[2001:db8::1]:25``). An empty next hop (``smtp:``) means
"by MX for the recipient's domain", which takes a domain out of a ``*`` route.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import idna

__all__ = ["NextHop", "RouteError", "TransportTable", "parse_route", "route_key"]

TlsMode = Literal["none", "opportunistic", "starttls", "implicit"]

_PORT = re.compile(r"^[0-9]{1,5}$")


class RouteError(ValueError):
    """A route key or value is not valid; the message says why."""


@dataclass(frozen=True)
class NextHop:
    """Where to connect for a group of recipients.

    Attributes:
        host: the name to resolve (by MX when ``mx``, else by A/AAAA) or an IP address;
            None means the recipient's own domain, by MX.
        port: the TCP port, or None for ``[delivery] smtp_port``.
        mx: look up MX records for ``host`` (RFC 5321 §5.1).
        tls: the TLS policy for the connection.
        username: the SMTP AUTH user, or None for no AUTH.
        password_file: where the AUTH password is (first line).
        verify: check the server's certificate.
        label: how the hop is written in the config (for logs).
    """

    host: str | None
    port: int | None = None
    mx: bool = True
    tls: TlsMode = "opportunistic"
    username: str | None = None
    password_file: Path | None = None
    verify: bool = False
    label: str = "MX"

    @property
    def is_literal(self) -> bool:
        """True when ``host`` is an IP address."""
        if self.host is None:
            return False
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            return False
        return True

    def destination(self, domain: str) -> str:
        """The key that groups connections and limits concurrency for ``domain``.

        Recipients of different domains that share a route share its connections; by MX,
        each domain is its own destination.
        """
        if self.host is None:
            return domain
        port = f":{self.port}" if self.port else ""
        return f"{'' if self.mx else '['}{self.host}{'' if self.mx else ']'}{port}"


def _host(text: str) -> str:
    """A host name in lower-case A-labels, or an IP address in canonical form."""
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        pass
    try:
        return idna.encode(text.rstrip("."), uts46=True).decode("ascii").lower()
    except (idna.IDNAError, UnicodeError) as exc:
        raise RouteError(f"{text!r} is not a host name or IP address") from exc


def parse_route(value: str) -> NextHop:
    """Parse a route value such as ``smtp:[192.0.2.10]:2526`` (see the module docstring).

    Args:
        value: the value from ``[routes]``.

    Returns:
        The next hop (TLS opportunistic, no AUTH).

    Raises:
        RouteError: not ``smtp:`` followed by a valid next hop.
    """
    text = value.strip()
    transport, sep, hop = text.partition(":")
    if not sep or transport.lower() != "smtp":
        raise RouteError(
            f"route {value!r} must start with \"smtp:\", e.g. \"smtp:[192.0.2.10]:2526\""
        )
    hop = hop.strip()
    if not hop:
        return NextHop(None, label=text)
    port: int | None = None
    if hop.startswith("["):
        close = hop.find("]")
        if close < 0:
            raise RouteError(f"route {value!r}: missing \"]\"")
        inner, rest = hop[1:close], hop[close + 1 :]
        if inner.lower().startswith("ipv6:"):
            inner = inner[5:]
        if rest:
            if not rest.startswith(":") or not _PORT.match(rest[1:]):
                raise RouteError(f"route {value!r}: expected \"]:port\" after the host")
            port = int(rest[1:])
        host, mx = _host(inner), False
    else:
        name, colon, port_text = hop.rpartition(":")
        if colon:
            if not _PORT.match(port_text) or ":" in name:
                raise RouteError(
                    f"route {value!r}: put an IPv6 address in brackets, "
                    "e.g. \"smtp:[2001:db8::1]:25\""
                )
            port = int(port_text)
            hop = name
        host = _host(hop)
        try:
            ipaddress.ip_address(host)
            mx = False  # an address has no MX records
        except ValueError:
            mx = True
    if port is not None and not 1 <= port <= 65535:
        raise RouteError(f"route {value!r}: port {port} is outside 1..65535")
    return NextHop(host, port, mx=mx, label=text)


def route_key(key: str) -> str:
    """Check and normalise a ``[routes]`` key: ``*``, ``domain`` or ``.domain``.

    Raises:
        RouteError: the key is not one of those forms.
    """
    text = key.strip().lower()
    if text == "*":
        return text
    dot = text.startswith(".")
    name = text[1:] if dot else text
    if not name:
        raise RouteError(f"route key {key!r} is empty")
    try:
        a_labels = idna.encode(name.rstrip("."), uts46=True).decode("ascii").lower()
    except (idna.IDNAError, UnicodeError) as exc:
        raise RouteError(f"route key {key!r} is not a domain, \".domain\" or \"*\"") from exc
    return ("." if dot else "") + a_labels


class TransportTable:
    """Routes plus the smarthost (see the module docstring).

    Args:
        routes: ``[routes]`` keys to route values.
        relay: the smarthost next hop, or None.

    Raises:
        RouteError: a key or value is invalid.
    """

    def __init__(self, routes: dict[str, str] | None = None, relay: NextHop | None = None):
        self._routes = {route_key(k): parse_route(v) for k, v in (routes or {}).items()}
        self.relay = relay

    @classmethod
    def from_settings(cls, settings: Any) -> TransportTable:
        """Build from ``settings.routes`` and ``settings.relay``."""
        routes: dict[str, str] = dict(getattr(settings, "routes", None) or {})
        relay_settings = getattr(settings, "relay", None)
        relay: NextHop | None = None
        host_port = getattr(relay_settings, "host", None)
        if relay_settings is not None and host_port:
            host, _, port = str(host_port).rpartition(":")
            if host.startswith("["):
                host = host[1:-1]
            mode = relay_settings.tls
            relay = NextHop(
                _host(host),
                int(port),
                mx=False,
                tls=mode,
                username=relay_settings.username,
                password_file=relay_settings.password_file,
                verify=bool(getattr(relay_settings, "verify", False)),
                label=f"relay {host_port}",
            )
        return cls(routes, relay)

    def lookup(self, domain: str) -> NextHop:
        """The next hop for mail to ``domain`` (canonical lower-case A-labels).

        Returns:
            The matching route, else the smarthost, else MX for the domain itself.
        """
        domain = domain.lower().rstrip(".")
        routes = self._routes
        if domain in routes:
            return routes[domain]
        labels = domain.split(".")
        for i in range(1, len(labels) + 1):
            parent = "." + ".".join(labels[i:]) if i < len(labels) else None
            if parent is not None and parent in routes:
                return routes[parent]
        if "*" in routes:
            return routes["*"]
        if self.relay is not None:
            return self.relay
        return NextHop(None)
