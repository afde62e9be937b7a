"""Wiring: build the services from the settings and run the server until a signal.

``run_server(settings)`` is what ``pigeon serve`` calls. It opens the stores, starts the
queue (scheduler and delivery agents) and the listeners, prints what it listens on, and on
SIGTERM or SIGINT shuts down gracefully: stop accepting, end idle sessions with ``421``,
let busy ones finish within ``timeouts.shutdown_grace``, then stop the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import ssl
import sys
from dataclasses import dataclass
from typing import Any

from pigeon.net.server import BoundListener, ListenerSet
from pigeon.net.smtp_session import SmtpServices
from pigeon.protocol.smtp.server import ServerConfig

__all__ = ["App", "build_app", "run_server", "server_config"]

log = logging.getLogger("pigeon")

# Listener kinds this version serves; the others are accepted in the config and reported.
SERVED_KINDS = frozenset({"smtp", "submission", "submissions", "pop3", "pop3s"})
# Listener kinds that start TLS at connect (RFC 8314 §3.3); the others may offer STARTTLS.
IMPLICIT_TLS_KINDS = frozenset({"submissions", "pop3s"})


def server_config(settings: Any) -> ServerConfig:
    """Derive the SMTP protocol limits and extensions from the settings."""
    lim = settings.limits
    return ServerConfig(
        hostname=settings.server.hostname,
        max_message_size=lim.max_message_size,
        max_recipients=lim.max_recipients,
        max_command_length=lim.max_command_length,
        max_line_length=lim.max_line_length,
        max_hops=lim.max_hops,
    )


@dataclass(slots=True)
class App:
    """The running services of one Pigeon process."""

    settings: Any
    accounts: Any
    router: Any
    queue: Any
    listeners: ListenerSet
    tls: Any = None
    authenticator: Any = None

    async def start(self) -> list[BoundListener]:
        """Start the queue, then bind the listeners; return what is bound."""
        await self.queue.start()
        return await self.listeners.start(SERVED_KINDS)

    async def stop(self) -> None:
        """Graceful shutdown (see the module docstring)."""
        await self.listeners.shutdown(self.settings.timeouts.shutdown_grace)
        await self.queue.stop()
        remote = self.queue.agents.get("remote")
        if remote is not None:
            with contextlib.suppress(Exception):
                await remote.aclose()
        with contextlib.suppress(Exception):
            self.accounts.close()


def build_app(settings: Any) -> App:
    """Create the stores and services for ``settings`` (nothing is started yet)."""
    from pigeon.auth.service import Authenticator
    from pigeon.delivery.local import LocalDelivery
    from pigeon.net.pop3_session import POP3_KINDS, Pop3Services, pop3_session_factory
    from pigeon.net.tls import TlsProvider
    from pigeon.queue.service import QueueService
    from pigeon.routing.router import Router
    from pigeon.storage.sqlite.accounts import AccountStore

    data_dir = settings.server.data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    accounts = AccountStore(data_dir / "accounts.db")
    accounts.sync_config(settings.mailbox)
    router = Router(settings, accounts)
    from pigeon.delivery.remote import RemoteDelivery

    # Outbound delivery must know where this server listens (never deliver to itself);
    # `listeners` is bound below, before the queue starts delivering.
    remote = RemoteDelivery(
        settings, local_addresses=lambda: [(b.host, b.port) for b in listeners.bound]
    )
    agents = {"local": LocalDelivery(settings, accounts, router), "remote": remote}
    queue = QueueService(settings, router=router, agents=agents)
    tls = TlsProvider(settings)
    authenticator = Authenticator(settings, accounts)
    services = SmtpServices(
        settings=settings, router=router, queue=queue, server_config=server_config(settings),
        tls=tls, authenticator=authenticator,
    )

    def ssl_context_for(kind: str) -> ssl.SSLContext | None:
        return tls.server_context() if kind in IMPLICIT_TLS_KINDS else None

    pop3 = pop3_session_factory(
        Pop3Services(settings=settings, authenticator=authenticator, tls=tls)
    )
    listeners = ListenerSet(settings, services, ssl_context_for=ssl_context_for,
                            factories={kind: pop3 for kind in POP3_KINDS})
    return App(settings, accounts, router, queue, listeners, tls=tls,
               authenticator=authenticator)


def _install_uvloop() -> None:
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def _reload(app: App) -> None:
    """SIGHUP: read the TLS certificate and the aliases file again."""
    log.info("SIGHUP: reloading")
    if app.tls is not None:
        try:
            app.tls.reload()
        except Exception as exc:
            log.error("TLS reload failed, keeping the old certificate: %s", exc)
    try:
        app.router.reload_aliases()
    except Exception as exc:
        log.error("aliases reload failed, keeping the old table: %s", exc)


async def _serve(settings: Any) -> int:
    from pigeon.net.tls import TlsError

    try:
        app = build_app(settings)
    except TlsError as exc:
        print(f"pigeon: TLS: {exc}", file=sys.stderr)
        return 1
    try:
        bound = await app.start()
    except OSError as exc:
        print(f"pigeon: cannot listen: {exc}", file=sys.stderr)
        await app.queue.stop()
        return 1
    hostname = settings.server.hostname
    print(f"Pigeon {hostname}: data in {settings.server.data_dir}", flush=True)
    for b in bound:
        host = f"[{b.host}]" if ":" in b.host else b.host
        print(f"  listening  {b.kind:<12} {host}:{b.port}", flush=True)
    for spec in settings.listener:
        if spec.kind not in SERVED_KINDS:
            print(f"  not served {spec.kind:<12} {spec.address} (not available in this version)",
                  flush=True)
    if app.tls is not None:
        print(f"  TLS certificate SHA-256 {app.tls.fingerprint_sha256}", flush=True)
    print(f"  local domains: {', '.join(settings.domains.local)}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, _reload, app)
    await stop.wait()
    log.info("shutting down")
    await app.stop()
    log.info("stopped")
    return 0


def run_server(settings: Any) -> int:
    """Run Pigeon until SIGTERM/SIGINT; return the process exit status."""
    _install_uvloop()
    return asyncio.run(_serve(settings))
