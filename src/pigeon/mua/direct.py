"""Deliver a message straight to the recipients' MX hosts (``pigeon send --direct``).

The recipients are grouped by domain; the domains are done at the same time, each with
one transaction for all its recipients. For a domain the hosts come from
:func:`pigeon.routing.mx.resolve_mx` (RFC 5321 §5.1: MX by preference, else the domain
itself; null MX and NXDOMAIN fail at once) and each host's addresses from
:func:`~pigeon.routing.mx.resolve_addresses`. Hosts and addresses are tried in order
until one completes a session (RFC 5321 §5.1: a host that cannot be reached or that
refuses the session is skipped). TLS is opportunistic and unverified, as between MTAs
(RFC 7435); nothing is queued, so a temporary failure is reported, not retried.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable

from pigeon.mail.reply import Reply
from pigeon.mua.send import (
    ClientSession,
    RecipientResult,
    SubmissionResult,
    close_quietly,
    mail_params_for,
    reply_for_exception,
    transaction_results,
)
from pigeon.routing.mx import (
    DnsLookupError,
    DnsPythonResolver,
    Resolver,
    RoutingError,
    resolve_addresses,
    resolve_mx,
)

__all__ = ["MX_PORT", "deliver_direct"]

log = logging.getLogger("pigeon.mua")

#: RFC 5321 §4.5.4.2: mail between MTAs goes to port 25.
MX_PORT = 25

DirectConnector = Callable[[str, str, int, str, float], Awaitable[ClientSession]]


async def _connect(host: str, address: str, port: int, helo: str,
                   timeout: float) -> ClientSession:
    from pigeon.net.smtp_client import ClientTLS, SmtpClientSession

    return await SmtpClientSession.connect(
        address, port, helo=helo, tls=ClientTLS("opportunistic", verify=False,
                                                server_hostname=host),
        timeout=timeout, connect_timeout=min(30.0, timeout), name=host,
    )


async def _deliver_domain(
    domain: str, reverse_path: str, recipients: list[str], content: bytes, *,
    smtputf8: bool, eight_bit: bool, resolver: Resolver, port: int, helo: str,
    timeout: float, connector: DirectConnector,
) -> SubmissionResult:
    try:
        hosts = await resolve_mx(domain, resolver)
    except RoutingError as exc:
        return SubmissionResult([RecipientResult(r, exc.reply) for r in recipients])
    last = Reply(451, "4.4.4", f"no MX host of {domain} could be reached")
    for mx in hosts:
        try:
            addresses = await resolve_addresses(mx.name, resolver)
        except DnsLookupError as exc:
            code, enhanced = (451, "4.4.3") if exc.kind == "temporary" else (450, "4.4.4")
            last = Reply(code, enhanced, f"cannot find the address of {mx.name}: {exc.kind}")
            continue
        for address in addresses:
            where = f"{mx.name}[{address}]:{port}"
            try:
                session = await connector(mx.name, address, port, helo, timeout)
            except Exception as exc:  # this host failed: try the next one
                last = reply_for_exception(exc, where)
                log.info("direct delivery to %s: %s", where, last)
                continue
            try:
                outcome = await session.send_message(
                    reverse_path, recipients, content,
                    mail_params=mail_params_for(smtputf8=smtputf8, eight_bit=eight_bit),
                )
            except Exception as exc:  # every failure becomes a reply
                reply = reply_for_exception(exc, where)
                return SubmissionResult([RecipientResult(r, reply, where) for r in recipients])
            finally:
                await close_quietly(session)
            results, queue_id = transaction_results(recipients, outcome, where)
            return SubmissionResult(results, queue_id)
    return SubmissionResult([RecipientResult(r, last) for r in recipients])


async def deliver_direct(
    reverse_path: str,
    recipients: list[str],
    content: bytes,
    *,
    smtputf8: bool = False,
    eight_bit: bool = False,
    timeout: float = 60.0,
    resolver: Resolver | None = None,
    port: int = MX_PORT,
    helo: str | None = None,
    connector: DirectConnector = _connect,
) -> SubmissionResult:
    """Deliver to every recipient's MX (see the module docstring).

    Args:
        reverse_path: the MAIL FROM mailbox text.
        recipients: forward-path mailbox texts (``local@domain``).
        content: the message, CRLF line endings.
        smtputf8: the transaction needs SMTPUTF8.
        eight_bit: the content has 8-bit bytes.
        timeout: seconds to wait for each reply.
        resolver: the DNS port (default: the system's name servers).
        port: the SMTP port of the MX hosts (25; another only for test setups).
        helo: the EHLO name (default: this host's name).
        connector: opens a session (tests pass a fake).

    Returns:
        One result per recipient, in the order given.
    """
    resolver = resolver or DnsPythonResolver()
    helo = helo or socket.getfqdn()
    by_domain: dict[str, list[str]] = {}
    for recipient in recipients:
        by_domain.setdefault(recipient.rpartition("@")[2].lower(), []).append(recipient)
    outcomes = await asyncio.gather(*(
        _deliver_domain(domain, reverse_path, group, content, smtputf8=smtputf8,
                        eight_bit=eight_bit, resolver=resolver, port=port, helo=helo,
                        timeout=timeout, connector=connector)
        for domain, group in by_domain.items()
    ))
    results: dict[str, RecipientResult] = {}
    queue_ids: list[str] = []
    for outcome in outcomes:
        for result in outcome.recipients:
            results[result.recipient] = result
        if outcome.queue_id:
            queue_ids.append(outcome.queue_id)
    ordered = [results[r] for r in recipients]
    return SubmissionResult(ordered, queue_ids[0] if len(queue_ids) == 1 else None)
