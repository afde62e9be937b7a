"""``pigeon domain``: local domains kept in ``<data_dir>/accounts.db``.

The local domains are the config's ``domains.local`` plus those added here; the router
treats both alike (mail for them is delivered here, never relayed), and a running server
sees a change at once. Domains from the config file are changed in the file.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from pigeon.cli import config_option, load_or_exit
from pigeon.cli.user import open_accounts
from pigeon.config import to_a_labels

__all__ = ["domain_group"]

_USAGE_EXIT = 2


def _domain_or_exit(name: str) -> str:
    try:
        domain = to_a_labels(name)
    except ValueError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(_USAGE_EXIT)
    if "." not in domain and domain != "localhost":
        click.echo(f"error: {name!r} is not a fully qualified domain name", err=True)
        sys.exit(_USAGE_EXIT)
    return domain


@click.group("domain")
def domain_group() -> None:
    """Manage local domains (mail for them is delivered to local mailboxes)."""


@domain_group.command("add")
@click.argument("name")
@config_option
def add(name: str, config_path: Path | None) -> None:
    """Make NAME a local domain."""
    settings = load_or_exit(config_path)
    domain = _domain_or_exit(name)
    if domain in settings.domains.local:
        click.echo(f"domain {domain} is already local (config file)")
        return
    store = open_accounts(settings)
    try:
        added = store.add_domain(domain)
    finally:
        store.close()
    click.echo(f"domain added: {domain}" if added else f"domain {domain} is already local")


@domain_group.command("del")
@click.argument("name")
@config_option
def delete(name: str, config_path: Path | None) -> None:
    """Stop treating NAME as local; refused while mailboxes exist in it."""
    settings = load_or_exit(config_path)
    domain = _domain_or_exit(name)
    if domain in settings.domains.local:
        click.echo(f"error: {domain} is in the config file (domains.local); remove it there",
                   err=True)
        sys.exit(1)
    store = open_accounts(settings)
    try:
        if domain not in store.list_domains():
            click.echo(f"error: no such domain: {domain}", err=True)
            sys.exit(1)
        used = [m.address for m in store.list_mailboxes()
                if m.address.rpartition("@")[2] == domain]
        if used:
            shown = ", ".join(used[:5]) + (" ..." if len(used) > 5 else "")
            click.echo(f"error: {domain} still has {len(used)} mailbox(es): {shown}; "
                       "remove them first", err=True)
            sys.exit(1)
        store.remove_domain(domain)
    finally:
        store.close()
    click.echo(f"domain removed: {domain}")


@domain_group.command("list")
@config_option
def list_(config_path: Path | None) -> None:
    """List local domains and where each is defined."""
    settings = load_or_exit(config_path)
    store = open_accounts(settings)
    try:
        stored = store.list_domains()
    finally:
        store.close()
    for domain in settings.domains.local:
        click.echo(f"{domain}  config")
    for domain in stored:
        if domain not in settings.domains.local:
            click.echo(f"{domain}  cli")
