"""The spool: one file per queued message, the content exactly as it will be delivered.

Layout under ``<data_dir>/spool/``:

``tmp/``
    large messages being received (see below). A file here was never acknowledged.
``queue/``
    committed messages, each named by its queue id (never overwritten: a name that exists
    fails the message). A message is acknowledged only once its file and its name here are
    on stable storage and its index row is committed.
``corrupt/``
    entries that could not be used (a leftover in ``tmp/``, a file with no index row, the
    record of an index row whose file is missing). Nothing is ever deleted from here by
    Pigeon: an administrator looks and decides.

Theory of operation for one message: :meth:`Spool.open` gives a new queue id and a
:class:`SpoolWriter`; the caller writes the Received header and the content. Up to
:data:`MEMORY_LIMIT` bytes the content stays in memory, and the queue's placing thread
writes it straight to ``queue/<queue id>`` (``O_EXCL``, mode 0600); beyond that it spills into
``tmp/<queue id>`` as it arrives and that thread renames the file into ``queue/``. A crash
before the index commit can leave a file in ``queue/`` without an index row: it was never
acknowledged, and recovery moves it to ``corrupt/``. :meth:`Spool.commit` (for a whole
batch of writers at once) makes the files and their names durable, then the index rows
may be committed and the clients told ``250``. Two ways to make a batch durable
(``[server] sync``):

``fsync``
    fsync each file (in parallel threads), then ``queue/`` once (Postfix's "incoming →
    active" move, mox's ``SyncDir``). Works on every POSIX system.
``syncfs``
    write each file into ``queue/``, then ONE ``syncfs(2)`` of the file system that holds
    the spool: the kernel writes every dirty page and the journal once, however many files
    the batch has. Linux 5.17 or later only (see :mod:`pigeon.storage.durability` for why,
    and for the descriptor kept open so that no write-back error goes unheard). It also
    flushes whatever else is pending on that file system, so it suits a spool on its own
    file system, or one shared with little else, best.

``auto`` (the default) picks ``syncfs`` where it is available and ``fsync`` elsewhere.
"""

from __future__ import annotations

import errno
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
    SyncHandle,
    fsync_directory,
    resolve_sync_method,
    syncfs_available,
)

__all__ = [
    "SYNC_METHODS",
    "SYNC_THREADS",
    "Spool",
    "SpoolWriter",
    "fsync_directory",
    "resolve_sync_method",
    "syncfs_available",
]

log = logging.getLogger("pigeon.queue.spool")

# Writes are buffered in blocks of this many bytes before they reach the file.
_WRITE_BUFFER = 64 * 1024
# A message is kept in memory up to this many bytes (no tmp/ file; see SpoolWriter). The
# same as the write buffer a file would have had, so memory use per session is unchanged.
MEMORY_LIMIT = 64 * 1024


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


def _finish(writer: SpoolWriter, final: Path, fsync: bool) -> BaseException | None:
    try:
        writer._finish(final, fsync=fsync)
    except (OSError, ValueError) as exc:
        return exc
    return None


