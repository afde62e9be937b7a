"""``pigeon config``: print an example configuration, check a configuration file."""

from __future__ import annotations

import os
from pathlib import Path

import click

from pigeon.cli import config_option, load_or_exit
from pigeon.config import CONFIG_ENV_VAR, Settings, example_config

__all__ = ["config", "summary_lines"]


@click.group()
def config() -> None:
    """Inspect Pigeon's configuration."""


@config.command()
def example() -> None:
    """Print a complete, annotated production configuration (TOML)."""
    click.echo(example_config(), nl=False)


@config.command()
@config_option
def check(config_path: Path | None) -> None:
    """Validate the configuration and print a short summary.

    Exits with status 0 if the configuration is usable, else prints one line per problem
    to stderr and exits with status 2.
    """
    settings = load_or_exit(config_path)
    source = config_path or os.environ.get(CONFIG_ENV_VAR) or "(built-in defaults)"
    click.echo(f"config ok: {source}")
    for line in summary_lines(settings):
        click.echo(line)


def summary_lines(settings: Settings) -> list[str]:
    """Describe the settings an operator most often wants to confirm.

    Args:
        settings: validated settings.

    Returns:
        Lines without newlines: hostname, local domains, data directory, then one line
        per listener (``  kind  address``).
    """
    lines = [
        f"hostname: {settings.server.hostname}",
        f"local domains: {', '.join(settings.domains.local) or '(none)'}",
        f"data dir: {settings.server.data_dir}",
        f"listeners: {len(settings.listener)}",
    ]
    width = max((len(listener.kind) for listener in settings.listener), default=0)
    lines.extend(f"  {item.kind:<{width}}  {item.address}" for item in settings.listener)
    return lines
