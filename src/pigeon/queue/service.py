"""The queue service: the one enqueue choke point, group commit, recovery, the scheduler.

Every message enters here (DESIGN.md "Every message enters through queue.enqueue()"):
MTA inbound, MSA submission, local tools and the DSNs Pigeon makes itself.

Theory of operation
-------------------
*Enqueue.* The caller gets a :class:`SpoolWriter` from :meth:`QueueService.open_spool`,
writes the Received header and the content into it (kept in memory up to 64 KiB, else in
``spool/tmp/<queue id>``), then calls :meth:`QueueService.enqueue`. Enqueue expands each
forward-path through the router (aliases, subaddresses; one row per final address) and
hands the message to the *committer*.

*Group commit*, in two stages with a thread each. The *placer* takes every enqueue
waiting at that moment and writes their spool files into ``spool/queue/`` (not yet
durable, no index row). The *committer* then takes every placed enqueue, and every index
write the scheduler asked for (:meth:`QueueService.write`), as one batch: it makes the
files durable and writes all the batch's rows in ONE SQLite transaction; see
:meth:`_commit_batch` for the two orders (fsync per file, then a ``synchronous=FULL``
commit; or a ``NORMAL`` commit followed by one syncfs that covers files and index). Only
then are the waiting enqueues answered, so ``250`` after DATA means file, name and index
are all on stable storage (RFC 5321 §4.1.1.4, §6.1: the server takes responsibility for
the message once it says OK). While one batch commits, the next is placed: concurrent
sessions share one sync. Each committed message is then offered to the scheduler from
memory.

*A failed sync stops the queue taking mail* (fail-stop, as PostgreSQL does since its
"fsyncgate"). The kernel reports a write-back error once, to one sync, and marks the lost
pages clean: a later sync succeeds although pages of files written before it (the next
batch's spool files, a large message already spilled to ``tmp/``, the index's log) never
reached the disk. So after the first failed sync every enqueue is refused with ``451``
and every write that must be durable fails, until Pigeon is restarted and recovery reads
the disk again. Nothing acknowledged before is affected.

*Recovery* (:meth:`QueueService.start`). The index is the truth. Every non-final recipient
is resumed at its recorded ``next_attempt_at``. Unusable entries are moved into
``spool/corrupt/``, never deleted, and logged: leftovers in ``spool/tmp/`` (never
acknowledged), spool files without an index row, index entries that cannot be read or
whose spool file is missing or has the wrong size (their rows are saved as JSON). A
finished message leaves the queue spool file first, rows second, so a spool file without
rows was never acknowledged, and a finished entry without its spool file (a crash between
the two steps) is simply removed.

*Locking.* A data directory's queue is run by one process: :meth:`start` takes an
exclusive ``flock`` on ``<data_dir>/queue.lock``. The ``pigeon queue`` tools do not take it:
they change rows in ``queue.db`` inside transactions and the running server notices within
:data:`~pigeon.queue.scheduler.POLL_INTERVAL` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from pigeon.delivery.base import DeliveryAgent
from pigeon.mail.address import ForwardPath, ReversePath, parse_mailbox
from pigeon.mail.envelope import Envelope, MailParams, RcptParams, Recipient
from pigeon.mail.reply import Reply, ReplyError
from pigeon.queue.ids import is_queue_id
from pigeon.queue.model import FINAL_STATES, QueuedMessage, QueuedRecipient
from pigeon.queue.scheduler import RetryPolicy, Scheduler
from pigeon.queue.spool import Spool, SpoolWriter
from pigeon.queue.trace import received_header
from pigeon.storage.ports import CorruptEntryError, QueueStore

if TYPE_CHECKING:
    from pigeon.routing.router import Router

__all__ = ["QueueBusyError", "QueueService", "RecoveryReport", "SpoolWriter"]

log = logging.getLogger("pigeon.queue")

T = TypeVar("T")

QUEUE_WRITE_FAILED = Reply(451, "4.3.0", "Requested action aborted: error in queue storage")
ROUTING_FAILED = Reply(451, "4.3.0", "Requested action aborted: error in recipient routing")
# Seconds stop() waits for delivery attempts in flight when settings.timeouts has no
# shutdown_grace.
_DEFAULT_SHUTDOWN_GRACE = 30.0


class QueueBusyError(RuntimeError):
    """Another process runs the queue of this data directory."""


@dataclass(slots=True)
class RecoveryReport:
    """What :meth:`QueueService.start` found in the queue.

    Attributes:
        messages: messages resumed (with at least one non-final recipient).
        recipients: non-final recipients resumed.
        tmp_moved: never-acknowledged files moved from ``spool/tmp`` to ``spool/corrupt``.
        orphans_moved: spool files without an index row moved to ``spool/corrupt``.
        corrupt_entries: index entries that could not be read, moved aside.
        missing_spool: index entries whose spool file was missing or truncated, moved aside.
        finished: entries whose recipients were all final, with no DSN pending, and whose
            spool file was already removed (a crash while the message left the queue);
            their rows are deleted.
        moved: the paths created in ``spool/corrupt``.
    """

    messages: int = 0
    recipients: int = 0
    tmp_moved: int = 0
    orphans_moved: int = 0
    corrupt_entries: int = 0
    missing_spool: int = 0
    finished: int = 0
    moved: list[Path] = field(default_factory=list)


@dataclass(slots=True)
class _Pending:
    message: QueuedMessage
    writer: SpoolWriter
    future: asyncio.Future[None]


@dataclass(slots=True)
class _StoreWrite:
    call: Callable[[], Any]
    durable: bool
    future: asyncio.Future[Any]


class QueueService:
    """The durable store-and-forward queue.

    Args:
        settings: Pigeon's settings (``server.hostname``, ``server.data_dir``, ``queue.*``).
        router: decides where each forward-path goes (``Router.expand``).
        agents: delivery agents by route, ``"local"`` and ``"remote"``; without a remote
            agent, remote recipients stay deferred (``4.4.0``) and never expire.
        clock: returns Unix time in seconds (injected so tests drive the retry schedule).
        store: the queue index (default: SQLite at ``<data_dir>/queue.db``).

    Attributes:
        spool: the spool directories.
        commit_batches: group-commit batches written (each: one directory fsync, one
            index transaction).
        recovery: what :meth:`start` found, once started.
    """

    def __init__(
        self,
        settings: Any,
        *,
        router: Router,
        agents: Mapping[str, DeliveryAgent],
        clock: Callable[[], float] = time.time,
        store: QueueStore | None = None,
    ) -> None:
        self.settings = settings
        self.router = router
        self.agents = dict(agents)
        self.clock = clock
        self.data_dir = Path(settings.server.data_dir)
        self.spool = Spool(self.data_dir / "spool",
                           sync=str(getattr(settings.server, "sync", "fsync")))
        self.commit_batches = 0
        self.recovery: RecoveryReport | None = None
        self._store = store
        self._scheduler: Scheduler | None = None
        self._placing: list[_Pending] = []
        self._placing_event: asyncio.Event | None = None
        self._placer: asyncio.Task[None] | None = None
        self._place_thread: ThreadPoolExecutor | None = None
        self._placed_all = False
        self._unplaced = 0  # enqueues whose spool file is not yet in queue/
        # The first failed spool sync; from then on the queue refuses (see _commit_batch).
        self._sync_failure: OSError | None = None
        self._pending: list[_Pending] = []
        self._writes: list[_StoreWrite] = []
        self._pending_event: asyncio.Event | None = None
        self._committer: asyncio.Task[None] | None = None
        self._commit_thread: ThreadPoolExecutor | None = None
        self._loop_task: asyncio.Task[None] | None = None
        self._closing = False
        self._lock_fd: int | None = None
        # True when one syncfs of the spool also covers the index (the default SQLite
        # store, on the spool's file system): see _commit_batch.
        self._index_on_spool_fs = False

    # -- life cycle ----------------------------------------------------------------------------

    @property
    def store(self) -> QueueStore:
        """The queue index (available after :meth:`start`)."""
        if self._store is None:
            raise RuntimeError("the queue service is not started")
        return self._store

    @property
    def scheduler(self) -> Scheduler:
        """The delivery scheduler (available after :meth:`start`)."""
        if self._scheduler is None:
            raise RuntimeError("the queue service is not started")
        return self._scheduler

    async def start(self, *, scheduler: bool = True) -> None:
        """Open the spool and index, recover, start the committer and the scheduler loop.

        Args:
            scheduler: start the background delivery loop (tests pass False and drive
                :meth:`run_due_once` themselves).

        Raises:
            QueueBusyError: another process runs this data directory's queue.
        """
        self.spool.ensure_dirs()
        self._lock_fd = self._take_lock()
        try:
            if self._store is None:
                self._store = await asyncio.to_thread(self._open_default_store)
                self._index_on_spool_fs = (
                    self.spool.sync_method == "syncfs"
                    and os.stat(self.data_dir).st_dev == os.stat(self.spool.queue_dir).st_dev
                )
            self.recovery = await asyncio.to_thread(self._recover)
        except BaseException:
            self._release_lock()
            raise
        report = self.recovery
        log.info(
            "queue: resumed %d messages (%d recipients); moved to spool/corrupt: %d tmp, "
            "%d orphan, %d unreadable, %d without spool file; %d finished removed",
            report.messages, report.recipients, report.tmp_moved, report.orphans_moved,
            report.corrupt_entries, report.missing_spool, report.finished,
        )
        queue_settings = self.settings.queue
        self._scheduler = Scheduler(
            store=self.store,
            agents=self.agents,
            policy=RetryPolicy.from_settings(queue_settings),
            clock=self.clock,
            concurrency=int(queue_settings.delivery_concurrency),
            hostname=self.settings.server.hostname,
            send_dsn=self._send_dsn,
            discard_spool=self.spool.discard,
            quarantine=self._quarantine_entry,
            write=self.write,
        )
        self._closing = False
        self._placed_all = False
        self._placing_event = asyncio.Event()
        self._pending_event = asyncio.Event()
        self._place_thread = ThreadPoolExecutor(1, thread_name_prefix="queue-place")
        self._commit_thread = ThreadPoolExecutor(1, thread_name_prefix="queue-commit")
        self._placer = asyncio.create_task(self._place_loop(), name="queue placer")
        self._committer = asyncio.create_task(self._commit_loop(), name="queue committer")
        if scheduler:
            self._loop_task = asyncio.create_task(self._scheduler.run(), name="queue scheduler")

    async def stop(self) -> None:
        """Stop the scheduler, wait (bounded) for attempts in flight, flush enqueues, close."""
        if self._committer is None:
            return
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
            self._loop_task = None
        grace = float(getattr(getattr(self.settings, "timeouts", None), "shutdown_grace",
                              _DEFAULT_SHUTDOWN_GRACE))
        await self.scheduler.drain(grace)
        self._closing = True
        assert self._placing_event is not None and self._pending_event is not None
        self._placing_event.set()
        if self._placer is not None:
            await self._placer
            self._placer = None
        self._placed_all = True
        self._pending_event.set()
        await self._committer
        self._committer = None
        for executor in (self._place_thread, self._commit_thread):
            if executor is not None:
                executor.shutdown()
        self._place_thread = self._commit_thread = None
        if self._store is not None:
            await asyncio.to_thread(self._store.close)
            self._store = None
        self.spool.close()
        self._release_lock()

    def _open_default_store(self) -> QueueStore:
        # The embedded backend; another backend is passed in as `store`.
        from pigeon.storage.sqlite.queue_store import SqliteQueueStore

        return SqliteQueueStore(self.data_dir / "queue.db", self.spool.queue_dir)

    def _take_lock(self) -> int:
        fd = os.open(self.data_dir / "queue.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise QueueBusyError(
                f"the queue in {self.data_dir} is in use by another process"
            ) from None
        return fd

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # -- enqueue -----------------------------------------------------------------------------

    def open_spool(self) -> SpoolWriter:
        """Start a message: a new queue id and its file in ``spool/tmp/``.

        The caller writes the Received header (``pigeon.queue.trace``) and the content,
        then calls :meth:`enqueue`, or :meth:`SpoolWriter.abort`.

        Returns:
            The writer.

        Raises:
            OSError: the spool file cannot be created.
        """
        return self.spool.open()

    async def enqueue(
        self, envelope: Envelope, spool: SpoolWriter, *, is_dsn: bool = False
    ) -> str:
        """Queue a message durably; returns only once it is on stable storage.

        Args:
            envelope: the reverse-path, the forward-paths and their parameters.
            spool: the written message (Received header first, CRLF line endings).
            is_dsn: the message is a DSN Pigeon made (never answered by another DSN).

        Returns:
            The queue id.

        Raises:
            ValueError: the envelope has no recipient (the spool file is removed).
            ReplyError: routing or storage failed; ``reply`` is a ``451 4.3.0`` to send.
                The spool file is removed: nothing was acknowledged.
        """
        if self._committer is None or self._placing_event is None or self._closing:
            spool.abort()
            raise RuntimeError("the queue service is not running")
        if not envelope.recipients:
            spool.abort()
            raise ValueError("an envelope needs at least one forward-path")
        try:
            recipients = self._expand(envelope)
        except Exception:
            log.exception("%s: routing failed", spool.queue_id)
            spool.abort()
            raise ReplyError(ROUTING_FAILED) from None
        arrival = self.clock()
        for r in recipients:
            r.next_attempt_at = arrival
        params = envelope.mail_params
        reverse = envelope.reverse_path.mailbox
        message = QueuedMessage(
            queue_id=spool.queue_id,
            reverse_path="" if reverse is None else str(reverse),
            spool_path=self.spool.path_for(spool.queue_id),
            size=spool.size,
            arrival=arrival,
            body=params.body,
            smtputf8=params.smtputf8,
            ret=params.ret,
            envid=params.envid,
            client_address=envelope.client_address,
            client_name=envelope.client_name,
            authenticated_user=envelope.authenticated_user,
            is_dsn=is_dsn,
            recipients=recipients,
        )
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._placing.append(_Pending(message, spool, future))
        self._unplaced += 1
        self._placing_event.set()
        # Shielded: if the caller goes away, the commit still completes consistently.
        await asyncio.shield(future)
        log.info("%s: queued from=<%s> size=%d nrcpt=%d%s", message.queue_id,
                 message.reverse_path, message.size, len(recipients), " (DSN)" if is_dsn else "")
        return message.queue_id

    async def write(self, call: Callable[[], T], durable: bool) -> T:
        """Run a write of the queue index in the next group-commit transaction.

        The write shares its transaction (and its sync) with the enqueues and other writes
        of the same batch; it runs in the commit thread, inside a ``SAVEPOINT``. While the
        committer is not running (before :meth:`start`, after :meth:`stop`), it runs alone
        in a worker thread, in its own transaction.

        Args:
            call: the write, e.g. ``functools.partial(store.record, updates)``.
            durable: the write must be on stable storage when this returns (the batch then
                commits with ``synchronous=FULL``); False for writes an OS crash may undo.

        Returns:
            What ``call`` returned.

        Raises:
            Exception: what ``call`` raised, or the error that failed the transaction (or,
                for a durable write, the sync after it).
        """
        if self._committer is None or self._pending_event is None:
            return await asyncio.to_thread(call)
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._writes.append(_StoreWrite(call, durable, future))
        self._pending_event.set()
        return await asyncio.shield(future)

    async def enqueue_bytes(
        self,
        envelope: Envelope,
        content: bytes,
        *,
        is_dsn: bool = False,
        received: bool = True,
    ) -> str:
        """Queue a message given whole (DSNs, local tools).

        Args:
            envelope: the envelope.
            content: the RFC 5322 message, CRLF line endings.
            is_dsn: the message is a DSN Pigeon made.
            received: prepend Pigeon's Received header (RFC 5321 §4.4).

        Returns:
            The queue id.

        Raises:
            ValueError: the envelope has no recipient.
            ReplyError: routing or storage failed (``451 4.3.0``).
        """
        writer = self.open_spool()
        try:
            if received:
                writer.write(received_header(envelope, writer.queue_id,
                                             self.settings.server.hostname,
                                             timestamp=self.clock()))
            writer.write(content)
        except BaseException:
            writer.abort()
            raise
        return await self.enqueue(envelope, writer, is_dsn=is_dsn)

    def wake(self) -> None:
        """Ask the scheduler for a pass now (after enqueue, or from a tool)."""
        if self._scheduler is not None:
            self._scheduler.wake()

    async def run_due_once(self) -> int:
        """Run one delivery pass to completion (for tests; with ``start(scheduler=False)``).

        Returns:
            The number of recipient delivery attempts made.
        """
        return await self.scheduler.run_due_once()

    def _expand(self, envelope: Envelope) -> list[QueuedRecipient]:
        """One row per final address (RFC 5321 §3.9: aliases expand to their members)."""
        rows: dict[str, QueuedRecipient] = {}
        for recipient in envelope.recipients:
            address = str(recipient.forward_path.mailbox)
            for destination in self.router.expand(address):
                if destination.address in rows:
                    continue
                rows[destination.address] = QueuedRecipient(
                    id=0,
                    address=destination.address,
                    original=destination.original,
                    orcpt=recipient.params.orcpt,
                    notify=recipient.params.notify,
                    route=destination.route,
                )
        return list(rows.values())

    # -- group commit ----------------------------------------------------------------------------

    async def _place_loop(self) -> None:
        """First stage of the group commit: write the new spool files into ``queue/``.

        It runs in its own thread, so the files of the next batch are written while the
        commit thread syncs and indexes the previous one (:meth:`_commit_batch`). A
        placed file has no index row and is not yet durable: nobody has been told
        ``250`` for it, and should the process die now, recovery moves it aside as never
        acknowledged. A file that cannot be written fails its own enqueue alone.
        """
        assert self._placing_event is not None and self._pending_event is not None
        loop = asyncio.get_running_loop()
        while True:
            await self._placing_event.wait()
            self._placing_event.clear()
            batch, self._placing = self._placing, []
            if not batch:
                if self._closing:
                    return
                continue
            errors: list[BaseException | None]
            try:
                errors = await loop.run_in_executor(
                    self._place_thread, self.spool.place, [item.writer for item in batch]
                )
            except asyncio.CancelledError:
                self._unplaced -= len(batch)
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(ReplyError(QUEUE_WRITE_FAILED))
                raise
            except Exception as exc:  # place() itself failed: fail the whole batch
                log.exception("queue spool write failed (%d messages)", len(batch))
                errors = [exc] * len(batch)
                for item in batch:  # nobody was answered: take back what was written
                    with contextlib.suppress(Exception):
                        item.writer.abort()
                    with contextlib.suppress(Exception):
                        self.spool.discard(item.message.queue_id)
            self._unplaced -= len(batch)
            for item, error in zip(batch, errors, strict=True):
                if error is None:
                    self._pending.append(item)
                elif not item.future.done():
                    item.future.set_exception(ReplyError(QUEUE_WRITE_FAILED))
            self._pending_event.set()
            if self._closing:
                self._placing_event.set()

    async def _commit_loop(self) -> None:
        assert self._pending_event is not None
        while True:
            await self._pending_event.wait()
            self._pending_event.clear()
            if not self._pending and self._unplaced and not self._placed_all:
                # Index writes wait for the enqueues being placed (one batch at most) and
                # share their transaction and sync: fewer commits under load.
                continue
            batch, self._pending = self._pending, []
            writes, self._writes = self._writes, []
            if not batch and not writes:
                if self._placed_all:
                    return
                continue
            scheduler = self._scheduler
            committing = {item.message.queue_id for item in batch}
            if scheduler is not None:
                # Visible in the index before durable (see _commit_batch): not for passes.
                scheduler.committing |= committing
            try:
                errors, outcomes = await asyncio.get_running_loop().run_in_executor(
                    self._commit_thread, self._commit_batch, batch, writes
                )
            except BaseException as exc:  # the thread itself failed: fail the whole batch
                log.exception("queue commit failed")
                errors = [exc] * len(batch)
                outcomes = [(False, exc)] * len(writes)
            offered = True
            for item, error in zip(batch, errors, strict=True):
                if error is None and scheduler is not None:
                    offered = scheduler.offer(item.message) and offered
                if item.future.done():
                    continue
                if error is None:
                    item.future.set_result(None)
                else:
                    item.future.set_exception(ReplyError(QUEUE_WRITE_FAILED))
            if scheduler is not None:
                scheduler.committing -= committing
                if not offered:
                    scheduler.wake()
            for write, (ok, value) in zip(writes, outcomes, strict=True):
                if write.future.done():
                    continue
                if ok:
                    write.future.set_result(value)
                else:
                    write.future.set_exception(value)
            if self._placed_all:
                self._pending_event.set()

    def _commit_batch(
        self, batch: list[_Pending], writes: list[_StoreWrite]
    ) -> tuple[list[BaseException | None], list[tuple[bool, Any]]]:
        """Group commit, in the commit thread.

        The batch's spool files are already in ``queue/`` (:meth:`_place_loop`; with
        fsync, each file was fsynced there); ONE index transaction holds the new messages
        and the scheduler's writes. Durability, two ways:

        - the spool is synced first (one fsync of ``queue/``, or one syncfs), then the
          transaction commits with ``synchronous=FULL``; if that sync fails, the batch's
          files are removed, its enqueues fail, and so does every later one (fail-stop);
        - when the spool syncs with syncfs and the index lives on the same file system,
          the transaction commits with ``synchronous=NORMAL`` (its log written, not yet
          flushed) and ONE syncfs afterwards makes the spool files and the index durable
          together. Should the machine lose power before that syncfs completes, the index
          may keep rows whose spool file is gone: nobody was told ``250`` for them, and
          recovery moves them aside.

        Returns:
            An error (or None) per enqueue, and ``(ok, result or exception)`` per write.
        """
        errors: list[BaseException | None] = [None] * len(batch)
        refused: OSError | None = None
        if self._sync_failure is not None:  # fail-stop: see the module docstring
            refused = OSError(errno.EIO, f"an earlier spool sync failed "
                                         f"({self._sync_failure}); restart Pigeon")
            self._take_back(batch, errors, refused)
            if batch:
                log.error("queue: refused %d messages: %s", len(batch), refused)
        sync_after = self._index_on_spool_fs and refused is None and bool(batch)
        if batch and refused is None and not sync_after:
            try:
                self.spool.sync()
            except OSError as exc:
                self._failed_sync(exc)
                self._take_back(batch, errors, exc)
        ready = [item.message for item, error in zip(batch, errors, strict=True) if error is None]
        durable = not sync_after and (bool(ready) or any(w.durable for w in writes))
        insert_error: Exception | None = None
        outcomes: list[tuple[bool, Any]] = []
        try:
            with self.store.batch(durable=durable):
                if ready:
                    try:
                        self.store.insert(ready)
                    except Exception as exc:
                        insert_error = exc
                for write in writes:
                    if refused is not None and write.durable:
                        outcomes.append((False, refused))
                        continue
                    try:
                        outcomes.append((True, write.call()))
                    except Exception as exc:
                        outcomes.append((False, exc))
        except Exception as exc:  # the transaction itself failed: nothing was written
            log.exception("queue index transaction failed (%d messages, %d writes)",
                          len(ready), len(writes))
            insert_error = exc
            outcomes = [(False, exc)] * len(writes)
        if sync_after:
            try:
                self.spool.sync()
            except OSError as exc:
                self._failed_sync(exc)
                # Nothing of this batch is known durable: refuse its messages (taking their
                # rows out again) and fail the writes that needed durability.
                if ready and insert_error is None:
                    for message in ready:
                        with contextlib.suppress(Exception):
                            self.store.delete(message.queue_id)
                insert_error = insert_error or exc
                outcomes = [(False, exc) if write.durable and ok else (ok, value)
                            for write, (ok, value) in zip(writes, outcomes, strict=True)]
        if ready and insert_error is not None:
            log.error("queue index commit failed for %d messages: %s", len(ready), insert_error)
            self._take_back(batch, errors, insert_error)
        self.commit_batches += 1
        return errors, outcomes

    def _take_back(self, batch: list[_Pending], errors: list[BaseException | None],
                   error: BaseException) -> None:
        """Refuse each enqueue of ``batch`` not failed yet: remove its spool file (nobody
        was answered) and set its entry of ``errors`` to ``error``."""
        for i, item in enumerate(batch):
            if errors[i] is None:
                with contextlib.suppress(OSError):
                    self.spool.discard(item.message.queue_id)
                errors[i] = error

    def _failed_sync(self, exc: OSError) -> None:
        """Note the first failed spool sync: from now on the queue refuses (fail-stop)."""
        if self._sync_failure is None:
            self._sync_failure = exc
            log.critical("queue: %s of the spool failed (%s): refusing new mail (451) and "
                         "delivery results until Pigeon is restarted", self.spool.sync_method,
                         exc)

    # -- DSNs ------------------------------------------------------------------------------------

    async def _send_dsn(self, message: QueuedMessage, content: bytes) -> str | None:
        """Queue a DSN about ``message`` from ``<>`` to its reverse-path (RFC 3461 §6.2)."""
        try:
            mailbox = parse_mailbox(message.reverse_path, smtputf8=True)
        except ReplyError as exc:
            log.warning("%s: no DSN: reverse-path <%s> unusable: %s", message.queue_id,
                        message.reverse_path, exc)
            return None
        envelope = Envelope(
            reverse_path=ReversePath(None),
            mail_params=MailParams(
                body=None if content.isascii() else "8BITMIME",
                smtputf8=not message.reverse_path.isascii(),
            ),
            recipients=[Recipient(ForwardPath(mailbox), RcptParams(notify=frozenset()))],
            protocol="local",
        )
        return await self.enqueue_bytes(envelope, content, is_dsn=True)

    # -- recovery -------------------------------------------------------------------------------

    def _quarantine_entry(self, queue_id: str, reason: str) -> list[Path]:
        """Take an index entry out of the queue: save its rows and spool file in corrupt/."""
        record = {"queue_id": queue_id, "reason": reason, **self.store.raw(queue_id)}
        if is_queue_id(queue_id):
            moved = [self.spool.write_record(queue_id, record)]
            path = self.spool.queue_dir / queue_id
            if path.is_file() or path.is_symlink():
                moved.append(self.spool.quarantine(path, reason))
        else:  # never use a tampered id as a file name
            moved = [self.spool.write_record("invalid-id", record)]
        self.store.delete(queue_id)
        log.warning("%s: taken out of the queue: %s", queue_id, reason)
        return moved

    def _recover(self) -> RecoveryReport:
        report = RecoveryReport()
        for path in self.spool.tmp_paths():
            report.moved.append(self.spool.quarantine(path, "never acknowledged (left in tmp)"))
            report.tmp_moved += 1
        files = set(self.spool.queue_names())
        finished = set(self.store.finished())
        for queue_id in self.store.queue_ids():
            path = self.spool.queue_dir / queue_id
            try:
                message = self.store.get(queue_id)
            except CorruptEntryError as exc:
                report.moved.extend(self._quarantine_entry(queue_id, exc.reason))
                report.corrupt_entries += 1
                files.discard(queue_id)
                continue
            if message is None:
                continue
            files.discard(queue_id)
            if not path.is_file() and queue_id in finished and not path.is_symlink():
                # Done and its spool file removed: the crash came before its rows went.
                self.store.delete(queue_id)
                report.finished += 1
                log.info("%s: removed (all recipients done; spool file already gone)",
                         queue_id)
                continue
            if not path.is_file():
                report.moved.extend(self._quarantine_entry(queue_id, "spool file missing"))
                report.missing_spool += 1
                continue
            size = path.stat().st_size
            if size != message.size:
                report.moved.extend(self._quarantine_entry(
                    queue_id, f"spool file has {size} bytes, the index says {message.size}"))
                report.missing_spool += 1
                continue
            active = [r for r in message.recipients if r.state not in FINAL_STATES]
            if active:
                report.messages += 1
                report.recipients += len(active)
        for name in sorted(files):
            report.moved.append(
                self.spool.quarantine(self.spool.queue_dir / name, "no index entry")
            )
            report.orphans_moved += 1
        return report
