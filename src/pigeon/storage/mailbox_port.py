"""The mailbox store port: where the MDA puts a delivered message and how full a mailbox is.

Mailboxes are named by mailbox key (``bob@example.com``, see
:mod:`pigeon.storage.accounts_port`). The embedded backend is Maildir
(:mod:`pigeon.storage.maildir`); readers (POP3) will get their methods here too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

__all__ = ["MailboxStore"]


class MailboxStore(Protocol):
    """Durable storage of delivered messages, one mailbox per mailbox key."""

    def deliver(self, key: str, source: Path, prefix: bytes) -> str:
        """Store ``prefix`` followed by the content of ``source`` as a new message.

        Blocking (file I/O); run it in a thread from async code. Returns only after the
        message is on stable storage.

        Args:
            key: the mailbox key; the mailbox is created when missing.
            source: the spool file to copy (streamed, never loaded whole).
            prefix: bytes written before the content (trace fields, CRLF-terminated).

        Returns:
            The stored message's name within the mailbox.

        Raises:
            OSError: the message could not be stored; nothing is left behind.
        """
        ...

    def usage(self, key: str) -> int:
        """The bytes used by the messages of the mailbox ``key`` (0 when it does not exist)."""
        ...
