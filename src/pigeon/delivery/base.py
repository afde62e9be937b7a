"""The contract between the queue scheduler and the delivery agents.

A delivery agent takes one queued message and some of its recipients (all with the same
route) and returns one :class:`~pigeon.queue.model.AttemptResult` per recipient, in the same
order. An agent never raises for a delivery problem: it reports ``deferred`` or ``failed``.
An unexpected exception is treated by the scheduler as ``deferred`` with ``4.3.0``.
"""

from __future__ import annotations

from typing import Protocol

from pigeon.queue.model import AttemptResult, QueuedMessage, QueuedRecipient

__all__ = ["DeliveryAgent"]


class DeliveryAgent(Protocol):
    """A local (MDA) or remote (SMTP client) delivery agent."""

    async def deliver(
        self, message: QueuedMessage, recipients: list[QueuedRecipient]
    ) -> list[AttemptResult]:
        """Deliver ``message`` to ``recipients``.

        Args:
            message: the queued message; its content is read from ``message.spool_path``.
            recipients: recipients of this message that share this agent's route.

        Returns:
            One result per recipient, in the order given.
        """
        ...
