"""The fast bulk message writer reads back like the stdlib-built message of compose()."""

from __future__ import annotations

import email
import email.policy
import email.utils
from email.header import decode_header, make_header
from email.message import EmailMessage

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from pigeon.mua.addresses import parse_address_list, parse_one_address
from pigeon.mua.compose import Draft, compose
from pigeon.mua.fastmime import encode_body, format_address, header_value, simple_message

_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=400)
_LINE = st.text(st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp")), max_size=120)


def parse(data: bytes) -> EmailMessage:
    msg = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def body_text(msg: EmailMessage, kind: str) -> str | None:
    part = msg.get_body((kind,))
    if part is None:
        return None
    content = part.get_content()
    assert isinstance(content, str)
    return content.replace("\r\n", "\n").replace("\r", "\n")


def display_name(data: bytes) -> str:
    """The To display name, decoded as RFC 2047 §6.2 says (adjacent encoded-words join;
    the stdlib's address parser puts spaces between them)."""
    raw = str(email.message_from_bytes(data, policy=email.policy.compat32)["To"])
    raw = raw.replace("\r", "").replace("\n", "")
    phrase, _, _ = raw.rpartition(" <")
    if not phrase:
        return ""
    if phrase.startswith("=?"):
        return str(make_header(decode_header(phrase)))
    return email.utils.parseaddr(raw)[0]


def view(data: bytes) -> tuple[object, ...]:
    msg = parse(data)
    return (str(msg["From"]), msg["To"].addresses[0].addr_spec, msg.get_content_type(),
            body_text(msg, "plain"), body_text(msg, "html"))


@settings(max_examples=150, deadline=None)
@example(name="0 0000\u0800\u0800 :", subject="", text=None, html=None)
@example(name='Doe, "J" \\', subject="=?utf-8?q?x?=", text="a\rb\r\n.\n", html="<p>é</p>")
@given(name=_LINE, subject=_LINE, text=st.none() | _TEXT, html=st.none() | _TEXT)
def test_fast_and_stdlib_messages_read_the_same(name: str, subject: str, text: str | None,
                                                 html: str | None) -> None:
    name = " ".join(name.split())
    subject = " ".join(subject.split())
    author = parse_one_address("News Team <news@example.com>")
    to = parse_address_list("bob@example.com")[0]
    to = type(to)(name, to.mailbox)
    slow = compose(Draft(author=author, to=[to], subject=subject,
                         text=text if text is not None or html is not None else "", html=html,
                         date=0.0, message_id="<x@example.com>")).content
    headers = [("From", format_address(author.display_name, author.addr_spec)),
               ("To", format_address(name, to.addr_spec))]
    if subject:
        headers.append(("Subject", header_value("Subject", subject)))
    fast = simple_message(headers, text=text if text is not None or html is not None else "",
                          html=html)
    assert fast.isascii()
    assert all(len(line) <= 998 for line in fast.split(b"\r\n"))
    assert fast.count(b"\n") == fast.count(b"\r\n")
    assert view(fast) == view(slow)
    # The name and the subject come back exactly. The stdlib's own writer is not the
    # reference for them: it loses a space before some specials in a name, and writes a
    # subject that looks like an encoded-word as it is (so readers decode it).
    assert display_name(fast) == name
    assert (parse(fast)["Subject"] or "") == subject


@pytest.mark.parametrize(("text", "cte"), [
    ("plain\n", "7bit"),
    ("a" * 998, "7bit"),
    ("a" * 999, "quoted-printable"),
    ("Hällo\n", "quoted-printable"),
    ("東京" * 50, "base64"),
])
def test_encode_body_chooses_the_transfer_encoding(text: str, cte: str) -> None:
    assert encode_body(text)[0] == cte


def test_header_value_encodes_lookalike_encoded_words_and_folds() -> None:
    assert header_value("Subject", "plain") == "plain"
    assert header_value("Subject", "=?utf-8?q?x?=").startswith("=?utf-8?")
    folded = header_value("Subject", "word " * 40)
    assert all(len(line) <= 78 for line in ("Subject: " + folded).split("\r\n"))
    assert format_address('Doe, "J"', "j@example.com") == '"Doe, \\"J\\"" <j@example.com>'
