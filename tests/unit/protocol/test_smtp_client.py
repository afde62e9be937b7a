"""The sans-I/O SMTP client against Pigeon's own server core, in memory (no sockets)."""

from __future__ import annotations

import pytest

from pigeon.mail.envelope import MailParams, RcptParams
from pigeon.mail.reply import Reply
from pigeon.protocol.smtp.client import (
    NEED_DATA,
    AuthContinue,
    AuthStart,
    Bdat,
    ClientConnection,
    ClientState,
    ConnectionClosed,
    Data,
    Ehlo,
    EndOfData,
    Greeting,
    Helo,
    Mail,
    Noop,
    Quit,
    Rcpt,
    ReplyReceived,
    ReplySyntaxError,
    Rset,
    StartTls,
    mail_parameters,
    parse_ehlo,
    rcpt_parameters,
)
from pigeon.protocol.smtp.errors import LocalProtocolError
from pigeon.protocol.smtp.server import ServerConfig

from .smtp_driver import Driver


class Pair:
    """A client machine joined to a server machine (h11's ConnectionPair)."""

    def __init__(self, config: ServerConfig | None = None) -> None:
        self.server = Driver(config or ServerConfig(hostname="mx.example.com"))
        self.client = ClientConnection()
        self.client.receive_data(bytes(self.server.out))
        self.wire: list[bytes] = []  # what the client wrote

    def write(self, data: bytes) -> None:
        self.wire.append(data)
        answer = self.server.feed(data)
        if answer:
            self.client.receive_data(answer)

    def send(self, *commands: object) -> None:
        """Send commands in one write (a pipelined group)."""
        self.write(b"".join(self.client.send(c) for c in commands))  # type: ignore[arg-type]

    def replies(self) -> list[ReplyReceived]:
        out = []
        while True:
            ev = self.client.next_event()
            if ev is NEED_DATA:
                return out
            assert isinstance(ev, ReplyReceived), ev
            out.append(ev)

    def codes(self) -> list[int]:
        return [r.reply.code for r in self.replies()]


def greeted(config: ServerConfig | None = None) -> Pair:
    pair = Pair(config)
    [greeting] = pair.replies()
    assert isinstance(greeting.command, Greeting)
    assert greeting.reply.code == 220
    assert pair.client.server_name == "mx.example.com"
    assert pair.client.state is ClientState.READY
    pair.send(Ehlo("client.example.net"))
    [ehlo] = pair.replies()
    assert ehlo.reply.code == 250
    assert pair.client.state is ClientState.IDLE
    return pair


def test_ehlo_reads_extensions() -> None:
    pair = greeted(ServerConfig(hostname="mx.example.com", max_message_size=1000))
    assert pair.client.extensions == {
        "PIPELINING": "", "SIZE": "1000", "8BITMIME": "", "SMTPUTF8": "",
        "ENHANCEDSTATUSCODES": "", "CHUNKING": "", "DSN": "", "HELP": "",
    }
    assert pair.client.esmtp
    assert pair.client.ehlo_name == "mx.example.com"


def test_pipelined_transaction_replies_matched_in_order() -> None:
    pair = greeted()
    rcpts = [Rcpt("alice@example.com"), Rcpt("nobody@example.com"), Rcpt("bob@example.com")]
    pair.send(Mail("carol@example.net"), *rcpts, Data())
    assert len(pair.wire[-1].split(b"\r\n")) == 6  # one write: MAIL, 3 RCPT, DATA
    events = pair.replies()
    assert [type(e.command).__name__ for e in events] == ["Mail", "Rcpt", "Rcpt", "Rcpt", "Data"]
    assert [e.command for e in events[1:4]] == rcpts
    assert [e.reply.code for e in events] == [250, 250, 550, 250, 354]
    assert str(events[2].reply.enhanced) == "5.1.1"
    assert events[2].reply.text == "User unknown"
    assert pair.client.state is ClientState.DATA
    content = b"Subject: t\r\n\r\n.leading dot\r\n..two\r\n.\r\nlast"
    pair.write(pair.client.send_content(content[:20]))
    pair.write(pair.client.send_content(content[20:]))
    pair.write(pair.client.end_content())
    [end] = pair.replies()
    assert isinstance(end.command, EndOfData)
    assert end.reply.code == 250
    assert pair.client.state is ClientState.IDLE
    [msg] = pair.server.messages
    assert msg.recipients == ["<alice@example.com>", "<bob@example.com>"]
    assert msg.content == content + b"\r\n"  # a final CRLF is added, dots restored


