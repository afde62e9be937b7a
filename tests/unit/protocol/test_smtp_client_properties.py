"""Property tests of the client side: reply parsing and content encoding."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pigeon.mail.reply import EnhancedStatus, Reply
from pigeon.protocol.smtp._client_data import ContentEncoder, normalize_line_endings
from pigeon.protocol.smtp._client_reply import ReplyReader, ReplySyntaxError, parse_reply_lines
from pigeon.protocol.smtp._data import DotDecoder
from pigeon.protocol.smtp.client import NEED_DATA, ClientConnection, ConnectionClosed, ReplyReceived


def _splits(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, prev = [], 0
    for p in points:
        out.append(data[prev:p])
        prev = p
    out.append(data[prev:])
    return out


@given(st.binary(max_size=400), st.lists(st.integers(min_value=0), max_size=8))
def test_reply_reader_never_raises_anything_else(data: bytes, cuts: list[int]) -> None:
    reader = ReplyReader(max_line=64, max_lines=4)
    try:
        for piece in _splits(data, cuts):
            reader.feed(piece)
            while reader.next_reply() is not None:
                pass
    except ReplySyntaxError:
        pass


_TEXT = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x2FF, exclude_characters="\x7f"),
    max_size=40,
)


@st.composite
def replies(draw: st.DrawFn) -> Reply:
    code = draw(st.integers(min_value=200, max_value=599))
    enhanced = None
    if code // 100 != 3 and draw(st.booleans()):
        enhanced = EnhancedStatus(code // 100, draw(st.integers(0, 999)), draw(st.integers(0, 999)))
    lines = draw(st.lists(_TEXT, min_size=1, max_size=5))
    # Text that itself starts like an enhanced code would be read as one.
    lines = [re.sub(r"^[245]\.", "x", line.lstrip(" ")) for line in lines]
    return Reply(code, enhanced, lines)


@given(replies(), st.lists(st.integers(min_value=0), max_size=6))
def test_reply_round_trip(reply: Reply, cuts: list[int]) -> None:
    wire = reply.to_bytes(enhanced_codes=reply.enhanced is not None)
    reader = ReplyReader()
    got = []
    for piece in _splits(wire, cuts):
        reader.feed(piece)
        while (r := reader.next_reply()) is not None:
            got.append(r)
    # Trailing spaces are not kept on the wire (Reply.to_bytes strips them).
    expected_lines = tuple(line.rstrip(" ") for line in reply.lines)
    assert len(got) == 1
    assert got[0].code == reply.code
    assert got[0].enhanced == reply.enhanced
    assert tuple(line.rstrip(" ") for line in got[0].lines) == expected_lines
    assert not reader.partial


def test_reply_examples() -> None:
    assert parse_reply_lines(["250-mx.example.com", "250-PIPELINING", "250 SIZE 10"]) == Reply(
        250, None, ["mx.example.com", "PIPELINING", "SIZE 10"])
    assert parse_reply_lines(["550-5.1.1 no such", "550 5.1.1 user"]) == Reply(
        550, "5.1.1", ["no such", "user"])
    # An enhanced code of the wrong class is text.
    assert parse_reply_lines(["550 2.0.0 odd"]) == Reply(550, None, "2.0.0 odd")
    assert parse_reply_lines(["354"]) == Reply(354, None, "")
    for bad in (["250-a", "251 b"], ["250 a", "250 b"], ["250-a"], ["199 x"], ["600 x"],
                ["25 x"], ["250x"]):
        with pytest.raises(ReplySyntaxError):
            parse_reply_lines(bad)
    reader = ReplyReader()
    reader.feed(b"250 bare lf ok\n220 ctl\x01char\r\n")
    assert reader.next_reply() == Reply(250, None, "bare lf ok")
    assert reader.next_reply() == Reply(220, None, "ctl?char")
    reader.feed(b"250 " + b"x" * 9000)
    with pytest.raises(ReplySyntaxError):
        reader.next_reply()


_CONTENT = st.lists(
    st.sampled_from([b"a", b"b", b".", b"..", b"\r", b"\n", b"\r\n", b"\r\n.\r\n", b"\xff", b" "]),
    max_size=60,
).map(b"".join)


@given(_CONTENT, st.lists(st.integers(min_value=0), max_size=8))
def test_dot_stuffing_round_trips_through_the_server_decoder(
    content: bytes, cuts: list[int]
) -> None:
    enc = ContentEncoder()
    wire = b"".join(enc.encode(p) for p in _splits(content, cuts)) + enc.finish()
    whole = ContentEncoder()
    assert wire == whole.encode(content) + whole.finish()  # split anywhere, same bytes
    body = wire[:-3]
    assert wire.endswith(b".\r\n")
    # Only CRLF line endings leave, and no line of the body is a lone ".".
    assert normalize_line_endings(body) == body
    assert b"\r\n.\r\n" not in b"\r\n" + body
    decoded, rest = DotDecoder().feed(wire)
    assert rest == b""
    expected = normalize_line_endings(content)
    if expected and not expected.endswith(b"\r\n"):
        expected += b"\r\n"
    assert decoded == expected
    assert enc.size == len(body)


@given(_CONTENT, st.lists(st.integers(min_value=0), max_size=8))
def test_bdat_encoding_only_normalises(content: bytes, cuts: list[int]) -> None:
    enc = ContentEncoder(dot_stuffing=False)
    wire = b"".join(enc.encode(p) for p in _splits(content, cuts)) + enc.finish()
    expected = normalize_line_endings(content)
    if expected and not expected.endswith(b"\r\n"):
        expected += b"\r\n"
    assert wire == expected


@given(st.binary(max_size=300), st.lists(st.integers(min_value=0), max_size=6))
def test_client_machine_on_any_input(data: bytes, cuts: list[int]) -> None:
    client = ClientConnection()
    try:
        for piece in [*_splits(data, cuts), b""]:
            client.receive_data(piece)
            while True:
                ev = client.next_event()
                if ev is NEED_DATA or isinstance(ev, ConnectionClosed):
                    break
                assert isinstance(ev, ReplyReceived)
    except ReplySyntaxError:
        pass
