"""ServerConnection: commands, sequencing, limits, DATA/BDAT framing, smuggling, AUTH seams."""

from __future__ import annotations

import pytest

from pigeon.mail.reply import Reply
from pigeon.protocol.smtp import _events as ev
from pigeon.protocol.smtp._state import State
from pigeon.protocol.smtp.errors import LocalProtocolError
from pigeon.protocol.smtp.server import ServerConfig, ServerConnection

from .smtp_driver import Driver, b64, codes, replies

EHLO = b"EHLO client.example.net\r\n"
TXN = b"MAIL FROM:<alice@example.org>\r\nRCPT TO:<bob@example.com>\r\n"


def ready(**cfg: object) -> Driver:
    d = Driver(config=ServerConfig(hostname="mx.example.com", **cfg))  # type: ignore[arg-type]
    d.feed(EHLO)
    return d


def test_greeting_has_no_enhanced_code() -> None:
    d = Driver()
    assert bytes(d.out) == b"220 mx.example.com ESMTP Pigeon\r\n"
    assert d.state is State.READY


def test_ehlo_lists_extensions_without_enhanced_codes() -> None:
    d = Driver()
    out = d.feed(EHLO)
    assert out == (
        b"250-mx.example.com Hello\r\n250-PIPELINING\r\n250-SIZE 36700160\r\n250-8BITMIME\r\n"
        b"250-SMTPUTF8\r\n250-ENHANCEDSTATUSCODES\r\n250-CHUNKING\r\n250-DSN\r\n250 HELP\r\n"
    )


def test_helo_reply_is_single_line() -> None:
    d = Driver()
    assert d.feed(b"HELO client.example.net\r\n") == b"250 mx.example.com\r\n"
    assert d.conn.esmtp is False


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b"EHLO\r\n", b"501 5.5.4 Syntax: EHLO hostname\r\n"),
        (b"EHLO a b\r\n", b"501 5.5.4 Syntax: EHLO hostname\r\n"),
        (b"HELO\r\n", b"501 5.5.4 Syntax: HELO hostname\r\n"),
        (b"FOO bar\r\n", b"500 5.5.2 Error: command not recognized\r\n"),
        (b"\r\n", b"500 5.5.2 Error: empty command\r\n"),
        (b"MAIL FROM:<a@example.org>\r\n", b"503 5.5.1 Error: send HELO/EHLO first\r\n"),
        (b"RCPT TO:<a@example.org>\r\n", b"503 5.5.1 Error: send HELO/EHLO first\r\n"),
        (b"DATA\r\n", b"503 5.5.1 Error: send HELO/EHLO first\r\n"),
        (b"NOOP\r\n", b"250 2.0.0 Ok\r\n"),
        (b"NOOP anything at all\r\n", b"250 2.0.0 Ok\r\n"),
        (b"VRFY bob\r\n", b"252 2.1.5 Cannot VRFY user\r\n"),
        (b"VRFY\r\n", b"501 5.5.4 Syntax: VRFY address\r\n"),
        (b"EXPN staff\r\n", b"502 5.5.1 EXPN disabled\r\n"),
        (b"HELP\r\n", b"214 2.0.0 See RFC 5321\r\n"),
        (b"RSET\r\n", b"250 2.0.0 Ok\r\n"),
        (b"RSET now\r\n", b"501 5.5.4 Syntax: RSET (no arguments)\r\n"),
        (b"QUIT now\r\n", b"501 5.5.4 Syntax: QUIT (no arguments)\r\n"),
        (b"STARTTLS\r\n", b"503 5.5.1 Error: send HELO/EHLO first\r\n"),
    ],
)
def test_commands_before_hello(line: bytes, expected: bytes) -> None:
    d = Driver()
    assert d.feed(line) == expected


def test_verbs_are_case_insensitive() -> None:
    d = Driver()
    out = d.feed(b"ehlo x.example\r\nmail from:<a@example.org>\r\nrcpt to:<b@example.com>\r\n"
                 b"data\r\nhi\r\n.\r\nquit\r\n")
    assert codes(out) == [250, 250, 250, 354, 250, 221]
    assert d.state is State.CLOSED


