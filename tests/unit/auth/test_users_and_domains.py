"""Users, aliases and local domains: the account store, the router hooks, the CLI."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from argon2 import PasswordHasher
from click.testing import CliRunner

from pigeon.auth.passwords import verify_password
from pigeon.cli.main import cli
from pigeon.config import Settings
from pigeon.mail.address import parse_forward_path
from pigeon.routing.router import Router
from pigeon.storage.sqlite.accounts import SCHEMA_VERSION, AccountStore


@pytest.fixture
def store(tmp_path: Path) -> AccountStore:
    s = AccountStore(tmp_path / "accounts.db")
    yield s
    s.close()


# ---------------------------------------------------------------- the store


def test_passwords(store: AccountStore) -> None:
    assert store.set_password_hash("alice@example.com", "h") is False  # no such mailbox
    store.add_mailbox("Alice@Example.com")
    assert store.get_mailbox("alice@example.com").has_password is False
    assert store.set_password_hash("ALICE@example.com", "$argon2id$x") is True
    assert store.get_password_hash("alice@example.com") == "$argon2id$x"
    assert store.get_mailbox("alice@example.com").has_password is True
    assert store.get_password_hash("nobody@example.com") is None
    store.set_password_hash("alice@example.com", None)
    assert store.get_password_hash("alice@example.com") is None


def test_aliases(store: AccountStore) -> None:
    store.add_mailbox("alice@example.com")
    store.add_mailbox("bob@example.com")
    store.add_alias("alice@example.com", "Sales@Example.com")
    store.add_alias("alice@example.com", "alice@elsewhere.example")
    store.add_alias("alice@example.com", "sales@example.com")  # again: no change
    assert store.alias_owner("sales@example.com") == "alice@example.com"
    assert store.list_aliases("alice@example.com") == [
        ("alice@elsewhere.example", "alice@example.com"),
        ("sales@example.com", "alice@example.com"),
    ]
    with pytest.raises(ValueError, match=r"already belongs to alice@example\.com"):
        store.add_alias("bob@example.com", "sales@example.com")
    with pytest.raises(ValueError, match="mailbox of its own"):
        store.add_alias("alice@example.com", "bob@example.com")
    with pytest.raises(ValueError, match="no such mailbox"):
        store.add_alias("carol@example.com", "x@example.com")
    with pytest.raises(ValueError, match="full address"):
        store.add_alias("alice@example.com", "@example.com")
    assert store.remove_alias("SALES@example.com") is True
    assert store.remove_alias("sales@example.com") is False
    store.remove_mailbox("alice@example.com")  # aliases go with the mailbox
    assert store.list_aliases() == []


def test_domains(store: AccountStore) -> None:
    assert store.add_domain("Example.ORG.") is True
    assert store.add_domain("example.org") is False
    assert store.add_domain("bücher.example") is True
    assert store.list_domains() == ["example.org", "xn--bcher-kva.example"]
    assert store.remove_domain("EXAMPLE.org") is True
    assert store.remove_domain("example.org") is False
    assert store.list_domains() == ["xn--bcher-kva.example"]


def test_version_1_database_is_upgraded(tmp_path: Path) -> None:
    path = tmp_path / "accounts.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE mailbox (address TEXT PRIMARY KEY, quota INTEGER, "
               "password_hash TEXT, from_config INTEGER NOT NULL DEFAULT 0, created REAL)")
    db.execute("INSERT INTO mailbox VALUES ('bob@example.com', NULL, NULL, 0, 1.0)")
    db.execute("PRAGMA user_version = 1")
    db.commit()
    db.close()
    s = AccountStore(path)
    try:
        assert s.add_domain("example.org")
        assert s.get_mailbox("bob@example.com") is not None
    finally:
        s.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)


# ---------------------------------------------------------------- the router sees them


def _router(tmp_path: Path, store: AccountStore) -> Router:
    settings = Settings.model_validate({
        "server": {"hostname": "mx.example.com", "data_dir": str(tmp_path / "data")},
        "domains": {"local": ["example.com"]},
    })
    return Router(settings, store)


def test_router_sees_domains_added_at_run_time(tmp_path: Path, store: AccountStore) -> None:
    router = _router(tmp_path, store)
    fp = parse_forward_path("<ann@example.org>")
    assert router.check_recipient(fp, relay_allowed=False).code == 554
    assert not router.is_local_domain("example.org")
    store.add_domain("example.org")
    assert router.is_local_domain("example.org")
    assert router.check_recipient(fp, relay_allowed=False).code == 550  # local: unknown user
    store.add_mailbox("ann@example.org")
    assert router.check_recipient(fp, relay_allowed=False) is None
    assert [d.route for d in router.expand("ann@example.org")] == ["local"]
    store.remove_mailbox("ann@example.org")
    store.remove_domain("example.org")
    assert router.check_recipient(fp, relay_allowed=True) is None
    assert [d.route for d in router.expand("ann@example.org")] == ["remote"]


def test_router_delivers_user_aliases_to_their_user(tmp_path: Path, store: AccountStore) -> None:
    router = _router(tmp_path, store)
    store.add_mailbox("alice@example.com")
    store.add_alias("alice@example.com", "sales@example.com")
    assert router.check_recipient(parse_forward_path("<Sales+q4@example.com>"),
                                  relay_allowed=False) is None
    assert router.mailbox_for("sales@example.com") == "alice@example.com"
    assert [(d.address, d.route) for d in router.expand("sales+q4@example.com")] == [
        ("alice@example.com", "local")]


# ---------------------------------------------------------------- the CLI


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "pigeon.toml"
    path.write_text(
        f'[server]\nhostname = "mx.example.com"\ndata_dir = "{tmp_path / "data"}"\n'
        '[domains]\nlocal = ["example.com"]\n[[mailbox]]\naddress = "bob@example.com"\n',
        encoding="utf-8",
    )
    return path


@pytest.fixture(autouse=True)
def cheap(cheap_argon2: PasswordHasher) -> None:
    """Hash with the cheap profile (see conftest)."""


def run(config: Path, *args: str, input: str | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(cli, [*args, "-c", str(config)], input=input)
    return result.exit_code, result.output


def _hash(config: Path, address: str) -> str | None:
    s = AccountStore(config.parent / "data" / "accounts.db")
    try:
        return s.get_password_hash(address)
    finally:
        s.close()


def test_user_add_passwd_list_del(config: Path) -> None:
    assert run(config, "user", "add", "Alice@example.com", "--password-stdin",
               input="s3cret pass\n") == (0, "user added: alice@example.com\n")
    assert verify_password(_hash(config, "alice@example.com") or "", "s3cret pass")
    code, out = run(config, "user", "add", "alice@example.com", "--password-stdin", input="x\n")
    assert code == 1 and "exists" in out
    code, out = run(config, "user", "add", "carol@example.com", input="pw1\npw1\n")  # prompt
    assert code == 0 and out.endswith("user added: carol@example.com\n")
    assert run(config, "user", "passwd", "alice@example.com", "--password-stdin",
               input="new one\r\n") == (0, "password changed: alice@example.com\n")
    assert verify_password(_hash(config, "alice@example.com") or "", "new one")
    # A config mailbox becomes a user; deleting the user keeps the mailbox.
    assert run(config, "user", "add", "bob@example.com", "--password-stdin", input="b\n")[0] == 0
    assert run(config, "user", "alias", "add", "alice@example.com", "sales@example.com") == (
        0, "alias added: sales@example.com -> alice@example.com\n")
    code, out = run(config, "user", "list")
    assert code == 0
    assert out.splitlines() == [
        "USER               ALIASES",
        "alice@example.com  sales@example.com",
        "bob@example.com    -",
        "carol@example.com  -",
    ]
    assert run(config, "user", "alias", "list") == (
        0, "sales@example.com -> alice@example.com\n")
    assert run(config, "user", "del", "bob@example.com")[1] == (
        "user removed: bob@example.com (the mailbox stays: it is in the config file)\n")
    assert _hash(config, "bob@example.com") is None
    assert run(config, "user", "del", "alice@example.com") == (
        0, "user removed: alice@example.com\n")
    assert run(config, "user", "alias", "list") == (0, "no aliases\n")
    code, out = run(config, "user", "del", "alice@example.com")
    assert code == 1 and "no such user: alice@example.com" in out


@pytest.mark.parametrize("args,stdin,message", [
    (("user", "add", "not-an-address", "--password-stdin"), "pw\n", "not an address"),
    (("user", "add", "dan@example.net", "--password-stdin"), "pw\n",
     "example.net is not a local domain"),
    (("user", "add", "dan@example.com", "--password-stdin"), "\n", "the password is empty"),
    (("user", "add", "dan@example.com", "--password-stdin"), "x" * 300 + "\n", "at most 255"),
    (("user", "add", "dan@example.com", "--quota", "lots", "--password-stdin"), "p\n",
     "--quota"),
    (("user", "passwd", "nobody@example.com", "--password-stdin"), "pw\n", "no such user"),
    (("user", "alias", "add", "nobody@example.com", "x@example.com"), None, "no such user"),
    (("user", "alias", "del", "x@example.com"), None, "no such alias"),
    (("domain", "add", "bad..name"), None, "error:"),
    (("domain", "del", "example.com"), None, "in the config file"),
    (("domain", "del", "example.org"), None, "no such domain"),
])
def test_cli_refusals(config: Path, args: tuple[str, ...], stdin: str | None,
                      message: str) -> None:
    code, out = run(config, *args, input=stdin)
    assert code in (1, 2)
    assert message in out


def test_domain_add_list_del(config: Path) -> None:
    assert run(config, "domain", "add", "Example.ORG") == (0, "domain added: example.org\n")
    assert run(config, "domain", "add", "example.org") == (
        0, "domain example.org is already local\n")
    assert run(config, "domain", "add", "example.com") == (
        0, "domain example.com is already local (config file)\n")
    assert run(config, "domain", "list") == (0, "example.com  config\nexample.org  cli\n")
    assert run(config, "user", "add", "ann@example.org", "--password-stdin",
               input="pw\n")[0] == 0
    code, out = run(config, "domain", "del", "example.org")
    assert code == 1 and "still has 1 mailbox(es): ann@example.org" in out
    run(config, "user", "del", "ann@example.org")
    assert run(config, "domain", "del", "example.org") == (0, "domain removed: example.org\n")
