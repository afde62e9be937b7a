"""End to end: brute force, rate limits, harvest defence, and the [auth] switches."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from .server import PigeonServer
from .smtp_tls_client import ALICE, ALICE_PASSWORD, Client, plain

BOB_PASSWORD = "bob-secret-1"


def test_brute_force_is_throttled_then_blocked_per_address(tmp_path_factory) -> None:  # type: ignore[no-untyped-def]
    srv = PigeonServer(tmp_path_factory.mktemp("brute"), listeners=["submission", "submissions"],
                       users={ALICE: ALICE_PASSWORD},
                       sections={"auth": {"failure_delay": "0.05s"}}).start()
    try:
        replies: list[str] = []
        client: Client | None = None
        for attempt in range(50):
            if client is None:
                client = Client(srv.ports["submissions"], implicit_tls=True)
                assert client.reply().startswith("220")
                assert client.cmd("EHLO attacker.example").startswith("250")
            reply = client.cmd(f"AUTH PLAIN {plain(ALICE, f'guess-{attempt}')}")
            replies.append(reply)
            if reply.startswith("421"):
                assert client.reply() == "<closed>"
                client.close()
                client = None
        if client is not None:
            client.close()
        # Defaults: failures 4..9 are delayed, the 10th blocks the address.
        assert replies[:9] == ["535 5.7.8 Error: authentication failed: bad credentials"] * 9
        blocked = ("421 4.7.0 Error: too many failed authentication attempts from your "
                   "address; try again later")
        assert replies[9:] == [blocked] * 41
        # Blocked address: even the right password is refused, on every listener.
        with Client(srv.ports["submission"]) as c:
            assert c.greet_tls_login() == blocked
        # Another address logs in at once: the account itself was not locked.
        with Client(srv.ports["submission"], source="127.0.0.2") as c:
            assert c.greet_tls_login() == "235 2.7.0 Authentication successful"
        log = srv.log()
        assert "address [127.0.0.1] blocked for 900 s after 10 failed logins" in log
        assert len(re.findall(r"authentication failed for 'alice@example.com' from "
                              r"\[127\.0\.0\.1\]", log)) == 10
        assert "guess-" not in log  # passwords are never logged
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def strict(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PigeonServer]:
    """Tight limits; every test uses its own client address so that they do not interact."""
    srv = PigeonServer(
        tmp_path_factory.mktemp("strict"),
        listeners=["smtp", "submission"],
        users={ALICE: ALICE_PASSWORD, "bob@example.com": BOB_PASSWORD,
               "carol@example.com": "carol-secret-1"},
        sections={
            "limits": {"connections_per_minute_per_ip": 3, "messages_per_minute_per_user": 2,
                       "messages_per_minute_per_ip": 4, "max_unknown_recipients": 3},
            "auth": {"allow_plaintext_on_loopback": True, "on_smtp": True},
        },
    )
    srv.start()
    yield srv
    srv.stop()


def _send(c: Client, reverse_path: str, recipient: str = "carol@example.com") -> str:
    reply = c.cmd(f"MAIL FROM:<{reverse_path}>")
    if not reply.startswith("250"):
        return reply
    assert c.cmd(f"RCPT TO:<{recipient}>").startswith("250")
    assert c.cmd("DATA").startswith("354")
    return c.cmd("Subject: rate\r\n\r\nx\r\n.")


def test_connection_rate_per_address(strict: PigeonServer) -> None:
    for _ in range(3):
        with Client(strict.ports["smtp"], source="127.0.0.11") as c:
            assert c.reply().startswith("220")
    with Client(strict.ports["submission"], source="127.0.0.11") as c:
        assert c.reply() == ("421 mx.example.com Error: too many connections from your "
                             "address; try again later")
        assert c.reply() == "<closed>"
    with Client(strict.ports["smtp"], source="127.0.0.12") as c:
        assert c.reply().startswith("220")


def test_message_rate_per_user(strict: PigeonServer) -> None:
    with Client(strict.ports["submission"], source="127.0.0.21") as c:
        assert c.greet_tls_login().startswith("235")
        assert _send(c, ALICE).startswith("250 2.0.0 Ok: queued")
        assert _send(c, ALICE).startswith("250 2.0.0 Ok: queued")
        assert _send(c, ALICE) == "450 4.7.1 Error: too many messages; try again later"
    with Client(strict.ports["submission"], source="127.0.0.22") as c:
        assert c.greet_tls_login("bob@example.com", BOB_PASSWORD).startswith("235")
        assert _send(c, "bob@example.com").startswith("250 2.0.0 Ok: queued")


def test_message_rate_per_address(strict: PigeonServer) -> None:
    with Client(strict.ports["smtp"], source="127.0.0.31") as c:
        assert c.reply().startswith("220")
        assert c.cmd("EHLO client.example.net").startswith("250")
        for _ in range(4):
            assert _send(c, "someone@example.org").startswith("250 2.0.0 Ok: queued")
        assert _send(c, "someone@example.org") == (
            "450 4.7.1 Error: too many messages; try again later")


def test_unknown_recipients_end_the_session(strict: PigeonServer) -> None:
    with Client(strict.ports["smtp"], source="127.0.0.41") as c:
        assert c.reply().startswith("220")
        assert c.cmd("EHLO harvester.example").startswith("250")
        assert c.cmd("MAIL FROM:<h@example.org>").startswith("250")
        for name in ("aaron", "abby", "adam"):
            assert c.cmd(f"RCPT TO:<{name}@example.com>").startswith("550 5.1.1")
        assert c.cmd("RCPT TO:<bob@example.com>").startswith("250")  # known ones still pass
        assert c.cmd("RCPT TO:<adele@example.com>") == (
            "421 4.7.0 mx.example.com Error: too many unknown recipients")
        assert c.reply() == "<closed>"


def test_plaintext_auth_on_loopback_when_allowed(strict: PigeonServer) -> None:
    with Client(strict.ports["submission"], source="127.0.0.51") as c:
        assert c.reply().startswith("220")
        assert "250-AUTH PLAIN LOGIN" in c.cmd("EHLO client.example.net")
        assert c.cmd(f"AUTH PLAIN {plain('carol@example.com', 'carol-secret-1')}").startswith(
            "235")
        assert c.cmd("MAIL FROM:<carol@example.com>") == "250 2.1.0 Ok"
        assert c.cmd("RCPT TO:<dave@example.net>") == "250 2.1.5 Ok"


def test_auth_on_the_mta_listener_when_enabled(strict: PigeonServer) -> None:
    with Client(strict.ports["smtp"], source="127.0.0.61") as c:
        assert c.reply().startswith("220")
        ehlo = c.cmd("EHLO client.example.net")
        # Loopback plaintext is allowed in this deployment, so AUTH shows before TLS too.
        assert "250-AUTH PLAIN LOGIN" in ehlo and "250-STARTTLS" in ehlo
        assert c.cmd("MAIL FROM:<someone@example.org>").startswith("250")  # no AUTH needed
        assert c.cmd("RCPT TO:<dave@example.net>").startswith("554 5.7.1")
        assert c.cmd("RSET").startswith("250")
        assert c.cmd("STARTTLS").startswith("220")
        c.starttls()
        assert "250-AUTH PLAIN LOGIN" in c.cmd("EHLO client.example.net")
        assert c.cmd(f"AUTH PLAIN {plain('bob@example.com', BOB_PASSWORD)}").startswith("235")
        assert c.cmd("MAIL FROM:<bob@example.com>").startswith("250")
        assert c.cmd("RCPT TO:<dave@example.net>") == "250 2.1.5 Ok"