def test_dot_stuffing_on_the_wire() -> None:
    pair = greeted()
    pair.send(Mail("a@example.net"), Rcpt("bob@example.com"), Data())
    pair.replies()
    wire = pair.client.send_content(b".\r\n..\r\nx\r\n.y") + pair.client.end_content()
    assert wire == b"..\r\n...\r\nx\r\n..y\r\n.\r\n"


def test_bare_lf_never_sent() -> None:
    # Transcript 006: a bare LF before "." must not reach the next hop as "\n.\r\n".
    pair = greeted()
    pair.send(Mail("a@example.net"), Rcpt("bob@example.com"), Data())
    pair.replies()
    wire = pair.client.send_content(b"a\n.\r\nb\rc\r") + pair.client.end_content()
    assert wire == b"a\r\n..\r\nb\r\nc\r\n.\r\n"
    pair.write(wire)
    assert [r.reply.code for r in pair.replies()] == [250]
    assert pair.server.messages[0].content == b"a\r\n.\r\nb\r\nc\r\n"


def test_second_transaction_after_rset() -> None:
    pair = greeted()
    for n in range(2):
        pair.send(Rset(), Mail(""), Rcpt("bob@example.com"), Data())
        assert pair.codes() == [250, 250, 250, 354]
        pair.write(pair.client.send_content(f"n: {n}\r\n".encode()) + pair.client.end_content())
        assert pair.codes() == [250]
    assert [m.content for m in pair.server.messages] == [b"n: 0\r\n", b"n: 1\r\n"]
    assert [m.reverse_path for m in pair.server.messages] == ["<>", "<>"]


def test_bdat_chunks() -> None:
    pair = greeted()
    pair.send(Mail("a@example.net"), Rcpt("bob@example.com"))
    assert pair.codes() == [250, 250]
    pair.send(Bdat(b"Subject: x\r\n"))
    pair.send(Bdat(b"\r\n.body\r\n", last=True))
    events = pair.replies()
    assert [e.reply.code for e in events] == [250, 250]
    assert all(isinstance(e.command, Bdat) for e in events)
    assert pair.server.messages[0].content == b"Subject: x\r\n\r\n.body\r\n"
    assert pair.client.state is ClientState.IDLE


def test_parameters_only_when_offered() -> None:
    pair = greeted(ServerConfig(hostname="mx.example.com", dsn=False, smtputf8=False))
    ext = pair.client.extensions
    params = MailParams(body="8BITMIME", smtputf8=True, ret="HDRS", envid="a+b=c")
    assert mail_parameters(params, ext, size=123) == ("SIZE=123", "BODY=8BITMIME")
    assert rcpt_parameters(RcptParams(notify=frozenset({"FAILURE"})), ext) == ()
    full = parse_ehlo(Reply(250, None, ["mx", "SIZE 10", "8BITMIME", "SMTPUTF8", "DSN"]))
    assert mail_parameters(params, full, size=5) == (
        "SIZE=5", "BODY=8BITMIME", "SMTPUTF8", "RET=HDRS", "ENVID=a+2Bb+3Dc")
    assert rcpt_parameters(
        RcptParams(notify=frozenset({"DELAY", "FAILURE"}), orcpt=("rfc822", "bob@example.com")),
        full,
    ) == ("NOTIFY=FAILURE,DELAY", "ORCPT=rfc822;bob@example.com")
    assert rcpt_parameters(RcptParams(notify=frozenset()), full) == ("NOTIFY=NEVER",)
    assert mail_parameters(None, {}, size=10) == ()