def test_sequence_errors_in_session() -> None:
    d = ready()
    assert d.feed(b"RCPT TO:<bob@example.com>\r\n") == b"503 5.5.1 Error: need MAIL command\r\n"
    assert d.feed(b"DATA\r\n") == b"503 5.5.1 Error: need MAIL command\r\n"
    assert d.feed(b"MAIL FROM:<alice@example.org>\r\n") == b"250 2.1.0 Ok\r\n"
    assert d.feed(b"DATA\r\n") == b"554 5.5.1 Error: no valid recipients\r\n"
    assert d.feed(b"MAIL FROM:<ceo@example.org>\r\n") == b"503 5.5.1 Error: nested MAIL command\r\n"
    assert d.feed(b"RCPT TO:<nobody@example.com>\r\n") == b"550 5.1.1 User unknown\r\n"
    assert d.feed(b"DATA\r\n") == b"554 5.5.1 Error: no valid recipients\r\n"
    assert d.feed(b"RCPT TO:<bob@example.com>\r\n") == b"250 2.1.5 Ok\r\n"
    assert d.feed(b"DATA\r\n")[:3] == b"354"
    assert d.feed(b"x\r\n.\r\n") == b"250 2.0.0 Ok: queued as Q1\r\n"
    assert d.messages[0].reverse_path == "<alice@example.org>"


def test_rset_keeps_hello_and_ehlo_resets_transaction() -> None:
    d = ready()
    d.feed(TXN)
    assert d.feed(b"RSET\r\n") == b"250 2.0.0 Ok\r\n"
    assert d.state is State.IDLE
    assert codes(d.feed(TXN)) == [250, 250]
    assert codes(d.feed(b"EHLO other.example.net\r\n")) == [250]
    assert d.conn.recipient_count == 0
    assert codes(d.feed(b"RCPT TO:<bob@example.com>\r\n")) == [503]


def test_second_transaction_does_not_inherit_recipients() -> None:
    d = ready()
    d.feed(TXN + b"DATA\r\none\r\n.\r\n")
    d.feed(b"MAIL FROM:<carol@example.org>\r\nRCPT TO:<alice@example.com>\r\nDATA\r\ntwo\r\n.\r\n")
    assert [(m.reverse_path, m.recipients, m.content) for m in d.messages] == [
        ("<alice@example.org>", ["<bob@example.com>"], b"one\r\n"),
        ("<carol@example.org>", ["<alice@example.com>"], b"two\r\n"),
    ]


# ---------------------------------------------------------------- line limits


def test_command_line_of_512_octets_is_accepted_513_refused() -> None:
    d = ready()
    ok = b"NOOP " + b"x" * (512 - 7) + b"\r\n"
    assert len(ok) == 512
    assert d.feed(ok) == b"250 2.0.0 Ok\r\n"
    bad = b"NOOP " + b"x" * (513 - 7) + b"\r\n"
    assert d.feed(bad) == b"500 5.5.6 Error: line too long\r\n"
    assert d.feed(b"NOOP\r\n") == b"250 2.0.0 Ok\r\n"


def test_endless_line_is_discarded_as_it_arrives() -> None:
    d = ready()
    for _ in range(100):
        assert d.feed(b"A" * 10_000) == b""
        assert len(d.conn._buf) < 1024  # memory stays bounded
    assert d.feed(b"\r\nNOOP\r\n") == b"500 5.5.6 Error: line too long\r\n250 2.0.0 Ok\r\n"


def test_mail_line_allows_parameter_allowance() -> None:
    d = ready()
    line = b"MAIL FROM:<alice@example.org> ENVID=" + b"x" * 90 + b" RET=HDRS SIZE=100\r\n"
    assert len(line) > 100
    assert codes(d.feed(line)) == [250]


def test_bare_lf_and_bare_cr_commands_are_never_executed() -> None:
    d = ready()
    out = d.feed(b"NOOP\nMAIL FROM:<a@example.org>\rRCPT TO:<b@example.com>\r\n")
    assert replies(out) == [
        "500 5.5.2 Error: bare <LF> received; commands end with <CR><LF>",
        "501 5.5.2 Error: bare <CR> received in command",
    ]
    assert d.state is State.IDLE


def test_invalid_utf8_and_nul_in_commands() -> None:
    d = ready()
    assert codes(d.feed(b"NOOP \xff\xfe\r\n")) == [500]
    assert codes(d.feed(b"NOOP a\x00b\r\n")) == [501]


# ---------------------------------------------------------------- parameters


