"""Bulk sending: many personalised messages over a small pool of SMTP connections.

Theory of operation
-------------------
Every recipient is a *job*. ``connections`` workers each keep one SMTP session open and
send job after job on it (one transaction per recipient, since every message is different;
a new connection after ``per_connection`` messages or when the server closed it). Jobs are
handed out by a :class:`DomainScheduler`, round robin over the recipients' domains with at
most ``per_domain`` messages in flight per domain, and paced by a :class:`RateLimiter`
(``rate`` messages per second over all workers).

Results, per recipient:

- ``250`` to the end of data: **sent**, recorded in the state log at once (the queue id
  from ``250 ... queued as ID`` is kept);
- ``5xx``: **failed**, recorded (the next run does not try again);
- ``4xx`` or a connection problem before the content was sent: tried again later in the
  run, up to ``retries`` times, then **deferred** (not recorded: the next run tries again);
- a connection lost after the content was sent: **unknown**, recorded and not tried
  again, so nobody gets the message twice (see :mod:`pigeon.mua.bulk_state`).

:meth:`BulkRun.stop` (SIGINT, SIGTERM) stops handing out jobs; the transactions in flight
finish and are recorded, so an interruption never sends a message twice. When no
connection can be made ``3 × connections`` times in a row the run gives up.
"""

from __future__ import annotations

import asyncio
import csv
import logging
import os
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pigeon.mail.reply import Reply
from pigeon.mua.bulk_render import (
    BulkRecipient,
    BulkRenderer,
    RecipientList,
    RenderError,
)
from pigeon.mua.bulk_state import DoneRecord, StateLog
from pigeon.mua.send import (
    ClientSession,
    ServerTarget,
    close_quietly,
    connect,
    mail_params_for,
    queue_id_from_reply,
    reply_for_exception,
)

__all__ = [
    "BulkOptions",
    "BulkResult",
    "BulkRun",
    "BulkSummary",
    "DomainScheduler",
    "RateLimiter",
    "write_report",
]

log = logging.getLogger("pigeon.mua.bulk")

Status = Literal["sent", "failed", "unknown", "deferred", "error"]


BulkConnector = Callable[[ServerTarget], Awaitable[ClientSession]]


@dataclass(frozen=True, slots=True)
class BulkOptions:
    """How hard to push.

    Attributes:
        connections: SMTP sessions at the same time.
        per_domain: messages in flight per recipient domain.
        rate: messages per second over all connections, or None for no limit.
        per_connection: messages on one connection before a new one is opened.
        retries: extra attempts in this run for a temporary failure.
    """

    connections: int = 4
    per_domain: int = 4
    rate: float | None = None
    per_connection: int = 100
    retries: int = 2

    def __post_init__(self) -> None:
        if self.connections < 1 or self.per_domain < 1 or self.per_connection < 1:
            raise ValueError("connections, per_domain and per_connection must be at least 1")
        if self.rate is not None and not self.rate > 0:
            raise ValueError("rate must be more than 0 messages per second")
        if self.retries < 0:
            raise ValueError("retries must not be negative")


