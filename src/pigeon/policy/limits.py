"""Rate limits and failure counters keyed by client address or user (the anvil of Pigeon).

Both structures are plain in-memory tables driven by an injected monotonic clock (seconds),
bounded in size: when a table is full, entries that no longer matter are dropped first, then
the oldest ones. Forgetting a key is always the safe direction for a mail server: a client
that is forgotten gets a fresh allowance, never a wrong refusal.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["DEFAULT_MAX_KEYS", "FailureCounter", "RateLimiter"]

#: Keys a table keeps at most (each costs around 200 bytes).
DEFAULT_MAX_KEYS = 100_000


@dataclass(slots=True)
class _Bucket:
    tokens: float
    stamp: float


class RateLimiter:
    """A token bucket per key: ``per_minute`` events a minute, bursts up to ``per_minute``.

    Args:
        per_minute: events allowed per minute and key; 0 allows everything.
        clock: monotonic time in seconds.
        max_keys: the most keys kept.
    """

    def __init__(
        self,
        per_minute: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = DEFAULT_MAX_KEYS,
    ) -> None:
        self.per_minute = per_minute
        self._rate = per_minute / 60.0  # tokens per second
        self._clock = clock
        self._max_keys = max_keys
        self._buckets: dict[str, _Bucket] = {}

    def __len__(self) -> int:
        return len(self._buckets)

    def allow(self, key: str) -> bool:
        """Count one event for ``key``; True when it is within the limit.

        Args:
            key: a client address or a user.

        Returns:
            False when the key has used up its allowance (the event is not counted).
        """
        if self.per_minute <= 0:
            return True
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            self._make_room(now)
            bucket = self._buckets[key] = _Bucket(float(self.per_minute), now)
        else:
            elapsed = max(0.0, now - bucket.stamp)
            bucket.tokens = min(float(self.per_minute), bucket.tokens + elapsed * self._rate)
            bucket.stamp = now
        if bucket.tokens < 1.0:
            return False
        bucket.tokens -= 1.0
        return True

    def _make_room(self, now: float) -> None:
        if len(self._buckets) < self._max_keys:
            return
        full_after = self.per_minute / self._rate  # seconds for an empty bucket to refill
        for key in [k for k, b in self._buckets.items() if now - b.stamp >= full_after]:
            del self._buckets[key]
        while len(self._buckets) >= self._max_keys:
            del self._buckets[next(iter(self._buckets))]


@dataclass(slots=True)
class _Failures:
    times: list[float]
    blocked_until: float = 0.0


class FailureCounter:
    """Failures per key within a sliding window; ``threshold`` of them block the key.

    Args:
        threshold: failures within ``window`` that block the key; 0 never blocks.
        window: seconds over which failures count.
        block_time: seconds a key stays blocked.
        clock: monotonic time in seconds.
        max_keys: the most keys kept.
    """

    def __init__(
        self,
        threshold: int,
        window: float,
        block_time: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = DEFAULT_MAX_KEYS,
    ) -> None:
        self.threshold = threshold
        self.window = window
        self.block_time = block_time
        self._clock = clock
        self._max_keys = max_keys
        self._entries: dict[str, _Failures] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def blocked(self, key: str) -> bool:
        """True while ``key`` is blocked."""
        entry = self._entries.get(key)
        return entry is not None and entry.blocked_until > self._clock()

    def failures(self, key: str) -> int:
        """Failures of ``key`` within the window."""
        entry = self._entries.get(key)
        if entry is None:
            return 0
        self._expire(entry, self._clock())
        return len(entry.times)

    def record(self, key: str) -> int:
        """Count a failure; block the key when it reaches the threshold.

        Returns:
            The failures of ``key`` within the window, this one included.
        """
        now = self._clock()
        entry = self._entries.get(key)
        if entry is None:
            self._make_room(now)
            entry = self._entries[key] = _Failures([])
        self._expire(entry, now)
        entry.times.append(now)
        if len(entry.times) > max(self.threshold, 1):
            del entry.times[0]  # keep the list bounded: only the count matters
        count = len(entry.times)
        if self.threshold and count >= self.threshold:
            entry.blocked_until = now + self.block_time
        return count

    def reset(self, key: str) -> None:
        """Forget the failures of ``key`` (after a success); a block stays."""
        entry = self._entries.get(key)
        if entry is not None:
            entry.times.clear()
            if entry.blocked_until <= self._clock():
                del self._entries[key]

    def _expire(self, entry: _Failures, now: float) -> None:
        cutoff = now - self.window
        while entry.times and entry.times[0] <= cutoff:
            del entry.times[0]

    def _make_room(self, now: float) -> None:
        if len(self._entries) < self._max_keys:
            return
        cutoff = now - self.window
        stale = [k for k, e in self._entries.items()
                 if e.blocked_until <= now and (not e.times or e.times[-1] <= cutoff)]
        for key in stale:
            del self._entries[key]
        while len(self._entries) >= self._max_keys:
            del self._entries[next(iter(self._entries))]
