"""``pigeon mailbox``: add, remove and list local mailboxes.

Mailboxes live in ``<data_dir>/accounts.db``. Those defined in the config file
(``[[mailbox]]``) are merged in by every command and at server start; they are changed in the
file, not here. ``pigeon mailbox add @example.com`` makes a catch-all: every local part of
that domain is a mailbox of its own. A mailbox is added only in a local domain: the
config's ``domains.local`` or one added with ``pigeon domain add``. The commands work while
the server runs.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from pigeon.cli import config_option, load_or_exit
from pigeon.cli.user import local_or_exit
from pigeon.config import Settings, parse_size
from pigeon.storage.accounts_port import canonical_mailbox_key
from pigeon.storage.maildir.store import MaildirStore, maildir_path
from pigeon.storage.sqlite.accounts import AccountStore

__all__ = ["format_size", "mailbox_group"]

_USAGE_EXIT = 2


def format_size(size: int | None) -> str:
    """Format a byte count for people: ``1 GiB``, ``512 KiB``, ``100 B``, or ``-`` for None."""
    if size is None:
        return "-"
    for unit, factor in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= factor:
            value = size / factor
            return f"{value:.0f} {unit}" if value == int(value) else f"{value:.1f} {unit}"
    return f"{size} B"


def _open(settings: Settings) -> AccountStore:
    store = AccountStore(settings.server.data_dir / "accounts.db")
    try:
        store.sync_config(settings.mailbox)
    except ValueError as exc:
        store.close()
        click.echo(f"error: config mailbox: {exc}", err=True)
        sys.exit(_USAGE_EXIT)
    return store


def _key_or_exit(address: str) -> str:
    try:
        key = canonical_mailbox_key(address)
    except ValueError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(_USAGE_EXIT)
    if "@" not in key:
        click.echo(f"error: {address!r} is not a mailbox address (local-part@domain)", err=True)
        sys.exit(_USAGE_EXIT)
    return key


@click.group("mailbox")
def mailbox_group() -> None:
    """Manage local mailboxes (Maildir under <data_dir>/mail)."""


@mailbox_group.command("add")
@click.argument("address")
@click.option("--quota", metavar="SIZE", default=None,
              help='Quota, e.g. "1GiB", "500MB" or bytes (default: no limit).')
@config_option
def add(address: str, quota: str | None, config_path: Path | None) -> None:
    """Create the mailbox ADDRESS (or set its quota); @DOMAIN makes a catch-all."""
    settings = load_or_exit(config_path)
    key = _key_or_exit(address)
    quota_bytes: int | None = None
    if quota is not None:
        try:
            quota_bytes = parse_size(quota)
        except ValueError as exc:
            click.echo(f"error: --quota: {exc}", err=True)
            sys.exit(_USAGE_EXIT)
        if quota_bytes < 1:
            click.echo("error: --quota must be at least 1 byte", err=True)
            sys.exit(_USAGE_EXIT)
    store = _open(settings)
    try:
        local_or_exit(settings, store, key)
        existing = store.get_mailbox(key)
        if existing is not None and existing.from_config:
            click.echo(f"error: {key} is defined in the config file; change it there", err=True)
            sys.exit(1)
        info = store.add_mailbox(key, quota_bytes)
    finally:
        store.close()
    verb = "updated" if existing is not None else "added"
    click.echo(f"mailbox {verb}: {info.address} (quota {format_size(info.quota)})")


@mailbox_group.command("del")
@click.argument("address")
@config_option
def delete(address: str, config_path: Path | None) -> None:
    """Remove the mailbox ADDRESS; its mail stays on disk."""
    settings = load_or_exit(config_path)
    key = _key_or_exit(address)
    store = _open(settings)
    try:
        existing = store.get_mailbox(key)
        if existing is None:
            click.echo(f"error: no such mailbox: {key}", err=True)
            sys.exit(1)
        if existing.from_config:
            click.echo(f"error: {key} is defined in the config file; remove it there", err=True)
            sys.exit(1)
        store.remove_mailbox(key)
    finally:
        store.close()
    where = (
        f"; its mail is kept in {maildir_path(settings.server.data_dir, key)}"
        if not key.startswith("@") else ""
    )
    click.echo(f"mailbox removed: {key}{where}")


@mailbox_group.command("list")
@config_option
def list_(config_path: Path | None) -> None:
    """List mailboxes with their quota, usage and where they are defined."""
    settings = load_or_exit(config_path)
    store = _open(settings)
    try:
        mailboxes = store.list_mailboxes()
    finally:
        store.close()
    if not mailboxes:
        click.echo("no mailboxes")
        return
    maildirs = MaildirStore(settings.server.data_dir / "mail", hostname=settings.server.hostname)
    rows = [("ADDRESS", "QUOTA", "USED", "SOURCE")]
    for info in mailboxes:
        used = "-" if info.address.startswith("@") else format_size(maildirs.usage(info.address))
        rows.append((info.address, format_size(info.quota), used,
                     "config" if info.from_config else "cli"))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        click.echo(f"{row[0]:<{widths[0]}}  {row[1]:>{widths[1]}}  {row[2]:>{widths[2]}}  {row[3]}")
