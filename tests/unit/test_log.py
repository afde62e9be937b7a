"""Tests for pigeon.log: the line format, setup_logging and sanitize."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pigeon.config import LogSettings, Settings
from pigeon.log import LineFormatter, sanitize, setup_logging

# 2026-01-02T03:04:05.678Z
CREATED = 1767323045.678


@pytest.fixture
def restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in root.handlers:
        if handler not in handlers:
            handler.close()
    root.handlers[:] = handlers
    root.setLevel(level)


def make_record(msg: str, *args: object, level: int = logging.INFO) -> logging.LogRecord:
    record = logging.LogRecord("pigeon.net.smtp", level, __file__, 1, msg, args, None)
    record.created = CREATED
    record.msecs = 678.0
    record.process = 4242
    return record


def test_line_format() -> None:
    line = LineFormatter().format(make_record("accepted %s from %s", "q1", "[192.0.2.1]"))
    assert line == (
        "2026-01-02T03:04:05.678Z pigeon[4242] INFO pigeon.net.smtp: accepted q1 from [192.0.2.1]"
    )


def test_multi_line_message_repeats_prefix() -> None:
    line = LineFormatter().format(make_record("one\ntwo", level=logging.WARNING))
    assert line.split("\n") == [
        "2026-01-02T03:04:05.678Z pigeon[4242] WARNING pigeon.net.smtp: one",
        "2026-01-02T03:04:05.678Z pigeon[4242] WARNING pigeon.net.smtp: two",
    ]


def test_traceback_lines_carry_the_prefix() -> None:
    record = make_record("delivery failed", level=logging.ERROR)
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        record.exc_info = sys.exc_info()
    lines = LineFormatter().format(record).split("\n")
    prefix = "2026-01-02T03:04:05.678Z pigeon[4242] ERROR pigeon.net.smtp: "
    assert all(line.startswith(prefix) for line in lines)
    assert lines[0] == prefix + "delivery failed"
    assert lines[1] == prefix + "Traceback (most recent call last):"
    assert lines[-1] == prefix + "RuntimeError: boom"


def test_empty_message() -> None:
    assert LineFormatter().format(make_record("")) == (
        "2026-01-02T03:04:05.678Z pigeon[4242] INFO pigeon.net.smtp: "
    )


@pytest.mark.usefixtures("restore_root_logger")
def test_setup_logging_stderr_and_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log_file = tmp_path / "log" / "pigeon.log"
    settings = Settings(log=LogSettings(level="WARNING", file=log_file))
    setup_logging(settings)
    setup_logging(settings)  # a second call replaces, never doubles, the handlers
    logger = logging.getLogger("pigeon.test")
    logger.info("not written")
    logger.warning("queue id %s deferred", "Q7")
    for handler in logging.getLogger().handlers:
        handler.flush()
    err_lines = capsys.readouterr().err.splitlines()
    file_lines = log_file.read_text(encoding="utf-8").splitlines()
    assert len(err_lines) == 1
    assert err_lines == file_lines
    assert err_lines[0].endswith(" WARNING pigeon.test: queue id Q7 deferred")
    assert logging.getLogger().level == logging.WARNING


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("EHLO client.example", "EHLO client.example"),
        ("line\r\nforged", "line\\r\\nforged"),
        ("tab\there", "tab\\there"),
        ("nul\x00", "nul\\x00"),
        ("esc\x1b[31mred", "esc\\x1b[31mred"),
        ("del\x7f", "del\\x7f"),
        ("c1\x85", "c1\\x85"),
        ("back\\slash", "back\\\\slash"),
        ("café", "café"),
        ("zero\u200bwidth", "zero\\u200bwidth"),
        ("rtl\u202eoverride", "rtl\\u202eoverride"),
        ("plane16\U00100000", "plane16\\U00100000"),
        ("", ""),
    ],
)
def test_sanitize(text: str, expected: str) -> None:
    assert sanitize(text) == expected


def test_sanitize_truncates() -> None:
    assert sanitize("a" * 200) == "a" * 200
    assert sanitize("a" * 201) == "a" * 200 + "..."
    assert sanitize("abcdef", limit=3) == "abc..."
    assert sanitize("abc", limit=0) == "..."
    assert sanitize("", limit=0) == ""


def test_sanitize_never_cuts_an_escape() -> None:
    assert sanitize("a" * 198 + "\n") == "a" * 198 + "\\n"
    assert sanitize("a" * 199 + "\n") == "a" * 199 + "..."
    assert sanitize("ab\x00", limit=4) == "ab..."


def test_sanitize_negative_limit() -> None:
    with pytest.raises(ValueError):
        sanitize("x", limit=-1)


@given(text=st.text(), limit=st.integers(min_value=0, max_value=300))
def test_sanitize_property(text: str, limit: int) -> None:
    full = sanitize(text, limit=10 * len(text))
    assert full.isprintable()
    # The escapes round-trip to the original text.
    assert full.encode("latin-1", "backslashreplace").decode("unicode_escape") == text
    out = sanitize(text, limit)
    if len(full) <= limit:
        assert out == full
    else:
        assert out.endswith("...")
        assert len(out) <= limit + 3
        assert full.startswith(out[:-3])


def _sanitize_by_character(text: str, limit: int) -> str:
    """sanitize() as its docstring defines it, one character at a time."""
    pieces: list[str] = []
    length = 0
    for ch in text:
        if ch in "\\\r\n\t":
            piece = {"\\": "\\\\", "\r": "\\r", "\n": "\\n", "\t": "\\t"}[ch]
        elif ch.isprintable():
            piece = ch
        else:
            piece = repr(ch)[1:-1]
        if length + len(piece) > limit:
            pieces.append("...")
            break
        pieces.append(piece)
        length += len(piece)
    return "".join(pieces)


@given(
    text=st.text(st.sampled_from("ab\\\r\n\t\x00\x85é\u200b")) | st.text(),
    limit=st.integers(min_value=0, max_value=12),
)
def test_sanitize_matches_the_definition(text: str, limit: int) -> None:
    assert sanitize(text, limit) == _sanitize_by_character(text, limit)


def test_sanitize_plain_text_at_the_limit() -> None:
    assert sanitize("<sender@example.org>", 20) == "<sender@example.org>"
    assert sanitize("<sender@example.org>", 19) == "<sender@example.org..."
    assert sanitize("a\\b", 3) == "a\\\\..."


def test_line_format_follows_the_second() -> None:
    formatter = LineFormatter()
    first = make_record("one")
    later = make_record("two")
    later.created, later.msecs = CREATED + 58.5, 178.0  # 2026-01-02T03:05:04.178Z
    assert [formatter.format(r) for r in (first, later, first)] == [
        "2026-01-02T03:04:05.678Z pigeon[4242] INFO pigeon.net.smtp: one",
        "2026-01-02T03:05:04.178Z pigeon[4242] INFO pigeon.net.smtp: two",
        "2026-01-02T03:04:05.678Z pigeon[4242] INFO pigeon.net.smtp: one",
    ]


def test_line_separators_other_than_newline_split_the_record() -> None:
    line = LineFormatter().format(make_record("one\rtwo\x0bthree"))
    assert line.split("\n") == [
        "2026-01-02T03:04:05.678Z pigeon[4242] INFO pigeon.net.smtp: one",
        "2026-01-02T03:04:05.678Z pigeon[4242] INFO pigeon.net.smtp: two",
        "2026-01-02T03:04:05.678Z pigeon[4242] INFO pigeon.net.smtp: three",
    ]
