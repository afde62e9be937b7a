"""End to end: Pigeon delivers remote mail by MX (and routes, and a smarthost) on loopback.

Every test runs a real ``pigeon serve`` whose ``[dns]`` points at a dnslib zone server
and whose ``[delivery] smtp_port`` is the port of the receiving side: Pigeon's own scripted
peer (:mod:`tests.e2e.outbound_peer`), aiosmtpd, a second Pigeon, or a private Postfix.
Mail for remote domains enters through the MTA port from a trusted network.
"""

from __future__ import annotations

import email
import email.parser
import email.policy
import json
import re
import shutil
import smtplib
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trustme

from pigeon.mail.reply import Reply

from .conftest import delivered, wait_for
from .dns_server import ZoneServer
from .outbound_peer import FakeMx, Received, free_port, queue_messages
from .server import DEFAULT_MAILBOXES, PigeonServer

MESSAGE = (b"From: alice@example.com\r\nTo: bob@example.net\r\nSubject: outbound\r\n"
           b"Message-ID: <outbound@example.com>\r\n\r\nHello over there.\r\n.line with dot\r\n")


@pytest.fixture
def zone() -> Iterator[ZoneServer]:
    """A running, empty DNS zone server on 127.0.0.1."""
    server = ZoneServer().start()
    yield server
    server.stop()


@contextmanager
def pigeon(root: Path, zone: ZoneServer, smtp_port: int, **sections: dict[str, Any]
           ) -> Iterator[PigeonServer]:
    """A running Pigeon for example.com that resolves through ``zone``."""
    config: dict[str, dict[str, Any]] = {
        "dns": {"nameservers": [zone.nameserver], "timeout": 3},
        "delivery": {"smtp_port": smtp_port, "connect_timeout": 5},
        "relay": {"trusted_networks": ["127.0.0.0/8"]},
    }
    for name, values in sections.items():
        config.setdefault(name, {}).update(values)
    srv = PigeonServer(root, sections=config)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def send(srv: PigeonServer, recipients: list[str], content: bytes = MESSAGE,
         sender: str = "alice@example.com", **kw: Any) -> None:
    with smtplib.SMTP("127.0.0.1", srv.port, local_hostname="client.example.com",
                      timeout=30) as s:
        s.sendmail(sender, recipients, content, **kw)


def queue(srv: PigeonServer) -> list[dict[str, Any]]:
    return queue_messages(srv.data_dir)


def recipient_states(srv: PigeonServer) -> dict[str, dict[str, Any]]:
    return {r["address"]: r for m in queue(srv) for r in m["recipients"]}


def dsn_reports(srv: PigeonServer, count: int, mailbox: str = "alice@example.com"
                ) -> list[list[dict[str, str]]]:
    """Wait for ``count`` DSNs in ``mailbox``; return each one's per-recipient fields."""
    files = delivered(srv, mailbox, count)
    reports = []
    parser = email.parser.HeaderParser()
    for path in files:
        raw = path.read_bytes().decode("utf-8").replace("\r\n", "\n")
        msg = email.message_from_string(raw, policy=email.policy.compat32)
        assert msg.get_content_type() == "multipart/report"
        boundary = msg.get_boundary()
        assert boundary is not None
        part = next(p for p in raw.split(f"--{boundary}")
                    if re.search(r"Content-Type: message/(global-)?delivery-status", p))
        body = part.split("\n\n", 1)[1]
        blocks = [{k.lower(): v for k, v in parser.parsestr(chunk).items()}
                  for chunk in body.strip("\n").split("\n\n")]
        reports.append(blocks[1:])
    return reports


def mx_zone(zone: ZoneServer, domain: str = "example.net", host: str = "127.0.0.2") -> None:
    zone.add(domain, "MX", f"10 mx.{domain}").add(f"mx.{domain}", "A", host)


# -- delivery by MX: one Pigeon, one scripted MX, a domain and a sender per test ----------

SENDERS = [f"s{i}@example.com" for i in range(20)]


