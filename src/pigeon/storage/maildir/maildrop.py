"""The POP3 view of one Maildir: a fixed list of messages, locked for one session.

Theory of operation (RFC 1939 §5-§8 over the Maildir layout of
:mod:`pigeon.storage.maildir.store`):

* :meth:`Maildrop.open` takes an exclusive ``flock`` on ``<maildir>/.pigeon-pop3.lock``
  without waiting; a second session on the same mailbox (from this process or another)
  gets :class:`MaildropLocked` and answers ``-ERR [IN-USE]`` (RFC 2449 §8.1.1). The lock
  goes with the file descriptor, so a session that dies, or a process that is killed,
  releases it.
* The message list is read once, at open, from ``new/`` and ``cur/`` (names starting with
  ``.`` are ignored) and ordered by delivery time; messages that arrive later are shown
  to the next session (RFC 1939 §8 lets a server do so).
* A message's unique-id (UIDL, RFC 1939 §7) is its Maildir base name (the name without the
  ``:2,flags`` info), which never changes, so it is the same in every session and after
  restarts. A base name that is not 1..70 characters of ``0x21``..``0x7E`` (RFC 1939 §7)
  is replaced by a stable SHA-256 digest of itself.
* A message's size (LIST, STAT) is exactly what RETR sends before byte-stuffing: the file
  with every line ending made CRLF and a final CRLF when the file does not end with one
  (:class:`CrlfNormalizer`). Files Pigeon writes are already in that form; files other
  tools put there (bare LF) are counted and sent converted. Sizes come from the Dovecot
  ``,W=<n>`` name field when present, else from one scan per file, cached per process
  by name, size and mtime.
* At open, files in ``tmp/`` untouched for :data:`TMP_MAX_AGE` seconds (36 hours) are
  removed: what a delivery that crashed left behind. The Maildir specification gives this
  duty to readers; a file is removed only when its access, modification and change times
  are all that old, so a delivery in progress is never touched (:func:`clean_tmp`).
* :meth:`Maildrop.mark_seen` moves a retrieved message from ``new/`` to ``cur/`` with the
  ``S`` (seen) flag (``:2,S``); :meth:`Maildrop.expunge` removes the messages marked
  deleted (RFC 1939 §6, UPDATE state only) and fsyncs the directories.

Everything here blocks on the disk; the session runs it in a worker thread.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import re
import stat
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO

from pigeon.storage.durability import fsync_directory

__all__ = [
    "LOCK_NAME",
    "TMP_MAX_AGE",
    "CrlfNormalizer",
    "Maildrop",
    "MaildropError",
    "MaildropLocked",
    "MaildropMessage",
    "clean_tmp",
    "unique_id",
    "wire_size",
]

log = logging.getLogger("pigeon.pop3.maildrop")

#: The lock file, in the Maildir itself (hidden: Maildir readers skip dot files).
LOCK_NAME = ".pigeon-pop3.lock"

#: Seconds after which an untouched file in ``tmp/`` is a leftover (the Maildir spec: 36 h).
TMP_MAX_AGE = 36 * 3600

# Read block (bytes) for scans and RETR: few syscalls, bounded memory for any message size.
READ_BLOCK = 64 * 1024

# Cached message sizes kept per process (entries of ~150 bytes each: at most ~10 MB).
_SIZE_CACHE_ENTRIES = 65536

_UID_MAX = 70  # RFC 1939 §7: a unique-id is 1 to 70 characters
_UID_CHARS = re.compile(r"^[\x21-\x7e]{1,70}$")
_W_FIELD = re.compile(r",W=([0-9]{1,20})(?:,|$)")
_ORDER = re.compile(r"^([0-9]{1,20})\.(?:M([0-9]{1,9}))?")


class MaildropError(Exception):
    """The maildrop cannot be opened (a disk error); the message says why."""


class MaildropLocked(MaildropError):
    """Another session holds the mailbox (RFC 1939 §8: one session per maildrop)."""


class CrlfNormalizer:
    """Turn any line endings into CRLF, block by block (what RETR sends and LIST counts).

    Every LF not preceded by CR becomes CRLF; CR alone is left as it is (it is content).
    :meth:`finish` returns CRLF when the content is not empty and does not end with CRLF,
    so the last line is complete (RFC 1939 §3 needs CRLF before the terminator).
    """

    def __init__(self) -> None:
        self._last_cr = False  # the last octet seen was CR
        self._tail = b""  # the last two octets sent

    def feed(self, block: bytes) -> bytes:
        """Normalise the next block.

        Args:
            block: file octets, in order; a block may end anywhere.

        Returns:
            The block with CRLF line endings.
        """
        if not block:
            return b""
        head = b""
        if self._last_cr and block[0] == 0x0A:  # the CR of this LF ended the last block
            head, block = b"\n", block[1:]
        if b"\n" in block:
            out = head + block.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        else:
            out = head + block
        self._last_cr = out[-1:] == b"\r" if out else self._last_cr
        if out:
            self._tail = (self._tail + out)[-2:]
        return out

    def finish(self) -> bytes:
        """CRLF when the content so far is non-empty and does not end with CRLF, else b""."""
        if self._tail and self._tail != b"\r\n":
            self._tail = b"\r\n"
            self._last_cr = False
            return b"\r\n"
        return b""


def wire_size(stream: BinaryIO) -> int:
    """The size in octets of a message as RETR sends it (see :class:`CrlfNormalizer`).

    Args:
        stream: the message file, at its start; read to the end in blocks.

    Returns:
        The normalised size, before byte-stuffing.
    """
    normalizer = CrlfNormalizer()
    total = 0
    while block := stream.read(READ_BLOCK):
        total += len(normalizer.feed(block))
    return total + len(normalizer.finish())


def unique_id(base_name: str) -> str:
    """The POP3 unique-id of a Maildir base name (RFC 1939 §7).

    Args:
        base_name: the file name without its ``:2,...`` info part.

    Returns:
        The base name itself when it is 1..70 characters in ``0x21``..``0x7E``, else
        ``"H"`` + the first 64 hex digits of its SHA-256 (stable for the same name).
    """
    if _UID_CHARS.match(base_name):
        return base_name
    digest = hashlib.sha256(base_name.encode("utf-8", "surrogateescape")).hexdigest()
    return "H" + digest[: _UID_MAX - 6]


@dataclass(frozen=True, slots=True)
class MaildropMessage:
    """One message of a maildrop.

    Attributes:
        uid: the POP3 unique-id.
        base: the Maildir base name (the file name before ``:``).
        subdir: ``"new"`` or ``"cur"``: where the file is now.
        name: the file name in ``subdir``.
        size: octets as RETR sends them (CRLF line endings), before byte-stuffing.
    """

    uid: str
    base: str
    subdir: str
    name: str
    size: int


class _SizeCache:
    """Process-wide cache of scanned sizes: (base name, file size, mtime ns) -> size."""

    def __init__(self, entries: int) -> None:
        self._entries = entries
        self._data: OrderedDict[tuple[str, int, int], int] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[str, int, int]) -> int | None:
        with self._lock:
            value = self._data.get(key)
            if value is not None:
                self._data.move_to_end(key)
            return value

    def put(self, key: tuple[str, int, int], value: int) -> None:
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self._entries:
                self._data.popitem(last=False)


_sizes = _SizeCache(_SIZE_CACHE_ENTRIES)


def _order_key(base: str, mtime_ns: int) -> tuple[int, int, str]:
    m = _ORDER.match(base)
    if m is None:
        return (mtime_ns // 1_000_000_000, (mtime_ns // 1000) % 1_000_000, base)
    return (int(m.group(1)), int(m.group(2) or 0), base)


def _with_seen_flag(name: str) -> str:
    """``base`` or ``base:2,FLAGS`` -> the same with ``S`` among the flags (sorted)."""
    base, sep, info = name.partition(":")
    flags = info[2:] if sep and info.startswith("2,") else ""
    if "S" in flags:
        return name
    return f"{base}:2,{''.join(sorted(set(flags + 'S')))}"


class Maildrop:
    """The messages of one Maildir, locked for one POP3 session.

    Open with :meth:`open`; always :meth:`close` (also a context manager). Not
    thread-safe: one session uses it, one call at a time.

    Attributes:
        path: the Maildir directory.
        messages: the messages at open, in delivery order; index ``i`` is message
            number ``i + 1``.
    """

    def __init__(self, path: Path, lock_fd: int, messages: list[MaildropMessage]) -> None:
        self.path = path
        self.messages = messages
        self._lock_fd: int | None = lock_fd

    @classmethod
    def open(cls, path: Path) -> Maildrop:
        """Lock the Maildir at ``path`` and list its messages.

        The Maildir (``tmp``, ``new``, ``cur``) is created when missing (a mailbox that
        never had mail).

        Args:
            path: the Maildir directory.

        Returns:
            The open maildrop.

        Raises:
            MaildropLocked: another session holds the lock.
            MaildropError: the directory or lock file cannot be made or read.
        """
        try:
            for sub in ("tmp", "new", "cur"):
                (path / sub).mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(path / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise MaildropError(f"cannot open the maildrop {path}: {exc.strerror}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise MaildropLocked(f"{path} is in use by another session") from exc
            raise MaildropError(f"cannot lock the maildrop {path}: {exc.strerror}") from exc
        try:
            messages = _scan(path)
        except OSError as exc:
            os.close(fd)
            raise MaildropError(f"cannot list the maildrop {path}: {exc.strerror}") from exc
        clean_tmp(path / "tmp")
        return cls(path, fd, messages)

    def __enter__(self) -> Maildrop:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def locked(self) -> bool:
        """The lock is still held (the maildrop is open)."""
        return self._lock_fd is not None

    def close(self) -> None:
        """Release the lock; the maildrop cannot be used after this. Idempotent."""
        if self._lock_fd is not None:
            fd, self._lock_fd = self._lock_fd, None
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def _file(self, index: int) -> Path:
        """The current path of a message; found again by base name if it moved."""
        msg = self.messages[index]
        path = self.path / msg.subdir / msg.name
        if path.exists():
            return path
        for sub in ("cur", "new"):
            with contextlib.suppress(FileNotFoundError), os.scandir(self.path / sub) as it:
                for entry in it:
                    if entry.name.partition(":")[0] == msg.base:
                        self.messages[index] = replace(msg, subdir=sub, name=entry.name)
                        return Path(entry.path)
        raise FileNotFoundError(errno.ENOENT, "message file is gone", str(path))

    def open_message(self, index: int) -> BinaryIO:
        """Open a message's file for reading (binary).

        Args:
            index: 0-based message index.

        Returns:
            The open file; read it in blocks and pass them through a
            :class:`CrlfNormalizer`.

        Raises:
            FileNotFoundError: the file was removed by something else.
            OSError: the file cannot be read.
        """
        return open(self._file(index), "rb")

    def read_blocks(self, index: int, block: int = READ_BLOCK) -> Iterator[bytes]:
        """The message as RETR sends it (CRLF line endings), in blocks of about ``block``.

        Args:
            index: 0-based message index.
            block: read size in bytes.

        Yields:
            Normalised blocks; the last one ends with CRLF.

        Raises:
            FileNotFoundError: the file was removed by something else.
            OSError: the file cannot be read.
        """
        normalizer = CrlfNormalizer()
        with self.open_message(index) as f:
            while data := f.read(block):
                out = normalizer.feed(data)
                if out:
                    yield out
        tail = normalizer.finish()
        if tail:
            yield tail

    def mark_seen(self, index: int) -> None:
        """Give a message the Maildir ``S`` flag, moving it from ``new/`` to ``cur/``.

        Args:
            index: 0-based message index.

        Raises:
            OSError: the rename failed (the message stays where it was).
        """
        path = self._file(index)
        msg = self.messages[index]
        target_name = _with_seen_flag(msg.name)
        if msg.subdir == "cur" and target_name == msg.name:
            return
        target = self.path / "cur" / target_name
        os.rename(path, target)
        self.messages[index] = replace(msg, subdir="cur", name=target_name)

    def expunge(self, indices: list[int]) -> int:
        """Remove messages (RFC 1939 §6, the UPDATE state) and make that durable.

        A file already gone counts as removed.

        Args:
            indices: 0-based indices of the messages marked deleted.

        Returns:
            How many could not be removed (0 when all were).
        """
        failures = 0
        for index in indices:
            try:
                os.unlink(self._file(index))
            except FileNotFoundError:
                pass
            except OSError as exc:
                failures += 1
                log.error("cannot remove %s from %s: %s", self.messages[index].name,
                          self.path, exc)
        if indices:
            for sub in ("new", "cur"):
                try:
                    fsync_directory(self.path / sub)
                except OSError as exc:
                    log.error("cannot fsync %s/%s: %s", self.path, sub, exc)
        return failures


def clean_tmp(tmp: Path, now: float | None = None, max_age: float = TMP_MAX_AGE) -> int:
    """Remove leftover files from a Maildir's ``tmp/`` (the Maildir specification).

    A file goes when its access, modification and status-change times are all more than
    ``max_age`` seconds before ``now``; anything else (a delivery being written, a
    directory, an entry that cannot be read) is left alone. Errors are logged, never raised.

    Args:
        tmp: the ``tmp/`` directory.
        now: Unix time in seconds (default: the current time).
        max_age: seconds; default :data:`TMP_MAX_AGE` (36 hours).

    Returns:
        The number of files removed.
    """
    limit = (time.time() if now is None else now) - max_age
    removed = 0
    try:
        entries = list(os.scandir(tmp))
    except OSError as exc:
        log.warning("cannot list %s: %s", tmp, exc.strerror)
        return 0
    for entry in entries:
        try:
            info = entry.stat(follow_symlinks=False)
            if (stat.S_ISDIR(info.st_mode)
                    or max(info.st_atime, info.st_mtime, info.st_ctime) >= limit):
                continue
            os.unlink(entry.path)
        except FileNotFoundError:
            continue
        except OSError as exc:
            log.warning("cannot remove the leftover %s: %s", entry.path, exc.strerror)
            continue
        removed += 1
        log.info("removed %s: left in tmp/ for more than %d hours", entry.path,
                 max_age // 3600)
    return removed


def _scan(path: Path) -> list[MaildropMessage]:
    found: list[tuple[tuple[int, int, str], MaildropMessage]] = []
    for sub in ("new", "cur"):
        with os.scandir(path / sub) as it:
            for entry in it:
                if entry.name.startswith("."):
                    continue
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue  # removed meanwhile
                if not entry.is_file(follow_symlinks=False):
                    continue
                base = entry.name.partition(":")[0]
                size = _size(Path(entry.path), base, st.st_size, st.st_mtime_ns)
                if size is None:
                    continue
                msg = MaildropMessage(unique_id(base), base, sub, entry.name, size)
                found.append((_order_key(base, st.st_mtime_ns), msg))
    found.sort(key=lambda item: item[0])
    return [msg for _, msg in found]


def _size(path: Path, base: str, file_size: int, mtime_ns: int) -> int | None:
    m = _W_FIELD.search(base)
    if m is not None:
        return int(m.group(1))
    key = (base, file_size, mtime_ns)
    cached = _sizes.get(key)
    if cached is not None:
        return cached
    try:
        with open(path, "rb") as f:
            size = wire_size(f)
    except FileNotFoundError:
        return None
    _sizes.put(key, size)
    return size
