"""Outbound connection reuse with per-destination and global connection limits.

Theory of operation
-------------------
A *destination* is what outbound connections are grouped by: a recipient domain delivered
by MX, or a route's next hop. Every open connection (connecting, busy or idle) holds one
*slot* of its destination and one of the global limit, so at most ``per_destination``
connections are ever open to one destination and ``total`` overall.

:meth:`ConnectionPool.acquire` returns an idle connection of the destination when one is
still usable (the server has not closed it, it has carried fewer than ``max_messages``
messages), else reserves a slot for a new connection (the caller connects and later
:meth:`release`\\ s it), else waits until a slot or an idle connection frees up. When only
the global limit is in the way, the oldest idle connection of another destination is
closed to make room. An idle connection is closed (with QUIT) after ``idle_time``
seconds, as Postfix's connection cache does.

A caller holds at most one slot of a destination at a time and never waits for a slot
while holding one, so waiting cannot deadlock.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from dataclasses import dataclass, field
from typing import Protocol

__all__ = ["ConnectionPool", "PooledSession"]


class PooledSession(Protocol):
    """What the pool needs of a session (:class:`~pigeon.net.smtp_client.SmtpClientSession`)."""

    messages_sent: int

    @property
    def is_usable(self) -> bool:
        """The connection is open and between transactions."""
        ...

    async def quit(self) -> None:
        """Say QUIT and close."""
        ...


@dataclass
class _Destination:
    open: int = 0
    idle: deque[tuple[PooledSession, asyncio.TimerHandle | None]] = field(default_factory=deque)


class ConnectionPool:
    """Connection slots and idle connections by destination (see the module docstring).

    Args:
        per_destination: most connections open to one destination.
        total: most connections open in all.
        idle_time: seconds an idle connection is kept.
        max_messages: messages a connection may carry before it is closed.

    Attributes:
        opened: new connections the pool gave slots for (for statistics and tests).
        reused: times an idle connection was handed out again.
    """

    def __init__(
        self, *, per_destination: int, total: int, idle_time: float, max_messages: int
    ) -> None:
        self.per_destination = max(1, per_destination)
        self.total = max(1, total)
        self.idle_time = idle_time
        self.max_messages = max(1, max_messages)
        self.opened = 0
        self.reused = 0
        self._dests: dict[str, _Destination] = {}
        self._open_total = 0
        self._changed: asyncio.Condition | None = None
        self._closing: set[asyncio.Task[None]] = set()
        self._closed = False

    @property
    def open_connections(self) -> int:
        """Connections holding a slot now (connecting, busy or idle)."""
        return self._open_total

    def open_to(self, destination: str) -> int:
        """Connections holding a slot of ``destination`` now."""
        d = self._dests.get(destination)
        return d.open if d else 0

    def _condition(self) -> asyncio.Condition:
        if self._changed is None:
            self._changed = asyncio.Condition()
        return self._changed

    async def acquire(self, destination: str) -> PooledSession | None:
        """An idle connection to reuse, or None when a slot was reserved for a new one.

        Waits while the destination (or the whole pool) is at its limit.

        Raises:
            RuntimeError: the pool is closed.
        """
        cond = self._condition()
        async with cond:
            while True:
                if self._closed:
                    raise RuntimeError("the connection pool is closed")
                d = self._dests.setdefault(destination, _Destination())
                while d.idle:
                    # The longest idle first: the load spreads over the open
                    # connections and none of them idles out while mail keeps coming.
                    session, timer = d.idle.popleft()
                    if timer is not None:
                        timer.cancel()
                    if session.is_usable and session.messages_sent < self.max_messages:
                        self.reused += 1
                        return session
                    self._drop(d, session)
                if d.open < self.per_destination:
                    if self._open_total >= self.total:
                        self._evict_idle()
                    if self._open_total < self.total:
                        d.open += 1
                        self._open_total += 1
                        self.opened += 1
                        return None
                await cond.wait()

    async def release(
        self, destination: str, session: PooledSession | None, *, reusable: bool = True
    ) -> None:
        """Give a slot back: keep ``session`` idle for reuse, or close it and free the slot.

        Args:
            destination: the destination the slot was acquired for.
            session: the connection, or None when no connection was made.
            reusable: the session may carry another message.
        """
        cond = self._condition()
        async with cond:
            d = self._dests.setdefault(destination, _Destination())
            keep = (
                session is not None and reusable and not self._closed
                and session.is_usable and session.messages_sent < self.max_messages
            )
            if keep:
                assert session is not None
                timer = asyncio.get_running_loop().call_later(
                    self.idle_time, self._expire, destination, session
                )
                d.idle.append((session, timer))
            else:
                self._drop(d, session)
            cond.notify_all()

    def _drop(self, d: _Destination, session: PooledSession | None) -> None:
        d.open -= 1
        self._open_total -= 1
        if session is not None:
            self._quit_later(session)

    def _quit_later(self, session: PooledSession) -> None:
        task = asyncio.get_running_loop().create_task(session.quit())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def _evict_idle(self) -> None:
        for d in self._dests.values():
            if d.idle:
                session, timer = d.idle.popleft()
                if timer is not None:
                    timer.cancel()
                self._drop(d, session)
                return

    def _expire(self, destination: str, session: PooledSession) -> None:
        d = self._dests.get(destination)
        if d is None:
            return
        for i, (s, _) in enumerate(d.idle):
            if s is session:
                del d.idle[i]
                self._drop(d, session)
                asyncio.get_running_loop().create_task(self._notify())
                return

    async def _notify(self) -> None:
        cond = self._condition()
        async with cond:
            cond.notify_all()

    async def close(self) -> None:
        """Close every idle connection (QUIT) and refuse further acquisitions."""
        cond = self._condition()
        async with cond:
            self._closed = True
            for d in self._dests.values():
                while d.idle:
                    session, timer = d.idle.popleft()
                    if timer is not None:
                        timer.cancel()
                    self._drop(d, session)
            cond.notify_all()
        if self._closing:
            with contextlib.suppress(Exception):
                await asyncio.wait(list(self._closing), timeout=5.0)
