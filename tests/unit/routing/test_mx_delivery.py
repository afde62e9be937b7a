"""The remote delivery agent with fakes: a static resolver and scripted peers (in process)."""

from __future__ import annotations

import asyncio
import email
import email.policy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pigeon.config import Settings
from pigeon.delivery.mime7bit import ConversionError, has_8bit, to_7bit
from pigeon.delivery.remote import RemoteDelivery, result_for
from pigeon.mail.reply import Reply
from pigeon.net.smtp_client_pool import ConnectionPool
from pigeon.queue.model import AttemptResult, QueuedMessage, QueuedRecipient
from pigeon.routing.mx import StaticResolver
from tests.e2e.outbound_peer import FakeMx

CONTENT = b"Subject: unit\r\n\r\nbody line\r\n.dot line\r\n"


@pytest.fixture
def mx() -> Iterator[FakeMx]:
    peer = FakeMx(host="127.0.0.2").start()
    yield peer
    peer.stop()


def agent(port: int, records: dict[tuple[str, str], Any] | None = None, *,
          local: list[tuple[str, int]] | None = None, **delivery: Any) -> RemoteDelivery:
    settings = Settings.model_validate({
        "server": {"hostname": "mx.example.com"},
        "delivery": {"smtp_port": port, "connect_timeout": 5, **delivery},
    })
    resolver = StaticResolver(records if records is not None else {
        ("example.net", "MX"): [(10, "mx.example.net")],
        ("mx.example.net", "A"): ["127.0.0.2"],
    })
    return RemoteDelivery(settings, resolver=resolver,
                          local_addresses=lambda: list(local or []))


def message(tmp_path: Path, addresses: list[str], content: bytes = CONTENT,
            **kw: Any) -> QueuedMessage:
    spool = tmp_path / f"spool-{len(list(tmp_path.iterdir()))}"
    spool.write_bytes(content)
    rcpts = [QueuedRecipient(i + 1, a, a, route="remote") for i, a in enumerate(addresses)]
    return QueuedMessage("Q1", "alice@example.com", spool, len(content), 0.0,
                         recipients=rcpts, **kw)


async def deliver(a: RemoteDelivery, m: QueuedMessage) -> list[AttemptResult]:
    try:
        return await a.deliver(m, m.recipients)
    finally:
        await a.aclose()


def test_result_for() -> None:
    assert result_for(Reply(250, "2.0.0", "ok"), "h[1]") == AttemptResult(
        "delivered", 250, "2.0.0", "ok", "h[1]")
    assert result_for(Reply(450, None, "busy")).status == "deferred"
    assert result_for(Reply(450, None, "busy")).enhanced == "4.0.0"
    assert result_for(Reply(550, None, "no")).enhanced == "5.0.0"


async def test_one_transaction_for_one_domain(tmp_path: Path, mx: FakeMx) -> None:
    m = message(tmp_path, ["a@example.net", "b@example.net"])
    results = await deliver(agent(mx.port), m)
    assert [r.status for r in results] == ["delivered", "delivered"]
    assert results[0].remote_host == "mx.example.net[127.0.0.2]"
    assert [x.recipients for x in mx.messages] == [["a@example.net", "b@example.net"]]
    assert mx.messages[0].content == CONTENT
    assert mx.messages[0].params.size == len(CONTENT)


async def test_groups_by_domain_results_in_order(tmp_path: Path) -> None:
    with FakeMx(host="127.0.0.2") as one, FakeMx(host="127.0.0.3", port=one.port) as two:
        records = {
            ("example.net", "MX"): [(10, "mx.example.net")],
            ("mx.example.net", "A"): ["127.0.0.2"],
            ("example.org", "MX"): [(10, "mx.example.org")],
            ("mx.example.org", "A"): ["127.0.0.3"],
        }
        m = message(tmp_path, ["a@example.net", "b@example.org", "c@example.net",
                               "bad-address", "d@nowhere.example"])
        results = await deliver(agent(one.port, records), m)
        assert [r.status for r in results] == [
            "delivered", "delivered", "delivered", "failed", "failed"]
        assert results[1].remote_host == "mx.example.org[127.0.0.3]"
        assert results[3].enhanced == "5.1.3"
        assert results[4].enhanced == "5.1.2"
        assert [x.recipients for x in one.messages] == [["a@example.net", "c@example.net"]]
        assert [x.recipients for x in two.messages] == [["b@example.org"]]


