"""Storage ports: what the services need from a storage backend, as ``typing.Protocol``s.

The queue index (:class:`QueueStore`) keeps one envelope record per queued message and one
row per recipient. The message content is not in the index: it is the spool file (see
``pigeon.queue.spool``). The embedded backend is ``pigeon.storage.sqlite.queue_store``;
no SQL lives outside ``storage/<backend>/``.

Every method is one transaction. Writers race with other processes (the ``pigeon queue``
tools write state changes directly while the server runs), so every state change is a
conditional update on the rows' current state, never a read-modify-write in Python.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from pigeon.queue.model import AttemptResult, QueuedMessage, RecipientState

__all__ = ["CorruptEntryError", "DsnAction", "QueueStore", "RecipientUpdate"]

DsnAction = Literal["failed", "delayed", "delivered", "relayed", "expanded"]


class CorruptEntryError(Exception):
    """An index entry that cannot be read back as a :class:`QueuedMessage`.

    Attributes:
        queue_id: the entry's queue id.
        reason: what is wrong with it.
    """

    def __init__(self, queue_id: str, reason: str) -> None:
        super().__init__(f"queue entry {queue_id}: {reason}")
        self.queue_id = queue_id
        self.reason = reason


@dataclass(frozen=True, slots=True)
class RecipientUpdate:
    """The result of one delivery attempt for one recipient, as the store records it.

    Attributes:
        recipient_id: the row.
        state: the new state (``deferred``, ``delivered``, ``failed`` or ``expired``). A
            ``deferred`` result leaves a ``held`` row held; a result never changes a row that
            is already final (for example bounced by an administrator during the attempt).
        result: the attempt's result (stored as the last reply).
        delay_notified: set the "delay DSN sent" flag.
        dsn_action: an event that may need a DSN (RFC 3464 action); the scheduler sends one
            DSN per message for all pending events and then clears them.
    """

    recipient_id: int
    state: RecipientState
    result: AttemptResult
    delay_notified: bool = False
    dsn_action: DsnAction | None = None


class QueueStore(Protocol):
    """The durable queue index (RFC 5321 §4.5.4.1: a message is kept until delivered,
    failed or expired).

    Attributes:
        transactions: the number of write transactions committed by this store object
            (group commit makes many enqueues share one).
    """

    transactions: int

    def batch(self, *, durable: bool = True) -> AbstractContextManager[None]:
        """One transaction for every write made inside the ``with`` block (group commit).

        A write that raises inside the block is undone alone; the others commit together.

        Args:
            durable: True: on stable storage when the block exits. False: survives a crash
                of the process; an OS crash may undo it (for attempt records and the removal
                of finished entries, where that can only repeat work).
        """
        ...

    def insert(self, messages: Sequence[QueuedMessage]) -> None:
        """Add messages and their recipient rows in ONE transaction (group commit).

        Assigns each recipient's ``id`` in place.

        Args:
            messages: new messages; their spool files must already be durable.

        Raises:
            Exception: the backend failed; nothing of the batch was committed.
        """
        ...

    def get(self, queue_id: str) -> QueuedMessage | None:
        """Read one message with all its recipients (a consistent snapshot).

        Returns:
            The message, or None when the queue has no such id.

        Raises:
            CorruptEntryError: the entry exists but cannot be read.
        """
        ...

    def queue_ids(self) -> list[str]:
        """Return every queue id in the index, oldest first."""
        ...

    def raw(self, queue_id: str) -> dict[str, Any]:
        """Return the raw stored data of an entry (even a corrupt one), for quarantine."""
        ...

    def due(self, now: float, limit: int) -> list[str]:
        """Queue ids with a recipient ``queued``/``deferred`` and due at ``now``.

        Args:
            now: Unix time in seconds.
            limit: the most ids to return.

        Returns:
            Ids, the longest overdue first.
        """
        ...

    def next_due_at(self) -> float | None:
        """Unix time of the earliest next attempt of any ``queued``/``deferred`` recipient."""
        ...

    def begin_attempt(self, claims: Sequence[tuple[int, float]], now: float) -> list[int]:
        """Record the start of an attempt BEFORE it is made.

        For each ``(recipient id, next attempt time)``: count the attempt and push
        ``next_attempt_at`` out, if the row is still ``queued``/``deferred`` and due at
        ``now``. A crash during the attempt therefore never causes a hot retry loop.

        Returns:
            The recipient ids claimed (others changed meanwhile and must not be tried).
        """
        ...

    def record(self, updates: Sequence[RecipientUpdate]) -> int:
        """Store attempt results (one transaction).

        Returns:
            The number of rows changed.
        """
        ...

    def pending_events(self, queue_id: str | None = None) -> dict[str, dict[int, DsnAction]]:
        """Recipients with an event awaiting its DSN: ``{queue id: {recipient id: action}}``.

        Args:
            queue_id: only this message (default: all).
        """
        ...

    def clear_events(self, recipient_ids: Sequence[int]) -> None:
        """Mark the DSN events of these recipients as handled."""
        ...

    def finished(self) -> list[str]:
        """Queue ids whose recipients are all final and have no pending event."""
        ...

    def delete(self, queue_id: str) -> bool:
        """Remove a message and its recipient rows.

        Returns:
            True when the message existed.
        """
        ...

    def hold(self, queue_id: str) -> int:
        """Put the ``queued``/``deferred`` recipients of a message on hold.

        Returns:
            The number of recipients now held.
        """
        ...

    def release(self, queue_id: str, now: float) -> int:
        """Release held recipients; they are due at ``now``.

        Returns:
            The number of recipients released.
        """
        ...

    def retry(self, queue_id: str | None, now: float) -> int:
        """Make ``queued``/``deferred`` recipients due at ``now`` (one message, or all).

        Returns:
            The number of recipients made due.
        """
        ...

    def cancel(self, queue_id: str, result: AttemptResult) -> int:
        """Fail every non-final recipient of a message now (administrator's bounce).

        Each gets ``result`` as its last reply and a pending ``failed`` event.

        Returns:
            The number of recipients failed.
        """
        ...

    def close(self) -> None:
        """Release the backend's resources."""
        ...
