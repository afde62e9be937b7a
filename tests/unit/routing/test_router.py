"""Router table tests: RCPT-time decisions and enqueue-time expansion."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pigeon.config import Settings
from pigeon.mail.address import ForwardPath, Mailbox, parse_forward_path
from pigeon.mail.reply import Reply
from pigeon.routing.aliases import AliasFileError, parse_aliases
from pigeon.routing.router import MAX_ALIAS_DEPTH, MAX_EXPANSION, Destination, Router
from pigeon.storage.accounts_port import MailboxInfo
from pigeon.storage.sqlite.accounts import AccountStore

ALIASES = """\
info@example.com: bob, alice
list: bob, remote-user@elsewhere.example, info@example.com
sales@example.org: carol, partner@remote.example
abuse@example.org: carol
dave: dave, dave@remote.example
loop-a: loop-b
loop-b: loop-a
loop-c: loop-d, bob@example.com
loop-d: loop-c
to-nobody: nobody
"""


def make_settings(tmp_path: Path, *, aliases_file: Path | None = None) -> Settings:
    base = Settings()
    return base.model_copy(update={
        "server": base.server.model_copy(
            update={"hostname": "mx.example.com", "data_dir": tmp_path}
        ),
        "domains": base.domains.model_copy(
            update={"local": ["example.com", "example.org", "catchall.example",
                              "xn--bcher-kva.example"]}
        ),
        "aliases": base.aliases.model_copy(update={"file": aliases_file}),
    })


@pytest.fixture
def accounts(tmp_path: Path) -> AccountStore:
    store = AccountStore(tmp_path / "accounts.db")
    store.add_mailbox("bob@example.com")
    store.add_mailbox("alice@example.com", quota=100)
    store.add_mailbox("carol@example.org")
    store.add_mailbox("dave@example.com")
    store.add_mailbox("@catchall.example", quota=50)
    yield store
    store.close()


@pytest.fixture
def router(tmp_path: Path, accounts: AccountStore) -> Router:
    return Router(make_settings(tmp_path), accounts, aliases=parse_aliases(ALIASES))


def fp(text: str) -> ForwardPath:
    return parse_forward_path(text, smtputf8=True)


def unknown(address: str) -> Reply:
    return Reply(550, "5.1.1", f"<{address}>: Recipient address rejected: User unknown")


# -- RCPT time -------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("<bob@example.com>", None),
        ("<BOB@Example.COM>", None),
        ("<bob+news@example.com>", None),
        ("<bob+@example.com>", None),
        ("<nobody@example.com>", unknown("nobody@example.com")),
        ("<nobody+tag@example.com>", unknown("nobody+tag@example.com")),
        ("<info@example.com>", None),
        ("<info@example.org>", unknown("info@example.org")),
        ("<list@example.org>", None),
        ("<sales@example.org>", None),
        ("<sales@example.com>", unknown("sales@example.com")),
        ("<anyone@catchall.example>", None),
        ("<postmaster@example.com>", None),
        ("<POSTMASTER@example.org>", None),
        ("<abuse@catchall.example>", None),
        ("<abuse+x@example.com>", None),
        ("<postmaster>", None),
        ("<Postmaster>", None),
        ("<user%remote.example@example.com>", unknown("user%remote.example@example.com")),
        ("<remote.example!user@example.com>", unknown("remote.example!user@example.com")),
        ('<"bob@remote.example"@example.com>', unknown('"bob@remote.example"@example.com')),
        ("<@relay.example:bob@example.com>", None),
        ("<x@remote.example>", Reply(554, "5.7.1", "<x@remote.example>: Relay access denied")),
        ("<x@[192.0.2.1]>", Reply(554, "5.7.1", "<x@[192.0.2.1]>: Relay access denied")),
        ("<bob@example.com.evil.example>",
         Reply(554, "5.7.1", "<bob@example.com.evil.example>: Relay access denied")),
        ("<jörg@bücher.example>", unknown("jörg@xn--bcher-kva.example")),
    ],
)
def test_check_recipient_unauthenticated(router: Router, path: str, expected: Reply | None) -> None:
    assert router.check_recipient(fp(path), relay_allowed=False) == expected


def test_relay_allowed_accepts_remote_but_not_unknown_local(router: Router) -> None:
    assert router.check_recipient(fp("<x@remote.example>"), relay_allowed=True) is None
    assert router.check_recipient(fp("<nobody@example.com>"), relay_allowed=True) == unknown(
        "nobody@example.com"
    )


def fill(tmp_path: Path, key_dir: str, size: int) -> None:
    new = tmp_path / "mail" / key_dir / "new"
    new.mkdir(parents=True)
    (new / "1.M1P1Q1.host").write_bytes(b"x" * size)


def test_mailbox_at_quota_is_refused_at_rcpt(router: Router, tmp_path: Path) -> None:
    fill(tmp_path, "example.com/alice", 99)
    assert router.check_recipient(fp("<alice@example.com>"), relay_allowed=False) is None
    (tmp_path / "mail/example.com/alice/new/2.M1P1Q2.host").write_bytes(b"y")
    assert router.check_recipient(fp("<Alice+x@example.com>"), relay_allowed=False) == Reply(
        552, "5.2.2", "<Alice+x@example.com>: Mailbox full"
    )


def test_catch_all_quota_applies_per_mailbox(router: Router, tmp_path: Path) -> None:
    fill(tmp_path, "catchall.example/full", 50)
    assert router.check_recipient(fp("<full@catchall.example>"), relay_allowed=False) == Reply(
        552, "5.2.2", "<full@catchall.example>: Mailbox full"
    )
    assert router.check_recipient(fp("<empty@catchall.example>"), relay_allowed=False) is None


# -- enqueue time ----------------------------------------------------------------------------

def L(address: str, original: str) -> Destination:
    return Destination(address, "local", original)


def R(address: str, original: str) -> Destination:
    return Destination(address, "remote", original)


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("bob@example.com", [L("bob@example.com", "bob@example.com")]),
        ("Bob+news@Example.com", [L("bob@example.com", "Bob+news@Example.com")]),
        ("info@example.com", [L("bob@example.com", "info@example.com"),
                              L("alice@example.com", "info@example.com")]),
        ("list@example.com", [L("bob@example.com", "list@example.com"),
                              R("remote-user@elsewhere.example", "list@example.com"),
                              L("alice@example.com", "list@example.com")]),
        ("sales+q3@example.org", [L("carol@example.org", "sales+q3@example.org"),
                                  R("partner@remote.example", "sales+q3@example.org")]),
        ("dave@example.com", [L("dave@example.com", "dave@example.com"),
                              R("dave@remote.example", "dave@example.com")]),
        ("loop-c@example.com", [L("bob@example.com", "loop-c@example.com")]),
        ("loop-a@example.com", [L("loop-a@example.com", "loop-a@example.com")]),
        ("to-nobody@example.com", [L("nobody@example.com", "to-nobody@example.com")]),
        ("nobody@example.com", [L("nobody@example.com", "nobody@example.com")]),
        ("Someone+tag@catchall.example", [L("someone@catchall.example",
                                            "Someone+tag@catchall.example")]),
        ("postmaster@example.org", [L("postmaster@example.com", "postmaster@example.org")]),
        ("abuse@example.com", [L("postmaster@example.com", "abuse@example.com")]),
        ("abuse@example.org", [L("carol@example.org", "abuse@example.org")]),
        ("postmaster", [L("postmaster@example.com", "postmaster")]),
        ("x@Remote.Example", [R("x@remote.example", "x@Remote.Example")]),
        ("Case.Kept@remote.example", [R("Case.Kept@remote.example", "Case.Kept@remote.example")]),
        ('"odd user"@example.com', [L('"odd user"@example.com', '"odd user"@example.com')]),
    ],
)
def test_expand(router: Router, address: str, expected: list[Destination]) -> None:
    assert router.expand(address) == expected


def test_alias_loop_is_logged(router: Router, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="pigeon.routing"):
        router.expand("loop-a@example.com")
    assert [r.getMessage() for r in caplog.records] == [
        "alias loop for loop-a@example.com: loop-a@example.com -> loop-b@example.com "
        "-> loop-a@example.com; branch dropped"
    ]


def chain_aliases(length: int) -> str:
    lines = [f"a{i}: a{i + 1}" for i in range(length)]
    lines.append(f"a{length}: bob@example.com")
    return "\n".join(lines) + "\n"


def test_alias_chain_within_the_depth_limit(tmp_path: Path, accounts: AccountStore) -> None:
    router = Router(make_settings(tmp_path), accounts,
                    aliases=parse_aliases(chain_aliases(MAX_ALIAS_DEPTH - 1)))
    assert router.expand("a0@example.com") == [L("bob@example.com", "a0@example.com")]


def test_alias_chain_beyond_the_depth_limit_is_dropped(
    tmp_path: Path, accounts: AccountStore
) -> None:
    router = Router(make_settings(tmp_path), accounts,
                    aliases=parse_aliases(chain_aliases(MAX_ALIAS_DEPTH + 5)))
    assert router.expand("a0@example.com") == [L("a0@example.com", "a0@example.com")]


def test_diamond_aliases_expand_each_name_once(tmp_path: Path, accounts: AccountStore) -> None:
    # 2**18 paths through 38 names: expansion must visit names, not paths.
    lines = [f"a{i}: a{i + 1}, b{i + 1}\nb{i}: a{i + 1}, b{i + 1}" for i in range(18)]
    lines.append("a18: bob@example.com, alice@example.com\nb18: alice@example.com")
    router = Router(make_settings(tmp_path), accounts,
                    aliases=parse_aliases("\n".join(lines) + "\n"))
    assert router.expand("a0@example.com") == [L("bob@example.com", "a0@example.com"),
                                               L("alice@example.com", "a0@example.com")]


def test_expansion_stops_at_the_limit(
    tmp_path: Path, accounts: AccountStore, caplog: pytest.LogCaptureFixture
) -> None:
    targets = ", ".join(f"u{i}@remote.example" for i in range(MAX_EXPANSION + 50))
    router = Router(make_settings(tmp_path), accounts, aliases=parse_aliases(f"big: {targets}\n"))
    with caplog.at_level(logging.WARNING, logger="pigeon.routing"):
        result = router.expand("big@example.com")
    assert len(result) == MAX_EXPANSION
    assert result[-1] == R(f"u{MAX_EXPANSION - 1}@remote.example", "big@example.com")
    assert [r.getMessage() for r in caplog.records] == [
        f"alias expansion for big@example.com stopped at {MAX_EXPANSION} destinations"
    ]


@pytest.mark.parametrize(
    ("address", "key"),
    [
        ("bob@example.com", "bob@example.com"),
        ("BOB+x@EXAMPLE.COM", "bob@example.com"),
        ("nobody@example.com", None),
        ("x@remote.example", None),
        ("postmaster@example.com", "postmaster@example.com"),
        ("abuse@catchall.example", "abuse@catchall.example"),
        ("abuse@example.com", "postmaster@example.com"),
        ("abuse@example.org", None),
        ("postmaster", "postmaster@example.com"),
        ("info@example.com", None),
        ("Whoever@catchall.example", "whoever@catchall.example"),
        ('"Odd User"@example.com', None),
    ],
)
def test_mailbox_for(router: Router, address: str, key: str | None) -> None:
    assert router.mailbox_for(address) == key


def test_quota_for(router: Router) -> None:
    assert router.quota_for("alice@example.com") == 100
    assert router.quota_for("bob@example.com") is None
    assert router.quota_for("x@catchall.example") == 50
    assert router.postmaster == "postmaster@example.com"


@pytest.mark.parametrize(
    ("domain", "local"),
    [("example.com", True), ("EXAMPLE.ORG", True), ("example.org.", True),
     ("BÜCHER.example", True), ("xn--bcher-kva.example", True),
     ("remote.example", False), ("", False), ("[192.0.2.1]", False)],
)
def test_is_local_domain(router: Router, domain: str, local: bool) -> None:
    assert router.is_local_domain(domain) is local


def test_bare_postmaster_forward_path(router: Router) -> None:
    path = ForwardPath(Mailbox("postmaster", None))
    assert router.check_recipient(path, relay_allowed=False) is None
    assert router.expand(str(path.mailbox)) == [L("postmaster@example.com", "postmaster")]


def test_aliases_are_read_from_the_configured_file(tmp_path: Path, accounts: AccountStore) -> None:
    path = tmp_path / "aliases"
    path.write_text("team: bob, carol@example.org\n", encoding="utf-8")
    router = Router(make_settings(tmp_path, aliases_file=path), accounts)
    assert router.expand("team@example.com") == [L("bob@example.com", "team@example.com"),
                                                 L("carol@example.org", "team@example.com")]
    path.write_text("team: alice\n", encoding="utf-8")
    router.reload_aliases()
    assert router.expand("team@example.com") == [L("alice@example.com", "team@example.com")]


def test_invalid_aliases_file_stops_the_router(tmp_path: Path, accounts: AccountStore) -> None:
    path = tmp_path / "aliases"
    path.write_text("team bob\n", encoding="utf-8")
    with pytest.raises(AliasFileError):
        Router(make_settings(tmp_path, aliases_file=path), accounts)


def test_mailbox_added_later_is_seen_without_restart(
    router: Router, accounts: AccountStore
) -> None:
    assert router.check_recipient(fp("<new@example.com>"), relay_allowed=False) == unknown(
        "new@example.com"
    )
    accounts.add_mailbox("New@example.com")
    assert router.check_recipient(fp("<new@example.com>"), relay_allowed=False) is None


def test_changes_by_another_connection_count_at_once(
    tmp_path: Path, router: Router, accounts: AccountStore
) -> None:
    # Another connection to the same file: what ``pigeon mailbox add`` and the other
    # account commands do while the server runs.
    other = AccountStore(tmp_path / "accounts.db")
    try:
        assert router.check_recipient(fp("<new@example.com>"), relay_allowed=False) == unknown(
            "new@example.com")
        assert router.expand("new@example.com") == [L("new@example.com", "new@example.com")]
        other.add_mailbox("new@example.com")
        assert router.check_recipient(fp("<new@example.com>"), relay_allowed=False) is None
        assert router.mailbox_for("new+tag@example.com") == "new@example.com"
        assert router.expand("new+tag@example.com") == [
            L("new@example.com", "new+tag@example.com")]
        other.remove_mailbox("new@example.com")
        assert router.check_recipient(fp("<new@example.com>"), relay_allowed=False) == unknown(
            "new@example.com")
        assert router.mailbox_for("new+tag@example.com") is None
        assert router.expand("new+tag@example.com") == [
            L("new+tag@example.com", "new+tag@example.com")]

        assert router.quota_for("bob@example.com") is None
        other.add_mailbox("bob@example.com", quota=5)
        assert router.quota_for("bob@example.com") == 5
        other.add_mailbox("bob@example.com", quota=None)
        assert router.quota_for("bob@example.com") is None

        assert router.check_recipient(fp("<x@added.example>"), relay_allowed=False) == Reply(
            554, "5.7.1", "<x@added.example>: Relay access denied")
        other.add_domain("added.example")
        other.add_mailbox("x@added.example")
        assert router.is_local_domain("added.example")
        assert router.check_recipient(fp("<x@added.example>"), relay_allowed=False) is None
        other.remove_domain("added.example")
        assert not router.is_local_domain("added.example")
        assert router.expand("x@added.example") == [R("x@added.example", "x@added.example")]

        assert router.mailbox_for("bobby@example.com") is None
        other.add_alias("bob@example.com", "bobby@example.com")
        assert router.mailbox_for("bobby@example.com") == "bob@example.com"
        assert router.check_recipient(fp("<bobby@example.com>"), relay_allowed=False) is None
        other.remove_alias("bobby@example.com")
        assert router.mailbox_for("bobby@example.com") is None
    finally:
        other.close()


def test_changes_through_the_same_store_count_at_once(
    router: Router, accounts: AccountStore
) -> None:
    assert router.mailbox_for("dave@example.com") == "dave@example.com"
    accounts.remove_mailbox("dave@example.com")
    assert router.mailbox_for("dave@example.com") is None
    accounts.add_mailbox("@example.com", quota=7)
    assert router.mailbox_for("dave@example.com") == "dave@example.com"
    assert router.quota_for("dave@example.com") == 7


def test_a_store_without_version_is_read_on_every_call(tmp_path: Path) -> None:
    store = FakeAccounts("bob@example.com")
    router = Router(make_settings(tmp_path), store,  # type: ignore[arg-type]
                    aliases=parse_aliases(ALIASES), mailboxes=NoMailboxes())  # type: ignore[arg-type]
    assert router.check_recipient(fp("<eve@example.com>"), relay_allowed=False) == unknown(
        "eve@example.com")
    store.keys["eve@example.com"] = MailboxInfo("eve@example.com", None, 0.0)
    assert router.check_recipient(fp("<eve@example.com>"), relay_allowed=False) is None
    assert router.mailbox_for("eve@example.com") == "eve@example.com"
    del store.keys["eve@example.com"]
    assert router.mailbox_for("eve@example.com") is None


def test_lookups_past_the_kept_number_are_still_right(
    tmp_path: Path, router: Router, accounts: AccountStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("pigeon.routing.router._VIEW_MAX_ENTRIES", 2)
    names = [f"u{i}@example.com" for i in range(5)]
    assert [router.mailbox_for(n) for n in names] == [None] * 5
    assert [router.expand(n) for n in names] == [[L(n, n)] for n in names]
    accounts.add_mailbox("u4@example.com")
    assert [router.mailbox_for(n) for n in names] == [None] * 4 + ["u4@example.com"]


def test_an_alias_loop_is_logged_for_every_expansion(
    router: Router, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="pigeon.routing"):
        first = router.expand("loop-c@example.com")
        second = router.expand("loop-c@example.com")
    assert first == second == [L("bob@example.com", "loop-c@example.com")]
    assert [r.getMessage() for r in caplog.records] == [
        "alias loop for loop-c@example.com: loop-c@example.com -> loop-d@example.com -> "
        "loop-c@example.com; branch dropped",
    ] * 2


def test_expansions_are_not_shared_between_callers(router: Router) -> None:
    first = router.expand("info@example.com")
    first.clear()
    assert router.expand("info@example.com") == [L("bob@example.com", "info@example.com"),
                                                 L("alice@example.com", "info@example.com")]


# -- properties ------------------------------------------------------------------------------

_NAMES = [f"n{i}" for i in range(8)]
_TARGETS = [*_NAMES, "bob", "alice@example.com", "x@remote.example", "nobody", "postmaster"]


class FakeAccounts:
    """Just enough of the account store for routing."""

    def __init__(self, *keys: str) -> None:
        self.keys = {key: MailboxInfo(key, None, 0.0) for key in keys}

    def get_mailbox(self, key: str) -> MailboxInfo | None:
        return self.keys.get(key)


class NoMailboxes:
    def usage(self, key: str) -> int:
        return 0


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(_NAMES),
                       st.lists(st.sampled_from(_TARGETS), min_size=1, max_size=4, unique=True),
                       min_size=1))
def test_any_alias_graph_expands_to_a_finite_nonempty_unique_list(
    graph: dict[str, list[str]],
) -> None:
    text = "".join(f"{name}: {', '.join(targets)}\n" for name, targets in graph.items())
    router = Router(make_settings(Path("/nonexistent")),
                    FakeAccounts("bob@example.com", "alice@example.com"),  # type: ignore[arg-type]
                    aliases=parse_aliases(text), mailboxes=NoMailboxes())  # type: ignore[arg-type]
    for name in _NAMES:
        result = router.expand(f"{name}@example.com")
        assert result
        addresses = [d.address for d in result]
        assert len(addresses) == len(set(addresses))
        assert all(d.original == f"{name}@example.com" for d in result)
        assert all((d.route == "remote") == d.address.endswith("@remote.example")
                   for d in result)
