"""The remote delivery agent: the MTA's SMTP client, from the queue to the next hop.

Theory of operation. The scheduler hands over the due recipients of ONE message whose
route is ``remote``. The agent:

1. groups them by *destination*: the next hop that :class:`~pigeon.routing.transport.
   TransportTable` names for the recipient's domain (a route, the smarthost, or the domain
   itself by MX). Groups are delivered concurrently; each holds at most one connection.
2. finds the hosts of a destination: MX records in preference order (RFC 5321 §5.1,
   :mod:`pigeon.routing.mx`), or the route's host. Null MX fails at once with
   ``556 5.1.10``, NXDOMAIN with ``550 5.1.2``; a DNS failure defers (``451 4.4.3``).
3. takes a connection from the :class:`~pigeon.net.smtp_client_pool.ConnectionPool`: an
   idle one to the same destination (connection reuse), or a new one, trying each host and
   each of its addresses (IPv6, then IPv4) until one greets us with 220 and accepts EHLO.
   TLS is opportunistic towards MX hosts; the smarthost gets STARTTLS or implicit TLS and
   SMTP AUTH (never in plain text unless its ``tls = "none"``).
4. never delivers to itself: a host named like this server, an address and port this
   server listens on, or a server that calls itself by our name in its EHLO reply ends the
   attempt with ``554 5.4.6 mail for <domain> loops back to myself`` (as Postfix says);
   lower-preference MX hosts are not tried (RFC 5321 §5.1).
5. runs one transaction per destination with at most ``max_recipients_per_transaction``
   recipients; recipients refused with ``452`` (RFC 5321 §4.5.3.1.10: too many recipients)
   while others were taken go in another transaction on the same connection.
6. prepares the content for what the server offers: a message with 8-bit content for a
   server without 8BITMIME is converted to 7-bit MIME (RFC 6152 §3,
   :mod:`pigeon.delivery.mime7bit`) or failed with ``554 5.6.3``; an SMTPUTF8 message for a
   server without SMTPUTF8 fails with ``553 5.6.7`` (RFC 6531 §3.2).

Results, one per recipient: a 2xx after the content is ``delivered``; a 4xx (or no answer,
a lost connection, a timeout) is ``deferred`` with the reply and the remote host kept; a
5xx is ``failed`` (the scheduler sends the DSN). A connection that drops before the reply
to the end of data defers every recipient of that transaction: the server did not take
responsibility, so the retry cannot make a duplicate.

SECURITY: this component opens outbound connections and reads the smarthost password file;
it writes nothing but the log.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pigeon.delivery.mime7bit import ConversionError, has_8bit, to_7bit
from pigeon.mail.envelope import MailParams, RcptParams
from pigeon.mail.reply import Reply
from pigeon.net.smtp_client import ClientTLS, SmtpClientError, SmtpClientSession
from pigeon.net.smtp_client_pool import ConnectionPool
from pigeon.queue.model import AttemptResult, QueuedMessage, QueuedRecipient
from pigeon.routing.mx import (
    DnsLookupError,
    DnsPythonResolver,
    MxHost,
    Resolver,
    RoutingError,
    resolve_addresses,
    resolve_mx,
)
from pigeon.routing.transport import NextHop, TransportTable

__all__ = ["RemoteDelivery", "result_for"]

log = logging.getLogger("pigeon.delivery.remote")

# The scan for 8-bit octets reads the spool file in blocks of this many bytes.
_SCAN_BLOCK = 256 * 1024


def result_for(reply: Reply, remote_host: str | None = None) -> AttemptResult:
    """The queue result for a reply: 2xx delivered, 4xx deferred, 5xx failed.

    Args:
        reply: the reply that decided the recipient.
        remote_host: the server that gave it (``name[address]``), or None for a local one.

    Returns:
        The result; the enhanced status code defaults to ``X.0.0``.
    """
    cls = reply.code // 100
    if cls == 2:
        status = "delivered"
    elif cls == 5:
        status = "failed"
    else:
        status = "deferred"
    enhanced = str(reply.enhanced) if reply.enhanced else f"{cls if cls in (2, 4, 5) else 4}.0.0"
    return AttemptResult(status, reply.code, enhanced, reply.text, remote_host)  # type: ignore[arg-type]


@dataclass
class _Content:
    """The message as it is sent: the spool file, or a 7-bit conversion of it."""

    message: QueuedMessage
    eight_bit: bool | None = None
    converted: bytes | None = None
    refusal: Reply | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def for_server(self, extensions: dict[str, str]) -> tuple[bytes | Path, str | None]:
        """The content and BODY= value to send to a server with these extensions.

        Raises:
            ConversionError: 8-bit content, no 8BITMIME, and no way to convert.
        """
        m = self.message
        if "8BITMIME" in extensions:
            return m.spool_path, m.body if m.body in ("7BIT", "8BITMIME") else None
        async with self.lock:
            if self.eight_bit is None:
                self.eight_bit = await asyncio.to_thread(_file_has_8bit, m.spool_path)
            if not self.eight_bit:
                return m.spool_path, None
            if self.refusal is not None:
                raise ConversionError(self.refusal)
            if self.converted is None:
                data = await asyncio.to_thread(m.spool_path.read_bytes)
                try:
                    self.converted = await asyncio.to_thread(to_7bit, data)
                except ConversionError as exc:
                    self.refusal = exc.reply
                    raise
            return self.converted, None


def _file_has_8bit(path: Path) -> bool:
    with path.open("rb") as f:
        while block := f.read(_SCAN_BLOCK):
            if has_8bit(block):
                return True
    return False


@dataclass
class _Group:
    destination: str
    domain: str
    hop: NextHop
    indexes: list[int]


class _Loop(Exception):
    """The next hop is this server."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(str(reply))
        self.reply = reply


