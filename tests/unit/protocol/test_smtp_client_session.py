"""The asyncio client session over loopback: TLS modes, AUTH, HELO fallback, time limits."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import trustme

from pigeon.mail.envelope import MailParams
from pigeon.mail.reply import Reply
from pigeon.net.smtp_client import ClientTLS, SmtpClientError, SmtpClientSession, Timeouts
from tests.e2e.outbound_peer import FakeMx


@pytest.fixture(scope="module")
def server_tls() -> ssl.SSLContext:
    ca = trustme.CA()
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("mx.example.net").configure_cert(ctx)
    return ctx


@pytest.fixture
def peer() -> Iterator[FakeMx]:
    mx = FakeMx().start()
    yield mx
    mx.stop()


async def connect(mx: FakeMx, **kw: object) -> SmtpClientSession:
    return await SmtpClientSession.connect("127.0.0.1", mx.port, helo="client.example.com",
                                           timeout=10, name="mx.example.net", **kw)  # type: ignore[arg-type]


async def test_plain_session_and_two_messages(peer: FakeMx, tmp_path: Path) -> None:
    s = await connect(peer, tls=ClientTLS("none"))
    assert not s.tls_active and "PIPELINING" in s.extensions
    assert s.remote_host == "mx.example.net[127.0.0.1]" and s.server_name == "mx.example.net"
    path = tmp_path / "m"
    path.write_bytes(b"Subject: file\r\n\r\n" + b"x" * 70 + b"\r\n")
    r1 = await s.send_message("a@example.com", ["b@example.net"], path)
    r2 = await s.send_message("", ["c@example.net", "d@example.net"], b"Subject: 2\r\n\r\nx")
    assert r1.accepted() == [0] and r2.accepted() == [0, 1]
    assert s.messages_sent == 2 and s.is_usable
    await s.quit()
    assert not s.is_usable
    assert [m.content for m in peer.messages] == [path.read_bytes(), b"Subject: 2\r\n\r\nx\r\n"]
    wire = bytes(peer.wire[1])
    assert wire.count(b"RSET\r\n") == 1  # only before the second message
    assert b"RSET\r\nMAIL FROM:<>" in wire


async def test_opportunistic_starttls(peer: FakeMx, server_tls: ssl.SSLContext) -> None:
    peer.tls_context = server_tls
    s = await connect(peer)
    assert s.tls_active and "STARTTLS" not in s.extensions
    result = await s.send_message("a@example.com", ["b@example.net"], b"Subject: t\r\n\r\nx\r\n")
    assert result.accepted() == [0]
    await s.quit()
    assert peer.messages[0].tls


async def test_starttls_required_but_not_offered(peer: FakeMx) -> None:
    with pytest.raises(SmtpClientError) as info:
        await connect(peer, tls=ClientTLS("starttls"))
    assert (info.value.reply.code, str(info.value.reply.enhanced)) == (421, "4.7.4")
    assert info.value.stage == "starttls"


async def test_verified_tls_with_the_right_ca(server_tls: ssl.SSLContext, tmp_path: Path) -> None:
    ca = trustme.CA()
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("relay.example.net").configure_cert(ctx)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    with FakeMx(tls_context=ctx) as mx:
        good = ClientTLS("starttls", verify=True, server_hostname="relay.example.net",
                         ca_file=ca_file)
        s = await connect(mx, tls=good)
        assert s.tls_active
        await s.quit()
        wrong_name = ClientTLS("starttls", verify=True, server_hostname="other.example.net",
                               ca_file=ca_file)
        with pytest.raises(SmtpClientError) as info:
            await connect(mx, tls=wrong_name)
        assert str(info.value.reply.enhanced) == "4.7.5"


async def test_opportunistic_falls_back_when_the_handshake_fails() -> None:
    broken = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)  # no certificate
    with FakeMx(tls_context=broken) as mx:
        s = await connect(mx)
        assert not s.tls_active
        assert mx.connections == 2
        await s.quit()


async def test_implicit_tls_and_auth(server_tls: ssl.SSLContext) -> None:
    with FakeMx(tls_context=server_tls, implicit_tls=True, auth_users={"u": "p"}) as mx:
        s = await connect(mx, tls=ClientTLS("implicit"))
        assert s.tls_active
        await s.authenticate("u", "p")
        await s.send_message("a@example.com", ["b@example.net"], b"x\r\n")
        await s.quit()
        assert mx.messages[0].user == "u"


async def test_auth_login_and_refusals() -> None:
    with FakeMx(auth_users={"u": "p"}, auth_mechanisms=("LOGIN",)) as mx:
        s = await connect(mx, tls=ClientTLS("none"))
        await s.authenticate("u", "p")  # plain text chosen on purpose: mode none
        await s.quit()
        s = await connect(mx, tls=ClientTLS("none"))
        with pytest.raises(SmtpClientError) as info:
            await s.authenticate("u", "wrong")
        assert (info.value.reply.code, str(info.value.reply.enhanced)) == (535, "5.7.8")
        await s.quit()
        s = await connect(mx)  # opportunistic, but no STARTTLS offered
        with pytest.raises(SmtpClientError) as info:
            await s.authenticate("u", "p")
        assert info.value.reply.code == 454 and "without TLS" in info.value.reply.text
        await s.quit()
        assert b"dQ==" not in bytes(mx.wire[3])  # the user name never left


async def test_auth_not_offered() -> None:
    with FakeMx() as mx:
        s = await connect(mx, tls=ClientTLS("none"))
        with pytest.raises(SmtpClientError) as info:
            await s.authenticate("u", "p")
        assert "no usable mechanism" in info.value.reply.text
        await s.quit()


async def test_helo_fallback() -> None:
    with FakeMx(refuse_ehlo=True) as mx:
        s = await connect(mx)
        assert s.extensions == {}
        result = await s.send_message("a@example.com", ["b@example.net"], b"x\r\n",
                                      mail_params=MailParams(ret="FULL"))
        assert result.accepted() == [0]
        await s.quit()
        assert b"HELO client.example.com\r\n" in bytes(mx.wire[1])
        assert b"RET=" not in bytes(mx.wire[1])


async def test_greeting_refused() -> None:
    with FakeMx(greeting=Reply(554, None, "mx.example.net no service")) as mx:
        with pytest.raises(SmtpClientError) as info:
            await connect(mx)
        assert info.value.reply.code == 554 and info.value.stage == "greeting"


async def test_local_refusals_send_nothing(peer: FakeMx) -> None:
    peer.smtputf8 = False
    peer.eightbitmime = False
    peer.max_size = 100
    s = await connect(peer, tls=ClientTLS("none"))
    utf8 = await s.send_message("a@example.com", ["bö@example.net"], b"x\r\n")
    assert (utf8.mail_reply.code, str(utf8.mail_reply.enhanced)) == (553, "5.6.7")
    assert utf8.rcpt_replies == [utf8.mail_reply] and utf8.accepted() == []
    eight = await s.send_message("a@example.com", ["b@example.net"], b"x\r\n",
                                 mail_params=MailParams(body="8BITMIME"))
    assert str(eight.mail_reply.enhanced) == "5.6.3"
    big = await s.send_message("a@example.com", ["b@example.net"], b"x" * 101)
    assert (big.mail_reply.code, str(big.mail_reply.enhanced)) == (552, "5.3.4")
    await s.quit()
    assert b"MAIL" not in bytes(peer.wire[1])


async def test_without_pipelining_stops_early(peer: FakeMx) -> None:
    peer.pipelining = False
    peer.rcpt_replies = {"x@example.net": Reply(550, "5.1.1", "unknown")}
    s = await connect(peer)
    result = await s.send_message("a@example.com", ["x@example.net"], b"x\r\n")
    assert result.data_reply is None and result.accepted() == []
    assert result.reply_for(0).code == 550
    result = await s.send_message("a b@example.com", ["y@example.net"], b"x\r\n")
    assert result.mail_reply.code == 553 or result.mail_reply.code == 501
    assert result.rcpt_replies == [result.mail_reply]
    await s.quit()
    wire = bytes(peer.wire[1])
    assert b"DATA" not in wire and b"RCPT TO:<y@example.net>" not in wire


async def test_bdat(peer: FakeMx) -> None:
    s = await connect(peer)
    s.use_chunking = True
    content = b"Subject: b\r\n\r\n" + b".x\r\n" * 100_000
    result = await s.send_message("a@example.com", ["b@example.net"], content)
    assert result.accepted() == [0]
    await s.quit()
    assert peer.messages[0].content == content
    assert b"BDAT " in bytes(peer.wire[1]) and b"\r\n..x" not in bytes(peer.wire[1])


async def test_binarymime_needs_chunking(peer: FakeMx) -> None:
    s = await connect(peer)
    result = await s.send_message("a@example.com", ["b@example.net"], b"x\r\n",
                                  mail_params=MailParams(body="BINARYMIME"))
    assert str(result.mail_reply.enhanced) == "5.6.3"  # the peer offers no BINARYMIME
    await s.quit()


async def _raw_server(handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter],
                                        Awaitable[None]]) -> asyncio.base_events.Server:
    return await asyncio.start_server(handler, "127.0.0.1", 0)


async def test_timeout_waiting_for_a_reply() -> None:
    async def silent_after_greeting(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(b"220 slow.example ESMTP\r\n")
        await r.read(100)
        await r.read(100)  # until the client gives up and closes
        w.close()

    server = await _raw_server(silent_after_greeting)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(SmtpClientError) as info:
            await SmtpClientSession.connect("127.0.0.1", port, helo="c.example", timeout=0.3)
        assert (info.value.reply.code, str(info.value.reply.enhanced)) == (421, "4.4.2")
        assert "timed out while performing the EHLO handshake" in info.value.reply.text
    finally:
        server.close()


async def _ssh(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    w.write(b"SSH-2.0-OpenSSH_9.2\r\n")
    await w.drain()
    await r.read(100)
    w.close()


async def _hangs_up(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    w.write(b"220 x ESMTP\r\n")
    await r.read(100)
    w.close()


@pytest.mark.parametrize(("handler", "enhanced"), [(_ssh, "4.5.0"), (_hangs_up, "4.4.2")])
async def test_not_smtp_and_lost_connection(
    handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
    enhanced: str,
) -> None:
    server = await _raw_server(handler)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(SmtpClientError) as info:
            await SmtpClientSession.connect("127.0.0.1", port, helo="c.example", timeout=5)
        assert str(info.value.reply.enhanced) == enhanced
    finally:
        server.close()


def test_timeouts_scale_with_the_command_limit() -> None:
    assert Timeouts.scaled(300.0) == Timeouts()
    t = Timeouts.scaled(30.0, connect=5.0)
    assert (t.connect, t.greeting, t.command, t.data_start, t.data_block, t.data_end) == (
        5.0, 30.0, 30.0, 12.0, 18.0, 60.0)


def _loop_factories() -> list[object]:
    factories: list[object] = [pytest.param(asyncio.new_event_loop, id="asyncio")]
    try:
        import uvloop
    except ImportError:  # the "speed" extra is not installed
        return factories
    return [*factories, pytest.param(uvloop.new_event_loop, id="uvloop")]


@pytest.mark.parametrize("loop_factory", _loop_factories())
def test_write_after_the_connection_closed_is_a_lost_connection(
        peer: FakeMx, loop_factory: Callable[[], asyncio.AbstractEventLoop]) -> None:
    async def run() -> None:
        s = await connect(peer, tls=ClientTLS("none"))
        s._io.writer.transport.abort()  # gone under the session, as when the peer resets
        for _ in range(5):  # let the loop finish closing it (connection_lost runs)
            await asyncio.sleep(0)
        with pytest.raises(SmtpClientError) as info:
            await s.send_message("a@example.com", ["b@example.net"], b"Subject: x\r\n\r\nx\r\n")
        reply = info.value.reply
        assert (reply.code, str(reply.enhanced)) == (421, "4.4.2")
        assert reply.text.startswith("lost connection with mx.example.net[127.0.0.1] while")
        assert reply.text.endswith("(ConnectionResetError)")

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(run())
    assert peer.messages == []