def test_parameters_accepted_by_the_server() -> None:
    pair = greeted()
    ext = pair.client.extensions
    params = MailParams(body="8BITMIME", smtputf8=True, ret="FULL", envid="id 1")
    pair.send(
        Mail("a@example.net", mail_parameters(params, ext, size=10)),
        Rcpt("bob@example.com", rcpt_parameters(
            RcptParams(notify=frozenset({"SUCCESS"}), orcpt=("rfc822", "b=b@example.com")),
            ext)),
    )
    assert pair.codes() == [250, 250]
    mail_event = next(e for e in pair.server.events if type(e).__name__ == "MailFrom")
    assert mail_event.params == MailParams(size=10, body="8BITMIME", smtputf8=True,  # type: ignore[attr-defined]
                                           ret="FULL", envid="id 1")


def test_helo_fallback_shape() -> None:
    client = ClientConnection()
    client.receive_data(b"220 old.example.com\r\n")
    assert isinstance(client.next_event(), ReplyReceived)
    assert client.send(Ehlo("me.example")) == b"EHLO me.example\r\n"
    client.receive_data(b"502 Command not implemented\r\n")
    ev = client.next_event()
    assert isinstance(ev, ReplyReceived) and ev.reply.code == 502
    assert client.state is ClientState.READY
    assert client.send(Helo("me.example")) == b"HELO me.example\r\n"
    client.receive_data(b"250 old.example.com\r\n")
    client.next_event()
    assert client.state is ClientState.IDLE
    assert not client.esmtp and client.extensions == {}


def test_starttls_resets_session() -> None:
    pair = greeted()
    pair.server.conn.offer_starttls = True
    pair.send(Ehlo("client.example.net"))
    pair.replies()
    assert "STARTTLS" in pair.client.extensions
    pair.send(StartTls())
    with pytest.raises(LocalProtocolError):
        pair.client.send(Noop())  # nothing may follow STARTTLS before its reply
    assert pair.codes() == [220]
    assert pair.client.state is ClientState.TLS
    pair.client.receive_data(b"250 plaintext injected\r\n")
    assert pair.client.next_event() is NEED_DATA
    with pytest.raises(LocalProtocolError):
        pair.client.send(Ehlo("x"))
    pair.client.tls_started()
    assert pair.client.tls and pair.client.extensions == {}
    assert pair.client.state is ClientState.READY
    assert pair.client.next_event() is NEED_DATA  # the injected line was discarded


def test_auth_plain_and_login_lines() -> None:
    pair = greeted()
    pair.server.conn.auth_mechanisms = ("PLAIN",)
    pair.send(AuthStart("PLAIN", b"\0alice\0secret"))
    [ev] = pair.replies()
    assert ev.reply.code == 235 and pair.client.authenticated
    client = ClientConnection()
    client.receive_data(b"220 x\r\n250 x\r\n")
    client.next_event()
    client.send(Ehlo("me"))
    client.next_event()
    assert client.send(AuthStart("LOGIN")) == b"AUTH LOGIN\r\n"
    client.receive_data(b"334 VXNlcm5hbWU6\r\n")
    client.next_event()
    assert client.state is ClientState.AUTH
    with pytest.raises(LocalProtocolError):
        client.send(Mail("a@b.example"))
    assert client.send(AuthContinue(b"alice")) == b"YWxpY2U=\r\n"
    assert client.send(AuthContinue(cancel=True)) == b"*\r\n"
    assert AuthStart("PLAIN", b"").line() == "AUTH PLAIN ="


