"""``pigeon queue``: look at and manage the mail queue (Postfix's mailq, postqueue, postsuper).

The commands work directly on ``<data_dir>/queue.db``, each change in one transaction, so
they are safe while the server runs: the server re-reads the index at least every
``POLL_INTERVAL`` (2) seconds and acts on what changed (a flushed or released message is
tried at once; a bounced message gets its DSN, then leaves the queue). Nothing here
delivers mail or writes a DSN itself.
"""

from __future__ import annotations

import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

import click

from pigeon.cli import config_option, load_or_exit
from pigeon.queue.ids import is_queue_id
from pigeon.queue.model import FINAL_STATES, AttemptResult, QueuedMessage, QueuedRecipient
from pigeon.queue.spool import Spool
from pigeon.storage.ports import CorruptEntryError
from pigeon.storage.sqlite.queue_store import SqliteQueueStore

__all__ = ["CANCELLED", "queue_group"]

#: The result given to recipients bounced with ``pigeon queue bounce`` (RFC 3463 5.0.0).
CANCELLED = AttemptResult("failed", 550, "5.0.0", "delivery cancelled by administrator")
_COPY_BLOCK = 64 * 1024


class _Queue:
    """The queue files of one data directory, opened for a command."""

    def __init__(self, settings: Any) -> None:
        data_dir = Path(settings.server.data_dir)
        self.spool = Spool(data_dir / "spool")
        db = data_dir / "queue.db"
        # No queue.db yet: the server never ran here, so the queue is empty.
        self.store = SqliteQueueStore(db, self.spool.queue_dir) if db.exists() else None

    def close(self) -> None:
        if self.store is not None:
            self.store.close()

    def get(self, queue_id: str) -> QueuedMessage:
        """The message, or exit 1 with a message when there is none."""
        message = None
        if self.store is not None and is_queue_id(queue_id):
            try:
                message = self.store.get(queue_id)
            except CorruptEntryError as exc:
                _fail(f"queue entry {queue_id} is unreadable: {exc.reason}")
        if message is None:
            _fail(f"no message with queue id {queue_id}")
        return message


def _fail(text: str) -> NoReturn:
    click.echo(f"pigeon queue: {text}", err=True)
    sys.exit(1)


def _open(config_path: Path | None) -> _Queue:
    return _Queue(load_or_exit(config_path))


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, tz=UTC).isoformat(timespec="seconds")


def _reply_text(result: AttemptResult | None) -> str:
    if result is None:
        return ""
    via = f" (via {result.remote_host})" if result.remote_host else ""
    return f"{result.code} {result.enhanced} {result.text}{via}"


def _recipient_json(r: QueuedRecipient) -> dict[str, Any]:
    last = r.last_result
    return {
        "address": r.address,
        "original": r.original,
        "orcpt": list(r.orcpt) if r.orcpt else None,
        "notify": sorted(r.notify) if r.notify is not None else None,
        "route": r.route,
        "state": r.state,
        "attempts": r.attempts,
        "next_attempt_at": r.next_attempt_at,
        "last_reply": None if last is None else {
            "status": last.status, "code": last.code, "enhanced": last.enhanced,
            "text": last.text, "remote_host": last.remote_host,
        },
    }


def _message_json(m: QueuedMessage) -> dict[str, Any]:
    return {
        "queue_id": m.queue_id,
        "size": m.size,
        "arrival": m.arrival,
        "arrival_iso": _iso(m.arrival),
        "reverse_path": m.reverse_path,
        "body": m.body,
        "smtputf8": m.smtputf8,
        "ret": m.ret,
        "envid": m.envid,
        "client_address": m.client_address,
        "client_name": m.client_name,
        "authenticated_user": m.authenticated_user,
        "is_dsn": m.is_dsn,
        "recipients": [_recipient_json(r) for r in m.recipients],
    }


@click.group("queue")
def queue_group() -> None:
    """Look at and manage the mail queue.

    Safe while the server runs: changes are made in queue.db and the server acts on them
    within a few seconds.
    """


@queue_group.command("list")
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def list_command(config_path: Path | None, as_json: bool) -> None:
    """List queued messages and the state of each recipient (like mailq)."""
    queue = _open(config_path)
    try:
        messages: list[QueuedMessage] = []
        corrupt: list[tuple[str, str]] = []
        for queue_id in queue.store.queue_ids() if queue.store else []:
            try:
                message = queue.store.get(queue_id) if queue.store else None
            except CorruptEntryError as exc:
                corrupt.append((queue_id, exc.reason))
                continue
            if message is not None:
                messages.append(message)
    finally:
        queue.close()
    if as_json:
        out = {
            "messages": [_message_json(m) for m in messages],
            "corrupt": [{"queue_id": q, "reason": why} for q, why in corrupt],
        }
        click.echo(json.dumps(out, indent=2))
        return
    if not messages and not corrupt:
        click.echo("Mail queue is empty")
        return
    click.echo(f"{'-Queue ID-':<13} {'--Size--':>8} {'----Arrival Time----':<20} "
               "-Sender/Recipient-------")
    for m in messages:
        held = any(r.state == "held" for r in m.recipients)
        arrival = time.strftime("%a %b %d %H:%M:%S", time.localtime(m.arrival))
        sender = m.reverse_path or "MAILER-DAEMON"
        click.echo(f"{m.queue_id + ('!' if held else ''):<13} {m.size:>8} {arrival:<20} {sender}")
        for r in m.recipients:
            if r.last_result is not None and r.state not in FINAL_STATES:
                click.echo(f"{'':44}({_reply_text(r.last_result)})")
            click.echo(f"{'':44}{r.address} [{r.state}]")
        click.echo("")
    for queue_id, why in corrupt:
        click.echo(f"{queue_id:<13} unreadable entry: {why}")
    total = sum(m.size for m in messages)
    click.echo(f"-- {total} bytes in {len(messages)} message{'s' if len(messages) != 1 else ''}.")


