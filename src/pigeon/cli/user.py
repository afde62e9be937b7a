"""``pigeon user``: users who log in to submit mail (SMTP AUTH) and read it (POP3).

A user is a local mailbox with a password (an argon2id hash in ``<data_dir>/accounts.db``).
``pigeon user add`` creates the mailbox when needed; giving a password to a mailbox from the
config file makes it a user too. A user's aliases are extra addresses: the user may use
them as reverse-path when submitting and, in a local domain, receives mail sent to them.
The commands work while the server runs.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from pigeon.auth.passwords import hash_password
from pigeon.cli import config_option, load_or_exit
from pigeon.config import Settings, parse_size
from pigeon.storage.accounts_port import canonical_mailbox_key
from pigeon.storage.sqlite.accounts import AccountStore

__all__ = ["local_domains", "local_or_exit", "open_accounts", "user_group"]

_USAGE_EXIT = 2
_MAX_PASSWORD = 255  # octets; RFC 4616 §2 limits SASL PLAIN fields to 255


def open_accounts(settings: Settings) -> AccountStore:
    """Open the account store with the config file's mailboxes merged in (or exit 2)."""
    store = AccountStore(settings.server.data_dir / "accounts.db")
    try:
        store.sync_config(settings.mailbox)
    except ValueError as exc:
        store.close()
        click.echo(f"error: config mailbox: {exc}", err=True)
        sys.exit(_USAGE_EXIT)
    return store


def local_domains(settings: Settings, store: AccountStore) -> list[str]:
    """The local domains: the config's ``domains.local`` then those of ``pigeon domain add``."""
    return list(dict.fromkeys([*settings.domains.local, *store.list_domains()]))


def _address_or_exit(address: str) -> str:
    try:
        key = canonical_mailbox_key(address)
    except ValueError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(_USAGE_EXIT)
    if "@" not in key or key.startswith("@"):
        click.echo(f"error: {address!r} is not an address (local-part@domain)", err=True)
        sys.exit(_USAGE_EXIT)
    return key


def local_or_exit(settings: Settings, store: AccountStore, key: str) -> None:
    """Exit with status 2 and a message unless ``key``'s domain is local (config or
    ``pigeon domain add``)."""
    domain = key.rpartition("@")[2]
    domains = local_domains(settings, store)
    if domain not in domains:
        click.echo(
            f"error: {domain} is not a local domain (local: {', '.join(domains) or 'none'}; "
            f"add it with: pigeon domain add {domain})",
            err=True,
        )
        sys.exit(_USAGE_EXIT)


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        line = sys.stdin.readline()
        password = line[:-1] if line.endswith("\n") else line
        password = password[:-1] if password.endswith("\r") else password
    else:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True,
                                default="", show_default=False)
    if not password:
        click.echo("error: the password is empty", err=True)
        sys.exit(_USAGE_EXIT)
    if len(password.encode("utf-8")) > _MAX_PASSWORD or "\x00" in password:
        click.echo(f"error: the password must be at most {_MAX_PASSWORD} bytes, without NUL",
                   err=True)
        sys.exit(_USAGE_EXIT)
    return password


_password_stdin = click.option(
    "--password-stdin", is_flag=True,
    help="Read the password from the first line of standard input instead of prompting.",
)


@click.group("user")
def user_group() -> None:
    """Manage users: mailboxes with a password for SMTP AUTH and POP3."""


@user_group.command("add")
@click.argument("address")
@_password_stdin
@click.option("--quota", metavar="SIZE", default=None,
              help='Quota of a new mailbox, e.g. "1GiB" (default: no limit).')
@config_option
def add(address: str, password_stdin: bool, quota: str | None, config_path: Path | None) -> None:
    """Create the user ADDRESS (and its mailbox) with a password."""
    settings = load_or_exit(config_path)
    key = _address_or_exit(address)
    quota_bytes: int | None = None
    if quota is not None:
        try:
            quota_bytes = parse_size(quota)
        except ValueError as exc:
            click.echo(f"error: --quota: {exc}", err=True)
            sys.exit(_USAGE_EXIT)
    store = open_accounts(settings)
    try:
        local_or_exit(settings, store, key)
        existing = store.get_mailbox(key)
        if existing is not None and existing.has_password:
            click.echo(f"error: user {key} exists; change the password with: "
                       f"pigeon user passwd {key}", err=True)
            sys.exit(1)
        if store.alias_owner(key) is not None:
            click.echo(f"error: {key} is an alias of {store.alias_owner(key)}", err=True)
            sys.exit(1)
        password_hash = hash_password(_read_password(password_stdin))
        if existing is None:
            store.add_mailbox(key, quota_bytes)
        store.set_password_hash(key, password_hash)
    finally:
        store.close()
    click.echo(f"user added: {key}")


