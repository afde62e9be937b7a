"""Password hashing with argon2id (RFC 9106) through argon2-cffi.

Hashes are PHC strings (``$argon2id$v=19$m=65536,t=3,p=4$salt$hash``) that carry their
own parameters, so a hash made with older parameters still verifies and is replaced at the
next successful login (:func:`needs_rehash`). Every call here is CPU- and memory-bound
(about 0.1-0.2 s and 64 MiB with the default RFC 9106 "low memory" profile): servers call
them off the event loop.
"""

from __future__ import annotations

import functools

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

__all__ = ["dummy_verify", "hash_password", "needs_rehash", "verify_password"]


@functools.cache
def _hasher() -> PasswordHasher:
    return PasswordHasher()  # argon2id, RFC 9106 low-memory profile


@functools.cache
def _dummy_hash() -> str:
    return _hasher().hash("pigeon: no such account")


def hash_password(password: str) -> str:
    """Hash a password for storage.

    Args:
        password: the clear-text password (non-empty).

    Returns:
        An argon2id PHC string with a fresh random salt.

    Raises:
        ValueError: the password is empty.
    """
    if not password:
        raise ValueError("the password is empty")
    return _hasher().hash(password)


def verify_password(stored_hash: str, password: str) -> bool:
    """Check a password against a stored hash (constant time in the password).

    Args:
        stored_hash: the PHC string from the account store.
        password: the clear-text password to check.

    Returns:
        True when it matches; False when it does not or the stored hash is unusable.
    """
    try:
        return _hasher().verify(stored_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def dummy_verify(password: str) -> None:
    """Spend the time of one verification, for accounts that do not exist.

    Answering an unknown user as fast as a cache miss would tell an attacker which user
    names exist.

    Args:
        password: the offered password.
    """
    verify_password(_dummy_hash(), password)


def needs_rehash(stored_hash: str) -> bool:
    """True when ``stored_hash`` was made with other parameters than today's."""
    try:
        return _hasher().check_needs_rehash(stored_hash)
    except (InvalidHashError, ValueError):
        return True
