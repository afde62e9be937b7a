"""The authenticator: checks SASL credentials for SMTP AUTH and POP3, with brute-force defences.

Theory of operation
-------------------
:meth:`Authenticator.verify` takes the :class:`~pigeon.auth.sasl.Credentials` a SASL exchange
produced and returns the authenticated identity (the user's canonical address, e.g.
``alice@example.com``) or the :class:`~pigeon.mail.reply.Reply` that refuses them. One
authenticator serves every listener, so the defences below count SMTP and POP3 failures
together:

* **Per client address.** After ``auth.failures_before_delay`` failures within
  ``auth.failure_window`` every further failure is answered only after
  ``auth.failure_delay`` seconds; at ``auth.max_failures_per_ip`` the address is blocked for
  ``auth.block_time``: the failing attempt and every attempt during the block get
  ``421 4.7.0`` (the session then closes).
* **Per account.** At ``auth.account_lockout_failures`` failures within the window (from any
  address) the account is locked for ``auth.account_lockout_time``: attempts get
  ``454 4.7.0`` and the password is not even checked, so a distributed guesser learns
  nothing. Failures are counted for names that are not accounts too, so the replies never
  tell which user names exist.

The argon2id check runs in a worker thread (``asyncio.to_thread``), at most
:data:`MAX_CONCURRENT_CHECKS` at a time (each costs 64 MiB for a fraction of a second); an
unknown user costs the same time as a wrong password. A hash made with old parameters is
replaced after a successful login. Every failure, block and lockout is logged with the
client address; passwords never are.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from pigeon.auth.passwords import dummy_verify, hash_password, needs_rehash, verify_password
from pigeon.auth.sasl import Credentials
from pigeon.mail.reply import Reply
from pigeon.policy.limits import FailureCounter
from pigeon.storage.accounts_port import canonical_mailbox_key

__all__ = [
    "ACCOUNT_LOCKED",
    "AUTH_BLOCKED",
    "AUTH_TEMPORARY_FAILURE",
    "BAD_CREDENTIALS",
    "MAX_CONCURRENT_CHECKS",
    "Authenticator",
    "is_loopback",
]

log = logging.getLogger("pigeon.auth")

#: argon2 checks running at the same time (memory: 64 MiB each).
MAX_CONCURRENT_CHECKS = 4

BAD_CREDENTIALS = Reply(535, "5.7.8", "Error: authentication failed: bad credentials")
AUTH_BLOCKED = Reply(
    421, "4.7.0", "Error: too many failed authentication attempts from your address; "
    "try again later"
)
ACCOUNT_LOCKED = Reply(
    454, "4.7.0", "Temporary authentication failure: too many failed attempts for this "
    "account; try again later"
)
AUTH_TEMPORARY_FAILURE = Reply(454, "4.7.0", "Temporary authentication failure")


def is_loopback(address: str) -> bool:
    """True for 127.0.0.0/8, ::1 and IPv4-mapped loopback addresses."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped.is_loopback
    return ip.is_loopback