class RemoteDelivery:
    """The ``remote`` delivery agent (see the module docstring).

    Args:
        settings: Pigeon's settings (``server.hostname``, ``delivery``, ``dns``,
            ``routes``, ``relay``).
        resolver: the DNS port; default: dnspython with ``[dns]``.
        transport: the routes; default: from ``settings``.
        local_addresses: returns the (address, port) pairs this server listens on, for loop
            detection.
        rng: random source for MX preference ties.

    Attributes:
        pool: the outbound connections.
    """

    def __init__(
        self,
        settings: Any,
        *,
        resolver: Resolver | None = None,
        transport: TransportTable | None = None,
        local_addresses: Callable[[], Iterable[tuple[str, int]]] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        d = settings.delivery
        self.hostname: str = settings.server.hostname.lower()
        self.helo: str = d.helo_name or settings.server.hostname
        self.smtp_port: int = d.smtp_port
        self.source_ipv4: str | None = d.source_ipv4
        self.source_ipv6: str | None = d.source_ipv6
        self.mx_tls: str = d.tls
        self.connect_timeout: float = d.connect_timeout
        self.command_timeout: float = d.command_timeout
        self.max_recipients: int = d.max_recipients_per_transaction
        self.resolver: Resolver = resolver or DnsPythonResolver(
            settings.dns.nameservers, timeout=settings.dns.timeout
        )
        self.transport = transport or TransportTable.from_settings(settings)
        self._local_addresses = local_addresses or (lambda: ())
        self._rng = rng or random.Random()
        self.pool = ConnectionPool(
            per_destination=d.connections_per_destination,
            total=d.max_connections,
            idle_time=d.idle_time,
            max_messages=d.max_messages_per_connection,
        )

    async def aclose(self) -> None:
        """Close idle connections (QUIT); called when the server stops."""
        await self.pool.close()

    # ------------------------------------------------------------------ the agent

    async def deliver(
        self, message: QueuedMessage, recipients: list[QueuedRecipient]
    ) -> list[AttemptResult]:
        """Deliver ``message`` to ``recipients`` (see the module docstring).

        Returns:
            One result per recipient, in order.
        """
        results: list[AttemptResult | None] = [None] * len(recipients)
        groups: dict[str, _Group] = {}
        for i, r in enumerate(recipients):
            local, at, domain = r.address.rpartition("@")
            if not at or not local or not domain:
                results[i] = AttemptResult("failed", 553, "5.1.3",
                                           f"bad address syntax: {r.address}")
                continue
            domain = domain.lower()
            hop = self.transport.lookup(domain)
            if hop.host is None and domain.startswith("["):
                literal = _literal_address(domain)
                if literal is None:
                    results[i] = AttemptResult("failed", 553, "5.1.3",
                                               f"bad address literal: {domain}")
                    continue
                hop = NextHop(literal, mx=False, label=domain)
            key = hop.destination(domain)
            group = groups.get(key)
            if group is None:
                group = groups[key] = _Group(key, domain, hop, [])
            group.indexes.append(i)
        content = _Content(message)
        outcomes = await asyncio.gather(*(
            self._deliver_group(message, [recipients[i] for i in g.indexes], g, content)
            for g in groups.values()
        ))
        for g, outcome in zip(groups.values(), outcomes, strict=True):
            for i, result in zip(g.indexes, outcome, strict=True):
                results[i] = result
        return [r if r is not None else AttemptResult("deferred", 451, "4.3.0",
                                                      "local error in processing")
                for r in results]

    async def _deliver_group(
        self,
        message: QueuedMessage,
        recipients: list[QueuedRecipient],
        group: _Group,
        content: _Content,
    ) -> list[AttemptResult]:
        qid = message.queue_id
        try:
            hosts = await self._hosts(group)
        except RoutingError as exc:
            log.info("%s: %s: %s", qid, group.destination, exc.reply)
            return [result_for(exc.reply)] * len(recipients)
        results: list[AttemptResult | None] = [None] * len(recipients)
        fresh_tries = 2  # a reused connection that turns out dead is replaced once
        while True:
            try:
                session = await self._session(group, hosts, qid)
            except _Loop as exc:
                log.warning("%s: %s", qid, exc.reply.text)
                return [result_for(exc.reply)] * len(recipients)
            except SmtpClientError as exc:
                log.info("%s: %s: %s", qid, group.destination, exc.reply)
                host = exc.remote_host or None
                return [result_for(exc.reply, host)] * len(recipients)
            reused = session.messages_sent > 0
            try:
                await self._transactions(message, recipients, session, content, results)
            except SmtpClientError as exc:
                await self.pool.release(group.destination, session, reusable=False)
                early = exc.stage in ("rset", "mail") and not exc.content_sent
                fresh_tries -= 1
                if reused and early and fresh_tries > 0:
                    log.info("%s: cached connection to %s failed (%s); reconnecting", qid,
                             session.remote_host, exc.reply)
                    continue
                log.info("%s: %s: %s", qid, session.remote_host, exc.reply)
                deferred = exc.reply if exc.reply.code // 100 == 4 else Reply(
                    451, "4.4.2", exc.reply.text)
                return [
                    r if r is not None else result_for(deferred, session.remote_host)
                    for r in results
                ]
            await self.pool.release(group.destination, session, reusable=True)
            return [r if r is not None else result_for(
                Reply(451, "4.3.0", "not attempted"), session.remote_host) for r in results]

    async def _transactions(
        self,
        message: QueuedMessage,
        recipients: list[QueuedRecipient],
        session: SmtpClientSession,
        content: _Content,
        results: list[AttemptResult | None],
    ) -> None:
        host = session.remote_host
        try:
            body, body_param = await content.for_server(session.extensions)
        except ConversionError as exc:
            for i, r in enumerate(results):
                if r is None:
                    results[i] = result_for(exc.reply, host)
            return
        params = MailParams(
            body=body_param,  # type: ignore[arg-type]
            smtputf8=message.smtputf8,
            ret=message.ret,  # type: ignore[arg-type]
            envid=message.envid,
        )
        todo = [i for i, r in enumerate(results) if r is None]
        while todo:
            batch, todo = todo[: self.max_recipients], todo[self.max_recipients :]
            outcome = await session.send_message(
                message.reverse_path,
                [recipients[i].address for i in batch],
                body,
                mail_params=params,
                rcpt_params=[_rcpt_params(recipients[i]) for i in batch],
            )
            accepted = set(outcome.accepted())
            again: list[int] = []
            for n, i in enumerate(batch):
                reply = outcome.reply_for(n)
                if n not in accepted and _too_many(outcome.rcpt_replies[n]) and accepted:
                    again.append(i)  # RFC 5321 §4.5.3.1.10: send these in another one
                    continue
                results[i] = result_for(reply, host)
            log.info("%s: %s: %d of %d recipients accepted (%s)", message.queue_id, host,
                     len(accepted), len(batch), outcome.data_reply or outcome.mail_reply)
            todo = again + todo

    # ------------------------------------------------------------------ hosts

    async def _hosts(self, group: _Group) -> list[MxHost]:
        hop = group.hop
        if hop.host is None:
            return await resolve_mx(group.domain, self.resolver, rng=self._rng)
        if hop.mx:
            try:
                return await resolve_mx(hop.host, self.resolver, rng=self._rng)
            except RoutingError as exc:
                # A configured next hop that does not resolve is our problem, not the
                # sender's: keep the mail and try again later.
                if exc.reply.code // 100 == 5:
                    raise RoutingError(Reply(451, "4.4.3", exc.reply.text)) from None
                raise
        return [MxHost(hop.host, 0, implicit=True)]

    def _is_self(self, address: str, port: int) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        for host, listen_port in self._local_addresses():
            if listen_port != port:
                continue
            try:
                listen_ip = ipaddress.ip_address(host)
            except ValueError:
                continue
            if listen_ip == ip or (listen_ip.is_unspecified and (
                ip.is_loopback or str(ip) in (self.source_ipv4, self.source_ipv6)
            )):
                return True
        return False

    async def _session(
        self, group: _Group, hosts: list[MxHost], qid: str
    ) -> SmtpClientSession:
        """A connection for the group: reused, or new (trying hosts and addresses in turn).

        Raises:
            _Loop: the next hop is this server.
            SmtpClientError: no host could be used; ``reply`` is the last error (4xx
                unless every host refused permanently).
        """
        reused = await self.pool.acquire(group.destination)
        if reused is not None:
            assert isinstance(reused, SmtpClientSession)
            return reused
        try:
            return await self._connect(group, hosts, qid)
        except BaseException:
            await self.pool.release(group.destination, None)
            raise

    async def _connect(self, group: _Group, hosts: list[MxHost], qid: str) -> SmtpClientSession:
        hop = group.hop
        port = hop.port or self.smtp_port
        errors: list[SmtpClientError] = []
        dns_errors: list[DnsLookupError] = []
        loops_to = f"mail for {group.domain if hop.host is None else group.destination} " \
                   f"loops back to myself"
        for mx in hosts:
            if mx.name.lower() == self.hostname:
                self._stop_at_self(errors, loops_to)
            try:
                addresses = await resolve_addresses(mx.name, self.resolver)
            except DnsLookupError as exc:
                dns_errors.append(exc)
                continue
            if any(self._is_self(a, port) for a in addresses):
                self._stop_at_self(errors, loops_to)
            for address in addresses:
                try:
                    session = await self._open(address, port, mx, hop)
                except SmtpClientError as exc:
                    log.info("%s: %s", qid, exc.reply)
                    errors.append(exc)
                    continue
                if session.server_name.lower() == self.hostname:
                    await session.quit()
                    raise _Loop(Reply(554, "5.4.6", loops_to))
                if hop.username is not None:
                    try:
                        await self._authenticate(session, hop)
                    except SmtpClientError as exc:
                        await session.quit()
                        errors.append(exc)
                        continue
                log.info("%s: connected to %s%s", qid, session.remote_host,
                         " (TLS)" if session.tls_active else "")
                return session
        raise self._no_host(group, errors, dns_errors, hosts)

    def _stop_at_self(self, errors: list[SmtpClientError], loops_to: str) -> None:
        # RFC 5321 §5.1: we are an MX of the domain; hosts of our preference or worse are
        # not tried. Defer if a better host failed for now, else it is a loop.
        if any(e.reply.code // 100 == 4 for e in errors):
            last = errors[-1]
            raise SmtpClientError(last.reply, stage=last.stage, remote_host=last.remote_host)
        raise _Loop(Reply(554, "5.4.6", loops_to))

    def _no_host(
        self,
        group: _Group,
        errors: list[SmtpClientError],
        dns_errors: list[DnsLookupError],
        hosts: list[MxHost],
    ) -> SmtpClientError:
        if errors:
            last = errors[-1]
            if all(e.reply.code // 100 == 5 for e in errors) and not any(
                d.kind == "temporary" for d in dns_errors
            ):
                return last
            reply = last.reply if last.reply.code // 100 == 4 else Reply(
                451, "4.4.0", last.reply.text)
            return SmtpClientError(reply, stage=last.stage, remote_host=last.remote_host)
        names = ", ".join(h.name for h in hosts)
        if dns_errors and all(d.kind != "temporary" for d in dns_errors) and group.hop.host is None:
            if hosts and hosts[0].implicit:
                reply = Reply(550, "5.1.2", f"Host or domain name not found: {group.domain} has "
                                            "no MX or address records")
            else:
                reply = Reply(550, "5.4.4", f"unable to look up host {names}: no address "
                                            "records")
            return SmtpClientError(reply, stage="connect")
        if dns_errors:
            return SmtpClientError(Reply(
                451, "4.4.3", f"Host or domain name not found. Name service error for "
                              f"name={dns_errors[-1].name} type={dns_errors[-1].rdtype}: "
                              "Host not found, try again"), stage="connect")
        return SmtpClientError(Reply(451, "4.4.1", f"no address to connect to for {names}"),
                               stage="connect")

    async def _open(self, address: str, port: int, mx: MxHost, hop: NextHop) -> SmtpClientSession:
        family6 = ":" in address
        source = self.source_ipv6 if family6 else self.source_ipv4
        if hop.host is None or hop.mx:
            tls = ClientTLS(self.mx_tls, verify=False, server_hostname=mx.name)  # type: ignore[arg-type]
        else:
            mode = hop.tls if hop.tls != "opportunistic" or self.mx_tls != "none" else "none"
            tls = ClientTLS(mode, verify=hop.verify, server_hostname=hop.host)
        return await SmtpClientSession.connect(
            address,
            port,
            helo=self.helo,
            tls=tls,
            timeout=self.command_timeout,
            connect_timeout=self.connect_timeout,
            source_address=source,
            name=mx.name,
        )

    async def _authenticate(self, session: SmtpClientSession, hop: NextHop) -> None:
        assert hop.username is not None
        try:
            password = await asyncio.to_thread(_read_password, hop.password_file)
        except OSError as exc:
            raise SmtpClientError(
                Reply(451, "4.7.0", f"cannot read the relay password file: {exc.strerror}"),
                stage="auth", remote_host=session.remote_host,
            ) from None
        try:
            await session.authenticate(hop.username, password,
                                       allow_plaintext=hop.tls == "none")
        except SmtpClientError as exc:
            if exc.reply.code // 100 != 5:
                raise
            # Refused credentials are a configuration problem here, not the sender's:
            # keep the mail until the operator fixes them (Postfix's soft bounce of
            # SASL failures).
            raise SmtpClientError(
                Reply(454, "4.7.0", f"SASL authentication failed; server "
                                    f"{session.remote_host} said: {exc.reply}"),
                stage="auth", remote_host=session.remote_host,
            ) from None


def _read_password(path: Path | None) -> str:
    if path is None:
        raise FileNotFoundError(2, "no password_file configured")
    return path.read_text(encoding="utf-8").splitlines()[0] if path.stat().st_size else ""


def _too_many(reply: Reply) -> bool:
    # RFC 5321 §4.5.3.1.10: 452 (4.5.3) means "too many recipients", try the rest later.
    return reply.code == 452 and (reply.enhanced is None or str(reply.enhanced) == "4.5.3")


def _rcpt_params(r: QueuedRecipient) -> RcptParams:
    orcpt = r.orcpt
    if orcpt is None and r.original and r.original.isascii() and "@" in r.original:
        orcpt = ("rfc822", r.original)
    return RcptParams(notify=r.notify, orcpt=orcpt)


def _literal_address(domain: str) -> str | None:
    inner = domain[1:-1] if domain.endswith("]") else ""
    if inner.lower().startswith("ipv6:"):
        inner = inner[5:]
    try:
        return str(ipaddress.ip_address(inner))
    except ValueError:
        return None
