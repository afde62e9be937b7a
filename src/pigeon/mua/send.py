"""Submit a composed message: to a submission server, straight to the recipients' MX, or to
the local queue. Every outcome is one :class:`~pigeon.mail.reply.Reply` per recipient.

Theory of operation
-------------------
*Submission* (RFC 6409) uses Pigeon's own SMTP client session
(:mod:`pigeon.net.smtp_client`): connect with implicit TLS (RFC 8314 §3.3), STARTTLS
(RFC 3207) or plaintext, say EHLO, authenticate when a user is given (RFC 4954), then one
transaction. Pipelining, dot-stuffing and SIZE are the client session's business.

*Direct* delivery groups the recipients by domain, looks up each domain's MX hosts
(RFC 5321 §5.1: by preference, falling back to the address records of the domain itself)
and tries them in order until one answers; TLS is opportunistic as between MTAs.

*Local queue*: see :mod:`pigeon.mua.local_queue`.

Failures that happen before a server could answer a recipient are turned into replies too,
so that every recipient gets one result line: ``421 4.4.1`` when no connection could be
made (RFC 3463 X.4.1 "no answer from host"), ``421 4.4.2`` when the connection broke, the
server's own reply when it refused the session or the authentication.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

from pigeon.mail.envelope import MailParams
from pigeon.mail.reply import Reply

__all__ = [
    "DEFAULT_PORTS",
    "RecipientResult",
    "Security",
    "ServerTarget",
    "SubmissionResult",
    "parse_server",
    "queue_id_from_reply",
    "submit_to_server",
]

log = logging.getLogger("pigeon.mua")

Security = Literal["starttls", "tls", "plain"]
#: Submission ports by security (RFC 6409 §3.1: 587; RFC 8314 §3.3: 465).
DEFAULT_PORTS: dict[str, int] = {"starttls": 587, "tls": 465, "plain": 587}
#: Seconds to wait for the server at each step.
DEFAULT_TIMEOUT = 60.0

_QUEUED_AS_RE = re.compile(r"\bqueued as ([A-Za-z0-9._-]+)", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class RecipientResult:
    """What happened to one recipient.

    Attributes:
        recipient: the forward-path mailbox text.
        reply: the reply that decided it (2xx when the message was accepted for it).
        host: the server that answered, as ``host:port``, when one did.
    """

    recipient: str
    reply: Reply
    host: str = ""

    @property
    def accepted(self) -> bool:
        """True when the message was accepted for this recipient."""
        return 200 <= self.reply.code < 300


@dataclass(slots=True)
class SubmissionResult:
    """The outcome of handing one message on.

    Attributes:
        recipients: one result per recipient, in the order given.
        queue_id: the queue id the (last) accepting server named, when it named one.
    """

    recipients: list[RecipientResult] = field(default_factory=list)
    queue_id: str | None = None

    @property
    def all_accepted(self) -> bool:
        """True when every recipient was accepted (``pigeon send`` then exits 0)."""
        return bool(self.recipients) and all(r.accepted for r in self.recipients)


def queue_id_from_reply(reply: Reply) -> str | None:
    """Find the queue id in a ``250 ... queued as ID`` reply (Postfix and Pigeon write it).

    Args:
        reply: the reply to the end of DATA.

    Returns:
        The id, or None when the text names none.
    """
    match = _QUEUED_AS_RE.search(reply.text)
    return match.group(1) if match else None


def parse_server(text: str, security: Security) -> tuple[str, int]:
    """Parse ``--server host[:port]`` (IPv6 in brackets).

    Args:
        text: ``mail.example.org``, ``mail.example.org:2525``, ``[::1]:587``.
        security: decides the default port (587, or 465 for implicit TLS).

    Returns:
        (host, port).

    Raises:
        ValueError: an empty host or a bad port.
    """
    value = text.strip()
    host, port_text = value, ""
    if value.startswith("["):
        close = value.find("]")
        if close == -1:
            raise ValueError(f"{text!r}: missing ']' after the IPv6 address")
        host, rest = value[1:close], value[close + 1:]
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"{text!r}: expected \"[address]:port\"")
            port_text = rest[1:]
    elif value.count(":") == 1:
        host, _, port_text = value.partition(":")
    elif value.count(":") > 1:
        raise ValueError(f"{text!r}: put an IPv6 address in brackets, e.g. \"[::1]:587\"")
    if not host or any(ch.isspace() or not ch.isprintable() for ch in host):
        raise ValueError(f"{text!r}: expected \"host\" or \"host:port\"")
    if not port_text:
        return host, DEFAULT_PORTS[security]
    if not (port_text.isascii() and port_text.isdigit()) or not 0 < int(port_text) < 65536:
        raise ValueError(f"{text!r}: the port must be a number from 1 to 65535")
    return host, int(port_text)


@dataclass(frozen=True, slots=True)
class ServerTarget:
    """A submission server and how to talk to it.

    Attributes:
        host: host name or IP address.
        port: TCP port.
        security: ``starttls`` (required, RFC 3207), ``tls`` (implicit, RFC 8314 §3.3) or
            ``plain`` (no TLS; only sensible on loopback).
        username: the SASL authentication identity, or None for no AUTH.
        password: its password.
        ca_file: PEM file of the certificates to trust instead of the system's.
        verify: check the server's certificate and name (RFC 6125); off only for tests.
        helo: the name said in EHLO.
        timeout: seconds to wait for each reply.
    """

    host: str
    port: int
    security: Security = "starttls"
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ca_file: Path | None = None
    verify: bool = True
    helo: str = field(default_factory=socket.getfqdn)
    timeout: float = DEFAULT_TIMEOUT

    @property
    def address(self) -> str:
        """``host:port`` for messages (IPv6 in brackets)."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