async def test_per_recipient_results(tmp_path: Path, mx: FakeMx) -> None:
    mx.rcpt_replies = {"later@example.net": Reply(450, "4.2.1", "mailbox busy"),
                       "gone@example.net": Reply(550, "5.1.1", "no such user")}
    m = message(tmp_path, ["ok@example.net", "later@example.net", "gone@example.net"])
    results = await deliver(agent(mx.port), m)
    assert [(r.status, r.code, r.enhanced) for r in results] == [
        ("delivered", 250, "2.0.0"), ("deferred", 450, "4.2.1"), ("failed", 550, "5.1.1")]
    assert results[2].text == "no such user"


async def test_client_side_recipient_limit_and_452(tmp_path: Path, mx: FakeMx) -> None:
    mx.max_recipients = 2
    addresses = [f"u{i}@example.net" for i in range(7)]
    results = await deliver(agent(mx.port, max_recipients_per_transaction=3),
                            message(tmp_path, addresses))
    assert all(r.status == "delivered" for r in results)
    # Three per transaction by our limit, two accepted by theirs; the rest go again.
    assert [x.recipients for x in mx.messages] == [
        addresses[0:2], addresses[2:4], addresses[4:6], addresses[6:7]]
    assert mx.connections == 1


async def test_all_refused_with_452_is_deferred(tmp_path: Path, mx: FakeMx) -> None:
    mx.rcpt_replies = {"a@example.net": Reply(452, "4.5.3", "too many recipients")}
    results = await deliver(agent(mx.port), message(tmp_path, ["a@example.net"]))
    assert (results[0].status, results[0].code) == ("deferred", 452)


async def test_mail_refused_applies_to_everyone(tmp_path: Path, mx: FakeMx) -> None:
    mx.pipelining = False
    mx.rcpt_replies = {}
    m = message(tmp_path, ["a@example.net", "b@example.net"])
    m.reverse_path = "bad sender@example.com"  # refused by the server's parser
    results = await deliver(agent(mx.port), m)
    assert [r.status for r in results] == ["failed", "failed"]
    assert results[0].code == 553 or results[0].code == 501


async def test_greeting_refused_next_mx(tmp_path: Path) -> None:
    with FakeMx(host="127.0.0.2", greeting=Reply(554, None, "go away")) as first, \
            FakeMx(host="127.0.0.3", port=first.port) as second:
        records = {
            ("example.net", "MX"): [(10, "a.example.net"), (20, "b.example.net")],
            ("a.example.net", "A"): ["127.0.0.2"],
            ("b.example.net", "A"): ["127.0.0.3"],
        }
        results = await deliver(agent(first.port, records), message(tmp_path, ["x@example.net"]))
        assert results[0].status == "delivered"
        assert results[0].remote_host == "b.example.net[127.0.0.3]"
        assert first.messages == [] and len(second.messages) == 1


async def test_all_hosts_refuse_permanently_fails(tmp_path: Path) -> None:
    with FakeMx(host="127.0.0.2", greeting=Reply(554, None, "go away")) as only:
        results = await deliver(agent(only.port), message(tmp_path, ["x@example.net"]))
        assert (results[0].status, results[0].code) == ("failed", 554)


async def test_no_server_defers(tmp_path: Path, mx: FakeMx) -> None:
    port = mx.port
    mx.stop()
    results = await deliver(agent(port), message(tmp_path, ["x@example.net"]))
    assert (results[0].status, results[0].code, results[0].enhanced) == (
        "deferred", 421, "4.4.1")
    assert "Connection refused" in results[0].text


async def test_mx_hosts_without_addresses(tmp_path: Path) -> None:
    records: dict[tuple[str, str], Any] = {("example.net", "MX"): [(10, "gone.example.net")]}
    results = await deliver(agent(2525, records), message(tmp_path, ["x@example.net"]))
    assert (results[0].status, results[0].enhanced) == ("failed", "5.4.4")
    records[("gone.example.net", "A")] = "temporary"
    results = await deliver(agent(2525, records), message(tmp_path, ["x@example.net"]))
    assert (results[0].status, results[0].enhanced) == ("deferred", "4.4.3")