@pytest.mark.parametrize(
    ("line", "code"),
    [
        (b"MAIL FROM:<alice@example.org> XFOOBAR=1\r\n", 555),
        (b"MAIL FROM:<alice@example.org> RET=HDRS ENVID=QQ314159:+2Bpart\r\n", 250),
        (b"MAIL FROM:<alice@example.org> BODY=8BITMIME\r\n", 250),
        (b"MAIL FROM:<alice@example.org> body=8bitmime\r\n", 250),
        (b"MAIL FROM:<alice@example.org> BODY=7BIT\r\n", 250),
        (b"MAIL FROM:<alice@example.org> BODY=9BIT\r\n", 555),
        (b"MAIL FROM:<alice@example.org> BODY=BINARYMIME\r\n", 555),
        (b"MAIL FROM:<alice@example.org> SIZE=20000\r\n", 250),
        (b"MAIL FROM:<alice@example.org> SIZE=12abc\r\n", 501),
        (b"MAIL FROM:<alice@example.org> SIZE=123456789012345678901234\r\n", 501),
        (b"MAIL FROM:<alice@example.org> SIZE\r\n", 501),
        (b"MAIL FROM:<alice@example.org> SIZE=1 SIZE=2\r\n", 501),
        (b"MAIL FROM:<alice@example.org> SIZE=1 SIZE=1\r\n", 250),
        (b"MAIL FROM:<alice@example.org> SMTPUTF8 SMTPUTF8\r\n", 250),
        (b"MAIL FROM:<alice@example.org> SMTPUTF8=yes\r\n", 501),
        (b"MAIL FROM:<alice@example.org> RET=ALL\r\n", 501),
        (b"MAIL FROM:<alice@example.org> AUTH=<>\r\n", 555),  # AUTH not offered here
        (b"MAIL FROM:<alice@example.org> ENVID=a+0Ab\r\n", 501),  # newline via xtext
        (b"MAIL FROM:<alice@example.org> ENVID=a+zz\r\n", 501),
        (b"MAIL FROM:<>\r\n", 250),
        (b"MAIL FROM:<> SIZE=100\r\n", 250),
        (b"MAIL FROM: <alice@example.org>\r\n", 250),
        (b"MAIL FROM:alice@example.org\r\n", 501),
        (b"MAIL TO:<alice@example.org>\r\n", 501),
        (b"MAIL FROM:<j\xc3\xb6rg@example.org>\r\n", 553),
        (b"MAIL FROM:<j\xc3\xb6rg@example.org> SMTPUTF8\r\n", 250),
    ],
)
def test_mail_parameters(line: bytes, code: int) -> None:
    d = ready()
    assert codes(d.feed(line)) == [code]


def test_declared_size_over_limit_is_552() -> None:
    d = ready(max_message_size=10240)
    assert d.feed(b"MAIL FROM:<alice@example.org> SIZE=20000\r\n") == (
        b"552 5.3.4 Message size exceeds fixed maximum message size\r\n"
    )
    assert d.state is State.IDLE


@pytest.mark.parametrize(
    ("params", "code"),
    [
        (b"NOTIFY=DELAY,FAILURE ORCPT=rfc822;bob@example.com", 250),
        (b"NOTIFY=NEVER", 250),
        (b"NOTIFY=NEVER,SUCCESS", 501),
        (b"NOTIFY=SUCCESS,SUCCESS", 501),
        (b"ORCPT=bob@example.com", 501),
        (b"ORCPT=rfc822;bob+0D+0AX-Evil:+20yes@example.com", 501),
        (b"XRCPTFOO=1", 555),
    ],
)
def test_rcpt_parameters(params: bytes, code: int) -> None:
    d = ready()
    d.feed(b"MAIL FROM:<alice@example.org>\r\n")
    assert codes(d.feed(b"RCPT TO:<bob@example.com> " + params + b"\r\n")) == [code]


def test_rcpt_params_are_typed() -> None:
    d = ready()
    d.feed(b"MAIL FROM:<alice@example.org>\r\n")
    d.feed(b"RCPT TO:<bob@example.com> NOTIFY=success,delay ORCPT=rfc822;b+2Bx@example.com\r\n")
    rcpt = next(e for e in d.events if isinstance(e, ev.RcptTo))
    assert rcpt.params.notify == frozenset({"SUCCESS", "DELAY"})
    assert rcpt.params.orcpt == ("rfc822", "b+x@example.com")


def test_parameters_refused_after_helo() -> None:
    d = Driver()
    d.feed(b"HELO client.example.net\r\n")
    assert codes(d.feed(b"MAIL FROM:<alice@example.org> SIZE=10\r\n")) == [555]