class ClientSession(Protocol):
    """What this module uses of :class:`pigeon.net.smtp_client.SmtpClientSession`."""

    @property
    def extensions(self) -> dict[str, str]: ...

    @property
    def is_usable(self) -> bool: ...

    async def send_message(
        self, reverse_path: str, recipients: list[str], content: bytes | Path, *,
        mail_params: MailParams | None = None,
    ) -> TransactionOutcome: ...

    async def quit(self) -> None: ...


class TransactionOutcome(Protocol):
    """What this module uses of :class:`pigeon.net.smtp_client.TransactionResult`."""

    @property
    def data_reply(self) -> Reply | None: ...

    def reply_for(self, index: int) -> Reply: ...


Connector = Callable[[ServerTarget], Awaitable[ClientSession]]


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def connect(target: ServerTarget) -> ClientSession:
    """Open a session to a submission server: TLS as asked, EHLO, AUTH when a user is set.

    Credentials are sent only over TLS, or in plain text to a loopback address.

    Args:
        target: the server.

    Returns:
        The session, ready for a transaction.

    Raises:
        SmtpClientError: no connection, or the server refused the session, STARTTLS or
            the authentication (``.reply`` says how).
    """
    from pigeon.net.smtp_client import ClientTLS, SmtpClientSession, TlsMode

    modes: dict[str, TlsMode] = {"starttls": "starttls", "tls": "implicit", "plain": "none"}
    tls = ClientTLS(mode=modes[target.security], verify=target.verify,
                    server_hostname=target.host, ca_file=target.ca_file)
    session = await SmtpClientSession.connect(
        target.host, target.port, helo=target.helo, tls=tls, timeout=target.timeout,
        connect_timeout=min(30.0, target.timeout),
    )
    if target.username is not None:
        try:
            await session.authenticate(target.username, target.password or "",
                                       allow_plaintext=_is_loopback(target.host))
        except BaseException:
            await close_quietly(session)
            raise
    return session


