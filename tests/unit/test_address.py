"""RFC 5321 §4.1.2 address parsing: paths, mailboxes, domains, limits, SMTPUTF8."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pigeon.mail.address import (
    AddressError,
    Domain,
    ForwardPath,
    Mailbox,
    ReversePath,
    parse_domain,
    parse_forward_path,
    parse_mailbox,
    parse_reverse_path,
    split_path,
)
from pigeon.mail.reply import Reply


def mbox(local_part: str, domain: str | None) -> Mailbox:
    return Mailbox(local_part, None if domain is None else Domain(domain))


def reply_of(exc: pytest.ExceptionInfo[AddressError]) -> tuple[int, str, str]:
    reply = exc.value.reply
    return reply.code, str(reply.enhanced), reply.text


# -- valid forward-paths -----------------------------------------------------------------------

VALID_FORWARD = [
    ("<bob@example.com>", mbox("bob", "example.com")),
    ("<Bob@EXAMPLE.Com>", mbox("Bob", "example.com")),
    ("<a.b.c@example.com>", mbox("a.b.c", "example.com")),
    ("<@relay.example.org:alice@example.org>", mbox("alice", "example.org")),
    (
        "<@relay1.example.net,@relay2.example.net:bob@example.com>",
        mbox("bob", "example.com"),
    ),
    ('<"odd user"@example.com>', mbox("odd user", "example.com")),
    ('<"odd\\ user"@example.com>', mbox("odd user", "example.com")),
    ('<"bob"@example.com>', mbox("bob", "example.com")),
    ('<"a.b"@example.com>', mbox("a.b", "example.com")),
    ('<"a..b"@example.com>', mbox("a..b", "example.com")),
    ('<"a\\"b"@example.com>', mbox('a"b', "example.com")),
    ('<"a\\\\b"@example.com>', mbox("a\\b", "example.com")),
    ('<"@"@example.com>', mbox("@", "example.com")),
    ('<"a>b"@example.com>', mbox("a>b", "example.com")),
    ("<|/bin/true@example.org>", mbox("|/bin/true", "example.org")),
    ("<#{7*7}@example.org>", mbox("#{7*7}", "example.org")),
    ("<user%other.example@relay.example>", mbox("user%other.example", "relay.example")),
    ("<host!user@example.com>", mbox("host!user", "example.com")),
    ("<!#$%&'*+-/=?^_`{|}~@example.com>", mbox("!#$%&'*+-/=?^_`{|}~", "example.com")),
    ("<bob@localhost>", mbox("bob", "localhost")),
    ("<bob@123.example>", mbox("bob", "123.example")),
    ("<bob@mail_host.example.com>", mbox("bob", "mail_host.example.com")),
    ("<bob@_dmarc.example.com>", mbox("bob", "_dmarc.example.com")),
    ("<bob@a-b--c.example>", mbox("bob", "a-b--c.example")),
    ("<bob@xn--bcher-kva.example>", mbox("bob", "xn--bcher-kva.example")),
    ("<bob@[192.0.2.1]>", mbox("bob", "[192.0.2.1]")),
    ("<bob@[192.000.002.001]>", mbox("bob", "[192.0.2.1]")),
    ("<bob@[IPv6:2001:DB8:0:0:0:0:0:1]>", mbox("bob", "[IPv6:2001:db8::1]")),
    ("<bob@[ipv6:2001:db8::1]>", mbox("bob", "[IPv6:2001:db8::1]")),
    ("<bob@[IPv6:::1]>", mbox("bob", "[IPv6:::1]")),
    ("<bob@[IPv6:::ffff:1.2.3.4]>", mbox("bob", "[IPv6:::ffff:1.2.3.4]")),
    ("<bob@[IPv6:::FFFF:102:304]>", mbox("bob", "[IPv6:::ffff:1.2.3.4]")),
    ("<postmaster@example.com>", mbox("postmaster", "example.com")),
    ("<postmaster>", mbox("postmaster", None)),
    ("<PostMaster>", mbox("postmaster", None)),
]


@pytest.mark.parametrize(("token", "expected"), VALID_FORWARD)
def test_valid_forward_path(token: str, expected: Mailbox) -> None:
    assert parse_forward_path(token) == ForwardPath(expected)
    assert parse_forward_path(token, smtputf8=True) == ForwardPath(expected)


@pytest.mark.parametrize(
    ("token", "expected"), [(t, m) for t, m in VALID_FORWARD if m.domain is not None]
)
def test_valid_reverse_path(token: str, expected: Mailbox) -> None:
    assert parse_reverse_path(token) == ReversePath(expected)


def test_null_reverse_path() -> None:
    path = parse_reverse_path("<>")
    assert path == ReversePath(None)
    assert path.is_null is True
    assert str(path) == "<>"


def test_quoted_and_escaped_forms_are_equal() -> None:
    plain = parse_forward_path('<"odd user"@example.com>')
    escaped = parse_forward_path('<"odd\\ user"@example.com>')
    assert plain == escaped
    assert parse_forward_path('<"bob"@example.com>') == parse_forward_path("<bob@example.com>")


@pytest.mark.parametrize(
    ("mailbox", "text"),
    [
        (mbox("bob", "example.com"), "bob@example.com"),
        (mbox("odd user", "example.com"), '"odd user"@example.com'),
        (mbox("a..b", "example.com"), '"a..b"@example.com'),
        (mbox('a"b', "example.com"), '"a\\"b"@example.com'),
        (mbox("a\\b", "example.com"), '"a\\\\b"@example.com'),
        (mbox(".bob", "example.com"), '".bob"@example.com'),
        (mbox("jörg", "example.com"), "jörg@example.com"),
        (mbox("jörg müller", "example.com"), '"jörg müller"@example.com'),
        (mbox("postmaster", None), "postmaster"),
    ],
)
def test_mailbox_str(mailbox: Mailbox, text: str) -> None:
    assert str(mailbox) == text


def test_path_str() -> None:
    assert str(parse_forward_path("<@r.example:Bob@Example.COM>")) == "<Bob@example.com>"
    assert str(parse_forward_path("<POSTMASTER>")) == "<postmaster>"
    assert str(parse_reverse_path('<"x y"@example.com>')) == '<"x y"@example.com>'


def test_local_part_case_is_kept_and_canonical_key_folds_it() -> None:
    upper = parse_mailbox("Bob@Example.com")
    lower = parse_mailbox("bob@example.com")
    assert upper != lower
    assert upper.local_part == "Bob"
    assert upper.canonical_key() == "bob@example.com"
    assert lower.canonical_key() == "bob@example.com"
    assert mbox("PostMaster", None).canonical_key() == "postmaster"


# -- invalid paths -----------------------------------------------------------------------------

INVALID_FORWARD = [
    ("<>", 501, "5.1.3", "Null forward-path not allowed"),
    ("<@route.example bob@example.com>", 501, "5.1.3", "Malformed source route"),
    ("<@a.example:@b.example:bob@example.com>", 501, "5.1.3", "Malformed source route"),
    ("<@:bob@example.com>", 501, "5.1.3", "Malformed source route"),
    ("<@a.example,,@b.example:bob@example.com>", 501, "5.1.3", "Malformed source route"),
    ("<@a.example,@:bob@example.com>", 501, "5.1.3", "Malformed source route"),
    ("<@a.example,b.example:bob@example.com>", 501, "5.1.3", "Malformed source route"),
    ("<@[192.0.2.1]:bob@example.com>", 501, "5.1.3", "Malformed source route"),
    ("<@bad_-.example.:bob@example.com>", 501, "5.1.3", "Malformed source route"),
    ("<@example.com>", 501, "5.1.3", "Empty local part"),
    ('<""@example.com>', 501, "5.1.3", "Empty local part"),
    ("<bob>", 501, "5.1.3", "Domain name required"),
    ("<bob@>", 501, "5.1.3", "Domain name required"),
    ('<"bob">', 501, "5.1.3", "Domain name required"),
    ("<@r.example:postmaster>", 501, "5.1.3", "Domain name required"),
    ("<.bob@example.com>", 501, "5.1.3", "Invalid local part"),
    ("<bob.@example.com>", 501, "5.1.3", "Invalid local part"),
    ("<bo..b@example.com>", 501, "5.1.3", "Invalid local part"),
    ("<bo b@example.com>", 501, "5.1.3", "Invalid local part"),
    ("<bo(b)@example.com>", 501, "5.1.3", "Invalid local part"),
    ("<bo\\b@example.com>", 501, "5.1.3", "Invalid local part"),
    ('<"bob"x@example.com>', 501, "5.1.3", "Invalid local part"),
    ('<"bob@example.com>', 501, "5.1.3", "Invalid quoted local part"),
    ('<"a\\"@example.com>', 501, "5.1.3", "Invalid quoted local part"),
    ("<bob@example.com.>", 501, "5.1.3", "Trailing dot not allowed in domain"),
    ("<bob@.example.com>", 501, "5.1.3", "Invalid domain name"),
    ("<bob@exa..mple.com>", 501, "5.1.3", "Invalid domain name"),
    ("<bob@.>", 501, "5.1.3", "Trailing dot not allowed in domain"),
    ("<bob@-example.com>", 501, "5.1.3", "Invalid domain name"),
    ("<bob@example-.com>", 501, "5.1.3", "Invalid domain name"),
    ("<bob@exa mple.com>", 501, "5.1.3", "Invalid domain name"),
    ("<bob@exa$mple.com>", 501, "5.1.3", "Invalid domain name"),
    ("<bob@a@example.com>", 501, "5.1.3", "Invalid domain name"),
    ("<bob@[1.2.3]>", 501, "5.1.3", "Invalid address literal"),
    ("<bob@[1.2.3.4>", 501, "5.1.3", "Invalid address literal"),
    ("<bob@[1.2.3.4]x>", 501, "5.1.3", "Invalid address literal"),
    ("<bob@[1.2.3.256]>", 501, "5.1.3", "Invalid IPv4 address literal"),
    ("<bob@[IPv6:1::2::3]>", 501, "5.1.3", "Invalid IPv6 address literal"),
    ("<bob@[IPv6:fe80::1%eth0]>", 501, "5.1.3", "Invalid IPv6 address literal"),
    ("<bob@[IPv6:1.2.3.4]>", 501, "5.1.3", "Invalid IPv6 address literal"),
    ("<bob@[x400:c=us;a=x]>", 501, "5.1.3", "Address literal type not supported"),
    ("<ceo@example.org>\r\n", 501, "5.1.3", "Control characters not allowed in address"),
    ("<ceo@example.org\r\n>", 501, "5.1.3", "Control characters not allowed in address"),
    ("<ceo@exa\nmple.org>", 501, "5.1.3", "Control characters not allowed in address"),
    ("<ceo\x00@example.org>", 501, "5.1.3", "Control characters not allowed in address"),
    ("<ceo\t@example.org>", 501, "5.1.3", "Control characters not allowed in address"),
    ('<"ceo\t"@example.org>', 501, "5.1.3", "Control characters not allowed in address"),
    ('<"ceo\\\x7f"@example.org>', 501, "5.1.3", "Control characters not allowed in address"),
    ("<ceo\x85@example.org>", 501, "5.1.3", "Control characters not allowed in address"),
    ("<ceo\ud800@example.org>", 501, "5.1.3", "Invalid UTF-8 in address"),
    ("<jörg@example.com>", 553, "5.6.7", "Non-ASCII addresses require SMTPUTF8"),
    ("<bob@bücher.example>", 553, "5.6.7", "Non-ASCII addresses require SMTPUTF8"),
    ("<@bücher.example:bob@example.com>", 553, "5.6.7", "Non-ASCII addresses require SMTPUTF8"),
    ("bob@example.com", 501, "5.5.4", "Syntax error: address must be enclosed in <>"),
    ("<bob@example.com", 501, "5.5.4", "Syntax error: address must be enclosed in <>"),
    ("", 501, "5.5.4", "Syntax error: address must be enclosed in <>"),
    ("<", 501, "5.5.4", "Syntax error: address must be enclosed in <>"),
]


@pytest.mark.parametrize(("token", "code", "enhanced", "text"), INVALID_FORWARD)
def test_invalid_forward_path(token: str, code: int, enhanced: str, text: str) -> None:
    with pytest.raises(AddressError) as exc:
        parse_forward_path(token)
    assert reply_of(exc) == (code, enhanced, text)


@pytest.mark.parametrize(
    ("token", "code", "enhanced", "text"),
    [case for case in INVALID_FORWARD if case[0] not in ("<>", "<@r.example:postmaster>")],
)
def test_invalid_reverse_path(token: str, code: int, enhanced: str, text: str) -> None:
    with pytest.raises(AddressError) as exc:
        parse_reverse_path(token)
    assert reply_of(exc) == (code, enhanced, text)


@pytest.mark.parametrize("token", ["<postmaster>", "<PostMaster>"])
def test_bare_postmaster_is_not_a_reverse_path(token: str) -> None:
    with pytest.raises(AddressError) as exc:
        parse_reverse_path(token)
    assert reply_of(exc) == (501, "5.1.3", "Domain name required")


def test_address_error_from_text_is_501_5_1_3() -> None:
    assert AddressError("Bad").reply == Reply(501, "5.1.3", "Bad")


# -- SMTPUTF8 (RFC 6531) -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("token", "expected", "is_utf8"),
    [
        ("<jörg@example.com>", mbox("jörg", "example.com"), True),
        ('<"jörg müller"@example.com>', mbox("jörg müller", "example.com"), True),
        ("<bob@bücher.example>", mbox("bob", "xn--bcher-kva.example"), True),
        ("<bob@BÜCHER.Example>", mbox("bob", "xn--bcher-kva.example"), True),
        ("<bob@ｅｘａｍｐｌｅ。com>", mbox("bob", "example.com"), False),
        ("<用户@例子.广告>", mbox("用户", "xn--fsqu00a.xn--4rr70v"), True),
        ("<@bücher.example:bob@example.com>", mbox("bob", "example.com"), False),
        ("<bob@example.com>", mbox("bob", "example.com"), False),
        ("<bob@xn--bcher-kva.example>", mbox("bob", "xn--bcher-kva.example"), True),
    ],
)
def test_utf8_paths(token: str, expected: Mailbox, is_utf8: bool) -> None:
    path = parse_forward_path(token, smtputf8=True)
    assert path == ForwardPath(expected)
    assert path.mailbox.is_utf8 is is_utf8


@pytest.mark.parametrize(
    ("token", "text"),
    [
        ("<bob@\u0300x.example>", "Invalid internationalized domain name"),
        ("<bob@bü\u200dcher.example>", "Invalid internationalized domain name"),
        ("<bob@bü$cher.example>", "Invalid internationalized domain name"),
        ("<bob@bücher.example.>", "Trailing dot not allowed in domain"),
        ("<bob@ｘ＠y.example>", "Invalid domain name"),
        (f"<bob@{'ü' * 70}.example>", "Domain label too long (max 63 octets)"),
        ("<jörg\x85@example.com>", "Control characters not allowed in address"),
    ],
)
def test_invalid_utf8_paths(token: str, text: str) -> None:
    with pytest.raises(AddressError) as exc:
        parse_forward_path(token, smtputf8=True)
    assert reply_of(exc) == (501, "5.1.3", text)


def test_domain_unicode() -> None:
    assert Domain("xn--bcher-kva.example").unicode == "bücher.example"
    assert Domain("example.com").unicode == "example.com"
    assert Domain("[192.0.2.1]").unicode == "[192.0.2.1]"
    assert Domain("xn--zz.example").unicode == "xn--zz.example"  # not valid: falls back
    assert Domain("[192.0.2.1]").is_literal is True
    assert Domain("example.com").is_literal is False


# -- parse_domain / parse_mailbox ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("Example.COM", "example.com"),
        ("[10.0.0.1]", "[10.0.0.1]"),
        ("[IPv6:2001:0DB8::0001]", "[IPv6:2001:db8::1]"),
        ("localhost", "localhost"),
    ],
)
def test_parse_domain(text: str, name: str) -> None:
    assert parse_domain(text) == Domain(name)


def test_parse_domain_utf8() -> None:
    assert parse_domain("bücher.example", smtputf8=True) == Domain("xn--bcher-kva.example")
    with pytest.raises(AddressError) as exc:
        parse_domain("bücher.example")
    assert reply_of(exc) == (553, "5.6.7", "Non-ASCII addresses require SMTPUTF8")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "Domain name required"),
        ("example.com.", "Trailing dot not allowed in domain"),
        ("exa mple.com", "Invalid domain name"),
        ("x" * 2000, "Domain too long (max 255 octets)"),
    ],
)
def test_parse_domain_invalid(text: str, message: str) -> None:
    with pytest.raises(AddressError) as exc:
        parse_domain(text)
    assert reply_of(exc) == (501, "5.1.3", message)


def test_parse_mailbox() -> None:
    assert parse_mailbox('"a b"@Example.com') == mbox("a b", "example.com")
    with pytest.raises(AddressError) as exc:
        parse_mailbox("<a@example.com>")
    assert reply_of(exc) == (501, "5.1.3", "Invalid local part")
    with pytest.raises(AddressError) as exc:
        parse_mailbox("postmaster")
    assert reply_of(exc) == (501, "5.1.3", "Domain name required")


# -- limits (RFC 5321 §4.5.3.1) -------------------------------------------------------------


def test_local_part_limit_ascii() -> None:
    assert parse_forward_path(f"<{'a' * 64}@example.com>").mailbox.local_part == "a" * 64
    with pytest.raises(AddressError) as exc:
        parse_forward_path(f"<{'a' * 65}@example.com>")
    assert reply_of(exc) == (501, "5.1.3", "Local part too long (max 64 octets)")


def test_local_part_limit_counts_quotes() -> None:
    ok = '"' + "a b" * 20 + "xx" + '"'  # 64 octets with the quotes
    assert len(ok) == 64
    assert parse_forward_path(f"<{ok}@example.com>").mailbox.local_part == "a b" * 20 + "xx"
    with pytest.raises(AddressError) as exc:
        parse_forward_path('<"' + "a b" * 20 + 'xxx"@example.com>')
    assert reply_of(exc) == (501, "5.1.3", "Local part too long (max 64 octets)")


def test_local_part_limit_counts_utf8_octets() -> None:
    local = "é" * 32  # 64 octets, 32 characters
    assert parse_forward_path(f"<{local}@example.com>", smtputf8=True).mailbox.local_part == local
    with pytest.raises(AddressError) as exc:
        parse_forward_path(f"<{local}a@example.com>", smtputf8=True)
    assert reply_of(exc) == (501, "5.1.3", "Local part too long (max 64 octets)")


def test_label_limit() -> None:
    label = "a" * 63
    assert parse_forward_path(f"<bob@{label}.example>").mailbox.domain == Domain(f"{label}.example")
    with pytest.raises(AddressError) as exc:
        parse_forward_path(f"<bob@{label}a.example>")
    assert reply_of(exc) == (501, "5.1.3", "Domain label too long (max 63 octets)")


def test_domain_limit() -> None:
    name = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 63])
    assert len(name) == 255
    assert parse_domain(name) == Domain(name)
    assert parse_mailbox(f"{'x' * 64}@{name}").domain == Domain(name)
    too_long = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 62, "e"])
    assert len(too_long) == 256
    with pytest.raises(AddressError) as exc:
        parse_domain(too_long)
    assert reply_of(exc) == (501, "5.1.3", "Domain too long (max 255 octets)")


def test_path_limit() -> None:
    domain = ".".join(["a" * 63, "b" * 63, "c" * 61])
    token = f"<{'x' * 64}@{domain}>"
    assert len(token) == 256
    assert parse_forward_path(token).mailbox.domain == Domain(domain)
    with pytest.raises(AddressError) as exc:
        parse_forward_path(f"<{'x' * 64}@{domain}c>")
    assert reply_of(exc) == (501, "5.1.3", "Path too long (max 256 octets)")


def test_path_limit_counts_source_route() -> None:
    route = "@" + "r" * 60 + ".example:"
    token = f"<{route}{'x' * 64}@{'d' * 60}.{'e' * 60}.example>"
    assert len(token) > 256
    with pytest.raises(AddressError) as exc:
        parse_reverse_path(token)
    assert reply_of(exc) == (501, "5.1.3", "Path too long (max 256 octets)")


# -- split_path ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arg", "expected"),
    [
        ("<bob@example.com>", ("<bob@example.com>", "")),
        ("<>", ("<>", "")),
        ("<> SIZE=100", ("<>", "SIZE=100")),
        (
            "<bob@example.com> SIZE=100 BODY=8BITMIME",
            ("<bob@example.com>", "SIZE=100 BODY=8BITMIME"),
        ),
        ("<bob@example.com>   NOTIFY=NEVER", ("<bob@example.com>", "NOTIFY=NEVER")),
        ("<bob@example.com> ", ("<bob@example.com>", "")),
        (" <bob@example.com>", ("<bob@example.com>", "")),
        ('<"a>b"@example.com> X=1', ('<"a>b"@example.com>', "X=1")),
        ('<"a\\">b"@example.com>', ('<"a\\">b"@example.com>', "")),
        ("<@r.example:bob@example.com>", ("<@r.example:bob@example.com>", "")),
    ],
)
def test_split_path(arg: str, expected: tuple[str, str]) -> None:
    assert split_path(arg) == expected


@pytest.mark.parametrize(
    ("arg", "text"),
    [
        ("", "Syntax error: expected <address>"),
        ("bob@example.com", "Syntax error: expected <address>"),
        ("  <bob@example.com>", "Syntax error: expected <address>"),
        ("\t<bob@example.com>", "Syntax error: expected <address>"),
        ("<bob@example.com", "Syntax error: missing '>' after address"),
        ('<"bob>@example.com', "Syntax error: missing '>' after address"),
        ('<"bob\\">@example.com', "Syntax error: missing '>' after address"),
        ("<bob@example.com>SIZE=100", "Syntax error in parameters"),
        ("<bob@example.com>> X", "Syntax error in parameters"),
        ("<bob@example.com>\tSIZE=100", "Syntax error in parameters"),
        ("<ceo@example.org>\r\n", "Syntax error in parameters"),
    ],
)
def test_split_path_invalid(arg: str, text: str) -> None:
    with pytest.raises(AddressError) as exc:
        split_path(arg)
    assert reply_of(exc) == (501, "5.5.4", text)


# -- properties ------------------------------------------------------------------------------

ATEXT = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-/=?^_`{|}~"
# Non-ASCII characters that are neither controls nor surrogates.
UTF8_CHARS = st.characters(min_codepoint=0xA0, exclude_categories=("Cs", "Cc"))
QTEXT_ASCII = st.characters(min_codepoint=0x20, max_codepoint=0x7E)

ascii_atoms = st.text(alphabet=ATEXT, min_size=1, max_size=12)
utf8_atoms = st.text(alphabet=st.one_of(st.sampled_from(ATEXT), UTF8_CHARS), min_size=1, max_size=8)
ascii_dot_strings = st.lists(ascii_atoms, min_size=1, max_size=4).map(".".join)
utf8_dot_strings = st.lists(utf8_atoms, min_size=1, max_size=4).map(".".join)
ascii_quoted = st.text(alphabet=QTEXT_ASCII, min_size=1, max_size=40)
utf8_quoted = st.text(alphabet=st.one_of(QTEXT_ASCII, UTF8_CHARS), min_size=1, max_size=20)

ascii_labels = st.from_regex(r"[a-z0-9_](?:[a-z0-9_-]{0,20}[a-z0-9_])?", fullmatch=True)
ascii_domains = st.lists(ascii_labels, min_size=1, max_size=4).map(".".join)
u_labels = st.sampled_from(["bücher", "münchen", "例子", "пример", "δοκιμή", "straße", "café"])
utf8_domains = st.lists(st.one_of(ascii_labels, u_labels), min_size=1, max_size=4).map(".".join)
ipv4_literals = st.ip_addresses(v=4).map(lambda a: f"[{a}]")
ipv6_literals = st.ip_addresses(v=6).map(lambda a: f"[IPv6:{a}]")


def _mailbox(local_part: str, domain_text: str, smtputf8: bool) -> Mailbox:
    return Mailbox(local_part, parse_domain(domain_text, smtputf8=smtputf8))


ascii_mailboxes = st.builds(
    _mailbox,
    st.one_of(ascii_dot_strings, ascii_quoted),
    st.one_of(ascii_domains, ipv4_literals, ipv6_literals),
    st.just(False),
)
utf8_mailboxes = st.builds(
    _mailbox,
    st.one_of(ascii_dot_strings, ascii_quoted, utf8_dot_strings, utf8_quoted),
    st.one_of(ascii_domains, utf8_domains, ipv4_literals, ipv6_literals),
    st.just(True),
)


def _fits(mailbox: Mailbox) -> bool:
    return len(mailbox.local_part_text.encode("utf-8")) <= 64


@given(ascii_mailboxes.filter(_fits))
def test_roundtrip_ascii(mailbox: Mailbox) -> None:
    assert parse_mailbox(str(mailbox)) == mailbox
    assert parse_forward_path(f"<{mailbox}>") == ForwardPath(mailbox)
    assert parse_reverse_path(f"<{mailbox}>") == ReversePath(mailbox)
    assert mailbox.is_utf8 is False


@given(utf8_mailboxes.filter(_fits))
def test_roundtrip_utf8(mailbox: Mailbox) -> None:
    assert parse_mailbox(str(mailbox), smtputf8=True) == mailbox
    assert parse_forward_path(f"<{mailbox}>", smtputf8=True) == ForwardPath(mailbox)
    assert mailbox.domain is not None
    assert parse_domain(mailbox.domain.name) == mailbox.domain


@given(st.one_of(ascii_dot_strings, ascii_quoted), ascii_domains)
def test_quoting_does_not_change_the_mailbox(local_part: str, domain: str) -> None:
    quoted = '"' + local_part.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if len(quoted) > 64:
        return
    assert parse_mailbox(f"{quoted}@{domain}").local_part == local_part


@given(st.ip_addresses(v=6))
def test_ipv6_literal_canonical(address: ipaddress.IPv6Address) -> None:
    domain = parse_domain(f"[IPv6:{address.exploded.upper()}]")
    assert ipaddress.IPv6Address(domain.name[6:-1]) == address
    assert parse_domain(domain.name) == domain


# Text that reaches deep into the parsers: path punctuation, atext, controls, non-ASCII,
# a lone surrogate.
PATH_ALPHABET = st.sampled_from(
    [*'<>@".\\:,[] -_!%+azAZ09', "IPv6:", "::", "\r", "\n", "\x00", "\x7f", "ü", "例", "\ud800"]
)
path_like = st.one_of(
    st.text(),
    st.lists(PATH_ALPHABET, max_size=40).map("".join),
    st.lists(PATH_ALPHABET, max_size=40).map(lambda parts: "<" + "".join(parts) + ">"),
)


@given(path_like, st.booleans())
def test_parsers_raise_only_address_error(text: str, smtputf8: bool) -> None:
    for parse in (parse_forward_path, parse_reverse_path, parse_mailbox, parse_domain):
        try:
            parse(text, smtputf8=smtputf8)
        except AddressError as exc:
            assert exc.reply.code in (501, 553)
            assert str(exc.reply.enhanced) in ("5.1.3", "5.5.4", "5.6.7")


@given(path_like)
def test_split_path_raises_only_address_error(text: str) -> None:
    try:
        token, params = split_path(text)
    except AddressError as exc:
        assert (exc.reply.code, str(exc.reply.enhanced)) == (501, "5.5.4")
        return
    assert token.startswith("<")
    assert token.endswith(">")
    assert not params.startswith(" ")
    assert token in text


@given(path_like, st.booleans())
def test_parsed_paths_roundtrip(text: str, smtputf8: bool) -> None:
    try:
        path = parse_forward_path(text, smtputf8=smtputf8)
    except AddressError:
        return
    assert parse_forward_path(str(path), smtputf8=smtputf8) == path
