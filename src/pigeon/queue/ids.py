"""Queue ids: short, unique, sortable by arrival time.

A queue id is 12 characters of Crockford's base32 alphabet (``0-9`` and ``A-Z`` without
``I L O U``): 9 characters (45 bits) of Unix time in milliseconds, then 3 characters
(15 bits) of randomness. Ids sort like their creation time, both as text and in the
spool directory listing. Within one process ids are strictly increasing (the ULID
"monotonic" rule: an id made in the same millisecond as the last one is the last one plus
one), so they never repeat; across processes the random part makes a clash unlikely and the
spool refuses an existing name (``O_EXCL``), so a clash is retried, never overwritten.

45 bits of milliseconds last until the year 3084.
"""

from __future__ import annotations

import re
import secrets
import threading
import time

__all__ = ["QUEUE_ID_LENGTH", "is_queue_id", "new_queue_id"]

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
QUEUE_ID_LENGTH = 12
_TIME_BITS = 45
_RANDOM_BITS = 15
_MASK = (1 << (_TIME_BITS + _RANDOM_BITS)) - 1
_QUEUE_ID_RE = re.compile(r"^[0-9A-HJKMNP-TV-Z]{12}$")

_lock = threading.Lock()
_last = 0


def _encode(value: int) -> str:
    chars = []
    for _ in range(QUEUE_ID_LENGTH):
        chars.append(_ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(chars))


def new_queue_id(now: float | None = None) -> str:
    """Make a new queue id.

    Args:
        now: Unix time in seconds to encode (default: the current time). Ids made in one
            process are increasing even if ``now`` goes backwards.

    Returns:
        12 characters from ``0-9A-Z`` (Crockford base32), e.g. ``"0J6Z3K9Q2M7X"``.
    """
    global _last
    ms = int((time.time() if now is None else now) * 1000) & ((1 << _TIME_BITS) - 1)
    value = (ms << _RANDOM_BITS) | secrets.randbits(_RANDOM_BITS)
    with _lock:
        if value <= _last:
            value = (_last + 1) & _MASK
        _last = value
    return _encode(value)


def is_queue_id(text: str) -> bool:
    """Tell whether ``text`` has the shape of a queue id (safe to use as a file name).

    Args:
        text: the candidate, e.g. from the command line or a spool directory listing.

    Returns:
        True for exactly 12 characters of the queue id alphabet.
    """
    return bool(_QUEUE_ID_RE.match(text))