async def close_quietly(session: ClientSession) -> None:
    """Say QUIT and close; errors are ignored (the transaction is already decided)."""
    try:
        await session.quit()
    except Exception:  # a failed QUIT changes nothing for the user
        log.debug("QUIT failed", exc_info=True)


def reply_for_exception(exc: BaseException, where: str) -> Reply:
    """The reply that stands for a failure.

    Args:
        exc: what was raised while connecting or talking.
        where: ``host:port`` for the text.

    Returns:
        The reply the exception carries (``SmtpClientError.reply``: the server's own, or
        the client's ``4.4.x``/``4.7.x``), else ``421 4.4.1`` for a connection that could
        not be made and ``421 4.4.2`` for anything else.
    """
    reply = getattr(exc, "reply", None)
    if isinstance(reply, Reply):
        return reply
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    text = " ".join(str(text).split())[:200]
    if isinstance(exc, OSError) and not isinstance(exc, ConnectionResetError):
        return Reply(421, "4.4.1", f"cannot connect to {where}: {text}")
    return Reply(421, "4.4.2", f"connection to {where} failed: {text}")


def mail_params_for(*, smtputf8: bool, eight_bit: bool) -> MailParams:
    """The MAIL parameters of a message (RFC 6531 SMTPUTF8, RFC 6152 BODY=8BITMIME)."""
    return MailParams(body="8BITMIME" if eight_bit else None, smtputf8=smtputf8)


def transaction_results(
    recipients: list[str], outcome: TransactionOutcome, where: str
) -> tuple[list[RecipientResult], str | None]:
    """Turn the replies of one transaction into one result per recipient.

    Args:
        recipients: the forward-paths, in RCPT order.
        outcome: the client's transaction result.
        where: ``host:port`` of the server.

    Returns:
        The results and the queue id named in the reply to the content, if any.
    """
    results = [RecipientResult(r, outcome.reply_for(i), where) for i, r in enumerate(recipients)]
    data_reply = outcome.data_reply
    accepted = any(r.accepted for r in results)
    queue_id = queue_id_from_reply(data_reply) if data_reply is not None and accepted else None
    return results, queue_id


async def submit_to_server(
    target: ServerTarget,
    reverse_path: str,
    recipients: list[str],
    content: bytes,
    *,
    smtputf8: bool = False,
    eight_bit: bool = False,
    connector: Connector = connect,
) -> SubmissionResult:
    """Submit one message to a server in one transaction.

    Args:
        target: the server.
        reverse_path: the MAIL FROM mailbox text.
        recipients: forward-path mailbox texts.
        content: the message, CRLF line endings.
        smtputf8: the transaction needs SMTPUTF8 (refused here when not offered, RFC 6531
            §3.4, rather than sent to fail later).
        eight_bit: the content has 8-bit bytes (BODY=8BITMIME when offered).
        connector: opens the session (tests pass a fake).

    Returns:
        One result per recipient; nothing is raised for what the server or the network
        did.
    """
    where = target.address
    try:
        session = await connector(target)
    except Exception as exc:  # every failure becomes a reply
        reply = reply_for_exception(exc, where)
        log.info("submission to %s failed: %s", where, reply)
        return SubmissionResult([RecipientResult(r, reply) for r in recipients])
    try:
        # The client refuses (553 5.6.7) a message that needs SMTPUTF8 or 8BITMIME from a
        # server that does not offer it, before sending anything (RFC 6531 §3.4).
        outcome = await session.send_message(
            reverse_path, recipients, content,
            mail_params=mail_params_for(smtputf8=smtputf8, eight_bit=eight_bit),
        )
    except Exception as exc:  # every failure becomes a reply
        reply = reply_for_exception(exc, where)
        log.info("submission to %s failed: %s", where, reply)
        return SubmissionResult([RecipientResult(r, reply, where) for r in recipients])
    finally:
        await close_quietly(session)
    results, queue_id = transaction_results(recipients, outcome, where)
    return SubmissionResult(results, queue_id)