@user_group.command("passwd")
@click.argument("address")
@_password_stdin
@config_option
def passwd(address: str, password_stdin: bool, config_path: Path | None) -> None:
    """Set a new password for the user ADDRESS."""
    settings = load_or_exit(config_path)
    key = _address_or_exit(address)
    store = open_accounts(settings)
    try:
        existing = store.get_mailbox(key)
        if existing is None or not existing.has_password:
            click.echo(f"error: no such user: {key}", err=True)
            sys.exit(1)
        store.set_password_hash(key, hash_password(_read_password(password_stdin)))
    finally:
        store.close()
    click.echo(f"password changed: {key}")


@user_group.command("del")
@click.argument("address")
@config_option
def delete(address: str, config_path: Path | None) -> None:
    """Remove the user ADDRESS, its aliases and its mailbox record (its mail stays on disk).

    A mailbox defined in the config file only loses its password.
    """
    settings = load_or_exit(config_path)
    key = _address_or_exit(address)
    store = open_accounts(settings)
    try:
        existing = store.get_mailbox(key)
        if existing is None or not existing.has_password:
            click.echo(f"error: no such user: {key}", err=True)
            sys.exit(1)
        for alias, _ in store.list_aliases(key):
            store.remove_alias(alias)
        if existing.from_config:
            store.set_password_hash(key, None)
            message = f"user removed: {key} (the mailbox stays: it is in the config file)"
        else:
            store.remove_mailbox(key)
            message = f"user removed: {key}"
    finally:
        store.close()
    click.echo(message)


@user_group.command("list")
@config_option
def list_(config_path: Path | None) -> None:
    """List users with their aliases."""
    settings = load_or_exit(config_path)
    store = open_accounts(settings)
    try:
        users = [m.address for m in store.list_mailboxes() if m.has_password]
        aliases: dict[str, list[str]] = {}
        for alias, owner in store.list_aliases():
            aliases.setdefault(owner, []).append(alias)
    finally:
        store.close()
    if not users:
        click.echo("no users")
        return
    width = max(len("USER"), *(len(u) for u in users))
    click.echo(f"{'USER':<{width}}  ALIASES")
    for user in users:
        click.echo(f"{user:<{width}}  {', '.join(aliases.get(user, [])) or '-'}".rstrip())


@user_group.group("alias")
def alias_group() -> None:
    """Manage a user's aliases (extra addresses to send as and receive at)."""


@alias_group.command("add")
@click.argument("user")
@click.argument("address")
@config_option
def alias_add(user: str, address: str, config_path: Path | None) -> None:
    """Give USER the extra address ADDRESS."""
    settings = load_or_exit(config_path)
    owner = _address_or_exit(user)
    key = _address_or_exit(address)
    store = open_accounts(settings)
    try:
        info = store.get_mailbox(owner)
        if info is None or not info.has_password:
            click.echo(f"error: no such user: {owner}", err=True)
            sys.exit(1)
        try:
            store.add_alias(owner, key)
        except ValueError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)
    finally:
        store.close()
    click.echo(f"alias added: {key} -> {owner}")


@alias_group.command("del")
@click.argument("address")
@config_option
def alias_del(address: str, config_path: Path | None) -> None:
    """Remove the alias ADDRESS."""
    settings = load_or_exit(config_path)
    key = _address_or_exit(address)
    store = open_accounts(settings)
    try:
        removed = store.remove_alias(key)
    finally:
        store.close()
    if not removed:
        click.echo(f"error: no such alias: {key}", err=True)
        sys.exit(1)
    click.echo(f"alias removed: {key}")


@alias_group.command("list")
@click.argument("user", required=False)
@config_option
def alias_list(user: str | None, config_path: Path | None) -> None:
    """List aliases (all, or USER's)."""
    settings = load_or_exit(config_path)
    owner = _address_or_exit(user) if user is not None else None
    store = open_accounts(settings)
    try:
        pairs = store.list_aliases(owner)
    finally:
        store.close()
    if not pairs:
        click.echo("no aliases")
        return
    for alias, target in pairs:
        click.echo(f"{alias} -> {target}")