def test_utf8_recipient_needs_smtputf8_transaction() -> None:
    d = ready()
    d.feed(b"MAIL FROM:<alice@example.org>\r\n")
    assert codes(d.feed("RCPT TO:<jörg@example.com>\r\n".encode())) == [553]
    d.feed(b"RSET\r\n")
    d.feed("MAIL FROM:<jörg@example.org> SMTPUTF8\r\n".encode())
    assert codes(d.feed("RCPT TO:<jörg@example.com>\r\n".encode())) == [250]


def test_too_many_recipients_is_452() -> None:
    d = ready(max_recipients=3)
    d.feed(b"MAIL FROM:<alice@example.org>\r\n")
    out = d.feed(b"".join(b"RCPT TO:<u%d@example.com>\r\n" % i for i in range(5)))
    assert replies(out)[3:] == ["452 4.5.3 Error: too many recipients"] * 2
    assert d.conn.recipient_count == 3


# ---------------------------------------------------------------- DATA


def send_message(d: Driver, body: bytes, chunks: list[int] | None = None) -> bytes:
    d.feed(TXN)
    assert codes(d.feed(b"DATA\r\n")) == [354]
    if not chunks:
        return d.feed(body)
    out = b""
    pos = 0
    for size in chunks:
        out += d.feed(body[pos : pos + size])
        pos += size
    return out + d.feed(body[pos:])


def test_dot_unstuffing_including_first_line() -> None:
    d = ready()
    out = send_message(d, b"..first\r\nSubject: dots\r\n\r\n..\r\n...two\r\n.x\r\n.\r\n")
    assert codes(out) == [250]
    assert d.messages[0].content == b".first\r\nSubject: dots\r\n\r\n.\r\n..two\r\nx\r\n"


def test_final_crlf_is_kept() -> None:
    d = ready()
    send_message(d, b"Subject: t\r\n\r\nlast line\r\n.\r\n")
    assert d.messages[0].content == b"Subject: t\r\n\r\nlast line\r\n"
    assert len(d.messages[0].content) == 25


def test_empty_message() -> None:
    d = ready()
    assert codes(send_message(d, b".\r\n")) == [250]
    assert d.messages[0].content == b""


def test_data_split_at_every_position_gives_same_content() -> None:
    body = b"..a\r\nb\r\n..\r\n.\r\nNOOP\r\n"
    for i in range(len(body) + 1):
        d = ready()
        out = send_message(d, body, [i])
        assert codes(out) == [250, 250], i
        assert d.messages[0].content == b".a\r\nb\r\n.\r\n", i


def test_pipelined_transaction_and_command_after_data() -> None:
    d = ready()
    out = d.feed(
        b"MAIL FROM:<alice@example.org>\r\nRCPT TO:<bob@example.com>\r\n"
        b"RCPT TO:<nobody@example.com>\r\nRCPT TO:<carol@example.com>\r\nDATA\r\n"
    )
    assert codes(out) == [250, 250, 550, 250, 354]
    assert codes(d.feed(b"hi\r\n.\r\nNOOP\r\n")) == [250, 250]
    assert d.messages[0].recipients == ["<bob@example.com>", "<carol@example.com>"]


def test_size_enforced_during_data() -> None:
    d = ready(max_message_size=10240)
    body = b"Subject: big\r\n\r\n" + b"0123456789" * 40 + b"\r\n"
    out = send_message(d, body * 30 + b".\r\n")
    assert out == b"552 5.3.4 Message size exceeds fixed maximum message size\r\n"
    assert d.messages == []
    assert codes(d.feed(b"RCPT TO:<bob@example.com>\r\n")) == [503]


def test_data_chunks_stop_at_the_limit() -> None:
    d = ready(max_message_size=1000)
    send_message(d, b"x" * 900 + b"\r\n" + b"y" * 500 + b"\r\n.\r\n")
    chunks = sum(len(e.data) for e in d.events if isinstance(e, ev.DataChunk))
    assert chunks <= 1000


def test_line_over_1000_octets_in_data_is_refused_after_end() -> None:
    d = ready()
    ok = b"a" * 998 + b"\r\n"
    assert codes(send_message(d, ok + b".\r\n")) == [250]
    out = send_message(d, b"a" * 999 + b"\r\n.\r\n")
    assert replies(out) == ["500 5.5.6 Message refused: line too long (RFC 5321 §4.5.3.1.6)"]
    assert len(d.messages) == 1


