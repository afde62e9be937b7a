"""The SQLite account store and ``pigeon mailbox``."""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from pigeon.cli.mailbox import format_size, mailbox_group
from pigeon.storage.accounts_port import MailboxInfo, canonical_mailbox_key
from pigeon.storage.sqlite.accounts import AccountStore


@dataclass
class Entry:
    address: str
    quota: int | None = None


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(tmp_path: Path, clock: Clock) -> AccountStore:
    s = AccountStore(tmp_path / "accounts.db", clock=clock)
    yield s
    s.close()


def test_add_get_list_remove(store: AccountStore, clock: Clock) -> None:
    assert store.add_mailbox("Bob@Example.COM", quota=1024) == MailboxInfo(
        "bob@example.com", 1024, 1_700_000_000.0
    )
    clock.now += 10
    store.add_mailbox("alice@example.org")
    store.add_mailbox("@example.org", quota=5)
    assert store.get_mailbox("bob@example.com") == MailboxInfo(
        "bob@example.com", 1024, 1_700_000_000.0
    )
    assert store.get_mailbox("Bob@example.com") is None  # keys are exact
    assert [m.address for m in store.list_mailboxes()] == [
        "bob@example.com", "@example.org", "alice@example.org"
    ]
    assert store.remove_mailbox("BOB@example.com") is True
    assert store.remove_mailbox("bob@example.com") is False
    assert store.get_mailbox("bob@example.com") is None


def test_add_existing_updates_quota_keeps_created(store: AccountStore, clock: Clock) -> None:
    store.add_mailbox("bob@example.com", quota=10)
    clock.now += 100
    assert store.add_mailbox("bob@example.com", quota=None) == MailboxInfo(
        "bob@example.com", None, 1_700_000_000.0
    )


@pytest.mark.parametrize(
    ("address", "key"),
    [
        ("Bob@Example.COM", "bob@example.com"),
        ('"Odd User"@example.com', "odd user@example.com"),
        ("odd user@example.com", "odd user@example.com"),
        ("@Example.COM", "@example.com"),
        ("Jörg@Bücher.example", "jörg@xn--bcher-kva.example"),
        ("Postmaster", "postmaster"),
    ],
)
def test_canonical_mailbox_key(address: str, key: str) -> None:
    assert canonical_mailbox_key(address) == key
    assert canonical_mailbox_key(key) == key


@pytest.mark.parametrize(
    "address",
    ["", "@", "bob", "bob@", "bob@exa mple.com", "a\x00b@example.com", "@a@b",
     "x" * 65 + "@example.com"],
)
def test_invalid_addresses(store: AccountStore, address: str) -> None:
    with pytest.raises(ValueError):
        store.add_mailbox(address)


def test_negative_quota(store: AccountStore) -> None:
    with pytest.raises(ValueError):
        store.add_mailbox("bob@example.com", quota=-1)


def test_sync_config_merges_and_config_wins(store: AccountStore) -> None:
    store.add_mailbox("cli@example.com", quota=7)
    store.add_mailbox("both@example.com", quota=1)
    store.sync_config([Entry("Both@example.com", 2000), Entry("cfg@example.com")])
    assert store.list_mailboxes() == [
        MailboxInfo("both@example.com", 2000, 1_700_000_000.0, from_config=True),
        MailboxInfo("cfg@example.com", None, 1_700_000_000.0, from_config=True),
        MailboxInfo("cli@example.com", 7, 1_700_000_000.0, from_config=False),
    ]
    # An entry that leaves the config leaves the store; CLI mailboxes stay.
    store.sync_config([Entry("cfg@example.com", 5)])
    assert store.list_mailboxes() == [
        MailboxInfo("cfg@example.com", 5, 1_700_000_000.0, from_config=True),
        MailboxInfo("cli@example.com", 7, 1_700_000_000.0, from_config=False),
    ]


def test_sync_config_is_all_or_nothing(store: AccountStore) -> None:
    store.sync_config([Entry("a@example.com")])
    with pytest.raises(ValueError):
        store.sync_config([Entry("b@example.com"), Entry("bad address@")])
    assert [m.address for m in store.list_mailboxes()] == ["a@example.com"]