async def test_loop_by_listener_address(tmp_path: Path, mx: FakeMx) -> None:
    a = agent(mx.port, local=[("0.0.0.0", mx.port)])
    results = await deliver(a, message(tmp_path, ["x@example.net"]))
    assert (results[0].status, results[0].code, results[0].enhanced) == (
        "failed", 554, "5.4.6")
    assert results[0].text == "mail for example.net loops back to myself"
    assert mx.connections == 0


async def test_lower_preference_than_ourselves_not_tried(tmp_path: Path, mx: FakeMx) -> None:
    records = {
        ("example.net", "MX"): [(10, "mx.example.com"), (20, "backup.example.net")],
        ("mx.example.com", "A"): ["192.0.2.1"],
        ("backup.example.net", "A"): ["127.0.0.2"],
    }
    results = await deliver(agent(mx.port, records), message(tmp_path, ["x@example.net"]))
    assert results[0].enhanced == "5.4.6"
    assert mx.connections == 0


async def test_loop_by_greeting_name(tmp_path: Path, mx: FakeMx) -> None:
    mx.hostname = "MX.example.com"
    results = await deliver(agent(mx.port), message(tmp_path, ["x@example.net"]))
    assert results[0].enhanced == "5.4.6"
    assert mx.messages == []


async def test_dsn_parameters_passed_when_offered(tmp_path: Path, mx: FakeMx) -> None:
    m = message(tmp_path, ["x@example.net"], ret="HDRS", envid="env-1")
    m.recipients[0].notify = frozenset({"FAILURE"})
    m.recipients[0].original = "alias@example.com"
    results = await deliver(agent(mx.port), m)
    assert results[0].status == "delivered"
    assert b"NOTIFY=FAILURE ORCPT=rfc822;alias@example.com" in bytes(mx.wire[1])
    assert b"RET=HDRS ENVID=env-1" in bytes(mx.wire[1])


async def test_8bit_converted_only_without_8bitmime(tmp_path: Path, mx: FakeMx) -> None:
    content = "Subject: x\r\n\r\nGrüße\r\n".encode()
    results = await deliver(agent(mx.port), message(tmp_path, ["x@example.net"], content,
                                                    body="8BITMIME"))
    assert results[0].status == "delivered"
    assert mx.messages[0].content == content
    assert mx.messages[0].params.body == "8BITMIME"
    mx.eightbitmime = False
    results = await deliver(agent(mx.port), message(tmp_path, ["x@example.net"], content,
                                                    body="8BITMIME"))
    assert results[0].status == "delivered"
    assert mx.messages[1].content.isascii()
    bad = "Subject: Grüße\r\n\r\nGrüße\r\n".encode()
    results = await deliver(agent(mx.port), message(tmp_path, ["x@example.net"], bad))
    assert (results[0].status, results[0].enhanced) == ("failed", "5.6.3")


async def test_reused_connection_and_concurrency_limit(tmp_path: Path, mx: FakeMx) -> None:
    a = agent(mx.port, connections_per_destination=2, idle_time=30)
    messages = [message(tmp_path, [f"u{i}@example.net"]) for i in range(12)]
    try:
        results = await asyncio.gather(*(a.deliver(m, m.recipients) for m in messages))
    finally:
        await a.aclose()
    assert all(r[0].status == "delivered" for r in results)
    assert mx.connections <= 2 and mx.max_parallel <= 2
    assert sum(mx.transactions.values()) == 12
    assert a.pool.reused >= 10


async def test_dead_cached_connection_is_replaced(tmp_path: Path, mx: FakeMx) -> None:
    a = agent(mx.port, idle_time=30)
    try:
        first = message(tmp_path, ["a@example.net"])
        assert (await a.deliver(first, first.recipients))[0].status == "delivered"
        # The server goes away while the connection idles; a new server takes its place.
        port = mx.port
        mx.stop()
        with FakeMx(host="127.0.0.2", port=port) as again:
            second = message(tmp_path, ["b@example.net"])
            results = await a.deliver(second, second.recipients)
            assert results[0].status == "delivered"
            assert again.connections == 1
    finally:
        await a.aclose()


