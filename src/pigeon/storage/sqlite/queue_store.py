"""The embedded queue index: SQLite in WAL mode, ``<data_dir>/queue.db``.

One connection per store object, shared between threads under a lock
(``check_same_thread=False``). Settings chosen for durability and for sharing the file
with the ``pigeon queue`` tools while the server runs:

- ``journal_mode=WAL``: readers never block the writer and the writer never blocks readers;
- ``synchronous=FULL`` for every transaction that a promise rests on (a new message: the
  queue answers ``250`` only after its commit returns; final delivery states, before the
  spool file goes); :meth:`SqliteQueueStore.batch` may ask for ``NORMAL`` when the
  transaction only records attempts or removes finished rows: in WAL mode a ``NORMAL``
  commit survives a crash of the process, and only an OS crash or power loss may undo it,
  which can cause a repeated attempt, never a lost message. The next ``FULL`` commit makes
  every earlier frame of the log durable too. The queue also commits new messages at
  ``NORMAL`` when one syncfs(2) of the same file system follows before anyone is answered
  (``pigeon.queue.service``): that syncfs writes the log as a ``FULL`` commit would;
- one connection for writes and one for reads, so that reads (the scheduler's, the tools')
  never wait for a write transaction's fsync;
- :meth:`SqliteQueueStore.batch` groups many writes into one transaction (group commit); the
  writes inside it each run in a ``SAVEPOINT``, so one failing write is undone alone;
- ``busy_timeout``: a writer waits for another process's write transaction instead of
  failing; write transactions start with ``BEGIN IMMEDIATE`` so they take the write lock
  up front and never fail half-way with ``SQLITE_BUSY``.

Schema (version 1): ``message`` (one row per queued message: the envelope) and
``recipient`` (one row per forward-path; ``dsn_action`` holds an event waiting for its DSN).
"""

from __future__ import annotations

import heapq
import math
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

from pigeon.queue.ids import is_queue_id
from pigeon.queue.model import AttemptResult, QueuedMessage, QueuedRecipient, RecipientState
from pigeon.storage.ports import CorruptEntryError, DsnAction, RecipientUpdate

