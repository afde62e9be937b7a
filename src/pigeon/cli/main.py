"""The ``pigeon`` command group and ``pigeon serve``.

Subcommand modules are registered at the bottom of this file, in one place.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from pigeon.cli import config_option, load_or_exit
from pigeon.cli.bulk import bulk
from pigeon.cli.config_cmd import config
from pigeon.cli.domain import domain_group
from pigeon.cli.mailbox import mailbox_group
from pigeon.cli.queue import queue_group
from pigeon.cli.send import send
from pigeon.cli.sendmail import sendmail
from pigeon.cli.user import user_group
from pigeon.log import setup_logging

__all__ = ["cli", "main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="pigeon-mail", prog_name="pigeon")
def cli() -> None:
    """Pigeon: a complete Internet mail system (MTA, MSA, MDA, MUA, POP3)."""


@cli.command()
@config_option
def serve(config_path: Path | None) -> None:
    """Run the mail server until SIGTERM or Ctrl-C.

    Starts the listeners, the queue and the delivery agents.

    With no configuration, listens on 127.0.0.1 (SMTP 1025, submission 1587 and 1465,
    POP3 1110) and keeps its data under ./pigeon-data.
    """
    settings = load_or_exit(config_path)
    setup_logging(settings)
    from pigeon.app import run_server

    sys.exit(run_server(settings))


# Subcommands. Each module defines one click command or group; register it here.
cli.add_command(config)
cli.add_command(mailbox_group)
cli.add_command(queue_group)
cli.add_command(user_group)
cli.add_command(domain_group)
cli.add_command(send)
cli.add_command(sendmail)
cli.add_command(bulk)


def main() -> None:
    """Entry point of the ``pigeon`` console script."""
    cli(prog_name="pigeon")


if __name__ == "__main__":
    main()
