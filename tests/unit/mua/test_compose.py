"""Composing messages: MIME structure, encodings, envelope, Bcc, and user-given addresses."""

from __future__ import annotations

import email
import email.policy
from email.message import EmailMessage

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pigeon.mua.addresses import AddressListError, parse_address_list, parse_one_address
from pigeon.mua.compose import (
    Attachment,
    ComposeError,
    Draft,
    attachment_from_file,
    compose,
    parse_header_option,
)

T = 1_750_000_000.0


def text_of(part: object) -> str:
    """A text part's content with the CRLF line endings of the wire turned into LF."""
    content = part.get_content()  # type: ignore[attr-defined]
    assert isinstance(content, str)
    return content.replace("\r\n", "\n")


def parse(content: bytes) -> EmailMessage:
    msg = email.message_from_bytes(content, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def draft(**kw: object) -> Draft:
    base: dict[str, object] = {
        "author": parse_one_address("Alice <alice@example.com>"),
        "to": parse_address_list("bob@example.com"),
        "date": T,
        "message_id": "<fixed@example.com>",
    }
    base.update(kw)
    return Draft(**base)  # type: ignore[arg-type]


def test_plain_ascii_message_is_7bit_with_crlf() -> None:
    m = compose(draft(subject="Hello", text="Hi Bob\n"))
    assert m.content.count(b"\n") == m.content.count(b"\r\n")
    msg = parse(m.content)
    assert msg["Subject"] == "Hello"
    assert msg["Content-Transfer-Encoding"] == "7bit"
    assert msg["Message-ID"] == "<fixed@example.com>"
    assert msg["Date"] == "Tue, 15 Jul 2025 15:06:40 +0000" or msg["Date"]
    assert m.reverse_path == "alice@example.com"
    assert m.recipients == ["bob@example.com"]
    assert (m.smtputf8, m.eight_bit) == (False, False)


def test_text_html_attachments_non_ascii_subject_round_trip() -> None:
    blob1 = bytes(range(256)) * 40
    blob2 = b"\x00\xff\r\n\x1b" * 100
    m = compose(draft(
        subject="Grüße aus Köln — 東京",
        text="Hällo Bob\nzweite Zeile\n",
        html="<p>Hällo <b>Bob</b></p>\n",
        attachments=[Attachment("data.bin", blob1), Attachment("bild.png", blob2, "image/png")],
        cc=parse_address_list("Carol Ünï <carol@example.com>"),
        bcc=parse_address_list("dave@example.com, erin@example.net"),
    ))
    assert m.content.isascii() and not m.eight_bit
    assert b"Subject: =?utf-8?" in m.content
    assert b"dave@" not in m.content and b"erin@" not in m.content
    assert b"Bcc" not in m.content
    assert m.recipients == ["bob@example.com", "carol@example.com", "dave@example.com",
                            "erin@example.net"]
    msg = parse(m.content)
    assert msg["Subject"] == "Grüße aus Köln — 東京"
    assert msg.get_content_type() == "multipart/mixed"
    body = msg.get_body(("plain",))
    html = msg.get_body(("html",))
    assert body is not None and html is not None
    assert text_of(body) == "Hällo Bob\nzweite Zeile\n"
    assert text_of(html) == "<p>Hällo <b>Bob</b></p>\n"
    assert body["Content-Transfer-Encoding"] == "quoted-printable"
    atts = list(msg.iter_attachments())
    assert [a.get_filename() for a in atts] == ["data.bin", "bild.png"]
    assert [a.get_content_type() for a in atts] == ["application/octet-stream", "image/png"]
    assert [a.get_content() for a in atts] == [blob1, blob2]
    assert str(msg["Cc"]) == "Carol Ünï <carol@example.com>"
    # MIME-Version only at the top (RFC 2045 §4).
    assert m.content.count(b"MIME-Version") == 1


def test_html_only_and_empty_body() -> None:
    msg = parse(compose(draft(html="<p>x</p>")).content)
    assert msg.get_content_type() == "text/html"
    msg = parse(compose(draft()).content)
    assert msg.get_content_type() == "text/plain"
    assert text_of(msg) == "\n"


def test_non_ascii_body_without_short_lines_uses_base64() -> None:
    m = compose(draft(text="東京" * 400))
    msg = parse(m.content)
    assert msg["Content-Transfer-Encoding"] == "base64"
    assert text_of(msg) == "東京" * 400 + "\n"


def test_utf8_local_part_needs_smtputf8_and_utf8_headers() -> None:
    m = compose(draft(to=parse_address_list("Jörg <jörg@example.com>"), subject="Grüße"))
    assert m.smtputf8 and m.eight_bit
    assert "To: Jörg <jörg@example.com>".encode() in m.content
    assert "Subject: Grüße".encode() in m.content
    assert m.recipients == ["jörg@example.com"]


def test_idn_domain_is_written_in_a_labels_without_smtputf8() -> None:
    m = compose(draft(to=parse_address_list("bob@bücher.example")))
    assert not m.smtputf8
    assert b"To: bob@xn--bcher-kva.example" in m.content
    assert m.recipients == ["bob@xn--bcher-kva.example"]


def test_duplicate_recipients_once_in_envelope() -> None:
    m = compose(draft(to=parse_address_list("bob@example.com, Bob@Example.com"),
                      bcc=parse_address_list("bob@example.com")))
    assert m.recipients == ["bob@example.com"]


def test_headers_reply_to_and_overrides() -> None:
    m = compose(draft(
        reply_to=parse_address_list("list@example.com"),
        headers=[("X-Campaign", "42"), ("Message-ID", "<mine@example.com>")],
    ))
    msg = parse(m.content)
    assert msg["Reply-To"] == "list@example.com"
    assert msg["X-Campaign"] == "42"
    assert msg.get_all("Message-ID") == ["<mine@example.com>"]
    assert m.message_id == "<mine@example.com>"


def test_no_recipient_or_bad_subject_refused() -> None:
    with pytest.raises(ComposeError, match="no recipients"):
        compose(draft(to=[]))
    with pytest.raises(ComposeError, match="line breaks"):
        compose(draft(subject="a\r\nBcc: x@example.com"))


@pytest.mark.parametrize(("text", "expected"), [
    ("X-Tag: hello", ("X-Tag", "hello")),
    ("X-Tag:hello  ", ("X-Tag", "hello")),
    ("List-Id: <news.example.com>", ("List-Id", "<news.example.com>")),
])
def test_parse_header_option(text: str, expected: tuple[str, str]) -> None:
    assert parse_header_option(text) == expected


@pytest.mark.parametrize("text", [
    "no colon", ": empty name", "Bad Name: x", "X-A: a\r\nBcc: b", "Bcc: x@example.com",
    "Content-Type: text/html", "From: x@example.com", "X-Long: " + "a" * 1000,
])
def test_parse_header_option_refuses(text: str) -> None:
    with pytest.raises(ComposeError):
        parse_header_option(text)


@given(st.text(max_size=200))
def test_parse_header_option_only_raises_compose_error(text: str) -> None:
    try:
        name, value = parse_header_option(text)
    except ComposeError:
        return
    assert "\n" not in value and "\r" not in value and ":" not in name


@pytest.mark.parametrize(("text", "expected"), [
    ("bob@example.com", [("", "bob@example.com")]),
    ("Bob <bob@example.com>", [("Bob", "bob@example.com")]),
    ('"Doe, Jane" <jane@x.org>, bob@EXAMPLE.com', [("Doe, Jane", "jane@x.org"),
                                                   ("", "bob@example.com")]),
    ("jörg@bücher.example", [("", "jörg@xn--bcher-kva.example")]),
])
def test_parse_address_list(text: str, expected: list[tuple[str, str]]) -> None:
    assert [(a.display_name, a.addr_spec) for a in parse_address_list(text)] == expected


@pytest.mark.parametrize("text", ["", "bob", "bob@", "@example.com", "a@b\r\nc", "<>"])
def test_parse_address_list_refuses(text: str) -> None:
    with pytest.raises(AddressListError):
        parse_address_list(text)


def test_parse_one_address_wants_one() -> None:
    with pytest.raises(AddressListError, match="expected one"):
        parse_one_address("a@example.com, b@example.com")


@given(st.text(max_size=120))
def test_parse_address_list_only_raises_address_list_error(text: str) -> None:
    try:
        addresses = parse_address_list(text)
    except AddressListError:
        return
    assert addresses and all("@" in a.addr_spec for a in addresses)


_header_text = st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=80)