class SpoolWriter:
    """A message being written to the spool.

    The content is kept in memory while it is at most :data:`MEMORY_LIMIT` bytes; the
    commit then writes it straight to ``queue/<queue id>`` in the queue's placing thread, so a
    typical message costs the session no file system call at all. A larger message spills
    to ``tmp/<queue id>`` as it arrives, and the commit moves that file into ``queue/``.

    Attributes:
        queue_id: the queue id the message will have.
        size: bytes written so far.
        path: the temporary file in ``tmp/`` (it exists only once the content spilled).
    """

    def __init__(self, queue_id: str, path: Path, *, memory_limit: int | None = None) -> None:
        self.queue_id = queue_id
        self.path = path
        self.size = 0
        self._memory_limit = MEMORY_LIMIT if memory_limit is None else memory_limit
        self._buffer: bytearray | None = bytearray()
        self._file: IO[bytes] | None = None
        self._closed = False

    @property
    def closed(self) -> bool:
        """True after :meth:`abort` or after the spool committed the message."""
        return self._closed

    @property
    def spilled(self) -> bool:
        """True when the content went to a file in ``tmp/`` (it outgrew the memory limit)."""
        return self._buffer is None

    def write(self, data: bytes) -> None:
        """Append ``data`` to the message.

        Args:
            data: the next bytes of content (CRLF line endings, as delivered).

        Raises:
            ValueError: the writer was already committed or aborted.
            OSError: the disk refused the write (or the ``tmp/`` file could not be made).
        """
        if self._closed:
            raise ValueError(f"spool file {self.queue_id} is closed")
        buffer = self._buffer
        if buffer is not None:
            if len(buffer) + len(data) <= self._memory_limit:
                buffer += data
                self.size += len(data)
                return
            self._spill()
        assert self._file is not None
        self._file.write(data)
        self.size += len(data)

    def _spill(self) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        file = os.fdopen(fd, "wb", buffering=_WRITE_BUFFER)
        try:
            assert self._buffer is not None
            file.write(self._buffer)
        except BaseException:
            file.close()
            self.path.unlink(missing_ok=True)
            raise
        self._file = file
        self._buffer = None

    def abort(self) -> None:
        """Give the message up: drop the content, remove the ``tmp/`` file. Safe to call twice."""
        self._closed = True
        self._buffer = None
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

    def _finish(self, final: Path, *, fsync: bool) -> None:
        """Put the content at ``final`` (in the placing thread); fsync it when asked.

        Raises:
            FileExistsError: ``final`` exists already (never overwritten).
            OSError: the write failed (nothing is left at ``final``).
            ValueError: the writer is closed.
        """
        if self._closed:
            raise ValueError(f"spool file {self.queue_id} is closed")
        buffer = self._buffer
        if buffer is not None:
            fd = os.open(final, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                view = memoryview(buffer)
                while view:
                    view = view[os.write(fd, view):]
                if fsync:
                    os.fsync(fd)
            except BaseException:
                os.close(fd)
                final.unlink(missing_ok=True)
                raise
            os.close(fd)
            self._buffer = None
        else:
            file = self._file
            assert file is not None
            file.flush()
            if fsync:
                os.fsync(file.fileno())
            file.close()
            self._file = None
            try:
                if final.exists():
                    raise FileExistsError(errno.EEXIST, "spool file exists", str(final))
                os.rename(self.path, final)
            except BaseException:
                self.path.unlink(missing_ok=True)  # abort() no longer owns the tmp/ file
                raise
        self._closed = True


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
        self._sync_handle: SyncHandle | None = None
        self.tmp_dir = root / "tmp"
        self.queue_dir = root / "queue"
        self.corrupt_dir = root / "corrupt"

    def ensure_dirs(self) -> None:
        """Create the spool directories (mode 0700) when missing."""
        for path in (self.root, self.tmp_dir, self.queue_dir, self.corrupt_dir):
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
        if self.sync_method == "syncfs" and self._sync_handle is None:
            # Opened before the first message is written, so its syncfs hears of every
            # write-back error from then on (see pigeon.storage.durability).
            self._sync_handle = SyncHandle(self.queue_dir)

    def close(self) -> None:
        """Release the descriptor kept for syncfs. Safe to call twice."""
        handle, self._sync_handle = self._sync_handle, None
        if handle is not None:
            handle.close()

    def path_for(self, queue_id: str) -> Path:
        """Return the committed spool file of ``queue_id`` (``spool/queue/<queue id>``).

        Raises:
            ValueError: ``queue_id`` is not a queue id (guards against path tricks).
        """
        if not is_queue_id(queue_id):
            raise ValueError(f"not a queue id: {queue_id!r}")
        return self.queue_dir / queue_id

    def open(self) -> SpoolWriter:
        """Start a new message under a new queue id (no file yet; see :class:`SpoolWriter`).

        Returns:
            The writer; the caller writes the Received header and the content into it.
        """
        queue_id = new_queue_id()
        return SpoolWriter(queue_id, self.tmp_dir / queue_id)

    def commit(self, writers: Sequence[SpoolWriter]) -> list[BaseException | None]:
        """Make a batch of spool files durable in ``queue/`` (group commit).

        :meth:`place`, then :meth:`sync`. With ``fsync``: the files of the batch are
        fsynced at the same time, by up to :data:`SYNC_THREADS` threads, so the disk
        flushes them together instead of one after the other, and one directory fsync
        covers the whole batch. With ``syncfs``: one syncfs(2) makes the contents and the
        names durable at once.

        Args:
            writers: the messages to commit; each is closed afterwards.

        Returns:
            One entry per writer: None when its file is now durable in ``queue/``, else the
            error (nothing of it is left in ``tmp/`` or ``queue/``). If the final sync
            fails, every writer of the batch fails.
        """
        errors = self.place(writers)
        if any(error is None for error in errors):
            try:
                self.sync()
            except OSError as exc:
                for i, writer in enumerate(writers):
                    if errors[i] is None:
                        self.discard(writer.queue_id)
                        errors[i] = exc
        return errors

    def place(self, writers: Sequence[SpoolWriter]) -> list[BaseException | None]:
        """Put each writer's content at ``queue/<queue id>``; durable only after :meth:`sync`.

        The content is written from memory, or the ``tmp/`` file is renamed. With
        ``fsync`` each file is also fsynced here (in parallel threads).

        Args:
            writers: the messages; each is closed afterwards.

        Returns:
            Per writer: None when its file is in ``queue/``, else the error (nothing of it
            is left in ``tmp/`` or ``queue/``).
        """
        errors: list[BaseException | None] = []
        fsync = self.sync_method != "syncfs"
        finals = [self.queue_dir / writer.queue_id for writer in writers]
        if fsync and len(writers) > 1:
            done = list(_sync_executor().map(_finish, writers, finals, [True] * len(writers)))
        else:
            done = [_finish(w, f, fsync) for w, f in zip(writers, finals, strict=True)]
        for writer, error in zip(writers, done, strict=True):
            if error is not None:
                log.error("spool file %s: %s", writer.queue_id, error)
                writer.abort()
            errors.append(error)
        return errors

    def sync(self) -> None:
        """Make the files placed in ``queue/`` and their names durable.

        ``fsync``: fsync ``queue/`` (the files were fsynced by :meth:`place`). ``syncfs``:
        one syncfs(2) of the spool's file system, which also makes durable everything else
        written on it so far (the queue index shares it; see ``QueueService``).

        Raises:
            OSError: the sync failed; nothing placed since the last sync is known durable.
        """
        try:
            if self.sync_method == "syncfs":
                if self._sync_handle is None:
                    self._sync_handle = SyncHandle(self.queue_dir)
                self._sync_handle.sync()
            else:
                fsync_directory(self.queue_dir)
        except OSError as exc:
            log.error("%s of %s failed: %s", self.sync_method, self.queue_dir, exc)
            raise

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
