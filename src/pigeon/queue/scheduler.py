"""The queue scheduler: when to try each recipient again, and the delivery passes.

Theory of operation
-------------------
The index is the source of truth; wake-ups are only hints. A *pass* reads which messages
have recipients due (``queued``/``deferred`` with ``next_attempt_at <= now``) and starts
one delivery task per message, at most ``delivery_concurrency`` at a time. A task:

1. reads the message and its due recipients;
2. records the attempt *before* making it (``attempts + 1`` and ``next_attempt_at`` pushed
   out by the backoff), so a crash during the attempt can never cause a hot retry loop
   (RFC 5321 §4.5.4.1: retries at intervals, never in a tight loop);
3. hands the recipients to the delivery agent of their route (``local``/``remote``);
4. stores each result: 2xx → ``delivered``; 5xx → ``failed``; 4xx → ``deferred`` until the
   pushed-out time, or ``expired`` (``4.4.7``) once the message is ``max_lifetime`` old
   (RFC 5321 §4.5.4.1: give up after 4-5 days);
5. sends ONE DSN (RFC 3464) for all events of this pass that need one (failed, expired,
   delayed after ``delay_warning``, delivered when NOTIFY=SUCCESS), from the null
   reverse-path to the message's reverse-path, never about a DSN or to ``<>``
   (RFC 3461 §6.2, RFC 5321 §6.1);
6. removes the message (spool file, then index rows) once every recipient is final.

Backoff: the n-th retry comes ``retry_min · 2^(n-1)`` seconds after the attempt before it
started, capped at ``retry_max``: with the defaults 300, 600, 1200, 2400, 4000, 4000, ...

Events waiting for their DSN are stored with the recipient (``dsn_action``), so a crash
between an attempt and its DSN loses no DSN (it may send one twice, never none).
Recipients of the ``remote`` route, while no remote agent is configured, are deferred with
``4.4.0`` and never expire.

The background loop (:meth:`Scheduler.run`) sleeps until the next due time, until
:meth:`Scheduler.wake`, or at most :data:`POLL_INTERVAL` seconds: that bound is how changes
made by the ``pigeon queue`` tools in ``queue.db`` (flush, retry, release, bounce) are
noticed while the server runs.

A message just queued is handed over whole (:meth:`Scheduler.offer`) and its first attempt
starts at once, without reading it back from the index, while fewer than
``delivery_concurrency`` × :data:`OFFER_FACTOR` messages are in flight; past that it waits
for a pass like any other. The index writes of all attempts (claims, results, removals) go
through the queue's group commit (the ``write`` argument): one transaction for many
messages. Only results are written durably (they must be on disk before a spool file is
removed); claims and removals may be undone by an OS crash, which repeats an attempt at
most.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from functools import partial
from types import ModuleType
from typing import Any, TypeVar

from pigeon.delivery.base import DeliveryAgent
from pigeon.queue.model import FINAL_STATES, AttemptResult, QueuedMessage, QueuedRecipient
from pigeon.storage.ports import CorruptEntryError, DsnAction, QueueStore, RecipientUpdate

__all__ = [
    "OFFER_FACTOR",
    "POLL_INTERVAL",
    "REMOTE_UNAVAILABLE",
    "RetryPolicy",
    "Scheduler",
    "expired_result",
    "outcome",
]

log = logging.getLogger("pigeon.queue.scheduler")

# Seconds between two reads of the index when nothing woke the scheduler: the delay after
# which a `pigeon queue flush/retry/release/bounce` run in another process takes effect.
POLL_INTERVAL = 2.0
# The clock of the loop's own pacing (seconds; a name of its own so tests can set it).
_monotonic = time.monotonic
# Freshly queued messages start at once while fewer than concurrency × OFFER_FACTOR messages
# are in flight (the excess waits for the delivery slots in memory, not in the index).
OFFER_FACTOR = 4
# The most queue ids one test/CLI pass (run_due_once) picks up.
_PASS_LIMIT = 100_000
# 2**62 seconds is far beyond any retry_max; bounding the exponent avoids float overflow.
_MAX_DOUBLINGS = 62

REMOTE_UNAVAILABLE = AttemptResult("deferred", 451, "4.4.0", "remote delivery not available yet")
_AGENT_ERROR = AttemptResult("deferred", 451, "4.3.0", "local error in processing")

T = TypeVar("T")
Write = Callable[[Callable[[], Any], bool], Awaitable[Any]]


async def _write_in_thread(call: Callable[[], T], durable: bool) -> T:
    return await asyncio.to_thread(call)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """When to try again and when to give up (RFC 5321 §4.5.4.1).

    Attributes:
        retry_min: seconds before the first retry.
        retry_max: the longest wait between two attempts, seconds.
        max_lifetime: seconds after arrival after which a deferred recipient expires.
        delay_warning: seconds after arrival after which a still-deferred recipient gets a
            "delayed" DSN; 0 turns delay DSNs off.
    """

    retry_min: float = 300.0
    retry_max: float = 4000.0
    max_lifetime: float = 5 * 86400.0
    delay_warning: float = 4 * 3600.0

    @classmethod
    def from_settings(cls, queue_settings: Any) -> RetryPolicy:
        """Build from ``settings.queue``."""
        return cls(
            retry_min=float(queue_settings.retry_min),
            retry_max=float(queue_settings.retry_max),
            max_lifetime=float(queue_settings.max_lifetime),
            delay_warning=float(queue_settings.delay_warning),
        )

    def delay(self, attempt: int) -> float:
        """Seconds from the start of attempt number ``attempt`` (1 = first) to the next one.

        Args:
            attempt: the attempt being started, counting from 1.

        Returns:
            ``min(retry_min · 2^(attempt-1), retry_max)``.
        """
        doublings = min(max(attempt - 1, 0), _MAX_DOUBLINGS)
        return min(self.retry_min * float(1 << doublings), self.retry_max)

    def is_expired(self, arrival: float, now: float) -> bool:
        """True when a message that arrived at ``arrival`` is too old to retry at ``now``."""
        return now - arrival >= self.max_lifetime

    def wants_delay_warning(self, arrival: float, now: float) -> bool:
        """True when a deferred recipient should get its "delayed" DSN at ``now``."""
        return self.delay_warning > 0 and now - arrival >= self.delay_warning


def expired_result(last: AttemptResult) -> AttemptResult:
    """The result stored when a recipient expires (RFC 3463 4.4.7, delivery time expired).

    Args:
        last: the last temporary failure.

    Returns:
        A ``failed`` result with enhanced status ``4.4.7`` that keeps the last reply's code,
        remote host and text for the DSN's diagnostic.
    """
    code = last.code if 400 <= last.code < 500 else 451
    return AttemptResult(
        "failed",
        code,
        "4.4.7",
        f"delivery time expired; last error: {last.enhanced} {last.text}".rstrip(),
        last.remote_host,
    )


def outcome(
    message: QueuedMessage,
    recipient: QueuedRecipient,
    result: AttemptResult,
    *,
    now: float,
    policy: RetryPolicy,
    notify: Callable[[QueuedRecipient, DsnAction], bool],
    may_expire: bool = True,
) -> RecipientUpdate:
    """Decide a recipient's new state from one attempt's result.

    Args:
        message: the message (its arrival time decides expiry and delay warnings).
        recipient: the recipient as it was when the attempt started.
        result: the delivery agent's result.
        now: Unix time the attempt ended, seconds.
        policy: the retry policy.
        notify: whether an event of this kind needs a DSN for this recipient (NOTIFY,
            null reverse-path and DSN-about-a-DSN rules).
        may_expire: False for recipients deferred for our own reasons (no remote agent).

    Returns:
        The update to store.
    """
    if result.status == "delivered":
        action: DsnAction | None = "delivered" if notify(recipient, "delivered") else None
        return RecipientUpdate(recipient.id, "delivered", result, dsn_action=action)
    if result.status == "failed":
        action = "failed" if notify(recipient, "failed") else None
        return RecipientUpdate(recipient.id, "failed", result, dsn_action=action)
    if may_expire and policy.is_expired(message.arrival, now):
        action = "failed" if notify(recipient, "failed") else None
        return RecipientUpdate(recipient.id, "expired", expired_result(result), dsn_action=action)
    if (may_expire and not recipient.delay_notified
            and policy.wants_delay_warning(message.arrival, now)):
        action = "delayed" if notify(recipient, "delayed") else None
        return RecipientUpdate(
            recipient.id, "deferred", result, delay_notified=True, dsn_action=action
        )
    return RecipientUpdate(recipient.id, "deferred", result)


def _dsn_module() -> ModuleType:
    # Imported when first needed: DSN generation is a separate module (STYLE.md §14).
    return importlib.import_module("pigeon.queue.dsn")


class Scheduler:
    """Runs delivery passes over a :class:`~pigeon.storage.ports.QueueStore`.

    Args:
        store: the queue index.
        agents: delivery agents by route (``"local"``, ``"remote"``).
        policy: the retry policy.
        clock: returns Unix time in seconds.
        concurrency: the most messages being delivered at once.
        hostname: this server's name (the DSN's Reporting-MTA).
        send_dsn: queues a DSN's content for a message; returns its queue id, or None when
            the message's reverse-path cannot receive one.
        discard_spool: removes a finished message's spool file.
        quarantine: moves an unusable entry aside (queue id, reason).
        write: runs an index write ``(call, durable)`` and returns its result; the queue
            passes its group commit. Default: each write in its own thread and transaction.

    Attributes:
        dsns_sent: DSNs queued by this scheduler.
        in_flight: the delivery task of each message being attempted, by queue id.
        committing: queue ids whose enqueue is being committed (visible in the index but
            not yet acknowledged); passes skip them, the queue offers them when durable.
    """

    def __init__(
        self,
        *,
        store: QueueStore,
        agents: Mapping[str, DeliveryAgent],
        policy: RetryPolicy,
        clock: Callable[[], float],
        concurrency: int,
        hostname: str,
        send_dsn: Callable[[QueuedMessage, bytes], Awaitable[str | None]],
        discard_spool: Callable[[str], object],
        quarantine: Callable[[str, str], object],
        write: Write | None = None,
    ) -> None:
        self.store = store
        self.agents = dict(agents)
        self.policy = policy
        self.clock = clock
        self.concurrency = max(1, concurrency)
        self.hostname = hostname
        self.dsns_sent = 0
        self._send_dsn = send_dsn
        self._discard_spool = discard_spool
        self._quarantine = quarantine
        self._write = write or _write_in_thread
        self._running = False
        self._backlog = False
        # Queue ids whose enqueue is being committed: in the index, not yet acknowledged.
        # Passes leave them alone; the queue offers each one once its commit is durable.
        self.committing: set[str] = set()
        self._slots = asyncio.Semaphore(self.concurrency)
        self._wake = asyncio.Event()
        self.in_flight: dict[str, asyncio.Task[int]] = {}

    # -- entry points ------------------------------------------------------------------------

    def wake(self) -> None:
        """Ask the background loop for a pass now (a hint; the index is the truth)."""
        self._wake.set()

    def offer(self, message: QueuedMessage) -> bool:
        """Start the first attempt of a message just queued, from memory.

        Args:
            message: the message as committed (recipient ids set).

        Returns:
            True when a delivery task was started; False when the background loop is not
            running or too many messages are in flight (a pass will pick it up).
        """
        if not self._running or message.queue_id in self.in_flight:
            return False
        if len(self.in_flight) >= self.concurrency * OFFER_FACTOR:
            self._backlog = True
            return False
        self._spawn(message.queue_id, message)
        return True

    async def run_due_once(self) -> int:
        """Run one complete pass: pending DSNs, then every due message, to completion.

        Meant for tests and tools, while :meth:`run` is not running.

        Returns:
            The number of recipient delivery attempts made.
        """
        await self._process_events()
        ids = await asyncio.to_thread(self.store.due, self.clock(), _PASS_LIMIT)
        tasks = [self._spawn(queue_id) for queue_id in ids if queue_id not in self.in_flight]
        counts = await asyncio.gather(*tasks)
        return sum(counts)

    async def run(self) -> None:
        """The background loop; runs until cancelled."""
        self._running = True
        try:
            await self._loop()
        finally:
            self._running = False

    async def _loop(self) -> None:
        # Pending events and finished messages come from a crash or from the queue tools,
        # not from this loop's own attempts (they finish their messages themselves), so the
        # index is searched for them once per POLL_INTERVAL, not on every wake-up: under
        # load the loop wakes for every commit batch and every finished attempt.
        events_at = -math.inf
        while True:
            try:
                if _monotonic() - events_at >= POLL_INTERVAL:
                    events_at = _monotonic()
                    await self._process_events()
                blocked = await self._dispatch()
                self._backlog = blocked
                if blocked:
                    timeout = POLL_INTERVAL
                else:
                    next_due = await asyncio.to_thread(self.store.next_due_at)
                    timeout = POLL_INTERVAL
                    if next_due is not None:
                        timeout = min(POLL_INTERVAL, max(0.0, next_due - self.clock()))
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("queue scheduler pass failed")
                timeout = POLL_INTERVAL
            timeout = min(timeout, max(0.0, events_at + POLL_INTERVAL - _monotonic()))
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except TimeoutError:
                pass
            self._wake.clear()

    async def drain(self, timeout: float) -> None:
        """Wait for the delivery tasks in flight, at most ``timeout`` seconds, then cancel them.

        A cancelled attempt is retried after a restart at the time recorded when it began.
        """
        tasks = list(self.in_flight.values())
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=timeout)
        for task in pending:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- passes --------------------------------------------------------------------------------

    async def _dispatch(self) -> bool:
        """Start tasks for due messages while slots are free; True if due work had to wait."""
        free = self.concurrency - len(self.in_flight)
        if free <= 0:
            return True
        ids = await asyncio.to_thread(
            self.store.due, self.clock(), free + len(self.in_flight)
        )
        fresh = [queue_id for queue_id in ids
                 if queue_id not in self.in_flight and queue_id not in self.committing]
        for queue_id in fresh[:free]:
            self._spawn(queue_id)
        return len(fresh) > free or len(fresh) < len(ids)

    def _spawn(self, queue_id: str, message: QueuedMessage | None = None) -> asyncio.Task[int]:
        task = asyncio.create_task(
            self._attempt_guarded(queue_id, message), name=f"deliver {queue_id}"
        )
        self.in_flight[queue_id] = task

        def done(_: asyncio.Task[int]) -> None:
            if self.in_flight.get(queue_id) is task:
                del self.in_flight[queue_id]
            if self._backlog or not self._running:
                self._wake.set()

        task.add_done_callback(done)
        return task

    async def _attempt_guarded(self, queue_id: str, message: QueuedMessage | None) -> int:
        try:
            async with self._slots:
                return await self._attempt(queue_id, message)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s: delivery task failed", queue_id)
            return 0

    async def _attempt(self, queue_id: str, fresh: QueuedMessage | None = None) -> int:
        """One attempt at a message's due recipients; ``fresh``: the message just queued."""
        message = fresh if fresh is not None else await self._load(queue_id)
        if message is None:
            return 0
        now = self.clock()
        due = [
            r for r in message.recipients
            if r.state in ("queued", "deferred") and r.next_attempt_at <= now
        ]
        if not due:
            return 0
        if fresh is None and not await asyncio.to_thread(message.spool_path.is_file):
            await asyncio.to_thread(self._quarantine, queue_id, "spool file missing")
            return 0
        claims = [(r.id, now + self.policy.delay(r.attempts + 1)) for r in due]
        claimed = set(await self._write(partial(self.store.begin_attempt, claims, now), False))
        for r, (_, next_attempt_at) in zip(due, claims, strict=True):
            if r.id in claimed:
                r.attempts += 1
                r.next_attempt_at = next_attempt_at
        due = [r for r in due if r.id in claimed]
        if not due:
            return 0
        routes: dict[str, list[QueuedRecipient]] = {}
        for r in due:
            routes.setdefault(r.route, []).append(r)
        batches = await asyncio.gather(
            *(self._deliver(message, route, rs) for route, rs in routes.items())
        )
        ended = self.clock()
        notify = self._notify_predicate(message)
        updates = [
            outcome(message, r, result, now=ended, policy=self.policy, notify=notify,
                    may_expire=may_expire)
            for batch in batches
            for r, result, may_expire in batch
        ]
        changed = await self._write(partial(self.store.record, updates), True)
        for r, result, _ in (item for batch in batches for item in batch):
            log.info("%s: to=<%s> attempt=%d status=%s (%d %s %s)%s", queue_id, r.address,
                     r.attempts, result.status, result.code, result.enhanced, result.text,
                     f" via {result.remote_host}" if result.remote_host else "")
        if (changed == len(updates) == len(message.recipients)
                and all(u.state in FINAL_STATES and u.dsn_action is None for u in updates)):
            # Every recipient is now final, with no DSN to send: nothing to read back.
            await self._remove(queue_id)
        else:
            await self._finish(queue_id)
        return len(due)

    async def _deliver(
        self, message: QueuedMessage, route: str, recipients: list[QueuedRecipient]
    ) -> list[tuple[QueuedRecipient, AttemptResult, bool]]:
        agent = self.agents.get(route)
        if agent is None:
            return [(r, REMOTE_UNAVAILABLE, False) for r in recipients]
        try:
            results = await agent.deliver(message, recipients)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s: %s delivery agent failed", message.queue_id, route)
            results = [_AGENT_ERROR] * len(recipients)
        if len(results) != len(recipients):
            log.error("%s: %s delivery agent gave %d results for %d recipients",
                      message.queue_id, route, len(results), len(recipients))
            results = [_AGENT_ERROR] * len(recipients)
        return [(r, result, True) for r, result in zip(recipients, results, strict=True)]

    async def _load(self, queue_id: str) -> QueuedMessage | None:
        try:
            return await asyncio.to_thread(self.store.get, queue_id)
        except CorruptEntryError as exc:
            await asyncio.to_thread(self._quarantine, queue_id, exc.reason)
            return None

    # -- DSNs and clean-up -----------------------------------------------------------------------

    @staticmethod
    def _notify_predicate(
        message: QueuedMessage,
    ) -> Callable[[QueuedRecipient, DsnAction], bool]:
        if not message.reverse_path or message.is_dsn:
            # RFC 3461 §6.2 / RFC 5321 §6.1: never a DSN to <> or about a DSN.
            return lambda recipient, action: False
        should_notify = _dsn_module().should_notify
        return lambda recipient, action: bool(should_notify(recipient, action))

    async def _process_events(self) -> None:
        """DSNs left pending (by a crash or `pigeon queue bounce`) and finished messages."""
        events = await asyncio.to_thread(self.store.pending_events)
        finished = await asyncio.to_thread(self.store.finished)
        for queue_id in sorted(set(events) | set(finished)):
            if queue_id not in self.in_flight:
                try:
                    await self._finish(queue_id)
                except Exception:
                    log.exception("%s: could not finish the pass", queue_id)

    async def _finish(self, queue_id: str) -> None:
        """Send the DSN for pending events, then remove the message if it is done."""
        events = (await asyncio.to_thread(self.store.pending_events, queue_id)).get(queue_id, {})
        message = await self._load(queue_id)
        if message is None:
            return
        if events:
            await self._send_events(message, events)
            await self._write(partial(self.store.clear_events, list(events)), False)
        if all(r.state in FINAL_STATES for r in message.recipients):
            await self._remove(queue_id)

    def _discard_then_delete(self, queue_id: str) -> bool:
        """Remove the spool file, then the rows (in the thread that writes the index)."""
        self._discard_spool(queue_id)
        return self.store.delete(queue_id)

    async def _remove(self, queue_id: str) -> None:
        """Remove a message whose recipients are all final (their states are durable)."""
        # The spool file first, then the rows: a crash in between leaves a finished
        # entry without content, which the next start simply removes. The other order
        # would leave a spool file without rows, indistinguishable from a message that
        # was never acknowledged, and recovery would move it to spool/corrupt.
        await self._write(partial(self._discard_then_delete, queue_id), False)
        log.info("%s: removed (all recipients done)", queue_id)

    async def _send_events(self, message: QueuedMessage, events: dict[int, DsnAction]) -> None:
        notify = self._notify_predicate(message)
        entries = [
            (r, events[r.id]) for r in message.recipients
            if r.id in events and notify(r, events[r.id])
        ]
        if not entries:
            return
        dsn = _dsn_module()
        extra: dict[str, float] = {}
        if any(action == "delayed" for _, action in entries):
            extra["will_retry_until"] = message.arrival + self.policy.max_lifetime
        content = await asyncio.to_thread(
            dsn.build_dsn, message, entries, reporting_mta=self.hostname,
            arrival_date=message.arrival, now=self.clock(), **extra,
        )
        dsn_id = await self._send_dsn(message, content)
        if dsn_id is not None:
            self.dsns_sent += 1
            log.info("%s: DSN %s to <%s> (%s)", message.queue_id, dsn_id, message.reverse_path,
                     ", ".join(f"{r.address}={action}" for r, action in entries))
