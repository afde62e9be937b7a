"""Maildir mailboxes: ``<data_dir>/mail/<domain>/<local-part>/{tmp,new,cur}``.

Theory of operation (the Maildir specification, https://cr.yp.to/proto/maildir.html):
a message is written to ``tmp/`` under a name unique to this host, process and moment,
made durable, then moved to ``new/`` (``link()`` + ``unlink()``, so an existing name is
never overwritten; ``rename()`` where hard links are not supported), and the new name is
made durable, so the message is durable before the delivery is reported. "Durable" is
either an fsync of the file and then of ``new/`` (``sync="fsync"``), or a syncfs(2) of the
file system shared by the deliveries running at that moment (``sync="syncfs"``, see
:class:`pigeon.storage.durability.SyncBarrier`): one before the move, one after. Readers
only look at ``new/`` and ``cur/`` and never see a half-written file.

File names are ``<seconds>.M<microseconds>P<pid>Q<counter>.<hostname>,S=<size>``: the
modern Maildir unique name, plus the ``S=`` size field (the file size in bytes) that
Dovecot and Courier use to size a mailbox without a stat per file. In the host name,
``/`` becomes ``\\057`` and ``:`` becomes ``\\072``, as the specification asks.

Files keep the wire form of the message: CRLF line endings, exactly as in the spool. Most
readers (Dovecot, mutt, Thunderbird) accept CRLF; POP3 serves it without conversion.

Directory names: the domain and the lower-cased local part are written so that any
mailbox key maps to one safe, reversible path component. ASCII letters, digits and
``- _ . + =`` and printable non-ASCII characters are kept; every other character (``/``,
NUL, controls, space, ``%`` itself, ``:`` and the other punctuation) becomes ``%XX`` per
UTF-8 byte, and a leading ``.`` becomes ``%2E`` (so no name is ``.``, ``..`` or hidden).
:func:`urllib.parse.unquote` reverses it.

SECURITY: directories are created with mode 0700 and files with mode 0600; only the MDA
writes here.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from pigeon.storage.durability import SyncBarrier, fsync_directory, resolve_sync_method

__all__ = ["COPY_BLOCK", "MaildirStore", "encode_name", "maildir_path"]

# Stream-copy block size (bytes): large enough for few syscalls, small enough that a
# 50 MB message costs 64 KiB of memory.
COPY_BLOCK = 64 * 1024

# A directory whose mtime is this close to now (seconds) may still change within the
# same timestamp tick, so its size is not cached (the "racy timestamp" rule).
_RACY_SECONDS = 2.0

_SAFE_ASCII = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.+=")

_counter = itertools.count(1)
_counter_lock = threading.Lock()


def _next_counter() -> int:
    with _counter_lock:
        return next(_counter)


def encode_name(text: str) -> str:
    """Make a safe, reversible path component from a local part or a domain.

    Args:
        text: the name (non-empty).

    Returns:
        The name with unsafe characters percent-encoded (see the module docstring).

    Raises:
        ValueError: the name is empty.
    """
    if not text:
        raise ValueError("empty mailbox name")
    out = []
    for i, ch in enumerate(text):
        keep = ch in _SAFE_ASCII or (
            not ch.isascii() and ch.isprintable() and not ch.isspace()
        )
        if keep and not (i == 0 and ch == "."):
            out.append(ch)
        else:
            out.append("".join(f"%{b:02X}" for b in ch.encode("utf-8", "surrogatepass")))
    return "".join(out)


def _split_key(key: str) -> tuple[str, str]:
    local, sep, domain = key.rpartition("@")
    if not sep or not local or not domain:
        raise ValueError(f"not a mailbox key: {key!r}")
    return local, domain


def maildir_path(data_dir: Path, mailbox_key: str) -> Path:
    """Return the Maildir directory of a mailbox.

    Args:
        data_dir: ``settings.server.data_dir``.
        mailbox_key: the mailbox key, ``local@domain`` (local part lower-cased).

    Returns:
        ``<data_dir>/mail/<domain>/<local-part>`` with both names made safe by
        :func:`encode_name`.

    Raises:
        ValueError: the key has no local part or no domain.
    """
    return _path_under(data_dir / "mail", mailbox_key)


def _path_under(root: Path, key: str) -> Path:
    local, domain = _split_key(key)
    return root / encode_name(domain) / encode_name(local)


def _as_os_error(exc: Exception) -> OSError:
    # One item's unexpected failure is reported for that item alone, as a disk error.
    return exc if isinstance(exc, OSError) else OSError(errno.EIO, f"{type(exc).__name__}: {exc}")


def _dir_size(path: Path) -> int:
    total = 0
    try:
        with os.scandir(path) as it:
            for entry in it:
                if entry.name.startswith("."):
                    continue
                try:
                    total += entry.stat(follow_symlinks=False).st_size
                except FileNotFoundError:
                    pass  # moved or deleted by a reader meanwhile
    except FileNotFoundError:
        return 0
    return total


def _mtime(path: Path) -> int:
    try:
        return os.stat(path).st_mtime_ns
    except FileNotFoundError:
        return -1


class MaildirStore:
    """Maildir mailboxes under one root directory; thread-safe.

    Args:
        root: the directory holding ``<domain>/<local-part>/`` (``<data_dir>/mail``).
        hostname: this host's name for unique file names.
        sync: ``"fsync"``, ``"syncfs"`` or ``"auto"`` (see
            :func:`pigeon.storage.durability.resolve_sync_method`).

    Attributes:
        sync_method: the method in use, ``"fsync"`` or ``"syncfs"``.

    Raises:
        ValueError: ``sync`` is unknown or not available here.
    """

    def __init__(self, root: Path, *, hostname: str, sync: str = "fsync") -> None:
        self.root = root
        self.sync_method = resolve_sync_method(sync)
        # Opened now, before any delivery, to hear of every write-back error (see
        # pigeon.storage.durability); on the nearest existing parent until root exists.
        self._barrier = SyncBarrier(root) if self.sync_method == "syncfs" else None
        self._host = hostname.replace("/", "\\057").replace(":", "\\072") or "localhost"
        self._pid = os.getpid()
        self._usage: dict[str, tuple[int, int, int]] = {}
        self._lock = threading.Lock()

    def path(self, key: str) -> Path:
        """The Maildir directory of the mailbox ``key`` (see :func:`maildir_path`)."""
        return _path_under(self.root, key)

    def ensure(self, key: str) -> Path:
        """Create the Maildir of ``key`` (``tmp``, ``new``, ``cur``; mode 0700) if missing.

        Returns:
            The Maildir directory.

        Raises:
            OSError: the directories cannot be created.
        """
        path = self.path(key)
        if (path / "new").is_dir() and (path / "cur").is_dir() and (path / "tmp").is_dir():
            return path
        for parent in (self.root, path.parent, path):
            parent.mkdir(mode=0o700, exist_ok=True)
        for sub in ("tmp", "new", "cur"):
            (path / sub).mkdir(mode=0o700, exist_ok=True)
        fsync_directory(path)
        fsync_directory(path.parent)
        return path

    def unique_name(self, size: int) -> str:
        """A new Maildir file name: ``<sec>.M<usec>P<pid>Q<n>.<host>,S=<size>``.

        Args:
            size: the final file size in bytes.
        """
        now_ns = time.time_ns()
        seconds, rest = divmod(now_ns, 1_000_000_000)
        return (
            f"{seconds}.M{rest // 1000}P{self._pid}Q{_next_counter()}.{self._host},S={size}"
        )

    def deliver(self, key: str, source: Path, prefix: bytes) -> str:
        """Store ``prefix`` + the content of ``source`` in the mailbox ``key`` (Maildir).

        Blocking; run it in a thread from async code.

        Args:
            key: the mailbox key; its Maildir is created when missing.
            source: the spool file, copied in :data:`COPY_BLOCK` blocks.
            prefix: bytes put before the content (``Return-Path`` and ``Delivered-To``).

        Returns:
            The file name in ``new/``.

        Raises:
            OSError: the message could not be stored; the ``tmp/`` file is removed.
        """
        box, name = self._write_tmp(key, source, prefix, fsync=self._barrier is None)
        try:
            if self._barrier is not None:
                self._barrier.sync()  # the content, before its name appears in new/
            self._publish(box, name)
            if self._barrier is None:
                fsync_directory(box / "new")
            else:
                self._barrier.sync()  # the name in new/
        except BaseException:
            (box / "tmp" / name).unlink(missing_ok=True)
            raise
        return name

    def deliver_batch(
        self, items: Sequence[tuple[str, Path, bytes]]
    ) -> list[str | OSError]:
        """Store several messages, sharing the syncs: :meth:`deliver` for each, at once.

        With ``sync="syncfs"``: every ``tmp/`` file is written, ONE syncfs makes them
        durable, each is moved into ``new/``, and ONE more syncfs makes the names durable.
        With ``sync="fsync"``: :meth:`deliver` for each item in turn.

        Args:
            items: ``(key, source, prefix)`` per copy, as for :meth:`deliver`.

        Returns:
            Per item, in order: the file name in ``new/``, or the error that stopped it
            (nothing of a failed item is left in ``tmp/`` or ``new/``, except when the
            final sync failed: the file may then be in ``new/``, and is reported failed).
        """
        if self._barrier is None:
            out: list[str | OSError] = []
            for key, source, prefix in items:
                try:
                    out.append(self.deliver(key, source, prefix))
                except Exception as exc:
                    out.append(_as_os_error(exc))
            return out
        written: list[tuple[Path, str] | OSError] = []
        for key, source, prefix in items:
            try:
                written.append(self._write_tmp(key, source, prefix, fsync=False))
            except Exception as exc:
                written.append(_as_os_error(exc))
        pending = [w for w in written if not isinstance(w, OSError)]
        if not pending:
            return [w for w in written if isinstance(w, OSError)]
        try:
            self._barrier.sync()
        except OSError as exc:
            for box, name in pending:
                with contextlib.suppress(OSError):
                    (box / "tmp" / name).unlink(missing_ok=True)
            return [w if isinstance(w, OSError) else exc for w in written]
        results: list[str | OSError] = []
        for w in written:
            if isinstance(w, OSError):
                results.append(w)
                continue
            box, name = w
            try:
                self._publish(box, name)
                results.append(name)
            except Exception as exc:
                with contextlib.suppress(OSError):
                    (box / "tmp" / name).unlink(missing_ok=True)
                results.append(_as_os_error(exc))
        try:
            self._barrier.sync()
        except OSError as exc:
            return [r if isinstance(r, OSError) else exc for r in results]
        return results

    def _write_tmp(self, key: str, source: Path, prefix: bytes, *, fsync: bool
                   ) -> tuple[Path, str]:
        """Write ``prefix`` + ``source`` to a new file in ``tmp/``; return (Maildir, name)."""
        box = self.ensure(key)
        with open(source, "rb") as src:
            size = len(prefix) + os.fstat(src.fileno()).st_size
            while True:
                name = self.unique_name(size)
                tmp = box / "tmp" / name
                try:
                    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                except FileExistsError:
                    continue  # the counter makes this nearly impossible; just pick again
                break
            try:
                with os.fdopen(fd, "wb") as out:
                    out.write(prefix)
                    written = len(prefix)
                    while block := src.read(COPY_BLOCK):
                        out.write(block)
                        written += len(block)
                    out.flush()
                    if fsync:
                        os.fsync(out.fileno())
                if written != size:
                    raise OSError(errno.EIO, f"spool file changed while copying: {source}")
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
        return box, name

    @staticmethod
    def _publish(box: Path, name: str) -> None:
        """Move ``tmp/name`` into ``new/`` without ever replacing a file there."""
        tmp, final = box / "tmp" / name, box / "new" / name
        try:
            os.link(tmp, final)
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP,
                                 errno.EXDEV, errno.EMLINK):
                raise
            os.rename(tmp, final)
        else:
            os.unlink(tmp)

    def usage(self, key: str) -> int:
        """Bytes used by the mailbox: the sum of file sizes in ``new/`` and ``cur/``.

        The sum is cached per mailbox and reused while neither directory's mtime changes
        (every delivery, expunge or flag change renames or removes a file, which changes
        it).

        Args:
            key: the mailbox key.

        Returns:
            The size in bytes; 0 for a mailbox that does not exist yet.
        """
        box = self.path(key)
        new_m, cur_m = _mtime(box / "new"), _mtime(box / "cur")
        with self._lock:
            cached = self._usage.get(key)
        if cached is not None and cached[0] == new_m and cached[1] == cur_m:
            return cached[2]
        total = _dir_size(box / "new") + _dir_size(box / "cur")
        racy = time.time_ns() - max(new_m, cur_m) < _RACY_SECONDS * 1_000_000_000
        with self._lock:
            if racy:
                self._usage.pop(key, None)
            else:
                self._usage[key] = (new_m, cur_m, total)
        return total