@given(subject=_header_text, body=st.text(st.characters(blacklist_categories=("Cs",),
                                                          blacklist_characters="\r"),
                                          max_size=300))
def test_subject_and_body_round_trip(subject: str, body: str) -> None:
    subject = " ".join(subject.split())
    m = compose(draft(subject=subject, text=body))
    assert not m.eight_bit
    msg = parse(m.content)
    assert (msg["Subject"] or "") == subject
    expected = body if body.endswith("\n") else body + "\n"
    assert text_of(msg) == expected


def test_attachment_from_file_guesses_type(tmp_path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "a.pdf").write_bytes(b"%PDF-1.4\x00\xff")
    (tmp_path / "b.tar.gz").write_bytes(b"\x1f\x8b")
    (tmp_path / "c.weird-ext").write_bytes(b"x")
    assert attachment_from_file(tmp_path / "a.pdf").content_type == "application/pdf"
    assert attachment_from_file(tmp_path / "b.tar.gz").content_type == "application/octet-stream"
    assert attachment_from_file(tmp_path / "c.weird-ext").content_type == \
        "application/octet-stream"
    with pytest.raises(ComposeError, match="cannot read"):
        attachment_from_file(tmp_path / "missing")


@pytest.mark.parametrize(("content_type", "sent_as"), [
    ("message/rfc822", "application/octet-stream"),
    ("multipart/mixed", "application/octet-stream"),
    ("text/plain", "text/plain"),
    ("bogus", "application/octet-stream"),
])
def test_attachments_are_never_base64_message_or_multipart(content_type: str,
                                                           sent_as: str) -> None:
    data = b"Subject: hi\r\n\r\nbody\xff\r\n"
    msg = parse(compose(draft(attachments=[Attachment("x.eml", data, content_type)])).content)
    (part,) = list(msg.iter_attachments())
    assert part.get_content_type() == sent_as
    assert part.get_payload(decode=True) == data
