"""Relay and sender policy."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pigeon.config import RelaySettings
from pigeon.mail.address import AddressError, parse_reverse_path
from pigeon.policy.relay import RELAY_DENIED, SENDER_NOT_OWNED, RelayPolicy, sender_allowed


def test_replies() -> None:
    assert (RELAY_DENIED.code, str(RELAY_DENIED.enhanced)) == (554, "5.7.1")
    assert (SENDER_NOT_OWNED.code, str(SENDER_NOT_OWNED.enhanced)) == (553, "5.7.1")


def test_nobody_is_trusted_by_default() -> None:
    p = RelayPolicy()
    for address in ("127.0.0.1", "::1", "10.0.0.1"):
        assert not p.is_trusted(address)
        assert not p.may_relay(peer_address=address, authenticated=False)
        assert p.may_relay(peer_address=address, authenticated=True)


@pytest.mark.parametrize("address,trusted", [
    ("192.0.2.7", True), ("192.0.2.255", True), ("192.0.3.1", False),
    ("::ffff:192.0.2.9", True), ("2001:db8::1", True), ("2001:db9::1", False),
    ("127.0.0.1", True), ("127.0.0.2", False), ("fe80::1%eth0", False), ("junk", False),
])
def test_trusted_networks(address: str, trusted: bool) -> None:
    settings = RelaySettings(trusted_networks=["192.0.2.0/24", "2001:db8::/32", "127.0.0.1"])
    p = RelayPolicy(settings.trusted_networks)
    assert p.is_trusted(address) is trusted
    assert p.may_relay(peer_address=address, authenticated=False) is trusted


def test_bad_network_in_config() -> None:
    with pytest.raises(ValueError, match="not an IP network"):
        RelaySettings(trusted_networks=["192.0.2.0/33"])


OWNED = frozenset({"alice@example.com", "al@example.org"})


@pytest.mark.parametrize("path,allowed", [
    ("<>", True),
    ("<alice@example.com>", True),
    ("<ALICE@Example.COM>", True),
    ("<alice+lists@example.com>", True),
    ("<al@example.org>", True),
    ("<@relay.example:alice@example.com>", True),  # the source route is dropped
    ("<bob@example.com>", False),
    ("<alice@example.net>", False),
    ("<alice%example.com@evil.example>", False),
    ('<"alice@example.com"@evil.example>', False),
    ("<+alice@example.com>", False),
])
def test_sender_allowed(path: str, allowed: bool) -> None:
    assert sender_allowed(parse_reverse_path(path), OWNED) is allowed


@given(st.from_regex(r"[a-z0-9.+-]{1,20}", fullmatch=True),
       st.sampled_from(["example.com", "example.org", "example.net"]))
def test_sender_allowed_only_for_owned_bases(local: str, domain: str) -> None:
    try:
        rp = parse_reverse_path(f"<{local}@{domain}>")
    except AddressError:
        return
    base = local.partition("+")[0] if "+" in local and local.partition("+")[0] else local
    expected = f"{local}@{domain}" in OWNED or f"{base}@{domain}" in OWNED
    assert sender_allowed(rp, OWNED) is expected
