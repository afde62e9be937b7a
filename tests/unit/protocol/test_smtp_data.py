"""DATA content framing and checks: chunked results equal whole-buffer definitions.

Each property of :class:`ContentInspector` and :class:`DotDecoder` is defined here once, the
plain way, over the whole byte string seen so far (a line-by-line or byte-by-byte loop). The
property tests feed random content, biased towards CR, LF, dots, ``Received:`` fields, blank
runs and long lines, split at random points, and compare after every chunk.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pigeon.protocol.smtp._data import ContentInspector, DotDecoder

CR, LF = 0x0D, 0x0A

# ---------------------------------------------------------------- whole-buffer definitions


def ref_bare_newline(data: bytes, *, finished: bool) -> bool:
    """A CR not followed by LF, or an LF not preceded by CR (RFC 5321 §2.3.8).

    A CR that ends ``data`` is bare only once the content is finished; until then the next
    octet may still be its LF.
    """
    for i, octet in enumerate(data):
        if octet == CR:
            if i + 1 < len(data):
                if data[i + 1] != LF:
                    return True
            elif finished:
                return True
        elif octet == LF and (i == 0 or data[i - 1] != CR):
            return True
    return False


def ref_line_too_long(data: bytes, max_line_length: int) -> bool:
    """Some line (octets up to an LF, or the unfinished last line) is longer than allowed.

    A line of ``max_line_length`` octets with its CRLF has ``max_line_length - 1`` octets
    before its LF. A limit below 2 cannot hold a CRLF and means "unchecked".
    """
    if max_line_length < 2:
        return False
    return any(len(line) > max_line_length - 1 for line in data.split(b"\n"))


def ref_received_count(data: bytes) -> int:
    """Header fields named ``Received`` (any case, blanks before the colon) in the header
    section, which ends at the first empty line (``""`` or ``"\\r"`` before an LF)."""
    lines = data.split(b"\n")
    count = 0
    for i, line in enumerate(lines):
        complete = i < len(lines) - 1
        if complete and line in (b"", b"\r"):
            break
        name, colon, _ = line.partition(b":")
        if colon and name[:8].lower() == b"received" and name[8:].strip(b" \t") == b"":
            count += 1
    return count


def ref_unstuff(text: bytes) -> bytes:
    """Remove the first octet of every CRLF-delimited line that starts with a dot."""
    return b"\r\n".join(line[1:] if line.startswith(b".") else line for line in text.split(b"\r\n"))


def ref_decode(wire: bytes) -> tuple[bytes, bytes | None]:
    """Whole-buffer DATA decoding (RFC 5321 §4.5.2).

    Returns:
        ``(content, rest)``: with ``<CRLF>.<CRLF>`` found (the leading CRLF may be the start
        of the data), the unstuffed content before it and the octets after it; otherwise the
        unstuffed content up to the last CRLF and None.
    """
    framed = b"\r\n" + wire
    end = framed.find(b"\r\n.\r\n")
    if end >= 0:
        return ref_unstuff(framed[2 : end + 2]), framed[end + 5 :]
    last = framed.rfind(b"\r\n")
    return (ref_unstuff(framed[2 : last + 2]) if last > 0 else b""), None


# ---------------------------------------------------------------- strategies

TOKENS = [
    b"\r",
    b"\n",
    b"\r\n",
    b"\r\n\r\n",
    b"\n\n",
    b"\n\r\n",
    b".",
    b"..",
    b"\r\n.",
    b"\r\n.\r\n",
    b"\r\n..\r\n",
    b"Received:",
    b"received :",
    b"RECEIVED\t:",
    b"ReCeIvEd",
    b"Receive",
    b"Received x:",
    b"Subject: y",
    b":",
    b" ",
    b"\t",
    b"x",
    b"\x00",
    b"\xff",
]

token = st.one_of(
    st.sampled_from(TOKENS),
    st.integers(min_value=1, max_value=40).map(lambda n: b" " * n),
    st.integers(min_value=1, max_value=2100).map(lambda n: b"x" * n),
    st.binary(max_size=8),
)
field = st.tuples(
    st.sampled_from([b"Received", b"received", b"RECEIVED", b"Receivedx", b"X-A", b""]),
    st.lists(st.sampled_from([b" ", b"\t", b" " * 20, b"\r"]), max_size=6).map(b"".join),
    st.sampled_from([b":", b": from a.example by b.example", b""]),
    st.sampled_from([b"\r\n", b"\r\n", b"\n", b"\r", b"\r\n\r\n", b"\n\r\n"]),
).map(b"".join)
content = st.one_of(
    st.lists(token, max_size=40).map(b"".join),
    st.tuples(st.lists(field, max_size=12), st.lists(token, max_size=10)).map(
        lambda parts: b"".join(parts[0]) + b"".join(parts[1])
    ),
)
cuts = st.lists(st.integers(min_value=0, max_value=10_000), max_size=12)
limits = st.sampled_from([0, 1, 2, 3, 8, 80, 1000])


def split(data: bytes, points: list[int]) -> list[bytes]:
    """``data`` cut at ``points`` (taken modulo its length + 1); empty pieces kept."""
    marks = sorted(p % (len(data) + 1) for p in points)
    out, prev = [], 0
    for p in marks:
        out.append(data[prev:p])
        prev = p
    out.append(data[prev:])
    return out


# ---------------------------------------------------------------- ContentInspector


def assert_inspector(insp: ContentInspector, seen: bytes, limit: int, *, finished: bool) -> None:
    assert insp.size == len(seen)
    assert insp.bare_newline is ref_bare_newline(seen, finished=finished)
    assert insp.line_too_long is ref_line_too_long(seen, limit)
    assert insp.received_count == ref_received_count(seen)


@settings(max_examples=1500, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(data=content, points=cuts, limit=limits)
def test_inspector_chunked_equals_whole_buffer(data: bytes, points: list[int], limit: int) -> None:
    insp = ContentInspector(max_line_length=limit)
    seen = b""
    for chunk in split(data, points):
        insp.feed(chunk)
        seen += chunk
        assert_inspector(insp, seen, limit, finished=False)
    insp.finish()
    assert_inspector(insp, seen, limit, finished=True)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(data=content, limit=limits)
def test_inspector_octet_by_octet_equals_whole_buffer(data: bytes, limit: int) -> None:
    insp = ContentInspector(max_line_length=limit)
    for i in range(len(data)):
        insp.feed(data[i : i + 1])
    insp.finish()
    assert_inspector(insp, data, limit, finished=True)


@pytest.mark.parametrize(
    ("chunks", "bare"),
    [
        ([b"a\r", b"\nb"], False),  # CRLF split over two chunks
        ([b"a\r", b"b"], True),  # CR, then something else
        ([b"a\r", b"\r\n"], True),  # CR CR LF: the first CR is bare
        ([b"a", b"\nb"], True),  # LF without CR, at a chunk start
        ([b"\n"], True),  # LF at the very start of the content
        ([b"a\r"], True),  # CR at the end of the content
        ([b"a\r\n", b"\r\n"], False),
    ],
)
def test_bare_newline_across_chunks(chunks: list[bytes], bare: bool) -> None:
    insp = ContentInspector()
    for chunk in chunks:
        insp.feed(chunk)
    insp.finish()
    assert insp.bare_newline is bare


def test_trailing_cr_is_bare_only_when_finished() -> None:
    insp = ContentInspector()
    insp.feed(b"line\r")
    assert insp.bare_newline is False
    insp.finish()
    assert insp.bare_newline is True


@pytest.mark.parametrize(
    ("chunks", "too_long"),
    [
        ([b"a" * 998 + b"\r\n"], False),  # 1000 octets with CRLF
        ([b"a" * 999 + b"\r\n"], True),
        ([b"a" * 500, b"a" * 498 + b"\r\n"], False),
        ([b"a" * 500, b"a" * 499 + b"\r\n"], True),
        ([b"b\r\n" + b"a" * 600, b"a" * 398 + b"\r\nc\r\n"], False),
        ([b"b\r\n" + b"a" * 600, b"a" * 399 + b"\r\nc\r\n"], True),
        ([(b"a" * 998 + b"\r\n") * 5 + b"a" * 1000], True),  # the unfinished last line counts
        ([(b"a" * 998 + b"\r\n") * 5 + b"a" * 999], False),
    ],
)
def test_line_length_across_chunks(chunks: list[bytes], too_long: bool) -> None:
    insp = ContentInspector(max_line_length=1000)
    for chunk in chunks:
        insp.feed(chunk)
    assert insp.line_too_long is too_long


@pytest.mark.parametrize("limit", [0, 1])
def test_line_length_unchecked(limit: int) -> None:
    insp = ContentInspector(max_line_length=limit)
    insp.feed(b"a" * 100_000 + b"\r\n")
    assert insp.line_too_long is False


@pytest.mark.parametrize(
    ("chunks", "count"),
    [
        ([b"Received: a\r\nReceived: b\r\n\r\nReceived: body\r\n"], 2),
        ([b"Rece", b"ived: a\r\n"], 1),
        ([b"X: 1\r\n", b"\r\nReceived: body\r\n"], 0),  # blank line split from its CRLF
        ([b"X: 1\r\n\r", b"\nReceived: body\r\n"], 0),
        ([b"X: 1\r", b"\n\r\nReceived: body\r\n"], 0),
        ([b"X: 1\r\nReceived" + b" " * 30, b" " * 30 + b":\r\n"], 1),  # long blanks
        ([b"X: 1\r\nReceived" + b"\t" * 5000, b":\r\n"], 1),
        ([b"X: Received: no\r\n", b"received\t: yes\r\n"], 1),
        ([b"\r\nReceived: body\r\n"], 0),  # empty header section
        ([b"Received", b"x: no\r\n"], 0),
        ([b"Received \r", b": no\r\n"], 0),
    ],
)
def test_received_count_across_chunks(chunks: list[bytes], count: int) -> None:
    insp = ContentInspector()
    for chunk in chunks:
        insp.feed(chunk)
    assert insp.received_count == count


# ---------------------------------------------------------------- DotDecoder

wire_token = st.one_of(
    st.sampled_from([b"\r\n", b"\r", b"\n", b".", b"..", b"\r\n.", b"\r\n.\r\n", b"x", b"ab"]),
    st.integers(min_value=1, max_value=300).map(lambda n: b"y" * n),
    st.binary(max_size=6),
)
wire = st.lists(wire_token, max_size=40).map(b"".join)


@settings(max_examples=1500, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(data=wire, points=cuts)
def test_decoder_chunked_equals_whole_buffer(data: bytes, points: list[int]) -> None:
    dec = DotDecoder()
    emitted = b""
    seen = b""
    for chunk in split(data, points):
        content, rest = dec.feed(chunk)
        emitted += content
        seen += chunk
        expected, expected_rest = ref_decode(seen)
        assert emitted == expected
        assert rest == expected_rest
        assert dec.done is (rest is not None)
        if rest is not None:
            break


def test_decoder_terminator_at_the_start() -> None:
    assert DotDecoder().feed(b".\r\nQUIT\r\n") == (b"", b"QUIT\r\n")


def test_decoder_long_line_is_emitted_before_its_end() -> None:
    dec = DotDecoder()
    content, rest = dec.feed(b"..x" + b"y" * 70_000 + b"\r")
    assert (content, rest) == (b".x" + b"y" * 70_000, None)  # the stuffed dot is removed
    content, rest = dec.feed(b"\n.\r\n")
    assert (content, rest) == (b"\r\n", b"")


def test_decoder_after_a_long_line_still_unstuffs() -> None:
    dec = DotDecoder()
    assert dec.feed(b"y" * 70_000) == (b"y" * 70_000, None)
    assert dec.feed(b"\r\n..a\r\n.\r\nQUIT\r\n") == (b"\r\n.a\r\n", b"QUIT\r\n")
