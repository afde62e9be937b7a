"""The state of a bulk run: which recipients are done, kept so a second run skips them.

The state file is an append-only text log, one record per finished recipient::

    # pigeon bulk state v1 campaign=3f2a...
    sent<TAB>bob@example.com<TAB>0J6Z3K9Q2M7X
    failed<TAB>eve@example.org<TAB>550 5.1.1 <eve@example.org>: User unknown
    unknown<TAB>dan@example.net<TAB>421 4.4.2 lost connection after the content was sent

``campaign`` is a fingerprint of the templates and the sender: a state file written for
another message is refused rather than silently used to skip people.

Theory of operation (what "never twice" rests on): a recipient is recorded only after the
server's reply to the end of its message (``250`` → ``sent``, ``5xx`` → ``failed``); the
record is written with one ``write(2)`` on an ``O_APPEND`` descriptor at once, so it
survives the process being interrupted or killed; ``fsync`` runs every
:data:`FSYNC_EVERY` records, every :data:`FSYNC_INTERVAL` seconds and at the end, so it
survives a machine crash too. What remains:

- a machine crash (power loss) can lose the records written since the last fsync: those
  recipients (at most :data:`FSYNC_EVERY`, or one second's worth) are sent again by the
  next run;
- a kill (SIGKILL) between the server's ``250`` and the ``write`` (microseconds) sends
  those messages in flight again;
- a connection lost after the content was sent and before the reply (RFC 5321 §4.1.1.4
  leaves it unknown whether the server took the message) is recorded as ``unknown`` and
  not sent again: once at most, and the report says which.

A torn last line (no newline) is ignored when the log is read back.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

__all__ = [
    "FSYNC_EVERY",
    "FSYNC_INTERVAL",
    "DoneRecord",
    "StateError",
    "StateLog",
    "campaign_fingerprint",
    "parse_state",
]

#: Records between two fsyncs of the state log.
FSYNC_EVERY = 64
#: Seconds between two fsyncs of the state log while records keep coming.
FSYNC_INTERVAL = 1.0
_MAGIC = "# pigeon bulk state v1"

DoneStatus = Literal["sent", "failed", "unknown"]
_STATUSES: frozenset[str] = frozenset({"sent", "failed", "unknown"})


class StateError(ValueError):
    """The state file cannot be used (another campaign's, unreadable)."""


@dataclass(frozen=True, slots=True)
class DoneRecord:
    """A recipient finished by an earlier or the current run.

    Attributes:
        status: ``sent`` (250), ``failed`` (5xx), ``unknown`` (connection lost after the
            content was sent).
        key: the recipient's key (see :func:`pigeon.mua.bulk.recipient_key`).
        detail: the queue id for ``sent``, else the reply.
    """

    status: DoneStatus
    key: str
    detail: str


def campaign_fingerprint(parts: Iterable[str]) -> str:
    """A short fingerprint of what is being sent (templates, sender, headers).

    Args:
        parts: the texts that make the message what it is.

    Returns:
        16 hex digits of their SHA-256.
    """
    digest = hashlib.sha256()
    for part in parts:
        data = part.encode("utf-8", "surrogatepass")
        digest.update(len(data).to_bytes(8, "big"))
        digest.update(data)
    return digest.hexdigest()[:16]


def _clean(text: str) -> str:
    return " ".join(text.replace("\t", " ").split())


def parse_state(data: bytes) -> tuple[str | None, dict[str, DoneRecord]]:
    """Read a state log.

    Args:
        data: the file's bytes.

    Returns:
        (campaign fingerprint from the first line or None, records by key; a later record
        for a key wins). Lines that are torn (no final newline) or malformed are skipped.
    """
    text = data.decode("utf-8", "replace")
    lines = text.split("\n")
    lines.pop()  # the part after the last newline: empty, or a torn record
    campaign: str | None = None
    records: dict[str, DoneRecord] = {}
    for line in lines:
        if line.startswith("#"):
            if line.startswith(_MAGIC):
                for word in line[len(_MAGIC):].split():
                    name, _, value = word.partition("=")
                    if name == "campaign" and value:
                        campaign = value
            continue
        parts = line.split("\t")
        if len(parts) != 3 or parts[0] not in _STATUSES or not parts[1]:
            continue
        status: DoneStatus = parts[0]  # type: ignore[assignment]
        records[parts[1]] = DoneRecord(status, parts[1], parts[2])
    return campaign, records


class StateLog:
    """The append-only state log of one campaign (see the module docstring).

    Args:
        path: the state file (created when missing).
        campaign: the fingerprint of the campaign.
        clock: monotonic seconds (tests inject one).

    Attributes:
        done: the records read at open and appended since, by key.

    Raises:
        StateError: the file belongs to another campaign or cannot be opened.
    """

    def __init__(
        self, path: Path, campaign: str, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.path = path
        self.campaign = campaign
        self._clock = clock
        existing = b""
        try:
            existing = path.read_bytes()
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise StateError(f"cannot read state file {path}: {exc.strerror}") from None
        found, self.done = parse_state(existing)
        if existing and found is not None and found != campaign:
            raise StateError(
                f"state file {path} belongs to another campaign (templates or sender "
                "changed); give another --state file, or delete it to send to everyone again"
            )
        try:
            self._fd: int | None = os.open(
                path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600
            )
        except OSError as exc:
            raise StateError(f"cannot open state file {path}: {exc.strerror}") from None
        self._unsynced = 0
        self._last_sync = clock()
        if not existing:
            self._write(f"{_MAGIC} campaign={campaign}\n")
            self.sync()
        elif not existing.endswith(b"\n"):
            self._write("\n")  # end a torn record so the next one starts on its own line

    def _write(self, text: str) -> None:
        assert self._fd is not None
        data = text.encode("utf-8")
        while data:
            written = os.write(self._fd, data)
            data = data[written:]

    def record(self, status: DoneStatus, key: str, detail: str) -> None:
        """Append one finished recipient; fsync when the batch is full or old enough.

        Args:
            status: ``sent``, ``failed`` or ``unknown``.
            key: the recipient key (no tabs or newlines).
            detail: queue id or reply text (tabs and line breaks are flattened).

        Raises:
            ValueError: a bad status or key.
            OSError: the write failed (the caller stops: it cannot promise "never twice").
        """
        if status not in _STATUSES or not key or any(ch in key for ch in "\t\r\n"):
            raise ValueError(f"bad state record {status!r} {key!r}")
        self._write(f"{status}\t{key}\t{_clean(detail)}\n")
        self.done[key] = DoneRecord(status, key, _clean(detail))
        self._unsynced += 1
        if self._unsynced >= FSYNC_EVERY or self._clock() - self._last_sync >= FSYNC_INTERVAL:
            self.sync()

    def sync(self) -> None:
        """fsync the log now."""
        if self._fd is not None:
            os.fsync(self._fd)
        self._unsynced = 0
        self._last_sync = self._clock()

    def close(self) -> None:
        """fsync and close."""
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            self.sync()
        os.close(self._fd)
        self._fd = None
