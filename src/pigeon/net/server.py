"""Listeners: accept connections, enforce connection limits, run sessions, shut down gracefully.

A :class:`ListenerSet` owns the asyncio servers of all configured listeners. It counts
connections globally and per client address (``max_connections`` and
``max_connections_per_ip``; beyond them the client gets ``421 4.7.0`` and is closed) and keeps
the running sessions so that :meth:`ListenerSet.shutdown` can stop accepting, tell idle
sessions ``421 4.3.2`` at once, let busy ones finish their transaction within a grace
period, and then cancel whatever is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import socket
import ssl
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from pigeon.mail.reply import Reply
from pigeon.net.smtp_session import SessionContext, SmtpServices, SmtpSession
from pigeon.policy.limits import RateLimiter

__all__ = ["BoundListener", "ListenerSet"]

log = logging.getLogger("pigeon.net")

SessionFactory = Callable[
    [SessionContext, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]
]


@dataclass(slots=True)
class BoundListener:
    """A listening socket: its kind and the address it is bound to."""

    kind: str
    host: str
    port: int
    server: asyncio.base_events.Server


class ListenerSet:
    """All listeners of one server process.

    Args:
        settings: ``pigeon.config.Settings``.
        smtp_services: services for SMTP sessions (listener kinds smtp, submission,
            submissions).
        factories: session runners for other listener kinds (e.g. ``pop3``), called as
            ``factory(ctx, reader, writer)``; they override the SMTP default for their kind.
        ssl_context_for: returns the server ``ssl.SSLContext`` for a listener kind that
            uses implicit TLS (RFC 8314), or None for plaintext kinds.
    """

    def __init__(
        self,
        settings: object,
        smtp_services: SmtpServices,
        *,
        factories: dict[str, SessionFactory] | None = None,
        ssl_context_for: Callable[[str], ssl.SSLContext | None] | None = None,
    ) -> None:
        self.settings = settings
        self.smtp_services = smtp_services
        self.factories = dict(factories or {})
        self.ssl_context_for = ssl_context_for or (lambda kind: None)
        self.bound: list[BoundListener] = []
        self._sessions: dict[asyncio.Task[None], SessionContext] = {}
        self._per_ip: Counter[str] = Counter()
        self._ids = itertools.count(1)
        self._prefix = f"{os.getpid():x}"
        self._closing = False
        self._connection_rate = RateLimiter(
            getattr(settings.limits, "connections_per_minute_per_ip", 0)  # type: ignore[attr-defined]
        )

    @property
    def session_count(self) -> int:
        """Sessions currently running."""
        return len(self._sessions)

    async def start(self, kinds: frozenset[str] = frozenset({"smtp"})) -> list[BoundListener]:
        """Bind every configured listener whose kind is in ``kinds``.

        Returns:
            The bound listeners (port 0 in the config is replaced by the real port).

        Raises:
            OSError: an address cannot be bound (in use, not permitted).
        """
        for spec in self.settings.listener:  # type: ignore[attr-defined]
            if spec.kind not in kinds:
                continue
            kind = spec.kind
            server = await asyncio.start_server(
                lambda r, w, kind=kind: self._accept(kind, r, w),
                host=spec.host,
                port=spec.port,
                reuse_address=True,
                backlog=512,
                limit=64 * 1024,
                ssl=self.ssl_context_for(kind),
            )
            sock = server.sockets[0]
            addr = sock.getsockname()
            self.bound.append(BoundListener(kind, addr[0], addr[1], server))
            log.info("listening: %s on %s", kind, _fmt(addr[0], addr[1]))
        return self.bound

    async def _accept(
        self, kind: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        peer = writer.get_extra_info("peername") or ("", 0)
        address, port = str(peer[0]), int(peer[1])
        sock = writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        limits = self.settings.limits  # type: ignore[attr-defined]
        hostname = self.settings.server.hostname  # type: ignore[attr-defined]
        refusal: Reply | None = None
        if self._closing:
            refusal = Reply(421, "4.3.2", f"{hostname} Service shutting down")
        elif len(self._sessions) >= limits.max_connections:
            refusal = Reply(421, "4.7.0", f"{hostname} Error: too many connections")
        elif self._per_ip[address] >= limits.max_connections_per_ip:
            refusal = Reply(
                421, "4.7.0", f"{hostname} Error: too many connections from your address"
            )
        elif not self._connection_rate.allow(address):
            refusal = Reply(
                421, "4.7.0",
                f"{hostname} Error: too many connections from your address; try again later",
            )
        if refusal is not None:
            log.warning("refused connection from [%s]: %s", address, refusal)
            wire = refusal.to_bytes(enhanced_codes=False)
            if kind in ("pop3", "pop3s"):  # RFC 1939 §3 greeting form, RFC 3206 code
                wire = f"-ERR [SYS/TEMP] {refusal.text}\r\n".encode()
            with contextlib.suppress(Exception):
                writer.write(wire)
                await asyncio.wait_for(writer.drain(), 2.0)
                writer.close()
            return
        session_id = f"{self._prefix}.{next(self._ids):x}"
        ctx = SessionContext(
            session_id=session_id, listener_kind=kind, peer_address=address, peer_port=port
        )
        task = asyncio.current_task()
        assert task is not None
        self._sessions[task] = ctx
        self._per_ip[address] += 1
        try:
            factory = self.factories.get(kind)
            if factory is not None:
                await factory(ctx, reader, writer)
            else:
                await SmtpSession(self.smtp_services, ctx, reader, writer).run()
        finally:
            self._sessions.pop(task, None)
            self._per_ip[address] -= 1
            if self._per_ip[address] <= 0:
                del self._per_ip[address]

    async def shutdown(self, grace: float) -> None:
        """Stop accepting, end idle sessions now, and busy ones within ``grace`` seconds."""
        self._closing = True
        for b in self.bound:
            b.server.close()
        for ctx in self._sessions.values():
            ctx.shutting_down = True
        # Idle sessions are blocked in a read: wake them by cancelling; the session sends
        # 421 on cancellation.
        for task, ctx in list(self._sessions.items()):
            if ctx.idle:
                task.cancel()
        if self._sessions:
            _, pending = await asyncio.wait(list(self._sessions), timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=5.0)
        for b in self.bound:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(b.server.wait_closed(), 1.0)


def _fmt(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
