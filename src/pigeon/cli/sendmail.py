"""``pigeon sendmail`` and the ``sendmail`` command: the interface Unix programs mail through.

The message is read from standard input. It goes into the local Pigeon queue (the data
directory of the configuration given with ``-C``, ``$PIGEON_CONFIG`` or the defaults), or,
when ``~/.config/pigeon/client.toml`` has ``[sendmail] profile = "NAME"``, to that
profile's submission server. Options and exit codes: see :mod:`pigeon.mua.sendmail`.
"""

from __future__ import annotations

import asyncio
import getpass
import logging
import os
import sys
from pathlib import Path

import click

from pigeon.config import ConfigError, load_settings
from pigeon.mail.reply import Reply, ReplyError
from pigeon.mua.profiles import ProfileError, load_client_config
from pigeon.mua.send import submit_to_server
from pigeon.mua.sendmail import (
    EX_SOFTWARE,
    EX_TEMPFAIL,
    PreparedMessage,
    SendmailError,
    exit_code_for,
    parse_sendmail_args,
    prepare_message,
    read_message,
)
from pigeon.mua.target import resolve_target

__all__ = ["EX_CONFIG", "main", "run_sendmail", "sendmail"]

#: sysexits.h: something was found in an unconfigured or misconfigured state.
EX_CONFIG = 78


def _login() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "nobody"


def _deliver(prepared: PreparedMessage, config: Path | None) -> list[Reply]:
    """Hand the message on; one reply per recipient."""
    try:
        client = load_client_config()
        profile = client.profile(client.sendmail_profile) if client.sendmail_profile else None
    except ProfileError as exc:
        raise SendmailError(f"sendmail: {exc}", EX_CONFIG) from None
    if profile is not None:
        try:
            target = resolve_target(
                server=None, security=None, user=None, password_file=None, profile=profile,
                ca_file=None, insecure=False, environ=os.environ, prompt=None,
            )
        except ProfileError as exc:
            raise SendmailError(f"sendmail: {exc}", EX_CONFIG) from None
        if target is None:
            raise SendmailError(f"sendmail: profile {profile.name!r} names no server",
                                EX_CONFIG)
        result = asyncio.run(submit_to_server(
            target, prepared.reverse_path, prepared.recipients, prepared.content,
            smtputf8=prepared.smtputf8, eight_bit=prepared.eight_bit,
        ))
        return [r.reply for r in result.recipients]
    from pigeon.mua.local_queue import submit_to_local_queue

    try:
        settings = load_settings(config)
    except ConfigError as exc:
        raise SendmailError(f"sendmail: {exc}", EX_CONFIG) from None
    try:
        outcome = asyncio.run(submit_to_local_queue(
            settings, prepared.reverse_path, prepared.recipients, prepared.content,
            smtputf8=prepared.smtputf8, eight_bit=prepared.eight_bit,
        ))
    except ReplyError as exc:
        return [exc.reply] * len(prepared.recipients)
    except OSError as exc:
        raise SendmailError(
            f"sendmail: cannot queue the message in {settings.server.data_dir}: "
            f"{exc.strerror or exc}", EX_TEMPFAIL,
        ) from None
    return outcome.replies


def run_sendmail(args: list[str], stdin: bytes | None = None) -> int:
    """Run sendmail with these arguments; return the exit code.

    Args:
        args: the command line after the program name.
        stdin: the message (default: read standard input).

    Returns:
        The sysexits.h exit code.
    """
    logging.basicConfig(level=logging.WARNING, format="sendmail: %(message)s")
    try:
        options = parse_sendmail_args(args)
        data = stdin if stdin is not None else sys.stdin.buffer.read()
        message = read_message(data, ignore_dots=options.ignore_dots)
        hostname = _hostname(options.config)
        prepared = prepare_message(options, message, login=_login(), hostname=hostname)
        replies = _deliver(prepared, options.config)
    except SendmailError as exc:
        click.echo(str(exc), err=True)
        return exc.code
    except Exception as exc:  # a crash still gets a sysexits code and a line
        click.echo(f"sendmail: internal error: {type(exc).__name__}: {exc}", err=True)
        return EX_SOFTWARE
    for recipient, reply in zip(prepared.recipients, replies, strict=True):
        if not 200 <= reply.code < 300:
            click.echo(f"sendmail: {recipient}: {reply}", err=True)
    return exit_code_for(replies)


def _hostname(config: Path | None) -> str:
    try:
        return str(load_settings(config).server.hostname)
    except ConfigError as exc:
        raise SendmailError(f"sendmail: {exc}", EX_CONFIG) from None


@click.command(
    "sendmail",
    context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False,
                      "help_option_names": []},
    add_help_option=False,
)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def sendmail(args: tuple[str, ...]) -> None:
    """Read a message on stdin and send it (sendmail-compatible: -t -i -f -F -C).

    Recipients are the arguments, plus those of To/Cc/Bcc with -t. Exit codes follow
    sysexits.h (0 ok, 64 usage, 65 data error, 67 unknown user, 69 unavailable,
    75 temporary failure).
    """
    sys.exit(run_sendmail(list(args)))


def main() -> None:
    """Entry point of the ``sendmail`` console script."""
    sys.exit(run_sendmail(sys.argv[1:]))