def test_unsolicited_421_closes() -> None:
    pair = greeted()
    pair.client.receive_data(b"421 4.4.2 mx.example.com Error: timeout exceeded\r\n")
    ev = pair.client.next_event()
    assert isinstance(ev, ReplyReceived) and ev.command is None
    assert ev.reply == Reply(421, "4.4.2", "mx.example.com Error: timeout exceeded")
    assert pair.client.state is ClientState.CLOSED
    with pytest.raises(LocalProtocolError):
        pair.client.send(Noop())


def test_421_in_reply_to_a_command_closes() -> None:
    client = ClientConnection()
    client.receive_data(b"220 x\r\n")
    client.next_event()
    client.send(Ehlo("me"))
    client.receive_data(b"421 4.7.0 too many connections\r\n")
    ev = client.next_event()
    assert isinstance(ev, ReplyReceived) and isinstance(ev.command, Ehlo)
    assert client.state is ClientState.CLOSED


def test_connection_closed_lists_unanswered() -> None:
    pair = greeted()
    mail, rcpt = Mail("a@example.net"), Rcpt("bob@example.com")
    pair.client.send(mail)
    pair.client.send(rcpt)
    pair.client.receive_data(b"250 2.1.0 Ok\r\n")
    pair.client.receive_data(b"")
    first = pair.client.next_event()
    assert isinstance(first, ReplyReceived) and first.command == mail
    closed = pair.client.next_event()
    assert closed == ConnectionClosed((rcpt,))
    assert pair.client.state is ClientState.CLOSED
    assert pair.client.next_event() is NEED_DATA


def test_reply_nobody_asked_for_is_a_protocol_error() -> None:
    pair = greeted()
    pair.client.receive_data(b"250 surprise\r\n")
    with pytest.raises(ReplySyntaxError):
        pair.client.next_event()
    assert pair.client.state is ClientState.CLOSED


def test_garbage_is_a_protocol_error() -> None:
    client = ClientConnection()
    client.receive_data(b"SSH-2.0-OpenSSH_9.2\r\n")
    with pytest.raises(ReplySyntaxError):
        client.next_event()


def test_misuse_raises_local_protocol_error() -> None:
    client = ClientConnection()
    with pytest.raises(LocalProtocolError):
        client.send(Ehlo("x"))  # before the greeting
    client.receive_data(b"220 x\r\n")
    client.next_event()
    with pytest.raises(LocalProtocolError):
        client.send(Mail("a@b.example"))  # before EHLO
    with pytest.raises(LocalProtocolError):
        client.send(Ehlo("bad\r\nRSET"))
    with pytest.raises(LocalProtocolError):
        client.send_content(b"x")
    with pytest.raises(LocalProtocolError):
        client.end_content()
    with pytest.raises(LocalProtocolError):
        client.send(EndOfData())
    with pytest.raises(LocalProtocolError):
        client.tls_started()
    client.send(Quit())
    with pytest.raises(LocalProtocolError):
        client.send(Noop())


def test_data_state_allows_only_content() -> None:
    pair = greeted()
    pair.send(Mail("a@example.net"), Rcpt("bob@example.com"), Data())
    pair.replies()
    with pytest.raises(LocalProtocolError):
        pair.client.send(Rset())


def test_quit_closes() -> None:
    pair = greeted()
    pair.send(Quit())
    [ev] = pair.replies()
    assert ev.reply.code == 221
    assert pair.client.state is ClientState.CLOSED


def test_server_limit_452_then_second_transaction() -> None:
    pair = greeted(ServerConfig(hostname="mx.example.com", max_recipients=2))
    rcpts = [Rcpt(f"user{i}@example.com") for i in range(3)]
    pair.send(Mail("a@example.net"), *rcpts, Data())
    events = pair.replies()
    assert [e.reply.code for e in events] == [250, 250, 250, 452, 354]
    assert str(events[3].reply.enhanced) == "4.5.3"
