"""The embedded account store: SQLite in WAL mode at ``<data_dir>/accounts.db``.

Mailboxes come from two places: the config file (``[[mailbox]]`` entries, merged in by
:meth:`SqliteAccountStore.sync_config` at every start; the config wins for the quota, and an
entry that leaves the file leaves the store) and ``pigeon mailbox add`` (kept until
``pigeon mailbox del``). Keys are mailbox keys (see :mod:`pigeon.storage.accounts_port`).

A mailbox with a ``password_hash`` (argon2id) is a *user*: it can log in to submit mail
and read it over POP3. The ``sender_address`` table holds a user's aliases: extra addresses
the user may send as and, in a local domain, receives at. The ``domain`` table holds local
domains added with ``pigeon domain add``, merged with the config's ``domains.local``.
Schema version 2 added that table; an older file is upgraded in place. One connection is
shared by the threads of the process behind a lock; other processes (the ``pigeon`` CLI
while the server runs) wait up to ``busy_timeout`` for a write lock instead of failing.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from pigeon.storage.accounts_port import (
    MailboxConfig,
    MailboxInfo,
    canonical_domain,
    canonical_mailbox_key,
)

__all__ = ["SCHEMA_VERSION", "AccountStore", "SqliteAccountStore"]

SCHEMA_VERSION = 2

# How long a writer waits for another process's write transaction (milliseconds). The CLI's
# transactions last milliseconds; 5 s only matters when a disk stalls.
_BUSY_TIMEOUT_MS = 5000

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS mailbox (
        address       TEXT PRIMARY KEY,      -- mailbox key, or '@domain' for a catch-all
        quota         INTEGER,               -- bytes, NULL for no limit
        password_hash TEXT,                  -- argon2id PHC string, NULL: cannot log in
        from_config   INTEGER NOT NULL DEFAULT 0,
        created       REAL NOT NULL          -- Unix time, seconds
    )""",
    """CREATE TABLE IF NOT EXISTS sender_address (
        address TEXT PRIMARY KEY,            -- an extra address the user may send as
        mailbox TEXT NOT NULL REFERENCES mailbox(address) ON DELETE CASCADE
    )""",
    """CREATE INDEX IF NOT EXISTS sender_address_mailbox ON sender_address (mailbox)""",
    """CREATE TABLE IF NOT EXISTS domain (
        name    TEXT PRIMARY KEY,            -- canonical A-label domain
        created REAL NOT NULL                -- Unix time, seconds
    )""",
)

_MAILBOX_COLUMNS = "address, quota, created, from_config, password_hash IS NOT NULL"


def _info(row: tuple[str, int | None, float, int, int]) -> MailboxInfo:
    return MailboxInfo(address=row[0], quota=row[1], created=row[2], from_config=bool(row[3]),
                       has_password=bool(row[4]))


def _sort_key(info: MailboxInfo) -> tuple[str, str]:
    local, _, domain = info.address.rpartition("@")
    return (domain, local)


