"""POP3 protocol errors, split by blame (the h11 way).

A :class:`LocalProtocolError` means our own code misused the state machine (a bug: let it
end the session task and be logged). Peer mistakes never raise: they become
:class:`~pigeon.protocol.pop3._events.CommandError` events carrying the ``-ERR`` response.
"""

from __future__ import annotations

__all__ = ["LocalProtocolError", "ProtocolError"]


class ProtocolError(Exception):
    """Base class of POP3 protocol errors."""


class LocalProtocolError(ProtocolError):
    """The application called the state machine at the wrong time or with a bad value."""
