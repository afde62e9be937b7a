"""Hand a message to the local Pigeon's queue (``pigeon send --queue``, ``pigeon sendmail``).

Local programs are trusted the way Postfix trusts its ``postdrop``: whoever can write the
data directory may queue mail for any recipient (relaying is allowed), but every recipient
is still checked by the router first, so an unknown local user is refused at once
(``550 5.1.1``) instead of being bounced later.

How the message reaches the queue depends on whether a server runs on the data directory:

*No server* (the queue lock is free): the queue is opened here
(:meth:`QueueService.start` with ``scheduler=False``), the message goes through
:meth:`QueueService.enqueue_bytes`, the one enqueue choke point, and the queue is closed.
The server delivers it when it next starts (recovery resumes every queued recipient).

*A running server* holds the queue lock (``<data_dir>/queue.lock``), so this process must
not start the queue: recovery would take the running server's half-received messages for
leftovers. Instead the message is *dropped* into the queue the way ``enqueue`` stores it,
using the queue's own parts: the spool file is written to ``spool/tmp/``, fsynced and
renamed into ``spool/queue/`` (:meth:`Spool.commit`, which fsyncs the directory), then the
index rows are inserted in one SQLite transaction (``synchronous=FULL``). The running
scheduler reads due recipients from the index at least every ``POLL_INTERVAL`` (2) seconds,
which is how changes made by ``pigeon queue`` in another process are noticed too. Queue
ids from two processes never clash: ids carry 15 random bits and the spool refuses an
existing name (``O_EXCL``).

Crash window of a drop: the file is durable before its index row; a crash in between leaves
a spool file without a row, which the next server start moves to ``spool/corrupt/`` (never
deleted) and the caller was never told it succeeded. A server *starting* during a drop may
take the file for such an orphan; the drop checks after its commit whether the file was
moved to ``spool/corrupt/`` and then removes its row and reports ``451 4.3.0``. (The only
case left: the recovery moves the file after that check; it is then kept in
``spool/corrupt/`` for the administrator, never deleted.)
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

from pigeon.mail.address import ForwardPath, ReversePath, parse_mailbox
from pigeon.mail.envelope import Envelope, MailParams, Recipient
from pigeon.mail.reply import Reply, ReplyError

__all__ = ["LocalQueueResult", "submit_to_local_queue"]

log = logging.getLogger("pigeon.mua")

QUEUED_DROPPED = "queued in the running server's queue"
_WRITE_FAILED = Reply(451, "4.3.0", "Requested action aborted: error in queue storage")


@dataclass(frozen=True, slots=True)
class LocalQueueResult:
    """What the local queue said.

    Attributes:
        queue_id: the queue id, or None when nothing was queued.
        replies: one reply per recipient, in the order given (``250 2.1.5`` when queued).
        server_running: the message was dropped into a running server's queue.
    """

    queue_id: str | None
    replies: list[Reply]
    server_running: bool


def _open_router(settings: Any) -> tuple[Any, Any]:
    from pigeon.routing.router import Router
    from pigeon.storage.sqlite.accounts import AccountStore

    data_dir = settings.server.data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    accounts = AccountStore(data_dir / "accounts.db")
    try:
        return accounts, Router(settings, accounts)
    except BaseException:
        accounts.close()
        raise


async def submit_to_local_queue(
    settings: Any,
    reverse_path: str,
    recipients: list[str],
    content: bytes,
    *,
    smtputf8: bool = False,
    eight_bit: bool = False,
) -> LocalQueueResult:
    """Check the recipients and queue the message in the local Pigeon's data directory.

    Args:
        settings: Pigeon's settings (``server.data_dir``, ``server.hostname``, routing).
        reverse_path: the MAIL FROM mailbox text, ``""`` for the null reverse-path.
        recipients: forward-path mailbox texts.
        content: the RFC 5322 message with CRLF line endings.
        smtputf8: the message needs SMTPUTF8 (RFC 6531).
        eight_bit: the content has 8-bit bytes (BODY=8BITMIME, RFC 6152).

    Returns:
        The queue id and one reply per recipient: ``250 2.1.5`` queued, or the router's
        refusal (``550 5.1.1`` unknown user, ``552 5.2.2`` mailbox full), or ``451 4.3.0``
        for all when the queue could not store the message.

    Raises:
        ReplyError: the reverse-path or a forward-path is not a valid address
            (``501 5.1.3``).
    """
    from pigeon.queue.service import QueueBusyError, QueueService

    reverse = ReversePath(parse_mailbox(reverse_path, smtputf8=True) if reverse_path else None)
    paths = [ForwardPath(parse_mailbox(r, smtputf8=True)) for r in recipients]
    params = MailParams(body="8BITMIME" if eight_bit else None, smtputf8=smtputf8)

    accounts, router = _open_router(settings)
    queue = QueueService(settings, router=router, agents={})
    running = False
    try:
        await queue.start(scheduler=False)
    except QueueBusyError:
        running = True
    except BaseException:
        accounts.close()
        raise
    try:
        if not running:
            # The server syncs the config's mailboxes at its start; it may never have run.
            accounts.sync_config(settings.mailbox)
        replies: list[Reply] = []
        accepted: list[Recipient] = []
        for path in paths:
            refusal = router.check_recipient(path, relay_allowed=True)
            replies.append(refusal or Reply(250, "2.1.5", "Ok"))
            if refusal is None:
                accepted.append(Recipient(path))
        if not accepted:
            return LocalQueueResult(None, replies, running)
        envelope = Envelope(reverse_path=reverse, mail_params=params, recipients=accepted,
                            protocol="local")
        try:
            if running:
                queue_id = await asyncio.to_thread(_drop, settings, router, envelope, content)
            else:
                queue_id = await queue.enqueue_bytes(envelope, content)
        except ReplyError as exc:
            return LocalQueueResult(None, [exc.reply if r.code == 250 else r for r in replies],
                                    running)
        except OSError:
            log.exception("cannot queue the message")
            return LocalQueueResult(None, [_WRITE_FAILED if r.code == 250 else r
                                           for r in replies], running)
        queued = Reply(250, "2.0.0", f"Ok: queued as {queue_id}")
        return LocalQueueResult(queue_id, [queued if r.code == 250 else r for r in replies],
                                running)
    finally:
        if not running:
            await queue.stop()
        accounts.close()


def _drop(settings: Any, router: Any, envelope: Envelope, content: bytes) -> str:
    """Store a message in a running server's queue (see the module docstring)."""
    from pigeon.queue.model import QueuedMessage, QueuedRecipient
    from pigeon.queue.spool import Spool
    from pigeon.queue.trace import received_header
    from pigeon.storage.sqlite.queue_store import SqliteQueueStore

    data_dir = settings.server.data_dir
    spool = Spool(data_dir / "spool")
    spool.ensure_dirs()
    arrival = time.time()
    writer = spool.open()
    try:
        writer.write(received_header(envelope, writer.queue_id, settings.server.hostname,
                                     timestamp=arrival))
        writer.write(content)
    except BaseException:
        writer.abort()
        raise
    rows: dict[str, QueuedRecipient] = {}
    for recipient in envelope.recipients:
        address = str(recipient.forward_path.mailbox)
        for destination in router.expand(address):
            if destination.address not in rows:
                rows[destination.address] = QueuedRecipient(
                    id=0, address=destination.address, original=destination.original,
                    route=destination.route, next_attempt_at=arrival,
                )
    reverse = envelope.reverse_path.mailbox
    message = QueuedMessage(
        queue_id=writer.queue_id,
        reverse_path="" if reverse is None else str(reverse),
        spool_path=spool.path_for(writer.queue_id),
        size=writer.size,
        arrival=arrival,
        body=envelope.mail_params.body,
        smtputf8=envelope.mail_params.smtputf8,
        recipients=list(rows.values()),
    )
    (error,) = spool.commit([writer])
    if error is not None:
        raise ReplyError(_WRITE_FAILED)
    store = SqliteQueueStore(data_dir / "queue.db", spool.queue_dir)
    try:
        try:
            store.insert([message])
        except Exception:
            log.exception("%s: queue index insert failed", message.queue_id)
            spool.discard(message.queue_id)
            raise ReplyError(_WRITE_FAILED) from None
        if not message.spool_path.is_file() and (spool.corrupt_dir / message.queue_id).exists():
            # A server starting up took the file for an orphan (module docstring). A file
            # that is simply gone was delivered already by the running scheduler.
            store.delete(message.queue_id)
            raise ReplyError(_WRITE_FAILED)
    finally:
        store.close()
    log.info("%s: queued from=<%s> size=%d nrcpt=%d (local, %s)", message.queue_id,
             message.reverse_path, message.size, len(message.recipients), QUEUED_DROPPED)
    return message.queue_id