@dataclass
class Shared:
    zone: ZoneServer
    mx: FakeMx
    srv: PigeonServer
    senders: Iterator[str]

    def domain(self, name: str, *, mx: bool = True) -> str:
        """A fresh domain whose MX (or A record) points at the scripted MX."""
        domain = f"{name}.example"
        if mx:
            mx_zone(self.zone, domain)
        return domain

    def messages(self, domain: str) -> list[Received]:
        return [m for m in self.mx.messages if any(r.endswith("@" + domain)
                                                   for r in m.recipients)]

    def queued(self, domain: str) -> list[dict[str, Any]]:
        return [r for m in queue(self.srv) for r in m["recipients"]
                if r["address"].endswith("@" + domain)]

    def state(self, address: str) -> dict[str, Any] | None:
        return recipient_states(self.srv).get(address)

    def settled(self, domain: str) -> None:
        wait_for(lambda: self.queued(domain) == [])


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shared]:
    zone = ZoneServer().start()
    mx = FakeMx(host="127.0.0.2").start()
    config: dict[str, dict[str, Any]] = {
        "dns": {"nameservers": [zone.nameserver], "timeout": 3},
        # idle_time 0: every message on a new connection, so each test sees the
        # extensions it scripts.
        "delivery": {"smtp_port": mx.port, "connect_timeout": 5, "idle_time": 0},
        "relay": {"trusted_networks": ["127.0.0.0/8"]},
    }
    srv = PigeonServer(tmp_path_factory.mktemp("outbound"), sections=config,
                       mailboxes=[*DEFAULT_MAILBOXES, *SENDERS]).start()
    try:
        yield Shared(zone, mx, srv, iter(SENDERS))
    finally:
        srv.stop()
        mx.stop()
        zone.stop()


@pytest.fixture
def env(shared: Shared) -> Shared:
    """The shared setup with the scripted MX back to its defaults."""
    mx = shared.mx
    mx.hostname = "mx.example.net"
    mx.rcpt_replies = {}
    mx.data_replies = []
    mx.drop_in_data = 0
    mx.eightbitmime = mx.smtputf8 = True
    mx.max_recipients = 100
    return shared


def dsn_for(env: Shared, sender: str, count: int = 1) -> list[list[dict[str, str]]]:
    return dsn_reports(env.srv, count, sender)


def test_delivered_by_mx_byte_identical(env: Shared) -> None:
    domain, sender = env.domain("plain"), next(env.senders)
    send(env.srv, [f"bob@{domain}", f"carol@{domain}"], sender=sender)
    env.mx.wait_for(lambda m: len(env.messages(domain)) == 1)
    [got] = env.messages(domain)
    assert got.recipients == [f"bob@{domain}", f"carol@{domain}"]
    assert got.reverse_path == sender
    assert got.helo == "mx.example.com"
    received, _, rest = got.content.partition(b"\r\nSubject: outbound")
    assert received.startswith(b"Received: from client.example.com")
    assert b"Subject: outbound" + rest == MESSAGE[MESSAGE.index(b"Subject"):]
    # The line starting with a dot went out dot-stuffed and came back whole.
    assert b"\r\n..line with dot\r\n" in bytes(env.mx.wire[got.connection])
    env.settled(domain)
    assert (domain, "MX") in env.zone.queries


def test_4xx_deferred_then_retried_and_delivered(env: Shared) -> None:
    domain = env.domain("later")
    env.mx.data_replies = [Reply(451, "4.3.0", "try again later")]
    send(env.srv, [f"bob@{domain}"], sender=next(env.senders))
    state = wait_for(lambda: (env.state(f"bob@{domain}") or {}).get("state") == "deferred"
                     and env.state(f"bob@{domain}"))
    assert state["last_reply"] == {
        "status": "deferred", "code": 451, "enhanced": "4.3.0", "text": "try again later",
        "remote_host": f"mx.{domain}[127.0.0.2]",
    }
    assert env.messages(domain) == []
    assert env.srv.pigeon("queue", "flush").returncode == 0
    env.mx.wait_for(lambda m: len(env.messages(domain)) == 1)
    env.settled(domain)
    assert len(env.messages(domain)) == 1


def test_5xx_on_one_of_three_one_dsn(env: Shared) -> None:
    domain, sender = env.domain("three"), next(env.senders)
    env.mx.rcpt_replies = {f"nobody@{domain}": Reply(550, "5.1.1", "nobody: user unknown")}
    send(env.srv, [f"bob@{domain}", f"nobody@{domain}", f"carol@{domain}"], sender=sender)
    env.mx.wait_for(lambda m: len(env.messages(domain)) == 1)
    assert env.messages(domain)[0].recipients == [f"bob@{domain}", f"carol@{domain}"]
    [report] = dsn_for(env, sender)
    assert len(report) == 1
    assert report[0]["final-recipient"] == f"rfc822; nobody@{domain}"
    assert report[0]["action"] == "failed"
    assert report[0]["status"] == "5.1.1"
    assert report[0]["remote-mta"] == f"dns; mx.{domain}"
    assert report[0]["diagnostic-code"] == "smtp; 550 5.1.1 nobody: user unknown"
    env.settled(domain)
    assert len(env.srv.maildir_files(sender)) == 1