class RateLimiter:
    """Spaces events ``1/rate`` seconds apart (no bursts), over all callers.

    Args:
        rate: events per second, or None for no limit.
        clock: monotonic seconds.
    """

    def __init__(self, rate: float | None, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = 0.0 if rate is None else 1.0 / rate
        self._clock = clock
        self._next = clock()

    def reserve(self) -> float:
        """Take the next slot.

        Returns:
            Seconds to wait before using it (0 when it is due).
        """
        if self.interval <= 0:
            return 0.0
        now = self._clock()
        slot = max(now, self._next)
        self._next = slot + self.interval
        return slot - now

    async def wait(self) -> None:
        """Take the next slot and sleep until it is due."""
        delay = self.reserve()
        if delay > 0:
            await asyncio.sleep(delay)


@dataclass(slots=True)
class _Job:
    recipient: BulkRecipient
    attempts: int = 0


class DomainScheduler:
    """Hands out jobs round robin over domains, at most ``per_domain`` in flight per domain.

    Args:
        recipients: the recipients to send to, in order.
        per_domain: the in-flight limit per domain.
    """

    def __init__(self, recipients: Iterable[BulkRecipient], per_domain: int) -> None:
        self.per_domain = per_domain
        self._queues: dict[str, deque[_Job]] = {}
        for recipient in recipients:
            self._queues.setdefault(recipient.domain, deque()).append(_Job(recipient))
        # Domains with jobs waiting, in round-robin order; a domain leaves when its line
        # is empty, so a take looks at no more domains than are at their limit.
        self._order: deque[str] = deque(self._queues)
        self._listed: set[str] = set(self._queues)
        self._in_flight: dict[str, int] = {}

    @property
    def pending(self) -> int:
        """Jobs waiting to be handed out."""
        return sum(len(q) for q in self._queues.values())

    @property
    def in_flight(self) -> int:
        """Jobs handed out and not yet finished or put back."""
        return sum(self._in_flight.values())

    @property
    def finished(self) -> bool:
        """Nothing waits and nothing is in flight."""
        return self.pending == 0 and self.in_flight == 0

    def take(self) -> _Job | None:
        """The next job whose domain has a free slot, or None when there is none now."""
        checked = 0
        while checked < len(self._order):
            domain = self._order[0]
            if not self._queues[domain]:
                self._order.popleft()
                self._listed.discard(domain)
                continue
            self._order.rotate(-1)
            checked += 1
            if self._in_flight.get(domain, 0) < self.per_domain:
                self._in_flight[domain] = self._in_flight.get(domain, 0) + 1
                return self._queues[domain].popleft()
        return None

    def done(self, job: _Job) -> None:
        """A handed-out job is finished."""
        domain = job.recipient.domain
        self._in_flight[domain] -= 1

    def put_back(self, job: _Job) -> None:
        """A handed-out job is to be tried again later (at the end of its domain's line)."""
        self.done(job)
        domain = job.recipient.domain
        self._queues.setdefault(domain, deque()).append(job)
        if domain not in self._listed:
            self._listed.add(domain)
            self._order.append(domain)

    def drop_pending(self) -> list[BulkRecipient]:
        """Empty every line; return the recipients that were waiting."""
        out = [job.recipient for q in self._queues.values() for job in q]
        for q in self._queues.values():
            q.clear()
        return out


@dataclass(frozen=True, slots=True)
class BulkResult:
    """What happened to one recipient in this run.

    Attributes:
        recipient: the recipient.
        status: ``sent``, ``failed``, ``unknown``, ``deferred`` or ``error`` (its message
            could not be made).
        detail: the queue id for ``sent``, else the reply or the error.
    """

    recipient: BulkRecipient
    status: Status
    detail: str


@dataclass(slots=True)
class BulkSummary:
    """Counts of one run.

    Attributes:
        results: this run's result per recipient key.
        already_done: recipients skipped because an earlier run finished them.
        not_attempted: recipients left when the run stopped (interrupted or gave up).
        elapsed: seconds the run took.
        interrupted: :meth:`BulkRun.stop` was called.
        gave_up: why the run gave up (no connection), or None.
    """

    results: dict[str, BulkResult] = field(default_factory=dict)
    already_done: int = 0
    not_attempted: int = 0
    elapsed: float = 0.0
    interrupted: bool = False
    gave_up: str | None = None

    def count(self, status: Status) -> int:
        """Recipients of this run with this status."""
        return sum(1 for r in self.results.values() if r.status == status)

    @property
    def rate(self) -> float:
        """Messages sent per second in this run."""
        return self.count("sent") / self.elapsed if self.elapsed > 0 else 0.0


ProgressCallback = Callable[[BulkResult | None], None]


class BulkRun:
    """One run of a campaign (see the module docstring).

    Args:
        renderer: makes each message.
        recipients: the recipient list.
        state: the campaign's state log (recipients in it are skipped).
        target: the server to submit to.
        options: concurrency, rate and retries.
        connector: opens a session (default :func:`pigeon.mua.send.connect`).
        progress: called with each result (and with None when a recipient is put back).
    """

    def __init__(
        self,
        renderer: BulkRenderer,
        recipients: RecipientList,
        state: StateLog,
        target: ServerTarget,
        options: BulkOptions,
        *,
        connector: BulkConnector | None = None,
        progress: ProgressCallback | None = None,
    ) -> None:
        self.renderer = renderer
        self.recipients = recipients
        self.state = state
        self.target = target
        self.options = options
        self._connector: BulkConnector = connector or connect
        self._progress = progress or (lambda result: None)
        todo = [r for r in recipients.recipients if r.key not in state.done]
        self.summary = BulkSummary(already_done=len(recipients.recipients) - len(todo))
        self.todo = len(todo)
        self._scheduler = DomainScheduler(todo, options.per_domain)
        self._limiter = RateLimiter(options.rate)
        self._cond: asyncio.Condition | None = None
        self._stopping = False
        self._connect_failures = 0
        self._wakers: set[asyncio.Task[None]] = set()
        self._state_error: OSError | None = None

    def stop(self) -> None:
        """Stop handing out jobs; transactions in flight finish (safe from a signal handler)."""
        if not self._stopping:
            self._stopping = True
            self.summary.interrupted = True
            self._wake()

    def _wake(self) -> None:
        """Wake the workers waiting for a job (they see the stop and return)."""
        if self._cond is not None:
            task = asyncio.get_running_loop().create_task(self._wake_all())
            self._wakers.add(task)
            task.add_done_callback(self._wakers.discard)

    @property
    def in_flight(self) -> int:
        """Messages being sent right now."""
        return self._scheduler.in_flight

    async def _wake_all(self) -> None:
        assert self._cond is not None
        async with self._cond:
            self._cond.notify_all()

    async def run(self) -> BulkSummary:
        """Send to every recipient not done yet.

        Returns:
            The summary (also in :attr:`summary`). Nothing is raised for what servers do.

        Raises:
            OSError: the state log could not be written (no more messages are started:
                without it, "never twice" cannot be promised; the recipients sent since
                the last good record may be sent again by the next run).
        """
        self._cond = asyncio.Condition()
        started = time.monotonic()
        workers = [
            asyncio.create_task(self._worker(n), name=f"bulk worker {n}")
            for n in range(min(self.options.connections, max(self.todo, 1)))
        ]
        try:
            await asyncio.gather(*workers)
        finally:
            for task in workers:
                task.cancel()
            self.summary.not_attempted = len(self._scheduler.drop_pending())
            self.summary.elapsed = time.monotonic() - started
            if self._state_error is None:
                self.state.sync()
        if self._state_error is not None:
            raise self._state_error
        return self.summary

    async def _next_job(self) -> _Job | None:
        assert self._cond is not None
        async with self._cond:
            while True:
                if self._stopping:
                    return None
                job = self._scheduler.take()
                if job is not None:
                    return job
                if self._scheduler.finished:
                    return None
                await self._cond.wait()

    async def _release(self, job: _Job, *, again: bool) -> None:
        assert self._cond is not None
        async with self._cond:
            if again:
                self._scheduler.put_back(job)
            else:
                self._scheduler.done(job)
            self._cond.notify_all()

    def _finish(self, job: _Job, status: Status, detail: str) -> None:
        recipient = job.recipient
        if status in ("sent", "failed", "unknown"):
            try:
                self.state.record(status, recipient.key, detail)
            except OSError as exc:
                # Without the log "never twice" cannot be promised: hand out no more jobs;
                # the transactions in flight finish, then run() raises.
                log.error("cannot write the state file %s: %s", self.state.path, exc)
                if self._state_error is None:
                    self._state_error = exc
                self._stopping = True
                self._wake()
        result = BulkResult(recipient, status, detail)
        self.summary.results[recipient.key] = result
        log.info("%s: %s %s", recipient.email, status, detail)
        self._progress(result)

    async def _worker(self, number: int) -> None:
        session: ClientSession | None = None
        sent_here = 0
        try:
            while True:
                job = await self._next_job()
                if job is None:
                    return
                again = False
                try:
                    try:
                        message = self.renderer.render(job.recipient)
                    except RenderError as exc:
                        self._finish(job, "error", str(exc))
                        continue
                    await self._limiter.wait()
                    if session is not None and (
                        not session.is_usable or sent_here >= self.options.per_connection
                    ):
                        await close_quietly(session)
                        session = None
                    if session is None:
                        try:
                            session = await self._connector(self.target)
                        except Exception as exc:  # every failure becomes a reply
                            reply = reply_for_exception(exc, self.target.address)
                            again = self._temporary(job, reply)
                            self._connect_failed(reply)
                            continue
                        self._connect_failures = 0
                        sent_here = 0
                    job.attempts += 1
                    try:
                        outcome = await session.send_message(
                            message.reverse_path, message.recipients, message.content,
                            mail_params=mail_params_for(smtputf8=message.smtputf8,
                                                        eight_bit=message.eight_bit),
                        )
                    except Exception as exc:  # every failure becomes a reply
                        session = None  # the client closed it
                        reply = reply_for_exception(exc, self.target.address)
                        if getattr(exc, "content_sent", True):
                            self._finish(job, "unknown", str(reply))
                        else:
                            again = self._temporary(job, reply, attempted=True)
                        continue
                    sent_here += 1
                    reply = outcome.reply_for(0)
                    if 200 <= reply.code < 300:
                        queue_id = queue_id_from_reply(reply)
                        self._finish(job, "sent", queue_id or str(reply))
                    elif reply.is_permanent:
                        self._finish(job, "failed", str(reply))
                    else:
                        again = self._temporary(job, reply, attempted=True)
                finally:
                    await self._release(job, again=again)
        finally:
            if session is not None:
                await close_quietly(session)

    def _temporary(self, job: _Job, reply: Reply, *, attempted: bool = False) -> bool:
        """A temporary failure: True to try again, else the job is deferred."""
        if not attempted:
            job.attempts += 1
        if job.attempts <= self.options.retries and not self._stopping:
            self._progress(None)
            return True
        self._finish(job, "deferred", str(reply))
        return False

    def _connect_failed(self, reply: Reply) -> None:
        self._connect_failures += 1
        limit = 3 * self.options.connections
        if self._connect_failures >= limit and not self._stopping:
            self.summary.gave_up = f"no connection to {self.target.address}: {reply}"
            log.error("giving up: %s", self.summary.gave_up)
            self._stopping = True
            self._wake()


def write_report(
    path: Path,
    recipients: RecipientList,
    done: dict[str, DoneRecord],
    summary: BulkSummary,
) -> int:
    """Write the report: one line per row of the recipient list, this run and earlier ones.

    Columns: ``recipient``, ``status`` (sent, failed, unknown, deferred, error, pending,
    invalid, duplicate) and ``detail`` (the queue id for sent, else the reply or reason).
    The file is written to a temporary name, fsynced and renamed, so a reader never sees
    half a report.

    Args:
        path: the report file.
        recipients: the recipient list.
        done: the state log's records (earlier runs and this one).
        summary: this run's results.

    Returns:
        The number of rows written (without the header).
    """
    rows: list[tuple[int, str, str, str]] = []
    for recipient in recipients.recipients:
        result = summary.results.get(recipient.key)
        record = done.get(recipient.key)
        if result is not None:
            rows.append((recipient.row, recipient.email, result.status, result.detail))
        elif record is not None:
            rows.append((recipient.row, recipient.email, record.status, record.detail))
        else:
            rows.append((recipient.row, recipient.email, "pending", "not attempted yet"))
    for skipped in recipients.skipped:
        rows.append((skipped.row, skipped.email, skipped.status, skipped.reason))
    rows.sort(key=lambda r: r[0])
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["recipient", "status", "detail"])
        writer.writerows(row[1:] for row in rows)
        file.flush()
        os.fsync(file.fileno())
    os.replace(tmp, path)
    return len(rows)
