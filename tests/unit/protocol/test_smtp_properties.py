"""Property tests: any byte stream, split anywhere, never raises; one reply per command line."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pigeon.protocol.smtp._state import State
from pigeon.protocol.smtp.server import ServerConfig

from .smtp_driver import Driver, replies

# Command lines that never switch the connection out of command mode (no DATA, BDAT, AUTH,
# STARTTLS or QUIT), valid and invalid.
COMMAND_LINES = [
    b"EHLO client.example.net",
    b"HELO client.example.net",
    b"EHLO",
    b"MAIL FROM:<alice@example.org>",
    b"MAIL FROM:<>",
    b"MAIL FROM:<alice@example.org> SIZE=100 BODY=8BITMIME",
    b"MAIL FROM:<@a.example,@b.example:alice@example.org>",
    b"MAIL FROM:<\"odd user\"@example.org>",
    b"MAIL FROM:<broken",
    b"MAIL FROM:<a@b> XFOO=1",
    b"RCPT TO:<bob@example.com>",
    b"RCPT TO:<nobody@example.com>",
    b"RCPT TO:<postmaster>",
    b"RCPT TO:<bob@example.com> NOTIFY=NEVER",
    b"RCPT TO:<x@[127.0.0.1]>",
    b"RCPT TO:<x@[IPv6:::1]>",
    b"RCPT TO:bob@example.com",
    b"RSET",
    b"NOOP",
    b"NOOP hello",
    b"VRFY bob",
    b"EXPN list",
    b"HELP",
    b"HELP MAIL",
    b"FOO",
    b"",
    b"mail from:<A@EXAMPLE.ORG>",
    b"NOOP \xff",
    b"NOOP \x00",
    b"NOOP " + b"x" * 600,
    "MAIL FROM:<jörg@example.org> SMTPUTF8".encode(),
    "RCPT TO:<jörg@example.com>".encode(),
]


def _chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, prev = [], 0
    for p in points:
        out.append(data[prev:p])
        prev = p
    out.append(data[prev:])
    return [c for c in out if c]


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(
    lines=st.lists(st.sampled_from(COMMAND_LINES), max_size=30),
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=8),
)
def test_one_reply_per_command_line(lines: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(line + b"\r\n" for line in lines)
    d = Driver()
    greeting_len = len(d.out)
    for chunk in _chunks(stream, cuts):
        d.feed(chunk)
    out = bytes(d.out[greeting_len:])
    assert len(replies(out)) == len(lines)
    # State invariants.
    assert d.state in (State.READY, State.IDLE, State.MAIL, State.RCPT)
    assert (d.state is State.RCPT) == (d.conn.recipient_count > 0)
    if d.state in (State.READY, State.IDLE):
        assert d.conn.recipient_count == 0


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(
    data=st.binary(max_size=2000),
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=8),
)
def test_random_bytes_never_raise(data: bytes, cuts: list[int]) -> None:
    d = Driver()
    d.conn.auth_mechanisms = ("PLAIN",)
    d.conn.offer_starttls = True
    for chunk in _chunks(b"EHLO x\r\n" + data, cuts):
        if d.state in (State.CLOSED, State.TLS):
            break
        d.feed(chunk)
    for reply in replies(bytes(d.out)):
        assert reply[:3].isdigit()


MUTATIONS = [b"\r\n", b"\n", b"\r", b".", b"\r\n.\r\n", b"\n.\n", b"\x00", b"DATA\r\n",
             b"BDAT 3\r\n", b"BDAT 0 LAST\r\n", b"RSET\r\n", b"QUIT\r\n"]


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(
    inserts=st.lists(
        st.tuples(st.integers(min_value=0, max_value=400), st.sampled_from(MUTATIONS)),
        max_size=6,
    ),
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=8),
)
def test_mutated_transactions_never_raise_and_never_inject(
    inserts: list[tuple[int, bytes]], cuts: list[int]
) -> None:
    base = bytearray(
        b"EHLO client.example.net\r\nMAIL FROM:<alice@example.org>\r\n"
        b"RCPT TO:<bob@example.com>\r\nDATA\r\nSubject: hi\r\n\r\nbody line\r\n"
        b"..stuffed\r\n.\r\n"
    )
    for pos, text in inserts:
        p = pos % (len(base) + 1)
        base[p:p] = text
    d = Driver(config=ServerConfig(hostname="mx.example.com", max_message_size=4096))
    for chunk in _chunks(bytes(base), cuts):
        if d.state is State.CLOSED:
            break
        d.feed(chunk)
    for m in d.messages:
        # Accepted content never holds a bare CR or LF.
        stripped = m.content.replace(b"\r\n", b"")
        assert b"\r" not in stripped and b"\n" not in stripped
