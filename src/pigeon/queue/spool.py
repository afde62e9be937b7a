"""The spool: one file per queued message, the content exactly as it will be delivered.

Layout under ``<data_dir>/spool/``:

``tmp/``
    large messages being received (see below). A file here was never acknowledged.
``queue/``
    committed messages, each named by its queue id (never overwritten: a name that exists
    fails the message). A message is acknowledged only once its file and its name here are
    on stable storage and its index row is committed.
``free/``
    spool files of messages that left the queue, kept (at most :data:`FREE_LIMIT`, each
    at most :data:`MEMORY_LIMIT` bytes) so that a new message can reuse one instead of
    creating a file (see "Reuse" below); any other file here is being removed in the
    background. Nothing here is part of the queue.
``corrupt/``
    entries that could not be used (a leftover in ``tmp/``, a file with no index row, the
    record of an index row whose file is missing). Nothing is ever deleted from here by
    Pigeon: an administrator looks and decides.

Theory of operation for one message: :meth:`Spool.open` gives a new queue id and a
:class:`SpoolWriter`; the caller writes the Received header and the content. Up to
:data:`MEMORY_LIMIT` bytes the content stays in memory, and the commit thread writes it
straight to ``queue/<queue id>`` (``O_EXCL``, mode 0600); beyond that it spills into
``tmp/<queue id>`` as it arrives and the commit renames that file into ``queue/``. A crash
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

Reuse (the queue's own spool, ``Spool(reuse=True)``): creating a file allocates an inode
and removing one frees it and its blocks; both are costly on some file systems (ext4
without a journal searches past every recently freed inode of the group on each create,
and a file system mounted with ``discard`` trims freed blocks at once). So a delivered
message's file is renamed into ``free/`` instead of being removed, and the next small
message is written over it (from offset 0, then cut to its length) and renamed into
``queue/<queue id>`` with ``RENAME_NOREPLACE``, which never replaces an existing name.
Two rules keep a power loss from mixing two messages up:

- a file becomes reusable only after a sync that began after it left ``queue/``
  (:meth:`Spool.sync`; the files found in ``free/`` at start wait for the first one), so
  the old message's name can never come back naming an inode that holds a new message;
- with ``syncfs`` the new content, the new name and the index row become durable together,
  in no set order, so the old content could survive under the new name: the index keeps a
  CRC-32 of a reused file's content (``QueuedMessage.checksum``) and recovery sets the
  entry aside when the file does not match.

An error while reusing a file drops that file and the message gets a new file instead.
"""

from __future__ import annotations

import ctypes
import errno
import json
import logging
import os
import stat
import threading
import zlib
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
    "FREE_LIMIT",
    "MEMORY_LIMIT",
    "SYNC_METHODS",
    "SYNC_THREADS",
    "Spool",
    "SpoolWriter",
    "fsync_directory",
    "rename_noreplace",
    "resolve_sync_method",
    "syncfs_available",
]

log = logging.getLogger("pigeon.queue.spool")

# Writes are buffered in blocks of this many bytes before they reach the file.
_WRITE_BUFFER = 64 * 1024
# A message is kept in memory up to this many bytes (no tmp/ file; see SpoolWriter). The
# same as the write buffer a file would have had, so memory use per session is unchanged.
MEMORY_LIMIT = 64 * 1024
# The most spool files kept in free/ for reuse (each at most MEMORY_LIMIT bytes).
FREE_LIMIT = 512

_AT_FDCWD = -100
_RENAME_NOREPLACE = 1


def _load_renameat2() -> Any:
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                         ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


_renameat2 = _load_renameat2()


def rename_noreplace(source: Path, target: Path) -> None:
    """Rename ``source`` to ``target`` atomically, failing if ``target`` exists.

    Linux ``renameat2(2)`` with ``RENAME_NOREPLACE`` (glibc 2.28 or later).

    Raises:
        FileExistsError: ``target`` exists (nothing was changed).
        OSError: the rename failed; ``EINVAL`` or ``ENOSYS`` when the system or the file
            system cannot rename without replacing.
    """
    if _renameat2 is None:
        raise OSError(errno.ENOSYS, "renameat2 is not available", str(source))
    if _renameat2(_AT_FDCWD, os.fsencode(source), _AT_FDCWD, os.fsencode(target),
                  _RENAME_NOREPLACE) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), str(source), None, str(target))


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


def _write_from_start(fd: int, data: bytearray) -> None:
    """Write all of ``data`` into the file ``fd`` from offset 0."""
    view = memoryview(data)
    offset = 0
    while offset < len(view):
        offset += os.pwrite(fd, view[offset:], offset)


