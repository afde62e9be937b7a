"""The ``pigeon`` command: thin click subcommands over Pigeon's services.

Nothing imports :mod:`pigeon.cli`; it imports everything. Each subcommand module defines
one click command or group and is registered in :mod:`pigeon.cli.main`. Subcommands that
read the configuration take :func:`config_option` and call :func:`load_or_exit`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import click

from pigeon.config import CONFIG_ENV_VAR, ConfigError, Settings, load_settings

__all__ = ["CONFIG_EXIT_CODE", "config_option", "load_or_exit"]

#: Exit status for an unusable configuration (the same as click's usage errors).
CONFIG_EXIT_CODE = 2

F = TypeVar("F", bound=Callable[..., object])


def config_option(func: F) -> F:
    """Add ``-c/--config FILE`` (also ``$PIGEON_CONFIG``) as the ``config_path`` argument.

    Args:
        func: the click command function.

    Returns:
        The function with the option attached.
    """
    option = click.option(
        "-c",
        "--config",
        "config_path",
        type=click.Path(path_type=Path),
        envvar=CONFIG_ENV_VAR,
        default=None,
        metavar="FILE",
        help=f"TOML configuration file (default: ${CONFIG_ENV_VAR}, else built-in defaults).",
    )
    return option(func)


def load_or_exit(config_path: Path | None) -> Settings:
    """Load the settings, or print the problems to stderr and exit with status 2.

    Args:
        config_path: the file given with ``-c``; None for ``$PIGEON_CONFIG`` or the
            zero-config defaults.

    Returns:
        The validated settings.
    """
    try:
        return load_settings(config_path)
    except ConfigError as exc:
        click.echo(str(exc), err=True)
        sys.exit(CONFIG_EXIT_CODE)
