"""End to end: the open-relay matrix. No unauthenticated client, on any listener, from any
untrusted address, with any address trick, ever gets a message accepted for a non-local domain.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from .conftest import wait_for
from .server import PigeonServer
from .smtp_tls_client import ALICE, ALICE_PASSWORD, Client

# Forward-paths that name, or try to smuggle, a destination outside example.com.
TRICKS = [
    "<dave@example.net>",
    "<DAVE@EXAMPLE.NET>",
    "<dave@example.net.>",
    "<dave@example.com.example.net>",
    "<dave@localhost>",
    "<postmaster@example.net>",
    "<@example.com:dave@example.net>",  # source route through us
    "<@example.com,@mx.example.com:dave@example.net>",
    "<dave%example.net@example.com>",  # percent hack
    "<dave%example.net>",
    "<example.net!dave@example.com>",  # bang path
    "<example.net!dave>",
    '<"dave@example.net"@example.com>',  # quoted at-sign
    '<"dave@example.net">',
    "<dave@example.net@example.com>",
    "<dave@[192.0.2.1]>",  # address literals
    "<dave@[127.0.0.1]>",
    "<dave@[IPv6:::1]>",
    "<dave@[IPv6:2001:db8::1]>",
    "dave@example.net",
    "<dave@example.net> NOTIFY=NEVER",
]
REFUSED = {"501", "550", "553", "554", "555"}


def _server(root, trusted: list[str]) -> PigeonServer:  # type: ignore[no-untyped-def]
    # Every trick is a refused command: allow more errors than the matrix has rows.
    sections: dict[str, dict[str, object]] = {"limits": {"max_errors": 1000}}
    if trusted:
        sections["relay"] = {"trusted_networks": trusted}
    return PigeonServer(root, listeners=["smtp", "submission", "submissions"],
                        users={ALICE: ALICE_PASSWORD}, sections=sections).start()


@pytest.fixture(scope="module", params=[[], ["127.0.0.3/32", "2001:db8::/32"]],
                ids=["no-trusted-networks", "trusted-127.0.0.3"])
def srv(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
        ) -> Iterator[PigeonServer]:
    server = _server(tmp_path_factory.mktemp("relay"), request.param)
    yield server
    server.stop()


def _open(srv: PigeonServer, kind: str, source: str) -> Client:
    c = Client(srv.ports[kind], source=source, implicit_tls=kind == "submissions")
    assert c.reply().startswith("220")
    assert c.cmd("EHLO client.example.net").startswith("250")
    if kind == "submission":
        assert c.cmd("STARTTLS").startswith("220")
        c.starttls()
        assert c.cmd("EHLO client.example.net").startswith("250")
    return c


@pytest.mark.parametrize("source", ["127.0.0.1", "127.0.0.2"])
def test_mta_listener_never_relays_for_untrusted_clients(srv: PigeonServer, source: str) -> None:
    with _open(srv, "smtp", source) as c:
        for reverse_path in ("<someone@example.org>", "<>", "<bob@example.com>"):
            assert c.cmd(f"MAIL FROM:{reverse_path}").startswith("250")
            assert c.cmd("RCPT TO:<bob@example.com>").startswith("250")
            for trick in TRICKS:
                reply = c.cmd(f"RCPT TO:{trick}")
                assert reply[:3] in REFUSED, (trick, reply)
            assert c.cmd("DATA").startswith("354")
            queued = c.cmd("Subject: relay test\r\n\r\nx\r\n.")
            assert queued.startswith("250 2.0.0 Ok: queued as "), queued
            queue_id = queued.rsplit(" ", 1)[1]
            # Exactly the one local recipient was queued.
            wait_for(lambda q=queue_id: re.search(
                rf"{q}: queued from=\S+ size=\d+ nrcpt=1\b", srv.log()))
    remote = [line for line in srv.log().splitlines()
              if "to=<" in line and "@example.com>" not in line]
    assert remote == []


@pytest.mark.parametrize("kind", ["submission", "submissions"])
@pytest.mark.parametrize("source", ["127.0.0.1", "127.0.0.3"])
def test_submission_listeners_need_auth_even_from_trusted_networks(
    srv: PigeonServer, kind: str, source: str
) -> None:
    with _open(srv, kind, source) as c:
        for reverse_path in ("<someone@example.org>", "<>", "<alice@example.com>"):
            assert c.cmd(f"MAIL FROM:{reverse_path}") == "530 5.7.0 Authentication required"
            for trick in TRICKS[:3]:
                assert c.cmd(f"RCPT TO:{trick}").startswith("503 5.5.1")


def test_trusted_network_may_relay_only_real_remote_domains(srv: PigeonServer) -> None:
    trusted = "trusted_networks" in srv.config_path.read_text()
    with _open(srv, "smtp", "127.0.0.3") as c:
        assert c.cmd("MAIL FROM:<app@example.org>").startswith("250")
        reply = c.cmd("RCPT TO:<dave@example.net>")
        if trusted:
            assert reply == "250 2.1.5 Ok"
        else:
            assert reply == "554 5.7.1 <dave@example.net>: Relay access denied"
        # Tricks aimed at a local domain are still local parts, never relayed.
        for trick in ("<dave%example.net@example.com>", "<example.net!dave@example.com>",
                      '<"dave@example.net"@example.com>'):
            assert c.cmd(f"RCPT TO:{trick}").startswith("550 5.1.1"), trick
        assert c.cmd("RSET").startswith("250")