class AccountStore:
    """Mailbox accounts in SQLite (WAL); safe to use from several threads.

    Args:
        path: the database file (``<data_dir>/accounts.db``); created when missing, with
            its parent directory.
        clock: the time source for ``created`` (Unix seconds).
    """

    def __init__(self, path: Path, *, clock: Callable[[], float] = time.time) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._clock = clock
        self._lock = threading.Lock()
        self._db = sqlite3.connect(
            str(path), check_same_thread=False, isolation_level=None,
            timeout=_BUSY_TIMEOUT_MS / 1000,
        )
        with self._lock:
            self._db.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA synchronous = FULL")
            self._db.execute("PRAGMA foreign_keys = ON")
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise RuntimeError(
                    f"{path}: account database schema {version} is newer than this Pigeon "
                    f"({SCHEMA_VERSION})"
                )
            self._db.execute("BEGIN IMMEDIATE")
            for statement in _SCHEMA:
                self._db.execute(statement)
            self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            self._db.execute("COMMIT")

    def _now(self) -> float:
        return float(self._clock())

    def add_mailbox(self, address: str, quota: int | None = None) -> MailboxInfo:
        """Create a mailbox, or set the quota of an existing one.

        Args:
            address: ``local@domain`` or ``@domain`` (catch-all); normalised to its key.
            quota: the quota in bytes, or None for no limit.

        Returns:
            The stored mailbox.

        Raises:
            ValueError: the address is invalid, has no domain, or the quota is negative.
        """
        key = canonical_mailbox_key(address)
        if "@" not in key:
            raise ValueError(f"a mailbox needs a domain: {address!r}")
        if quota is not None and quota < 0:
            raise ValueError("quota must be a number of bytes >= 0")
        with self._lock:
            self._db.execute(
                "INSERT INTO mailbox (address, quota, created) VALUES (?, ?, ?) "
                "ON CONFLICT(address) DO UPDATE SET quota = excluded.quota",
                (key, quota, self._now()),
            )
            return self._get(key)  # type: ignore[return-value]

    def remove_mailbox(self, address: str) -> bool:
        """Remove a mailbox record (its Maildir on disk is left in place).

        Args:
            address: the address or key.

        Returns:
            True when the mailbox existed.
        """
        key = canonical_mailbox_key(address)
        with self._lock:
            cur = self._db.execute("DELETE FROM mailbox WHERE address = ?", (key,))
            return cur.rowcount > 0

    def _get(self, key: str) -> MailboxInfo | None:
        row = self._db.execute(
            f"SELECT {_MAILBOX_COLUMNS} FROM mailbox WHERE address = ?", (key,)
        ).fetchone()
        return None if row is None else _info(row)

    def version(self) -> tuple[int, int]:
        """A token that changes whenever what the store holds may have changed.

        It is ``PRAGMA data_version``, which changes when another connection commits (such
        as ``pigeon mailbox add`` run while the server runs), and the number of rows written
        through this connection. A reader may keep what it read while the token stays the
        same.

        Returns:
            A pair of integers, to be compared for equality only.
        """
        with self._lock:
            row = self._db.execute("PRAGMA data_version").fetchone()
            return (row[0], self._db.total_changes)

    def get_mailbox(self, key: str) -> MailboxInfo | None:
        """Look up a mailbox by its key.

        Args:
            key: a mailbox key as made by
                :func:`~pigeon.storage.accounts_port.canonical_mailbox_key` (exact match).

        Returns:
            The mailbox, or None.
        """
        with self._lock:
            return self._get(key)

    def list_mailboxes(self) -> list[MailboxInfo]:
        """All mailboxes and catch-alls, sorted by domain, then local part."""
        with self._lock:
            rows = self._db.execute(f"SELECT {_MAILBOX_COLUMNS} FROM mailbox").fetchall()
        return sorted((_info(r) for r in rows), key=_sort_key)

    def sync_config(self, entries: Iterable[MailboxConfig]) -> None:
        """Merge the config file's ``[[mailbox]]`` entries into the store, in one transaction.

        Entries are created or get the config's quota (the config wins); mailboxes that came
        from the config before and are no longer in it are removed; mailboxes added with
        ``pigeon mailbox add`` stay.

        Args:
            entries: objects with ``address`` (str) and ``quota`` (bytes or None).

        Raises:
            ValueError: an entry's address is invalid.
        """
        wanted: dict[str, int | None] = {}
        for entry in entries:
            wanted[canonical_mailbox_key(entry.address)] = entry.quota
        now = self._now()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                old = {
                    r[0] for r in self._db.execute(
                        "SELECT address FROM mailbox WHERE from_config = 1"
                    )
                }
                for key in old - wanted.keys():
                    self._db.execute("DELETE FROM mailbox WHERE address = ?", (key,))
                for key, quota in wanted.items():
                    self._db.execute(
                        "INSERT INTO mailbox (address, quota, from_config, created) "
                        "VALUES (?, ?, 1, ?) ON CONFLICT(address) DO UPDATE SET "
                        "quota = excluded.quota, from_config = 1",
                        (key, quota, now),
                    )
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # -- passwords (users) --------------------------------------------------------------

    def set_password_hash(self, address: str, password_hash: str | None) -> bool:
        """Set or clear (None) the password hash of a mailbox.

        Args:
            address: the mailbox address or key.
            password_hash: an argon2id PHC string, or None: the mailbox can no longer log in.

        Returns:
            True when the mailbox exists.
        """
        key = canonical_mailbox_key(address)
        with self._lock:
            cur = self._db.execute(
                "UPDATE mailbox SET password_hash = ? WHERE address = ?", (password_hash, key)
            )
            return cur.rowcount > 0

    def get_password_hash(self, key: str) -> str | None:
        """The password hash of the mailbox with this key, or None (no such user).

        Args:
            key: a mailbox key (exact match).
        """
        with self._lock:
            row = self._db.execute(
                "SELECT password_hash FROM mailbox WHERE address = ?", (key,)
            ).fetchone()
        return None if row is None else row[0]

    # -- aliases (extra sender addresses) -----------------------------------------------

    def add_alias(self, owner: str, address: str) -> None:
        """Give the user ``owner`` the extra address ``address``.

        Args:
            owner: the user's mailbox address or key.
            address: the alias (``local@domain``); in a local domain, mail to it is
                delivered to ``owner``.

        Raises:
            ValueError: an address is invalid, ``owner`` is not a mailbox, ``address`` is
                a mailbox itself, or it already belongs to another user.
        """
        owner_key = canonical_mailbox_key(owner)
        key = canonical_mailbox_key(address)
        if "@" not in key or key.startswith("@"):
            raise ValueError(f"an alias is a full address local-part@domain: {address!r}")
        with self._lock:
            if self._get(owner_key) is None:
                raise ValueError(f"no such mailbox: {owner_key}")
            if self._get(key) is not None:
                raise ValueError(f"{key} is a mailbox of its own")
            row = self._db.execute(
                "SELECT mailbox FROM sender_address WHERE address = ?", (key,)
            ).fetchone()
            if row is not None and row[0] != owner_key:
                raise ValueError(f"{key} already belongs to {row[0]}")
            self._db.execute(
                "INSERT OR IGNORE INTO sender_address (address, mailbox) VALUES (?, ?)",
                (key, owner_key),
            )

    def remove_alias(self, address: str) -> bool:
        """Remove an alias; True when it existed."""
        key = canonical_mailbox_key(address)
        with self._lock:
            cur = self._db.execute("DELETE FROM sender_address WHERE address = ?", (key,))
            return cur.rowcount > 0

    def alias_owner(self, key: str) -> str | None:
        """The mailbox key that owns the alias ``key``, or None.

        Args:
            key: a mailbox key (exact match).
        """
        with self._lock:
            row = self._db.execute(
                "SELECT mailbox FROM sender_address WHERE address = ?", (key,)
            ).fetchone()
        return None if row is None else row[0]

    def list_aliases(self, owner: str | None = None) -> list[tuple[str, str]]:
        """Aliases as ``(alias, owner)`` pairs, sorted; only ``owner``'s when given.

        Raises:
            ValueError: ``owner`` is not a valid address.
        """
        with self._lock:
            if owner is None:
                rows = self._db.execute(
                    "SELECT address, mailbox FROM sender_address ORDER BY mailbox, address"
                ).fetchall()
            else:
                rows = self._db.execute(
                    "SELECT address, mailbox FROM sender_address WHERE mailbox = ? "
                    "ORDER BY address", (canonical_mailbox_key(owner),)
                ).fetchall()
        return [(r[0], r[1]) for r in rows]

    # -- local domains ------------------------------------------------------------------

    def add_domain(self, name: str) -> bool:
        """Record a local domain; True when it was new.

        Raises:
            ValueError: the name is not a valid domain.
        """
        domain = canonical_domain(name)
        if not domain or "@" in domain or domain.startswith("."):
            raise ValueError(f"invalid domain name {name!r}")
        with self._lock:
            cur = self._db.execute(
                "INSERT OR IGNORE INTO domain (name, created) VALUES (?, ?)",
                (domain, self._now()),
            )
            return cur.rowcount > 0

    def remove_domain(self, name: str) -> bool:
        """Forget a local domain recorded with :meth:`add_domain`; True when it existed."""
        domain = canonical_domain(name)
        with self._lock:
            cur = self._db.execute("DELETE FROM domain WHERE name = ?", (domain,))
            return cur.rowcount > 0

    def list_domains(self) -> list[str]:
        """Local domains recorded with :meth:`add_domain`, sorted."""
        with self._lock:
            rows = self._db.execute("SELECT name FROM domain ORDER BY name").fetchall()
        return [r[0] for r in rows]

    def close(self) -> None:
        """Close the database connection."""
        with self._lock:
            self._db.close()


# The SQLite implementation is the embedded default; this alias names it explicitly.
SqliteAccountStore = AccountStore