class Authenticator:
    """Checks credentials against the account store (see the module docstring).

    Args:
        settings: ``pigeon.config.Settings`` (the ``auth`` section).
        accounts: the account store (``get_password_hash``, ``set_password_hash``,
            ``list_aliases``).
        clock: monotonic time in seconds (injectable for tests).
        sleep: the coroutine used for failure delays (injectable for tests).
    """

    def __init__(
        self,
        settings: Any,
        accounts: Any,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        auth = settings.auth
        self._accounts = accounts
        self._sleep = sleep
        self._delay_after = int(auth.failures_before_delay)
        self._delay = float(auth.failure_delay)
        self.ip_failures = FailureCounter(
            int(auth.max_failures_per_ip), float(auth.failure_window), float(auth.block_time),
            clock=clock,
        )
        self.account_failures = FailureCounter(
            int(auth.account_lockout_failures), float(auth.failure_window),
            float(auth.account_lockout_time), clock=clock,
        )
        self._checks: asyncio.Semaphore | None = None

    async def verify(self, credentials: Credentials, *, peer_ip: str) -> str | Reply:
        """Check credentials.

        Args:
            credentials: from a completed SASL exchange.
            peer_ip: the client address as text (failures are counted per address).

        Returns:
            The identity (the user's mailbox key, e.g. ``alice@example.com``) on success;
            otherwise ``535 5.7.8`` (bad credentials), ``454 4.7.0`` (account locked, or
            the account store failed) or ``421 4.7.0`` (the address is blocked: close the
            session after sending it).
        """
        if self.ip_failures.blocked(peer_ip):
            log.warning("authentication from [%s] refused: address blocked", peer_ip)
            return AUTH_BLOCKED
        try:
            key: str | None = canonical_mailbox_key(credentials.authcid)
        except ValueError:
            key = None
        if key is not None and "@" not in key:
            key = None
        lock_key = key if key is not None else credentials.authcid.lower()[:320]
        if self.account_failures.blocked(lock_key):
            log.warning("authentication for %r from [%s] refused: account locked",
                        lock_key, peer_ip)
            return ACCOUNT_LOCKED
        try:
            ok = await self._check(key, credentials.password)
        except Exception:
            log.error("authentication for %r from [%s]: account store failed", lock_key,
                      peer_ip, exc_info=True)
            return AUTH_TEMPORARY_FAILURE
        if ok and credentials.authzid:
            try:
                ok = canonical_mailbox_key(credentials.authzid) == key
            except ValueError:
                ok = False
            if not ok:
                log.warning("authentication for %r from [%s]: authorization identity %r "
                            "refused", lock_key, peer_ip, credentials.authzid[:100])
        if ok:
            assert key is not None
            self.account_failures.reset(key)
            log.info("authenticated %s from [%s]", key, peer_ip)
            return key
        return await self._failed(lock_key, peer_ip)

    async def _failed(self, lock_key: str, peer_ip: str) -> Reply:
        from_ip = self.ip_failures.record(peer_ip)
        for_account = self.account_failures.record(lock_key)
        log.warning("authentication failed for %r from [%s] (%d from this address, %d for "
                    "this account)", lock_key, peer_ip, from_ip, for_account)
        if self.account_failures.blocked(lock_key):
            log.warning("account %r locked for %.0f s after %d failed logins", lock_key,
                        self.account_failures.block_time, for_account)
        if self.ip_failures.blocked(peer_ip):
            log.warning("address [%s] blocked for %.0f s after %d failed logins", peer_ip,
                        self.ip_failures.block_time, from_ip)
            return AUTH_BLOCKED
        if from_ip > self._delay_after and self._delay > 0:
            await self._sleep(self._delay)
        return BAD_CREDENTIALS

    async def _check(self, key: str | None, password: str) -> bool:
        if self._checks is None:
            self._checks = asyncio.Semaphore(MAX_CONCURRENT_CHECKS)
        async with self._checks:
            return await asyncio.to_thread(self._check_sync, key, password)

    def _check_sync(self, key: str | None, password: str) -> bool:
        stored = self._accounts.get_password_hash(key) if key is not None else None
        if stored is None:
            dummy_verify(password)
            return False
        if not verify_password(stored, password):
            return False
        if needs_rehash(stored):
            try:
                self._accounts.set_password_hash(key, hash_password(password))
            except Exception:
                log.warning("could not store a new hash for %s", key, exc_info=True)
        return True

    def owned_addresses(self, identity: str) -> frozenset[str]:
        """The addresses a user may send as: their own and their aliases (mailbox keys).

        Args:
            identity: an identity returned by :meth:`verify`.
        """
        aliases = self._accounts.list_aliases(identity)
        return frozenset([identity, *(alias for alias, _ in aliases)])