def test_persists_and_uses_wal(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "accounts.db"
    first = AccountStore(path)
    first.add_mailbox("bob@example.com", quota=3)
    first.close()
    second = AccountStore(path)
    try:
        assert second.get_mailbox("bob@example.com") is not None
    finally:
        second.close()
    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        columns = [row[1] for row in db.execute("PRAGMA table_info(mailbox)")]
        assert columns == ["address", "quota", "password_hash", "from_config", "created"]
        assert [row[1] for row in db.execute("PRAGMA table_info(sender_address)")] == [
            "address", "mailbox"
        ]
        assert db.execute("PRAGMA user_version").fetchone() == (2,)
    finally:
        db.close()


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "accounts.db"
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version = 99")
    db.close()
    with pytest.raises(RuntimeError, match="schema 99 is newer"):
        AccountStore(path)


def test_threads_share_one_store(store: AccountStore) -> None:
    def work(n: int) -> None:
        for i in range(25):
            store.add_mailbox(f"u{n}-{i}@example.com")
            assert store.get_mailbox(f"u{n}-{i}@example.com") is not None

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(store.list_mailboxes()) == 200


@given(st.text(max_size=80))
def test_canonical_key_is_idempotent_or_value_error(text: str) -> None:
    try:
        key = canonical_mailbox_key(text)
    except ValueError:
        return
    assert canonical_mailbox_key(key) == key


# -- pigeon mailbox --------------------------------------------------------------------------

@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "pigeon.toml"
    path.write_text(
        '[server]\nhostname = "mx.example.com"\ndata_dir = "data"\n'
        '[domains]\nlocal = ["example.com", "example.org"]\n'
        '[[mailbox]]\naddress = "cfg@example.com"\nquota = "1MiB"\n',
        encoding="utf-8",
    )
    return path


def run(config: Path, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(mailbox_group, [*args, "-c", str(config)])
    return result.exit_code, result.stdout, result.stderr


def test_cli_add_list_del(config: Path, tmp_path: Path) -> None:
    assert run(config, "add", "Bob@Example.com", "--quota", "1GiB") == (
        0, "mailbox added: bob@example.com (quota 1 GiB)\n", ""
    )
    assert run(config, "add", "bob@example.com") == (
        0, "mailbox updated: bob@example.com (quota -)\n", ""
    )
    assert run(config, "add", "@example.org", "--quota", "1536") == (
        0, "mailbox added: @example.org (quota 1.5 KiB)\n", ""
    )
    maildir = tmp_path / "data" / "mail" / "example.com" / "bob" / "new"
    maildir.mkdir(parents=True)
    (maildir / "1.M1P1Q1.host,S=2048").write_bytes(b"x" * 2048)
    code, out, _ = run(config, "list")
    assert code == 0
    assert out == (
        "ADDRESS            QUOTA   USED  SOURCE\n"
        "bob@example.com        -  2 KiB  cli\n"
        "cfg@example.com    1 MiB    0 B  config\n"
        "@example.org     1.5 KiB      -  cli\n"
    )
    box = tmp_path / "data" / "mail" / "example.com" / "bob"
    assert run(config, "del", "bob@example.com") == (
        0, f"mailbox removed: bob@example.com; its mail is kept in {box}\n", ""
    )
    assert maildir.is_dir()


def test_cli_refuses_non_local_domain(config: Path) -> None:
    assert run(config, "add", "bob@remote.example") == (
        2, "", "error: remote.example is not a local domain "
               "(local: example.com, example.org; add it with: pigeon domain add "
               "remote.example)\n"
    )


def test_cli_accepts_a_domain_added_with_pigeon_domain_add(config: Path) -> None:
    from pigeon.cli.domain import domain_group

    added = CliRunner().invoke(domain_group, ["add", "example.net", "-c", str(config)])
    assert (added.exit_code, added.stdout) == (0, "domain added: example.net\n")
    assert run(config, "add", "dan@example.net") == (
        0, "mailbox added: dan@example.net (quota -)\n", "")
    assert run(config, "add", "@example.net") == (0, "mailbox added: @example.net (quota -)\n", "")
    box = config.parent / "data" / "mail" / "example.net" / "dan"
    assert run(config, "del", "dan@example.net") == (
        0, f"mailbox removed: dan@example.net; its mail is kept in {box}\n", "")


@pytest.mark.parametrize(
    ("args", "code", "stderr"),
    [
        (("add", "bob@example.com", "--quota", "lots"), 2,
         'error: --quota: invalid size: use bytes or a number with a unit, e.g. "35MiB"\n'),
        (("add", "bob@example.com", "--quota", "0"), 2,
         "error: --quota must be at least 1 byte\n"),
        (("add", "bob@"), 2, None),
        (("add", "cfg@example.com"), 1,
         "error: cfg@example.com is defined in the config file; change it there\n"),
        (("del", "cfg@example.com"), 1,
         "error: cfg@example.com is defined in the config file; remove it there\n"),
        (("del", "nobody@example.com"), 1, "error: no such mailbox: nobody@example.com\n"),
    ],
)
def test_cli_errors(config: Path, args: tuple[str, ...], code: int, stderr: str | None) -> None:
    got_code, out, err = run(config, *args)
    assert (got_code, out) == (code, "")
    if stderr is not None:
        assert err == stderr
    else:
        assert err.startswith("error: invalid address 'bob@'")


def test_cli_list_empty(tmp_path: Path) -> None:
    path = tmp_path / "pigeon.toml"
    path.write_text('[server]\ndata_dir = "data"\n', encoding="utf-8")
    assert run(path, "list") == (0, "no mailboxes\n", "")


@pytest.mark.parametrize(
    ("size", "text"),
    [(None, "-"), (0, "0 B"), (1023, "1023 B"), (1024, "1 KiB"), (1536, "1.5 KiB"),
     (35 * 1024 * 1024, "35 MiB"), (1 << 30, "1 GiB")],
)
def test_format_size(size: int | None, text: str) -> None:
    assert format_size(size) == text


def test_version_changes_with_every_write(tmp_path: Path, store: AccountStore) -> None:
    other = AccountStore(tmp_path / "accounts.db")
    try:
        start = store.version()
        store.get_mailbox("bob@example.com")
        store.list_mailboxes()
        store.list_domains()
        other.get_mailbox("bob@example.com")
        assert store.version() == start
        store.add_mailbox("bob@example.com")
        own_write = store.version()
        assert own_write != start
        assert store.version() == own_write
        other.add_domain("example.net")
        other_write = store.version()
        assert other_write != own_write
        assert store.version() == other_write
        other.remove_domain("example.net")
        assert store.version() != other_write
    finally:
        other.close()
