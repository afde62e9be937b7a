"""Submission fix-ups: Date and Message-ID added to the streamed header section."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pigeon.policy.submission import HeaderFixup

DATE = "Mon, 02 Nov 2026 10:00:00 +0000"
MID = "<Q1.abc@mx.example.com>"
ADDED = f"Date: {DATE}\r\nMessage-ID: {MID}\r\n".encode()


def run(content: bytes, chunks: list[int] | None = None, limit: int = 256 * 1024
        ) -> tuple[bytes, HeaderFixup]:
    f = HeaderFixup(date=DATE, message_id=MID, limit=limit)
    out = b""
    pos = 0
    for size in chunks or []:
        out += f.feed(content[pos : pos + size])
        pos += size
    out += f.feed(content[pos:])
    out += f.finish()
    return out, f


def test_both_missing_are_appended_to_the_header_section() -> None:
    msg = b"From: a@example.com\r\nSubject: hi\r\n\r\nbody\r\n"
    out, f = run(msg)
    assert out == b"From: a@example.com\r\nSubject: hi\r\n" + ADDED + b"\r\nbody\r\n"
    assert f.added == ("Date", "Message-ID") and not f.gave_up


def test_present_fields_are_kept_and_nothing_is_added() -> None:
    msg = (b"DATE: Tue, 1 Jan 2030 00:00:00 +0000\r\nmessage-id : <x@y>\r\n"
           b"Subject: hi\r\n\r\nbody\r\n")
    out, f = run(msg)
    assert out == msg and f.added == ()


def test_only_the_missing_one_is_added() -> None:
    msg = b"Message-ID: <x@y>\r\nSubject: s\r\n\r\nb\r\n"
    out, f = run(msg)
    assert out == b"Message-ID: <x@y>\r\nSubject: s\r\nDate: " + DATE.encode() + b"\r\n\r\nb\r\n"
    assert f.added == ("Date",)


def test_field_names_in_continuation_lines_or_body_do_not_count() -> None:
    msg = b"Subject: a\r\n Date: not a field\r\n\r\nMessage-ID: <in@body>\r\n"
    out, _ = run(msg)
    assert out == b"Subject: a\r\n Date: not a field\r\n" + ADDED + b"\r\nMessage-ID: <in@body>\r\n"


def test_a_body_line_without_the_empty_line_gets_one() -> None:
    out, _ = run(b"Subject: a\r\nthis is body text\r\n")
    assert out == b"Subject: a\r\n" + ADDED + b"\r\nthis is body text\r\n"
    out, _ = run(b"no header at all\r\n")
    assert out == ADDED + b"\r\nno header at all\r\n"


def test_message_without_body() -> None:
    out, f = run(b"Subject: only a header\r\n")
    assert out == b"Subject: only a header\r\n" + ADDED and not f.gave_up


def test_cut_off_last_line_is_left_alone() -> None:
    out, f = run(b"Subject: no end")
    assert out == b"Subject: no end" and f.gave_up and f.added == ()


def test_too_long_header_section_is_left_alone() -> None:
    msg = b"Subject: x\r\n" + b"X-Long: " + b"a" * 5000 + b"\r\n\r\nbody\r\n"
    out, f = run(msg, chunks=[100] * 60, limit=4096)
    assert out == msg and f.gave_up and f.added == ()


def test_body_passes_through_unbuffered() -> None:
    f = HeaderFixup(date=DATE, message_id=MID)
    assert f.feed(b"Subject: a\r\n") == b""
    assert f.in_header
    first = f.feed(b"\r\nbody 1\r\n")
    assert first.endswith(b"\r\nbody 1\r\n") and not f.in_header
    assert f.feed(b"body 2\r\n") == b"body 2\r\n"
    assert f.finish() == b""


def test_values_with_line_breaks_are_refused() -> None:
    with pytest.raises(ValueError):
        HeaderFixup(date="x\r\nBcc: y", message_id=MID)


_LINES = st.sampled_from([
    b"Subject: s\r\n", b"Date: d\r\n", b"Message-Id: <m@x>\r\n", b" folded\r\n",
    b"\r\n", b"body line\r\n", b"X: y\r\n", b"\n", b"a:b\r\n",
])


@given(st.lists(_LINES, max_size=12), st.lists(st.integers(0, 40), max_size=10))
def test_any_chunking_gives_the_same_output(lines: list[bytes], chunks: list[int]) -> None:
    msg = b"".join(lines)
    whole, f1 = run(msg)
    split, f2 = run(msg, chunks)
    assert whole == split and f1.added == f2.added
    # Nothing is ever lost or reordered: removing the added fields gives the input back.
    rest = whole
    for name, value in (("Date", DATE), ("Message-ID", MID)):
        if name in f1.added:
            rest = rest.replace(f"{name}: {value}\r\n".encode(), b"", 1)
    if rest != msg:  # an empty line was inserted before a line that cannot be a field
        assert f1.added
        at = next(i for i in range(len(msg)) if rest[i] != msg[i])
        assert rest[at : at + 2] == b"\r\n" and rest[:at] + rest[at + 2 :] == msg