# -- the pool ------------------------------------------------------------------------------------


class _Session:
    def __init__(self) -> None:
        self.messages_sent = 1
        self.usable = True
        self.quits = 0

    @property
    def is_usable(self) -> bool:
        return self.usable

    async def quit(self) -> None:
        self.quits += 1


async def test_pool_limits_and_reuse() -> None:
    pool = ConnectionPool(per_destination=2, total=3, idle_time=30, max_messages=5)
    assert await pool.acquire("a") is None
    assert await pool.acquire("a") is None
    waiter = asyncio.ensure_future(pool.acquire("a"))
    await asyncio.sleep(0)
    assert not waiter.done()
    s = _Session()
    await pool.release("a", s)
    assert await asyncio.wait_for(waiter, 5) is s
    assert pool.open_to("a") == 2 and pool.reused == 1
    assert await pool.acquire("b") is None
    assert pool.open_connections == 3
    # The global limit: "c" waits until something frees; an idle one is evicted for it.
    waiter = asyncio.ensure_future(pool.acquire("c"))
    await asyncio.sleep(0)
    assert not waiter.done()
    idle = _Session()
    await pool.release("b", idle)
    assert await asyncio.wait_for(waiter, 5) is None
    await asyncio.sleep(0)
    assert idle.quits == 1 and pool.open_to("b") == 0
    await pool.close()
    with pytest.raises(RuntimeError):
        await pool.acquire("a")


async def test_pool_drops_unusable_and_worn_out() -> None:
    pool = ConnectionPool(per_destination=1, total=10, idle_time=30, max_messages=2)
    assert await pool.acquire("a") is None
    dead = _Session()
    dead.usable = False
    await pool.release("a", dead)
    await asyncio.sleep(0)
    assert dead.quits == 1 and pool.open_to("a") == 0
    assert await pool.acquire("a") is None
    worn = _Session()
    worn.messages_sent = 2
    await pool.release("a", worn)
    assert await pool.acquire("a") is None  # not reused: carried its maximum
    await pool.release("a", None)
    assert pool.open_connections == 0
    await pool.close()


async def test_pool_idle_expiry() -> None:
    pool = ConnectionPool(per_destination=1, total=1, idle_time=0, max_messages=9)
    assert await pool.acquire("a") is None
    s = _Session()
    await pool.release("a", s)
    for _ in range(100):
        if s.quits:
            break
        await asyncio.sleep(0.01)
    assert s.quits == 1 and pool.open_connections == 0
    await pool.close()


# -- 8-bit to 7-bit -------------------------------------------------------------------------


_TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), max_size=300)


@settings(max_examples=60)
@given(_TEXT, st.sampled_from(["text/plain; charset=utf-8", "text/html; charset=utf-8",
                               "application/octet-stream"]))
def test_to_7bit_round_trip(text: str, ctype: str) -> None:
    body = text.encode("utf-8").replace(b"\r", b"").replace(b"\n", b"\r\n")
    content = (b"Subject: t\r\nMIME-Version: 1.0\r\nContent-Type: " + ctype.encode()
               + b"\r\nContent-Transfer-Encoding: 8bit\r\n\r\n" + body)
    out = to_7bit(content)
    assert not has_8bit(out)
    if not has_8bit(content):
        assert out == content
        return
    msg = email.message_from_bytes(out, policy=email.policy.compat32)
    decoded = msg.get_payload(decode=True)
    assert isinstance(decoded, bytes)
    assert decoded.replace(b"\r\n", b"\n").rstrip(b"\n") == body.replace(
        b"\r\n", b"\n").rstrip(b"\n")


def test_to_7bit_refusals() -> None:
    with pytest.raises(ConversionError) as info:
        to_7bit("Subject: é\r\n\r\nx\r\n".encode())
    assert (info.value.reply.code, str(info.value.reply.enhanced)) == (554, "5.6.3")
    with pytest.raises(ConversionError):
        to_7bit(b"MIME-Version: 1.0\r\nContent-Type: text/plain\r\n"
                b"Content-Transfer-Encoding: base64\r\n\r\n\xff\r\n")
