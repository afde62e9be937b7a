"""The sendmail interface: options, the end of the message, header fixes, exit codes, and the
raw-message editing it rests on."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pigeon.mail.reply import Reply
from pigeon.mua.rawmessage import RawMessage, normalize_line_endings
from pigeon.mua.sendmail import (
    EX_DATAERR,
    EX_NOUSER,
    EX_OK,
    EX_TEMPFAIL,
    EX_UNAVAILABLE,
    EX_USAGE,
    SendmailError,
    SendmailOptions,
    exit_code_for,
    parse_sendmail_args,
    prepare_message,
    read_message,
)

T = 1_750_000_000.0

# ------------------------------------------------------------------ raw messages


def test_raw_message_keeps_fields_and_body_bytes() -> None:
    data = (b"Subject: hello\r\n\tworld\r\nTo: a@example.com,\r\n b@example.com\r\n"
            b"Bcc: c@example.com\r\n\r\nbody\r\n\r\nmore\r\n")
    msg = RawMessage.parse(data)
    assert [f.name for f in msg.fields] == ["Subject", "To", "Bcc"]
    assert msg.fields[0].value == "hello\tworld"
    assert msg.body == b"body\r\n\r\nmore\r\n"
    assert msg.to_bytes() == data
    assert msg.addresses("to", "BCC") == [("", "a@example.com"), ("", "b@example.com"),
                                          ("", "c@example.com")]
    assert msg.remove("bcc") == 1
    assert msg.to_bytes() == data.replace(b"Bcc: c@example.com\r\n", b"")


def test_raw_message_lf_input_and_no_header() -> None:
    msg = RawMessage.parse(b"just a body line\nsecond\n")
    assert msg.fields == []
    assert msg.body == b"just a body line\r\nsecond\r\n"
    msg = RawMessage.parse(b"Subject: x")
    assert msg.fields[0].raw == b"Subject: x\r\n" and msg.body == b""
    msg.add("Date", "now")
    assert msg.to_bytes() == b"Subject: x\r\nDate: now\r\n\r\n"
    with pytest.raises(ValueError):
        msg.add("X", "a\r\nBcc: b")


def test_encoded_word_value_is_decoded() -> None:
    msg = RawMessage.parse(b"Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\n\r\n")
    assert msg.fields[0].value == "Grüße"


@given(st.binary(max_size=300))
def test_normalize_line_endings_leaves_no_bare_cr_or_lf(data: bytes) -> None:
    out = normalize_line_endings(data)
    assert out.replace(b"\r\n", b"").count(b"\r") == 0
    assert out.replace(b"\r\n", b"").count(b"\n") == 0
    assert normalize_line_endings(out) == out


@given(st.binary(max_size=400))
def test_raw_message_round_trips_any_input(data: bytes) -> None:
    msg = RawMessage.parse(data)
    again = RawMessage.parse(msg.to_bytes())
    assert again.fields == msg.fields
    assert again.body == msg.body


# ------------------------------------------------------------------ options


@pytest.mark.parametrize(("args", "expected"), [
    ([], SendmailOptions()),
    (["-t", "-i"], SendmailOptions(extract=True, ignore_dots=True)),
    (["-oi", "bob@example.com"], SendmailOptions(ignore_dots=True,
                                                 recipients=["bob@example.com"])),
    (["-f", "<alice@example.com>", "-F", "Alice A"],
     SendmailOptions(sender="alice@example.com", full_name="Alice A")),
    (["-falice@example.com", "-FAlice"], SendmailOptions(sender="alice@example.com",
                                                         full_name="Alice")),
    (["-r", "<>"], SendmailOptions(sender="")),
    (["-oem", "-odb", "-bm", "-v", "-N", "never", "-R", "hdrs", "-V", "id1", "-B8BITMIME",
      "a@example.com"], SendmailOptions(recipients=["a@example.com"])),
    (["-Cpigeon.toml", "--", "-odd@example.com"],
     SendmailOptions(config=__import__("pathlib").Path("pigeon.toml"),
                     recipients=["-odd@example.com"])),
])
def test_parse_sendmail_args(args: list[str], expected: SendmailOptions) -> None:
    assert parse_sendmail_args(args) == expected


@pytest.mark.parametrize("args", [["-bs"], ["-bp"], ["-f"], ["-Z"], ["-o"], ["-q1h"]])
def test_parse_sendmail_args_refuses(args: list[str]) -> None:
    with pytest.raises(SendmailError) as info:
        parse_sendmail_args(args)
    assert info.value.code == EX_USAGE


@given(st.lists(st.text(max_size=12), max_size=8))
def test_parse_sendmail_args_only_raises_usage(args: list[str]) -> None:
    try:
        parse_sendmail_args(args)
    except SendmailError as exc:
        assert exc.code == EX_USAGE


# ------------------------------------------------------------------ the message


@pytest.mark.parametrize(("data", "ignore_dots", "expected"), [
    (b"a\nb\n", False, b"a\r\nb\r\n"),
    (b"a\n.\nb\n", False, b"a\r\n"),
    (b"a\n.\nb\n", True, b"a\r\n.\r\nb\r\n"),
    (b".\n", False, b""),
    (b"a\n.", False, b"a\r\n"),
    (b"a\n..\nb", False, b"a\r\n..\r\nb\r\n"),
    (b"no newline", True, b"no newline\r\n"),
])
def test_read_message(data: bytes, ignore_dots: bool, expected: bytes) -> None:
    assert read_message(data, ignore_dots=ignore_dots) == expected


def prepare(args: list[str], data: bytes):  # type: ignore[no-untyped-def]
    return prepare_message(parse_sendmail_args(args), read_message(data, ignore_dots=True),
                           login="root", hostname="mx.example.com", now=T)


def test_t_takes_to_cc_bcc_and_removes_bcc() -> None:
    p = prepare(["-t", "-i"], b"To: Bob <bob@example.com>\nCc: carol@example.com\n"
                              b"Bcc: dave@example.com,\n erin@example.net\nSubject: hi\n\nbody\n")
    assert p.recipients == ["bob@example.com", "carol@example.com", "dave@example.com",
                            "erin@example.net"]
    assert b"Bcc" not in p.content and b"dave@" not in p.content
    assert p.reverse_path == "root@mx.example.com"
    msg = RawMessage.parse(p.content)
    assert [f.name for f in msg.fields] == ["To", "Cc", "Subject", "From", "Date", "Message-ID"]
    assert msg.get_all("From")[0].value == "root@mx.example.com"
    assert msg.body == b"body\r\n"
    assert not p.smtputf8 and not p.eight_bit


def test_t_uses_resent_fields_when_present() -> None:
    p = prepare(["-t"], b"To: bob@example.com\nResent-To: carol@example.com\n"
                        b"Resent-Bcc: dave@example.com\nFrom: a@example.com\n\nx\n")
    assert p.recipients == ["carol@example.com", "dave@example.com"]
    assert b"Resent-Bcc" not in p.content


def test_arguments_with_t_and_sender_name() -> None:
    p = prepare(["-t", "-f", "alice@example.com", "-F", "Alice Example", "zed@example.org"],
                b"To: bob@example.com\nDate: Mon, 1 Jan 2024 00:00:00 +0000\n"
                b"Message-ID: <x@y>\n\nx\n")
    assert p.recipients == ["zed@example.org", "bob@example.com"]
    assert p.reverse_path == "alice@example.com"
    assert b"From: Alice Example <alice@example.com>\r\n" in p.content
    assert p.content.count(b"Date:") == 1 and p.content.count(b"Message-ID:") == 1


def test_without_t_header_recipients_are_ignored_but_bcc_removed() -> None:
    p = prepare(["bob@example.com"], b"To: carol@example.com\nBcc: dave@example.com\n\nx\n")
    assert p.recipients == ["bob@example.com"]
    assert b"Bcc" not in p.content


def test_utf8_and_8bit_detection() -> None:
    p = prepare(["jörg@example.com"], "Subject: Grüße\n\nHällo\n".encode())
    assert p.smtputf8 and p.eight_bit
    p = prepare(["bob@example.com"], "Subject: x\n\nHällo\n".encode())
    assert not p.smtputf8 and p.eight_bit


@pytest.mark.parametrize(("args", "data", "code"), [
    ([], b"Subject: x\n\nbody\n", EX_USAGE),
    (["-t"], b"To: undisclosed-recipients:;\n\nx\n", EX_USAGE),
    (["not an address"], b"x\n", EX_DATAERR),
    (["-t"], b"To: bob@\n\nx\n", EX_DATAERR),
    (["-f", "bad sender", "bob@example.com"], b"x\n", EX_DATAERR),
])
def test_prepare_errors(args: list[str], data: bytes, code: int) -> None:
    with pytest.raises(SendmailError) as info:
        prepare(args, data)
    assert info.value.code == code


@pytest.mark.parametrize(("replies", "code"), [
    ([Reply(250, "2.0.0", "ok")], EX_OK),
    ([Reply(250, "2.0.0", "ok"), Reply(550, "5.1.1", "unknown")], EX_NOUSER),
    ([Reply(451, "4.3.0", "later"), Reply(550, "5.1.1", "unknown")], EX_NOUSER),
    ([Reply(421, "4.4.1", "cannot connect")], EX_TEMPFAIL),
    ([Reply(554, "5.7.1", "relay denied")], EX_UNAVAILABLE),
    ([Reply(501, "5.1.3", "bad address")], EX_DATAERR),
    ([Reply(552, "5.3.4", "too big"), Reply(451, "4.3.0", "x")], EX_UNAVAILABLE),
    ([Reply(550, None, "no enhanced code")], EX_UNAVAILABLE),
])
def test_exit_code_for(replies: list[Reply], code: int) -> None:
    assert exit_code_for(replies) == code


@given(st.binary(max_size=300), st.booleans())
def test_read_message_output_is_crlf_text(data: bytes, ignore_dots: bool) -> None:
    out = read_message(data, ignore_dots=ignore_dots)
    assert out == b"" or out.endswith(b"\r\n")
    assert out.replace(b"\r\n", b"").count(b"\r") == 0
    assert out.replace(b"\r\n", b"").count(b"\n") == 0
    if not ignore_dots:
        assert not out.startswith(b".\r\n") and b"\r\n.\r\n" not in out