def test_received_headers_over_max_hops_is_a_loop() -> None:
    hdr = b"Received: from relay.example.net by mx.example.org; Mon, 1 Jan 2024 00:00:00 +0000\r\n"
    d = ready()
    out = send_message(d, hdr * 101 + b"Subject: loop\r\n\r\nx\r\n.\r\n")
    assert codes(out) == [554]
    assert b"5.4.6" in out
    d.feed(b"RSET\r\n")
    assert codes(send_message(d, hdr * 100 + b"Subject: ok\r\n\r\nx\r\n.\r\n")) == [250]
    received = [e for e in d.events if isinstance(e, ev.DataComplete)]
    assert [r.received_count for r in received] == [101, 100]


def test_received_in_body_is_not_counted() -> None:
    d = ready(max_hops=1)
    body = b"Subject: x\r\n\r\n" + b"Received: fake\r\n" * 5 + b".\r\n"
    assert codes(send_message(d, body)) == [250]


# ---------------------------------------------------------------- smuggling

SMUGGLE = b"MAIL FROM:<ceo@example.org>\r\nRCPT TO:<bob@example.com>\r\nDATA\r\nsmuggled\r\n"

VARIANTS = {
    "bare LF": b"first\nsecond\r\n.\r\n",
    "bare CR": b"first\rsecond\r\n.\r\n",
    "LF.LF": b"first\n.\n" + SMUGGLE + b".\r\n",
    "LF.CRLF": b"first\n.\r\n" + SMUGGLE + b".\r\n",
    "CRLF.LF": b"first\r\n.\n" + SMUGGLE + b".\r\n",
    "CR.CR": b"first\r.\r" + SMUGGLE + b".\r\n",
    "CRLF.CR": b"first\r\n.\r" + SMUGGLE + b".\r\n",
    "LF.CR.LF": b"first\n.\r\n\r\n.\r\n",
}


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_smuggling_variant_is_refused_and_never_a_second_message(name: str) -> None:
    body = VARIANTS[name]
    for split in range(len(body) + 1):
        d = ready()
        out = send_message(d, body, [split])
        assert codes(out) == [550], (name, split, out)
        assert b"5.6.0" in out
        assert d.messages == []
        # Sync probe: no transaction is open and no queued reply is waiting.
        assert d.feed(b"RCPT TO:<bob@example.com>\r\n") == b"503 5.5.1 Error: need MAIL command\r\n"


def test_lone_dot_after_bare_lf_does_not_end_data() -> None:
    d = ready()
    out = send_message(d, b"Testing\n.\r\nNO SMUGGLING\r\n")
    assert out == b""
    assert d.state is State.DATA
    assert codes(d.feed(b".\r\n")) == [550]


# ---------------------------------------------------------------- BDAT


def test_bdat_is_binary_safe() -> None:
    d = ready()
    d.feed(TXN)
    payload = b"Subject: b\r\n\r\n.\r\n\x00\xff end\r\n"
    out = d.feed(b"BDAT %d\r\n" % 10 + payload[:10])
    assert out == b"250 2.0.0 10 octets received\r\n"
    out = d.feed(b"BDAT %d LAST\r\n" % (len(payload) - 10) + payload[10:])
    assert codes(out) == [250]
    assert d.messages[0].content == payload


def test_bdat_zero_last() -> None:
    d = ready()
    d.feed(TXN)
    assert codes(d.feed(b"BDAT 5\r\nhello")) == [250]
    assert codes(d.feed(b"BDAT 0 LAST\r\n")) == [250]
    assert d.messages[0].content == b"hello"


def test_bdat_misuse() -> None:
    d = ready()
    assert codes(d.feed(b"BDAT\r\n")) == [501]
    assert codes(d.feed(b"BDAT abc LAST\r\n")) == [501]
    assert codes(d.feed(b"BDAT -5\r\n")) == [501]
    # Out of sequence: the chunk is read and thrown away, then 503.
    assert d.feed(b"BDAT 4\r\nNOOP") == b"503 5.5.1 Error: need MAIL command\r\n"
    assert codes(d.feed(b"NOOP\r\n")) == [250]
    out = d.feed(b"BDAT 18446744073709551616 LAST\r\n")
    assert codes(out) == [552]
    assert d.state is State.CLOSED


def test_data_after_bdat_is_refused() -> None:
    d = ready()
    d.feed(TXN + b"BDAT 2\r\nab")
    assert codes(d.feed(b"DATA\r\n")) == [503]


