"""Property tests: any byte stream, split anywhere, never raises; one response per line.

Also the stream transforms: byte-stuffing, the TOP cut and CRLF normalisation give the same
output whatever the block boundaries, and match a plain reference on the whole input.
"""

from __future__ import annotations

import base64
import io
import re

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pigeon.protocol.pop3 import DotStuffer, State, TopFilter
from pigeon.storage.maildir.maildrop import CrlfNormalizer, wire_size

from .test_pop3_server import Driver, split_responses

# Command lines that never leave the session (no STLS, no QUIT), valid and invalid, in
# both states; AUTH lines open a SASL exchange whose next line is a response.
COMMAND_LINES = [
    b"CAPA",
    b"USER alice@example.com",
    b"USER u",
    b"PASS secret",
    b"PASS wrong password",
    b"PASS",
    b"AUTH PLAIN",
    b"AUTH PLAIN " + base64.b64encode(b"\0u\0secret"),
    b"AUTH PLAIN =",
    b"AUTH LOGIN",
    b"AUTH",
    b"*",
    b"APOP a b",
    b"STAT",
    b"LIST",
    b"LIST 1",
    b"LIST 9",
    b"LIST x",
    b"UIDL",
    b"UIDL 2",
    b"RETR 1",
    b"RETR 2",
    b"RETR 0",
    b"TOP 1 0",
    b"TOP 2 10",
    b"TOP 1",
    b"DELE 1",
    b"DELE 2",
    b"RSET",
    b"NOOP",
    b"noop",
    b"",
    b"XYZZY",
    b"NOOP \xff",
    b"NOOP \x00",
    b"RETR " + b"1" * 50,
    b"NOOP " + b"x" * 300,
    "USER jörg@example.com".encode(),
]


def _chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, prev = [], 0
    for p in points:
        out.append(data[prev:p])
        prev = p
    out.append(data[prev:])
    return [c for c in out if c]


_STATUS = re.compile(rb"^(\+OK|-ERR|\+ )")


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(
    lines=st.lists(st.sampled_from(COMMAND_LINES), max_size=30),
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=8),
    tls=st.booleans(),
)
def test_one_response_per_command_line(lines: list[bytes], cuts: list[int], tls: bool) -> None:
    d = Driver(tls=tls, plaintext=False)
    greeting = d.take()
    d.responses.clear()
    stream = b"".join(line + b"\r\n" for line in lines)
    for chunk in _chunks(stream, cuts):
        d.feed(chunk)
    assert len(d.responses) == len(lines)
    responses = split_responses(d.take(), d.responses)
    assert len(responses) == len(lines)
    for response in responses:
        assert _STATUS.match(response), response
    assert greeting == b"+OK ready\r\n"
    assert d.state in (State.AUTHORIZATION, State.SASL, State.TRANSACTION)
    if not tls:
        assert d.state is State.AUTHORIZATION  # no login without TLS


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(
    data=st.binary(max_size=2000),
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=8),
    login=st.booleans(),
)
def test_random_bytes_never_raise(data: bytes, cuts: list[int], login: bool) -> None:
    d = Driver()
    prefix = b"USER u\r\nPASS secret\r\n" if login else b""
    for chunk in _chunks(prefix + data, cuts):
        if d.state in (State.CLOSED, State.TLS):
            break
        d.feed(chunk)
    complete_lines = (prefix + data).count(b"\n")
    assert len(d.responses) <= 1 + complete_lines
    out = bytes(d.out)
    responses = split_responses(out, d.responses)
    for response in responses:
        assert _STATUS.match(response), response


