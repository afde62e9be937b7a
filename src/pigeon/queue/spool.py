"""The spool: one file per queued message, the content exactly as it will be delivered.

Layout under ``<data_dir>/spool/``:

``tmp/``
    files being written (a message being received). A file here was never acknowledged.
``queue/``
    committed messages, each named by its queue id. A file appears here only after it was
    fsynced, by an atomic rename from ``tmp/``; the directory is then fsynced, so the name
    itself is on stable storage (Postfix's "incoming → active" move, mox's ``SyncDir``).
``corrupt/``
    entries that could not be used (a leftover in ``tmp/``, a file with no index row, the
    record of an index row whose file is missing). Nothing is ever deleted from here by
    Pigeon: an administrator looks and decides.

Theory of operation for one message: :meth:`Spool.open` makes ``tmp/<queue id>`` with
``O_EXCL`` (mode 0600) and returns a :class:`SpoolWriter`; the caller writes the Received
header and the content; :meth:`Spool.commit` (for a whole batch of writers at once) makes
the files and their new names durable, then the index row may be committed and the client
told ``250``. Two ways to make a batch durable (``[queue] spool_sync``):

``fsync``
    fsync each file (in parallel threads), rename each into ``queue/``, fsync ``queue/``
    once. Works on every POSIX system.
``syncfs``
    rename each file into ``queue/``, then ONE ``syncfs(2)`` of the file system that holds
    the spool: the kernel writes every dirty page and the journal once, however many files
    the batch has. Linux only, and only from Linux 5.8 on, the first version whose syncfs
    reports write-back errors (before it, a failed write could go unnoticed). It also
    flushes whatever else is pending on that file system, so it suits a spool on its own
    file system, or one shared with little else, best.

``auto`` (the default) picks ``syncfs`` where it is available and ``fsync`` elsewhere.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any

from pigeon.queue.ids import is_queue_id, new_queue_id
from pigeon.storage.durability import (
    SYNC_METHODS,
    fsync_directory,
    resolve_sync_method,
    sync_filesystem,
    syncfs_available,
)

__all__ = [
    "SYNC_METHODS",
    "SYNC_THREADS",
    "Spool",
    "SpoolWriter",
    "fsync_directory",
    "resolve_sync_method",
    "sync_filesystem",
    "syncfs_available",
]

log = logging.getLogger("pigeon.queue.spool")

# Writes are buffered in blocks of this many bytes before they reach the file.
_WRITE_BUFFER = 64 * 1024
# How many times open() tries a fresh queue id if the name is taken (a clash needs two
# processes making ids in the same millisecond with the same 15 random bits).
_OPEN_TRIES = 8


# Threads that fsync the files of one commit batch at the same time.
SYNC_THREADS = 16
_sync_pool: ThreadPoolExecutor | None = None
_sync_pool_lock = threading.Lock()


def _sync_executor() -> ThreadPoolExecutor:
    global _sync_pool
    with _sync_pool_lock:
        if _sync_pool is None:
            _sync_pool = ThreadPoolExecutor(SYNC_THREADS, thread_name_prefix="spool-fsync")
        return _sync_pool


def _sync_and_close(writer: SpoolWriter) -> BaseException | None:
    try:
        writer._sync_and_close()
    except (OSError, ValueError) as exc:
        return exc
    return None


def _close(writer: SpoolWriter) -> BaseException | None:
    # syncfs makes the content durable later, with the whole batch.
    try:
        writer._sync_and_close(fsync=False)
    except (OSError, ValueError) as exc:
        return exc
    return None


class SpoolWriter:
    """A message being written into ``spool/tmp/``.

    Attributes:
        queue_id: the queue id the message will have.
        size: bytes written so far.
        path: the temporary file.
    """

    def __init__(self, queue_id: str, path: Path, file: IO[bytes]) -> None:
        self.queue_id = queue_id
        self.path = path
        self.size = 0
        self._file: IO[bytes] | None = file

    @property
    def closed(self) -> bool:
        """True after :meth:`abort` or after the spool committed the file."""
        return self._file is None

    def write(self, data: bytes) -> None:
        """Append ``data`` to the message.

        Args:
            data: the next bytes of content (CRLF line endings, as delivered).

        Raises:
            ValueError: the writer was already committed or aborted.
            OSError: the disk refused the write.
        """
        if self._file is None:
            raise ValueError(f"spool file {self.queue_id} is closed")
        self._file.write(data)
        self.size += len(data)

    def abort(self) -> None:
        """Give the message up: close and remove the temporary file. Safe to call twice."""
        file, self._file = self._file, None
        if file is not None:
            try:
                file.close()
            except OSError:
                pass
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass

    def _sync_and_close(self, *, fsync: bool = True) -> None:
        if self._file is None:
            raise ValueError(f"spool file {self.queue_id} is closed")
        file = self._file
        file.flush()
        if fsync:
            os.fsync(file.fileno())
        file.close()
        self._file = None


class Spool:
    """The spool directories of one data directory.

    Args:
        root: the spool directory, ``<data_dir>/spool``.
        sync: how :meth:`commit` makes a batch durable, one of :data:`SYNC_METHODS`.

    Attributes:
        sync_method: the method in use, ``"fsync"`` or ``"syncfs"``.

    Raises:
        ValueError: ``sync`` is unknown or not available here.
    """

    def __init__(self, root: Path, *, sync: str = "fsync") -> None:
        self.root = root
        self.sync_method = resolve_sync_method(sync)
        self.tmp_dir = root / "tmp"
        self.queue_dir = root / "queue"
        self.corrupt_dir = root / "corrupt"

    def ensure_dirs(self) -> None:
        """Create the spool directories (mode 0700) when missing."""
        for path in (self.root, self.tmp_dir, self.queue_dir, self.corrupt_dir):
            path.mkdir(mode=0o700, parents=True, exist_ok=True)

    def path_for(self, queue_id: str) -> Path:
        """Return the committed spool file of ``queue_id`` (``spool/queue/<queue id>``).

        Raises:
            ValueError: ``queue_id`` is not a queue id (guards against path tricks).
        """
        if not is_queue_id(queue_id):
            raise ValueError(f"not a queue id: {queue_id!r}")
        return self.queue_dir / queue_id

    def open(self) -> SpoolWriter:
        """Start a new message in ``spool/tmp/`` under a new queue id.

        Returns:
            The writer; the caller writes the Received header and the content into it.

        Raises:
            OSError: the file cannot be created.
        """
        for _ in range(_OPEN_TRIES):
            queue_id = new_queue_id()
            path = self.tmp_dir / queue_id
            if (self.queue_dir / queue_id).exists():
                continue
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            except FileExistsError:
                continue
            return SpoolWriter(queue_id, path, os.fdopen(fd, "wb", buffering=_WRITE_BUFFER))
        raise FileExistsError("could not find a free queue id")

    def commit(self, writers: Sequence[SpoolWriter]) -> list[BaseException | None]:
        """Make a batch of spool files durable in ``queue/`` (group commit).

        With ``fsync``: the files of the batch are fsynced at the same time, by up to
        :data:`SYNC_THREADS` threads, so the disk flushes them together instead of one
        after the other; each is renamed into ``queue/`` and one directory fsync covers
        the whole batch. With ``syncfs``: each file is closed and renamed into ``queue/``,
        then one syncfs(2) makes the contents and the names durable at once.

        Args:
            writers: the messages to commit; each is closed afterwards.

        Returns:
            One entry per writer: None when its file is now durable in ``queue/``, else the
            error (its temporary file is removed). If the final directory fsync fails, every
            writer of the batch fails.
        """
        errors: list[BaseException | None] = []
        renamed = False
        syncfs = self.sync_method == "syncfs"
        if syncfs:
            synced = [_close(writer) for writer in writers]
        elif len(writers) > 1:
            synced = list(_sync_executor().map(_sync_and_close, writers))
        else:
            synced = [_sync_and_close(writer) for writer in writers]
        for writer, error in zip(writers, synced, strict=True):
            if error is None:
                try:
                    os.rename(writer.path, self.path_for(writer.queue_id))
                except (OSError, ValueError) as exc:
                    error = exc
            if error is not None:
                log.error("spool file %s: %s", writer.queue_id, error)
                writer.abort()
                errors.append(error)
            else:
                renamed = True
                errors.append(None)
        if renamed:
            try:
                if syncfs:
                    sync_filesystem(self.queue_dir)
                else:
                    fsync_directory(self.queue_dir)
            except OSError as exc:
                log.error("%s of %s failed: %s", self.sync_method, self.queue_dir, exc)
                for i, writer in enumerate(writers):
                    if errors[i] is None:
                        self.discard(writer.queue_id)
                        errors[i] = exc
        return errors

    def discard(self, queue_id: str) -> bool:
        """Remove a committed spool file (a delivered, deleted or never acknowledged message).

        Args:
            queue_id: the message.

        Returns:
            True when a file was removed.
        """
        try:
            self.path_for(queue_id).unlink()
        except FileNotFoundError:
            return False
        return True

    def queue_names(self) -> list[str]:
        """Return the names of all entries in ``queue/``, sorted."""
        return sorted(entry.name for entry in os.scandir(self.queue_dir))

    def tmp_paths(self) -> list[Path]:
        """Return all entries in ``tmp/``, sorted."""
        return sorted(Path(entry.path) for entry in os.scandir(self.tmp_dir))

    def _free_name(self, name: str) -> Path:
        target = self.corrupt_dir / name
        n = 1
        while target.exists():
            target = self.corrupt_dir / f"{name}.{n}"
            n += 1
        return target

    def quarantine(self, path: Path, reason: str) -> Path:
        """Move an unusable spool entry into ``corrupt/`` (never delete it).

        Args:
            path: a file in ``tmp/`` or ``queue/``.
            reason: why, for the log.

        Returns:
            The new path in ``corrupt/`` (a ``.N`` suffix is added if the name is taken).

        Raises:
            OSError: the rename failed.
        """
        target = self._free_name(path.name)
        os.rename(path, target)
        fsync_directory(self.corrupt_dir)
        fsync_directory(path.parent)
        log.warning("moved %s to %s: %s", path, target, reason)
        return target

    def write_record(self, queue_id: str, record: dict[str, Any]) -> Path:
        """Save an index record that is being taken out of the queue into ``corrupt/``.

        Args:
            queue_id: the message's queue id (the file is ``corrupt/<queue id>.json``).
            record: JSON-serialisable data (the raw rows and the reason).

        Returns:
            The path written.
        """
        target = self._free_name(f"{queue_id}.json")
        data = json.dumps(record, indent=2, sort_keys=True, default=str).encode("utf-8")
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        fsync_directory(self.corrupt_dir)
        return target