def test_null_mx_immediate_dsn(env: Shared) -> None:
    domain, sender = env.domain("nullmx", mx=False), next(env.senders)
    env.zone.add(domain, "MX", "0 .")
    before = env.mx.connections
    send(env.srv, [f"bob@{domain}"], sender=sender)
    [report] = dsn_for(env, sender)
    assert report[0]["status"] == "5.1.10"
    assert "nullMX" in report[0]["diagnostic-code"]
    env.settled(domain)
    assert env.mx.connections == before


def test_nxdomain_fails_5_1_2(env: Shared) -> None:
    sender = next(env.senders)
    send(env.srv, ["bob@nowhere.example"], sender=sender)
    [report] = dsn_for(env, sender)
    assert report[0]["status"] == "5.1.2"


def test_servfail_defers(env: Shared) -> None:
    domain = env.domain("servfail", mx=False)
    env.zone.add(domain, "MX", f"10 mx.{domain}")
    env.zone.fail(domain)
    send(env.srv, [f"bob@{domain}"], sender=next(env.senders))
    state = wait_for(lambda: (env.state(f"bob@{domain}") or {}).get("state") == "deferred"
                     and env.state(f"bob@{domain}"))
    assert state["last_reply"]["code"] == 451
    assert state["last_reply"]["enhanced"] == "4.4.3"
    # What the tests read from queue.db is what `pigeon queue list` shows.
    result = env.srv.pigeon("queue", "list", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["messages"] == queue(env.srv)


def test_no_mx_but_a_record_delivered(env: Shared) -> None:
    domain = env.domain("aonly", mx=False)
    env.zone.add(domain, "A", "127.0.0.2")
    send(env.srv, [f"bob@{domain}"], sender=next(env.senders))
    env.mx.wait_for(lambda m: len(env.messages(domain)) == 1)
    env.settled(domain)
    assert (domain, "MX") in env.zone.queries and (domain, "A") in env.zone.queries


def test_ipv6_then_ipv4_addresses(env: Shared) -> None:
    # The AAAA address has no server; the A address of the same host is used next.
    domain = env.domain("dual", mx=False)
    env.zone.add(domain, "MX", f"10 mx.{domain}")
    env.zone.add(f"mx.{domain}", "AAAA", "::1").add(f"mx.{domain}", "A", "127.0.0.2")
    send(env.srv, [f"bob@{domain}"], sender=next(env.senders))
    env.mx.wait_for(lambda m: len(env.messages(domain)) == 1)
    assert f"connect to mx.{domain}[::1]" in env.srv.log()


def test_8bit_to_server_without_8bitmime_converted(env: Shared) -> None:
    domain = env.domain("seven")
    env.mx.eightbitmime = False
    text = "Grüße aus Köln: naïve café, 東京\r\n"
    content = (b"From: alice@example.com\r\nSubject: 8bit\r\nMIME-Version: 1.0\r\n"
               b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n"
               b"\r\n" + text.encode("utf-8"))
    send(env.srv, [f"bob@{domain}"], content, sender=next(env.senders),
         mail_options=["BODY=8BITMIME"])
    env.mx.wait_for(lambda m: len(env.messages(domain)) == 1)
    [got] = env.messages(domain)
    assert got.content.isascii()
    assert got.params.body is None
    msg = email.message_from_bytes(got.content, policy=email.policy.default)
    assert msg["Content-Transfer-Encoding"] == "quoted-printable"
    assert msg.get_content().replace("\r\n", "\n") == text.replace("\r\n", "\n")


def test_smtputf8_to_server_without_it_fails_5_6_7(env: Shared) -> None:
    domain, sender = env.domain("ascii"), next(env.senders)
    env.mx.smtputf8 = False
    send(env.srv, [f"bob@{domain}"], "Subject: ü\r\n\r\nx\r\n".encode(), sender=sender,
         mail_options=["SMTPUTF8", "BODY=8BITMIME"])
    [report] = dsn_for(env, sender)
    assert report[0]["status"] == "5.6.7"
    assert env.messages(domain) == []


def test_drop_mid_data_deferred_no_duplicate(env: Shared) -> None:
    domain = env.domain("drop")
    env.mx.drop_in_data = 1
    before = env.mx.connections
    send(env.srv, [f"bob@{domain}"], MESSAGE + (b"x" * 70 + b"\r\n") * 5000,
         sender=next(env.senders))
    state = wait_for(lambda: (env.state(f"bob@{domain}") or {}).get("state") == "deferred"
                     and env.state(f"bob@{domain}"))
    assert state["last_reply"]["enhanced"] == "4.4.2"
    assert env.messages(domain) == []
    assert env.srv.pigeon("queue", "flush").returncode == 0
    env.mx.wait_for(lambda m: len(env.messages(domain)) == 1)
    env.settled(domain)
    assert len(env.messages(domain)) == 1
    assert env.mx.connections - before == 2


def test_too_many_recipients_452_more_transactions(env: Shared) -> None:
    domain = env.domain("many")
    env.mx.max_recipients = 2
    rcpts = [f"user{i}@{domain}" for i in range(5)]
    send(env.srv, rcpts, sender=next(env.senders))
    env.mx.wait_for(lambda m: sum(len(x.recipients) for x in env.messages(domain)) == 5)
    got = env.messages(domain)
    assert [x.recipients for x in got] == [rcpts[:2], rcpts[2:4], rcpts[4:]]
    assert len({x.connection for x in got}) == 1
    env.settled(domain)


def test_server_greeting_with_our_name_is_a_loop(env: Shared) -> None:
    domain, sender = env.domain("myself"), next(env.senders)
    env.mx.hostname = "mx.example.com"
    send(env.srv, [f"bob@{domain}"], sender=sender)
    [report] = dsn_for(env, sender)
    assert report[0]["status"] == "5.4.6"
    assert env.messages(domain) == []


# -- connection reuse, routes, smarthost, loops -----------------------------------------------


def test_preferred_mx_refuses_secondary_used(tmp_path: Path, zone: ZoneServer) -> None:
    zone.add("example.net", "MX", "10 mx1.example.net").add("mx1.example.net", "A", "127.0.0.2")
    zone.add("example.net", "MX", "20 mx2.example.net").add("mx2.example.net", "A", "127.0.0.3")
    with FakeMx(host="127.0.0.3", hostname="mx2.example.net") as mx2, \
            pigeon(tmp_path, zone, mx2.port) as srv:
        send(srv, ["bob@example.net"])
        mx2.wait_for(lambda m: len(m.messages) == 1)
        wait_for(lambda: queue(srv) == [])
        log = srv.log()
        assert "connect to mx1.example.net[127.0.0.2]" in log
        assert "Connection refused" in log


def test_connection_reuse_100_messages(tmp_path: Path, zone: ZoneServer) -> None:
    mx_zone(zone)
    limit = 4
    # The MX refuses sessions while the 100 messages are queued, so that all of them are
    # due at once when it opens (after `pigeon queue flush`).
    with FakeMx(host="127.0.0.2", greeting=Reply(421, "4.3.2", "busy")) as mx, pigeon(
        tmp_path, zone, mx.port,
        delivery={"connections_per_destination": limit, "idle_time": 10},
    ) as srv:
        with smtplib.SMTP("127.0.0.1", srv.port, timeout=30) as s:
            for i in range(100):
                s.sendmail("alice@example.com", [f"user{i % 7}@example.net"],
                           MESSAGE.replace(b"outbound", f"outbound {i}".encode()))
        wait_for(lambda: len(queue(srv)) == 100 and all(
            r["state"] == "deferred" for m in queue(srv) for r in m["recipients"]))
        with mx._lock:
            mx.greeting = None
            mx.connections = 0
            mx.transactions.clear()
            mx.max_parallel = 0
        assert srv.pigeon("queue", "flush").returncode == 0
        mx.wait_for(lambda m: len(m.messages) == 100, timeout=60)
        assert mx.connections <= limit
        assert mx.max_parallel <= limit
        assert sum(mx.transactions.values()) == 100
        assert all(n >= 2 for n in mx.transactions.values()), mx.transactions
        wait_for(lambda: queue(srv) == [])


def test_route_to_bracketed_host_skips_mx(tmp_path: Path, zone: ZoneServer) -> None:
    with FakeMx(host="127.0.0.3") as mx, pigeon(
        tmp_path, zone, 25,
        routes={'"example.org"': f"smtp:[127.0.0.3]:{mx.port}",
                '".example.org"': f"smtp:[127.0.0.3]:{mx.port}"},
    ) as srv:
        send(srv, ["bob@example.org", "eve@sub.example.org"])
        mx.wait_for(lambda m: len(m.messages) == 1)
        assert mx.messages[0].recipients == ["bob@example.org", "eve@sub.example.org"]
    assert not any(name.endswith("example.org") for name, _ in zone.queries)


def _relay_password(tmp_path: Path, password: str) -> Path:
    path = tmp_path / "relay-password"
    path.write_text(password + "\n", encoding="utf-8")
    path.chmod(0o600)
    return path


def test_smarthost_starttls_and_auth(tmp_path: Path, zone: ZoneServer) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("relay.example.net")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(ctx)
    mx_zone(zone)  # never used: the smarthost takes everything
    with FakeMx(host="127.0.0.3", hostname="relay.example.net", tls_context=ctx,
                auth_users={"relayuser": "s3cret"}) as relay, pigeon(
        tmp_path, zone, 25,
        relay={"host": f"127.0.0.3:{relay.port}", "tls": "starttls", "username": "relayuser",
               "password_file": str(_relay_password(tmp_path, "s3cret"))},
    ) as srv:
        send(srv, ["bob@example.net", "dave@example.org"])
        relay.wait_for(lambda m: len(m.messages) == 1)
        got = relay.messages[0]
        assert got.tls and got.user == "relayuser"
        assert got.recipients == ["bob@example.net", "dave@example.org"]
        wait_for(lambda: queue(srv) == [])
        # AUTH was never offered (nor sent) before STARTTLS.
        first_ehlo = bytes(relay.wire[1]).split(b"STARTTLS", 1)[0]
        assert b"AUTH" not in first_ehlo
    assert not any(name.endswith("example.net") for name, _ in zone.queries)


def test_smarthost_wrong_password_defers(tmp_path: Path, zone: ZoneServer) -> None:
    ca = trustme.CA()
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("relay.example.net").configure_cert(ctx)
    with FakeMx(host="127.0.0.3", tls_context=ctx, auth_users={"relayuser": "right"}) as relay, \
            pigeon(tmp_path, zone, 25,
                   relay={"host": f"127.0.0.3:{relay.port}", "username": "relayuser",
                          "password_file": str(_relay_password(tmp_path, "wrong"))}) as srv:
        send(srv, ["bob@example.net"])
        state = wait_for(lambda: recipient_states(srv).get("bob@example.net", {}).get(
            "state") == "deferred" and recipient_states(srv)["bob@example.net"])
        assert state["last_reply"]["code"] // 100 == 4
        assert "535" in state["last_reply"]["text"]
        assert relay.messages == []


def test_smarthost_without_starttls_gets_no_password(tmp_path: Path, zone: ZoneServer) -> None:
    with FakeMx(host="127.0.0.3", auth_users={"relayuser": "s3cret"}) as relay, \
            pigeon(tmp_path, zone, 25,
                   relay={"host": f"127.0.0.3:{relay.port}", "username": "relayuser",
                          "password_file": str(_relay_password(tmp_path, "s3cret"))}) as srv:
        send(srv, ["bob@example.net"])
        state = wait_for(lambda: recipient_states(srv).get("bob@example.net", {}).get(
            "state") == "deferred" and recipient_states(srv)["bob@example.net"])
        assert state["last_reply"]["enhanced"] == "4.7.4"
        assert b"AUTH" not in bytes(relay.wire[1])
        assert b"s3cret" not in bytes(relay.wire[1])


def test_mx_pointing_at_ourselves_fails_5_4_6(tmp_path: Path, zone: ZoneServer) -> None:
    port = free_port("127.0.0.1")
    zone.add("example.net", "MX", "10 localhost.example.net")
    zone.add("localhost.example.net", "A", "127.0.0.1")
    config = {
        "dns": {"nameservers": [zone.nameserver], "timeout": 3},
        "delivery": {"smtp_port": port},
        "relay": {"trusted_networks": ["127.0.0.0/8"]},
    }
    srv = PigeonServer(tmp_path, sections=config, listen_ports={"smtp": port}).start()
    try:
        send(srv, ["loop@example.net"])
        [report] = dsn_reports(srv, 1)
        assert report[0]["status"] == "5.4.6"
        assert "loops back to myself" in report[0]["diagnostic-code"]
        wait_for(lambda: queue(srv) == [])
        # No connection to itself was made: one inbound session only (the test's).
        assert srv.log().count(" connect from [") == 1
    finally:
        srv.stop()


# -- two Pigeons ----------------------------------------------------------------------------


def test_two_pigeons_exchange_mail_both_ways(tmp_path: Path, zone: ZoneServer) -> None:
    port = free_port("127.0.0.2", "127.0.0.3")
    zone.add("example.test", "MX", "10 mx.example.test").add("mx.example.test", "A", "127.0.0.2")
    zone.add("example.net", "MX", "10 mx.example.net").add("mx.example.net", "A", "127.0.0.3")
    common = {
        "dns": {"nameservers": [zone.nameserver], "timeout": 3},
        "delivery": {"smtp_port": port},
        "relay": {"trusted_networks": ["127.0.0.1/32"]},
    }
    a = PigeonServer(tmp_path / "a", sections=common, mailboxes=["alice@example.test"],
                     hostname="mx.example.test", local_domains=["example.test"],
                     listen_host="127.0.0.2", listen_ports={"smtp": port})
    b = PigeonServer(tmp_path / "b", sections=common, mailboxes=["bob@example.net"],
                     hostname="mx.example.net", local_domains=["example.net"],
                     listen_host="127.0.0.3", listen_ports={"smtp": port})
    a.start()
    try:
        b.start()
        try:
            for srv, sender, rcpt in ((a, "alice@example.test", "bob@example.net"),
                                      (b, "bob@example.net", "alice@example.test")):
                body = f"Subject: from {sender}\r\n\r\nhi {rcpt}\r\n".encode()
                with smtplib.SMTP(srv.listen_host, port, timeout=30) as s:
                    s.sendmail(sender, [rcpt], body)
            [to_bob] = delivered(b, "bob@example.net", 1)
            [to_alice] = delivered(a, "alice@example.test", 1)
            assert to_bob.read_bytes().endswith(b"Subject: from alice@example.test\r\n\r\n"
                                                b"hi bob@example.net\r\n")
            assert to_alice.read_bytes().endswith(b"Subject: from bob@example.net\r\n\r\n"
                                                  b"hi alice@example.test\r\n")
            # Each passed through the other's MTA: two Received fields.
            assert to_bob.read_bytes().count(b"\r\nReceived: ") == 2
        finally:
            b.stop()
    finally:
        a.stop()


# -- real Postfix -----------------------------------------------------------------------------


@pytest.mark.slow
def test_postfix_receives_by_mx_byte_identical(tmp_path: Path, zone: ZoneServer) -> None:
    from .postfix import instance_dir, postfix_available

    if not postfix_available():
        pytest.skip("a private Postfix needs the postfix package and root")
    port = free_port("127.0.0.4")
    zone.add("example.org", "MX", "10 mx.example.org").add("mx.example.org", "A", "127.0.0.4")
    body = (b"From: alice@example.com\r\nTo: bob@example.org\r\nSubject: to postfix\r\n"
            b"\r\nline one\r\n.dotted\r\n..two dots\r\n\r\nlast line\r\n")
    pf_root = instance_dir()
    try:
        _postfix_exchange(tmp_path, zone, pf_root, port, body)
    finally:
        shutil.rmtree(pf_root, ignore_errors=True)


def _postfix_exchange(tmp_path: Path, zone: ZoneServer, pf_root: Path, port: int,
                      body: bytes) -> None:
    from .postfix import PostfixInstance

    with PostfixInstance(pf_root, "127.0.0.4", port, domain="example.org") as pf, \
            pigeon(tmp_path / "pigeon", zone, port) as srv:
        send(srv, ["bob@example.org"], body)
        [stored] = wait_for(lambda: pf.mailbox_files(), timeout=30)
        data = stored.read_bytes().replace(b"\n", b"\r\n")
        # Postfix adds Return-Path, Delivered-To and its Received; everything from
        # Pigeon's Received on is what Pigeon sent.
        pigeon_part = data[data.index(b"Received: from client.example.com"):]
        assert pigeon_part.endswith(body)
        assert b"by mx.example.com (Pigeon)" in pigeon_part
        wait_for(lambda: queue(srv) == [])
        assert "status=sent" in pf.log()