def test_bdat_over_size_is_refused_at_last() -> None:
    d = ready(max_message_size=100)
    d.feed(TXN)
    assert codes(d.feed(b"BDAT 60\r\n" + b"a" * 60)) == [250]
    assert codes(d.feed(b"BDAT 60 LAST\r\n" + b"a" * 60)) == [552]
    assert d.messages == []


# ---------------------------------------------------------------- STARTTLS and AUTH seams


def test_starttls_discards_pipelined_plaintext() -> None:
    d = Driver()
    d.conn.offer_starttls = True
    assert b"STARTTLS" in d.feed(EHLO)
    out = d.feed(b"STARTTLS\r\nMAIL FROM:<attacker@example.net>\r\n")
    assert codes(out) == [220]
    assert d.state is State.TLS
    d.conn.tls_started()
    assert d.state is State.READY
    assert b"STARTTLS" not in d.feed(EHLO)
    assert not [e for e in d.events if isinstance(e, ev.MailFrom)]


def test_starttls_not_offered() -> None:
    d = ready()
    assert codes(d.feed(b"STARTTLS\r\n")) == [502]


def test_auth_plain_flows() -> None:
    d = Driver()
    d.conn.auth_mechanisms = ("PLAIN", "LOGIN")
    assert b"AUTH PLAIN LOGIN" in d.feed(EHLO)
    assert d.feed(b"AUTH PLAIN !!!\r\n") == b"501 5.5.2 Error: invalid base64 data\r\n"
    assert codes(d.feed(b"AUTH CRAM-MD5\r\n")) == [504]
    assert codes(d.feed(b"AUTH PLAIN\r\n")) == [334]
    assert d.feed(b"*\r\n") == b"501 5.0.0 Authentication cancelled\r\n"
    assert codes(d.feed(b"AUTH PLAIN\r\n")) == [334]
    assert codes(d.feed(b"not base64!\r\n")) == [501]
    assert d.state is State.IDLE
    assert codes(d.feed(b"AUTH PLAIN " + b64(b"\x00alice\x00wrong").encode() + b"\r\n")) == [535]
    good = b64(b"\x00alice\x00secret").encode()
    assert codes(d.feed(b"AUTH PLAIN " + good + b"\r\n")) == [235]
    assert d.conn.authenticated
    assert codes(d.feed(b"AUTH PLAIN " + good + b"\r\n")) == [503]


def test_auth_empty_initial_response() -> None:
    d = Driver()
    d.conn.auth_mechanisms = ("PLAIN",)
    d.feed(EHLO)
    d.feed(b"AUTH PLAIN =\r\n")
    auth = next(e for e in d.events if isinstance(e, ev.Auth))
    assert auth.initial_response == b""


def test_auth_not_allowed_in_transaction() -> None:
    d = Driver()
    d.conn.auth_mechanisms = ("PLAIN",)
    d.feed(EHLO + TXN)
    assert codes(d.feed(b"AUTH PLAIN\r\n")) == [503]


# ---------------------------------------------------------------- API misuse and closing


def test_send_without_owed_reply_raises() -> None:
    d = ready()
    with pytest.raises(LocalProtocolError):
        d.conn.send(Reply(250, "2.0.0", "Ok"))


def test_positive_reply_to_command_error_raises() -> None:
    conn = ServerConnection()
    conn.send(Reply(220, None, "hi"))
    conn.receive_data(b"FOO\r\n")
    event = conn.next_event()
    assert isinstance(event, ev.CommandError)
    with pytest.raises(LocalProtocolError):
        conn.send(Reply(250, "2.0.0", "Ok"))


def test_421_may_be_sent_any_time_and_closes() -> None:
    d = ready()
    assert d.conn.send(Reply(421, "4.4.2", "timeout")) == b"421 4.4.2 timeout\r\n"
    assert d.state is State.CLOSED
    assert d.conn.next_event() is ev.PAUSED


def test_quit_closes_and_ignores_the_rest() -> None:
    d = ready()
    assert d.feed(b"QUIT\r\nNOOP\r\n") == b"221 2.0.0 Bye\r\n"
    assert d.state is State.CLOSED


def test_eof_gives_connection_closed() -> None:
    d = ready()
    d.conn.receive_data(b"")
    assert isinstance(d.conn.next_event(), ev.ConnectionClosed)
    assert d.conn.next_event() is ev.PAUSED