def _finish(writer: SpoolWriter, final: Path, fsync: bool, spool: Spool | None = None
            ) -> BaseException | None:
    try:
        if spool is not None and writer._buffer is not None and spool._reuse_into(writer, final,
                                                                              fsync):
            return None
        writer._finish(final, fsync=fsync)
    except (OSError, ValueError) as exc:
        return exc
    return None


class SpoolWriter:
    """A message being written to the spool.

    The content is kept in memory while it is at most :data:`MEMORY_LIMIT` bytes; the
    commit then writes it straight to ``queue/<queue id>`` in the commit thread, so a
    typical message costs the session no file system call at all. A larger message spills
    to ``tmp/<queue id>`` as it arrives, and the commit moves that file into ``queue/``.

    Attributes:
        queue_id: the queue id the message will have.
        size: bytes written so far.
        path: the temporary file in ``tmp/`` (it exists only once the content spilled).
        checksum: CRC-32 of the content once it was written over a reused file, else None.
    """

    def __init__(self, queue_id: str, path: Path, *, memory_limit: int | None = None) -> None:
        self.queue_id = queue_id
        self.path = path
        self.size = 0
        self._memory_limit = MEMORY_LIMIT if memory_limit is None else memory_limit
        self._buffer: bytearray | None = bytearray()
        self._file: IO[bytes] | None = None
        self._closed = False
        self.checksum: int | None = None

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
        """Put the content at ``final`` (in the commit thread); fsync it when asked.

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
                _write_from_start(fd, buffer)
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

    def __init__(self, root: Path, *, sync: str = "fsync", reuse: bool = False) -> None:
        self.root = root
        self.sync_method = resolve_sync_method(sync)
        self._sync_handle: SyncHandle | None = None
        self.tmp_dir = root / "tmp"
        self.queue_dir = root / "queue"
        self.free_dir = root / "free"
        self.corrupt_dir = root / "corrupt"
        self._reuse = reuse and _renameat2 is not None
        self._free: list[tuple[str, int]] = []  # (name in free/, size in bytes)
        # Left queue/ (or found at start), not reusable before the next sync completes.
        self._discarded: list[tuple[str, int]] = []
        self._free_lock = threading.Lock()
        self._trimmer: ThreadPoolExecutor | None = None

    @property
    def free_files(self) -> int:
        """Files in ``free/`` that may be reused now (0 when this spool does not reuse)."""
        return len(self._free)

    @property
    def discarded_files(self) -> int:
        """Files in ``free/`` waiting for the next :meth:`sync` before they may be reused."""
        return len(self._discarded)

    def ensure_dirs(self) -> None:
        """Create the spool directories (mode 0700) when missing.

        A spool that reuses files also lists ``free/`` and removes from it what must not be
        reused; only the process that holds the queue lock may call it then.
        """
        for path in (self.root, self.tmp_dir, self.queue_dir, self.free_dir,
                     self.corrupt_dir):
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
        if self._reuse:
            self._load_free()
        if self.sync_method == "syncfs" and self._sync_handle is None:
            # Opened before the first message is written, so its syncfs hears of every
            # write-back error from then on (see pigeon.storage.durability).
            self._sync_handle = SyncHandle(self.queue_dir)

    def _load_free(self) -> None:
        # A name in free/ is reused only if it is a plain file with no other name: an inode
        # also named in queue/ (a rename a crash left half-done) is dropped from free/.
        queued = {entry.inode() for entry in os.scandir(self.queue_dir)}
        free: list[tuple[str, int]] = []
        for entry in os.scandir(self.free_dir):
            try:
                info = entry.stat(follow_symlinks=False)
                usable = (stat.S_ISREG(info.st_mode) and info.st_nlink == 1
                          and info.st_size <= MEMORY_LIMIT and entry.inode() not in queued
                          and len(free) < FREE_LIMIT)
                if usable:
                    free.append((entry.name, info.st_size))
                else:
                    os.unlink(entry.path)
            except OSError as exc:
                log.warning("spool free/%s: %s", entry.name, exc)
        with self._free_lock:
            self._free = []
            self._discarded = free  # reusable after the first sync (see the module docstring)

    def close(self) -> None:
        """Finish removing what left ``free/``; release the syncfs descriptor. Idempotent."""
        with self._free_lock:
            trimmer, self._trimmer = self._trimmer, None
        if trimmer is not None:
            trimmer.shutdown(wait=True)
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
        spool = self if self._reuse else None
        if fsync and len(writers) > 1:
            done = list(_sync_executor().map(_finish, writers, finals, [True] * len(writers),
                                             [spool] * len(writers)))
        else:
            done = [_finish(w, f, fsync, spool) for w, f in zip(writers, finals, strict=True)]
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
        with self._free_lock:
            discarded, self._discarded = self._discarded, []
        try:
            if self.sync_method == "syncfs":
                if self._sync_handle is None:
                    self._sync_handle = SyncHandle(self.queue_dir)
                self._sync_handle.sync()
            else:
                fsync_directory(self.queue_dir)
        except OSError as exc:
            log.error("%s of %s failed: %s", self.sync_method, self.queue_dir, exc)
            with self._free_lock:
                self._discarded[:0] = discarded
            raise
        if discarded:
            # Their names are durably gone from queue/: the inodes may take new content.
            with self._free_lock:
                self._free.extend(discarded)

    def _reuse_into(self, writer: SpoolWriter, final: Path, fsync: bool) -> bool:
        """Write ``writer``'s in-memory content over a file from ``free/``, name it ``final``.

        A file that fails on the way (it cannot be opened, written or renamed) is dropped
        from ``free/`` and False is returned, so the caller creates a new file instead.

        Returns:
            False when no file was reused (none left, reuse not possible here, or an error
            with the reused file): the caller then creates a new file.

        Raises:
            FileExistsError: ``final`` exists (the reused file stays available).
        """
        with self._free_lock:
            if not self._free:
                return False
            name, old_size = self._free.pop()
        source = self.free_dir / name
        buffer = writer._buffer
        assert buffer is not None
        try:
            fd = os.open(source, os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                log.warning("spool free/%s: %s; not reused", name, exc)
                self._drop_free(source)
            return False
        try:
            _write_from_start(fd, buffer)
            if old_size > len(buffer):
                os.ftruncate(fd, len(buffer))
            if fsync:
                os.fsync(fd)
        except OSError as exc:
            log.warning("spool free/%s: %s; not reused", name, exc)
            self._drop_free(source)
            return False
        finally:
            os.close(fd)
        try:
            rename_noreplace(source, final)
        except FileExistsError:
            with self._free_lock:
                self._free.append((name, len(buffer)))
            raise
        except OSError as exc:
            if exc.errno in (errno.EINVAL, errno.ENOSYS):
                log.info("spool: this file system cannot rename without replacing; "
                         "spool files are no longer reused")
                self._reuse = False
            else:
                log.warning("spool free/%s: %s; not reused", name, exc)
            self._drop_free(source)
            return False
        writer.checksum = zlib.crc32(buffer)
        writer._buffer = None
        writer._closed = True
        return True

    @staticmethod
    def _drop_free(path: Path) -> None:
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            log.warning("cannot remove %s: %s", path, exc)

    def discard(self, queue_id: str) -> bool:
        """Take a committed spool file out of ``queue/`` (a delivered, deleted or never
        acknowledged message).

        Without reuse the file is removed. With reuse it is renamed into ``free/``, and kept
        there for reuse when it is small enough and there is room; otherwise a background
        thread removes it, so that freeing its inode and blocks (slow on some file systems)
        never holds up the caller (the commit thread).

        Args:
            queue_id: the message.

        Returns:
            True when a file was taken out of ``queue/``.
        """
        path = self.path_for(queue_id)
        if self._reuse:
            try:
                info = os.lstat(path)
            except FileNotFoundError:
                return False
            if stat.S_ISREG(info.st_mode) and info.st_nlink == 1:
                target = self.free_dir / queue_id
                try:
                    rename_noreplace(path, target)
                except FileNotFoundError:
                    return False
                except OSError:
                    pass  # removed below
                else:
                    with self._free_lock:
                        keep = (info.st_size <= MEMORY_LIMIT
                                and len(self._free) + len(self._discarded) < FREE_LIMIT)
                        if keep:
                            self._discarded.append((queue_id, info.st_size))
                    if not keep:
                        self._trim(target)
                    return True
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        return True

    def _trim(self, path: Path) -> None:
        """Remove a file of ``free/`` in the background thread."""
        with self._free_lock:
            if self._trimmer is None:
                self._trimmer = ThreadPoolExecutor(1, thread_name_prefix="spool-trim")
            trimmer = self._trimmer
        try:
            trimmer.submit(self._drop_free, path)
        except RuntimeError:  # shut down: the next start removes it (see _load_free)
            pass

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
