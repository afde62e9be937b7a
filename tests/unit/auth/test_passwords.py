"""argon2id password hashing."""

from __future__ import annotations

import pytest
from argon2 import PasswordHasher

from pigeon.auth.passwords import dummy_verify, hash_password, needs_rehash, verify_password


def test_hash_and_verify() -> None:
    h = hash_password("correct-horse-battery")
    assert h.startswith("$argon2id$")
    assert verify_password(h, "correct-horse-battery")
    assert not verify_password(h, "Correct-horse-battery")
    assert hash_password("x") != hash_password("x")  # fresh salt
    assert not needs_rehash(h)


def test_bad_inputs() -> None:
    with pytest.raises(ValueError):
        hash_password("")
    assert not verify_password("not a hash", "pw")
    assert not verify_password("", "pw")
    assert needs_rehash("not a hash")
    dummy_verify("anything")  # spends the time, returns nothing


def test_old_parameters_need_rehash() -> None:
    old = PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1).hash("pw")
    assert verify_password(old, "pw")
    assert needs_rehash(old)
