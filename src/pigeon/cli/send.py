"""``pigeon send``: compose a message and submit it, deliver it directly, or queue it locally.

Exit status: 0 when every recipient was accepted, else the sysexits.h code of the worst
failure (see :mod:`pigeon.mua.sendmail`), with one result line per recipient on stderr;
2 for bad options.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click

from pigeon.cli import config_option, load_or_exit
from pigeon.mua.addresses import AddressListError, HeaderAddress, parse_address_list
from pigeon.mua.compose import (
    ComposedMessage,
    ComposeError,
    Draft,
    attachment_from_file,
    compose,
    parse_header_option,
)
from pigeon.mua.profiles import ClientConfig, Profile, ProfileError, load_client_config
from pigeon.mua.send import RecipientResult, ServerTarget, SubmissionResult, submit_to_server
from pigeon.mua.sendmail import exit_code_for
from pigeon.mua.target import resolve_target

__all__ = ["fail", "print_results", "send", "server_options", "target_from_options"]

F = TypeVar("F", bound=Callable[..., object])
USAGE_EXIT = 2


def fail(text: str, code: int = USAGE_EXIT) -> NoReturn:
    """Print ``pigeon: text`` to stderr and exit with ``code``."""
    click.echo(f"pigeon: {text}", err=True)
    sys.exit(code)


def server_options(func: F) -> F:
    """Add the submission server options (``--server``, TLS, credentials, ``--profile``)."""
    options = [
        click.option("--server", metavar="HOST[:PORT]",
                     help="Submission server (default port 587, or 465 with --tls)."),
        click.option("--starttls", "security", flag_value="starttls",
                     help="Require STARTTLS (RFC 3207; the default)."),
        click.option("--tls", "security", flag_value="tls",
                     help="Implicit TLS from the first byte (RFC 8314, port 465)."),
        click.option("--plain", "security", flag_value="plain",
                     help="No TLS (a password is then sent only to a loopback address)."),
        click.option("--user", metavar="LOGIN", help="Authenticate (SMTP AUTH) as LOGIN."),
        click.option("--password-file", type=click.Path(path_type=Path), metavar="FILE",
                     help="Read the password from FILE (else $PIGEON_PASSWORD, the "
                          "profile, or a prompt)."),
        click.option("--profile", metavar="NAME",
                     help="Use [profile.NAME] of ~/.config/pigeon/client.toml."),
        click.option("--ca-file", type=click.Path(path_type=Path, exists=True,
                                                  dir_okay=False),
                     metavar="FILE", help="Trust the certificates in FILE (PEM)."),
        click.option("--insecure", is_flag=True,
                     help="Do not check the server's certificate (tests only)."),
        click.option("--timeout", type=click.FloatRange(min=1), default=60.0,
                     show_default=True, help="Seconds to wait for each reply."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def load_profile(name: str | None) -> tuple[ClientConfig, Profile | None]:
    """Read the client file and pick the profile (the default one when ``name`` is None)."""
    try:
        config = load_client_config()
        return config, config.profile(name)
    except ProfileError as exc:
        fail(str(exc))


def _prompt() -> Callable[[str], str] | None:
    if not sys.stdin.isatty():
        return None
    return lambda text: str(click.prompt(text, hide_input=True, err=True))


def target_from_options(profile: Profile | None, options: dict[str, Any]) -> ServerTarget | None:
    """The submission target of the server options, or None when none is named.

    Exits with status 2 and a message when the options cannot be used.
    """
    try:
        return resolve_target(
            server=options.get("server"),
            security=options.get("security"),
            user=options.get("user"),
            password_file=options.get("password_file"),
            profile=profile,
            ca_file=options.get("ca_file"),
            insecure=bool(options.get("insecure")),
            environ=os.environ,
            prompt=_prompt(),
            timeout=float(options.get("timeout") or 60.0),
        )
    except ProfileError as exc:
        fail(str(exc))


def print_results(results: list[RecipientResult], *, prefix: str = "") -> None:
    """One line per recipient on stderr: ``address: reply``."""
    for result in results:
        mark = "ok" if result.accepted else "FAILED"
        click.echo(f"{prefix}{result.recipient}: {mark}: {result.reply}", err=True)


def _addresses(values: tuple[str, ...], option: str) -> list[HeaderAddress]:
    out: list[HeaderAddress] = []
    for value in values:
        try:
            out.extend(parse_address_list(value))
        except AddressListError as exc:
            fail(f"{option}: {exc}")
    return out


def _read_text(path: Path, option: str) -> str:
    try:
        data = sys.stdin.buffer.read() if str(path) == "-" else path.read_bytes()
        return data.decode("utf-8")
    except OSError as exc:
        fail(f"{option} {path}: {exc.strerror}")
    except UnicodeDecodeError as exc:
        fail(f"{option} {path}: not UTF-8 text (byte {exc.start})")


@click.command("send")
@click.option("--from", "author", metavar="ADDRESS",
              help="The From address (default: the profile's).")
@click.option("--to", multiple=True, metavar="ADDRESS", help="A To recipient (repeatable).")
@click.option("--cc", multiple=True, metavar="ADDRESS", help="A Cc recipient (repeatable).")
@click.option("--bcc", multiple=True, metavar="ADDRESS",
              help="A blind recipient: in the envelope only, never in a header (repeatable).")
@click.option("--subject", default="", help="The subject (any Unicode).")
@click.option("--body", help="The text body.")
@click.option("--body-file", type=click.Path(path_type=Path, allow_dash=True), metavar="FILE",
              help="Read the text body from FILE ('-' for stdin).")
@click.option("--html-file", type=click.Path(path_type=Path, allow_dash=True), metavar="FILE",
              help="An HTML body (sent as multipart/alternative with the text).")
@click.option("--attach", multiple=True, metavar="FILE",
              type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="Attach FILE; its MIME type is guessed from the name (repeatable).")
@click.option("--header", "headers", multiple=True, metavar="'NAME: VALUE'",
              help="An extra header field (repeatable).")
@click.option("--reply-to", multiple=True, metavar="ADDRESS", help="A Reply-To address.")
@server_options
@click.option("--direct", is_flag=True,
              help="Deliver to the recipients' MX hosts directly (no submission server).")
@click.option("--dns-server", "dns_servers", multiple=True, metavar="IP[:PORT]",
              help="With --direct: ask this name server (default: the system's).")
@click.option("--mx-port", type=click.IntRange(1, 65535), default=25, show_default=True,
              help="With --direct: the SMTP port of the MX hosts (another only for tests).")
@click.option("--queue", "use_queue", is_flag=True,
              help="Hand the message to the local Pigeon's queue (see -c).")
@config_option
@click.option("--dry-run", is_flag=True, help="Print the message and its envelope; send nothing.")
def send(author: str | None, to: tuple[str, ...], cc: tuple[str, ...], bcc: tuple[str, ...],
         subject: str, body: str | None, body_file: Path | None, html_file: Path | None,
         attach: tuple[Path, ...], headers: tuple[str, ...], reply_to: tuple[str, ...],
         direct: bool, dns_servers: tuple[str, ...], mx_port: int, use_queue: bool,
         config_path: Path | None, dry_run: bool, **server: Any) -> None:
    """Compose a message and send it.

    The message goes to the submission server given with --server or by a profile (STARTTLS
    and AUTH), or straight to the recipients' MX hosts with --direct, or into the local
    Pigeon queue with --queue. Exit status 0 only when every recipient was accepted.
    """
    _, profile = load_profile(server.get("profile"))
    modes = [name for name, on in (("--direct", direct), ("--queue", use_queue),
                                   ("--server", bool(server.get("server")))) if on]
    if len(modes) > 1:
        fail(f"{' and '.join(modes)} exclude each other")
    if body is not None and body_file is not None:
        fail("give --body or --body-file, not both")
    author_text = author or (profile.author if profile else None)
    if not author_text:
        fail("--from is required (or a profile with 'from')")
    from_list = _addresses((author_text,), "--from")
    if len(from_list) != 1:
        fail("--from takes one address")
    try:
        draft = Draft(
            author=from_list[0],
            to=_addresses(to, "--to"),
            cc=_addresses(cc, "--cc"),
            bcc=_addresses(bcc, "--bcc"),
            subject=subject,
            text=body if body_file is None else _read_text(body_file, "--body-file"),
            html=None if html_file is None else _read_text(html_file, "--html-file"),
            attachments=[attachment_from_file(path) for path in attach],
            reply_to=_addresses(reply_to, "--reply-to"),
            headers=[parse_header_option(h) for h in headers],
        )
        if draft.text is None and draft.html is None:
            draft.text = ""
        message = compose(draft)
    except ComposeError as exc:
        fail(str(exc))
    if dry_run:
        _print_dry_run(message)
        return
    if use_queue:
        result = _send_to_queue(config_path, message)
    elif direct:
        result = _send_direct(message, dns_servers, mx_port, float(server["timeout"]))
    else:
        target = target_from_options(profile, server)
        if target is None:
            fail("say where to send: --server HOST[:PORT], --profile NAME, --direct or --queue")
        result = asyncio.run(submit_to_server(
            target, message.reverse_path, message.recipients, message.content,
            smtputf8=message.smtputf8, eight_bit=message.eight_bit,
        ))
    _finish(result)


def _print_dry_run(message: ComposedMessage) -> None:
    click.echo(f"MAIL FROM:<{message.reverse_path}>"
               + (" SMTPUTF8" if message.smtputf8 else ""))
    for recipient in message.recipients:
        click.echo(f"RCPT TO:<{recipient}>")
    click.echo("")
    click.echo(message.content.decode("utf-8", "replace").replace("\r\n", "\n"), nl=False)


def _send_to_queue(config_path: Path | None, message: ComposedMessage) -> SubmissionResult:
    from pigeon.mua.local_queue import submit_to_local_queue

    settings = load_or_exit(config_path)
    try:
        outcome = asyncio.run(submit_to_local_queue(
            settings, message.reverse_path, message.recipients, message.content,
            smtputf8=message.smtputf8, eight_bit=message.eight_bit,
        ))
    except (OSError, ValueError) as exc:
        fail(f"cannot queue the message in {settings.server.data_dir}: {exc}", 75)
    return SubmissionResult(
        [RecipientResult(r, reply, "local queue")
         for r, reply in zip(message.recipients, outcome.replies, strict=True)],
        outcome.queue_id,
    )


def _send_direct(message: ComposedMessage, dns_servers: tuple[str, ...], port: int,
                 timeout: float) -> SubmissionResult:
    from pigeon.mua.direct import deliver_direct
    from pigeon.routing.mx import DnsPythonResolver

    try:
        resolver = DnsPythonResolver(dns_servers)
    except ValueError as exc:
        fail(f"--dns-server: {exc}")
    return asyncio.run(deliver_direct(
        message.reverse_path, message.recipients, message.content,
        smtputf8=message.smtputf8, eight_bit=message.eight_bit, timeout=timeout,
        resolver=resolver, port=port,
    ))


def _finish(result: SubmissionResult) -> None:
    code = exit_code_for([r.reply for r in result.recipients])
    if code == 0:
        where = f" (queued as {result.queue_id})" if result.queue_id else ""
        click.echo(f"sent to {len(result.recipients)} recipient"
                   f"{'s' if len(result.recipients) != 1 else ''}{where}")
        return
    print_results(result.recipients)
    sys.exit(code)
