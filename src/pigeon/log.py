"""Logging: one line per record, UTC timestamps, and a sanitiser for peer-supplied text.

Every line looks like::

    2026-01-02T03:04:05.678Z pigeon[4242] INFO pigeon.net.smtp: message text

A record whose message or traceback spans several lines is written as several lines that
each carry the same prefix, so ``grep`` on a queue id or connection id always finds the
whole record.

Text that comes from a peer (HELO names, command lines, reply texts) goes through
:func:`sanitize` before it is logged, so a client cannot forge log lines with CR/LF or
hide text behind terminal control sequences.
"""

from __future__ import annotations

import logging
import logging.handlers
import sys
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pigeon.config import Settings

__all__ = ["LineFormatter", "sanitize", "setup_logging"]

_NAMED_ESCAPES = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def sanitize(text: str, limit: int = 200) -> str:
    """Make peer-supplied text safe to put in one log line.

    Backslash, CR, LF and TAB become ``\\\\``, ``\\r``, ``\\n``, ``\\t``; every other
    non-printable character becomes ``\\xNN``, ``\\uNNNN`` or ``\\UNNNNNNNN`` as
    :func:`repr` writes it. If the escaped text is longer than ``limit`` characters it is
    cut (never inside an escape) and ``...`` is appended.

    Args:
        text: the untrusted text.
        limit: the longest escaped text kept, in characters (the ``...`` comes on top).

    Returns:
        Printable text without line breaks.

    Raises:
        ValueError: ``limit`` is negative.
    """
    if limit < 0:
        raise ValueError("limit must not be negative")
    if len(text) <= limit and text.isprintable() and "\\" not in text:
        return text  # nothing to escape or cut (the usual case)
    pieces: list[str] = []
    length = 0
    for ch in text:
        piece = _NAMED_ESCAPES.get(ch)
        if piece is None:
            if ch.isprintable():
                piece = ch
            else:
                code = ord(ch)
                if code <= 0xFF:
                    piece = f"\\x{code:02x}"
                elif code <= 0xFFFF:
                    piece = f"\\u{code:04x}"
                else:
                    piece = f"\\U{code:08x}"
        if length + len(piece) > limit:
            pieces.append("...")
            break
        pieces.append(piece)
        length += len(piece)
    return "".join(pieces)


class LineFormatter(logging.Formatter):
    """Format records as ``<UTC time>Z pigeon[<pid>] <LEVEL> <logger>: <message>``.

    The time has millisecond precision (ISO 8601 / RFC 3339 with a ``Z`` suffix).
    Continuation lines (multi-line messages, tracebacks) repeat the prefix.
    """

    # The date and time to the second of the last record: (Unix second, its text).
    _stamp: tuple[int, str] = (-1, "")

    def format(self, record: logging.LogRecord) -> str:
        """Render one record.

        Args:
            record: the log record.

        Returns:
            One or more lines (joined with ``\\n``), each with the full prefix.
        """
        message = record.getMessage()
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            message = f"{message}\n{record.exc_text}"
        if record.stack_info:
            message = f"{message}\n{self.formatStack(record.stack_info)}"
        second = int(record.created)
        cached_second, stamp = self._stamp
        if cached_second != second:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._stamp = (second, stamp)
        prefix = (
            f"{stamp}.{int(record.msecs):03d}Z pigeon[{record.process}] "
            f"{record.levelname} {record.name}: "
        )
        lines = message.splitlines()
        if len(lines) == 1:
            return prefix + lines[0]
        return "\n".join(prefix + line for line in lines or [""])


def _is_ours(handler: logging.Handler) -> bool:
    return getattr(handler, "_pigeon", False) is True


def setup_logging(settings: Settings) -> None:
    """Send log records to stderr, and to ``settings.log.file`` if set, one line each.

    Replaces handlers installed by an earlier call, so calling it twice does not double
    the output. The file is opened with :class:`logging.handlers.WatchedFileHandler`, so
    it can be rotated by moving it away.

    Args:
        settings: the loaded settings; ``settings.log.level`` and ``settings.log.file``
            are used.

    Raises:
        OSError: the log file or its directory cannot be created or opened.
    """
    root = logging.getLogger()
    for handler in [h for h in root.handlers if _is_ours(h)]:
        root.removeHandler(handler)
        handler.close()
    formatter = LineFormatter()
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if settings.log.file is not None:
        settings.log.file.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(
            logging.handlers.WatchedFileHandler(settings.log.file, encoding="utf-8")
        )
    for handler in handlers:
        handler.setFormatter(formatter)
        handler._pigeon = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(settings.log.level)