@queue_group.command("show")
@config_option
@click.argument("queue_id")
@click.option("--content", is_flag=True, help="Also print the message as spooled.")
def show_command(config_path: Path | None, queue_id: str, content: bool) -> None:
    """Show one message's envelope and recipients."""
    queue = _open(config_path)
    try:
        m = queue.get(queue_id)
    finally:
        queue.close()
    lines = [
        f"queue id:      {m.queue_id}{' (DSN)' if m.is_dsn else ''}",
        f"arrival:       {_iso(m.arrival)}",
        f"size:          {m.size} bytes",
        f"reverse-path:  <{m.reverse_path}>",
    ]
    if m.body or m.smtputf8:
        lines.append(f"body:          {m.body or '-'}{' SMTPUTF8' if m.smtputf8 else ''}")
    if m.ret or m.envid:
        lines.append(f"ret/envid:     {m.ret or '-'} {m.envid or '-'}")
    if m.client_address or m.client_name:
        lines.append(f"client:        {m.client_name or '-'} [{m.client_address or '-'}]")
    if m.authenticated_user:
        lines.append(f"authenticated: {m.authenticated_user}")
    for r in m.recipients:
        original = f" (for {r.original})" if r.original != r.address else ""
        lines.append(f"recipient:     {r.address}{original} route={r.route} state={r.state} "
                     f"attempts={r.attempts}")
        if r.state not in FINAL_STATES:
            lines.append(f"  next attempt: {_iso(r.next_attempt_at)}")
        if r.last_result is not None:
            lines.append(f"  last reply:   {_reply_text(r.last_result)}")
    click.echo("\n".join(lines))
    if content:
        click.echo("")
        try:
            with open(m.spool_path, "rb") as spool_file:
                while block := spool_file.read(_COPY_BLOCK):
                    click.echo(block, nl=False)
        except FileNotFoundError:
            _fail(f"the spool file of {m.queue_id} is gone")


@queue_group.command("flush")
@config_option
def flush_command(config_path: Path | None) -> None:
    """Try every queued and deferred recipient now."""
    queue = _open(config_path)
    try:
        count = queue.store.retry(None, time.time()) if queue.store else 0
    finally:
        queue.close()
    click.echo(f"{count} recipient{'s' if count != 1 else ''} scheduled for delivery now")


@queue_group.command("retry")
@config_option
@click.argument("queue_id")
def retry_command(config_path: Path | None, queue_id: str) -> None:
    """Try a message's queued and deferred recipients now."""
    queue = _open(config_path)
    try:
        queue.get(queue_id)
        assert queue.store is not None
        count = queue.store.retry(queue_id, time.time())
    finally:
        queue.close()
    click.echo(f"{queue_id}: {count} recipient{'s' if count != 1 else ''} scheduled for "
               "delivery now")


@queue_group.command("hold")
@config_option
@click.argument("queue_id")
def hold_command(config_path: Path | None, queue_id: str) -> None:
    """Keep a message in the queue without trying it, until released."""
    queue = _open(config_path)
    try:
        queue.get(queue_id)
        assert queue.store is not None
        count = queue.store.hold(queue_id)
    finally:
        queue.close()
    click.echo(f"{queue_id}: {count} recipient{'s' if count != 1 else ''} held")


@queue_group.command("release")
@config_option
@click.argument("queue_id")
def release_command(config_path: Path | None, queue_id: str) -> None:
    """Release a held message; it is tried at once."""
    queue = _open(config_path)
    try:
        queue.get(queue_id)
        assert queue.store is not None
        count = queue.store.release(queue_id, time.time())
    finally:
        queue.close()
    click.echo(f"{queue_id}: {count} recipient{'s' if count != 1 else ''} released")


@queue_group.command("delete")
@config_option
@click.argument("queue_id")
def delete_command(config_path: Path | None, queue_id: str) -> None:
    """Remove a message from the queue (no DSN is sent)."""
    queue = _open(config_path)
    try:
        queue.get(queue_id)
        assert queue.store is not None
        # Index first, then the file: a crash in between leaves an orphan spool file,
        # which the next start moves to spool/corrupt; never an entry without content.
        queue.store.delete(queue_id)
        queue.spool.discard(queue_id)
    finally:
        queue.close()
    click.echo(f"{queue_id}: deleted")


@queue_group.command("bounce")
@config_option
@click.argument("queue_id")
def bounce_command(config_path: Path | None, queue_id: str) -> None:
    """Give up on a message now: fail its pending recipients (5.0.0).

    The server sends the DSN to the reverse-path on its next pass, then removes the message.
    """
    queue = _open(config_path)
    try:
        queue.get(queue_id)
        assert queue.store is not None
        count = queue.store.cancel(queue_id, CANCELLED)
    finally:
        queue.close()
    click.echo(f"{queue_id}: {count} recipient{'s' if count != 1 else ''} failed; "
               "the server sends the DSN on its next pass")
