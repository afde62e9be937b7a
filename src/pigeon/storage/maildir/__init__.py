"""Maildir mailboxes, the embedded mailbox store (see :mod:`pigeon.storage.maildir.store`)."""

from pigeon.storage.maildir.store import COPY_BLOCK, MaildirStore, encode_name, maildir_path

__all__ = ["COPY_BLOCK", "MaildirStore", "encode_name", "maildir_path"]
