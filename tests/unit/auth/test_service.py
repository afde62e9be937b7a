"""The authenticator: credentials, throttling per address, lockout per account."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from argon2 import PasswordHasher

from pigeon.auth.passwords import hash_password
from pigeon.auth.sasl import Credentials
from pigeon.auth.service import (
    ACCOUNT_LOCKED,
    AUTH_BLOCKED,
    AUTH_TEMPORARY_FAILURE,
    BAD_CREDENTIALS,
    Authenticator,
    is_loopback,
)
from pigeon.config import AuthSettings
from pigeon.storage.sqlite.accounts import AccountStore

PASSWORD = "correct-horse-battery"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Sleeps:
    def __init__(self) -> None:
        self.calls: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


@pytest.fixture
def store(tmp_path: Path, cheap_argon2: PasswordHasher) -> AccountStore:
    s = AccountStore(tmp_path / "accounts.db")
    s.add_mailbox("alice@example.com")
    s.set_password_hash("alice@example.com", hash_password(PASSWORD))
    s.add_mailbox("bob@example.com")  # a mailbox without password: not a user
    s.add_alias("alice@example.com", "al@example.com")
    yield s
    s.close()


def make(store: Any, **auth: Any) -> tuple[Authenticator, Clock, Sleeps]:
    clock, sleeps = Clock(), Sleeps()
    settings = SimpleNamespace(auth=AuthSettings(**auth))
    return Authenticator(settings, store, clock=clock, sleep=sleeps), clock, sleeps


def verify(a: Authenticator, user: str, password: str, ip: str = "192.0.2.1",
           authzid: str = "") -> Any:
    return asyncio.run(a.verify(Credentials(user, password, authzid), peer_ip=ip))


def test_success_returns_the_canonical_address(store: AccountStore) -> None:
    a, _, sleeps = make(store)
    assert verify(a, "Alice@EXAMPLE.com", PASSWORD) == "alice@example.com"
    assert verify(a, "alice@example.com", PASSWORD, authzid="alice@example.com") == (
        "alice@example.com")
    assert sleeps.calls == []
    assert a.owned_addresses("alice@example.com") == frozenset(
        {"alice@example.com", "al@example.com"})


@pytest.mark.parametrize("user,password,authzid", [
    ("alice@example.com", "wrong", ""),
    ("alice@example.com", PASSWORD, "bob@example.com"),  # no proxy authorization
    ("bob@example.com", "anything", ""),  # a mailbox without a password
    ("nobody@example.com", PASSWORD, ""),
    ("alice", PASSWORD, ""),
    ("not an address@@", PASSWORD, ""),
])
def test_refusals_are_535(store: AccountStore, user: str, password: str, authzid: str) -> None:
    a, _, _ = make(store)
    assert verify(a, user, password, authzid=authzid) == BAD_CREDENTIALS
    assert BAD_CREDENTIALS.code == 535 and str(BAD_CREDENTIALS.enhanced) == "5.7.8"


def test_failures_from_one_address_are_delayed_then_blocked(store: AccountStore) -> None:
    a, clock, sleeps = make(store, failures_before_delay=3, failure_delay=2.0,
                            max_failures_per_ip=10, block_time=600.0)
    replies = [verify(a, "alice@example.com", f"guess{i}") for i in range(12)]
    assert replies[:9] == [BAD_CREDENTIALS] * 9
    assert replies[9:] == [AUTH_BLOCKED] * 3
    assert AUTH_BLOCKED.code == 421 and str(AUTH_BLOCKED.enhanced) == "4.7.0"
    assert sleeps.calls == [2.0] * 6  # failures 4..9 were delayed
    # Blocked: even the right password is refused from that address ...
    assert verify(a, "alice@example.com", PASSWORD) == AUTH_BLOCKED
    # ... but not from another one, and the account is not locked.
    assert verify(a, "alice@example.com", PASSWORD, ip="192.0.2.2") == "alice@example.com"
    clock.now += 601
    assert verify(a, "alice@example.com", PASSWORD) == "alice@example.com"


def test_failures_outside_the_window_do_not_count(store: AccountStore) -> None:
    a, clock, _ = make(store, max_failures_per_ip=3, failure_window=60.0)
    for _ in range(5):
        assert verify(a, "alice@example.com", "x") == BAD_CREDENTIALS
        assert verify(a, "alice@example.com", "y") == BAD_CREDENTIALS
        clock.now += 61
    assert a.ip_failures.failures("192.0.2.1") == 0


def test_account_lockout_from_many_addresses(store: AccountStore) -> None:
    a, clock, _ = make(store, account_lockout_failures=5, account_lockout_time=300.0,
                       max_failures_per_ip=100)
    for i in range(5):
        assert verify(a, "alice@example.com", "x", ip=f"198.51.100.{i}") == BAD_CREDENTIALS
    # Locked: the right password does not help, and is not even checked.
    assert verify(a, "alice@example.com", PASSWORD, ip="203.0.113.9") == ACCOUNT_LOCKED
    assert ACCOUNT_LOCKED.code == 454
    # Other accounts are not affected; unknown names lock the same way (no enumeration).
    for i in range(5):
        assert verify(a, "ghost@example.com", "x", ip=f"198.51.100.{i}") == BAD_CREDENTIALS
    assert verify(a, "ghost@example.com", "x") == ACCOUNT_LOCKED
    clock.now += 301
    assert verify(a, "alice@example.com", PASSWORD) == "alice@example.com"


def test_success_resets_the_account_counter(store: AccountStore) -> None:
    a, _, _ = make(store, account_lockout_failures=3, max_failures_per_ip=100)
    for _ in range(2):
        verify(a, "alice@example.com", "x")
    assert verify(a, "alice@example.com", PASSWORD) == "alice@example.com"
    for _ in range(2):
        assert verify(a, "alice@example.com", "x") == BAD_CREDENTIALS
    assert verify(a, "alice@example.com", PASSWORD) == "alice@example.com"


def test_lockout_zero_never_locks(store: AccountStore) -> None:
    a, _, _ = make(store, account_lockout_failures=0, max_failures_per_ip=1000)
    for i in range(40):
        verify(a, "alice@example.com", "x", ip=f"2001:db8::{i}")
    assert verify(a, "alice@example.com", PASSWORD) == "alice@example.com"


def test_store_failure_is_temporary() -> None:
    class Broken:
        def get_password_hash(self, key: str) -> str | None:
            raise OSError("disk gone")

    a, _, _ = make(Broken())
    assert verify(a, "alice@example.com", PASSWORD) == AUTH_TEMPORARY_FAILURE


def test_old_hash_is_replaced_after_login(store: AccountStore) -> None:
    old = PasswordHasher(time_cost=2, memory_cost=2048, parallelism=1).hash(PASSWORD)
    store.set_password_hash("alice@example.com", old)
    a, _, _ = make(store)
    assert verify(a, "alice@example.com", PASSWORD) == "alice@example.com"
    new = store.get_password_hash("alice@example.com")
    assert new is not None and "m=1024,t=1,p=1" in new  # today's profile (see conftest)
    assert verify(a, "alice@example.com", PASSWORD) == "alice@example.com"
    assert store.get_password_hash("alice@example.com") == new  # no rehash needed now


@pytest.mark.parametrize("address,expected", [
    ("127.0.0.1", True), ("127.3.4.5", True), ("::1", True), ("::ffff:127.0.0.1", True),
    ("192.0.2.1", False), ("::ffff:192.0.2.1", False), ("", False), ("bogus", False),
])
def test_is_loopback(address: str, expected: bool) -> None:
    assert is_loopback(address) is expected
