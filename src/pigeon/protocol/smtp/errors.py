"""Protocol errors, split by blame (the h11 way).

A :class:`LocalProtocolError` means our own code misused the state machine (a bug: let it
crash the session task and be logged). Peer mistakes never raise: they become
:class:`~pigeon.protocol.smtp._events.CommandError` events with the right reply.
"""

from __future__ import annotations

__all__ = ["LocalProtocolError", "ProtocolError"]


class ProtocolError(Exception):
    """Base class of SMTP protocol errors."""


class LocalProtocolError(ProtocolError):
    """The application called the state machine at the wrong time or with a bad value."""
