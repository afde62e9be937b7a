"""The local delivery agent (the MDA): a queued message into local Maildir mailboxes.

Theory of operation. For each recipient (all of route ``local``) the agent asks the router
which mailbox the address is, checks for a mail loop and the quota, and stores its own copy:
``Return-Path: <reverse-path>`` (RFC 5321 §4.4) and ``Delivered-To: address`` (the de facto
trace field that Postfix, qmail and Dovecot write, without angle brackets) followed by the
spool file, byte for byte, copied in 64 KiB blocks. The copy keeps the wire form (CRLF line
endings; see :mod:`pigeon.storage.maildir.store`). All file work runs in a worker thread
so the event loop never blocks on the disk. With ``[server] sync`` on syncfs, deliveries
that arrive while one batch is being stored form the next batch, stored by one thread with
two syncfs calls for the whole batch (group commit, as the queue does for new messages);
with fsync, each message is stored in its own thread with its own fsyncs.

Outcomes, one :class:`~pigeon.queue.model.AttemptResult` per recipient:

- stored and fsynced: ``delivered`` 250 2.0.0;
- no such mailbox any more (removed since RCPT): ``failed`` 550 5.1.1;
- the header section already has ``Delivered-To`` for this address: ``failed``
  554 5.4.6 (a loop; RFC 5321 §6.3 asks a server to detect them);
- the message would take the mailbox over its quota: ``deferred`` 452 4.2.2 (the queue's
  maximum lifetime fails it eventually, RFC 3463 §3.3);
- a disk error: ``deferred`` 451 4.3.0.

SECURITY: this is the only component that writes into mailboxes.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from pigeon.delivery.base import DeliveryAgent
from pigeon.queue.model import AttemptResult, QueuedMessage, QueuedRecipient
from pigeon.storage.accounts_port import AccountStore
from pigeon.storage.mailbox_port import MailboxStore
from pigeon.storage.maildir.store import MaildirStore, maildir_path

if TYPE_CHECKING:
    from pigeon.config import Settings
    from pigeon.routing.router import Router

__all__ = ["HEADER_SCAN_LIMIT", "LocalDelivery", "maildir_path", "trace_prefix"]

_Copy = tuple[str, Path, bytes]  # (mailbox key, spool file, prefix): one copy to store
_DISK_ERROR = AttemptResult("deferred", 451, "4.3.0", "Local delivery failed: disk error")

log = logging.getLogger("pigeon.delivery.local")

# How much of the header section is searched for Delivered-To (bytes). Real header
# sections are a few KiB; a loop adds one Delivered-To per pass near the top, so a bound
# this large never misses one in practice and keeps a hostile message cheap.
HEADER_SCAN_LIMIT = 256 * 1024
_SCAN_BLOCK = 64 * 1024


def trace_prefix(reverse_path: str, address: str) -> bytes:
    """The lines the MDA puts before the message.

    Args:
        reverse_path: the reverse-path as text, ``""`` for the null reverse-path.
        address: the recipient's final address.

    Returns:
        ``Return-Path: <reverse-path>`` and ``Delivered-To: address`` lines, CRLF-terminated,
        UTF-8 (RFC 6532 allows UTF-8 in header fields of SMTPUTF8 messages).
    """
    def clean(text: str) -> str:
        return text.replace("\r", "?").replace("\n", "?")

    return (
        f"Return-Path: <{clean(reverse_path)}>\r\nDelivered-To: {clean(address)}\r\n"
    ).encode()


def delivered_to_addresses(spool_path: Path, *, limit: int = HEADER_SCAN_LIMIT) -> set[str]:
    """Collect the ``Delivered-To`` addresses of a message's header section.

    Reads at most ``limit`` bytes of the header section (RFC 5322 §2.2: it ends at the
    first empty line), unfolding continuation lines.

    Args:
        spool_path: the message file.
        limit: the maximum number of bytes searched.

    Returns:
        The addresses, lower-cased, without angle brackets or surrounding spaces.

    Raises:
        OSError: the file cannot be read.
    """
    data = b""
    with open(spool_path, "rb") as src:
        while len(data) < limit:
            block = src.read(min(_SCAN_BLOCK, limit - len(data)))
            if not block:
                break
            data += block
            if b"\n\r\n" in data or b"\n\n" in data or data.startswith((b"\r\n", b"\n")):
                break
    found: set[str] = set()
    current: str | None = None
    for raw in data.split(b"\n"):
        line = raw.rstrip(b"\r").decode("utf-8", "replace")
        if not line:
            break
        if line[0] in " \t":
            if current is not None:
                current += " " + line.strip()
            continue
        if current is not None:
            found.add(current)
            current = None
        name, colon, value = line.partition(":")
        if colon and name.strip().lower() == "delivered-to":
            current = value.strip()
    if current is not None:
        found.add(current)
    return {v.strip().strip("<>").strip().lower() for v in found}


class LocalDelivery(DeliveryAgent):
    """The MDA: delivers queued messages into local Maildir mailboxes.

    Implements :class:`~pigeon.delivery.base.DeliveryAgent` for route ``local``.

    Args:
        settings: Pigeon settings (``server.data_dir``, ``server.hostname``).
        accounts: the account store.
        router: decides which mailbox an address is and its quota.
        mailboxes: the mailbox store; default: Maildir under ``<data_dir>/mail``.
    """

    def __init__(
        self,
        settings: Settings,
        accounts: AccountStore,
        router: Router,
        *,
        mailboxes: MailboxStore | None = None,
    ) -> None:
        self._settings = settings
        self._accounts = accounts
        self._router = router
        self._mailboxes: MailboxStore = mailboxes or MaildirStore(
            settings.server.data_dir / "mail", hostname=settings.server.hostname,
            sync=settings.server.sync,
        )
        # Group commit of deliveries, when the store shares its syncs (see the docstring).
        self._batched = (getattr(self._mailboxes, "sync_method", None) == "syncfs"
                         and hasattr(self._mailboxes, "deliver_batch"))
        self._waiting: list[tuple[QueuedMessage, list[QueuedRecipient],
                                  asyncio.Future[list[AttemptResult]]]] = []
        self._runner: asyncio.Task[None] | None = None
        self._batch_thread: ThreadPoolExecutor | None = None

    async def deliver(
        self, message: QueuedMessage, recipients: list[QueuedRecipient]
    ) -> list[AttemptResult]:
        """Deliver one copy of ``message`` to each recipient's mailbox.

        Args:
            message: the queued message; the content is read from ``message.spool_path``.
            recipients: recipients with route ``local``.

        Returns:
            One result per recipient, in the order given (see the module docstring).
        """
        if not recipients:
            return []
        if not self._batched:
            return await asyncio.to_thread(self._deliver_all, message, recipients)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[AttemptResult]] = loop.create_future()
        self._waiting.append((message, recipients, future))
        if self._runner is None or self._runner.done():
            self._runner = loop.create_task(self._run_batches(), name="local delivery")
        # Shielded: a cancelled attempt's copy may still be stored with its batch; the
        # recipient then stays due and gets a second copy, never none.
        return await asyncio.shield(future)

    async def _run_batches(self) -> None:
        loop = asyncio.get_running_loop()
        if self._batch_thread is None:
            self._batch_thread = ThreadPoolExecutor(1, thread_name_prefix="mda")
        while self._waiting:
            batch, self._waiting = self._waiting, []
            work = [(message, recipients) for message, recipients, _ in batch]
            try:
                results = await loop.run_in_executor(
                    self._batch_thread, self._deliver_batch, work
                )
            except Exception:
                log.exception("local delivery of %d messages failed", len(batch))
                results = [[_DISK_ERROR] * len(recipients) for _, recipients in work]
            for (_, _, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)

    def _deliver_batch(
        self, work: list[tuple[QueuedMessage, list[QueuedRecipient]]]
    ) -> list[list[AttemptResult]]:
        """Store the copies of several messages with shared syncs (in the batch thread)."""
        plans = [self._plan_guarded(message, recipients) for message, recipients in work]
        copies = [step for plan in plans for step in plan if not isinstance(step, AttemptResult)]
        stored = iter(self._mailboxes.deliver_batch(copies)) if copies else iter(())
        out = []
        for (message, _), plan in zip(work, plans, strict=True):
            results = []
            for step in plan:
                if isinstance(step, AttemptResult):
                    results.append(step)
                    continue
                outcome = next(stored)
                results.append(self._stored(message, step[0], outcome))
            out.append(results)
        return out

    def _plan_guarded(
        self, message: QueuedMessage, recipients: list[QueuedRecipient]
    ) -> list[AttemptResult | _Copy]:
        """:meth:`_plan`, where an unexpected error defers this message alone."""
        try:
            return self._plan(message, recipients)
        except Exception:
            log.exception("%s: local delivery failed", message.queue_id)
            return [_DISK_ERROR for _ in recipients]

    def _deliver_all(
        self, message: QueuedMessage, recipients: list[QueuedRecipient]
    ) -> list[AttemptResult]:
        results = []
        for step in self._plan(message, recipients):
            if isinstance(step, AttemptResult):
                results.append(step)
                continue
            key, source, prefix = step
            try:
                outcome: str | OSError = self._mailboxes.deliver(key, source, prefix)
            except OSError as exc:
                outcome = exc
            results.append(self._stored(message, key, outcome))
        return results

    def _plan(
        self, message: QueuedMessage, recipients: list[QueuedRecipient]
    ) -> list[AttemptResult | _Copy]:
        """Per recipient: its result when decided without storing, else the copy to store."""
        try:
            seen = delivered_to_addresses(message.spool_path)
        except OSError as exc:
            log.error("%s: cannot read spool file %s: %s",
                      message.queue_id, message.spool_path, exc)
            result = AttemptResult("deferred", 451, "4.3.0", "Cannot read the queued message")
            return [result for _ in recipients]
        return [self._plan_one(message, r, seen) for r in recipients]

    @staticmethod
    def _stored(message: QueuedMessage, key: str, outcome: str | OSError) -> AttemptResult:
        if isinstance(outcome, OSError):
            log.error("%s: delivery to %s failed: %s", message.queue_id, key, outcome)
            return _DISK_ERROR
        log.info("%s: delivered to %s as %s", message.queue_id, key, outcome)
        return AttemptResult("delivered", 250, "2.0.0", "Delivered to mailbox")

    def _plan_one(
        self, message: QueuedMessage, recipient: QueuedRecipient, seen: set[str]
    ) -> AttemptResult | _Copy:
        address = recipient.address
        key = self._router.mailbox_for(address)
        if key is None:
            if self._router.is_alias(address):
                return AttemptResult(
                    "failed", 554, "5.4.6", f"<{address}>: Alias expansion loop"
                )
            return AttemptResult("failed", 550, "5.1.1", f"<{address}>: User unknown")
        if address.lower() in seen or key in seen:
            return AttemptResult("failed", 554, "5.4.6", "Mail loop detected")
        prefix = trace_prefix(message.reverse_path, address)
        quota = self._router.quota_for(key)
        if quota is not None:
            try:
                size = len(prefix) + message.spool_path.stat().st_size
                if self._mailboxes.usage(key) + size > quota:
                    return AttemptResult("deferred", 452, "4.2.2", "Mailbox full")
            except OSError as exc:
                log.error("%s: delivery to %s failed: %s", message.queue_id, key, exc)
                return _DISK_ERROR
        return (key, message.spool_path, prefix)
