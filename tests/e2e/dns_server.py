"""A small authoritative DNS server on loopback (dnslib) for outbound delivery tests.

Serves MX, A, AAAA and TXT records from a table that tests change while it runs; a name
not in the table is NXDOMAIN, a name without the asked type is NODATA, and a name marked
with :meth:`ZoneServer.fail` answers SERVFAIL.
"""

from __future__ import annotations

import threading

from dnslib import AAAA, MX, QTYPE, RCODE, RR, TXT, A, DNSLabel, DNSRecord
from dnslib.server import BaseResolver, DNSLogger, DNSServer

_TYPES = {"A": A, "AAAA": AAAA, "TXT": TXT}


class _Resolver(BaseResolver):  # type: ignore[misc]
    def __init__(self, zone: ZoneServer) -> None:
        self.zone = zone

    def resolve(self, request: DNSRecord, handler: object) -> DNSRecord:
        reply = request.reply()
        qname = str(request.q.qname).lower().rstrip(".")
        qtype = QTYPE[request.q.qtype]
        with self.zone.lock:
            self.zone.queries.append((qname, qtype))
            if (qname, qtype) in self.zone.failures or (qname, "*") in self.zone.failures:
                reply.header.rcode = RCODE.SERVFAIL
                return reply
            records = self.zone.records.get(qname)
            if records is None:
                reply.header.rcode = RCODE.NXDOMAIN
                return reply
            for rtype, value in records:
                if rtype != qtype:
                    continue
                if rtype == "MX":
                    pref, _, host = value.partition(" ")
                    rdata = MX(DNSLabel(host if host != "." else ""), int(pref))
                else:
                    rdata = _TYPES[rtype](value)
                reply.add_answer(RR(qname, getattr(QTYPE, rtype), rdata=rdata,
                                    ttl=self.zone.ttl))
        return reply


class ZoneServer:
    """A DNS server on ``address`` (UDP, a free port) answering from :attr:`records`.

    Args:
        address: the loopback address to listen on.
        ttl: the TTL of every answer (0: resolvers do not cache, so tests may change
            records between deliveries).

    Attributes:
        records: name -> [(type, value)], values like ``"10 mx.example.net"`` (MX),
            ``"127.0.0.2"`` (A), ``"::1"`` (AAAA), ``"v=spf1 -all"`` (TXT).
        queries: (name, type) of every query received.
    """

    def __init__(self, address: str = "127.0.0.1", *, ttl: int = 0) -> None:
        self.address = address
        self.ttl = ttl
        self.records: dict[str, list[tuple[str, str]]] = {}
        self.failures: set[tuple[str, str]] = set()
        self.queries: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        self._server: DNSServer | None = None

    def add(self, name: str, rtype: str, value: str) -> ZoneServer:
        """Add one record (``rtype`` is MX, A, AAAA or TXT)."""
        with self.lock:
            self.records.setdefault(name.lower().rstrip("."), []).append((rtype.upper(), value))
        return self

    def remove(self, name: str) -> None:
        """Forget every record of ``name`` (it becomes NXDOMAIN)."""
        with self.lock:
            self.records.pop(name.lower().rstrip("."), None)

    def fail(self, name: str, rtype: str = "*") -> None:
        """Answer SERVFAIL for ``name`` (one type, or ``*`` for all)."""
        with self.lock:
            self.failures.add((name.lower().rstrip("."), rtype.upper()))

    def start(self) -> ZoneServer:
        """Start serving in a thread."""
        logger = DNSLogger(log="-request,-reply,-truncated,-error,-recv,-send,-data",
                           prefix=False)
        self._server = DNSServer(_Resolver(self), port=0, address=self.address, logger=logger)
        self._server.start_thread()
        return self

    @property
    def port(self) -> int:
        """The UDP port served."""
        assert self._server is not None
        return int(self._server.server.server_address[1])

    @property
    def nameserver(self) -> str:
        """The ``[dns] nameservers`` entry for Pigeon's config."""
        return f"{self.address}:{self.port}"

    def stop(self) -> None:
        """Stop serving."""
        if self._server is not None:
            self._server.stop()
            self._server.server.server_close()
            self._server = None
