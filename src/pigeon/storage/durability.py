"""Making files durable: fsync, directory fsync, syncfs(2), and group syncs across threads.

Two ways to put new files on stable storage:

``fsync``
    fsync each file, and the directory that holds its new name. Works on every POSIX
    system; each call is one journal commit on ext4/XFS, and concurrent fsyncs of many
    files mostly queue behind each other.
``syncfs``
    ONE ``syncfs(2)`` of the file system: the kernel writes every dirty page and commits
    the journal once, however many files were written. Linux only, and only from Linux 5.17
    on: syncfs reports write-back errors from 5.8, and errors of the file system's own sync
    (a failed journal commit) from 5.17; before that a failed write could go unnoticed. It
    also flushes whatever else is pending on that file system.

    The kernel reports each write-back error once per open file: a syncfs through a file
    descriptor opened after the error happened returns success. So every user keeps ONE
    descriptor, opened before its writes (:class:`SyncHandle`), and each user sees every
    error, even one that another user's syncfs met first.

:class:`SyncBarrier` lets many threads that each need "everything I wrote so far is
durable" share one syncfs (group commit between threads).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
import re
import threading
from pathlib import Path
from typing import Any

__all__ = [
    "SYNC_METHODS",
    "SyncBarrier",
    "SyncHandle",
    "fsync_directory",
    "resolve_sync_method",
    "sync_filesystem",
    "syncfs_available",
]

SYNC_METHODS = ("auto", "fsync", "syncfs")
# The first Linux release whose syncfs(2) returns both write-back errors (5.8) and errors
# of the file system's own sync, such as a failed journal commit (5.17).
_SYNCFS_MIN_KERNEL = (5, 17)
_syncfs: Any = None
_syncfs_checked = False


def _kernel_version(release: str) -> tuple[int, int]:
    match = re.match(r"(\d+)\.(\d+)", release)
    if match is None:
        return (0, 0)
    return int(match.group(1)), int(match.group(2))


def _libc_syncfs() -> Any:
    global _syncfs, _syncfs_checked
    if not _syncfs_checked:
        _syncfs_checked = True
        if (platform.system() == "Linux"
                and _kernel_version(platform.release()) >= _SYNCFS_MIN_KERNEL):
            try:
                libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
                function = libc.syncfs
            except (OSError, AttributeError):
                function = None
            if function is not None:
                function.argtypes = [ctypes.c_int]
                function.restype = ctypes.c_int
            _syncfs = function
    return _syncfs


def syncfs_available() -> bool:
    """True when ``syncfs(2)`` can be used: Linux 5.17 or later, with a libc that has it."""
    return _libc_syncfs() is not None


def resolve_sync_method(method: str) -> str:
    """Turn ``[server] sync`` into the method used: ``"fsync"`` or ``"syncfs"``.

    Args:
        method: one of :data:`SYNC_METHODS`.

    Returns:
        ``"syncfs"`` for ``"auto"`` where available, else ``"fsync"``; the others unchanged.

    Raises:
        ValueError: an unknown method, or ``"syncfs"`` where it is not available.
    """
    if method not in SYNC_METHODS:
        raise ValueError(f"unknown spool sync method {method!r}")
    if method == "auto":
        return "syncfs" if syncfs_available() else "fsync"
    if method == "syncfs" and not syncfs_available():
        raise ValueError("syncfs needs Linux 5.17 or later")
    return method


def sync_filesystem(path: Path, fd: int) -> None:
    """Write every dirty page and the journal of the file system holding ``path`` (syncfs(2)).

    Blocking; returns when the data is on stable storage.

    Args:
        path: the file or directory ``fd`` is open on (for messages).
        fd: a descriptor on that file system, opened before the writes to be made durable
            (see the module docstring: a newer descriptor misses earlier errors).

    Raises:
        OSError: syncfs is not available, or write-back failed.
    """
    function = _libc_syncfs()
    if function is None:
        raise OSError(38, "syncfs is not available here")  # ENOSYS
    if function(fd) != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"syncfs: {os.strerror(error)}", str(path))


class SyncHandle:
    """A descriptor kept open on a file system, to syncfs it and hear of every error.

    Args:
        path: an existing file or directory; the nearest existing parent is used when it
            does not exist yet (it will be created on the same file system).

    Raises:
        OSError: no such path can be opened.
    """

    def __init__(self, path: Path) -> None:
        while not path.exists() and path.parent != path:
            path = path.parent
        self.path = path
        self._fd: int | None = os.open(path, os.O_RDONLY | os.O_CLOEXEC)

    def sync(self) -> None:
        """syncfs(2) through the kept descriptor.

        Raises:
            OSError: write-back failed since the last call (or the handle is closed).
        """
        if self._fd is None:
            raise OSError(9, "sync handle is closed", str(self.path))  # EBADF
        sync_filesystem(self.path, self._fd)

    def close(self) -> None:
        """Close the descriptor. Safe to call twice."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


def fsync_directory(path: Path) -> None:
    """Flush a directory's entries (new names, renames) to stable storage.

    Args:
        path: the directory.

    Raises:
        OSError: the directory cannot be opened or synced.
    """
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class SyncBarrier:
    """Group syncfs(2) between threads: each caller waits until what it wrote is durable.

    A thread calls :meth:`sync` after its writes. If no syncfs is running, it runs one for
    itself and for every thread that arrived meanwhile; a thread arriving while a syncfs
    runs waits for the next one (its writes may have missed the running one), which one of
    the waiting threads runs for all of them.

    A syncfs that fails fails every caller whose ticket was taken before it returned: the
    pages of a caller that arrived while it ran may have been among those that failed, and
    the kernel reports an error only once per descriptor.

    Args:
        path: a file or directory on the file system to sync (see :class:`SyncHandle`);
            the descriptor is opened here, before the writes it must hear about.

    Attributes:
        syncs: syncfs calls made.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.syncs = 0
        self._handle = SyncHandle(path)
        self._cond = threading.Condition()
        self._requested = 0  # tickets handed out
        self._done = 0  # every ticket <= _done has had its sync
        self._running = False
        self._errors: list[tuple[int, int, OSError]] = []  # (first, last ticket, error)

    def sync(self) -> None:
        """Return once everything this thread wrote before the call is on stable storage.

        Raises:
            OSError: the syncfs that covered this call failed.
        """
        with self._cond:
            self._requested += 1
            ticket = self._requested
            while self._done < ticket:
                if self._running:
                    self._cond.wait()
                    continue
                self._running = True
                first, last = self._done + 1, self._requested
                self._cond.release()
                error: OSError | None = None
                try:
                    self._handle.sync()
                except OSError as exc:
                    error = exc
                finally:
                    self._cond.acquire()
                    self.syncs += 1
                    self._running = False
                    self._done = last
                    if error is not None:
                        # Also every ticket taken while it ran (see the class docstring).
                        self._errors.append((first, self._requested, error))
                        del self._errors[:-64]
                    self._cond.notify_all()
            for first, last, failure in self._errors:
                if first <= ticket <= last:
                    raise failure

    def close(self) -> None:
        """Close the kept descriptor."""
        self._handle.close()