MUTATIONS = [b"\r\n", b"\n", b"\r", b".", b"\x00", b"QUIT\r\n", b"STLS\r\n", b"RSET\r\n",
             b"AUTH PLAIN\r\n", b"*\r\n", b"x" * 300]


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(
    inserts=st.lists(
        st.tuples(st.integers(min_value=0, max_value=200), st.sampled_from(MUTATIONS)),
        max_size=6,
    ),
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=8),
)
def test_mutated_sessions_never_raise(inserts: list[tuple[int, bytes]], cuts: list[int]) -> None:
    base = bytearray(b"CAPA\r\nUSER u\r\nPASS secret\r\nSTAT\r\nLIST\r\nRETR 1\r\nTOP 2 1\r\n"
                     b"DELE 1\r\nUIDL\r\nRSET\r\nQUIT\r\n")
    for pos, text in inserts:
        p = pos % (len(base) + 1)
        base[p:p] = text
    d = Driver()
    for chunk in _chunks(bytes(base), cuts):
        if d.state in (State.CLOSED, State.TLS):
            break
        d.feed(chunk)
    split_responses(bytes(d.out), d.responses)


# ---------------------------------------------------------------------------- stream transforms

_LINEISH = st.lists(
    st.sampled_from([b".", b"..", b"a", b"\r\n", b"\n", b"\r", b"Subject: x", b" ", b""]),
    max_size=40,
).map(b"".join)


def _unstuff(wire: bytes) -> bytes:
    """What poplib does: drop the terminator, remove one leading dot of each line."""
    assert wire.endswith(b".\r\n")
    lines = wire[:-3].split(b"\r\n")
    assert lines[-1] == b""
    return b"".join((line[1:] if line.startswith(b"..") else line) + b"\r\n"
                    for line in lines[:-1])


@settings(max_examples=400, deadline=None)
@given(body=_LINEISH, cuts=st.lists(st.integers(min_value=0, max_value=500), max_size=6))
def test_dot_stuffing_any_split(body: bytes, cuts: list[int]) -> None:
    normalized = CrlfNormalizer()
    content = normalized.feed(body) + normalized.finish()
    whole = DotStuffer()
    expected = whole.feed(content) + whole.end()
    split = DotStuffer()
    got = b"".join(split.feed(c) for c in _chunks(content, cuts)) + split.end()
    assert got == expected
    assert _unstuff(got) == content
    assert b"\r\n.\r\n" not in got[:-3] or content.count(b"\r\n.\r\n") == 0


def _reference_top(content: bytes, n: int) -> bytes:
    lines = content.split(b"\n")
    out: list[bytes] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        last = i == len(lines) - 1
        out.append(line if last else line + b"\n")
        i += 1
        if not last and line in (b"", b"\r"):
            break
    else:
        return b"".join(out)
    body = lines[i:]
    for j, line in enumerate(body[:n]):
        last = i + j == len(lines) - 1
        out.append(line if last else line + b"\n")
    return b"".join(out)


@settings(max_examples=400, deadline=None)
@given(
    content=_LINEISH,
    n=st.integers(min_value=0, max_value=6),
    cuts=st.lists(st.integers(min_value=0, max_value=500), max_size=6),
)
def test_top_filter_any_split(content: bytes, n: int, cuts: list[int]) -> None:
    cut = TopFilter(n)
    got = b"".join(cut.feed(c) for c in _chunks(content, cuts))
    assert got == _reference_top(content, n)


def _reference_crlf(data: bytes) -> bytes:
    out = re.sub(rb"(?<!\r)\n", b"\r\n", data)
    if out and not out.endswith(b"\r\n"):
        out += b"\r\n"
    return out


@settings(max_examples=400, deadline=None)
@given(
    data=st.lists(st.sampled_from([b"\r", b"\n", b"\r\n", b"a", b".", b"\n\r"]),
                  max_size=50).map(b"".join),
    cuts=st.lists(st.integers(min_value=0, max_value=500), max_size=8),
)
def test_crlf_normalizer_any_split(data: bytes, cuts: list[int]) -> None:
    normalizer = CrlfNormalizer()
    got = b"".join(normalizer.feed(c) for c in _chunks(data, cuts)) + normalizer.finish()
    assert got == _reference_crlf(data)
    assert wire_size(io.BytesIO(data)) == len(got)
