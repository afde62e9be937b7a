"""Fixtures: a cheap argon2 profile so that tests checking many passwords stay fast."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from argon2 import PasswordHasher

from pigeon.auth import passwords

CHEAP = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)


@pytest.fixture
def cheap_argon2(monkeypatch: pytest.MonkeyPatch) -> Iterator[PasswordHasher]:
    """Hash and verify with a 1 MiB, one-pass argon2id profile."""
    passwords._dummy_hash.cache_clear()
    monkeypatch.setattr(passwords, "_hasher", lambda: CHEAP)
    yield CHEAP
    passwords._dummy_hash.cache_clear()