__all__ = ["SCHEMA_VERSION", "SqliteQueueStore"]

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS message (
    queue_id TEXT PRIMARY KEY,
    reverse_path TEXT NOT NULL,
    size INTEGER NOT NULL,
    arrival REAL NOT NULL,
    body TEXT,
    smtputf8 INTEGER NOT NULL DEFAULT 0,
    ret TEXT,
    envid TEXT,
    client_address TEXT NOT NULL DEFAULT '',
    client_name TEXT NOT NULL DEFAULT '',
    authenticated_user TEXT,
    is_dsn INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS recipient (
    id INTEGER PRIMARY KEY,
    queue_id TEXT NOT NULL REFERENCES message(queue_id) ON DELETE CASCADE,
    address TEXT NOT NULL,
    original TEXT NOT NULL,
    orcpt_type TEXT,
    orcpt_address TEXT,
    notify TEXT,
    route TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    last_status TEXT,
    last_code INTEGER,
    last_enhanced TEXT,
    last_text TEXT,
    last_remote_host TEXT,
    delay_notified INTEGER NOT NULL DEFAULT 0,
    dsn_action TEXT
);
CREATE INDEX IF NOT EXISTS recipient_queue_id ON recipient(queue_id);
CREATE INDEX IF NOT EXISTS recipient_dsn ON recipient(dsn_action) WHERE dsn_action IS NOT NULL;
"""

# Due recipients in the order passes take them: `due` reads it from the start of each active
# state and stops after `limit` messages, however large the backlog.
_DUE_INDEX = ("CREATE INDEX IF NOT EXISTS recipient_due_order"
              " ON recipient(state, next_attempt_at, queue_id)")

_STATES = frozenset({"queued", "deferred", "held", "delivered", "failed", "expired"})
_ACTIVE_STATES = ("queued", "deferred")
_ACTIVE = "(" + ", ".join(f"'{state}'" for state in _ACTIVE_STATES) + ")"  # for SQL IN
_FINAL = "('delivered', 'failed', 'expired')"
_ROUTES = frozenset({"local", "remote"})
_NOTIFY = frozenset({"SUCCESS", "FAILURE", "DELAY"})
_DSN_ACTIONS = frozenset({"failed", "delayed", "delivered", "relayed", "expanded"})
_RESULT_STATUS = frozenset({"delivered", "deferred", "failed"})


def _encode_notify(notify: frozenset[str] | None) -> str | None:
    return None if notify is None else ",".join(sorted(notify))


class SqliteQueueStore:
    """:class:`~pigeon.storage.ports.QueueStore` on SQLite.

    Args:
        path: the database file (created with its schema when missing).
        spool_dir: the ``spool/queue`` directory; a message's ``spool_path`` is
            ``spool_dir / queue_id``.
        busy_timeout: seconds to wait for another process's write lock.

    Attributes:
        transactions: write transactions committed through this object.
    """

    def __init__(self, path: Path, spool_dir: Path, *, busy_timeout: float = 10.0) -> None:
        self.path = path
        self.spool_dir = spool_dir
        self.transactions = 0
        self._lock = threading.RLock()
        self._depth = 0  # nesting of _write() inside batch(); guarded by _lock
        self._db = self._connect(busy_timeout)
        self._db.execute("PRAGMA journal_mode = WAL")
        self._db.execute("PRAGMA synchronous = FULL")
        self._db.execute("PRAGMA foreign_keys = ON")
        self._read_lock = threading.Lock()
        self._reader = self._connect(busy_timeout)
        with self._write() as db:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise RuntimeError(
                    f"{path}: queue schema version {version} is newer than this Pigeon "
                    f"({SCHEMA_VERSION})"
                )
            if version < SCHEMA_VERSION:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            # The due-order index is not part of the schema version: an index written by an
            # earlier Pigeon (state, next_attempt_at) is replaced, whatever the version.
            db.execute("DROP INDEX IF EXISTS recipient_due")
            db.execute(_DUE_INDEX)

    # -- transactions -------------------------------------------------------------------

    def _connect(self, busy_timeout: float) -> sqlite3.Connection:
        db = sqlite3.connect(
            self.path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
        )
        db.row_factory = sqlite3.Row
        db.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
        return db

    @contextmanager
    def batch(self, *, durable: bool = True) -> Iterator[None]:
        """One write transaction for every write made inside it (group commit).

        Each write method called inside runs in its own ``SAVEPOINT``: when it raises, only
        its own changes are undone and the batch goes on. Writes from other threads wait.

        Args:
            durable: commit with ``synchronous=FULL`` (on stable storage when this returns);
                False commits with ``NORMAL`` (survives a process crash; see the module
                docstring for what an OS crash may undo).

        Raises:
            sqlite3.Error: the transaction could not begin or commit (nothing was written).
        """
        with self._lock:
            if self._depth:
                raise RuntimeError("batch() does not nest")
            if not durable:
                self._db.execute("PRAGMA synchronous = NORMAL")
            try:
                self._db.execute("BEGIN IMMEDIATE")
                self._depth = 1
                try:
                    yield
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                finally:
                    self._depth = 0
                self._db.execute("COMMIT")
                self.transactions += 1
            finally:
                if not durable:
                    self._db.execute("PRAGMA synchronous = FULL")

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._depth:  # inside batch(): a savepoint of the batch's transaction
                name = f"w{self._depth}"
                self._depth += 1
                self._db.execute(f"SAVEPOINT {name}")
                try:
                    yield self._db
                except BaseException:
                    self._db.execute(f"ROLLBACK TO {name}")
                    self._db.execute(f"RELEASE {name}")
                    raise
                finally:
                    self._depth -= 1
                self._db.execute(f"RELEASE {name}")
                return
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
            self.transactions += 1

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """A consistent snapshot on the read connection (sees committed data only)."""
        with self._read_lock:
            self._reader.execute("BEGIN")
            try:
                yield self._reader
            finally:
                self._reader.execute("COMMIT")

    # -- writing --------------------------------------------------------------------------

    def insert(self, messages: Sequence[QueuedMessage]) -> None:
        """Add messages and their recipients in one transaction; see the port."""
        with self._write() as db:
            for m in messages:
                db.execute(
                    "INSERT INTO message (queue_id, reverse_path, size, arrival, body, smtputf8,"
                    " ret, envid, client_address, client_name, authenticated_user, is_dsn)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (m.queue_id, m.reverse_path, m.size, m.arrival, m.body, int(m.smtputf8),
                     m.ret, m.envid, m.client_address, m.client_name, m.authenticated_user,
                     int(m.is_dsn)),
                )
                for r in m.recipients:
                    result = r.last_result
                    cursor = db.execute(
                        "INSERT INTO recipient (queue_id, address, original, orcpt_type,"
                        " orcpt_address, notify, route, state, attempts, next_attempt_at,"
                        " last_status, last_code, last_enhanced, last_text, last_remote_host,"
                        " delay_notified) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (m.queue_id, r.address, r.original,
                         r.orcpt[0] if r.orcpt else None, r.orcpt[1] if r.orcpt else None,
                         _encode_notify(r.notify), r.route, r.state, r.attempts,
                         r.next_attempt_at,
                         result.status if result else None, result.code if result else None,
                         result.enhanced if result else None, result.text if result else None,
                         result.remote_host if result else None, int(r.delay_notified)),
                    )
                    r.id = cast(int, cursor.lastrowid)

    def begin_attempt(self, claims: Sequence[tuple[int, float]], now: float) -> list[int]:
        """Count attempts and push ``next_attempt_at`` out before trying; see the port."""
        claimed = []
        with self._write() as db:
            for recipient_id, next_attempt_at in claims:
                cursor = db.execute(
                    "UPDATE recipient SET attempts = attempts + 1, next_attempt_at = ?"
                    f" WHERE id = ? AND state IN {_ACTIVE} AND next_attempt_at <= ?",
                    (next_attempt_at, recipient_id, now),
                )
                if cursor.rowcount:
                    claimed.append(recipient_id)
        return claimed

    def record(self, updates: Sequence[RecipientUpdate]) -> int:
        """Store attempt results; see the port."""
        changed = 0
        with self._write() as db:
            for u in updates:
                r = u.result
                cursor = db.execute(
                    "UPDATE recipient SET"
                    " state = CASE WHEN state = 'held' AND ? = 'deferred' THEN 'held' ELSE ? END,"
                    " last_status = ?, last_code = ?, last_enhanced = ?, last_text = ?,"
                    " last_remote_host = ?,"
                    " delay_notified = MAX(delay_notified, ?),"
                    " dsn_action = COALESCE(?, dsn_action)"
                    f" WHERE id = ? AND state NOT IN {_FINAL}",
                    (u.state, u.state, r.status, r.code, r.enhanced, r.text, r.remote_host,
                     int(u.delay_notified), u.dsn_action, u.recipient_id),
                )
                changed += cursor.rowcount
        return changed

    def clear_events(self, recipient_ids: Sequence[int]) -> None:
        """Mark DSN events handled; see the port."""
        with self._write() as db:
            db.executemany(
                "UPDATE recipient SET dsn_action = NULL WHERE id = ?",
                [(i,) for i in recipient_ids],
            )

    def delete(self, queue_id: str) -> bool:
        """Remove a message and its recipients; see the port."""
        with self._write() as db:
            db.execute("DELETE FROM recipient WHERE queue_id = ?", (queue_id,))
            cursor = db.execute("DELETE FROM message WHERE queue_id = ?", (queue_id,))
            return cursor.rowcount > 0

    def hold(self, queue_id: str) -> int:
        """Hold a message's active recipients; see the port."""
        with self._write() as db:
            return db.execute(
                f"UPDATE recipient SET state = 'held' WHERE queue_id = ? AND state IN {_ACTIVE}",
                (queue_id,),
            ).rowcount

    def release(self, queue_id: str, now: float) -> int:
        """Release held recipients, due now; see the port."""
        with self._write() as db:
            return db.execute(
                "UPDATE recipient SET"
                " state = CASE WHEN attempts > 0 THEN 'deferred' ELSE 'queued' END,"
                " next_attempt_at = ? WHERE queue_id = ? AND state = 'held'",
                (now, queue_id),
            ).rowcount

    def retry(self, queue_id: str | None, now: float) -> int:
        """Make active recipients due now; see the port."""
        sql = f"UPDATE recipient SET next_attempt_at = ? WHERE state IN {_ACTIVE}"
        with self._write() as db:
            if queue_id is None:
                return db.execute(sql, (now,)).rowcount
            return db.execute(sql + " AND queue_id = ?", (now, queue_id)).rowcount

    def cancel(self, queue_id: str, result: AttemptResult) -> int:
        """Fail a message's non-final recipients now; see the port."""
        with self._write() as db:
            return db.execute(
                "UPDATE recipient SET state = 'failed', last_status = ?, last_code = ?,"
                " last_enhanced = ?, last_text = ?, last_remote_host = ?, dsn_action = 'failed'"
                f" WHERE queue_id = ? AND state NOT IN {_FINAL}",
                (result.status, result.code, result.enhanced, result.text, result.remote_host,
                 queue_id),
            ).rowcount

    # -- reading ---------------------------------------------------------------------------

    def get(self, queue_id: str) -> QueuedMessage | None:
        """Read one message and its recipients; see the port."""
        with self._read() as db:
            row = db.execute("SELECT * FROM message WHERE queue_id = ?", (queue_id,)).fetchone()
            if row is None:
                return None
            rows = db.execute(
                "SELECT * FROM recipient WHERE queue_id = ? ORDER BY id", (queue_id,)
            ).fetchall()
        return self._message(row, rows)

    def queue_ids(self) -> list[str]:
        """Every queue id, oldest first; see the port."""
        with self._read() as db:
            rows = db.execute("SELECT queue_id FROM message ORDER BY arrival, queue_id")
            return [r[0] for r in rows.fetchall()]

    def raw(self, queue_id: str) -> dict[str, Any]:
        """The raw rows of an entry; see the port."""
        with self._read() as db:
            row = db.execute("SELECT * FROM message WHERE queue_id = ?", (queue_id,)).fetchone()
            rows = db.execute(
                "SELECT * FROM recipient WHERE queue_id = ? ORDER BY id", (queue_id,)
            ).fetchall()
        return {
            "message": dict(row) if row is not None else None,
            "recipients": [dict(r) for r in rows],
        }

    def due(self, now: float, limit: int) -> list[str]:
        """Queue ids with due recipients; see the port.

        Ordered by each message's earliest due recipient, then queue id. The two active
        states are read in that order from the due-order index and merged, so the work is
        proportional to ``limit``, not to the number of due recipients.
        """
        out: list[str] = []
        if limit <= 0:
            return out
        with self._read() as db:
            cursors = [
                db.execute(
                    "SELECT next_attempt_at, queue_id FROM recipient"
                    " WHERE state = ? AND next_attempt_at <= ?"
                    " ORDER BY next_attempt_at, queue_id",
                    (state, now),
                )
                for state in _ACTIVE_STATES
            ]
            try:
                seen: set[str] = set()
                rows = heapq.merge(*(map(tuple, cursor) for cursor in cursors))
                for _, queue_id in rows:
                    if queue_id not in seen:
                        seen.add(queue_id)
                        out.append(queue_id)
                        if len(out) >= limit:
                            break
            finally:
                for cursor in cursors:
                    cursor.close()
        return out

    def next_due_at(self) -> float | None:
        """The earliest next attempt; see the port."""
        with self._read() as db:
            row = db.execute(
                f"SELECT MIN(next_attempt_at) FROM recipient WHERE state IN {_ACTIVE}"
            ).fetchone()
        return None if row[0] is None else float(row[0])

    def pending_events(self, queue_id: str | None = None) -> dict[str, dict[int, DsnAction]]:
        """Recipients whose event awaits a DSN; see the port."""
        sql = "SELECT queue_id, id, dsn_action FROM recipient WHERE dsn_action IS NOT NULL"
        params: tuple[str, ...] = ()
        if queue_id is not None:
            sql += " AND queue_id = ?"
            params = (queue_id,)
        with self._read() as db:
            rows = db.execute(sql + " ORDER BY queue_id, id", params).fetchall()
        out: dict[str, dict[int, DsnAction]] = {}
        for queue_id, recipient_id, action in rows:
            if action in _DSN_ACTIONS:
                out.setdefault(queue_id, {})[recipient_id] = action
        return out

    def finished(self) -> list[str]:
        """Messages with every recipient final and no pending event; see the port."""
        with self._read() as db:
            rows = db.execute(
                "SELECT queue_id FROM message m WHERE NOT EXISTS (SELECT 1 FROM recipient r"
                " WHERE r.queue_id = m.queue_id"
                f" AND (r.state NOT IN {_FINAL} OR r.dsn_action IS NOT NULL))"
                " ORDER BY queue_id"
            ).fetchall()
        return [r[0] for r in rows]

    def close(self) -> None:
        """Close the connection."""
        with self._lock, self._read_lock:
            self._reader.close()
            self._db.close()

    # -- row decoding ------------------------------------------------------------------------

    def _message(self, row: sqlite3.Row, rows: list[sqlite3.Row]) -> QueuedMessage:
        queue_id = str(row["queue_id"])
        try:
            message = QueuedMessage(
                queue_id=queue_id,
                reverse_path=_text(row["reverse_path"]),
                spool_path=self.spool_dir / queue_id,
                size=_int(row["size"]),
                arrival=_float(row["arrival"]),
                body=_opt_text(row["body"]),
                smtputf8=bool(_int(row["smtputf8"])),
                ret=_opt_text(row["ret"]),
                envid=_opt_text(row["envid"]),
                client_address=_text(row["client_address"]),
                client_name=_text(row["client_name"]),
                authenticated_user=_opt_text(row["authenticated_user"]),
                is_dsn=bool(_int(row["is_dsn"])),
                recipients=[_recipient(r) for r in rows],
            )
        except (TypeError, ValueError) as exc:
            raise CorruptEntryError(queue_id, str(exc)) from exc
        if not is_queue_id(queue_id):
            raise CorruptEntryError(queue_id, "not a queue id")
        return message


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected text, found {value!r}")
    return value


def _opt_text(value: object) -> str | None:
    return None if value is None else _text(value)


def _int(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise TypeError(f"expected a non-negative integer, found {value!r}")
    return value


def _float(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise TypeError(f"expected a number, found {value!r}")
    return float(value)


def _recipient(row: sqlite3.Row) -> QueuedRecipient:
    state = _text(row["state"])
    if state not in _STATES:
        raise ValueError(f"recipient {row['id']}: unknown state {state!r}")
    route = _text(row["route"])
    if route not in _ROUTES:
        raise ValueError(f"recipient {row['id']}: unknown route {route!r}")
    notify_text = _opt_text(row["notify"])
    notify: frozenset[str] | None = None
    if notify_text is not None:
        notify = frozenset(n for n in notify_text.split(",") if n)
        if not notify <= _NOTIFY:
            raise ValueError(f"recipient {row['id']}: bad NOTIFY {notify_text!r}")
    orcpt_type, orcpt_address = _opt_text(row["orcpt_type"]), _opt_text(row["orcpt_address"])
    orcpt = None
    if orcpt_type is not None or orcpt_address is not None:
        if orcpt_type is None or orcpt_address is None:
            raise ValueError(f"recipient {row['id']}: half an ORCPT")
        orcpt = (orcpt_type, orcpt_address)
    last_result = None
    if row["last_status"] is not None:
        status = _text(row["last_status"])
        if status not in _RESULT_STATUS:
            raise ValueError(f"recipient {row['id']}: unknown result status {status!r}")
        last_result = AttemptResult(
            status=cast(Any, status),
            code=_int(row["last_code"]),
            enhanced=_text(row["last_enhanced"]),
            text=_text(row["last_text"]),
            remote_host=_opt_text(row["last_remote_host"]),
        )
    return QueuedRecipient(
        id=_int(row["id"]),
        address=_text(row["address"]),
        original=_text(row["original"]),
        orcpt=orcpt,
        notify=notify,
        route=cast(Any, route),
        state=cast(RecipientState, state),
        attempts=_int(row["attempts"]),
        next_attempt_at=_float(row["next_attempt_at"]),
        last_result=last_result,
        delay_notified=bool(_int(row["delay_notified"])),
    )
